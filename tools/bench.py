"""Benchmark: decode, face detection, detector throughput and end-to-end time on a 60-s 720p clip,
ingest and end-to-end time per minute of 720p and 1080p (as ratios to real time and to a plain
decode), and batch videos/minute.

Run `python -m tools.bench` (or `make bench`); it prints figures, it asserts nothing.
`python -m tools.bench --batch N [--workers W]` times a batch of N generated clips through the
local worker pool and, when Ray is installed, through a local Ray instance with W CPUs.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from detectors.base import CropPolicy, Detector, ModelCard
from workbench import config


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class RandomMobileNet(Detector):
    """A random-init MobileNetV2 (192 px, one logit): the cost of a small detector, no meaning."""

    name = "bench-random-mobilenetv2"
    version = "bench"
    card = ModelCard(
        summary="Random weights, for timing only.", detects="nothing", does_not_detect="anything",
        training_data="none", known_biases="n/a", figures="n/a", failure_modes="n/a", licence="n/a", source="bench",
        intended_use="timing only", out_of_scope_uses="everything", evaluation_data="none", per_group_figures="not measured",
    )
    crop = CropPolicy(size=192, margin=0.2)

    def build(self) -> nn.Module:
        from torchvision.models import mobilenet_v2

        torch.manual_seed(0)
        return mobilenet_v2(num_classes=1)

    def load_weights(self, model: nn.Module) -> str:
        return "random"

    def gradcam_layer(self, model: nn.Module) -> nn.Module:
        return model.features[-1]


def bench_clip(path: Path, seconds: float, width: int = 1280, height: int = 720) -> Path:
    from workbench import demo

    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        t = time.perf_counter()
        demo.make_clip(path, demo.demo_faces(), seconds=seconds, fps=25, width=width, height=height,
                       swap=(seconds * 0.4, seconds * 0.7), swap_target=demo.DEMO_SWAP_TARGET,
                       swap_donor=demo.DEMO_SWAP_DONOR, camera=demo.CameraPath(period_s=20.0))
        print(f"generated {seconds:.0f}-s {height}p clip in {time.perf_counter() - t:.1f} s", file=sys.stderr)
    return path


def cpu_seconds() -> float:
    """CPU seconds (user + system) of this process and of its children that have ended (sandboxes)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


class Timer:
    """Wall and CPU seconds (this process and its ended children) of a `with` block."""

    def __enter__(self) -> "Timer":
        self.wall, self.cpu = time.perf_counter(), cpu_seconds()
        return self

    def __exit__(self, *exc) -> None:
        self.wall, self.cpu = time.perf_counter() - self.wall, cpu_seconds() - self.cpu


def plain_decode_s(clip: Path) -> Timer:
    """One decode of every frame, no colour conversion, in this process: the floor any analysis pays."""
    from workbench.video import _open, _video_stream

    with Timer() as timer, _open(clip) as container:
        stream = _video_stream(container)
        stream.thread_type = "AUTO"
        for _ in container.decode(stream):
            pass
    return timer


def ingest_timer(clip: Path) -> Timer:
    """Ingest (hash, copy, probe, packet checks) of `clip` into a throw-away store."""
    import tempfile

    from workbench.evidence import ingest
    from workbench.store import Store

    with tempfile.TemporaryDirectory() as tmp:
        store = Store(":memory:")
        with Timer() as timer:
            ingest(store, clip, clip.name, Path(tmp) / "evidence")
        store.close()
    return timer


def _rates(key: str, wall: float, cpu: float, duration_s: float, decode: Timer) -> dict:
    minutes = duration_s / 60
    return {f"{key}_s_per_min": wall / minutes, f"{key}_cpu_s_per_min": cpu / minutes,
            f"{key}_x_real_time": wall / duration_s, f"{key}_x_plain_decode": wall / decode.wall}


def end_to_end_figures(clip: Path, label: str, name: str, faces, every_frame: bool = True) -> dict:
    """Ingest, then analysis in triage and every-frame modes, of `clip`: seconds per minute of video
    (wall and CPU), and as ratios to real time and to one plain decode of the same clip.

    `end_to_end` is ingest + analysis, what an analyst waits for a new file.
    """
    from workbench.pipeline import Sampling, analyze
    from workbench.video import probe

    info = probe(clip)
    decode = plain_decode_s(clip)
    figures: dict = {f"{label}_clip": f"{info.width}x{info.height} {info.fps:g} fps {info.duration_s:.0f} s {info.codec}"}
    figures.update({k: v for k, v in _rates(f"plain_decode_{label}", decode.wall, decode.cpu, info.duration_s,
                                            decode).items() if not k.endswith("_x_plain_decode")})
    ingest = ingest_timer(clip)
    figures.update(_rates(f"ingest_{label}", ingest.wall, ingest.cpu, info.duration_s, decode))
    modes = [("triage", Sampling(sample_fps=2.0))] + ([("every_frame", Sampling(sample_fps=None))] if every_frame else [])
    for mode, sampling in modes:
        with Timer() as timer:
            result = analyze(clip, [name], sampling, info=info, face_detector=faces)
        if result.error is not None:
            figures[f"{mode}_{label}_error"] = result.error
        figures.update(_rates(f"{mode}_{label}_analysis", timer.wall, timer.cpu, info.duration_s, decode))
        figures.update(_rates(f"{mode}_{label}_end_to_end", ingest.wall + timer.wall, ingest.cpu + timer.cpu,
                              info.duration_s, decode))
    return figures


def architecture_speed(names: list[str], crops: int = 16) -> dict[str, float]:
    """Crops/s of each detector's architecture with random weights (timing only, no meaning)."""
    from detectors.registry import get_detector

    out = {}
    for name in names:
        det = type(get_detector(name))()  # a private instance: its random model never serves results
        det._model = det.build().eval().to(memory_format=torch.channels_last)
        det._weights_sha256 = "random-init (timing only)"
        batch = np.random.default_rng(0).integers(0, 256, (crops, det.crop.size, det.crop.size, 3), dtype=np.uint8)
        det.predict(batch)  # warm-up at the timed batch size (oneDNN builds kernels per shape)
        t = time.perf_counter()
        det.predict(batch)
        out[name] = crops / (time.perf_counter() - t)
        del det
    return out


def batch_clips(folder: Path, n: int, seconds: float) -> list[Path]:
    """N different 640x360 clips with two faces (made once, kept under `folder`)."""
    from workbench import demo

    folder.mkdir(parents=True, exist_ok=True)
    clips = []
    for i in range(n):
        path = folder / f"clip{i:03d}-{seconds:g}s.mp4"
        if not path.is_file():
            demo.make_clip(path, demo.demo_faces(), seconds=seconds, fps=25, width=640, height=360, seed=100 + i,
                           camera=demo.CameraPath(period_s=20.0))
        clips.append(path)
    return clips


def batch_speed(n: int, workers: int, seconds: float, detector: str | None, clip_dir: Path) -> dict:
    """Videos per minute of a batch of n clips (ingest included): the local pool, then local Ray when installed."""
    import shutil
    import tempfile

    from detectors.registry import default_detectors
    from workbench import batch
    from workbench.store import Store

    hooks = []
    name = detector or (default_detectors() or [None])[0]
    if name is None:
        hooks, name = ["tools.bench:RandomMobileNet"], RandomMobileNet.name
    clips = batch_clips(clip_dir, n, seconds)
    figures: dict = {"videos": n, "clip": f"640x360 25 fps {seconds:g} s, two faces", "detector": name,
                     "workers": workers, "cpus": os.cpu_count()}

    def timed(ray_address: str | None) -> tuple[float, float]:
        work = Path(tempfile.mkdtemp(prefix="bench-batch-"))
        store = Store(work / "db.sqlite")
        try:
            case_id = store.create_case("bench")
            t = time.perf_counter()
            outcome = batch.run_batch(store, clips, case_id, [name], evidence_dir=work / "evidence", workers=workers,
                                      hooks=hooks, ray_address=ray_address)
            wall = time.perf_counter() - t
        finally:
            store.close()
            shutil.rmtree(work, ignore_errors=True)
        if outcome.counts["analysed"] != n:
            raise RuntimeError(f"the batch analysed {outcome.counts['analysed']} of {n}: {outcome.bad}")
        return wall, sum(r["analysis_s"] for r in outcome.rows) / n

    wall, per_video = timed(None)
    figures["local_videos_per_min"] = 60 * n / wall
    figures["local_analysis_s_per_video"] = per_video
    try:
        import ray
    except ImportError:
        figures["ray"] = "not installed (pip install -r requirements-cluster.txt)"
        return figures
    ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
    try:
        wall_ray, per_video_ray = timed("auto")
    finally:
        ray.shutdown()
    figures["ray_videos_per_min"] = 60 * n / wall_ray
    figures["ray_analysis_s_per_video"] = per_video_ray
    figures["ray_overhead_ratio"] = wall_ray / wall
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.bench")
    parser.add_argument("--detector", help="registered detector to time (default: the default detector)")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--clip", default=str(config.home() / "bench" / "bench60.mp4"))
    parser.add_argument("--skip-every-frame", action="store_true")
    parser.add_argument("--clip-1080p", default=str(config.home() / "bench" / "bench20-1080p.mp4"),
                        help="a 1080p clip for the ingest and end-to-end figures (generated, 20 s, if absent)")
    parser.add_argument("--skip-decode-once", action="store_true",
                        help="leave out the ingest and end-to-end figures per minute of 720p and 1080p")
    parser.add_argument("--json", help="also write the figures as JSON here")
    parser.add_argument("--architectures", nargs="*", metavar="NAME",
                        help="only time these detectors' architectures with random weights (all if none named)")
    parser.add_argument("--batch", type=int, metavar="N",
                        help="time a batch of N generated clips: videos/minute, local pool and local Ray")
    parser.add_argument("--workers", type=int, default=2, help="with --batch: worker processes / Ray CPUs (default 2)")
    parser.add_argument("--batch-seconds", type=float, default=4.0, help="with --batch: each clip's length (default 4)")
    args = parser.parse_args(argv)
    if args.batch is not None:
        figures = batch_speed(args.batch, args.workers, args.batch_seconds, args.detector,
                              config.home() / "bench" / "batch")
        width = max(len(k) for k in figures)
        for key, value in figures.items():
            print(f"{key:<{width}}  {value:.2f}" if isinstance(value, float) else f"{key:<{width}}  {value}")
        if args.json:
            Path(args.json).write_text(json.dumps(figures, indent=2))
        return 0
    if args.architectures is not None:
        from detectors.registry import list_detectors

        speeds = architecture_speed(args.architectures or list_detectors())
        for name, per_s in speeds.items():
            print(f"{name:<24} {per_s:8.1f} crops/s  (random weights, {torch.get_num_threads()} threads)")
        if args.json:
            Path(args.json).write_text(json.dumps(speeds, indent=2))
        return 0

    from detectors.registry import default_detectors, get_detector, register, unregister
    from workbench.faces import FaceDetector
    from workbench.geometry import crop_face
    from workbench.pipeline import Sampling, analyze
    from workbench.video import iter_frames, probe

    name = args.detector or (default_detectors() or [None])[0]
    if name is None:
        unregister(RandomMobileNet.name)
        register(RandomMobileNet)
        name = RandomMobileNet.name
    det = get_detector(name)
    clip = bench_clip(Path(args.clip), args.seconds)
    info = probe(clip)
    figures: dict = {"clip": f"{info.width}x{info.height} {info.fps:g} fps {info.duration_s:.0f} s {info.codec}",
                     "detector": name, "torch_threads": torch.get_num_threads(), "cpus": os.cpu_count()}

    t = time.perf_counter()
    frames_seen = sum(1 for _ in iter_frames(clip))
    figures["decode_fps"] = frames_seen / (time.perf_counter() - t)

    sample = [rgb for _, rgb in iter_frames(clip, range(0, info.frames, info.frames // 40))][:40]
    faces = FaceDetector()
    faces.detect(sample[:2])  # warm-up
    t = time.perf_counter()
    found = faces.detect(sample)
    figures["face_detection_fps"] = len(sample) / (time.perf_counter() - t)
    figures["faces_per_frame"] = float(np.mean([len(f) for f in found]))

    crops = np.stack([crop_face(sample[i % len(sample)], (500, 200, 700, 450), det.crop) for i in range(256)])
    det.predict(crops[:32])  # warm-up and load
    t = time.perf_counter()
    det.predict(crops)
    figures["detector_crops_per_s"] = len(crops) / (time.perf_counter() - t)

    minutes = info.duration_s / 60
    t = time.perf_counter()
    triage = analyze(clip, [name], Sampling(sample_fps=2.0), face_detector=faces)
    figures["triage_s_per_min"] = (time.perf_counter() - t) / minutes
    figures["triage_status"] = triage.detectors[name].status
    if not args.skip_every_frame:
        t = time.perf_counter()
        every = analyze(clip, [name], Sampling(sample_fps=None), face_detector=faces)
        figures["every_frame_s_per_min"] = (time.perf_counter() - t) / minutes
        figures["every_frame_crops"] = len(every.detectors[name].frame_scores)
    if not args.skip_decode_once:
        clip_1080p = bench_clip(Path(args.clip_1080p), 20.0, width=1920, height=1080)
        for label, path in (("720p", clip), ("1080p", clip_1080p)):
            figures.update(end_to_end_figures(path, label, name, faces, every_frame=not args.skip_every_frame))
    figures["peak_rss_mb"] = peak_rss_mb()

    width = max(len(k) for k in figures)
    for key, value in figures.items():
        shown = (f"{value:.3f}" if "_x_" in key else f"{value:.1f}") if isinstance(value, float) else str(value)
        print(f"{key:<{width}}  {shown}")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
