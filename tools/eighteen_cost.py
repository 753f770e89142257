"""What one 10-s, 30-fps, 1080p clip costs the Eighteen detector on this machine (random weights of the exact layout).

    python tools/eighteen_cost.py [--faces 1] [--seconds 10]

Times, separately: RetinaFace-MobileNet-0.25 the authors' way on every sampled frame (150 for 300 frames), and
the eleven members on the crops of `--faces` faces. Random weights find no real faces, so the member run places
one fixed face box per frame instead of RetinaFace's; decoding is not included. Prints one line per stage.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from detectors import eighteen  # noqa: E402
from detectors.eighteen_faces import detect_frames  # noqa: E402
from workbench.video import VideoInfo  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--faces", type=int, default=1, choices=(1, 2))
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    width, height, fps = 1920, 1080, 30.0
    frames = int(args.seconds * fps)
    det = eighteen.Eighteen()
    det.use_random_weights(0)
    info = VideoInfo("synthetic.mp4", frames, fps, width, height, args.seconds, "h264", "mp4", 0, 0)
    wanted = det.wanted_frames(info)
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    print(f"torch threads {torch.get_num_threads()}; {len(wanted)} sampled frames of {frames}; {args.faces} face(s)")

    t = time.perf_counter()
    bgr = np.ascontiguousarray(rgb[..., ::-1])
    for start in range(0, len(wanted), 8):
        detect_frames(det.model().retinaface, [bgr] * min(8, len(wanted) - start))
    detect_s = time.perf_counter() - t
    print(f"RetinaFace on {len(wanted)} frames: {detect_s:.1f} s")

    boxes = [(760.0, 300.0, 1060.0, 700.0), (1300.0, 320.0, 1560.0, 660.0)][: args.faces]

    def placed(model, frames_bgr, settings=None):
        return [np.array([[*b, 0.99] for b in boxes], np.float32) for _ in frames_bgr]

    eighteen.detect_frames = placed
    run = det.start(info)
    t = time.perf_counter()
    for n in wanted:
        run.add(n, rgb)
    verdict = run.finish()
    members_s = time.perf_counter() - t
    per_member = ", ".join(f"{k.removesuffix('_s')} {v:.1f}" for k, v in verdict.timings.items() if k != "detect_s")
    print(f"members on {args.faces} face(s): {members_s:.1f} s ({per_member})")
    print(f"total (no decoding): {detect_s + members_s:.1f} s per {args.seconds:g}-s clip; "
          f"{60 / (detect_s + members_s):.2f} clips/min; status {verdict.status}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
