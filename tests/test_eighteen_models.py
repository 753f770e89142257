"""Eighteen Years Old layouts: SlowFast-50 and RetinaFace-MobileNet-0.25 against upstream key oracles; tiny forwards."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torchvision.models import resnet34

from detectors import retinaface as rf
from detectors.eighteen_models import SlowFast50
from detectors.wm import build_xception
from helpers import FIXTURES, state_shapes, upstream_keys
from tools.fixtures.eighteen_logits import CASES, flat_outputs, probe_input, seeded_state


@pytest.fixture(scope="module")
def slowfast():
    torch.manual_seed(0)
    return SlowFast50(num_classes=2).eval()


@pytest.fixture(scope="module")
def mnet():
    torch.manual_seed(0)
    return rf.RetinaFace(body="mobilenet0.25").eval()


def test_slowfast_layout_is_the_authors_key_for_key_in_order(slowfast):
    assert state_shapes(slowfast.state_dict()) == upstream_keys("eighteen-slowfast50")


def test_slowfast_spot_keys_from_the_spec(slowfast):
    shapes = dict(state_shapes(slowfast.state_dict()))
    assert shapes["fast_conv1.weight"] == (8, 3, 5, 7, 7)
    assert shapes["fast_res1.0.conv1.weight"] == (8, 8, 3, 1, 1)
    assert shapes["fast_res1.0.downsample.0.weight"] == (32, 8, 1, 1, 1)
    assert shapes["slow_res1.0.conv1.weight"] == (64, 80, 1, 1, 1)
    assert shapes["slow_res3.0.conv1.weight"] == (256, 640, 3, 1, 1)
    assert shapes["slow_res4.0.downsample_bn.running_mean"] == (2048,)
    assert shapes["Tconv4.weight"] == (256, 128, 5, 1, 1)
    assert shapes["fc.weight"] == (2, 2304)


@pytest.mark.parametrize("frames", [8, 7])  # 7: the slow path and the laterals both take ceil(T / 4) steps
def test_slowfast_forward_on_a_tiny_clip(slowfast, frames):
    torch.manual_seed(1)
    clip = torch.randn(2, 3, frames, 32, 32)
    with torch.inference_mode():
        both = slowfast(clip)
        first = slowfast(clip[:1])
    assert both.shape == (2, 2)
    assert torch.isfinite(both).all()
    torch.testing.assert_close(both[:1], first, rtol=1e-4, atol=1e-5)  # eval mode: no batch coupling


def test_slowfast_slow_path_samples_every_alpha_th_frame(slowfast):
    """Frames the slow path skips still reach the output through the fast path, so only check the slicing:
    the slow path's input for T = 9 is frames 0, 4, 8."""
    seen = []
    handle = slowfast.slow_conv1.register_forward_hook(lambda m, i, o: seen.append(i[0].shape[2]))
    try:
        with torch.inference_mode():
            slowfast(torch.zeros(1, 3, 9, 32, 32))
    finally:
        handle.remove()
    assert seen == [3]


def test_slowfast_refuses_a_frame_batch():
    with pytest.raises(ValueError, match=r"\(B, 3, T, H, W\)"):
        SlowFast50()(torch.zeros(1, 3, 32, 32))


def test_retinaface_mnet_layout_is_upstream_code_and_the_real_checkpoint(mnet):
    ours = state_shapes(mnet.state_dict())
    assert ours == upstream_keys("eighteen-retinaface-mnet")
    assert ours == upstream_keys("eighteen-mobilenet0.25_Final")
    assert len(ours) == 300


def test_retinaface_mnet_loads_a_checkpoint_shaped_dict_strictly(mnet):
    fake = {k: torch.zeros(s, dtype=torch.long if k.endswith("num_batches_tracked") else torch.float32)
            for k, s in upstream_keys("eighteen-mobilenet0.25_Final")}
    fresh = rf.RetinaFace(body="mobilenet0.25")
    assert not fresh.load_state_dict(rf.convert_state_dict(fake), strict=True).missing_keys


def test_retinaface_mnet_uses_leaky_0_1_in_fpn_and_ssh(mnet):
    slopes = {m.negative_slope for name, m in mnet.named_modules()
              if isinstance(m, torch.nn.LeakyReLU) and name.startswith(("fpn", "ssh"))}
    assert slopes == {0.1}
    r50 = rf.RetinaFace()
    assert {m.negative_slope for m in r50.modules() if isinstance(m, torch.nn.LeakyReLU)} == {0.0}


def test_retinaface_mnet_forward_matches_the_prior_count(mnet):
    with torch.inference_mode():
        loc, conf, landms = mnet(torch.randn(1, 3, 72, 96))
    priors = rf.prior_boxes(72, 96)
    assert loc.shape == (1, len(priors), 4)
    assert conf.shape == (1, len(priors), 2) and landms.shape == (1, len(priors), 10)
    torch.testing.assert_close(conf.sum(-1), torch.ones(1, len(priors)))


def test_retinaface_unknown_body_is_refused():
    with pytest.raises(ValueError, match="unknown RetinaFace body 'mobilenet1.0'"):
        rf.RetinaFace(body="mobilenet1.0")


def test_xception_member_is_wm_s_timm_legacy_xception_key_for_key():
    assert state_shapes(build_xception().state_dict()) == upstream_keys("eighteen-xception")


def test_resnet34_member_is_torchvision_s():
    # the oracle is FF's resnet.py, itself torchvision: a consistency check that pins the 2-class head
    assert state_shapes(resnet34(weights=None, num_classes=2).state_dict()) == upstream_keys("eighteen-resnet34")


# -- forward equal to FakeFinder's own code (tests/fixtures/eighteen-logits.tsv) ----------------------------
def upstream_outputs() -> dict[str, tuple[list[int], np.ndarray]]:
    rows = [l for l in (FIXTURES / "eighteen-logits.tsv").read_text().splitlines() if l and not l.startswith("#")]
    assert rows[0] == "fixture\tinput_shape\toutputs"
    return {name: (json.loads(shape), np.array(json.loads(out))) for name, shape, out in (r.split("\t") for r in rows[1:])}


OURS = {"eighteen-slowfast50": lambda: SlowFast50(num_classes=2),
        "eighteen-retinaface-mnet": lambda: rf.RetinaFace(body="mobilenet0.25"),
        "eighteen-xception": build_xception}


@pytest.mark.parametrize("fixture", list(CASES))
def test_outputs_equal_fakefinder_s_own_models(fixture):
    """Same seeded weights and input as tools/fixtures/eighteen_logits.py gave FakeFinder's code, loaded strictly."""
    shape, ref = upstream_outputs()[fixture]
    assert tuple(shape) == CASES[fixture][2]
    model = OURS[fixture]()
    model.load_state_dict({k: torch.from_numpy(v) for k, v in seeded_state(fixture).items()}, strict=True)
    with torch.inference_mode():
        got = np.array(flat_outputs(model.eval()(torch.from_numpy(probe_input(fixture)))))
    assert got.shape == ref.shape
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5)
