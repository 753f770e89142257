"""Analysis runs are numbered per file ("run 2 of 2 of this file"), the store's global id second."""
from __future__ import annotations

from workbench import review

PROBE = {"width": 64, "height": 48, "fps": 25.0, "frames": 10, "duration_s": 0.4, "codec": "h264"}


def test_runs_are_numbered_per_file_with_the_global_id_secondary(fresh_store):
    case_id = fresh_store.create_case("c")
    shas = ["ab" * 32, "cd" * 32]
    for sha in shas:
        fresh_store.add_evidence(sha, f"{sha[:2]}.mp4", 1, "/x", PROBE, "test", case_id)
    ids = {}
    # Interleaved, as runs of several files are: the global ids are 1, 2, 3.
    for sha, fps in ((shas[0], 2.0), (shas[1], 2.0), (shas[0], None)):
        ids.setdefault(sha, []).append(fresh_store.save_face_run(
            sha, f"k{fps}", {"sample_fps": fps}, [0, 5], [0, 5], [], {}))
    first = review.face_runs(fresh_store, shas[0])  # newest first
    assert [r["number"] for r in first] == [2, 1]
    assert first[0]["label"].startswith("run 2 of 2 of this file: every frame, 2 frames")
    assert first[0]["label"].endswith(f"(face run #{ids[shas[0]][1]})")
    assert first[1]["label"].startswith("run 1 of 2 of this file: 2 frames/s")
    (only,) = review.face_runs(fresh_store, shas[1])
    assert only["number"] == 1 and only["label"].startswith("run 1 of 1 of this file")
    assert only["label"].endswith(f"(face run #{ids[shas[1]][0]})") and ids[shas[1]][0] == 2
