"""Review-page benchmark: server-side time to produce the current frame (scrubbing patterns, before/after the frame cache) and Grad-CAM.

    python -m tools.ui_bench          # prints p50/p95 figures; asserts nothing
    python -m tools.ui_bench --scrub-only --threads 1

It goes through the app's own cached functions (workbench.ui.resources) outside a browser. The
scrub section replays the same seek patterns on main's path (one FrameReader: seek to the key
frame, decode forward) and on workbench.framecache.FrameCache, and divides every figure by a
plain sequential decode of one frame measured in the same run.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def percentiles(samples_ms: list[float]) -> dict:
    arr = np.asarray(samples_ms)
    return {"p50_ms": float(np.percentile(arr, 50)), "p95_ms": float(np.percentile(arr, 95)), "n": len(arr)}


def timed_ms(fn, calls) -> dict:
    """Percentiles of fn(*args) wall time over each args tuple in calls."""
    samples = []
    for args in calls:
        t = time.perf_counter()
        fn(*args)
        samples.append((time.perf_counter() - t) * 1000)
    return percentiles(samples)


def sequential_ms_per_frame(path: str, rotation: int = 0) -> float:
    """Wall ms per frame of a plain sequential decode of the whole file to RGB (the yardstick)."""
    from workbench.video import iter_frames

    t = time.perf_counter()
    count = sum(1 for _ in iter_frames(path, rotation=rotation))
    return (time.perf_counter() - t) * 1000 / count


def scrub_patterns(total: int, fps: float, seed: int = 0) -> dict[str, tuple[list[int], float]]:
    """Named seek sequences and the pause between events (s): what an analyst does with the scrubber.

    random: distinct random frames (each one a cold seek); step ±1 frame (arrow keys held at ~8/s);
    step ±1 s; a forward drag (+4 frames every 60 ms); a mixed session: random jumps, each followed
    by a few +1/-1 steps and a +1 s step.
    """
    rng = np.random.default_rng(seed)
    sec = max(1, int(round(fps)))
    patterns: dict[str, tuple[list[int], float]] = {}
    patterns["random seek"] = ([int(n) for n in rng.permutation(np.arange(2, total))[:60]], 0.3)
    start = int(rng.integers(total // 4, total // 2))
    steps = [start + i for i in range(30)]
    steps += [steps[-1] - i for i in range(1, 31)]
    patterns["step ±1 frame"] = ([min(total - 1, max(0, n)) for n in steps], 0.12)
    seconds = []
    for first in rng.integers(0, sec, 3):
        up = list(range(int(first), total, sec))
        seconds += up + up[-2::-1]
    patterns["step ±1 s"] = (seconds, 0.25)
    drag_start = int(rng.integers(0, max(1, total - 160)))
    patterns["drag forward"] = ([min(total - 1, drag_start + 4 * i) for i in range(40)], 0.06)
    mixed = []
    for jump in rng.integers(0, total, 10):
        n = int(jump)
        mixed += [n, n + 1, n + 2, n + 3, n + 2, n + 2 + sec]
    patterns["mixed session"] = ([min(total - 1, max(0, n)) for n in mixed], 0.15)
    return patterns


def replay(read, pattern: list[int], pause_s: float, preview=None,
           cached=None) -> tuple[list[float], list[float], list[bool]]:
    """(ms to the exact frame, ms to the first image on screen) per event, one event every pause_s,
    and per event whether its exact frame was already held (cached(n) before the read)."""
    exact, first, held = [], [], []
    for n in pattern:
        held.append(bool(cached is not None and cached(n)))
        started = time.perf_counter()
        shown = None if preview is None else preview(n)
        first_ms = (time.perf_counter() - started) * 1000 if shown is not None else None
        read(n)
        exact_ms = (time.perf_counter() - started) * 1000
        exact.append(exact_ms)
        first.append(exact_ms if first_ms is None else first_ms)
        time.sleep(max(0.0, pause_s - (time.perf_counter() - started)))
    return exact, first, held


def scrub_figures(path: str) -> dict:
    """Each scrub pattern on main's path and on the frame cache, with the sequential-decode yardstick."""
    from workbench.framecache import FrameCache
    from workbench.video import FrameReader, probe

    info = probe(path)
    seq = float(np.median([sequential_ms_per_frame(path, info.rotation) for _ in range(3)]))
    out: dict = {"sequential_decode_ms_per_frame": seq, "patterns": {}}
    for name, (pattern, pause) in scrub_patterns(info.frames, info.fps).items():
        with FrameReader(path, info) as reader:
            reader.read(0)  # opened, as the app's reader is when scrubbing starts
            before, _, _ = replay(reader.read, pattern, pause)
        with FrameCache(path, info) as cache:
            cache.start_proxies()
            cache.wait_idle()  # the proxies are built while the analyst looks at frame 0
            cache.read(0)
            cache.wait_idle()
            after, first, held = replay(cache.read, pattern, pause, cache.preview, cache.cached)
        cold = [ms for ms, was_held in zip(after, held) if not was_held]
        out["patterns"][name] = {"events": len(pattern), "pause_ms": pause * 1000, "held_before_read": sum(held),
                                 "after_exact_not_held": percentiles(cold) if cold else None,
                                 "before": percentiles(before),
                                 "after_exact": percentiles(after), "after_first_image": percentiles(first)}
    return out


def print_scrub(figures: dict) -> None:
    seq = figures["sequential_decode_ms_per_frame"]
    print(f"plain sequential decode: {seq:.2f} ms per frame (x = multiples of it)")
    print(f"{'pattern':<16} {'events':>6} {'held':>5}  {'before p50 / p95':>32}  {'after, exact p50 / p95':>32}  "
          f"{'after, first image p50 / p95':>32}")
    for name, row in figures["patterns"].items():
        cells = []
        for key in ("before", "after_exact", "after_first_image"):
            p50, p95 = row[key]["p50_ms"], row[key]["p95_ms"]
            cells.append(f"{p50:6.1f} / {p95:6.1f} ms ({p50 / seq:5.1f}x /{p95 / seq:5.1f}x)")
        print(f"{name:<16} {row['events']:>6} {row['held_before_read']:>5}  " + "  ".join(cells))
    for name, row in figures["patterns"].items():
        cold = row["after_exact_not_held"]
        if cold:
            print(f"{name:<16} after, exact, frames not held only: p50 {cold['p50_ms']:6.1f} ms "
                  f"({cold['p50_ms'] / seq:5.1f}x)  p95 {cold['p95_ms']:6.1f} ms ({cold['p95_ms'] / seq:5.1f}x)  "
                  f"(n={cold['n']})")
    print("held: events whose exact frame the cache already held; first image: the exact frame if held, "
          "else the nearest low-res proxy")


def limit_threads(n: int) -> None:
    """torch and OpenCV on n threads (a shared machine); PyAV decodes as the app does."""
    import cv2
    import torch

    torch.set_num_threads(n)
    cv2.setNumThreads(n)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.ui_bench")
    parser.add_argument("--seeks", type=int, default=60)
    parser.add_argument("--threads", type=int, default=0, help="torch/OpenCV threads (0: their default)")
    parser.add_argument("--scrub-only", action="store_true", help="only the scrub patterns (no analysis, no Grad-CAM)")
    parser.add_argument("--clip", help="scrub this video instead of the demo clip (with --scrub-only)")
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    if args.threads:
        limit_threads(args.threads)
    if args.scrub_only:
        if args.clip:
            clip = args.clip
        else:
            from workbench import demo

            clip = str(Path(tempfile.mkdtemp(prefix="wb-bench-")) / "demo.mp4")
            demo.make_demo(Path(clip))
        figures = {"scrub": scrub_figures(clip)}
        print_scrub(figures["scrub"])
        if args.json:
            Path(args.json).write_text(json.dumps(figures, indent=2))
        return 0
    logging.getLogger("streamlit").setLevel(logging.ERROR)
    home = Path(tempfile.mkdtemp(prefix="wb-bench-"))
    os.environ["WORKBENCH_HOME"] = str(home)

    # Imported after WORKBENCH_HOME is set: the app's store and caches read it when first used.
    from detectors.registry import default_detectors
    from workbench import config
    from workbench.pipeline import Sampling
    from workbench.service import analyse_evidence
    from workbench.ui import resources

    store = resources.store()  # creates the 10-s 720p demo case
    case = store.cases()[0]
    evidence = store.case_evidence(case["id"])[0]
    sha, path = evidence["sha256"], evidence["stored_path"]
    name = default_detectors()[0]
    analyse_evidence(store, sha, [name], Sampling(sample_fps=2.0), device=config.device())
    key = resources.results_key(sha)
    data = resources.review_data(sha, None, key)
    total = data.total_frames
    rng = np.random.default_rng(0)
    figures: dict = {"video": f"{evidence['probe']['width']}x{evidence['probe']['height']} {evidence['probe']['codec']}, "
                              f"{total} frames", "detector": name}

    resources.frame_with_boxes(sha, path, 0, data.face_run_id, name, key)  # opens the frame cache
    resources.frame_cache(sha, path).wait_idle()
    # Distinct random frames back to back (no pause: the prefetcher gets no idle time), then
    # frame after frame, then the last few again (held by the byte-bounded frame cache).
    seeks = [int(n) for n in rng.permutation(np.arange(args.seeks + 2, total))[: args.seeks]]
    frame_with_boxes = lambda n: resources.frame_with_boxes(sha, path, n, data.face_run_id, name, key)  # noqa: E731
    figures["frame_with_boxes_random_seek"] = timed_ms(frame_with_boxes, [(n,) for n in seeks])
    figures["frame_with_boxes_next_frame"] = timed_ms(frame_with_boxes, [(n,) for n in range(1, 1 + args.seeks)])
    figures["frame_with_boxes_cached"] = timed_ms(frame_with_boxes, [(n,) for n in range(args.seeks - 20, 1 + args.seeks)])

    faces = [(f, tid) for f in data.frames_analysed for tid in data.tracks if f in data.tracks[tid]]
    resources.gradcam(sha, path, faces[0][0], faces[0][1], name, data.face_run_id, key)
    timings = []
    for frame, tid in faces[1:21]:
        resources.frame_cache(sha, path).read(frame)  # keep decoding out of the Grad-CAM figure
        t = time.perf_counter()
        resources.gradcam(sha, path, frame, tid, name, data.face_run_id, key)
        timings.append((time.perf_counter() - t) * 1000)
    figures["gradcam_uncached_incl_frame_read"] = percentiles(timings)
    from explain.gradcam import explain

    det = resources.detector(name)
    crop = np.random.default_rng(1).integers(0, 256, (det.crop.size, det.crop.size, 3), dtype=np.uint8)
    explain(det, crop)
    figures["gradcam_per_crop"] = timed_ms(explain, [(det, crop)] * 20)

    figures["scrub"] = scrub_figures(path)
    for key_name, value in figures.items():
        if key_name == "scrub":
            print_scrub(value)
        elif isinstance(value, dict):
            print(f"{key_name:<34} p50 {value['p50_ms']:7.1f} ms   p95 {value['p95_ms']:7.1f} ms   (n={value['n']})")
        else:
            print(f"{key_name:<34} {value}")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
