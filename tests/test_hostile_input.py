"""Hostile input: a generated fuzz corpus, the decoding sandbox, hostile names, CLI refusals.

Every file is either accepted (and then analysed without a crash) or refused with a clear
message; nothing hangs, nothing crashes the test process, nothing is left half-written.
"""
from __future__ import annotations

import collections
import hashlib
import io
import os
import random
import re
import signal
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import numbered_frames
from workbench import sandbox as sandbox_mod
from workbench.evidence import EvidenceError, display_name, ingest, stored_path
from workbench.sandbox import SandboxError, run_isolated
from workbench.store import Store
from workbench.video import FrameReader, VideoError, write_video
from helpers import child_pids

W, H, N = 64, 48, 40
SEED = 20240611


@pytest.fixture(autouse=True)
def _short_decode_timeout(monkeypatch):
    monkeypatch.setenv("WORKBENCH_DECODE_TIMEOUT_S", "20")
    monkeypatch.setenv("WORKBENCH_DECODE_MEMORY_MB", "1024")


@pytest.fixture(scope="module")
def bases(tmp_path_factory) -> dict[str, bytes]:
    """Tiny valid clips, long GOP: H.264 in MP4, MPEG-4 Part 2 in AVI and in MP4."""
    folder = tmp_path_factory.mktemp("bases")
    out = {}
    for name, codec in (("h264.mp4", "libx264"), ("mpeg4.avi", "mpeg4"), ("mpeg4.mp4", "mpeg4")):
        path = folder / name
        write_video(path, numbered_frames(N, W, H, seed=3), fps=25, codec=codec, gop=250)
        out[name] = path.read_bytes()
    return out


# -- the corpus ------------------------------------------------------------------------------------
def _box(data: bytes, name: bytes, start: int = 0) -> tuple[int, int]:
    """(start, size) of the first MP4 box called `name` (searching its 4-character type)."""
    at = data.index(name, start) - 4
    return at, int.from_bytes(data[at : at + 4], "big")


def _regions(name: str, data: bytes) -> tuple[range, range]:
    """(header, payload) byte ranges: moov/mdat for MP4, hdrl/movi for AVI."""
    if name.endswith(".avi"):
        movi = data.index(b"movi")
        end = data.find(b"idx1")
        return range(12, movi), range(movi + 4, end if end > 0 else len(data))
    moov, moov_size = _box(data, b"moov")
    mdat, mdat_size = _box(data, b"mdat")
    return range(moov + 8, moov + moov_size), range(mdat + 8, mdat + mdat_size)


def _patch(data: bytes, offset: int, value: int, width: int, order: str = "big") -> bytes:
    return data[:offset] + value.to_bytes(width, order) + data[offset + width :]


def _absurd(bases: dict[str, bytes]) -> list[tuple[str, str, bytes]]:
    """Headers that lie: huge dimensions, a huge frame count, impossible box sizes."""
    cases = []
    for name in ("h264.mp4", "mpeg4.mp4"):
        data = bases[name]
        tkhd, size = _box(data, b"tkhd")
        entry = b"avc1" if name.startswith("h264") else b"mp4v"
        se, _ = _box(data, entry)
        huge_tkhd = _patch(_patch(data, tkhd + size - 8, 65535 << 16, 4), tkhd + size - 4, 65535 << 16, 4)
        huge_entry = _patch(_patch(data, se + 32, 65535, 2), se + 34, 65535, 2)
        both = _patch(_patch(huge_tkhd, se + 32, 65535, 2), se + 34, 65535, 2)
        zero_entry = _patch(_patch(data, se + 32, 0, 2), se + 34, 0, 2)
        mdat, _ = _box(data, b"mdat")
        moov, _ = _box(data, b"moov")
        cases += [
            ("absurd-tkhd-65535", name, huge_tkhd), ("absurd-sampleentry-65535", name, huge_entry),
            ("absurd-tkhd+entry-65535", name, both), ("absurd-sampleentry-0x0", name, zero_entry),
            ("absurd-mdat-size", name, _patch(data, mdat, 0xFFFFFFFF, 4)),
            ("absurd-moov-size-64bit", name, _patch(data, moov, 1, 4)),
            ("absurd-moov-size-0", name, _patch(data, moov, 0, 4)),
        ]
    data = bases["mpeg4.avi"]
    avih = data.index(b"avih") + 8
    strh = data.index(b"strh") + 8
    strf = data.index(b"strf") + 8
    frames = _patch(_patch(data, avih + 16, 0x7FFFFFFF, 4, "little"), strh + 32, 0x7FFFFFFF, 4, "little")
    dims = data
    for off in (avih + 32, avih + 36, strf + 4, strf + 8):
        dims = _patch(dims, off, 65535, 4, "little")
    cases += [
        ("absurd-avi-frame-count", "mpeg4.avi", frames),
        ("absurd-avi-dimensions", "mpeg4.avi", dims),
        ("absurd-avi-rate-0", "mpeg4.avi", _patch(data, strh + 24, 0, 4, "little")),
        ("absurd-avi-negative-height", "mpeg4.avi", _patch(data, strf + 8, 2**32 - 65535, 4, "little")),
    ]
    return cases


def _mutations(bases: dict[str, bytes]) -> list[tuple[str, str, bytes]]:
    """Seeded truncations, byte flips, overwrites, zeroed ranges and duplicated chunks."""
    rng = random.Random(SEED)
    cases = []
    for name, data in bases.items():
        header, payload = _regions(name, data)
        n = len(data)
        cuts = sorted({1, 4, 8, 12, 32, 100, 500, header.start, header.stop - 1, payload.start + 16, n - 1}
                      | {int(n * k / 16) for k in range(1, 16)})
        cases += [(f"truncate@{c}", name, data[:c]) for c in cuts if 0 < c < n]
        for region_name, region in (("header", header), ("payload", payload)):
            for i in range(14):
                b = bytearray(data)
                for _ in range(rng.choice((1, 2, 4, 16))):
                    b[rng.choice(region)] ^= 1 << rng.randrange(8)
                cases.append((f"flip-{region_name}#{i}", name, bytes(b)))
            for i in range(5):
                b = bytearray(data)
                at, length = rng.choice(region), rng.randint(4, 64)
                b[at : at + length] = rng.randbytes(length)
                cases.append((f"overwrite-{region_name}#{i}", name, bytes(b)[:n]))
            for i in range(4):
                b = bytearray(data)
                at, length = rng.choice(region), rng.randint(8, 512)
                b[at : at + length] = bytes(min(length, n - at))
                cases.append((f"zero-{region_name}#{i}", name, bytes(b)))
        for i in range(6):
            at, length = rng.randrange(n), rng.randint(16, 2048)
            cases.append((f"duplicate-chunk#{i}", name, data[: at + length] + data[at : at + length] + data[at + length :]))
    return cases


def _specials(bases: dict[str, bytes], clip_on_disk: Path) -> list[tuple[str, str, bytes]]:
    ok, png = cv2.imencode(".png", np.zeros((16, 16, 3), np.uint8))
    assert ok
    local = str(clip_on_disk)
    return [
        ("zero-bytes", "x.mp4", b""),
        ("text-as-mp4", "x.mp4", b"Meeting notes, not a video.\n" * 50),
        ("png-as-mp4", "x.mp4", png.tobytes()),
        ("html-as-mp4", "x.mp4", b"<!doctype html><html><body><script>alert(1)</script></body></html>"),
        ("hls-remote", "x.mp4", b"#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXTINF:2,\nhttp://127.0.0.1:9/a.ts\n#EXT-X-ENDLIST\n"),
        ("hls-local", "x.mp4", f"#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXTINF:2,\nfile://{local}\n#EXTINF:2,\n{local}\n#EXT-X-ENDLIST\n".encode()),
        ("ffconcat-local", "x.mp4", f"ffconcat version 1.0\nfile '{local}'\nfile 'http://127.0.0.1:9/b.mp4'\n".encode()),
        ("sdp-udp", "x.mp4", b"v=0\no=- 0 0 IN IP4 127.0.0.1\ns=x\nc=IN IP4 127.0.0.1\nt=0 0\nm=video 9 RTP/AVP 96\na=rtpmap:96 H264/90000\n"),
        ("random-bytes", "x.mp4", random.Random(SEED).randbytes(4096)),
        ("mp4-header-only", "x.mp4", bases["h264.mp4"][:32] * 3),
    ]


def _reason_class(message: str) -> str:
    """A refusal message without its numbers and parenthesised details (for the tally)."""
    text = re.sub(r"\([^)]*\)|'[^']*'|\d[\d,.]*(x\d+)?", "", message)
    return re.sub(r"\s+", " ", text).strip(" ;:.")


@pytest.fixture(scope="module")
def face_detector():
    from workbench.faces import FaceDetector

    return FaceDetector()


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_fuzz_corpus_is_analysed_or_refused(bases, face_detector, tmp_path, capsys):
    from workbench.pipeline import Sampling, analyze

    clip_on_disk = tmp_path / "valid.mp4"
    clip_on_disk.write_bytes(bases["h264.mp4"])
    corpus = [("original", name, data) for name, data in bases.items()]
    corpus += _absurd(bases) + _specials(bases, clip_on_disk) + _mutations(bases)
    assert len(corpus) >= 200 + 3
    store, evidence_dir, inputs = Store(":memory:"), tmp_path / "evidence", tmp_path / "in"
    inputs.mkdir()
    tally: collections.Counter = collections.Counter()
    by_kind: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    problems, refusals, accepted, slowest = [], 0, set(), (0.0, "")
    t_all = time.perf_counter()
    for i, (kind, base, data) in enumerate(corpus):
        src = inputs / f"{i:03d}{Path(base).suffix}"
        src.write_bytes(data)
        label = f"{i:03d} {kind} of {base}"
        t0 = time.perf_counter()
        try:
            row = ingest(store, src, src.name, evidence_dir)
        except EvidenceError as exc:
            refusals += 1
            if not str(exc).strip():
                problems.append(f"{label}: refused with an empty message")
            tally[f"refused: {_reason_class(str(exc))}"] += 1
            by_kind[kind.split("#")[0].split("@")[0]]["refused"] += 1
        else:
            accepted.add(row["sha256"])
            if Path(row["stored_path"]) != stored_path(evidence_dir, row["sha256"]):
                problems.append(f"{label}: stored at {row['stored_path']}")
            try:
                # The analysis decodes every frame (the full check the ingest no longer makes).
                # (No detector here: MTCNN cannot take these 64x48 frames with a detector's retry; that a
                # failed decode is never a score is tests/test_decode_once.py's.)
                result = analyze(row["stored_path"], [], Sampling(sample_fps=5), face_detector=face_detector)
                if result.video.frames != row["probe"]["frames"]:
                    problems.append(f"{label}: analysis saw {result.video.frames} frames, ingest {row['probe']['frames']}")
                if result.error is not None:
                    # A file the decode contradicts ends as an error with its reason, never a score.
                    if not result.error.strip() or result.ensemble.get("score") is not None:
                        problems.append(f"{label}: decode failed ({result.error}) but the result is {result.ensemble}")
                    tally[f"accepted, analysis error: {_reason_class(result.error)}"] += 1
                    by_kind[kind.split("#")[0].split("@")[0]]["analysis error"] += 1
                else:
                    with FrameReader(row["stored_path"]) as reader:
                        for n in {0, len(reader) // 2, len(reader) - 1}:
                            reader.read(n)
                    tally["accepted and analysed"] += 1
                    by_kind[kind.split("#")[0].split("@")[0]]["analysed"] += 1
            except VideoError as exc:
                tally[f"accepted, analysis refused: {_reason_class(str(exc))}"] += 1
                by_kind[kind.split("#")[0].split("@")[0]]["analysis refused"] += 1
            except Exception as exc:  # noqa: BLE001 - this is the failure we look for
                problems.append(f"{label}: analysis crashed with {type(exc).__name__}: {exc}")
        took = time.perf_counter() - t0
        slowest = max(slowest, (took, label))
        if kind == "original" and tally["accepted and analysed"] != i + 1:
            problems.append(f"{label}: a valid clip was not accepted and analysed")
    elapsed = time.perf_counter() - t_all

    assert not problems, "\n".join(problems)
    assert list((evidence_dir / ".incoming").iterdir()) == []
    rows = list(store.db.query("SELECT sha256, stored_path FROM evidence"))
    assert {r["sha256"] for r in rows} == accepted
    for r in rows:
        assert _sha(Path(r["stored_path"])) == r["sha256"]
    stored = {p for p in evidence_dir.rglob("*") if p.is_file()}
    assert stored == {Path(r["stored_path"]) for r in rows}  # nothing half-written anywhere
    actions = [e["action"] for e in store.audit_log(limit=100_000)]
    assert actions.count("evidence.refused") == refusals
    validated = [e["details"] for e in store.audit_log(limit=100_000) if e["action"] == "evidence.validated"]
    assert len(validated) == len(rows)
    assert all(d["packets"] >= d["indexed_frames"] for d in validated)
    with capsys.disabled():
        print(f"fuzz corpus: {len(corpus)} files ({len(corpus) - 3} hostile + 3 originals), "
              f"{elapsed:.1f} s, slowest {slowest[0]:.2f} s ({slowest[1]})")
        for key, count in sorted(tally.items(), key=lambda kv: (-kv[1], kv[0])):
            print(f"  {count:4d}  {key}")
        for kind, counts in sorted(by_kind.items()):
            print(f"  {kind:<28} " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))


# -- the sandbox -----------------------------------------------------------------------------------
def _sleep(seconds: float) -> None:
    time.sleep(seconds)


def _segfault() -> None:
    os.kill(os.getpid(), signal.SIGSEGV)


def _kill_self() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _allocate(mb: int) -> int:
    return len(np.ones(mb * 1024 * 1024, dtype=np.uint8))


def _pid_and(value):
    return os.getpid(), value


def _raise_video_error() -> None:
    raise VideoError("frame 7 could not be decoded")


def _raise_other() -> None:
    raise KeyError("boom")


def test_sandbox_returns_the_value_from_another_process():
    pid, value = run_isolated(_pid_and, {"a": [1, 2]}, timeout_s=10)
    assert value == {"a": [1, 2]} and pid != os.getpid()
    assert run_isolated(pow, 2, 10, timeout_s=10) == 1024


def test_sandbox_timeout_kills_and_reaps_the_child(capsys):
    before = child_pids()
    t0 = time.perf_counter()
    with pytest.raises(SandboxError, match=r"longer than 0.5 s") as err:
        run_isolated(_sleep, 600, timeout_s=0.5)  # a real hang would outlast the whole run
    took = time.perf_counter() - t0
    assert err.value.reason == "timeout"
    assert child_pids() == before  # no zombie, no orphan
    with capsys.disabled():
        print(f"\nsandbox: a 600 s sleep under a 0.5 s timeout was stopped after {took:.2f} s")


def test_sandbox_reports_a_crash_by_signal():
    with pytest.raises(SandboxError, match=r"the decoder crashed \(signal 11, SIGSEGV\)") as err:
        run_isolated(_segfault, timeout_s=10)
    assert err.value.reason == "crash"
    with pytest.raises(SandboxError, match=r"signal 9") as err:
        run_isolated(_kill_self, timeout_s=10)
    assert err.value.reason == "memory"  # SIGKILL is what the kernel's OOM killer sends


def test_sandbox_memory_limit():
    assert run_isolated(_allocate, 64, timeout_s=20, memory_mb=512) == 64 * 1024 * 1024
    with pytest.raises(SandboxError, match=r"ran out of memory \(limit 256 MB\)") as err:
        run_isolated(_allocate, 2048, timeout_s=20, memory_mb=256)
    assert err.value.reason == "memory"


def test_sandbox_passes_errors_back_with_their_message():
    with pytest.raises(VideoError, match="^frame 7 could not be decoded$"):
        run_isolated(_raise_video_error, timeout_s=10)
    with pytest.raises(SandboxError, match="KeyError: 'boom'") as err:
        run_isolated(_raise_other, timeout_s=10)
    assert err.value.reason == "error"


# -- hostile names -------------------------------------------------------------------------------
HOSTILE_NAMES = [
    "../../app.py", "x.mp4:y.py", "a\x00b\x1b[31m.mp4", "n" * 10_000 + ".mp4", "/etc/passwd", "C:\\x.mp4",
    "..\\..\\evil.mp4", "\u202egnp.mp4", "line\nbreak.mp4", "", ".", "..", "~/x.mp4", "%2e%2e%2fapp.py",
]


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def test_hostile_names_stay_inside_the_evidence_folder(bases, tmp_path, monkeypatch):
    work = tmp_path / "a" / "b" / "c"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)  # so a name used as a relative path would land inside tmp_path
    src = tmp_path / "clip.mp4"
    src.write_bytes(bases["h264.mp4"])
    before = _tree(tmp_path)
    repo_before = set(os.listdir(Path(__file__).parents[1]))
    for i, name in enumerate(HOSTILE_NAMES):
        for how in ("path", "upload"):
            evidence_dir = tmp_path / f"ev{i}-{how}"
            store = Store(":memory:")
            source = src if how == "path" else io.BytesIO(bases["h264.mp4"])
            row = ingest(store, source, name, evidence_dir)
            sha = row["sha256"]
            assert Path(row["stored_path"]) == evidence_dir / sha[:2] / sha
            assert row["original_name"] == display_name(name)
            assert len(row["original_name"]) <= 255
            assert not any(ord(c) < 32 or 0x7F <= ord(c) < 0xA0 or c == "\u202e" for c in row["original_name"])
            assert _tree(evidence_dir) == {".incoming", sha[:2], f"{sha[:2]}/{sha}"}
            store.close()
    created = _tree(tmp_path) - before
    assert all(p.split(os.sep)[0].startswith("ev") for p in created), sorted(created)[:5]
    assert set(os.listdir(Path(__file__).parents[1])) == repo_before


def test_hostile_name_refusal_is_audited_as_text(tmp_path):
    store = Store(":memory:")
    name = "../../app.py\x1b[2J" + "z" * 10_000
    with pytest.raises(EvidenceError):
        ingest(store, io.BytesIO(b"print('not a video')\n"), name, tmp_path / "evidence")
    (entry,) = store.audit_log()
    assert entry["action"] == "evidence.refused"
    assert entry["subject"] == f"upload:{display_name(name)}" and "\x1b" not in entry["subject"]
    assert _tree(tmp_path) == {"evidence", "evidence/.incoming"}


# -- the command line ----------------------------------------------------------------------------
def _crash_decoder(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGSEGV)
    yield


def _hang_decoder(*args, **kwargs):
    time.sleep(600)
    yield


@pytest.fixture
def cli_env(tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def _run_cli(path: Path, capsys) -> tuple[int, str]:
    from workbench.cli import main

    code = main(["analyze", str(path), "--detector", "tiny-test", "--quiet"])
    return code, capsys.readouterr().err


def test_cli_refuses_corrupt_files_without_a_traceback(bases, tiny_detectors, cli_env, tmp_path, capsys):
    data = bases["h264.mp4"]
    absurd = dict(((k, b), d) for k, b, d in _absurd(bases))
    files = {
        "truncated.mp4": data[:200],
        "zero.mp4": b"",
        "playlist.mp4": b"#EXTM3U\n#EXTINF:2,\nhttp://127.0.0.1:9/a.ts\n",
        "huge-frame-count.avi": absurd[("absurd-avi-frame-count", "mpeg4.avi")],
        "notes.mp4": b"not a video\n" * 20,
    }
    for i, (name, content) in enumerate(files.items()):
        bad = tmp_path / name
        bad.write_bytes(content)
        code, err = _run_cli(bad, capsys)
        assert code == 2, (name, err)
        assert err.startswith("refused: ") and "Traceback" not in err, (name, err)
    store = Store(cli_env / "workbench.db")
    assert store.db["evidence"].count == 0
    assert [e["action"] for e in store.audit_log()] == ["evidence.refused"] * len(files)
    assert list((cli_env / "evidence" / ".incoming").iterdir()) == []


def test_cli_survives_a_decoder_crash_and_a_hang(bases, tiny_detectors, cli_env, tmp_path, capsys, monkeypatch):
    # The ingest decodes no frame; the analysis' decode (in its sandbox) crashes or hangs, and the
    # analysis ends as an error with the reason, the evidence kept, nothing scored.
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(bases["h264.mp4"])
    monkeypatch.setattr(sandbox_mod, "decode_checked", _crash_decoder)
    code, out, err = _run_cli_out(clip, capsys)
    assert code == 0 and "Traceback" not in err
    assert "error" in out and "decoding failed: the decoder crashed (signal 11, SIGSEGV)" in out
    monkeypatch.setattr(sandbox_mod, "decode_checked", _hang_decoder)
    monkeypatch.setenv("WORKBENCH_DECODE_STALL_S", "1")
    t0 = time.perf_counter()
    code, out, err = _run_cli_out(clip, capsys)  # the hang sleeps 600 s: finishing at all shows it was stopped
    took = time.perf_counter() - t0
    assert code == 0 and "decoding failed: no decoding progress for 1 s" in out
    assert list((cli_env / "evidence" / ".incoming").iterdir()) == []
    store = Store(cli_env / "workbench.db")
    assert store.db["evidence"].count == 1 and store.db["analyses"].count == 0
    assert [e["action"] for e in store.audit_log()].count("analysis.failed") == 2
    with capsys.disabled():
        print(f"\nCLI: a hung decoder under WORKBENCH_DECODE_STALL_S=1 ended the analysis as an error after {took:.2f} s")


def _run_cli_out(path: Path, capsys) -> tuple[int, str, str]:
    from workbench.cli import main

    code = main(["analyze", str(path), "--detector", "tiny-test", "--quiet"])
    captured = capsys.readouterr()
    return code, captured.out, captured.err
