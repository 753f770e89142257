"""Eighteen Years Old member table: order, inputs, TTA flags, weights; frame choice and normalisation by hand."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from detectors import eighteen_members as em
from detectors.effnet063 import EfficientNet063
from detectors import fakefinder_rules as rules


def test_members_in_upstream_score_order_with_their_files():
    assert tuple(m.name for m in em.MEMBERS) == rules.EIGHTEEN_MEMBERS  # the rule's names, in its order
    assert [m.file for m in em.MEMBERS] == [
        "sf_bc_jc_44000", "sf_32000", "sf_16x8_bc_jc_44000", "sf_trainval_52000", "xcep_bgr_58000", "b3_rgb_50000",
        "res34_rgb_23000", "b1_rgb_58000", "b1_rgb_long_alldata_66000", "b1_rgb_alldata_58000", "b0_rgb_58000"]


# name: (arch, size, rgb, flip, scale, weight, nominal) from the spec's §2.3 table and FF ensemble.py l.372-410
TABLE = {
    "SF1": ("slowfast50", 256, True, False, False, 10, None),
    "SF2": ("slowfast50", 256, True, False, False, 8, None),
    "SF3": ("slowfast50", 256, True, False, False, 4, None),
    "SF4": ("slowfast50", 256, True, False, False, 8, None),
    "XCP": ("xception", 299, False, True, False, 10, None),
    "B3": ("efficientnet-b3", 299, True, False, True, 6, 300),
    "RES34": ("resnet34", 256, True, True, True, 4, None),
    "B1": ("efficientnet-b1", 299, True, True, False, 10, 240),
    "B1long": ("efficientnet-b1", 299, True, False, False, 8, 240),
    "B1short": ("efficientnet-b1", 299, True, False, False, 8, 240),
    "B0": ("efficientnet-b0", 299, True, True, False, 7, 224),
}


@pytest.mark.parametrize("name", list(TABLE))
def test_member_row(name):
    m = em.member(name)
    assert (m.arch, m.size, m.rgb, m.flip, m.scale, m.weight, m.nominal) == TABLE[name]
    assert m.group == ("slowfast" if name.startswith("SF") else "image")
    want = {"slowfast50": em.SLOWFAST_STD, "xception": (0.5, 0.5, 0.5)}.get(m.arch, (0.229, 0.224, 0.225))
    assert m.std == want


@pytest.mark.parametrize("name", ["B3", "B1", "B0"])
def test_efficientnet_members_pad_for_the_shared_module_s_nominal_size(name):
    m = em.member(name)
    assert EfficientNet063(m.arch, num_classes=2).image_size == m.nominal


def test_unknown_member_is_named():
    with pytest.raises(KeyError, match="unknown Eighteen member 'B2'"):
        em.member("B2")


def test_final_weights():
    w = em.final_weights()
    assert w["SF1"] == pytest.approx(10 / 30 * 0.4)
    assert w["SF3"] == pytest.approx(4 / 30 * 0.4)
    assert w["B0"] == pytest.approx(7 / 53 * 0.6)  # ≈ 7.9 %: FF's unloaded B0 share
    assert w["XCP"] == pytest.approx(10 / 53 * 0.6)
    assert sum(w.values()) == pytest.approx(1.0)


@pytest.mark.parametrize("frames, picked", [
    (150, list(range(0, 150, 5))),  # 10 s at 30 fps: 30 frames, 6 groups
    (125, list(range(0, 120, 4))),  # step 4 gives 32, cut to 30
    (12, list(range(10))),
    (4, []),  # fewer than one group of 5
])
def test_image_frame_indices(frames, picked):
    assert em.image_frame_indices(frames) == picked


def test_image_input_keeps_bgr_for_xception_and_swaps_for_the_others():
    crops = torch.zeros(2, 299, 299, 3, dtype=torch.uint8)
    crops[..., 0], crops[..., 1], crops[..., 2] = 10, 20, 30  # B, G, R
    x = em.image_input(crops, em.member("XCP"))
    assert x.shape == (2, 3, 299, 299)
    assert x[0, :, 0, 0].tolist() == pytest.approx([(v / 255 - 0.5) / 0.5 for v in (10, 20, 30)])
    y = em.image_input(crops, em.member("B3"))
    assert y[1, :, 5, 7].tolist() == pytest.approx(
        [(30 / 255 - 0.485) / 0.229, (20 / 255 - 0.456) / 0.224, (10 / 255 - 0.406) / 0.225])


def test_clip_input_is_one_rgb_clip_per_face():
    crops = torch.zeros(2, 6, 256, 256, 3, dtype=torch.uint8)
    crops[..., 2] = 255  # red in BGR
    x = em.clip_input(crops, em.member("SF2"))
    assert x.shape == (2, 3, 6, 256, 256)
    assert x[0, 0, 0, 0, 0].item() == pytest.approx((1 - em.SLOWFAST_MEAN[0]) / em.SLOWFAST_STD[0])
    assert x[1, 2, 5, 9, 9].item() == pytest.approx((0 - em.SLOWFAST_MEAN[2]) / em.SLOWFAST_STD[2])


def test_inputs_refuse_the_wrong_size_or_kind():
    with pytest.raises(ValueError, match=r"RES34 takes \(F, 256, 256, 3\)"):
        em.image_input(torch.zeros(1, 299, 299, 3), em.member("RES34"))
    with pytest.raises(ValueError, match="use clip_input"):
        em.image_input(torch.zeros(1, 256, 256, 3), em.member("SF1"))
    with pytest.raises(ValueError, match="use image_input"):
        em.clip_input(torch.zeros(1, 2, 299, 299, 3), em.member("B1"))


# -- checkpoint keys and member outputs -------------------------------------------------------------
def test_strip_checkpoint_prefix_exactly_the_leading_wrapper():
    t = torch.zeros(1)
    assert list(em.strip_checkpoint_prefix({"module.model.fc.weight": t}, em.member("XCP"))) == ["fc.weight"]
    # only the leading one: FF's str.replace would also cut the inner "module."
    assert list(em.strip_checkpoint_prefix({"module.a.module.b": t}, em.member("SF1"))) == ["a.module.b"]
    with pytest.raises(ValueError, match=r"XCP: 1 key\(s\) without the 'module.model.' prefix"):
        em.strip_checkpoint_prefix({"module.fc.weight": t}, em.member("XCP"))
    with pytest.raises(ValueError, match="'fc.bias'"):
        em.strip_checkpoint_prefix({"module.fc.weight": t, "fc.bias": t}, em.member("B0"))


class TopLeftPixel(torch.nn.Module):
    """Logits (0, channel 0 at the top-left pixel): a model whose answer a mirror image changes."""

    def forward(self, x):
        first = x[:, 0, 0, 0] if x.ndim == 4 else x[:, 0, 0, 0, 0]
        return torch.stack([torch.zeros_like(first), first], dim=1)


def test_image_group_probabilities_flip_then_average_logits_in_fives():
    crops = torch.zeros(12, 299, 299, 3, dtype=torch.uint8)
    # Xception keeps BGR, so channel 0 is blue; (255/255 - 0.5)/0.5 = 1, (0 - 0.5)/0.5 = -1
    for f, v in enumerate([255, 255, 255, 0, 0]):
        crops[f, 0, 0, 0] = crops[f, 0, 298, 0] = v  # mirror-symmetric: logits 1, 1, 1, -1, -1
    crops[5:10, 0, 0, 0] = 255  # left 1, mirrored -1: averaged to 0
    crops[10:, 0, 0, 0] = 255  # frames 10, 11 are not chosen (12 frames -> 10)
    p = em.image_group_probabilities(TopLeftPixel(), crops, em.member("XCP"))
    # group 1: sigmoid(mean logit 0.2), not the mean of the probabilities (0.5462)
    assert p.tolist() == pytest.approx([0.549834, 0.5], abs=1e-6)
    no_flip = em.image_group_probabilities(TopLeftPixel(), crops[:, :, :, [2, 1, 0]], em.member("B1long"))
    # the RGB swap puts those values back in channel 0, now with ImageNet's red mean/std and no mirror
    hi, lo = (1 - 0.485) / 0.229, (0 - 0.485) / 0.229
    assert no_flip.tolist() == pytest.approx(torch.sigmoid(torch.tensor([(3 * hi + 2 * lo) / 5, hi])).tolist(),
                                             abs=1e-6)
    assert em.image_group_probabilities(TopLeftPixel(), crops[:4], em.member("B3")).numel() == 0


def test_clip_probabilities_one_per_face():
    crops = torch.zeros(2, 3, 256, 256, 3, dtype=torch.uint8)
    crops[0, 0, 0, 0, 2] = 255  # red (BGR index 2) of face 0's first frame
    p = em.clip_probabilities(TopLeftPixel(), crops, em.member("SF1"))
    red = [(1 - em.SLOWFAST_MEAN[0]) / em.SLOWFAST_STD[0], (0 - em.SLOWFAST_MEAN[0]) / em.SLOWFAST_STD[0]]
    assert p.tolist() == pytest.approx(torch.sigmoid(torch.tensor(red)).tolist(), abs=1e-6)


def test_face_rule_thresholds_are_float32_as_upstream():
    # upstream get_image_score keeps the group probabilities as float32 numpy and compares `output > 0.85`
    # in float32: eight groups of exactly float32(0.85) are not above it, so the plain mean of all ten
    at = float(np.float32(0.85))
    assert rules.eighteen_face_score([at] * 8 + [0.5] * 2) == pytest.approx((8 * at + 1.0) / 10)
    # just above it they are: the mean of the eight
    above = float(np.nextafter(np.float32(0.85), np.float32(1)))
    assert rules.eighteen_face_score([above] * 8 + [0.5] * 2) == pytest.approx(above)


def test_across_faces_thresholds_are_float32_as_upstream():
    # upstream: `np.where(all_score > 0.6)` on a float32 array compares in float32, so a face at exactly
    # float32(0.6) is not above 0.6 and [that, 0.7] is neither "all above 0.6" nor "all below 0.4": the mean
    at = float(np.float32(0.6))
    assert rules.eighteen_across_faces([at, 0.7]) == pytest.approx((at + 0.7) / 2)
    low = float(np.float32(0.4))
    assert rules.eighteen_across_faces([low, 0.3]) == pytest.approx((low + 0.3) / 2)
