"""Batch triage on a local Ray instance (2 CPUs): each video a Ray task, the driver alone stores, the same results as the one entry point."""
from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

import pytest

from helpers import child_pids
from tiny_detector import TinyDetector
from workbench import batch
from workbench.pipeline import Sampling
from workbench.service import analyse_evidence
from workbench.evidence import ingest
from workbench.store import Store

try:
    import ray
except ImportError:
    ray = None

pytestmark = pytest.mark.skipif(ray is None, reason="Ray is not installed: pip install -r requirements-cluster.txt "
                                                     "(make test installs it)")


@pytest.fixture
def local_ray():
    before = child_pids()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()
    deadline = time.monotonic() + 60  # Ray's own processes end after shutdown; bounded wait, not a timing check
    while child_pids() - before and time.monotonic() < deadline:
        time.sleep(0.5)
    assert child_pids() - before == set(), "Ray left processes behind"


def test_a_small_batch_on_local_ray(tmp_path, tiny_detectors, two_face_clip, no_face_clip, local_ray):
    folder = tmp_path / "archive"
    folder.mkdir()
    shutil.copy(two_face_clip[0], folder / "faces.mp4")
    shutil.copy(no_face_clip, folder / "noface.mp4")
    (folder / "broken.mp4").write_bytes(b"\x00" * 1000)
    paths, _ = batch.find_videos(folder)
    store = Store(tmp_path / "db.sqlite")
    try:
        case_id = store.create_case("ray")
        outcome = batch.run_batch(store, paths, case_id, ["tiny-test"], evidence_dir=tmp_path / "evidence",
                                  hooks=["tiny_detector:TinyDetector"], workers=2, ray_address="auto")
        rows = {Path(r["file"]).name: r for r in outcome.rows}
        assert [rows[n]["status"] for n in ("faces.mp4", "noface.mp4", "broken.mp4")] == ["analysed", "analysed",
                                                                                           "refused"]
        assert store.batch(outcome.batch_id)["plan"]["executor"] == "ray"
        # The driver stored what the Ray tasks computed, and it is what the one entry point computes in-process.
        sha = rows["faces.mp4"]["sha256"]
        (stored,) = store.analyses(sha)
        assert stored["score"] == rows["faces.mp4"]["score"]
    finally:
        store.close()
    other = Store(":memory:")
    try:
        ingest(other, folder / "faces.mp4", "faces.mp4", tmp_path / "evidence2", "test")
        here = analyse_evidence(other, sha, ["tiny-test"], Sampling())
        assert here.detectors["tiny-test"].score == rows["faces.mp4"]["score"]
        assert len(here.tracks) == rows["faces.mp4"]["faces"]
    finally:
        other.close()


def test_a_task_that_fails_is_listed_failed_not_retried_forever(tmp_path, tiny_detectors, no_face_clip, local_ray):
    store = Store(tmp_path / "db.sqlite")
    try:
        case_id = store.create_case("ray")
        # A detector no worker knows (no hook registers it there): every task fails with the reason.
        outcome = batch.run_batch(store, [Path(no_face_clip)], case_id, ["tiny-even"],
                                  evidence_dir=tmp_path / "evidence", workers=2, ray_address="auto")
        (row,) = outcome.rows
        assert row["status"] == "failed" and "tiny-even" in row["reason"]
    finally:
        store.close()


# Where the detector below leaves its mark in the first worker it kills (one pytest run at a time).
DIES_ONCE_MARK = Path(tempfile.gettempdir()) / "workbench-test-ray-dies-once"


class DiesOnceDetector(TinyDetector):
    """Kills the Ray worker that first runs it (as an out-of-memory kill would); scores normally after."""

    name = "tiny-dies-once"

    def predict(self, crops):
        if not DIES_ONCE_MARK.exists():
            DIES_ONCE_MARK.touch()
            os._exit(9)
        return super().predict(crops)


def test_a_video_whose_ray_worker_dies_is_retried_and_analysed(tmp_path, tiny_detectors, two_face_clip, local_ray):
    DIES_ONCE_MARK.unlink(missing_ok=True)
    store = Store(tmp_path / "db.sqlite")
    try:
        case_id = store.create_case("ray")
        outcome = batch.run_batch(store, [Path(two_face_clip[0])], case_id, ["tiny-dies-once"],
                                  evidence_dir=tmp_path / "evidence", hooks=["test_batch_ray:DiesOnceDetector"],
                                  workers=2, ray_address="auto", max_retries=2)
        (row,) = outcome.rows
        assert DIES_ONCE_MARK.exists(), "the first attempt did not run (or did not die)"
        assert row["status"] == "analysed" and row["score"] is not None, row
        assert [a["detector"] for a in store.analyses(row["sha256"])] == ["tiny-dies-once"]
    finally:
        store.close()
        DIES_ONCE_MARK.unlink(missing_ok=True)
