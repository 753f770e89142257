"""PNG export of a frame and its face crops: provenance in the PNG's text chunks, an audit entry, refusal without a name."""
from __future__ import annotations

import hashlib
import io

import numpy as np
import pytest
from PIL import Image

from workbench import __version__
from workbench.export import EXPORT_ACTION, ExportError, export_frame, png_with_metadata, read_png_metadata

SHA = "ab" * 32


@pytest.fixture
def case(fresh_store):
    case_id = fresh_store.create_case("Harbour", actor="ana")
    fresh_store.add_evidence(SHA, "harbour.mp4", 10, "/e/ab", {"fps": 25.0, "frames": 100}, "ana", case_id)
    return fresh_store, case_id


def _frame(seed: int = 0, shape=(36, 64, 3)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def test_exported_pngs_carry_their_provenance_and_exact_pixels(case):
    store, case_id = case
    rgb, crop = _frame(0), _frame(1, (16, 16, 3))
    frame_png, crop_png = export_frame(store, "Ana Łukasiewicz", case_id, SHA, 40, rgb, [(3, crop)])
    assert frame_png.file_name == f"{SHA[:12]}-frame000040.png"
    assert crop_png.file_name == f"{SHA[:12]}-frame000040-track3.png"
    meta = read_png_metadata(frame_png.data)
    assert meta["frame"] == "40" and meta["time_s"] == "1.600" and meta["evidence_sha256"] == SHA
    assert meta["case_id"] == str(case_id) and meta["case_name"] == "Harbour"
    assert meta["analyst"] == "Ana Łukasiewicz"  # not Latin-1: kept as UTF-8 in an iTXt chunk
    assert meta["tool_version"] == __version__ and __version__ in meta["Software"]
    assert meta["image"].startswith("frame as decoded")
    crop_meta = read_png_metadata(crop_png.data)
    assert crop_meta["track"] == "3" and crop_meta["image"] == "face crop" and crop_meta["frame"] == "40"
    with Image.open(io.BytesIO(frame_png.data)) as img:
        assert np.array_equal(np.asarray(img.convert("RGB")), rgb)  # lossless: the pixels as decoded
    assert frame_png.sha256 == hashlib.sha256(frame_png.data).hexdigest()
    assert b"iTXt" in frame_png.data and b"tEXt" in frame_png.data


def test_each_export_is_one_audit_entry_under_the_analysts_name(case):
    store, case_id = case
    files = export_frame(store, "ana", case_id, SHA, 7, _frame(), [(1, _frame(2, (8, 8, 3)))])
    (entry,) = [e for e in store.audit_log() if e["action"] == EXPORT_ACTION]
    assert entry["actor"] == "ana" and entry["subject"] == f"evidence:{SHA}"
    assert entry["details"]["frame"] == 7 and entry["details"]["case_id"] == case_id
    assert [(f["name"], f["sha256"]) for f in entry["details"]["files"]] == [(p.file_name, p.sha256) for p in files]
    assert store.verify_history()["ok"] is True


@pytest.mark.parametrize("actor", [None, "", "   "])
def test_an_export_without_a_name_is_refused_and_nothing_is_audited(case, actor):
    store, case_id = case
    before = len(store.audit_log())
    with pytest.raises(ExportError, match="analyst's name"):
        export_frame(store, actor, case_id, SHA, 7, _frame())
    assert len(store.audit_log()) == before


@pytest.mark.parametrize("kwargs, words", [
    ({"frame": 100}, "not a frame of this file"),
    ({"frame": -1}, "not a frame of this file"),
    ({"sha256": "cd" * 32}, "no evidence"),
    ({"case_id": 99}, "no case"),
])
def test_an_export_of_something_not_in_the_case_is_refused(case, kwargs, words):
    store, case_id = case
    args = {"case_id": case_id, "sha256": SHA, "frame": 7, **kwargs}
    before = len(store.audit_log())
    with pytest.raises(ExportError, match=words):
        export_frame(store, "ana", args["case_id"], args["sha256"], args["frame"], _frame())
    assert len(store.audit_log()) == before


def test_evidence_of_another_case_is_refused(case):
    store, case_id = case
    other = store.create_case("Other", actor="ana")
    with pytest.raises(ExportError, match="not a file of case"):
        export_frame(store, "ana", other, SHA, 7, _frame())


def test_png_text_keywords_follow_the_png_rule():
    with pytest.raises(ExportError, match="1-79"):
        png_with_metadata(_frame(), {"x" * 80: "v"})
    with pytest.raises(ExportError, match="uint8 RGB"):
        png_with_metadata(np.zeros((4, 4), np.uint8), {})
