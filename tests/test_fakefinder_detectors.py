"""The FakeFinder detectors selimsef (7 x EfficientNet-B7) and boken (EfficientNet B0/B1/B2).

No network and no real weights: random-init members, checkpoints written in the authors' exact
layouts, and key/shape fixtures generated from the upstream architectures
(tests/fixtures/*_keys.json: boken from efficientnet_pytorch 0.7.0, selimsef from timm).
"""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from detectors import boken, selimsef
from detectors.weights import sha256_file, WeightFile, WeightsError
from workbench.geometry import crop_face

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="module", autouse=True)
def _threads():
    old = torch.get_num_threads()
    torch.set_num_threads(min(2, old))
    yield
    torch.set_num_threads(old)


def face_crop(policy) -> np.ndarray:
    """A real face (Grace Hopper, public domain) cut with the detector's crop policy from a fixed box."""
    import matplotlib
    from PIL import Image

    rgb = np.asarray(Image.open(Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg").convert("RGB"))
    return crop_face(rgb, (170.0, 100.0, 350.0, 330.0), policy)


def _shapes(state: dict) -> list[list]:
    return [[k, list(v.shape)] for k, v in state.items()]


# -- single-member detectors whose weights are files written by the test -------------------------
def _with_weights(cls, files: list[Path]):
    """A subclass of a detector that loads the given safetensors files (absolute paths)."""
    weights = tuple(WeightFile(str(p), sha256=sha256_file(p)) for p in files)
    return type(f"Test{cls.__name__}", (cls,), {"weights": weights})()


class _NoWeights:
    """Mixin: members built at random, loading skipped (for Grad-CAM and shape checks)."""

    def load_weights(self, model):
        return "0" * 64


@pytest.fixture(scope="module")
def b7_member():
    torch.manual_seed(0)
    return selimsef.build_member().eval()


# -- key layouts --------------------------------------------------------------------------------
def test_selimsef_keys_match_fixture():
    fixture = json.loads((FIXTURES / "selimsef_keys.json").read_text())["tf_efficientnet_b7.ns_jft_in1k"]
    shapes = selimsef._expected_shapes()
    assert [[k, list(s)] for k, s in shapes.items()] == fixture
    assert len(fixture) == 1202 and ["fc.weight", [1, 2560]] in fixture and ["fc.bias", [1]] in fixture


@pytest.mark.parametrize("variant,count", [("efficientnet-b0", 360), ("efficientnet-b1", 508), ("efficientnet-b2", 508)])
def test_boken_keys_match_efficientnet_pytorch(variant, count):
    fixture = json.loads((FIXTURES / "boken_keys.json").read_text())[variant]
    member = boken.build_member(variant)
    upstream = boken.upstream_state_dict(member)
    assert len(fixture) == count
    assert sorted(_shapes(upstream)) == sorted(fixture)
    # The mapping is a bijection: there and back again gives every key of the member.
    assert {boken.upstream_to_ours(k, member) for k in upstream} == set(member.state_dict())


def test_boken_members_match_upstream_details():
    member = boken.build_member("efficientnet-b2")
    bns = [m for m in member.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and all(m.eps == 1e-3 for m in bns)
    # symmetric k//2 padding on every conv (efficientnet_pytorch 0.7.0 from PyPI behaves so)
    convs = [m for m in member.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size[0] > 1]
    assert all(m.padding == (m.kernel_size[0] // 2,) * 2 for m in convs)
    assert member.classifier.out_features == 2 and member.classifier.in_features == 1408
    assert boken.upstream_to_ours("_blocks.16._depthwise_conv.weight", member) == "blocks.5.0.conv_dw.weight"
    assert boken.ours_to_upstream("blocks.0.1.conv_pw.weight", member) == "_blocks.1._project_conv.weight"
    with pytest.raises(KeyError):
        boken.upstream_to_ours("_blocks.99._bn0.weight", member)


# -- conversion from the authors' files -------------------------------------------------------
def test_selimsef_upstream_checkpoint_converts_loads_and_predicts(tmp_path, b7_member):
    raw = tmp_path / selimsef.CHECKPOINTS[0]
    torch.save(
        {"epoch": 36, "state_dict": {"module." + k: v for k, v in b7_member.state_dict().items()}, "bce_best": 0.19},
        raw,
    )
    converted = selimsef.convert_checkpoint(raw)
    out = tmp_path / "member0.safetensors"
    save_file(converted, str(out))
    det = _with_weights(selimsef.Selimsef, [out])
    crop = face_crop(det.crop)
    assert crop.shape == (380, 380, 3)
    members = det.predict_members(crop[None])
    assert members.shape == (1, 1) and np.all(np.isfinite(members)) and 0.0 <= members[0, 0] <= 1.0
    assert det.weights_sha256 == sha256_file(out)
    # same numbers as the random member we saved
    with torch.no_grad():
        ref = torch.sigmoid(b7_member(det.preprocess(crop[None]).contiguous())).item()
    assert det.predict(crop[None])[0] == pytest.approx(ref, abs=1e-4)


def test_boken_upstream_checkpoints_convert_and_ensemble_predicts(tmp_path):
    torch.manual_seed(0)
    files = []
    for variant, up in zip(("efficientnet-b0", "efficientnet-b1"), boken.UPSTREAM):
        member = boken.build_member(variant)
        raw = tmp_path / Path(up["raw"]).name
        torch.save(boken.upstream_state_dict(member), raw)  # bare state dict, upstream names
        out = tmp_path / Path(up["file"]).name
        save_file(boken.convert_checkpoint(raw), str(out))
        files.append(out)
    det = _with_weights(boken.Boken, files)
    assert det.variants() == ["efficientnet-b0", "efficientnet-b1"]
    crops = np.stack([face_crop(det.crop), np.zeros((224, 224, 3), np.uint8)])
    members = det.predict_members(crops)
    assert members.shape == (2, 2) and np.all((members >= 0) & (members <= 1))
    np.testing.assert_allclose(det.predict(crops), members.mean(axis=0))
    assert len(det.weights_sha256) == 64 and det.weights_sha256 not in {sha256_file(f) for f in files}


def _corruptions(state: dict, shape_key: str):
    renamed = dict(state)
    key = next(iter(renamed))
    renamed[key + "_renamed"] = renamed.pop(key)
    missing = dict(state)
    missing.pop(shape_key)
    wrong = dict(state)
    wrong[shape_key] = torch.zeros(3, 3)
    return {"wrong key": renamed, "missing key": missing, "wrong shape": wrong}


def test_selimsef_bad_checkpoints_are_refused(tmp_path, b7_member):
    state = {"module." + k: v for k, v in b7_member.state_dict().items()}
    for what, bad in _corruptions(state, "module.fc.weight").items():
        raw = tmp_path / f"{what.replace(' ', '_')}"
        torch.save({"epoch": 1, "state_dict": bad, "bce_best": 0.2}, raw)
        with pytest.raises(WeightsError, match=what.split()[0] if what != "wrong key" else "unexpected"):
            selimsef.convert_checkpoint(raw)


def test_boken_bad_checkpoints_are_refused(tmp_path):
    state = boken.upstream_state_dict(boken.build_member("efficientnet-b0"))
    for what, bad in _corruptions(state, "_fc.weight").items():
        raw = tmp_path / f"efn-b0_{what.replace(' ', '_')}.pth"
        torch.save(bad, raw)
        with pytest.raises(WeightsError, match=what.split()[0] if what != "wrong key" else "unexpected"):
            boken.convert_checkpoint(raw)
    raw = tmp_path / "efn-b1_LS_6_loss_0.1756.pth"  # a b0 file under a b1 name
    torch.save(state, raw)
    with pytest.raises(WeightsError, match="efficientnet-b1"):
        boken.convert_checkpoint(raw)


def test_pickled_code_is_refused(tmp_path):
    raw = tmp_path / "efn-b0_evil.pth"
    torch.save({"x": Path("not-a-tensor")}, raw)
    with pytest.raises(WeightsError, match="weights_only"):
        boken.convert_checkpoint(raw)


# -- video aggregation ----------------------------------------------------------------------------
def test_confident_strategy_cases():
    cs = selimsef.confident_strategy
    # 13 of 32 above 0.8: 13 > 32 // 2.5 (= 12.0) and 13 > 11 -> mean of the confident fakes
    pred = np.array([0.9] * 6 + [0.95] * 7 + [0.5] * 19)
    assert cs(pred) == pytest.approx((6 * 0.9 + 7 * 0.95) / 13)
    # 12 of 32 above 0.8 is not enough (12 > 12.0 fails) -> plain mean
    pred = np.array([0.9] * 12 + [0.5] * 20)
    assert cs(pred) == pytest.approx(pred.mean())
    # 12 of 20 above 0.8: 12 > 20 // 2.5 (= 8.0) and 12 > 11 -> mean of the fakes
    assert cs(np.array([0.9] * 12 + [0.1] * 8)) == pytest.approx(0.9)
    # 11 fakes never trigger the rule, whatever the share
    assert cs(np.array([0.9] * 11)) == pytest.approx(0.9)  # plain mean, the same number here
    assert cs(np.array([0.9] * 11 + [0.5])) == pytest.approx((11 * 0.9 + 0.5) / 12)
    # 30 of 32 below 0.2 (> 28.8) -> mean of those
    pred = np.array([0.1] * 15 + [0.05] * 15 + [0.7, 0.9])
    assert cs(pred) == pytest.approx(0.075)
    # 28 of 32 below 0.2 (not > 28.8) -> plain mean
    pred = np.array([0.1] * 28 + [0.6] * 4)
    assert cs(pred) == pytest.approx(pred.mean())


def test_selimsef_upstream_aggregate_is_mean_over_members():
    det = object.__new__(selimsef.Selimsef)
    a = np.array([0.9] * 13 + [0.5] * 19)  # -> 0.9
    b = np.array([0.1] * 30 + [0.9] * 2)  # -> 0.1
    c = np.array([0.5] * 32)  # -> 0.5
    assert det.upstream_aggregate(np.stack([a, b, c])) == pytest.approx(0.5)
    assert det.upstream_aggregate(np.zeros((7, 0))) is None
    assert "confident" in selimsef.Selimsef.upstream_rule


def test_boken_upstream_aggregate_clips():
    det = object.__new__(boken.Boken)
    assert det.upstream_aggregate(np.array([[0.2, 0.4], [0.6, 0.6], [0.5, 0.9]])) == pytest.approx(0.5333333333)
    assert det.upstream_aggregate(np.full((3, 15), 0.999)) == pytest.approx(0.99)
    assert det.upstream_aggregate(np.full((3, 15), 0.0)) == pytest.approx(0.01)
    assert det.upstream_aggregate(np.zeros((3, 0))) is None


# -- declared policies, cards --------------------------------------------------------------------
def test_policies_and_cards():
    s, b = selimsef.Selimsef(), boken.Boken()
    assert s.crop.size == 380 and s.crop.pad and not s.crop.square and s.crop.margin == pytest.approx(1 / 3)
    assert (s.sampling.kind, s.sampling.count, s.sampling.faces) == ("even", 32, "all")
    assert b.crop.size == 224 and b.crop.square and not b.crop.pad and b.crop.margin == pytest.approx(0.1)
    assert (b.sampling.kind, b.sampling.count, b.sampling.faces) == ("even", 15, "largest")
    assert b.mean == (0.0, 0.0, 0.0) and b.std == (1.0, 1.0, 1.0)
    assert [Path(w.file).parent.name for w in s.weights] == ["selimsef"] * 7
    assert len(b.weights) == 3 and all(w.file.endswith(".safetensors") for w in s.weights + b.weights)
    assert len(selimsef.UPSTREAM) == 7 and len(boken.UPSTREAM) == 3
    for det in (s, b):
        card = det.card.to_dict()
        assert all(card.values()), card
        assert "not" in card["known_biases"].lower() and "MIT" in card["licence"]
        assert det.install_hint == f"python -m workbench weights install {det.name}"
        assert det.upstream_rule


# -- Grad-CAM ---------------------------------------------------------------------------------------
def test_gradcam_selimsef_single_member():
    from explain.gradcam import explain

    det = type("CamSelimsef", (_NoWeights, selimsef.Selimsef), {"weights": selimsef.Selimsef().weights[:1]})()
    model = det.model()
    assert len(model.members) == 1
    assert det.gradcam_target(model) is model.members[0]
    # B7's backward pass at 380 px takes 10+ s on 2 CPU cores; the heatmap logic does not depend on
    # the size, so this test feeds a smaller crop (the heatmap must come back at the crop's size).
    crop = cv2.resize(face_crop(det.crop), (160, 160), interpolation=cv2.INTER_AREA)
    exp = explain(det, crop)
    assert exp.heatmap.shape == (160, 160) and np.all(np.isfinite(exp.heatmap))
    assert 0.0 <= exp.score <= 1.0


def test_gradcam_boken_targets_fake_class():
    from explain.gradcam import explain

    torch.manual_seed(1)
    det = type("CamBoken", (_NoWeights, boken.Boken), {"weights": boken.Boken().weights[:1]})()
    crop = face_crop(det.crop)
    exp = explain(det, crop)
    assert exp.heatmap.shape == (224, 224) and np.all(np.isfinite(exp.heatmap))
    # the single logit is fake minus real, so its sigmoid is the softmax fake probability
    assert exp.score == pytest.approx(float(det.predict(crop[None])[0]), abs=1e-5)


def test_ensembles_share_one_base_and_name_their_converters():
    from detectors.ensemble import EnsembleDetector
    from detectors.registry import detector_class
    from detectors.weights import generic_convert

    for name in ("selimsef", "boken", "wm"):
        cls = detector_class(name)
        assert issubclass(cls, EnsembleDetector)
        assert cls.convert_checkpoint is not generic_convert  # each reads its own upstream layout


def test_an_ensemble_refuses_a_member_count_that_does_not_match_its_files(tmp_path, monkeypatch):
    from detectors.weights import WeightFile, WeightsError

    det = selimsef.Selimsef()
    model = selimsef.SelimsefEnsemble(2)
    monkeypatch.setattr(selimsef.Selimsef, "weights", property(lambda self: (WeightFile("a.safetensors", "0" * 64),)))
    with pytest.raises(WeightsError, match="1 weights file.*2 member"):
        det.load_weights(model)


def test_module_prefix_is_stripped_once_and_collisions_refused():
    from detectors.weights import WeightsError, strip_module_prefix

    t = torch.zeros(1)
    assert set(strip_module_prefix({"module.a": t, "b": t})) == {"a", "b"}
    with pytest.raises(WeightsError, match="collides"):
        strip_module_prefix({"module.a": t, "a": t})
