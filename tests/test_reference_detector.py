"""The shipped reference detector (SBI MobileNetV2): weights, loading, determinism, Grad-CAM, training."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from detectors.weights import sha256_file, WeightFile, WeightsError
from detectors.registry import default_detectors, get_detector
from detectors.sbi_mobilenetv2 import CROP, NAME, build_model
from helpers import auc_by_hand, IMAGENET, rgb_tensor
from tools.training import data as training_data
from detectors.weights import load_safetensors_strict, manifest_files, read_manifest, verify


@pytest.fixture(scope="module")
def detector():
    return get_detector(NAME)


def face_crop(size: int = 192) -> np.ndarray:
    """A real public-domain face (Grace Hopper), cut the way the detector cuts faces."""
    import matplotlib
    from PIL import Image

    from workbench.faces import FaceDetector
    from workbench.geometry import crop_face

    rgb = np.asarray(Image.open(Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg").convert("RGB"))
    face = FaceDetector().detect([rgb])[0][0]
    return crop_face(rgb, face.box, CROP)


def test_architecture_single_logit():
    model = build_model().eval()
    with torch.no_grad():
        out = model(torch.zeros(2, 3, CROP.size, CROP.size))
    assert out.shape == (2, 1)


def test_is_the_default_detector():
    assert default_detectors() == [NAME]


def test_shipped_weights_match_manifest_and_load_strictly(detector):
    (entry,) = [e for e in read_manifest() if e.detector == NAME]
    path = Path(detector.weights[0].path)
    assert path.is_file(), "the reference weights must ship in weights/"
    assert path.suffix == ".safetensors" and path.stat().st_size <= 20 * 1024**2
    assert sha256_file(path) == entry.sha256 and path.stat().st_size == entry.size
    detector.model("cpu")
    assert detector.weights_sha256 == entry.sha256


def test_one_byte_change_is_refused(tmp_path, detector):
    weight = detector.weights[0]
    tampered = tmp_path / "tampered.safetensors"
    shutil.copyfile(weight.path, tampered)
    blob = bytearray(tampered.read_bytes())
    blob[len(blob) // 2] ^= 0x01
    tampered.write_bytes(bytes(blob))
    with pytest.raises(WeightsError, match="does not match the manifest"):
        verify(weight, tampered)
    with pytest.raises(WeightsError):
        load_safetensors_strict(build_model(), weight, tampered)


def test_wrong_or_missing_keys_are_refused(tmp_path):
    state = {k: v.clone() for k, v in build_model().state_dict().items()}
    renamed = dict(state)
    renamed["classifier.1.weight_renamed"] = renamed.pop("classifier.1.weight")
    missing = dict(state)
    missing.pop("features.0.0.weight")
    for name, bad in (("renamed", renamed), ("missing", missing)):
        path = tmp_path / f"{name}.safetensors"
        save_file(bad, str(path))
        weight = WeightFile(path.name, sha256_file(path), path.stat().st_size)
        with pytest.raises(WeightsError, match="keys or shapes"):
            load_safetensors_strict(build_model(), weight, path)


def test_unverified_weights_are_refused(tmp_path):
    path = tmp_path / "w.safetensors"
    save_file(build_model().state_dict(), str(path))
    with pytest.raises(WeightsError, match="no sha256"):
        verify(WeightFile(path.name, None), path)


def test_deterministic_output_on_a_fixed_crop(detector):
    crop = face_crop()
    first = detector.predict(crop[None])
    again = detector.predict(np.stack([crop, crop, np.zeros_like(crop)]))
    # The shipped file, loaded by hand into a bare MobileNetV2 and fed the ImageNet-normalised crop.
    model = build_model().eval()
    model.load_state_dict(load_file(str(detector.weights[0].path)), strict=True)
    with torch.no_grad():
        ref = torch.sigmoid(model(rgb_tensor(crop[None], *IMAGENET))).item()
    assert first.shape == (1,) and first[0] == pytest.approx(ref, abs=1e-5)
    assert again[0] == pytest.approx(first[0], abs=1e-6) and again[1] == pytest.approx(first[0], abs=1e-6)


def test_gradcam_heatmap_has_the_crop_size(detector):
    from explain.gradcam import explain
    from workbench.geometry import heatmap_on_frame

    crop = face_crop()
    explanation = explain(detector, crop)
    assert explanation.heatmap.shape == crop.shape[:2]
    assert np.isfinite(explanation.heatmap).all()
    # Normalised as Grad-CAM does it: shifted to 0 and scaled so the hottest pixel is 1.
    assert explanation.heatmap.min() == 0.0 and explanation.heatmap.max() == pytest.approx(1.0, abs=1e-5)
    assert explanation.score == pytest.approx(float(detector.predict(crop[None])[0]), abs=1e-4)
    assert explanation.overlay().shape == crop.shape
    frame = np.zeros((300, 400, 3), np.uint8)
    placed = heatmap_on_frame(frame, (150, 100, 250, 220), CROP, explanation.heatmap)
    assert placed.shape == frame.shape and placed[160, 200].any() and not placed[5, 5].any()


def test_data_list_splits_by_identity():
    doc = json.loads(training_data.DATA_LIST.read_text())
    train_ids = {s["identity"] for s in doc["sources"] if s["split"] == "train"}
    val_ids = {s["identity"] for s in doc["sources"] if s["split"] == "val"}
    assert val_ids and not train_ids & val_ids
    assert all(len(s["sha256"]) == 64 for s in doc["sources"])
    assert val_ids == set(doc["validation_identities"])


def synthetic_samples(n: int, split: str, seed: int) -> list:
    """Face-like context crops with plausible 5-point landmarks (no real data needed)."""
    import cv2

    rng = np.random.default_rng(seed)
    samples = []
    for i in range(n):
        img = rng.integers(40, 200, (256, 256, 3), dtype=np.uint8)
        img = cv2.GaussianBlur(img, (9, 9), 3)
        skin = tuple(int(c) for c in rng.integers(120, 230, 3))
        cv2.ellipse(img, (128, 128), (50, 64), 0, 0, 360, skin, -1)
        marks = np.array([[108, 110], [148, 110], [128, 132], [112, 156], [144, 156]], np.float32) + rng.normal(0, 2, (5, 2))
        for x, y in marks[:2]:
            cv2.circle(img, (int(x), int(y)), 5, (30, 30, 30), -1)
        cv2.line(img, (int(marks[3][0]), int(marks[3][1])), (int(marks[4][0]), int(marks[4][1])), (120, 40, 40), 3)
        samples.append(training_data.FaceSample(img, marks.astype(np.float32), np.array([78, 64, 178, 192], np.float32),
                                                f"{split}-{i % 3}", split, f"synthetic/{split}/{i}"))
    return samples


def test_training_pipeline_runs_end_to_end(tmp_path):
    from tools.training.metrics import summarise
    from tools.training.train import save_weights, score, train, validation_set, write_manifest_row

    samples = synthetic_samples(8, "train", 0) + synthetic_samples(4, "val", 1)
    model, record = train(samples, epochs=2, seed=0, pretrained=False, batch_faces=4, log=lambda m: None)
    assert [h["epoch"] for h in record["history"]] == [1, 2]
    assert all(np.isfinite(h["loss"]) for h in record["history"])
    assert record["train_faces"] == 8 and record["val_faces"] == 4
    # Two epochs promise no quality; what must hold is that the recorded figures are the right ones
    # for the returned model: recompute the last epoch's validation scores and rank them by hand.
    val_x, val_y = validation_set([s for s in samples if s.split == "val"], 0)
    val_scores = score(model, val_x, torch.device("cpu"))
    last = record["history"][-1]["val"]
    assert last["positives"] == last["negatives"] == 8 == int(val_y.sum())
    assert last["roc_auc"] == pytest.approx(auc_by_hand(val_y, val_scores), abs=1e-12)
    assert last["real_above_0.5"] == pytest.approx(float(np.mean(val_scores[val_y == 0] >= 0.5)))
    assert last["fake_above_0.5"] == pytest.approx(float(np.mean(val_scores[val_y == 1] >= 0.5)))
    # A 2-epoch model from scratch may score every crop alike (AUC 0.5), so the AUC formula is
    # also checked on scores that vary, ties included.
    rng = np.random.default_rng(3)
    labels = np.array([0, 1] * 20)
    varied = np.round(rng.random(40) + 0.3 * labels, 1)
    assert summarise(labels, varied)["roc_auc"] == pytest.approx(auc_by_hand(labels, varied), abs=1e-12)
    assert auc_by_hand(labels, varied) not in (0.0, 0.5, 1.0)
    out = tmp_path / "w.safetensors"
    sha, size = save_weights(model, out)
    manifest = tmp_path / "manifest.toml"
    write_manifest_row(WeightFile(out.name, sha, size, None, "test", "test", detector=NAME, made="test"), manifest)
    (weight,) = manifest_files(NAME, manifest)
    reloaded = build_model().eval()
    assert load_safetensors_strict(reloaded, weight, out) == sha
    x = torch.randn(1, 3, 192, 192)
    with torch.no_grad():
        assert torch.allclose(reloaded(x), model.eval()(x), atol=1e-5)
