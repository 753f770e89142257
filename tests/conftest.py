"""Shared fixtures: generated clips, a fresh store, an app home with the demo clip, and the test-only tiny detectors."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))

from detectors.weights import WeightFile  # noqa: E402
from detectors.registry import register, unregister  # noqa: E402
from tiny_detector import TinyDetector, TinyEvenDetector  # noqa: E402
from workbench import demo  # noqa: E402
from workbench.store import Store  # noqa: E402
from workbench.video import write_video  # noqa: E402

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def numbered_frames(n: int, width: int = 320, height: int = 240, seed: int = 0):
    """Frames that all differ: moving noise plus the frame number as a row of binary blocks."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    for i in range(n):
        frame = np.roll(base, 3 * i, axis=1).copy()
        for bit in range(12):
            frame[:16, bit * 16 : (bit + 1) * 16] = 255 if (i >> bit) & 1 else 0
        yield frame


@pytest.fixture(scope="session")
def tiny_detectors():
    """Register the test-only random-init detectors for the whole session."""
    for cls in (TinyDetector, TinyEvenDetector):
        unregister(cls.name)
        register(cls)
    yield [TinyDetector.name, TinyEvenDetector.name]
    for cls in (TinyDetector, TinyEvenDetector):
        unregister(cls.name)


class MissingWeights(TinyDetector):
    """A tiny detector whose weights are never installed: always `unavailable`."""

    name = "tiny-missing"
    weights = (WeightFile("tests/not-installed.safetensors", sha256="0" * 64),)


class Crashing(TinyDetector):
    """A tiny detector whose model fails: always `error`."""

    name = "tiny-crash"

    def predict(self, crops):
        raise RuntimeError("simulated model failure")


@pytest.fixture(scope="session")
def broken_detectors():
    """Register the unavailable and the failing tiny detectors."""
    for cls in (MissingWeights, Crashing):
        unregister(cls.name)
        register(cls)
    yield [MissingWeights.name, Crashing.name]
    for cls in (MissingWeights, Crashing):
        unregister(cls.name)


@pytest.fixture
def fresh_store():
    store = Store(":memory:")
    yield store
    store.close()


@pytest.fixture(scope="session")
def h264_clip(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("clips") / "numbers.mp4"
    write_video(path, numbered_frames(120), fps=25, codec="libx264", gop=100)
    return path


@pytest.fixture(scope="session")
def mpeg4_clip(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("clips") / "numbers.avi"
    write_video(path, numbered_frames(120), fps=25, codec="mpeg4", gop=100)
    return path


def shared(*parts: str) -> Path:
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is absent (../shared/data is only on development machines)")
    return path


@pytest.fixture(scope="session")
def two_face_clip(tmp_path_factory):
    """640x360, 10 fps, 3.5 s: Grace Hopper throughout, the astronaut from 1.0 s to 2.5 s."""
    path = tmp_path_factory.mktemp("clips") / "two_faces.mp4"
    faces = [
        demo.SceneFace("grace_hopper", x=0.3, y=0.45, height=0.32),
        demo.SceneFace("astronaut", x=0.72, y=0.42, height=0.28, appear_s=1.0, disappear_s=2.5, drift=(-0.02, 0.0)),
    ]
    truth = demo.make_clip(path, faces, seconds=3.5, fps=10, width=640, height=360, seed=1, gop=30)
    return path, truth


@pytest.fixture(scope="session")
def no_face_clip(tmp_path_factory):
    path = tmp_path_factory.mktemp("clips") / "no_face.mp4"
    write_video(path, numbered_frames(30, 320, 240), fps=10, gop=30)
    return path


@pytest.fixture(scope="session")
def demo_clip(tmp_path_factory):
    """The 2-s demo clip (and its truth file beside it), made once; copy it before changing anything."""
    path = tmp_path_factory.mktemp("democlip") / "demo.mp4"
    demo.make_demo(path, seconds=2.0, width=640, height=360)
    return path


@pytest.fixture
def app_home(tmp_path, monkeypatch, demo_clip):
    """A fresh WORKBENCH_HOME holding a copy of the demo clip and its truth file under demo/."""
    home = tmp_path / "home"
    (home / "demo").mkdir(parents=True)
    for src in (demo_clip, demo.truth_path(demo_clip)):
        (home / "demo" / src.name).write_bytes(src.read_bytes())
    monkeypatch.setenv("WORKBENCH_HOME", str(home))
    return home
