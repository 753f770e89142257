"""The shared efficientnet_pytorch-0.6.3 EfficientNet: upstream keys, the static-padding quirk, NTech's Conv3d expand, forward shapes."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from detectors import effnet063
from detectors.effnet063 import EfficientNet063, SeqExpandConv, stage_table, static_same_padding
from helpers import FIXTURES, state_shapes, upstream_keys
from tools.fixtures.effnet063_logits import CASES, probe_input, synthetic_state

REL_TOL = 1e-4  # mirroring the stride-2 padding moves these logits by 0.2 % (B1) to 12 % (B7)


def meta_shapes(*args, **kwargs) -> list[tuple[str, tuple[int, ...]]]:
    with torch.device("meta"):
        return state_shapes(EfficientNet063(*args, **kwargs).state_dict())


# -- layouts against the upstream code's own key lists (tests/fixtures/*.keys.tsv) ---------------------
@pytest.mark.parametrize("fixture,variant,classes,seq", [
    ("ntech-efficientnet-b7", "efficientnet-b7", 1, None),
    ("ntech-efficientnet-b7-seq", "efficientnet-b7", 1, 7),
    ("eighteen-efficientnet-b0", "efficientnet-b0", 2, None),
    ("eighteen-efficientnet-b1", "efficientnet-b1", 2, None),
    ("eighteen-efficientnet-b3", "efficientnet-b3", 2, None),
])
def test_keys_and_shapes_equal_the_upstream_build(fixture, variant, classes, seq):
    assert meta_shapes(variant, num_classes=classes, seq_length=seq) == upstream_keys(fixture)


def test_b3_equals_the_trunk_in_wm_checkpoint_layout():
    """WM's WS-DAN holds the B3 (ImageNet `_fc` kept) under `EFN.`; kaggle-dfdc's 0.6.3 submodule built the fixture."""
    trunk = [(k[len("EFN."):], s) for k, s in upstream_keys("wm-ckpt_e") if k.startswith("EFN.")]
    assert meta_shapes("efficientnet-b3", num_classes=1000) == trunk


def test_sequence_variant_swaps_exactly_the_expanding_blocks():
    plain = dict(meta_shapes("efficientnet-b7", num_classes=1))
    seq = dict(meta_shapes("efficientnet-b7", num_classes=1, seq_length=7))
    swapped = {k for k in seq if k.endswith("_expand_conv.conv.weight")}
    # B7: blocks 0-3 (first stage, expand ratio 1) have no expand conv; blocks 4-54 get the Conv3d.
    assert swapped == {f"_blocks.{n}._expand_conv.conv.weight" for n in range(4, 55)}
    for key in swapped:
        out, cin, *_ = plain[key.replace(".conv.weight", ".weight")]
        assert seq[key] == (out, cin, 3, 1, 1)
    assert {k: v for k, v in seq.items() if k not in swapped} == {
        k: v for k, v in plain.items() if not k.endswith("_expand_conv.weight")}


def test_stage_tables_match_the_spec():
    """Block counts and channels per variant (issue #15 spec §1.2, §2.2; WM's B3 table)."""
    blocks = {v: sum(row[0] for row in stage_table(v)) for v in effnet063.VARIANTS}
    assert blocks == {"efficientnet-b0": 16, "efficientnet-b1": 23, "efficientnet-b3": 26, "efficientnet-b7": 55}
    assert stage_table("efficientnet-b3") == ((2, 3, 1, 1, 40, 24), (3, 3, 2, 6, 24, 32), (3, 5, 2, 6, 32, 48),
                                              (5, 3, 2, 6, 48, 96), (5, 5, 1, 6, 96, 136), (6, 5, 2, 6, 136, 232),
                                              (2, 3, 1, 6, 232, 384))
    assert [row[5] for row in stage_table("efficientnet-b7")] == [32, 48, 80, 160, 224, 384, 640]


def test_unknown_variant_is_refused_by_name():
    with pytest.raises(ValueError, match="efficientnet-b9"):
        EfficientNet063("efficientnet-b9")


# -- the static-padding quirk ---------------------------------------------------------------------------
def test_static_padding_depends_on_the_nominal_size_only():
    # stride 2 on an even nominal size: total k - 2, the extra pixel after (left, right, top, bottom)
    assert static_same_padding(3, 2, 600) == (0, 1, 0, 1)
    assert static_same_padding(5, 2, 224) == (1, 2, 1, 2)
    # an odd nominal size would pad symmetrically: out 150, total 149*2 + 3 - 299 = 2
    assert static_same_padding(3, 2, 299) == (1, 1, 1, 1)
    assert static_same_padding(5, 1, 240) == (2, 2, 2, 2)
    assert static_same_padding(1, 1, 300) == (0, 0, 0, 0)


def test_b0_on_a_299_input_shrinks_as_063_does():
    """Eighteen feeds 299 px to models padded for 224: 299 -> 149 after the stem (TF-dynamic gives 150),
    then (149 + 0 + 1 - 3)//2 + 1 = 74, (74 + 1 + 2 - 5)//2 + 1 = 37, 18, 9."""
    model = EfficientNet063("efficientnet-b0", num_classes=2).eval()
    sizes, x = [], torch.zeros(1, 3, 299, 299)
    with torch.no_grad():
        x = model._conv_stem(x)
        sizes.append(x.shape[-1])
        for block in model._blocks:
            x = block(x)
            sizes.append(x.shape[-1])
    assert sorted(set(sizes), reverse=True) == [149, 74, 37, 18, 9]


# -- NTech's Conv3d expand --------------------------------------------------------------------------------
def test_seq_expand_conv_mixes_three_neighbouring_frames_within_a_clip():
    torch.manual_seed(0)
    conv = SeqExpandConv(4, 6, seq_length=7)
    x = torch.randn(14, 4, 2, 3)  # two clips of 7 frames, clip-major
    with torch.no_grad():
        got = conv(x)
    w = conv.conv.weight[:, :, :, 0, 0]  # (out, in, 3): taps for t-1, t, t+1
    want = torch.zeros(14, 6, 2, 3)
    for clip in range(2):
        for t in range(7):
            for tap, dt in enumerate((-1, 0, 1)):
                if 0 <= t + dt < 7:  # zero padding in time: no neighbour across a clip's edge
                    want[clip * 7 + t] += torch.einsum("oi,ihw->ohw", w[:, :, tap], x[clip * 7 + t + dt])
    assert got.shape == (14, 6, 2, 3)
    assert torch.allclose(got, want, atol=1e-5)


def test_seq_expand_conv_refuses_a_partial_clip():
    with pytest.raises(ValueError, match="7-frame clips"):
        SeqExpandConv(4, 6, seq_length=7)(torch.zeros(8, 4, 2, 2))


# -- forward passes, random init ----------------------------------------------------------------------------
@pytest.mark.parametrize("variant,classes,seq,batch,size", [
    ("efficientnet-b0", 2, None, 2, (64, 64)),
    ("efficientnet-b1", 2, None, 2, (64, 48)),
    ("efficientnet-b3", 1000, None, 1, (64, 64)),
    ("efficientnet-b7", 1, None, 2, (48, 32)),
    ("efficientnet-b7", 1, 7, 7, (48, 32)),
])
def test_forward_gives_one_row_per_image(variant, classes, seq, batch, size):
    torch.manual_seed(0)
    model = EfficientNet063(variant, num_classes=classes, seq_length=seq).eval()
    with torch.no_grad():
        out = model(torch.randn(batch, 3, *size))
    assert out.shape == (batch, classes)
    assert torch.isfinite(out).all()


# -- forward equal to the upstream code's own (tests/fixtures/effnet063-logits.tsv) ---------------------------
def upstream_logits() -> dict[str, np.ndarray]:
    rows = [l for l in (FIXTURES / "effnet063-logits.tsv").read_text().splitlines() if l and not l.startswith("#")]
    assert rows[0] == "fixture\tinput_shape\tlogits"
    return {name: np.array(json.loads(logits)) for name, _, logits in (r.split("\t") for r in rows[1:])}


@pytest.mark.parametrize("fixture", list(CASES))
def test_logits_equal_the_upstream_builds(fixture):
    """Same seeded weights and input as tools/fixtures/effnet063_logits.py gave efficientnet_pytorch 0.6.3 (NTech)
    and FakeFinder's vendored copy (Eighteen): 224 x 192 and 299 px inputs exercise the static-padding quirk,
    the 7-frame clip the Conv3d expand."""
    variant, classes, seq, *_ = CASES[fixture]
    model = EfficientNet063(variant, num_classes=classes, seq_length=seq)
    model.load_state_dict({k: torch.from_numpy(v) for k, v in synthetic_state(fixture).items()}, strict=True)
    with torch.no_grad():
        ours = model.eval()(torch.from_numpy(probe_input(fixture))).flatten().double().numpy()
    ref = upstream_logits()[fixture]
    assert ours.shape == ref.shape
    assert np.max(np.abs(ours - ref)) / np.max(np.abs(ref)) < REL_TOL
