"""Decode once, inside the sandbox: ingest decodes no frames, the analysis decodes each frame once in a confined child."""
from __future__ import annotations

import dataclasses
import multiprocessing
import os
import re
import resource
import signal
import time

import av
import numpy as np
import pytest

from conftest import numbered_frames
from workbench import pipeline, sandbox, video
from workbench.evidence import EvidenceError, ingest
from workbench.pipeline import Sampling, analyze
from workbench.sandbox import isolated_frames
from workbench.service import analyse_evidence
from workbench.store import Store
from workbench.video import iter_frames, probe, write_video
from helpers import child_pids

N = 40


@pytest.fixture(autouse=True)
def _limits(monkeypatch):
    monkeypatch.setenv("WORKBENCH_DECODE_TIMEOUT_S", "60")
    monkeypatch.setenv("WORKBENCH_DECODE_MEMORY_MB", "1024")


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    path = tmp_path_factory.mktemp("decode_once") / "clip.mp4"
    write_video(path, numbered_frames(N, 320, 240, seed=5), fps=25, gop=12)
    return path


class _CountingContainer:
    """An av container whose decoded frames are counted in shared memory (seen across forks)."""

    def __init__(self, container, counter):
        self._container, self._counter = container, counter

    def __getattr__(self, name):
        return getattr(self._container, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._container.close()

    def decode(self, *args, **kwargs):
        for frame in self._container.decode(*args, **kwargs):
            self._counter.value += 1
            yield frame


@pytest.fixture
def decoded(monkeypatch):
    """A counter of every frame `workbench.video` decodes, in this process or any sandboxed child."""
    counter = multiprocessing.RawValue("l", 0)
    real_open = av.open
    monkeypatch.setattr(av, "open", lambda *args, **kwargs: _CountingContainer(real_open(*args, **kwargs), counter))
    return counter


def test_ingest_decodes_no_frame_and_the_analysis_decodes_each_once(clip, decoded, tiny_detectors, tmp_path):
    store = Store(":memory:")
    row = ingest(store, clip, "clip.mp4", tmp_path / "evidence")
    # The probe decodes the first frame (rotation, pixel format); nothing else at ingest.
    assert decoded.value == 1
    (validated,) = [e["details"] for e in store.audit_log() if e["action"] == "evidence.validated"]
    assert validated["packets"] == validated["indexed_frames"] == N and validated["keyframes"] == 4
    result = analyse_evidence(store, row["sha256"], ["tiny-test"], Sampling(sample_fps=5))
    assert result.error is None and result.detectors["tiny-test"].status != "error"
    assert decoded.value == 1 + N  # one full decode, by the analysis, for validation and analysis at once


# -- the decoding process ------------------------------------------------------------------------
def _confinement() -> dict:
    fds = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            fds[int(name)] = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            pass
    with open("/proc/self/status") as f:
        nnp = next(line.split(":", 1)[1].strip() for line in f if line.startswith("NoNewPrivs:"))
    return {"pid": os.getpid(), "uid": os.getuid(), "rlimit_as": resource.getrlimit(resource.RLIMIT_AS)[0],
            "rlimit_fsize": resource.getrlimit(resource.RLIMIT_FSIZE)[0], "fds": fds, "no_new_privs": nnp}


def test_the_analysis_decodes_in_a_confined_child(clip, monkeypatch, tmp_path):
    real = sandbox.decode_checked

    def spying(path, info, wanted, on_decoded=None):
        facts = _confinement()
        total = yield from (((n, facts), rgb) for n, rgb in real(path, info, wanted, on_decoded))
        return total

    monkeypatch.setattr(sandbox, "decode_checked", spying)
    secret = open(tmp_path / "case.db", "wb")  # a descriptor the decoder must not inherit
    try:
        info = probe(clip)
        got = list(isolated_frames(clip, info, range(0, N, 3)))
    finally:
        secret.close()
    (n0, facts), _ = got[0]
    assert facts["pid"] != os.getpid()
    assert facts["rlimit_as"] != resource.RLIM_INFINITY and facts["rlimit_fsize"] == 0
    assert facts["no_new_privs"] == "1"
    assert str(tmp_path / "case.db") not in facts["fds"].values()
    # stdin, stdout, stderr, the result pipe, the ring's return pipe and the evidence file: nothing else
    assert len([fd for fd in facts["fds"] if fd >= 3]) <= 4, facts["fds"]
    if os.geteuid() == 0:
        assert facts["uid"] == sandbox.sandbox_uid()
    # The frames are the ones an in-process decode gives, pixel for pixel.
    expected = dict(iter_frames(clip, range(0, N, 3)))
    assert [n for (n, _), _ in got] == sorted(expected)
    for (n, _), rgb in got:
        assert np.array_equal(rgb, expected[n])


def test_stopping_early_kills_and_reaps_the_decoder(clip):
    before = child_pids()
    frames = isolated_frames(clip, probe(clip))
    next(frames), next(frames)
    assert child_pids() - before  # decoding in its child
    frames.close()  # what a cancelled job's analysis does when its progress callback raises
    assert child_pids() == before


# -- failures during the analysis' decode --------------------------------------------------------
def _hangs(path, info, wanted, on_decoded=None):
    time.sleep(3600)
    yield  # a generator, like decode_checked


def _crashes_after_two(path, info, wanted, on_decoded=None):
    for n, rgb in video.decode_checked(path, info, wanted, on_decoded):
        if n == 2:
            os.kill(os.getpid(), signal.SIGSEGV)
        yield n, rgb


def _ingested(store, clip, tmp_path):
    return ingest(store, clip, "clip.mp4", tmp_path / "evidence")["sha256"]


def test_a_decode_hang_at_analysis_ends_as_error_and_the_decoder_is_gone(clip, tiny_detectors, tmp_path,
                                                                        monkeypatch):
    store = Store(":memory:")
    sha = _ingested(store, clip, tmp_path)
    monkeypatch.setenv("WORKBENCH_DECODE_STALL_S", "1")
    monkeypatch.setattr(sandbox, "decode_checked", _hangs)
    before = child_pids()
    result = analyse_evidence(store, sha, ["tiny-test"], Sampling(sample_fps=5))
    outcome = result.detectors["tiny-test"]
    assert outcome.status == "error" and outcome.score is None
    assert outcome.reason.startswith("decoding failed: no decoding progress for 1 s (before the first frame)")
    assert child_pids() == before
    assert store.db["analyses"].count == 0  # nothing of a failed decode is stored as a result
    (failed,) = [e for e in store.audit_log() if e["action"] == "analysis.failed"]
    assert "no decoding progress" in failed["details"]["reason"]


def test_a_decoder_crash_mid_file_ends_as_error_with_its_signal(clip, tiny_detectors, tmp_path, monkeypatch):
    store = Store(":memory:")
    sha = _ingested(store, clip, tmp_path)
    monkeypatch.setattr(sandbox, "decode_checked", _crashes_after_two)
    before = child_pids()
    result = analyse_evidence(store, sha, ["tiny-test"], Sampling(sample_fps=None))
    outcome = result.detectors["tiny-test"]
    assert outcome.status == "error" and outcome.score is None
    assert "the decoder crashed (signal 11, SIGSEGV)" in outcome.reason
    assert child_pids() == before


@pytest.mark.parametrize("frames, message", [
    (N + 5, rf"^decoding failed: {N} frames decode but the container's index lists {N + 5}"),
    (N - 5, rf"^decoding failed: more frames decode than the {N - 5} the container's index lists"),
])
def test_a_frame_count_the_decode_contradicts_is_an_error_never_a_score(clip, tiny_detectors, frames, message):
    lying = dataclasses.replace(probe(clip), frames=frames)
    result = analyze(clip, ["tiny-test"], Sampling(sample_fps=None), info=lying)
    outcome = result.detectors["tiny-test"]
    assert outcome.status == "error" and outcome.score is None
    assert result.error is not None and outcome.reason == result.error
    assert re.search(message, result.error), result.error


# -- the packet scan at ingest --------------------------------------------------------------------
def _faststart(src, dst):
    """The same packets in an MP4 whose index (moov) comes first, as cameras and web uploads have it."""
    with av.open(str(src)) as inp, av.open(str(dst), "w", format="mp4", options={"movflags": "faststart"}) as out:
        stream = out.add_stream_from_template(inp.streams.video[0])
        for packet in inp.demux(inp.streams.video[0]):
            if packet.dts is None:
                continue
            packet.stream = stream
            out.mux(packet)


@pytest.mark.parametrize("keep, message", [
    (0.5, r"the header lists 40 frames but the file holds \d+ video packets \(the file may be truncated\)|"
          r"video packet \d+ is damaged or cut short"),
    (0.999, r"video packet 39 is damaged or cut short \(the file may be truncated\)"),
])
def test_a_truncated_file_is_refused_by_the_packet_scan(clip, tmp_path, keep, message, decoded):
    whole = tmp_path / "whole.mp4"
    _faststart(clip, whole)
    data = whole.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: int(len(data) * keep)])
    store = Store(":memory:")
    with pytest.raises(EvidenceError, match=message):
        ingest(store, cut, "cut.mp4", tmp_path / "evidence")
    assert decoded.value == 0  # refused before the probe's first-frame decode: no frame decoded
    (entry,) = store.audit_log()
    assert entry["action"] == "evidence.refused"
    assert list((tmp_path / "evidence" / ".incoming").iterdir()) == []


# -- results unchanged ---------------------------------------------------------------------------
def test_frame_scores_are_those_of_an_in_process_decode(two_face_clip, tiny_detectors, monkeypatch):
    path, _ = two_face_clip
    sampling = Sampling(sample_fps=None, detect_every=2)
    sandboxed = analyze(path, ["tiny-test"], sampling)
    monkeypatch.setattr(pipeline, "isolated_frames",
                        lambda video_path, info, wanted: iter_frames(video_path, wanted, rotation=info.rotation))
    in_process = analyze(path, ["tiny-test"], sampling)
    a, b = sandboxed.detectors["tiny-test"], in_process.detectors["tiny-test"]
    assert a.status == b.status == "ok" and len(a.frame_scores) > 20
    assert [(f, t) for f, t, _ in a.frame_scores] == [(f, t) for f, t, _ in b.frame_scores]
    assert np.allclose([s for *_, s in a.frame_scores], [s for *_, s in b.frame_scores], atol=1e-6)
    assert a.score == pytest.approx(b.score, abs=1e-6)
