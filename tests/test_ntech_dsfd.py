"""NTechLab's DSFD ResNet-152: upstream keys, head output shapes, max-in-out, the multiplicative FPN merge, priors."""
from __future__ import annotations

import json
from math import sqrt

import pytest
import torch

from detectors.ntech_dsfd import DSFD, max_in_out, prior_boxes, upsample_product
from helpers import FIXTURES, state_shapes, upstream_keys
from tools.fixtures.ntech_dsfd_outputs import PRIOR_CASE, PROBE_SHAPE, probe_input, seeded_state


def test_keys_and_shapes_equal_fakefinders_ssd():
    """FakeFinder's own SSD('test') built the fixture, so WIDERFace_DSFD_RES152.fp16.pth loads strictly."""
    with torch.device("meta"):
        ours = state_shapes(DSFD().state_dict())
    assert ours == upstream_keys("ntech-dsfd-res152")


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return DSFD().eval()


@pytest.mark.parametrize("size,levels", [
    ((64, 96), ((16, 24), (8, 12), (4, 6), (2, 3), (1, 2), (1, 1))),
    # odd sizes: every lateral keeps its own size, so the FPN upsampling is not a plain x2
    ((50, 70), ((13, 18), (7, 9), (4, 5), (2, 3), (1, 2), (1, 1))),
])
def test_forward_gives_one_prior_per_cell_of_six_levels(net, size, levels):
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        out = net(x)
    cells = sum(h * w for h, w in levels)
    assert out.feature_sizes == levels
    assert out.loc.shape == (2, cells, 4)
    assert out.scores.shape == (2, cells, 2)
    assert torch.allclose(out.scores.sum(-1), torch.ones(2, cells))
    assert prior_boxes(out.feature_sizes, size).shape == (cells, 4)


def test_forward_reads_the_first_four_loc_channels_cell_by_cell(net):
    """Level 0's loc head has 4 channels: its rows are the head's NCHW output moved to NHWC, row-major."""
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        out = net(x)
        c3 = net.layer1(x)
        c4 = net.layer2(c3)
        c5 = net.layer3(c4)
        fc7 = net.layer4(c5)
        p5 = upsample_product(net.latlayer3(fc7), net.smooth3(c5))
        p4 = upsample_product(net.latlayer2(p5), net.smooth2(c4))
        p3 = upsample_product(net.latlayer1(p4), net.smooth1(c3))
        head = net.loc[0](net.cpm3_3(p3))
    assert torch.allclose(out.loc[0, :16 * 24], head[0].permute(1, 2, 0).reshape(-1, 4), atol=1e-5)
    assert torch.allclose(out.loc[0, 1], head[0, :, 0, 1])


def test_max_in_out_puts_the_max_of_three_first_on_level_0_and_second_elsewhere():
    conf = torch.tensor([1.0, 5.0, 2.0, 7.0, 9.0, 4.0]).view(1, 6, 1, 1)
    assert max_in_out(conf, 0).flatten().tolist() == [5.0, 7.0, 9.0, 4.0]
    assert max_in_out(conf, 3).flatten().tolist() == [7.0, 5.0, 9.0, 4.0]


def test_fpn_merge_multiplies_after_resizing_to_the_lateral():
    top = torch.full((1, 1, 2, 3), 2.0)
    lateral = torch.arange(20.0).view(1, 1, 4, 5)
    assert torch.equal(upsample_product(top, lateral), lateral * 2.0)


def test_priors_centres_sizes_order_and_clamp():
    """A 128x256 padded input: level k has step 4·2^k; one prior per cell, width min/W/√1.5, height min/H·√1.5."""
    sizes = ((32, 64), (16, 32), (8, 16), (4, 8), (2, 4), (1, 2))
    priors = prior_boxes(sizes, (128, 256))
    assert priors.dtype == torch.float32 and priors.shape == (2048 + 512 + 128 + 32 + 8 + 2, 4)
    r = 1.5
    expect_first = [0.5 * 4 / 256, 0.5 * 4 / 128, 16 / 256 / sqrt(r), 16 / 128 * sqrt(r)]
    assert priors[0].tolist() == pytest.approx(expect_first, rel=1e-6)
    # row-major: index 1 is the next column of row 0, index 64 the first column of row 1
    assert priors[1, :2].tolist() == pytest.approx([1.5 * 4 / 256, 0.5 * 4 / 128])
    assert priors[64, :2].tolist() == pytest.approx([0.5 * 4 / 256, 1.5 * 4 / 128])
    level1 = priors[2048]
    assert level1.tolist() == pytest.approx([0.5 * 8 / 256, 0.5 * 8 / 128, 32 / 256 / sqrt(r), 32 / 128 * sqrt(r)])
    # level 4's 256-px prior is taller than the 128-px input: its height is clamped to 1, its width is not
    level4 = priors[2048 + 512 + 128 + 32]
    assert level4[3].item() == 1.0
    assert level4[2].item() == pytest.approx(256 / 256 / sqrt(r))
    assert priors[-1, 2:].tolist() == [1.0, 1.0]


def test_priors_refuse_a_wrong_level_count():
    with pytest.raises(ValueError, match="6 levels"):
        prior_boxes(((4, 4),) * 5, (16, 16))


# -- forward and priors equal to FakeFinder's own code (tests/fixtures/ntech-dsfd-outputs.tsv) ---------------
def upstream_rows() -> dict[str, list[float]]:
    text = (FIXTURES / "ntech-dsfd-outputs.tsv").read_text()
    rows = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert rows[0] == "name\tvalues"
    return {name: json.loads(values) for name, values in (r.split("\t") for r in rows[1:])}


def test_forward_equals_fakefinders_ssd_on_seeded_weights():
    """Same seeded weights and input as tools/fixtures/ntech_dsfd_outputs.py gave FakeFinder's SSD, loaded strictly."""
    want = upstream_rows()
    net = DSFD()
    net.load_state_dict({k: torch.from_numpy(v) for k, v in seeded_state().items()}, strict=True)
    with torch.no_grad():
        out = net.eval()(torch.from_numpy(probe_input()))
    assert [v for s in out.feature_sizes for v in s] == want["feature_sizes"]
    expected = torch.tensor(want["loc_conf"]).view(1, -1, 6)
    assert torch.allclose(out.loc, expected[..., :4], rtol=1e-4, atol=1e-5)
    assert torch.allclose(out.scores, expected[..., 4:], rtol=1e-4, atol=1e-5)
    priors = prior_boxes(out.feature_sizes, PROBE_SHAPE[2:])
    assert torch.equal(priors, torch.tensor(want["priors_probe"], dtype=torch.float32).view(-1, 4))


def test_priors_equal_fakefinders_get_prior_boxes_bit_for_bit():
    sizes, image = PRIOR_CASE
    want = torch.tensor(upstream_rows()["priors_64x96"], dtype=torch.float32).view(-1, 4)
    assert torch.equal(prior_boxes(sizes, image), want)
