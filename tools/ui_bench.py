"""Review-page benchmark: server-side time to produce the current frame with boxes, and Grad-CAM.

    python -m tools.ui_bench          # prints p50/p95 figures; asserts nothing

It goes through the app's own cached functions (workbench.ui.resources) outside a browser.
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.ui_bench")
    parser.add_argument("--seeks", type=int, default=60)
    parser.add_argument("--json")
    args = parser.parse_args(argv)
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

    resources.frame_with_boxes(sha, path, 0, data.face_run_id, name, key)  # opens the reader
    # Distinct random frames (a repeat would be a cache hit), then frame after frame, then repeats.
    seeks = [int(n) for n in rng.permutation(np.arange(args.seeks + 2, total))[: args.seeks]]
    frame_with_boxes = lambda n: resources.frame_with_boxes(sha, path, n, data.face_run_id, name, key)  # noqa: E731
    figures["uncached_random_seek"] = timed_ms(frame_with_boxes, [(n,) for n in seeks])
    figures["uncached_next_frame"] = timed_ms(frame_with_boxes, [(n,) for n in range(1, 1 + args.seeks)])
    figures["cached"] = timed_ms(frame_with_boxes, [(n,) for n in seeks])

    faces = [(f, tid) for f in data.frames_analysed for tid in data.tracks if f in data.tracks[tid]]
    resources.gradcam(sha, path, faces[0][0], faces[0][1], name, data.face_run_id, key)
    timings = []
    for frame, tid in faces[1:21]:
        resources.frame_reader(sha, path).read(frame)  # keep decoding out of the Grad-CAM figure
        t = time.perf_counter()
        resources.gradcam(sha, path, frame, tid, name, data.face_run_id, key)
        timings.append((time.perf_counter() - t) * 1000)
    figures["gradcam_uncached_incl_frame_read"] = percentiles(timings)
    from explain.gradcam import explain

    det = resources.detector(name)
    crop = np.random.default_rng(1).integers(0, 256, (det.crop.size, det.crop.size, 3), dtype=np.uint8)
    explain(det, crop)
    figures["gradcam_per_crop"] = timed_ms(explain, [(det, crop)] * 20)

    for key_name, value in figures.items():
        if isinstance(value, dict):
            print(f"{key_name:<34} p50 {value['p50_ms']:7.1f} ms   p95 {value['p95_ms']:7.1f} ms   (n={value['n']})")
        else:
            print(f"{key_name:<34} {value}")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
