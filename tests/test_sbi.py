"""Self-Blended Images: masks, blends, determinism and training pairs on synthetic and real faces."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from tools.training import sbi

SEEDS = range(12)


@pytest.fixture(scope="module")
def face():
    """A 256x256 drawn face (textured skin ellipse, eyes, mouth) on a textured background."""
    rng = np.random.default_rng(123)
    img = cv2.GaussianBlur(rng.integers(40, 160, (256, 256, 3)).astype(np.uint8), (0, 0), 2)
    skin = np.clip(np.float32([205, 160, 130]) + cv2.GaussianBlur(rng.normal(0, 8, (256, 256, 3)), (0, 0), 1.5)
                   + np.linspace(-15, 15, 256)[None, :, None], 0, 255).astype(np.uint8)
    inside = np.zeros((256, 256), np.uint8)
    cv2.ellipse(inside, (128, 130), (62, 82), 0, 0, 360, 1, -1)
    img[inside > 0] = skin[inside > 0]
    landmarks = np.array([[105, 110], [151, 110], [128, 135], [108, 165], [148, 165]], float)
    for x, y in landmarks[:2]:
        cv2.circle(img, (int(x), int(y)), 7, (40, 30, 30), -1)
    cv2.line(img, (108, 165), (148, 165), (150, 60, 60), 4)
    return img, landmarks, (66.0, 48.0, 190.0, 212.0)


def test_self_blend_shapes_and_mask_region(face):
    img, lm, box = face
    for seed in SEEDS:
        out, mask = sbi.self_blend(img, lm, box, np.random.default_rng(seed))
        assert out.shape == img.shape and out.dtype == np.uint8
        assert mask.shape == img.shape[:2] and mask.dtype == np.float32
        assert mask.min() >= 0.0 and mask.max() <= 1.0 and mask.max() >= 0.25
        nose_x, nose_y = lm[2].astype(int)
        assert mask[nose_y, nose_x] >= 0.5 * mask.max()  # covers the face centre
        assert (mask > 0).mean() < 0.6  # not the whole crop
        assert mask[:10].max() == 0 and mask[-10:].max() == 0 and mask[:, :10].max() == 0 and mask[:, -10:].max() == 0


def test_blend_differs_inside_and_is_target_outside(face):
    img, lm, box = face
    for seed in SEEDS:
        out, mask, source, target = sbi.self_blend(img, lm, box, np.random.default_rng(seed), return_parts=True)
        core = mask >= 0.5 * mask.max()
        diff = lambda a, b: np.abs(a.astype(np.float32) - b.astype(np.float32))[core].mean()  # noqa: E731
        assert diff(out, target) > 1.0
        assert diff(out, img) > 1.0
        assert np.array_equal(out[mask == 0], target[mask == 0])
        expected = source.astype(np.float32) * mask[..., None] + target.astype(np.float32) * (1 - mask[..., None])
        assert np.abs(out - expected).max() <= 0.51  # blended = source*mask + target*(1-mask), rounded


def test_negligible_jitter_is_forced_to_a_visible_change(face, monkeypatch):
    img, lm, box = face
    monkeypatch.setattr(sbi, "source_target_augment", lambda im, rng: im.copy())
    monkeypatch.setattr(sbi, "_geometry_matrix", lambda mask, rng: np.float32([[1, 0, 0], [0, 1, 0]]))
    for seed in SEEDS:
        out, mask = sbi.self_blend(img, lm, box, np.random.default_rng(seed))
        core = mask >= 0.5 * mask.max()
        assert np.abs(out.astype(np.float32) - img)[core].mean() > 1.0
        assert np.array_equal(out[mask == 0], img[mask == 0])


def test_deterministic_per_seed(face):
    img, lm, box = face
    a, ma = sbi.self_blend(img, lm, box, np.random.default_rng(7))
    b, mb = sbi.self_blend(img, lm, box, np.random.default_rng(7))
    c, mc = sbi.self_blend(img, lm, box, np.random.default_rng(8))
    assert np.array_equal(a, b) and np.array_equal(ma, mb)
    assert not np.array_equal(a, c) and not np.array_equal(ma, mc)
    p1 = sbi.make_pair(img, lm, box, np.random.default_rng(3), 224)
    p2 = sbi.make_pair(img, lm, box, np.random.default_rng(3), 224)
    p3 = sbi.make_pair(img, lm, box, np.random.default_rng(4), 224)
    assert all(np.array_equal(x, y) for x, y in zip(p1, p2))
    assert not np.array_equal(p1[1], p3[1])


@pytest.mark.parametrize("size", [128, 224, 256, 380])
def test_make_pair_shapes(face, size):
    img, lm, box = face
    before = img.copy()
    real, fake = sbi.make_pair(img, lm, box, np.random.default_rng(size), size)
    for x in (real, fake):
        assert x.shape == (size, size, 3) and x.dtype == np.uint8
    assert np.array_equal(img, before)  # the caller's crop is never modified


def test_make_pair_shares_geometry(face, monkeypatch):
    _, lm, box = face
    # With the blend switched off, real and fake may differ only by independent degradations,
    # never by a flip or a different crop (a left-right ramp makes a flip obvious).
    img = np.ascontiguousarray(np.broadcast_to(np.linspace(0, 255, 256).astype(np.uint8)[None, :, None], (256, 256, 3)))
    monkeypatch.setattr(sbi, "self_blend", lambda im, *a, **k: (im.copy(), np.zeros(im.shape[:2], np.float32)))
    for seed in SEEDS:
        real, fake = (x.astype(np.float32) for x in sbi.make_pair(img, lm, box, np.random.default_rng(seed), 224))
        assert np.abs(real - fake).mean() < 0.5 * np.abs(real - fake[:, ::-1]).mean()


def test_common_augment_keeps_shape_and_dtype(face):
    img, _, _ = face
    before = img.copy()
    outs = [sbi.common_augment(img, np.random.default_rng(s)) for s in SEEDS]
    for out in outs:
        assert out.shape == img.shape and out.dtype == np.uint8 and out is not img
    assert np.array_equal(img, before)
    assert any(not np.array_equal(outs[0], o) for o in outs[1:])
    odd = np.random.default_rng(0).integers(0, 256, (101, 67, 3), dtype=np.uint8)
    assert sbi.common_augment(odd, np.random.default_rng(1)).shape == odd.shape
    assert sbi.source_target_augment(odd, np.random.default_rng(1)).shape == odd.shape


def test_masks_vary_and_boundaries_are_soft(face):
    img, lm, box = face
    areas = [sbi.face_hull_mask(img.shape[:2], lm, box, np.random.default_rng(s)).sum() for s in range(30)]
    assert max(areas) > 1.3 * min(areas)  # from inner face to whole face
    for seed in SEEDS:
        rng = np.random.default_rng(seed)
        hull = sbi.face_hull_mask(img.shape[:2], lm, box, rng)
        assert set(np.unique(hull)) == {0.0, 1.0}
        deformed = sbi.deform_mask(hull, rng)
        assert set(np.unique(deformed)) <= {0.0, 1.0}
        iou = (hull * deformed).sum() / np.maximum(hull, deformed).sum()
        assert 0.6 < iou <= 1.0
        soft = sbi.blur_mask(deformed, rng)
        assert soft.max() in sbi.BLEND_RATIOS or np.isclose(soft.max(), sbi.BLEND_RATIOS).any()
        assert ((soft > 0.02 * soft.max()) & (soft < 0.98 * soft.max())).sum() > 200  # a soft band


def test_geometry_is_small(face):
    img, lm, box = face
    hull = sbi.face_hull_mask(img.shape[:2], lm, box, np.random.default_rng(0))
    for seed in SEEDS:
        warped, wmask = sbi.source_target_geometry(img, hull, np.random.default_rng(seed))
        assert warped.shape == img.shape and warped.dtype == np.uint8 and wmask.shape == hull.shape
        iou = (hull * wmask).sum() / np.maximum(hull, wmask).sum()
        assert 0.75 < iou <= 1.0


def test_bad_inputs(face):
    img, lm, box = face
    with pytest.raises(ValueError):
        sbi.self_blend(img.astype(np.float32), lm, box, np.random.default_rng(0))
    # Unusable landmarks fall back to an ellipse in the box instead of failing.
    mask = sbi.face_hull_mask(img.shape[:2], np.full((5, 2), 128.0), box, np.random.default_rng(0))
    ys, xs = np.nonzero(mask)
    assert ys.size and xs.min() >= box[0] - 1 and xs.max() <= box[2] + 1 and ys.min() >= box[1] - 1


def test_real_photo_with_mtcnn_landmarks():
    mtcnn_mod = pytest.importorskip("facenet_pytorch")
    matplotlib = pytest.importorskip("matplotlib")
    from PIL import Image

    photo = np.array(Image.open(matplotlib.get_data_path() + "/sample_data/grace_hopper.jpg").convert("RGB"))
    boxes, probs, points = mtcnn_mod.MTCNN(keep_all=True, device="cpu").detect(Image.fromarray(photo), landmarks=True)
    i = int(np.argmax(probs))
    box, lm = np.asarray(boxes[i], float), np.asarray(points[i], float)
    out, mask = sbi.self_blend(photo, lm, box, np.random.default_rng(0))
    assert out.shape == photo.shape and mask.shape == photo.shape[:2]
    nose_x, nose_y = lm[2].astype(int)
    assert mask[nose_y, nose_x] >= 0.5 * mask.max()
    inside = mask > 0
    assert inside.mean() < 0.5
    # The mask stays near the detector's box (small slack for the hull and its deformation).
    ys, xs = np.nonzero(inside)
    bw, bh = box[2] - box[0], box[3] - box[1]
    assert xs.min() > box[0] - 0.3 * bw and xs.max() < box[2] + 0.3 * bw
    assert ys.min() > box[1] - 0.3 * bh and ys.max() < box[3] + 0.3 * bh


def test_erode_dilate_moves_the_boundary_both_ways(face):
    img, lm, box = face
    hull = sbi.face_hull_mask(img.shape[:2], lm, box, np.random.default_rng(0))
    grown = shrunk = unchanged = 0
    for seed in range(40):
        out = sbi.erode_dilate_mask(hull, np.random.default_rng(seed))
        assert out.shape == hull.shape and out.dtype == np.float32 and set(np.unique(out)) <= {0.0, 1.0}
        if out.sum() > hull.sum():
            grown += 1
            assert (out >= hull).all()  # dilation only adds
        elif out.sum() < hull.sum():
            shrunk += 1
            assert (out <= hull).all() and out.any()  # erosion only removes, never everything
        else:
            unchanged += 1
    assert grown and shrunk and unchanged  # both directions, and sometimes neither (p = 0.5)
    # Never emptied: a mask thinner than any kernel comes back as it was.
    line = np.zeros_like(hull)
    line[100, 50:200] = 1
    for seed in range(10):
        assert sbi.erode_dilate_mask(line, np.random.default_rng(seed), p=1.0).any()


def test_self_blend_uses_erosion_and_dilation(face, monkeypatch):
    img, lm, box = face
    calls = []
    real = sbi.erode_dilate_mask
    monkeypatch.setattr(sbi, "erode_dilate_mask", lambda m, rng, **kw: calls.append(m.sum()) or real(m, rng, **kw))
    sbi.self_blend(img, lm, box, np.random.default_rng(0))
    assert len(calls) == 1
