"""Benchmark of the video-level detectors (ntech, eighteen, medics) with random weights of their exact layout.

    python -m tools.video_bench [NAME ...] [--seconds 10] [--clip PATH] [--json PATH]

Each runs its authors' whole method on one generated 1920x1080, 30-fps clip with one face (decode
included, as the pipeline hands it the frames it asks for). Random weights find no real face, so the
face finders of ntech (DSFD) and eighteen (RetinaFace) still run on every frame they would (their full
cost) but report the clip's known face box; medics' MTCNN ships with real weights and finds the face
itself. Prints seconds per clip, clips per minute, the ratio to real time and to a plain decode of the
same frames, each stage's seconds and the peak memory. Timing only: the scores mean nothing. Asserts nothing.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from workbench import config

NAMES = ("ntech", "eighteen", "medics")


def one_face_clip(path: Path, seconds: float):
    """A DFDC-like clip (1080p, 30 fps, one face) and its truth, made once."""
    from workbench import demo

    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        demo.make_clip(path, [demo.SceneFace("grace_hopper", x=0.45, y=0.45, height=0.35)], seconds=seconds, fps=30,
                       width=1920, height=1080, seed=5, gop=60)
    return demo.load_truth(path)


@contextmanager
def placed_faces(name: str, truth):
    """While inside: the detector's own random-weight face finder runs for its cost, then reports the known box."""
    box = [float(v) for v in truth.face_boxes["grace_hopper"][0]]
    if name == "ntech":
        from detectors import ntech as module

        real = module.find_faces

        def fake(dsfd, frames):
            real(dsfd, frames)
            return [(np.array([box], np.float32), np.array([0.95], np.float32)) for _ in frames]

        attr = "find_faces"
    elif name == "eighteen":
        from detectors import eighteen as module

        real = module.detect_frames

        def fake(model, frames_bgr, *args, **kwargs):
            real(model, frames_bgr, *args, **kwargs)
            return [np.array([[*box, 0.99]], np.float32) for _ in frames_bgr]

        attr = "detect_frames"
    else:  # medics: facenet-pytorch's MTCNN has real weights and finds the face itself
        yield
        return
    setattr(module, attr, fake)
    try:
        yield
    finally:
        setattr(module, attr, real)


def plain_decode_s(clip: Path, frames: list[int]) -> float:
    from workbench.video import iter_frames

    t = time.perf_counter()
    for _ in iter_frames(clip, frames):
        pass
    return time.perf_counter() - t


def time_detector(name: str, clip: Path, truth) -> dict:
    from detectors.registry import detector_class
    from workbench.video import iter_frames, probe

    det = detector_class(name)()  # a private instance: its random model never serves results
    det.use_random_weights(0)
    info = probe(clip)
    wanted = det.wanted_frames(info)
    decode = plain_decode_s(clip, wanted)
    with placed_faces(name, truth):
        t0 = time.perf_counter()
        run = det.start(info)
        for n, rgb in iter_frames(clip, wanted):
            run.add(n, rgb)
        verdict = run.finish()
        wall = time.perf_counter() - t0
    return {
        "detector": name, "status": verdict.status, "reason": verdict.reason, "frames_read": len(verdict.frames_analysed),
        "faces": len(verdict.faces), "members_ok": sum(m.status == "ok" for m in verdict.members),
        "members": len(verdict.members), "seconds_per_clip": round(wall, 1), "clips_per_min": round(60 / wall, 3),
        "x_real_time": round(wall / info.duration_s, 1), "x_plain_decode": round(wall / max(decode, 1e-9), 1),
        "plain_decode_s": round(decode, 2), "stages_s": verdict.timings,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", default=list(NAMES), help=f"detectors to time (default: {' '.join(NAMES)})")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of the generated clip (default 10)")
    parser.add_argument("--clip", type=Path, default=None, help="where the generated clip is kept")
    parser.add_argument("--json", type=Path, help="also write the figures as JSON here")
    parser.add_argument("--quiet", action="store_true", help="print nothing (with --json: one detector's row)")
    args = parser.parse_args(argv)
    clip = args.clip or config.home() / "bench" / f"face{args.seconds:g}s-1080p.mp4"
    truth = one_face_clip(clip, args.seconds)
    if not args.quiet:
        print(f"clip {clip} ({args.seconds:g} s, 1920x1080, 30 fps, one face); torch threads {torch.get_num_threads()}; "
              "random weights (timing only)")
    rows = []
    for name in args.names:
        if len(args.names) > 1:  # each in its own process: its peak memory is its own
            with tempfile.TemporaryDirectory() as tmp:
                out = Path(tmp) / "row.json"
                subprocess.run([sys.executable, "-m", "tools.video_bench", name, "--seconds", str(args.seconds),
                                "--clip", str(clip), "--json", str(out), "--quiet"], check=True)
                row = json.loads(out.read_text())[0]
        else:
            row = time_detector(name, clip, truth)
            row["peak_rss_gib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 / 1024, 2)
        rows.append(row)
        if args.quiet:
            continue
        stages = ", ".join(f"{k.removesuffix('_s')} {v:.1f}" for k, v in row["stages_s"].items()
                           if isinstance(v, (int, float)))
        print(f"{name:<9} {row['seconds_per_clip']:7.1f} s/clip  {row['clips_per_min']:.2f} clips/min  "
              f"{row['x_real_time']:.1f}x real time  {row['x_plain_decode']:.0f}x plain decode  "
              f"{row['frames_read']} frames read, {row['faces']} face(s), {row['members_ok']}/{row['members']} members ok, "
              f"status {row['status']}")
        print(f"{'':<9} stages (s): {stages}; peak memory {row['peak_rss_gib']:.2f} GiB")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
