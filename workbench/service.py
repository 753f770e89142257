"""Analyse this evidence: the one entry point every front end calls (custody check, analysis, reuse, storage)."""
from __future__ import annotations

from typing import Iterable, Mapping

from detectors.base import Detector
from workbench.evidence import verify
from workbench.faces import FaceDetector
from workbench.pipeline import (
    AnalysisResult, DetectorOutcome, Plan, Progress, Reuse, Sampling, analyze, software_versions,
)
from workbench.store import Store
from workbench.video import VideoInfo


def stored_reuse(store: Store, sha256: str):
    """A reuse lookup for `analyze`: finished analyses and the face run the store holds for a plan."""

    def lookup(plan: Plan, runnable: Mapping[str, Detector]) -> Reuse:
        known = Reuse()
        for name, det in runnable.items():
            row = store.find_analysis(sha256, name, det.version, det.weights_sha256, plan.params_keys[name])
            if row is None:
                continue
            track_scores, frame_rows = store.analysis_scores(row["id"])
            known.outcomes[name] = DetectorOutcome(
                name, row["detector_version"], row["status"], row["score"], row["reason"], row["frames_used"],
                row["weights_sha256"], row["threshold"], row["rule"],
                {tid: {k: t[k] for k in ("score", "n_frames", "status", "reason")} for tid, t in track_scores.items()},
                [(r["frame"], r["track_id"], r["score"]) for r in frame_rows], row["timings"], row["id"], reused=True,
                upstream=row.get("upstream"),
            )
        run = store.find_face_run(sha256, plan.face_key)
        if run is not None:
            known.face_run_id = run["id"]
            known.face_rows = store.face_run_tracks(run["id"])
        return known

    return lookup


def persist(store: Store, sha256: str, result: AnalysisResult, actor: str) -> AnalysisResult:
    """Store a new face run and every newly computed outcome of `result` (reused ones are already stored)."""
    plan = result.plan
    if result.error is not None:
        store.audit(actor, "analysis.failed", f"evidence:{sha256}", {"reason": result.error})
        return result
    if result.face_tracks is not None:
        result.face_run_id = store.save_face_run(
            sha256, plan.face_key, plan.face_params, plan.frames, plan.detection_frames, result.face_tracks,
            {"faces_s": result.timings.get("faces_s")})
    software = software_versions()
    for name, outcome in result.detectors.items():
        if outcome.reused or name not in plan.params_keys:
            continue  # reused, or never ran (unavailable / weights refused): nothing to store
        outcome.analysis_id = store.save_analysis(
            {
                "sha256": sha256, "face_run_id": result.face_run_id, "detector": name,
                "detector_version": outcome.version, "weights_sha256": outcome.weights_sha256,
                "params_key": plan.params_keys[name],
                "params": {"sampling": plan.sampling.to_dict(), "detector": plan.descriptions[name],
                           "frames_requested": len(plan.detector_frames[name])},
                "software": software, "status": outcome.status, "reason": outcome.reason, "score": outcome.score,
                "threshold": outcome.threshold, "rule": outcome.rule, "frames_used": outcome.frames_used,
                "timings": outcome.timings, "upstream": outcome.upstream,
            },
            outcome.track_scores, outcome.frame_scores, actor,
        )
    # The ensemble as computed for this run, stored with its rule, threshold and member analyses:
    # the app, the report and the JSON read this, never a recomputation of their own.
    members = {name: result.detectors[name].analysis_id for name in result.ensemble["members"]}
    result.ensemble["ensemble_id"] = store.save_ensemble(sha256, result.face_run_id, result.ensemble, members, actor)
    return result


def analyse_evidence(
    store: Store,
    sha256: str,
    detectors: Iterable[str] | Mapping[str, Detector],
    sampling: Sampling = Sampling(),
    actor: str = "local",
    progress: Progress | None = None,
    device: str = "cpu",
    ensemble_rule: str = "mean",
    face_detector: FaceDetector | None = None,
) -> AnalysisResult:
    """Analyse stored evidence: re-hash it (custody), analyse, reuse what is stored, store what is new.

    Args:
        detectors: registry names, or detector instances by name.
        actor: who asked; recorded with every stored result and audit entry.

    Returns:
        The AnalysisResult, with `sha256` and the stored ids set.

    Raises:
        EvidenceError: the stored file no longer matches its hash (logged; nothing analysed).
    """
    path = verify(store, sha256, actor)
    row = store.evidence(sha256)
    info = VideoInfo(**dict(row["probe"], path=str(path)))
    result = analyze(path, detectors, sampling, device=device, progress=progress, ensemble_rule=ensemble_rule,
                     info=info, face_detector=face_detector, reuse=stored_reuse(store, sha256))
    result.sha256 = sha256
    return persist(store, sha256, result, actor)

