"""Benchmark of the NTechLab detector with random weights: seconds per 10-s, 30-fps, 1080p clip with one face.

Random DSFD weights find no face, so DSFD runs for real (its full cost) while the face it reports is the
generated clip's known box on every detector frame: the tracker then yields one track over the whole clip
and the three B7s score it as they would a real face. Prints figures; asserts nothing.

    python -m tools.bench_ntech [--seconds 10] [--clip PATH]
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--clip", type=Path, default=Path("/tmp/bench_ntech_1080p.mp4"))
    args = parser.parse_args()
    from detectors import ntech
    from workbench import demo
    from workbench.video import iter_frames, probe

    if not args.clip.is_file():
        truth = demo.make_clip(args.clip, [demo.SceneFace("grace_hopper", x=0.45, y=0.45, height=0.35)],
                               seconds=args.seconds, fps=30, width=1920, height=1080, seed=5, gop=60)
    else:
        truth = demo.load_truth(args.clip)
    box = np.array([truth.face_boxes["grace_hopper"][0]], np.float32)
    real_find = ntech.find_faces

    def find(dsfd, frames):
        real_find(dsfd, frames)  # the real cost; random weights find nothing
        return [(box.copy(), np.array([0.95], np.float32)) for _ in frames]

    ntech.find_faces = find
    det = ntech.NTech()
    det.use_random_weights(0)
    info = probe(args.clip)
    t0 = time.perf_counter()
    run = det.start(info)
    for n, rgb in iter_frames(args.clip, det.wanted_frames(info)):
        run.add(n, rgb)
    verdict = run.finish()
    wall = time.perf_counter() - t0
    print(json.dumps({
        "clip": f"{info.width}x{info.height} {info.fps:g} fps {info.frames} frames", "threads": torch.get_num_threads(),
        "status": verdict.status, "frames_read": len(verdict.frames_analysed), "windows": len(verdict.windows),
        "frame_model_faces": len(verdict.face_values), "seconds_per_clip": round(wall, 1),
        "clips_per_min": round(60 / wall, 3), "timings": verdict.timings,
    }, indent=1))


if __name__ == "__main__":
    main()
