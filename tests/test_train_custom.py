"""`python -m workbench train`: a detector from a folder of the user's own real footage, refused on bad input, installed, listed and loaded strictly."""
from __future__ import annotations

import json
import tomllib
from pathlib import Path

import cv2
import numpy as np
import pytest

from detectors.custom import CustomDetectorError, check_name, custom_root, register_installed
from detectors.registry import get_detector, list_detectors, unregister
from detectors.weights import WeightsError, sha256_file
from workbench import cli, demo
from workbench.video import write_video


def _photo(name: str) -> np.ndarray:
    import matplotlib
    from PIL import Image

    path = {"grace_hopper": Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"}.get(name)
    if path is None:
        from skimage import data

        return np.asarray(data.astronaut())
    return np.asarray(Image.open(path).convert("RGB"))


@pytest.fixture(scope="module")
def footage(tmp_path_factory) -> Path:
    """Two public-domain photos, a mirrored copy, and a short clip of a face on a background: 4 files."""
    folder = tmp_path_factory.mktemp("footage")
    hopper, astronaut = _photo("grace_hopper"), _photo("astronaut")
    for name, img in (("hopper.jpg", hopper), ("astronaut.png", astronaut), ("sub/hopper_flip.jpg", hopper[:, ::-1])):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(folder / name), cv2.cvtColor(np.ascontiguousarray(img), cv2.COLOR_RGB2BGR))
    demo.make_clip(folder / "clip.mp4", [demo.SceneFace("grace_hopper", x=0.5, y=0.5, height=0.6)],
                   seconds=1.0, fps=5, width=320, height=240, seed=3, gop=5)
    (folder / "notes.txt").write_text("not media: ignored")
    return folder


@pytest.fixture
def weights_home(tmp_path, monkeypatch) -> Path:
    home = tmp_path / "weights"
    home.mkdir()
    monkeypatch.setenv("WORKBENCH_WEIGHTS_DIR", str(home))
    return home


@pytest.mark.parametrize("name", ["", "a", "Team", "team cam", "../evil", "team_cam", "-team", "team-", "a--b",
                                  "1team", "x" * 41, "café"])
def test_odd_names_are_refused(name, weights_home):
    with pytest.raises(CustomDetectorError, match="not allowed"):
        check_name(name)


def test_builtin_and_existing_names_are_refused(weights_home):
    with pytest.raises(CustomDetectorError, match="built-in"):
        check_name("sbi-mobilenetv2")
    (custom_root() / "team-cam").mkdir(parents=True)
    with pytest.raises(CustomDetectorError, match="already exists"):
        check_name("team-cam")
    assert check_name("team-cam", replace=True) == "team-cam"


def test_cli_refuses_bad_input_clearly_and_writes_nothing(tmp_path, weights_home, capfd):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert cli.main(["train", "--real", str(empty), "--name", "sbi-mobilenetv2"]) == cli.EXIT_REFUSED
    assert "built-in detector" in capfd.readouterr().err
    assert cli.main(["train", "--real", str(tmp_path / "missing"), "--name", "team"]) == cli.EXIT_REFUSED
    assert "not a folder" in capfd.readouterr().err
    assert cli.main(["train", "--real", str(empty), "--name", "Team Cam"]) == cli.EXIT_REFUSED
    assert "not allowed" in capfd.readouterr().err
    # An empty folder gets past the quick checks and is refused by the training child.
    assert cli.main(["train", "--real", str(empty), "--name", "team", "--no-pretrained"]) == cli.EXIT_REFUSED
    assert "no videos" in capfd.readouterr().err
    assert not custom_root().exists() or not any(custom_root().iterdir())


def test_a_folder_without_faces_is_refused(tmp_path, weights_home):
    from tools.training.custom import TrainingInputError, train_custom

    folder = tmp_path / "noface"
    folder.mkdir()
    cv2.imwrite(str(folder / "wall.jpg"), np.full((240, 320, 3), 128, np.uint8))
    write_video(folder / "noise.mp4", (np.random.default_rng(i).integers(0, 256, (120, 160, 3), dtype=np.uint8)
                                       for i in range(5)), fps=5, gop=5)
    with pytest.raises(TrainingInputError, match="no face"):
        train_custom(folder, "team", epochs=1, pretrained=False, frames_per_video=2, log=lambda m: None)
    assert not (custom_root() / "team").exists()


def test_split_is_by_file_and_stable():
    from tools.training.custom import split_files

    digests = [f"{i:064x}" for i in range(10)]
    splits = split_files(digests)
    assert splits.count("val") == 2 and split_files(digests) == splits
    assert split_files(digests[:1]) == ["train"]
    assert split_files(digests[:2]).count("val") == 1


def test_tiny_training_installs_a_listed_strictly_loaded_detector(footage, weights_home, capfd):
    code = cli.main(["train", "--real", str(footage), "--name", "team-cam", "--epochs", "1", "--no-pretrained",
                     "--frames-per-video", "2", "--device", "cpu"])
    err = capfd.readouterr().err
    assert code == 0, err
    folder = custom_root() / "team-cam"
    assert folder.parent.parent == weights_home
    meta = tomllib.loads((folder / "detector.toml").read_text())
    weights = folder / "team-cam.safetensors"
    assert meta["sha256"] == sha256_file(weights) and meta["size"] == weights.stat().st_size
    assert meta["arch"] == "mobilenetv2" and 0.0 < meta["threshold"] <= 1.0

    data = json.loads((folder / "data_list.json").read_text())
    files = {row["path"]: row for row in data["files"]}
    assert sorted(files) == ["astronaut.png", "clip.mp4", "hopper.jpg", "sub/hopper_flip.jpg"]  # not notes.txt
    for path, row in files.items():
        assert row["sha256"] == sha256_file(footage / path)
    assert files["clip.mp4"]["kind"] == "video" and files["clip.mp4"]["faces"] == 2
    assert {row["split"] for row in files.values()} == {"train", "val"}  # held out by file

    card = tomllib.loads((folder / "card.toml").read_text())
    for path, row in files.items():
        assert f"{path} {row['sha256']}" in card["training_data"]
    assert "4 files" in card["training_data"] and "Held-out files" in card["figures"]
    assert "not measured" in card["per_group_figures"].lower()

    try:
        assert register_installed() == ["team-cam"]
        assert "team-cam" in list_detectors()
        assert cli.main(["detectors", "--json"]) == 0
        listed = {row["name"]: row for row in json.loads(capfd.readouterr().out)}
        assert listed["team-cam"]["installed"] and listed["team-cam"]["card"]["training_data"] == card["training_data"]
        det = get_detector("team-cam")
        assert det.threshold == meta["threshold"] and "held-out files" in det.threshold_note()
        det.model("cpu")
        assert det.weights_sha256 == meta["sha256"]
        scores = det.predict(np.zeros((2, 192, 192, 3), np.uint8))
        assert scores.shape == (2,) and np.isfinite(scores).all()
    finally:
        unregister("team-cam")

    # The same name again is refused; a changed byte is refused at load.
    assert cli.main(["train", "--real", str(footage), "--name", "team-cam", "--no-pretrained"]) == cli.EXIT_REFUSED
    assert "already exists" in capfd.readouterr().err
    raw = bytearray(weights.read_bytes())
    raw[-1] ^= 1
    weights.chmod(0o644)
    weights.write_bytes(bytes(raw))
    try:
        register_installed()
        with pytest.raises(WeightsError):
            get_detector("team-cam").model("cpu")
    finally:
        unregister("team-cam")


def test_a_broken_trained_folder_is_skipped_with_a_warning(weights_home):
    list_detectors()  # discovery done first, so the only registration attempt is the one checked here
    folder = custom_root() / "half-made"
    folder.mkdir(parents=True)
    (folder / "detector.toml").write_text('name = "half-made"\narch = "mobilenetv2"\n')
    with pytest.warns(UserWarning, match="half-made"):
        assert register_installed() == []
    assert "half-made" not in list_detectors()


def test_an_efficientnet_lite0_folder_loads_strictly_with_its_own_normalisation(weights_home):
    import torch
    from safetensors.torch import save_file

    from detectors.sbi import LITE_MEAN, build_efficientnet_lite0

    folder = custom_root() / "lite-cam"
    folder.mkdir(parents=True)
    model = build_efficientnet_lite0()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "lite-cam.safetensors"))
    weights = folder / "lite-cam.safetensors"
    (folder / "detector.toml").write_text(
        f'name = "lite-cam"\narch = "efficientnet-lite0"\nfile = "lite-cam.safetensors"\n'
        f'sha256 = "{sha256_file(weights)}"\nsize = {weights.stat().st_size}\nthreshold = 0.7\n')
    card = tomllib.loads((Path(__file__).resolve().parent.parent / "detectors" / "cards" / "sbi-mobilenetv2.toml").read_text())
    (folder / "card.toml").write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in card.items()))
    try:
        assert register_installed() == ["lite-cam"]
        det = get_detector("lite-cam")
        assert det.mean == LITE_MEAN and det.threshold == 0.7 and det.threshold_note() is None
        loaded = det.model("cpu")
        assert det.gradcam_layer(loaded) is loaded.bn2
        x = torch.randn(1, 3, 192, 192)
        with torch.no_grad():
            assert torch.allclose(loaded(x), model.eval()(x), atol=1e-5)
    finally:
        unregister("lite-cam")
