"""The command line: analyze (JSON contract, refusals), detectors, demo."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from workbench.cli import main
from workbench.store import Store


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def test_analyze_writes_json_and_stores_evidence(two_face_clip, tiny_detectors, env, capsys):
    path, _ = two_face_clip
    code = main(["analyze", str(path), "--detector", "tiny-test", "--sample-fps", "2", "--json", "-", "--quiet", "--case", "c1"])
    assert code == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["video"]["path"] == str(path)
    assert doc["detectors"]["tiny-test"]["status"] == "ok"
    store = Store(env / "workbench.db")
    ev = store.evidence(doc["video"]["sha256"])
    assert ev["original_name"] == "two_faces.mp4"
    stored = env / "evidence" / doc["video"]["sha256"][:2] / doc["video"]["sha256"]
    assert ev["stored_path"] == str(stored) and stored.is_file()
    assert not stored.stat().st_mode & 0o222  # read-only
    assert store.case_evidence(store.cases()[0]["id"])[0]["sha256"] == doc["video"]["sha256"]


def test_analyze_text_output_has_caveat(two_face_clip, tiny_detectors, env, capsys, tmp_path):
    path, _ = two_face_clip
    out_json = tmp_path / "r.json"
    assert main(["analyze", str(path), "--detector", "tiny-test", "--json", str(out_json), "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "tiny-test" in text and "Caveat:" in text and "face-swap" in text.lower()
    assert json.loads(out_json.read_text())["ensemble"]["status"] == "ok"


@pytest.mark.parametrize("content", [b"", b"not a video at all" * 100, b"#EXTM3U\nhttp://127.0.0.1:9/a.ts\n"])
def test_refused_input_exits_nonzero_and_stores_only_an_audit_entry(content, tiny_detectors, env, tmp_path, capsys):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(content)
    assert main(["analyze", str(bad), "--detector", "tiny-test", "--quiet"]) == 2
    assert "refused:" in capsys.readouterr().err
    store = Store(env / "workbench.db")
    assert store.db["evidence"].count == 0 and store.db["analyses"].count == 0
    assert [e["action"] for e in store.audit_log()] == ["evidence.refused"]
    assert list((env / "evidence" / ".incoming").iterdir()) == []


def test_oversized_video_is_refused(two_face_clip, tiny_detectors, env, monkeypatch, capsys):
    monkeypatch.setenv("WORKBENCH_MAX_PIXELS", str(320 * 240))
    path, _ = two_face_clip
    assert main(["analyze", str(path), "--detector", "tiny-test", "--quiet"]) == 2
    assert "resolution 640x360 is above the limit" in capsys.readouterr().err


def test_unknown_detector_and_missing_file(tiny_detectors, env, capsys, tmp_path):
    assert main(["analyze", str(tmp_path / "nope.mp4"), "--detector", "no-such-detector"]) == 2
    assert "unknown detector 'no-such-detector'" in capsys.readouterr().err
    assert main(["analyze", str(tmp_path / "nope.mp4"), "--detector", "tiny-test"]) == 2
    assert "no such file" in capsys.readouterr().err


def test_detectors_lists_cards_and_weight_status(tiny_detectors, capsys):
    assert main(["detectors", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["tiny-test"]["installed"] is True
    assert rows["tiny-test"]["card"]["scope_caveat"]
    assert main(["detectors"]) == 0
    assert "Caveat:" in capsys.readouterr().out


def test_demo_command(tmp_path, capsys):
    out = tmp_path / "d" / "demo.mp4"
    assert main(["demo", "--out", str(out), "--seconds", "1"]) == 0
    assert out.is_file()
    mtime = out.stat().st_mtime_ns
    assert main(["demo", "--out", str(out), "--if-missing"]) == 0
    assert out.stat().st_mtime_ns == mtime


@pytest.mark.parametrize("euid, terminal, warned", [(0, True, True), (1000, True, False), (0, False, False)])
def test_root_at_a_terminal_gets_a_one_line_warning_after_the_command(monkeypatch, tmp_path, capsys, euid, terminal,
                                                                      warned):
    import os

    from workbench import cli

    monkeypatch.setattr(os, "geteuid", lambda: euid)
    monkeypatch.setattr(cli, "_stderr_is_terminal", lambda: terminal)
    assert main(["verify", "--db", str(tmp_path / "missing.db")]) == 2  # the exit code is the command's own
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("verify failed: no database")  # a refusal stays the first line
    assert [line for line in err if line.startswith("warning:")] == (
        ["warning: running as root: the database, evidence and decoder children get root's rights; "
         "run the workbench as an ordinary user"] if warned else [])


def test_every_cli_subcommand_is_in_the_readme():
    from workbench.cli import build_parser

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    sub = next(a for a in build_parser()._actions if a.__class__.__name__ == "_SubParsersAction")
    missing = [name for name in sub.choices if f"python -m workbench {name}" not in readme]
    assert len(sub.choices) >= 7 and missing == []
