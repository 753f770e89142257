"""Boken's padding variants against efficientnet_pytorch 0.6.3's and 0.7.0's own logits (tests/fixtures/boken-padding-logits.tsv)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from detectors import boken
from helpers import FIXTURES
from tools.fixtures.boken_padding import probe_input, synthetic_upstream_state

REL_TOL = 1e-4


def package_logits() -> dict[tuple[str, str], np.ndarray]:
    """(variant, padding) -> the package's logits, as recorded by tools/fixtures/boken_padding.py."""
    rows = [l for l in (FIXTURES / "boken-padding-logits.tsv").read_text().splitlines() if l and not l.startswith("#")]
    assert rows[0] == "variant\tpadding\tlogit0\tlogit1"
    return {(v, p): np.array([float(a), float(b)]) for v, p, a, b in (r.split("\t") for r in rows[1:])}


def our_logits(variant: str, padding: str, tmp_path) -> np.ndarray:
    """Our member, loaded strictly through boken's converter from the same synthetic upstream file."""
    raw = tmp_path / f"efn-{variant[-2:]}_synthetic.pth"
    torch.save({k: torch.from_numpy(v) for k, v in synthetic_upstream_state(variant).items()}, raw)
    member = boken.build_member(variant, padding)
    member.load_state_dict(boken.convert_checkpoint(raw, variant), strict=True)
    member.eval()
    with torch.no_grad():
        return member(torch.from_numpy(probe_input()))[0].double().numpy()


def max_rel(ours: np.ndarray, ref: np.ndarray) -> float:
    return float(np.max(np.abs(ours - ref)) / np.max(np.abs(ref)))


@pytest.mark.parametrize("padding", boken.PADDINGS)
@pytest.mark.parametrize("variant", boken.VARIANTS)
def test_member_matches_the_package_release(variant, padding, tmp_path):
    ref = package_logits()
    ours = our_logits(variant, padding, tmp_path)
    assert max_rel(ours, ref[variant, padding]) < REL_TOL
    # The other release's logits must be out of reach, or the test could not tell them apart.
    other = next(p for p in boken.PADDINGS if p != padding)
    assert max_rel(ours, ref[variant, other]) > 10 * REL_TOL


@pytest.mark.parametrize("variant", boken.VARIANTS)
def test_the_releases_differ_on_every_member(variant, tmp_path):
    a, b = (our_logits(variant, p, tmp_path) for p in boken.PADDINGS)
    assert np.max(np.abs(a - b)) > 1e-4


def test_063_pads_stride_two_convs_after():
    assert boken.same_padding(3, 2, 224, "0.6.3") == (0, 1)
    assert boken.same_padding(5, 2, 224, "0.6.3") == (1, 2)
    assert boken.same_padding(3, 2, 224, "0.7.0") == (1, 1)
    assert boken.same_padding(5, 2, 15, "0.7.0") == (2, 2)
    assert boken.same_padding(5, 1, 224, "0.6.3") == (2, 2)
    member = boken.build_member("efficientnet-b0", "0.6.3")
    padded = {n: c.pad for n, c in member.named_modules() if isinstance(c, boken.PaddedConv2d)}
    assert padded == {"conv_stem": (0, 1, 0, 1), "blocks.1.0.conv_dw": (0, 1, 0, 1), "blocks.2.0.conv_dw": (1, 2, 1, 2),
                      "blocks.3.0.conv_dw": (0, 1, 0, 1), "blocks.5.0.conv_dw": (1, 2, 1, 2)}
    assert not any(isinstance(c, boken.PaddedConv2d) for c in boken.build_member("efficientnet-b0", "0.7.0").modules())


def test_padding_is_a_property_of_each_weights_row(tmp_path):
    manifest = tmp_path / "manifest.toml"
    manifest.write_text(
        '[[weights]]\ndetector = "boken"\nfile = "boken/a-b0.safetensors"\npadding = "0.7.0"\n\n'
        '[[weights]]\ndetector = "boken"\nfile = "boken/b-b1.safetensors"\n\n'
        '[[weights]]\ndetector = "boken"\nfile = "boken/c-b2.safetensors"\npadding = "0.5.0"\n'
    )
    assert boken.padding_of("boken/a-b0.safetensors", manifest) == "0.7.0"
    assert boken.padding_of("boken/b-b1.safetensors", manifest) == boken.DEFAULT_PADDING == "0.6.3"
    with pytest.raises(boken.WeightsError, match="0.5.0"):
        boken.padding_of("boken/c-b2.safetensors", manifest)
    with pytest.raises(ValueError, match="padding"):
        boken.build_member("efficientnet-b0", "0.5.0")


def test_the_shipped_manifest_gives_fakefinders_padding():
    det = boken.Boken()
    assert det.paddings() == ["0.6.3"] * 3
    model = det.build()
    assert model.paddings == ["0.6.3"] * 3
    assert all(any(isinstance(c, boken.PaddedConv2d) for c in m.modules()) for m in model.members)
