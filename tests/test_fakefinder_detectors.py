"""The FakeFinder detectors selimsef (7 x EfficientNet-B7) and boken (EfficientNet B0/B1/B2).

No network and no real weights: random-init members, checkpoints written in the authors' exact
layouts, and key/shape oracles built by the authors' own model code (tests/fixtures/*.keys.tsv: boken from
FakeFinder's get_efficientnet on efficientnet_pytorch 0.7.0, selimsef from the authors' DeepFakeClassifier
on timm 0.4.12).
"""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from detectors import boken, selimsef
from detectors.weights import sha256_file, WeightFile, WeightsError
from helpers import combine_by_hand, member_probabilities_by_hand, state_shapes, upstream_keys
from workbench.geometry import crop_face


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


# -- single-member detectors whose weights are files written by the test -------------------------
def _with_weights(cls, files: list[Path]):
    """A subclass of a detector that loads the given safetensors files (absolute paths)."""
    weights = tuple(WeightFile(str(p), sha256=sha256_file(p)) for p in files)
    return type(f"Test{cls.__name__}", (cls,), {"weights": weights})()


class _NoWeights:
    """Mixin: members built at random, loading skipped (for Grad-CAM and shape checks)."""

    def load_weights(self, model):
        return "0" * 64


def decisive_head(linear: torch.nn.Linear) -> None:
    """A random head large enough that the input shows in the score.

    Random-init EfficientNet features are ~1e-4 and barely move with the input, so with timm's head
    init a wrong normalisation or a swapped member changes the score by less than the tolerance.
    """
    with torch.no_grad():
        linear.weight.normal_(0.0, 100.0)
        linear.bias.normal_(0.0, 0.5)


@pytest.fixture(scope="module")
def b7_member():
    torch.manual_seed(0)
    member = selimsef.build_member().eval()
    decisive_head(member.fc)
    return member


# -- key layouts (oracles built by the authors' code: tests/fixtures/README.md) -----------------
def test_selimsef_keys_match_the_authors_classifier():
    fixture = upstream_keys("selimsef-member")  # DeepFakeClassifier with timm 0.4.12, the authors' pin
    shapes = selimsef._expected_shapes()  # our member, built with timm 1.0.31
    assert list(shapes.items()) == fixture  # same keys, shapes and order
    assert len(fixture) == 1202 and ("fc.weight", (1, 2560)) in fixture and ("fc.bias", (1,)) in fixture


@pytest.mark.parametrize("variant,count", [("efficientnet-b0", 360), ("efficientnet-b1", 508), ("efficientnet-b2", 508)])
def test_boken_keys_match_efficientnet_pytorch(variant, count):
    fixture = upstream_keys(f"boken-{variant}")  # FakeFinder's get_efficientnet with efficientnet_pytorch 0.7.0
    member = boken.build_member(variant)
    upstream = boken.upstream_state_dict(member)
    assert len(fixture) == count
    assert sorted(state_shapes(upstream)) == sorted(fixture)
    # The mapping is a bijection: there and back again gives every key of the member.
    assert {boken.upstream_to_ours(k, member) for k in upstream} == set(member.state_dict())


def test_boken_members_match_upstream_details():
    member = boken.build_member("efficientnet-b2", "0.7.0")
    bns = [m for m in member.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and all(m.eps == 1e-3 for m in bns)
    # the 0.7.0 variant: symmetric k//2 padding on every conv (efficientnet_pytorch 0.7.0 from PyPI behaves so)
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
    assert det.weights_sha256 == sha256_file(out)
    # Same numbers as the random member we saved, fed the authors' ImageNet-normalised input by hand.
    ref = member_probabilities_by_hand("selimsef", SimpleNamespace(members=[b7_member]), crop[None])
    assert members.shape == (1, 1) and members[0, 0] == pytest.approx(ref[0, 0], abs=1e-4)
    assert det.predict(crop[None])[0] == pytest.approx(ref[0, 0], abs=1e-4)


def test_boken_upstream_checkpoints_convert_and_ensemble_predicts(tmp_path):
    torch.manual_seed(0)
    files, saved = [], []
    for variant, up in zip(("efficientnet-b0", "efficientnet-b1"), boken.UPSTREAM):
        member = boken.build_member(variant).eval()
        decisive_head(member.classifier)
        saved.append(member)
        raw = tmp_path / Path(up["raw"]).name
        torch.save(boken.upstream_state_dict(member), raw)  # bare state dict, upstream names
        out = tmp_path / Path(up["file"]).name
        save_file(boken.convert_checkpoint(raw), str(out))
        files.append(out)
    det = _with_weights(boken.Boken, files)
    assert det.variants() == ["efficientnet-b0", "efficientnet-b1"]
    crops = np.stack([face_crop(det.crop), np.zeros((224, 224, 3), np.uint8)])
    members = det.predict_members(crops)
    # Rows are the b0 and b1 files in order, each the softmax "fake" class of the saved member on RGB / 255.
    by_hand = member_probabilities_by_hand("boken", SimpleNamespace(members=saved), crops)
    assert members.shape == (2, 2)
    np.testing.assert_allclose(members, by_hand, atol=1e-5)
    assert not np.allclose(by_hand[0], by_hand[1], atol=1e-3)  # the two members differ: a swap would show
    np.testing.assert_allclose(det.predict(crops), combine_by_hand("boken", members))
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
    decisive_head(model.members[0].fc)
    assert det.gradcam_target(model) is model.members[0]
    # B7's backward pass at 380 px takes 10+ s on 2 CPU cores; the heatmap logic does not depend on
    # the size, so this test feeds a smaller crop (the heatmap must come back at the crop's size).
    crop = cv2.resize(face_crop(det.crop), (160, 160), interpolation=cv2.INTER_AREA)
    exp = explain(det, crop)
    assert exp.heatmap.shape == (160, 160) and np.all(np.isfinite(exp.heatmap))
    # The score Grad-CAM reports is the member's own probability for this crop.
    ref = member_probabilities_by_hand("selimsef", model, crop[None])
    assert exp.score == pytest.approx(float(ref[0, 0]), abs=1e-4)


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
