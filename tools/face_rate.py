"""Measurement: how often the face finder finds the face that is there, per group, before and after issue 12's changes.

    python -m tools.face_rate [--fairface] [--fairface-in-frame N] [--devset LABELS.csv] [--cost CLIP]
                              [--out var/face_rate.json]

"before" is the old face finder (frames shrunk to 640 px on the longer side, MTCNN's smallest
face 20 px there, every face under probability 0.92 dropped, no retry, no confirmation). "after"
is the pipeline's face stage as it is now. It prints tables and writes JSON; it asserts nothing.
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np

from workbench.faces import CANDIDATE_PROB, CONFIRM_PROB, Face, FaceDetector
from workbench.pipeline import Sampling, _stream_tracked_frames
from workbench.tracking import Tracker
from workbench.video import probe

FAIRFACE_AGES = ["0-2", "3-9", "10-19", "20-29", "30-39", "40-49", "50-59", "60-69", "more than 70"]


class BeforeDetector(FaceDetector):
    """The face finder as it was before issue 12: a fixed 640-px downscale, a 20-px window there,
    facenet-pytorch's default stage cuts, no retry."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.mtcnn.thresholds = [0.6, 0.7, 0.7]

    def scale_for(self, shape: tuple[int, ...]) -> float:
        return min(1.0, 640 / max(shape[0], shape[1]))

    def window_for(self, scale: float) -> int:
        return 20

    def retry(self, frame: np.ndarray) -> list[Face]:
        return []


def finders() -> dict[str, tuple[FaceDetector, Sampling]]:
    """The two settings compared: the detector and the sampling (its tracker settings) of each."""
    return {
        "before": (BeforeDetector(min_prob=CONFIRM_PROB), Sampling(candidate_prob=CONFIRM_PROB, confirm_hits=1)),
        "after": (FaceDetector(min_prob=CANDIDATE_PROB), Sampling()),
    }


def still_faces(detector: FaceDetector, rgb: np.ndarray, retry: bool) -> list[Face]:
    """Faces on one still as the video stage would see them on one frame (the retry when empty)."""
    faces = detector.detect([rgb])[0]
    return faces if faces or not retry else detector.retry(rgb)


def in_frame(rgb: np.ndarray, side: int, canvas: tuple[int, int] = (1280, 720)) -> np.ndarray:
    """The photo shrunk to `side` pixels and placed off-centre on a plain grey 720p frame."""
    w, h = canvas
    frame = np.full((h, w, 3), 118, np.uint8)
    small = cv2.resize(rgb, (side, side), interpolation=cv2.INTER_AREA)
    x, y = w // 3 - side // 2, h // 2 - side // 2
    frame[y : y + side, x : x + side] = small
    return frame


def _rate(rows: list[dict], key: str, group: str) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for row in rows:
        cell = out.setdefault(str(row[group]), {"present": 0, "found": 0})
        cell["present"] += row.get("present", 1)
        cell["found"] += row[key]
    for cell in out.values():
        cell["rate"] = cell["found"] / cell["present"] if cell["present"] else None
    return out


def fairface(limit_per_cell: int | None, face_side: int | None) -> dict:
    """Detection rate on the FairFace evaluation half, per age band and gender, for each setting.

    A photo counts as found when a face box covers its centre; `extra` counts other faces
    (FairFace photos show one person, so these are mostly false faces). `after` counts a face
    confirmed on this one still (probability >= 0.92); `after_candidate` one that the tracker
    would follow (>= 0.6) and confirm if it came back on the next frames of a video.
    """
    from tools.datasets.fairface import split

    images = split("eval")
    if limit_per_cell:
        seen: dict[tuple[str, str], int] = {}
        kept = []
        for im in images:
            if seen.get((im.age, im.gender), 0) < limit_per_cell:
                seen[(im.age, im.gender)] = seen.get((im.age, im.gender), 0) + 1
                kept.append(im)
        images = kept
    before, _ = finders()["before"]
    after, _ = finders()["after"]
    rows, timing = [], {"before": 0.0, "after": 0.0}
    for im in images:
        rgb = cv2.cvtColor(cv2.imread(str(im.path)), cv2.COLOR_BGR2RGB)
        if face_side:
            rgb = in_frame(rgb, face_side)
        h, w = rgb.shape[:2]
        cx, cy = (w / 2, h / 2) if not face_side else (w // 3, h // 2)
        row = {"id": im.id, "age": im.age, "gender": im.gender}
        for name, det in (("before", before), ("after", after)):
            t = time.perf_counter()
            faces = still_faces(det, rgb, retry=name == "after")
            timing[name] += time.perf_counter() - t
            centred = [f for f in faces if f.box[0] <= cx <= f.box[2] and f.box[1] <= cy <= f.box[3]]
            if name == "after":
                row["after_candidate"] = int(bool(centred))
                row["after_candidate_extra"] = len(faces) - min(1, len(centred))
                faces = [f for f in faces if f.prob >= CONFIRM_PROB]
                centred = [f for f in centred if f.prob >= CONFIRM_PROB]
            row[name] = int(bool(centred))
            row[f"{name}_extra"] = len(faces) - min(1, len(centred))
            row[f"{name}_prob"] = round(max((f.prob for f in centred), default=0.0), 4)
            row[f"{name}_size"] = round(max((f.size for f in centred), default=0.0), 1)
        rows.append(row)
    keys = ("before", "after", "after_candidate")
    return {
        "images": len(rows), "condition": f"in a 1280x720 frame, photo {face_side} px" if face_side else "native 448x448",
        "by_age": {k: _rate(rows, k, "age") for k in keys}, "by_gender": {k: _rate(rows, k, "gender") for k in keys},
        "overall": {k: sum(r[k] for r in rows) / max(1, len(rows)) for k in keys},
        "extra_faces": {k: sum(r[f"{k}_extra"] for r in rows) for k in keys},
        "seconds_per_image": {k: v / max(1, len(rows)) for k, v in timing.items()}, "rows": rows,
    }


def devset(labels: Path, frames_per_clip: int, sample_fps: float) -> dict:
    """Share of sampled frames with a face, per dataset and label, through the video face stage.

    Frames are taken at `sample_fps` from the start (as triage does), every one a detection frame.
    FF++ and the other face-crop sets show one face on every frame; for DFDC a frame counts as
    having a face when either setting found one there.
    """
    root = labels.parent
    rows = []
    for rec in csv.DictReader(labels.open()):
        path = root / rec["path"]
        info = probe(path)
        step = max(1, int(round(info.fps / sample_fps)))
        wanted = list(range(0, info.frames, step))[:frames_per_clip]
        found = {}
        for name, (det, sampling) in finders().items():
            tracker = Tracker(confirm_prob=sampling.confirm_prob, confirm_hits=sampling.confirm_hits)
            found[name] = {n for n, _, boxes in _stream_tracked_frames(str(path), info, wanted, set(wanted), det,
                                                                          tracker, None) if boxes}
        for n in wanted:
            any_found = n in found["before"] or n in found["after"]
            present = 1 if rec.get("dataset") != "DFDC" else int(any_found)
            rows.append({"clip": rec["path"], "frame": n, "dataset": rec.get("dataset", "?"), "label": rec["label"],
                         "present": present, "before": int(n in found["before"] and present),
                         "after": int(n in found["after"] and present)})
        print(f"{rec['path']}: before {len(found['before'])}/{len(wanted)}, after {len(found['after'])}/{len(wanted)}",
              file=sys.stderr, flush=True)
    return {"frames": len(rows), "by_dataset": {k: _rate(rows, k, "dataset") for k in ("before", "after")},
            "by_label": {k: _rate(rows, k, "label") for k in ("before", "after")}, "rows": rows}


def cost(clip: Path, sample_fps: float | None) -> dict:
    """Seconds of face finding per minute of video (decode included), before and after, and the ratio.

    Wall seconds and CPU seconds of this process are both given: on a busy machine the CPU
    seconds (run with --threads 1 so no thread spins) are what compares the two settings.
    """
    info = probe(clip)
    out = {"clip": f"{info.width}x{info.height} {info.fps:g} fps {info.duration_s:.1f} s", "sample_fps": sample_fps}
    for name, (det, sampling) in finders().items():
        sampling = replace(sampling, sample_fps=sample_fps)
        frames = sampling.analysed_frames(info)
        detection = set(frames[:: sampling.detection_step(info)]) | {frames[-1]}
        tracker = Tracker(confirm_prob=sampling.confirm_prob, confirm_hits=sampling.confirm_hits)
        t, cpu = time.perf_counter(), time.process_time()
        tracked = sum(1 for _, _, boxes in _stream_tracked_frames(str(clip), info, frames, detection, det, tracker, None)
                      if boxes)
        minutes = info.duration_s / 60
        out[name] = {"s_per_min": (time.perf_counter() - t) / minutes, "cpu_s_per_min": (time.process_time() - cpu) / minutes,
                     "frames": len(frames), "frames_with_face": tracked, "tracks": len(tracker.tracks)}
    out["ratio"] = out["after"]["s_per_min"] / out["before"]["s_per_min"]
    out["cpu_ratio"] = out["after"]["cpu_s_per_min"] / out["before"]["cpu_s_per_min"]
    return out


def _print_rates(title: str, table: dict[str, dict[str, dict]]) -> None:
    settings = list(table)
    groups = list(next(iter(table.values())))
    order = [g for g in FAIRFACE_AGES if g in groups] + [g for g in groups if g not in FAIRFACE_AGES]
    print(f"\n{title}")
    print(f"{'group':<14}" + "".join(f"{s:>20}" for s in settings))
    for g in order:
        cells = [table[s][g] for s in settings]
        print(f"{g:<14}" + "".join(f"{c['found']:>5}/{c['present']:<4} {100 * (c['rate'] or 0):5.1f}%    " for c in cells))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.face_rate", description=__doc__.splitlines()[0])
    parser.add_argument("--fairface", action="store_true", help="the FairFace evaluation half at its own 448x448")
    parser.add_argument("--fairface-in-frame", type=int, metavar="PX",
                        help="also with each photo shrunk to PX pixels on a 1280x720 frame (faces about PX/2)")
    parser.add_argument("--per-cell", type=int, help="at most this many photos per age x gender cell")
    parser.add_argument("--devset", type=Path, help="labels CSV of the development set (paths relative to it)")
    parser.add_argument("--frames-per-clip", type=int, default=6)
    parser.add_argument("--cost", type=Path, action="append", default=[],
                        help="a clip to time the face stage on (repeatable)")
    parser.add_argument("--threads", type=int, help="torch threads (1 for CPU-second figures on a busy machine)")
    parser.add_argument("--out", type=Path, default=Path("var/face_rate.json"))
    args = parser.parse_args(argv)
    if args.threads:
        import torch  # lazy: only to pin the thread count before any work

        torch.set_num_threads(args.threads)
    results: dict = {"threads": args.threads}
    if args.fairface:
        results["fairface"] = fairface(args.per_cell, None)
    if args.fairface_in_frame:
        results["fairface_in_frame"] = fairface(args.per_cell, args.fairface_in_frame)
    if args.devset:
        results["devset"] = devset(args.devset, args.frames_per_clip, 2.0)
    for clip in args.cost:
        results.setdefault("cost", []).append({"triage": cost(clip, 2.0), "every_frame": cost(clip, None)})
    for key in ("fairface", "fairface_in_frame"):
        if key in results:
            r = results[key]
            _print_rates(f"FairFace eval, {r['condition']}: by age band", r["by_age"])
            _print_rates(f"FairFace eval, {r['condition']}: by gender", r["by_gender"])
            print(f"overall {r['overall']}; extra faces {r['extra_faces']}; s/image {r['seconds_per_image']}")
    if "devset" in results:
        _print_rates("Development set frames: by dataset", results["devset"]["by_dataset"])
        _print_rates("Development set frames: by label", results["devset"]["by_label"])
    for clip in results.get("cost", []):
        for key, mode in (("triage", "triage at 2 fps"), ("every_frame", "every frame")):
            c = clip[key]
            print(f"\nface stage on {c['clip']}, {mode}: before {c['before']['s_per_min']:.1f} s/min "
                  f"({c['before']['cpu_s_per_min']:.1f} CPU s), after {c['after']['s_per_min']:.1f} s/min "
                  f"({c['after']['cpu_s_per_min']:.1f} CPU s); ratio {c['ratio']:.2f} wall, {c['cpu_ratio']:.2f} CPU; "
                  f"frames with a face {c['before']['frames_with_face']} -> {c['after']['frames_with_face']} of {c['after']['frames']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
