"""Tests for workbench.demo: clip writing, truth, the swap's footprint, determinism, tracking truth."""
from __future__ import annotations

import json
from itertools import islice

import numpy as np
import pytest

from workbench import demo
from workbench.video import iter_frames, probe

W, H, FPS = 320, 240, 10
FACES = [
    demo.SceneFace("grace_hopper", x=0.3, y=0.45, height=0.3),
    demo.SceneFace("astronaut", x=0.72, y=0.42, height=0.27, drift=(-0.01, 0.0)),
]
SWAP = dict(swap=(0.5, 1.0), swap_target="grace_hopper", swap_donor="astronaut")


def _render(faces=FACES, seconds=1.2, width=W, height=H, seed=0, **kw):
    frames, truth = demo.render_scene(faces, seconds=seconds, fps=FPS, width=width, height=height, seed=seed, **kw)
    return list(frames), truth


def _iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def test_demo_sources_exist():
    sources = demo.demo_sources()
    assert set(sources) == {"grace_hopper", "astronaut", "camera"}
    for path in sources.values():
        assert path.is_file() and path.stat().st_size > 10_000


def test_make_clip_probes_and_truth_round_trips(tmp_path):
    clip = tmp_path / "clip.mp4"
    truth = demo.make_clip(clip, FACES, seconds=1.5, fps=FPS, width=W, height=H, seed=3, gop=8, **SWAP)
    info = probe(clip)
    assert (info.frames, info.width, info.height) == (15, W, H)
    assert info.fps == pytest.approx(FPS)
    assert truth.frames == 15 and truth.swap_frames == (5, 9)
    assert (truth.swap_target, truth.swap_donor) == ("grace_hopper", "astronaut")
    assert demo.truth_path(clip).is_file()
    assert demo.load_truth(clip) == truth
    raw = json.loads(demo.truth_path(clip).read_text())
    assert raw["generator"] == demo.GENERATOR
    assert set(raw["sources_sha256"]) == {"grace_hopper", "astronaut"}
    assert all(len(v) == 64 for v in raw["sources_sha256"].values())
    assert all(len(boxes) == 15 for boxes in truth.face_boxes.values())


def test_swap_changes_only_the_target_face_inside_the_segment():
    swapped, truth = _render(**SWAP)
    clean, clean_truth = _render()
    assert clean_truth.swap_frames is None and clean_truth.face_boxes == truth.face_boxes
    first, last = truth.swap_frames
    for n, (a, b) in enumerate(zip(swapped, clean)):
        diff = np.any(a != b, axis=2)
        if not first <= n <= last:
            assert not diff.any(), f"frame {n} outside the swap differs"
            continue
        assert diff.sum() > 200, f"swap frame {n} barely changed"
        x1, y1, x2, y2 = truth.face_boxes["grace_hopper"][n]
        # The blend is feathered: allow a small margin around the tight face box.
        mx, my = 0.1 * (x2 - x1), 0.1 * (y2 - y1)
        ys, xs = np.nonzero(diff)
        assert xs.min() >= x1 - mx and xs.max() <= x2 + mx
        assert ys.min() >= y1 - my and ys.max() <= y2 + my
        # The other face is untouched.
        ax1, ay1, ax2, ay2 = (int(v) for v in truth.face_boxes["astronaut"][n])
        assert not diff[ay1:ay2, ax1:ax2].any()


def test_render_is_deterministic_and_seed_matters():
    first_a = next(demo.render_scene(FACES, seconds=1.0, fps=FPS, width=W, height=H, seed=7, **SWAP)[0])
    first_b = next(demo.render_scene(FACES, seconds=1.0, fps=FPS, width=W, height=H, seed=7, **SWAP)[0])
    other = next(demo.render_scene(FACES, seconds=1.0, fps=FPS, width=W, height=H, seed=8, **SWAP)[0])
    assert first_a.dtype == np.uint8 and first_a.shape == (H, W, 3)
    assert np.array_equal(first_a, first_b)
    assert not np.array_equal(first_a, other)
    # A swapped frame is reproducible too.
    swap_a = next(islice(demo.render_scene(FACES, seconds=1.0, fps=FPS, width=W, height=H, seed=7, **SWAP)[0], 6, 7))
    swap_b = next(islice(demo.render_scene(FACES, seconds=1.0, fps=FPS, width=W, height=H, seed=7, **SWAP)[0], 6, 7))
    assert np.array_equal(swap_a, swap_b)


def test_face_that_appears_and_disappears_has_none_boxes_outside_its_time():
    walker = demo.SceneFace("camera", x=0.5, y=0.5, height=0.25, appear_s=0.4, disappear_s=0.9)
    frames, truth = _render(faces=[FACES[0], walker], seconds=1.2)
    without, _ = _render(faces=[FACES[0]], seconds=1.2)
    boxes = truth.face_boxes["camera"]
    visible = [n for n, b in enumerate(boxes) if b is not None]
    assert visible == [4, 5, 6, 7, 8]
    assert all(b is not None for b in truth.face_boxes["grace_hopper"])
    for n, (a, b) in enumerate(zip(frames, without)):
        assert np.array_equal(a, b) == (n not in visible), f"frame {n}"


def test_mtcnn_finds_a_face_near_each_truth_box(tmp_path):
    from PIL import Image

    clip = tmp_path / "det.mp4"
    truth = demo.make_clip(clip, FACES, seconds=1.0, fps=FPS, width=640, height=360, **SWAP)
    detector = demo._mtcnn()
    for n, rgb in iter_frames(clip, wanted=[0, 7]):  # one clean frame, one swapped frame
        boxes, _ = detector.detect(Image.fromarray(rgb))
        assert boxes is not None
        for source, per_frame in truth.face_boxes.items():
            best = max(_iou(b, per_frame[n]) for b in boxes)
            assert best > 0.6, f"{source} at frame {n}: best IoU {best:.2f}"


def test_make_demo_marks_the_standard_segment(tmp_path):
    clip = tmp_path / "demo.mp4"
    truth = demo.make_demo(clip, seconds=5.0, fps=4, width=W, height=H)
    assert truth.swap_frames == (16, 19)  # DEMO_SWAP_SECONDS clipped to the 5 s clip
    assert truth.swap_target == demo.DEMO_SWAP_TARGET and truth.swap_donor == demo.DEMO_SWAP_DONOR
    assert probe(clip).frames == 20
    assert demo.load_truth(clip) == truth
    # The camera moves: the faces do not stay put.
    boxes = truth.face_boxes["grace_hopper"]
    assert abs(boxes[0][0] - boxes[-1][0]) > 5


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError):
        demo.render_scene(FACES, seconds=1, fps=FPS, width=321, height=H)
    with pytest.raises(ValueError):
        demo.render_scene(FACES, seconds=1, fps=FPS, width=W, height=H, swap=(0, 1), swap_target="camera",
                          swap_donor="astronaut")
    with pytest.raises(ValueError):
        demo.render_scene(FACES + [FACES[0]], seconds=1, fps=FPS, width=W, height=H)
