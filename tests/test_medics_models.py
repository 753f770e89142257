"""The Medics' eight networks: upstream layouts (so the authors' files load strictly), shapes of a forward pass, the flip TTA and the 2-D median."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from detectors import medics_faces as mf
from detectors import medics_models as mm
from detectors.fakefinder_rules import MEDICS_2D, MEDICS_3D
from detectors.medics_faces import FaceRegion
from helpers import FIXTURES, state_shapes, upstream_keys
from tools.fixtures.medics_logits import probe_input, seeded_state
from tools.fixtures.medics_pipeline import case_inputs, probe_2d, probe_3d


@pytest.mark.parametrize("kind, fixture", [
    ("i3d", "medics-i3d"), ("res34", "medics-res34"), ("mc3_112", "medics-mc3_18"), ("mc3_224", "medics-mc3_18"),
    ("r2p1_112", "medics-r2plus1d_18"),
])
def test_3d_member_layout_matches_upstream_keys(kind, fixture):
    assert state_shapes(mm.build_member_3d(kind).state_dict()) == upstream_keys(fixture)


def test_2d_member_layout_matches_upstream_keys():
    assert state_shapes(mm.build_member_2d().state_dict()) == upstream_keys("medics-srxt50")


def test_every_member_has_an_architecture():
    assert tuple(m for m, _, _ in mm.MEMBERS_3D) == MEDICS_3D and mm.MEMBER_2D[0] == MEDICS_2D
    for _, _, kind in mm.MEMBERS_3D:
        mm.build_member_3d(kind)
    with pytest.raises(ValueError, match="unknown Medics 3-D"):
        mm.build_member_3d("res18")


def test_a_random_state_dict_round_trips_strictly():
    torch.manual_seed(0)
    src = mm.build_member_3d("res34")
    dst = mm.build_member_3d("res34")
    dst.load_state_dict(src.state_dict(), strict=True)
    x = torch.rand(1, 3, 4, 32, 32) * 255
    with torch.no_grad():
        assert torch.equal(src(x), dst(x))


@pytest.mark.parametrize("kind, clip", [
    ("res34", (2, 3, 4, 32, 32)), ("mc3_112", (2, 3, 4, 32, 32)), ("r2p1_112", (2, 3, 4, 32, 32)),
    # I3D's head average-pools a 2 x 7 x 7 window: >= 193 px and >= 9 frames.
    ("i3d", (1, 3, 9, 193, 193)),
])
def test_3d_forward_gives_two_logits_per_clip(kind, clip):
    torch.manual_seed(0)
    with torch.no_grad():
        out = mm.build_member_3d(kind)(torch.randn(*clip))
    assert out.shape == (clip[0], 2)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("size, kernel, stride, want", [
    (224, 7, 2, (2, 3)),   # even size: k - s = 5, the odd pixel after
    (9, 3, 2, (1, 1)),     # odd size: k - size % s = 2
    (7, 2, 2, (0, 1)),
    (56, 1, 1, (0, 0)),
    (5, 3, 1, (1, 1)),
    (3, 1, 2, (0, 0)),     # k - size % s = 0
])
def test_same_padding_matches_upstream_rule(size, kernel, stride, want):
    assert mm.same_pad(size, kernel, stride) == want


def test_i3d_max_pool_pads_with_zeros_not_minus_infinity():
    pool = mm.MaxPool3dSame((1, 3, 3), (1, 2, 2))
    x = -torch.ones(1, 1, 1, 4, 4)
    # 4 % 2 == 0 => pad 1 after: windows at the right/bottom edge see a zero.
    out = pool(x)
    assert out.shape == (1, 1, 1, 2, 2)
    assert out[0, 0, 0, 0, 0] == -1 and out[0, 0, 0, 1, 1] == 0


def test_shortcut_a_subsamples_and_pads_channels_with_zeros():
    torch.manual_seed(0)
    block = mm.BasicBlock3d(2, 4, stride=2).eval()
    nn.init.zeros_(block.conv2.weight)  # the residual branch then adds relu(bn2(0)) = 0
    x = torch.rand(1, 2, 3, 5, 5)
    with torch.no_grad():
        out = block(x)
    want = torch.cat([x[:, :, ::2, ::2, ::2], torch.zeros(1, 2, 2, 3, 3)], dim=1)
    assert torch.equal(out, want)


class FirstPixel(nn.Module):
    """Logits (0, x[0, 0, 0, 0, 0]): its class-1 probability is the sigmoid of the top-left pixel of frame 0."""

    def forward(self, x):
        return torch.stack([torch.zeros(len(x)), x[:, 0, 0, 0, 0]], dim=1)


def test_flip_tta_averages_the_clip_and_its_mirror_and_reverses_the_class():
    clip = torch.zeros(3, 2, 4, 5)
    clip[0, 0, 0, 0], clip[0, 0, 0, -1] = 2.0, -1.0  # the mirror brings the last column to the front
    got = mm.fake_probability_3d(FirstPixel(), clip)
    want = 1 - (torch.sigmoid(torch.tensor(2.0)) + torch.sigmoid(torch.tensor(-1.0))) / 2
    assert got == pytest.approx(float(want), abs=1e-6)


def test_flip_tta_refuses_a_batch():
    with pytest.raises(ValueError, match="one clip"):
        mm.fake_probability_3d(FirstPixel(), torch.zeros(1, 3, 2, 4, 5))


def test_2d_member_takes_the_lower_median_of_frame_sigmoids():
    torch.manual_seed(0)
    model = mm.build_member_2d()
    video = torch.randn(1, 3, 4, 64, 64)
    with torch.no_grad():
        per_frame = torch.sigmoid(torch.stack([model.forward_image(video[:, :, i]) for i in range(4)], 1))[0]
        got = model(video)
    assert got.shape == (1,)
    ranked = per_frame.sort().values
    assert ranked[1] < ranked[2]  # distinct, so lower median != mean of the middle two
    assert got[0] == ranked[1]


def upstream_outputs() -> dict[str, list[float]]:
    """model -> FakeFinder's own outputs on the seeded weights and input (tests/fixtures/medics-logits.tsv)."""
    rows = [l for l in (FIXTURES / "medics-logits.tsv").read_text().splitlines() if l and not l.startswith("#")]
    assert rows[0] == "model\toutputs"
    return {model: json.loads(values) for model, values in (r.split("\t") for r in rows[1:])}


@pytest.mark.parametrize("model", ["i3d", "res34", "srxt50"])
def test_outputs_match_fakefinders_own_models_on_seeded_weights(model):
    with torch.device("meta"):  # no random init: every tensor comes from the seeded state
        net = mm.build_member_2d() if model == "srxt50" else mm.build_member_3d(model)
    net.load_state_dict({k: torch.from_numpy(v) for k, v in seeded_state(model).items()}, strict=True, assign=True)
    with torch.no_grad():
        got = net(torch.from_numpy(probe_input(model)))[0].reshape(-1).tolist()
    want = upstream_outputs()[model]
    assert got == pytest.approx(want, rel=1e-4, abs=1e-5)


class MeanOfInput(nn.Module):
    """Logits (0, mean of the clip): lets a test see which normalisation reached the model."""

    def forward(self, x):
        return torch.stack([torch.zeros(len(x)), x.flatten(1).mean(1)], dim=1)


def test_face_score_3d_crops_normalises_and_reverses():
    video = np.full((40, 48, 64, 3), 255, np.uint8)
    region = FaceRegion(0, 39, (0, 47), (0, 47), None)          # a 48 x 48 face filling the box
    # i3d: every value 255 -> 1.0; 1 - sigmoid(1) for both mirror images
    got = mm.face_score_3d(MeanOfInput(), "i3d", video, region)
    assert got == pytest.approx(1 - float(torch.sigmoid(torch.tensor(1.0))), abs=1e-6)
    raw = mm.face_score_3d(MeanOfInput(), "res34", video, region)   # raw 255: sigmoid(255) = 1
    assert raw == pytest.approx(0.0, abs=1e-6)


class MeanSigmoid2d(nn.Module):
    """Per frame sigmoid(mean of the frame), then the lower median, like SingleHead2d's video path."""

    def forward(self, x):
        probs = torch.sigmoid(x.mean(dim=(1, 3, 4)))
        return torch.median(probs, dim=1).values


def test_face_score_2d_runs_the_boxes_crops_and_median():
    video = np.zeros((40, 60, 80, 3), np.uint8)
    video[:, 10:50, 10:50] = 200
    mask = np.zeros((4, 60, 80), bool)
    mask[:, 10:50, 10:50] = True
    region = FaceRegion(0, 39, (10, 49), (10, 49), mask)
    got = mm.face_score_2d(MeanSigmoid2d(), video, region, scale=1.0)
    want = float(MeanSigmoid2d()(mf.model_input_2d(mf.crops_2d(video, region, mf.face_boxes_2d(region, 1.0)))))
    assert got == want and len(mf.face_boxes_2d(region, 1.0)) == 30


def test_a_2d_box_over_the_top_edge_crops_the_bottom_rows_as_upstream():
    video = np.zeros((40, 18, 30, 3), np.uint8)
    mask = np.zeros((2, 18, 30), bool)
    mask[:, 10:18, 0:20] = True                                  # boxes (0, -4, 22, 18): see test_medics_faces
    region = FaceRegion(0, 19, (0, 0), (0, 0), mask)
    crops = mf.crops_2d(video, region, mf.face_boxes_2d(region, 1.0))
    assert {c.shape for c in crops} == {(4, 22, 3)}               # rows -4:18 = the last 4 rows


# One 3-D architecture per FakeFinder normalisation (r2p1_112 shares mc3_112's).
KIND_OF_NORM = {"i3d": "i3d", "nil": "res34", "112_imagenet": "mc3_112", "224_imagenet": "mc3_224"}


def upstream_pipeline() -> dict[str, dict]:
    """case -> FakeFinder's own regions and per-face values (tests/fixtures/medics-pipeline.tsv)."""
    rows = [l for l in (FIXTURES / "medics-pipeline.tsv").read_text().splitlines() if l and not l.startswith("#")]
    assert rows[0] == "case\tresult"
    return {case: json.loads(result) for case, result in (r.split("\t") for r in rows[1:])}


@pytest.mark.parametrize("case", ["320x180", "480x270", "640x360"])
def test_per_face_values_match_fakefinders_own_inference_with_probe_networks(case):
    """Crop, square, resize, centre crop, each normalisation, flip TTA and class reversal (3-D), and
    the 2-D boxes, crops, resize, BGR preprocessing, even-frame mirror and median, against
    FakeFinder's inference_3d / inference_2d run on the same seeded video and boxes."""
    video, boxes, probs, shape, scale = case_inputs(case)
    regions = mf.face_regions(boxes, probs, shape, scale)
    want = upstream_pipeline()[case]["faces"]
    assert [[[r.frame_from, r.frame_to], list(r.rows), list(r.cols)] for r in regions] == [f["roi"] for f in want]
    video = video[:mf.last_frame_needed(regions)]
    for region, face in zip(regions, want):
        got = {norm: mm.face_score_3d(probe_3d(norm).eval(), KIND_OF_NORM[norm], video, region) for norm in KIND_OF_NORM}
        got["2d"] = mm.face_score_2d(probe_2d().eval(), video, region, scale)
        assert got == pytest.approx(face["values"], abs=1e-6)
