"""Ingest under attack: lying headers, devices and FIFOs, paths out of folders, symlink races, leftovers, modes."""
from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
import stat
import threading
import time
from pathlib import Path

import pytest

from workbench import evidence as evidence_mod
from workbench import sandbox
from workbench.evidence import (
    EvidenceError, ingest, ingest_from_import_dir, open_in_folder, remove_stale_parts,
)
from workbench.sandbox import decode_max_s, decode_timeout_s
from workbench.store import Store
from workbench.video import DEFAULT_LIMITS, VideoInfo

HANG_GUARD_S = 120  # only catches a real hang; never a measure of speed


@contextlib.contextmanager
def no_hang(seconds: int = HANG_GUARD_S):
    """Fail the test (instead of blocking the run) if the body blocks for `seconds`."""
    def _alarm(signum, frame):
        raise TimeoutError(f"still blocked after {seconds} s")

    old = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


# -- a header that claims a huge video, and a decoder that hangs ---------------------------------
def _claims_huge(path) -> VideoInfo:
    """Probe facts for a header claiming the largest video the limits allow."""
    return VideoInfo(path=str(path), frames=250_000, fps=30.0, width=7680, height=4320, duration_s=8333.3,
                     codec="h264", container="mov,mp4", rotation=0, size_bytes=1000)


def _hangs(*args, **kwargs):
    time.sleep(3600)
    yield  # a generator, like the decoder it stands in for


def _drips(*args, on_decoded=None, **kwargs):
    n = 0
    while True:  # one "frame" now and then, forever: never stalled, never done
        n += 1
        on_decoded(n)
        time.sleep(0.05)
    yield


def _scan_hangs(path, limits, on_progress=None):
    time.sleep(3600)


def test_a_lying_header_cannot_raise_the_decode_limits(monkeypatch):
    huge = _claims_huge("x")
    monkeypatch.delenv("WORKBENCH_DECODE_MAX_S", raising=False)
    monkeypatch.setenv("WORKBENCH_DECODE_TIMEOUT_S", "120")
    header_based = 120 + huge.frames * huge.width * huge.height / 10e6
    assert header_based > 9 * 86400  # what the header alone asked for: 9.6 days
    assert decode_timeout_s(huge) == decode_max_s(DEFAULT_LIMITS) == 120 + 2 * DEFAULT_LIMITS.max_duration_s
    small = VideoInfo("x", 100, 25.0, 64, 48, 4.0, "h264", "mp4", 0, 1000)
    assert decode_timeout_s(small) == pytest.approx(120 + 100 * 64 * 48 / 10e6)  # small videos keep a small limit
    monkeypatch.setenv("WORKBENCH_DECODE_MAX_S", "600")
    assert decode_timeout_s(huge) == 600


def _analyse_claiming_huge(clip, tiny_detectors):
    from workbench.pipeline import Sampling, analyze

    return analyze(clip, ["tiny-test"], Sampling(sample_fps=None), info=_claims_huge(clip))


def test_a_hang_behind_a_huge_header_ends_the_analysis_for_no_progress(h264_clip, tiny_detectors, monkeypatch,
                                                                      capsys):
    monkeypatch.setenv("WORKBENCH_DECODE_STALL_S", "2")
    monkeypatch.setattr(sandbox, "decode_checked", _hangs)
    t0 = time.monotonic()
    with no_hang():
        result = _analyse_claiming_huge(h264_clip, tiny_detectors)
    took = time.monotonic() - t0
    outcome = result.detectors["tiny-test"]
    assert outcome.status == "error" and outcome.score is None
    assert "no decoding progress for 2 s (before the first frame)" in outcome.reason
    with capsys.disabled():
        print(f"\nhang behind a header claiming 250,000 frames at 8K: the analysis ended as an error in {took:.2f} s "
              f"(WORKBENCH_DECODE_STALL_S=2; the header alone asked for 9.6 days)")


def test_a_decoder_that_drips_progress_is_stopped_at_the_configured_cap(h264_clip, tiny_detectors, monkeypatch,
                                                                       capsys):
    monkeypatch.setenv("WORKBENCH_DECODE_STALL_S", "2")
    monkeypatch.setenv("WORKBENCH_DECODE_MAX_S", "3")
    monkeypatch.setattr(sandbox, "decode_checked", _drips)
    t0 = time.monotonic()
    with no_hang():
        result = _analyse_claiming_huge(h264_clip, tiny_detectors)
    assert "decoding took longer than 3 s" in result.detectors["tiny-test"].reason
    with capsys.disabled():
        print(f"\nslow-drip decoder behind a huge header: stopped in {time.monotonic() - t0:.2f} s (WORKBENCH_DECODE_MAX_S=3)")


def test_a_hang_in_the_packet_scan_is_refused_for_no_progress(h264_clip, tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_DECODE_STALL_S", "2")
    monkeypatch.setattr(evidence_mod, "inspect", _scan_hangs)
    store = Store(":memory:")
    with no_hang(), pytest.raises(EvidenceError, match=r"no decoding progress for 2 s \(before the first frame\)"):
        ingest(store, h264_clip, "hangs.mp4", tmp_path / "evidence")
    (entry,) = store.audit_log()
    assert entry["action"] == "evidence.refused" and "no decoding progress" in entry["details"]["reason"]
    assert list((tmp_path / "evidence" / ".incoming").iterdir()) == []


# -- modes ---------------------------------------------------------------------------------------
def test_evidence_is_private_whatever_the_umask(h264_clip, tmp_path):
    old = os.umask(0)
    try:
        evidence_dir = tmp_path / "evidence"
        row = ingest(Store(":memory:"), h264_clip, "clip.mp4", evidence_dir)
    finally:
        os.umask(old)
    stored = Path(row["stored_path"])
    mode = lambda p: stat.S_IMODE(p.stat().st_mode)  # noqa: E731
    assert mode(stored) == 0o400
    assert {p.name: mode(p) for p in (evidence_dir, evidence_dir / ".incoming", stored.parent)} == {
        "evidence": 0o700, ".incoming": 0o700, stored.parent.name: 0o700}


# -- devices, FIFOs and paths outside the labels folder --------------------------------------------
def test_devices_and_fifos_are_refused_before_a_byte_is_read(tmp_path):
    store, evidence_dir = Store(":memory:"), tmp_path / "evidence"
    with no_hang(), pytest.raises(EvidenceError, match=r"not a regular file \(a device\)"):
        ingest(store, "/dev/zero", "zero.mp4", evidence_dir)
    fifo = tmp_path / "clip.mp4"
    os.mkfifo(fifo)
    with no_hang(), pytest.raises(EvidenceError, match=r"not a regular file \(a FIFO\)"):
        ingest(store, fifo, "fifo.mp4", evidence_dir)
    with pytest.raises(EvidenceError, match=r"not a regular file \(a folder\)"):
        ingest(store, tmp_path, "dir.mp4", evidence_dir)
    assert list((evidence_dir / ".incoming").iterdir()) == []
    assert [e["action"] for e in store.audit_log()] == ["evidence.refused"] * 3


def _labels(folder: Path, *rows: str) -> Path:
    path = folder / "labels.csv"
    path.write_text("path,label,group\n" + "".join(f"{r},real,a\n" for r in rows))
    return path


def test_labels_paths_must_stay_in_the_labels_folder(tmp_path, h264_clip):
    from workbench.bias_report import LabelsError, read_labels

    data = tmp_path / "data"
    data.mkdir()
    shutil.copy(h264_clip, data / "inside.mp4")
    (data / "sub").mkdir()
    shutil.copy(h264_clip, data / "sub" / "deeper.mp4")
    (tmp_path / "secret.mp4").write_bytes(b"outside")
    (data / "link.mp4").symlink_to(tmp_path / "secret.mp4")
    rows, _ = read_labels(_labels(data, "inside.mp4", "sub/deeper.mp4", str(data / "inside.mp4")))
    assert [r["path"] for r in rows] == [data / "inside.mp4", data / "sub" / "deeper.mp4", data / "inside.mp4"]
    for bad in ("/dev/zero", "../secret.mp4", str(tmp_path / "secret.mp4"), "link.mp4", "sub/../../secret.mp4"):
        with pytest.raises(LabelsError, match=r"line 2: .* lies outside the labels file's folder"):
            read_labels(_labels(data, bad))
    rows, _ = read_labels(_labels(data, "../secret.mp4", "/dev/zero"), allow_outside=True)
    assert [r["path"] for r in rows] == [data / "../secret.mp4", Path("/dev/zero")]
    fifo = tmp_path / "fifo.csv"
    os.mkfifo(fifo)
    with no_hang(), pytest.raises(LabelsError, match=r"fifo.csv: not a regular file \(a FIFO\)"):
        read_labels(fifo)


def test_bias_run_refuses_dev_zero_and_a_fifo_even_when_outside_is_allowed(tmp_path, h264_clip, tiny_detectors,
                                                                            fresh_store):
    from workbench.bias_report import evaluate

    data = tmp_path / "data"
    data.mkdir()
    os.mkfifo(data / "fifo.mp4")
    labels = _labels(data, "/dev/zero", "fifo.mp4")
    with no_hang():
        report = evaluate(labels, ["tiny-test"], fresh_store, tmp_path / "evidence", allow_outside=True)
    reasons = [r["reason"] for r in report["refused"]]
    assert reasons == ["not a regular file (a device); only regular files are taken as evidence",
                       "not a regular file (a FIFO); only regular files are taken as evidence"]
    assert sum(p.stat().st_size for p in (tmp_path / "evidence").rglob("*") if p.is_file()) == 0


# -- stale .part files -----------------------------------------------------------------------------
def test_a_killed_ingests_part_file_is_removed_by_the_next_ingest(h264_clip, tmp_path):
    evidence_dir = tmp_path / "evidence"
    incoming = evidence_dir / ".incoming"
    incoming.mkdir(parents=True)
    pid = os.fork()
    if pid == 0:  # an ingest that gets killed half-way through writing
        try:
            fd, _ = evidence_mod._new_part(incoming)
            os.write(fd, b"half a video")
            os.kill(os.getpid(), signal.SIGKILL)
        finally:
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status)
    (stale,) = incoming.iterdir()
    assert stale.suffix == ".part"
    live_fd, live = evidence_mod._new_part(incoming)  # an ingest still running holds its lock
    try:
        ingest(Store(":memory:"), h264_clip, "clip.mp4", evidence_dir)
        assert sorted(incoming.iterdir()) == [live]
    finally:
        os.close(live_fd)
    assert remove_stale_parts(incoming) == 1
    assert list(incoming.iterdir()) == []


def test_a_part_file_taken_for_stale_before_its_lock_is_replaced(tmp_path, monkeypatch):
    incoming = tmp_path
    real_flock = fcntl.flock
    calls = []

    def flock_after_a_cleaner(fd, op):  # another ingest cleans up between mkstemp and flock, once
        if not calls:
            calls.append(fd)
            remove_stale_parts(incoming)
        return real_flock(fd, op)

    monkeypatch.setattr(evidence_mod.fcntl, "flock", flock_after_a_cleaner)
    fd, part = evidence_mod._new_part(incoming)
    try:
        assert part.exists() and os.fstat(fd).st_ino == part.stat().st_ino
        assert list(incoming.iterdir()) == [part]
    finally:
        os.close(fd)


# -- the import folder ---------------------------------------------------------------------------------
@pytest.fixture
def import_tree(tmp_path):
    folder = tmp_path / "import"
    (folder / "cases").mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.mp4").write_bytes(b"SECRET")
    (folder / "cases" / "ok.mp4").write_bytes(b"INSIDE")
    return folder, outside


def test_import_folder_refuses_links_out(import_tree, tmp_path, h264_clip):
    folder, outside = import_tree
    store = Store(":memory:")
    (folder / "link.mp4").symlink_to(outside / "secret.mp4")
    (folder / "linkdir").symlink_to(outside)
    refusals = {
        folder / "link.mp4": "is a symbolic link",
        folder / "linkdir" / "secret.mp4": "a folder on that path is a symbolic link",
        outside / "secret.mp4": "outside the import folder",
        folder / "cases" / ".." / ".." / "outside" / "secret.mp4": "outside the import folder",
    }
    for path, reason in refusals.items():
        with pytest.raises(EvidenceError, match=reason):
            ingest_from_import_dir(store, path, folder, tmp_path / "evidence")
    os.mkfifo(folder / "fifo.mp4")
    with no_hang(), pytest.raises(EvidenceError, match="not a regular file"):
        ingest_from_import_dir(store, folder / "fifo.mp4", folder, tmp_path / "evidence")
    assert [e["action"] for e in store.audit_log()] == ["evidence.refused"] * 5
    shutil.copy(h264_clip, folder / "cases" / "clip.mp4")
    row = ingest_from_import_dir(store, folder / "cases" / "clip.mp4", folder, tmp_path / "evidence")
    assert row["original_name"] == "clip.mp4" and Path(row["stored_path"]).read_bytes() == h264_clip.read_bytes()


def test_a_link_swapped_in_after_a_check_cannot_escape(import_tree):
    folder, outside = import_tree
    target = folder / "cases" / "ok.mp4"
    # The old way: check the name, then open it; the attacker swaps in a link in between.
    assert target.resolve().is_relative_to(folder.resolve())
    target.unlink()
    target.symlink_to(outside / "secret.mp4")
    with open(target, "rb") as f:  # what a check-then-open would have read
        assert f.read() == b"SECRET"
    with pytest.raises(EvidenceError, match="symbolic link"):
        open_in_folder(target, folder)


def test_a_flipping_link_never_leads_outside(import_tree, capsys):
    folder, outside = import_tree
    target = folder / "cases" / "flip.mp4"
    good = folder / "cases" / "good.tmp"
    evil = folder / "cases" / "evil.tmp"
    stop = threading.Event()

    def flip():
        while not stop.is_set():
            good.write_bytes(b"INSIDE")
            os.replace(good, target)
            with contextlib.suppress(FileExistsError):
                evil.symlink_to(outside / "secret.mp4")
            os.replace(evil, target)

    thread = threading.Thread(target=flip, daemon=True)
    thread.start()
    opened = refused = 0
    try:
        for _ in range(3000):
            try:
                fd = open_in_folder(target, folder)
            except (EvidenceError, FileNotFoundError):
                refused += 1
                continue
            with os.fdopen(fd, "rb") as f:
                assert f.read() == b"INSIDE"  # never the outside file
            opened += 1
    finally:
        stop.set()
        thread.join(timeout=30)
    assert opened and refused  # both states were really hit
    with capsys.disabled():
        print(f"\nflipping symlink: 3000 attempts, {opened} opened the inside file, {refused} refused, 0 escaped")


def test_a_folder_moved_out_between_steps_is_caught_by_the_descriptor_path(import_tree, monkeypatch):
    folder, outside = import_tree
    real_open = os.open
    moved = []

    def open_then_move(path, flags, *args, dir_fd=None, **kw):
        if path == "ok.mp4" and not moved:  # the attacker moves the opened folder out, then we open the file
            os.rename(folder / "cases", outside / "cases")
            moved.append(True)
        return real_open(path, flags, *args, dir_fd=dir_fd, **kw)

    monkeypatch.setattr(evidence_mod.os, "open", open_then_move)
    with pytest.raises(EvidenceError, match="outside the import folder"):
        open_in_folder(folder / "cases" / "ok.mp4", folder)
    assert moved
