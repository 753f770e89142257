"""The development-set builder: catalogue sanity, labels taken from the metadata, content pinned by blob id, output kept outside the repository (no real clips needed)."""
from __future__ import annotations

import csv
import json
import subprocess
from pathlib import Path

import pytest

from conftest import numbered_frames
from tools.datasets import devset
from tools.datasets.devset import (CLIPS, SOURCES, Clip, DevsetError, DfdcMetadata, FfppFolder, GroundTruthJson, Source,
                                   StatedInReadme, blob_id, build, dfdc_label, ffpp_compression, ffpp_label,
                                   ground_truth_label, notebook_label)
from workbench.video import write_video


def test_catalogue_is_well_formed():
    keys = {s.key for s in SOURCES}
    assert len(keys) == len(SOURCES)
    for source in SOURCES:
        assert len(source.commit) == 40 and source.repo.count("/") == 1 and source.terms
    outputs = [f"{c.source}/{c.path}" for c in CLIPS]
    assert len(outputs) == len(set(outputs))
    for clip in CLIPS:
        assert clip.source in keys
        assert len(clip.blob) == 40 and int(clip.blob, 16) >= 0
        assert clip.method in devset.METHODS and clip.dataset in devset.DATASETS
        if isinstance(clip.rule, FfppFolder):
            assert ffpp_label(clip.path)[1] == clip.method
            assert clip.dataset == f"FF++{ffpp_compression(clip.path)}"
        if isinstance(clip.rule, DfdcMetadata):
            assert clip.rule.source in keys and len(clip.rule.commit) == 40


def test_ffpp_folder_decides_label():
    assert ffpp_label("x/original_sequences/youtube/c23/videos/004.mp4") == ("real", "original")
    assert ffpp_label("manipulated_sequences/FaceSwap/c23/videos/634_660.mp4") == ("fake", "FaceSwap")
    with pytest.raises(DevsetError):
        ffpp_label("videos/003_000.mp4")
    # The shortened top folders some repositories use, and the compression folder.
    assert ffpp_label("media/original/actors/c40/videos/01__kitchen_pan.mp4") == ("real", "original")
    assert ffpp_label("media/manipulate/NeuralTextures/c40/videos/183_253.mp4") == ("fake", "NeuralTextures")
    assert ffpp_compression("media/manipulate/NeuralTextures/c40/videos/183_253.mp4") == "c40"
    with pytest.raises(DevsetError):
        ffpp_label("media/originals/youtube/c40/videos/183.mp4")


def test_ground_truth_json_decides_label():
    truth = json.dumps({"0.mp4": 0, "1.mp4": 1, "2.mp4": 2, "3.mp4": True}).encode()
    assert ground_truth_label(truth, "0.mp4") == "real" and ground_truth_label(truth, "1.mp4") == "fake"
    for bad in ("2.mp4", "3.mp4", "4.mp4"):
        with pytest.raises(DevsetError):
            ground_truth_label(truth, bad)


def test_dfdc_metadata_and_notebook_decide_label():
    meta = json.dumps({"a.mp4": {"label": "FAKE", "original": "b.mp4"}, "b.mp4": {"label": "REAL"}}).encode()
    assert dfdc_label(meta, "a.mp4") == "fake" and dfdc_label(meta, "b.mp4") == "real"
    with pytest.raises(DevsetError):
        dfdc_label(meta, "c.mp4")
    cell = {"cell_type": "code", "source": ["vid_real_faces = fx.process_video('samples/r.mp4')\n",
                                            "vid_fake_faces = fx.process_video('samples/f.mp4')\n"]}
    notebook = json.dumps({"cells": [cell]}).encode()
    assert notebook_label(notebook, "samples/r.mp4") == "real"
    assert notebook_label(notebook, "samples/f.mp4") == "fake"
    with pytest.raises(DevsetError):
        notebook_label(notebook, "samples/other.mp4")


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture
def public_repo(tmp_path):
    """A local git repository laid out like the public ones: an FF++ pair, a DFDC clip and its metadata."""
    repo = tmp_path / "clones" / "someone" / "samples"
    for rel in ("ffpp/original_sequences/youtube/c23/videos/001.mp4",
                "ffpp/manipulated_sequences/Face2Face/c23/videos/001_002.mp4", "dfdc/part_0/abc.mp4"):
        (repo / rel).parent.mkdir(parents=True, exist_ok=True)
        write_video(repo / rel, numbered_frames(6, 64, 48, seed=len(rel)), fps=10)
    (repo / "dfdc/part_0/metadata.json").write_text(json.dumps({"abc.mp4": {"label": "FAKE"}}))
    (repo / "dfdc/part_0/notavideo.mp4").write_bytes(b"not a video at all")
    _git(repo.parent.parent, "init", "-q", str(repo))
    _git(repo, "add", ".")
    _git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "clips")
    return repo


def _catalogue(repo: Path) -> tuple[tuple[Source, ...], tuple[Clip, ...]]:
    commit = _git(repo, "rev-parse", "HEAD")
    source = Source("samples", "someone/samples", commit, "test")

    def clip(rel, method, dataset, rule):
        return Clip("samples", rel, blob_id((repo / rel).read_bytes()), method, dataset, rule)

    return (source,), (
        clip("ffpp/original_sequences/youtube/c23/videos/001.mp4", "original", "FF++c23", FfppFolder()),
        clip("ffpp/manipulated_sequences/Face2Face/c23/videos/001_002.mp4", "Face2Face", "FF++c23", FfppFolder()),
        clip("dfdc/part_0/abc.mp4", "DFDC", "DFDC",
             DfdcMetadata("samples", commit, "dfdc/part_0/metadata.json", "abc.mp4")),
        clip("dfdc/part_0/notavideo.mp4", "DFDC", "DFDC", StatedInReadme("fake", "test")),
    )


def _labels(out: Path) -> dict[str, str]:
    with open(out / "labels.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert rows and list(rows[0]) == list(devset.CSV_COLUMNS)
    return {row["path"]: row["label"] for row in rows}


def test_build_copies_bytes_and_takes_labels_from_metadata(public_repo, tmp_path):
    sources, clips = _catalogue(public_repo)
    out = tmp_path / "devset"
    result = build(tmp_path / "clones", out, sources=sources, clips=clips, forbidden_root=tmp_path / "repo")
    assert _labels(out) == {
        "samples/ffpp/original_sequences/youtube/c23/videos/001.mp4": "real",
        "samples/ffpp/manipulated_sequences/Face2Face/c23/videos/001_002.mp4": "fake",
        "samples/dfdc/part_0/abc.mp4": "fake",
    }
    for row in result.rows:
        copied = out / row["path"]
        assert copied.read_bytes() == (public_repo / row["repo_path"]).read_bytes()
        assert row["frames"] == 6 and row["width"] == 64 and len(row["sha256"]) == 64
    assert [item["repo_path"] for item in result.left_out] == ["dfdc/part_0/notavideo.mp4"]
    assert "not a decodable video" in result.left_out[0]["reason"]
    assert not (out / "samples/dfdc/part_0/notavideo.mp4").exists()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"]["fake"] == 2 and manifest["counts"]["real"] == 1


def test_metadata_at_the_pinned_commit_decides(public_repo, tmp_path):
    sources, clips = _catalogue(public_repo)
    # A later commit relabels the clip; the catalogue pins the earlier metadata, so the label must not move.
    (public_repo / "dfdc/part_0/metadata.json").write_text(json.dumps({"abc.mp4": {"label": "REAL"}}))
    _git(public_repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qam", "relabel")
    out = tmp_path / "devset"
    build(tmp_path / "clones", out, sources=sources, clips=clips, forbidden_root=tmp_path / "repo")
    assert _labels(out)["samples/dfdc/part_0/abc.mp4"] == "fake"
    later = _git(public_repo, "rev-parse", "HEAD")
    relabelled = tuple(
        Clip(c.source, c.path, c.blob, c.method, c.dataset, DfdcMetadata("samples", later, c.rule.path, c.rule.key))
        if isinstance(c.rule, DfdcMetadata) else c for c in clips)
    build(tmp_path / "clones", out, sources=sources, clips=relabelled, forbidden_root=tmp_path / "repo")
    assert _labels(out)["samples/dfdc/part_0/abc.mp4"] == "real"


def test_changed_content_or_missing_clone_is_left_out(public_repo, tmp_path):
    sources, clips = _catalogue(public_repo)
    wrong = (Clip(clips[0].source, clips[0].path, "0" * 40, clips[0].method, clips[0].dataset, clips[0].rule),)
    result = build(tmp_path / "clones", tmp_path / "a", sources=sources, clips=wrong, forbidden_root=tmp_path / "repo")
    assert not result.rows and "differs from the catalogued blob" in result.left_out[0]["reason"]
    result = build(tmp_path / "nowhere", tmp_path / "b", sources=sources, clips=clips, forbidden_root=tmp_path / "repo")
    assert not result.rows and all("no clone" in item["reason"] for item in result.left_out)


def test_refuses_to_write_inside_the_repository(public_repo, tmp_path):
    sources, clips = _catalogue(public_repo)
    with pytest.raises(DevsetError, match="outside the repository"):
        build(tmp_path / "clones", devset.REPO_ROOT / "devset", sources=sources, clips=clips)
    assert not (devset.REPO_ROOT / "devset").exists()


def test_ground_truth_file_and_compression_folder_decide_at_build(public_repo, tmp_path):
    (public_repo / "test-data").mkdir()
    write_video(public_repo / "test-data/000001.mp4", numbered_frames(6, 64, 48, seed=9), fps=10)
    (public_repo / "test-data/truth.json").write_text(json.dumps({"000001.mp4": 1}))
    _git(public_repo, "add", ".")
    _git(public_repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "more")
    commit = _git(public_repo, "rev-parse", "HEAD")
    source = Source("samples", "someone/samples", commit, "test")
    ffpp = "ffpp/original_sequences/youtube/c23/videos/001.mp4"
    clips = (
        Clip("samples", "test-data/000001.mp4", blob_id((public_repo / "test-data/000001.mp4").read_bytes()),
             "DeeperForensics", "DeeperForensics", GroundTruthJson("test-data/truth.json", "000001.mp4", "1 = fake")),
        # The folder says c23: a catalogue row claiming c40 must not be built.
        Clip("samples", ffpp, blob_id((public_repo / ffpp).read_bytes()), "original", "FF++c40", FfppFolder()),
    )
    out = tmp_path / "devset"
    result = build(tmp_path / "clones", out, sources=(source,), clips=clips, forbidden_root=tmp_path / "repo")
    assert _labels(out) == {"samples/test-data/000001.mp4": "fake"}
    assert "test-data/truth.json [000001.mp4] = 1" in result.rows[0]["label_evidence"]
    assert [item["repo_path"] for item in result.left_out] == [ffpp]
    assert "the folder says c23, the catalogue says FF++c40" in result.left_out[0]["reason"]


def test_an_owner_qualified_clone_wins_over_a_namesake(tmp_path):
    clones = tmp_path / "clones"
    for where in ("Deepfake-Detection", "cyshih704/Deepfake-Detection"):
        (clones / where).mkdir(parents=True)
        _git(clones / where, "init", "-q")
    assert devset.find_clone(clones, "cyshih704/Deepfake-Detection") == clones / "cyshih704/Deepfake-Detection"
    assert devset.find_clone(clones, "HongguLiu/Deepfake-Detection") == clones / "Deepfake-Detection"
    assert devset.find_clone(clones, "someone/absent") is None
