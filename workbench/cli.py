"""Command line: `python -m workbench analyze | batch | detectors | evaluate | demo | weights | train | backup | verify | worker | jobs | serve | token | case | search | report` (the core without a browser)."""
from __future__ import annotations

import argparse
import getpass
import json
import logging
import os
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

from tqdm import tqdm

from detectors import weights_manager
from detectors.base import CARD_FIELDS, SCOPE_CAVEAT
from detectors.registry import UnknownDetector, default_detectors, describe_all, get_detector
from workbench import bias_report, cases, config, demo, jobs
from workbench.aggregate import (
    ENSEMBLE_RULES, TRACK_METHODS, VIDEO_METHODS, Rule, band_text, measured_fpr, score_rules, video_lines,
)
from workbench.evidence import EvidenceError, ingest
from workbench.pipeline import Sampling
from workbench.service import analyse_evidence
from workbench.store import MIGRATIONS, Store, StoreError, history_summary, snapshot_backup

EXIT_REFUSED = 2
EXIT_BROKEN = 1  # `verify` (and `backup`): the history does not verify


def _progress_bar(desc: str):
    bar = None

    def update(done: int, total: int, stage: str) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(total=total, desc=desc, unit="frame", file=sys.stderr, leave=False)
        bar.update(done - bar.n)
        if done >= total:
            bar.close()

    return update


def _open_store(args):
    return Store(args.db or config.db_path())


def cmd_analyze(args) -> int:
    names = args.detector or default_detectors()
    try:
        for name in names:
            get_detector(name)
    except UnknownDetector as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    sampling = Sampling(
        sample_fps=None if args.every_frame else args.sample_fps, detect_every=args.detect_every,
        rule=Rule(track=args.track_rule, video=args.video_rule, min_frames=args.min_frames),
    )
    store = _open_store(args)
    actor = args.actor
    case_id = None
    if args.case:
        matches = [c["id"] for c in store.cases() if c["name"] == args.case]
        case_id = matches[0] if matches else store.create_case(args.case, actor=actor)
    video = Path(args.video)
    try:
        if not video.is_file():
            raise EvidenceError(f"no such file: {str(video)!r}")
        evidence = ingest(store, video, video.name, args.evidence_dir or config.evidence_dir(), actor, case_id, config.limits())
        if args.background:
            return _submit_background(store, evidence, names, sampling, args, case_id)
        result = analyse_evidence(
            store, evidence["sha256"], names, sampling, actor=actor, device=args.device or config.device(),
            progress=None if args.quiet else _progress_bar(video.name[:30]), ensemble_rule=args.ensemble,
        )
    except EvidenceError as exc:
        print(f"refused: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    payload = result.to_json()
    payload["video"]["path"] = str(video)
    payload["video"]["original_name"] = evidence["original_name"]
    if args.json == "-":
        json.dump(payload, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        if args.json:
            Path(args.json).write_text(json.dumps(payload, indent=2))
        names = [*payload["detectors"], "ensemble"]
        print(render_text(payload, {n: store.latest_evaluation(n) for n in names}))
    return 0


def cmd_batch(args) -> int:
    """Ingest and analyse every video of a folder or CSV into a case; write the results table sorted by score."""
    from workbench import batch  # lazy: only this command needs the batch driver (and, with --ray, Ray)

    if args.workers < 1:
        print("error: --workers must be at least 1", file=sys.stderr)
        return EXIT_REFUSED
    try:
        batch.load_hooks(args.register or [])
        names = args.detector or default_detectors()
        for name in names:
            get_detector(name)
        paths, other = batch.find_videos(args.source)
    except (batch.BatchError, UnknownDetector, ImportError, AttributeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    if not names:
        print("error: no detector: name one with --detector", file=sys.stderr)
        return EXIT_REFUSED
    sampling = Sampling(sample_fps=args.sample_fps)
    store = _open_store(args)
    try:
        matches = [c["id"] for c in store.cases() if c["name"] == args.case]
        case_id = matches[0] if matches else store.create_case(args.case, actor=args.actor)
        bar = None

        def started(batch_id: int, files: int) -> None:
            nonlocal bar
            print(f"batch #{batch_id}: {files} video(s) from {args.source} into case {args.case!r}"
                  + (f" ({other} other file(s) left out)" if other else ""), file=sys.stderr)
            if not args.quiet:
                bar = tqdm(total=files, desc=f"batch #{batch_id}", unit="video", file=sys.stderr)

        def progress(row: dict) -> None:
            if bar is not None:
                bar.set_postfix_str(f"{row['status']}: {Path(row['file']).name[:30]}")
                bar.update(1)

        try:
            outcome = batch.run_batch(
                store, paths, case_id, names, sampling, actor=args.actor,
                evidence_dir=args.evidence_dir or config.evidence_dir(), limits=config.limits(), workers=args.workers,
                ray_address=args.ray, hooks=args.register or [], ensemble_rule=args.ensemble, device=args.device,
                source=str(args.source), max_retries=args.max_retries, gpus_per_task=args.gpus_per_task,
                progress=progress, started=started)
        except batch.BatchError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_REFUSED
        finally:
            if bar is not None:
                bar.close()
        out = Path(args.out) if args.out else config.home() / "batches" / f"batch-{outcome.batch_id}"
        case = store.case(case_id)
        written = batch.write_table(outcome, out, names, case, store.batch(outcome.batch_id)["plan"])
    finally:
        store.close()
    c = outcome.counts
    print(f"batch #{outcome.batch_id}: {c['files']} file(s): {c['analysed']} analysed, "
          f"skipped {c['already analysed']} already analysed, {c['duplicate']} duplicate(s), "
          f"{c['refused']} refused, {c['failed']} failed")
    for row in outcome.bad:
        print(f"  {row['status']}: {row['file']}: {row['reason']}")
    for path in written:
        print(path)
    return 0


def _submit_background(store: Store, evidence: dict, names: list[str], sampling: Sampling, args, case_id) -> int:
    """`analyze --background`: queue a job for the workers (`python -m workbench worker`) and print its id."""
    try:
        job_id = jobs.submit(store, evidence["sha256"], names, sampling, actor=args.actor, case_id=case_id,
                             ensemble_rule=args.ensemble)
    except jobs.JobError as exc:
        print(f"refused: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    if args.json == "-":
        json.dump({"job_id": job_id, "sha256": evidence["sha256"], "state": "queued"}, sys.stdout)
        sys.stdout.write("\n")
    else:
        print(f"job {job_id} queued for {evidence['original_name']} (sha256 {evidence['sha256']}); "
              f"`python -m workbench jobs` shows its progress")
    return 0


def cmd_worker(args) -> int:
    """Run the worker pool until Ctrl-C (running jobs are re-queued) or SIGTERM (they finish first)."""
    from workbench import worker  # lazy: the pool (huey's consumer) is only needed by this command

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    workers = args.workers if args.workers is not None else config.default_workers()
    if workers < 1:
        print("error: --workers must be at least 1", file=sys.stderr)
        return EXIT_REFUSED
    worker.serve(args.db or config.db_path(), workers=workers)
    return 0


def cmd_jobs(args) -> int:
    """List recent jobs (state, progress, who asked), or cancel one."""
    store = _open_store(args)
    try:
        if args.cancel is not None:
            try:
                state = jobs.cancel(store, args.cancel, args.actor)
            except StoreError as exc:
                print(f"error: {exc}", file=sys.stderr)
                return EXIT_REFUSED
            print(f"job {args.cancel}: {state}")
            return 0
        jobs.reap(store)
        listed = store.jobs(limit=args.limit)
        for job in listed:
            print(jobs.describe(job))
        if not listed:
            print("no jobs")
    finally:
        store.close()
    return 0


def cmd_serve(args) -> int:
    """`serve --api`: the HTTP API on 127.0.0.1 (another address only with --allow-remote, behind TLS)."""
    from workbench import api  # lazy: fastapi and uvicorn are only needed to serve the API

    if not args.api:
        print("error: give --api (the app itself starts with `make run`)", file=sys.stderr)
        return EXIT_REFUSED
    if not api.is_loopback(args.host):
        if not args.allow_remote:
            print(f"refused: {args.host} is not a loopback address; the API would be reachable from other machines. "
                  "Add --allow-remote, and put a TLS reverse proxy in front of it", file=sys.stderr)
            return EXIT_REFUSED
        print(f"warning: the API listens on {args.host}: bearer tokens travel in clear text unless a TLS reverse "
              "proxy is in front of it; /docs and /openapi.json are off", file=sys.stderr)
    settings = api.ApiSettings()
    if args.db:
        settings.db_path = Path(args.db)
    if args.max_upload_mb is not None:
        settings.max_upload_bytes = int(args.max_upload_mb * 1024**2)
    if args.rate_limit is not None:
        settings.rate_per_minute = args.rate_limit
    if settings.max_upload_bytes < 1 or settings.rate_per_minute < 1:
        print("error: --max-upload-mb and --rate-limit must be positive", file=sys.stderr)
        return EXIT_REFUSED
    store = Store(settings.db_path)
    try:
        if not store.active_api_tokens():
            print("note: no API token yet; create one with `python -m workbench token create NAME`", file=sys.stderr)
    finally:
        store.close()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    api.serve(args.host, args.port, settings)
    return 0


def cmd_token(args) -> int:
    """API tokens: create (printed once, stored as its sha256), list, revoke; creation and revocation are audited."""
    from workbench import api  # lazy: token hashing lives with the API that checks tokens

    store = _open_store(args)
    try:
        if args.token_command == "create":
            try:
                token = api.create_token(store, args.name, args.actor)
            except StoreError as exc:
                print(f"refused: {exc}", file=sys.stderr)
                return EXIT_REFUSED
            print(token)
            print(f"API token for {args.name!r}: shown once, only its sha256 is stored. Send it as "
                  "`Authorization: Bearer TOKEN`.", file=sys.stderr)
        elif args.token_command == "list":
            rows = store.api_tokens()
            for r in rows:
                state = f"revoked {r['revoked_at']} by {r['revoked_by']}" if r["revoked_at"] else "active"
                print(f"{r['name']:<24} created {r['created_at']} by {r['created_by']}  {state}")
            if not rows:
                print("no API tokens")
        else:
            try:
                store.revoke_api_token(args.name, args.actor)
            except StoreError as exc:
                print(f"refused: {exc}", file=sys.stderr)
                return EXIT_REFUSED
            print(f"revoked the API token of {args.name!r}")
    finally:
        store.close()
    return 0


def render_text(payload: dict, evaluations: dict[str, dict | None] | None = None) -> str:
    """A plain-text summary of an analysis: each score's band at its threshold (with the FPR measured
    there, from `evaluations` {detector or "ensemble": latest stored evaluation}), then the number;
    the caveat always included."""
    evaluations = evaluations or {}

    def judged(name: str, score, threshold) -> str:
        said = band_text(score, threshold, measured_fpr(evaluations.get(name), threshold))
        return f"{'':<24}{said}" if said else f"{'':<24}threshold {'not recorded' if threshold is None else f'{threshold:.2f}'}"

    v = payload["video"]
    lines = [
        f"video   {v.get('original_name') or v['path']}  sha256 {v['sha256']}",
        f"        {v['width']}x{v['height']}  {v['fps']:.2f} fps  {v['frames']} frames  {v['duration_s']:.2f} s  {v['codec']}",
        f"faces   {len(payload['tracks'])} track(s) over {len(payload['frames_analysed'])} analysed frames",
    ]
    for name, d in payload["detectors"].items():
        shown = f"{d['score']:.3f}" if d["status"] == "ok" else d["status"].upper()
        extra = f"  ({d['reason']})" if d["reason"] else f"  frames used: {len(d['frames_used'])}"
        lines.append(f"{name:<24}{shown:>14}{extra}")
        said = score_rules(d["status"], d.get("rule"), d.get("upstream"))
        if d["status"] == "ok":
            lines.append(judged(name, d["score"], d.get("threshold")))
            lines.append(f"{'':<24}{said['headline']}")
        if said["explanation"]:
            lines.append(f"{'':<24}explanation: {said['explanation']}")
        lines += [f"{'':<24}{line}" for line in video_lines(d.get("upstream"))]
    ens = payload["ensemble"]
    shown = f"{ens['score']:.3f}" if ens["score"] is not None else ens["status"].upper()
    left = f"; left out: {', '.join(f'{n} ({s})' for n, s in ens['left_out'].items())}" if ens["left_out"] else ""
    lines.append(f"{'ensemble (' + ens['rule'] + ')':<24}{shown:>14}{left}")
    if ens["score"] is not None:
        lines.append(judged("ensemble", ens["score"], ens.get("threshold")))
    lines.append("")
    lines.append(f"Caveat: {SCOPE_CAVEAT}")
    return "\n".join(lines)


def cmd_detectors(args) -> int:
    rows = describe_all()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print("no detectors registered")
    for r in rows:
        mark = " (default)" if r["default"] else ""
        shape = "video-level (its authors' frames, faces and clips)" if r["input"] is None else f"input {r['input']}px"
        print(f"{r['name']}{mark}  v{r['version']}  {shape}  weights: {r['weights']}")
        for label, key in CARD_FIELDS:
            print(f"    {label}: {r['card'][key]}")
    print(f"\nCaveat: {SCOPE_CAVEAT}")
    return 0


def cmd_evaluate(args) -> int:
    """`evaluate` and its alias `bias`: one code path, one output."""
    return bias_report.run_cli(args)


def cmd_demo(args) -> int:
    out = Path(args.out)
    if args.if_missing and out.is_file() and demo.truth_path(out).is_file():
        print(out)
        return demo_setup(out) if args.analyse else 0
    out.parent.mkdir(parents=True, exist_ok=True)
    truth = demo.make_demo(out, seconds=args.seconds)
    print(out)
    if truth.swap_frames:
        first, last = truth.swap_frames
        print(f"swapped frames {first}..{last} ({truth.swap_target} <- {truth.swap_donor}); "
              f"truth in {demo.truth_path(out)}", file=sys.stderr)
    else:
        print("the clip is too short to reach the swapped segment", file=sys.stderr)
    return demo_setup(out) if args.analyse else 0


def demo_setup(clip: Path) -> int:
    """`demo --analyse`: the demo case in the configured store (made on a fresh install, as the app
    would), its ground truth recorded by sha256, and its first analysis (once; never again)."""
    store = Store(config.db_path())
    try:
        case_id = cases.ensure_demo_case(store, config.evidence_dir(), clip)
        if case_id is None:
            print("demo: this store has cases of its own and no demo case: nothing analysed", file=sys.stderr)
            return 0
        for evidence in store.case_evidence(case_id):
            cases.record_demo_truth(store, evidence["sha256"], clip)  # stores made before the truth was recorded
        def announce(sha: str) -> None:
            print(f"demo {sha[:12]}: analysing it with the default detector (first run only)...", file=sys.stderr)

        for item in cases.analyse_demo(store, case_id, announce=announce):
            took = f" in {item['seconds']:.1f} s" if item["done"] in ("analysed", "failed") else ""
            detail = f": {item['detail']}" if item["detail"] else ""
            print(f"demo {item['sha256'][:12]}: {item['done']}{took}{detail}", file=sys.stderr)
    finally:
        store.close()
    return 0


def cmd_weights(args) -> int:
    return weights_manager.cli(args)


REPO_ROOT = Path(__file__).resolve().parent.parent
TRAINING_MODULE = "tools.training.custom"


def cmd_train(args) -> int:
    """Train a detector on the team's own real footage: checked here, trained by tools/training in a child process.

    The runtime never imports the training tools (they sit above it and pull in the training
    data code); a child `python -m tools.training.custom` runs them with this interpreter.
    """
    from detectors.custom import CustomDetectorError, check_name  # lazy: only this command needs the name rules

    real = Path(args.real)
    try:
        check_name(args.name, replace=args.replace)
    except CustomDetectorError as exc:
        print(f"refused: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    if not real.is_dir():
        print(f"refused: {str(real)!r} is not a folder", file=sys.stderr)
        return EXIT_REFUSED
    if args.epochs < 1:
        print("refused: --epochs must be at least 1", file=sys.stderr)
        return EXIT_REFUSED
    if not (REPO_ROOT / "tools" / "training" / "custom.py").is_file():
        print("refused: the training tools (tools/training/) are not in this installation", file=sys.stderr)
        return EXIT_REFUSED
    cmd = [sys.executable, "-m", TRAINING_MODULE, "--real", str(real.resolve()), "--name", args.name,
           "--epochs", str(args.epochs), "--arch", args.arch, "--frames-per-video", str(args.frames_per_video)]
    cmd += ["--no-pretrained"] if args.no_pretrained else []
    cmd += ["--replace"] if args.replace else []
    cmd += ["--device", args.device] if args.device else []
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])))
    return subprocess.run(cmd, cwd=REPO_ROOT, env=env, check=False).returncode


def cmd_verify(args) -> int:
    """Verify the audit hash chain and the facts it vouches for; exit 0 verified, 1 broken, 2 no database.

    The head hash printed is the anchor to keep somewhere else: someone who can write the database
    file could rebuild the whole chain, and only `--expect-head` with an earlier head shows that.
    """
    source = Path(args.db or config.db_path())
    if not source.is_file():
        print(f"verify failed: no database at {str(source)!r}", file=sys.stderr)
        return EXIT_REFUSED
    try:
        store = Store(source, migrate=False)  # verify the file as it is: no migration writes to it
        try:
            result = store.verify_history(expect_head=args.expect_head)
        finally:
            store.close()
    except sqlite3.Error as exc:
        print(f"verify failed: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    print(history_summary(result))
    return 0 if result["ok"] else EXIT_BROKEN


def cmd_backup(args) -> int:
    """Copy the database with SQLite's backup API, then check the copy: it opens as a Store with
    every migration applied, `PRAGMA integrity_check` is ok, every table has the source's row
    count, and its audit history verifies (the head is printed). A copy whose history is broken is
    kept (it is a faithful copy of the evidence of tampering) but the command exits 1."""
    def refuse(message: str) -> int:
        print(f"backup failed: {message}", file=sys.stderr)
        return EXIT_REFUSED

    source = Path(args.db or config.db_path())
    dest = Path(args.path)
    if not source.is_file():
        return refuse(f"no database at {str(source)!r}")
    if dest.resolve() == source.resolve() or (dest.exists() and source.exists() and os.path.samefile(dest, source)):
        return refuse("the destination is the source database")
    if dest.is_dir():
        return refuse(f"{str(dest)!r} is a folder; give a file path")
    if dest.exists() and not args.force:
        return refuse(f"{str(dest)!r} exists; use --force to replace it")
    dest.parent.mkdir(parents=True, exist_ok=True)
    # Write next to the destination, check, then rename: a failed backup never leaves a bad file at PATH.
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".partial", dir=dest.parent)
    os.close(fd)
    tmp = Path(tmp_name)

    def cleanup() -> None:
        for p in (tmp, Path(f"{tmp}-wal"), Path(f"{tmp}-shm"), Path(f"{tmp}-journal")):
            p.unlink(missing_ok=True)

    try:
        store = Store(source)
        try:
            counts, integrity = snapshot_backup(store, tmp)
        finally:
            store.close()
        if integrity != "ok":
            return refuse(f"integrity check of the copy: {integrity}")
        copy = Store(tmp)
        try:
            applied = copy.applied_migrations()
            expected = [name for name, _ in MIGRATIONS]
            if applied != expected:
                return refuse(f"the copy's migrations {applied} differ from {expected}")
            integrity = copy.integrity_check()
            copy_counts = copy.table_counts()
            history = copy.verify_history()
        finally:
            copy.close()
        if integrity != "ok":
            return refuse(f"integrity check of the reopened copy: {integrity}")
        if copy_counts != counts:
            diff = {t: (counts.get(t), copy_counts.get(t)) for t in set(counts) | set(copy_counts)
                    if counts.get(t) != copy_counts.get(t)}
            return refuse(f"row counts differ (source, copy): {diff}")
        for suffix in ("-wal", "-shm"):
            Path(f"{dest}{suffix}").unlink(missing_ok=True)  # stale files of a replaced copy
        os.replace(tmp, dest)
    except (OSError, sqlite3.Error) as exc:
        return refuse(str(exc))
    finally:
        cleanup()
    size = dest.stat().st_size
    print(f"backup {dest}  {size} bytes  {len(counts)} tables  {sum(counts.values())} rows "
          f"(notes {counts.get('notes', 0)}, audit {counts.get('audit', 0)})  integrity ok  from {source}")
    print(history_summary(history))
    if not history["ok"]:
        print(f"backup warning: the copy was written, but its {history_summary(history)}", file=sys.stderr)
        return EXIT_BROKEN
    return 0


def cmd_report(args) -> int:
    """`report build`: write a case's HTML report (and PDF); `report verify`: check a report's hash and origin."""
    return _report_build(args) if args.report_command == "build" else _report_verify(args)


def _report_build(args) -> int:
    from workbench.report import ReportError, case_pdf, case_report  # lazy: reports load Grad-CAM and plotly

    store = _open_store(args)
    try:
        wanted = str(args.case)
        ids = [c["id"] for c in store.cases() if str(c["id"]) == wanted or c["name"] == wanted]
        if not ids:
            print(f"report failed: no case with id or name {wanted!r}", file=sys.stderr)
            return EXIT_REFUSED
        out = Path(args.out or f"case-{ids[0]}-report.html")
        doc = case_report(store, ids[0], actor=args.actor, with_heatmaps=not args.no_heatmaps,
                          max_key_frames=args.key_frames)
        out.write_bytes(doc.encode("utf-8"))
        from workbench.report import verify_report  # lazy: as above

        digest = verify_report(doc)["claimed"]
        print(f"report {out}  {out.stat().st_size} bytes  report sha256 {digest}")
        if args.pdf:
            try:
                pdf = case_pdf(store, ids[0], doc, actor=args.actor)
            except ReportError as exc:
                print(f"PDF failed: {exc}", file=sys.stderr)
                return EXIT_REFUSED
            Path(args.pdf).write_bytes(pdf)
            print(f"pdf {args.pdf}  {len(pdf)} bytes  (report sha256 {digest} and page numbers on every page)")
    finally:
        store.close()
    return 0


def _report_verify(args) -> int:
    import hashlib

    from workbench.report import find_export, verify_report  # lazy: as in _report_build

    path = Path(args.file)
    if not path.is_file():
        print(f"report verify failed: no such file {str(path)!r}", file=sys.stderr)
        return EXIT_REFUSED
    data = path.read_bytes()
    lookup = {}
    if path.suffix.lower() == ".pdf":
        lookup["pdf_sha256"] = hashlib.sha256(data).hexdigest()
        print(f"PDF sha256 {lookup['pdf_sha256']}: a PDF is checked against the audit log only "
              "(the report sha256 printed on its pages can be checked against the HTML report)")
    else:
        checked = verify_report(data.decode("utf-8", errors="replace"))
        if checked["claimed"] is None:
            print(f"{path}: shows no report sha256: not a workbench report")
            return EXIT_BROKEN
        if not checked["ok"]:
            print(f"{path}: CHANGED: it shows report sha256 {checked['claimed']} but its content hashes to "
                  f"{checked['computed']}")
            return EXIT_BROKEN
        lookup["report_sha256"] = checked["claimed"]
        print(f"{path}: intact: report sha256 {checked['claimed']} matches its content")
    db = Path(args.db or config.db_path())
    if not db.is_file():
        if args.db or "pdf_sha256" in lookup:
            print(f"report verify failed: no database at {str(db)!r}", file=sys.stderr)
            return EXIT_REFUSED
        print(f"no database at {str(db)!r}: where it came from was not checked (use --db)")
        return 0
    store = Store(db, migrate=False)  # read only: no migration writes to the file checked
    try:
        entry = find_export(store, **lookup)
    finally:
        store.close()
    if entry is None:
        print(f"not recorded in the audit log of {db}: this database never exported it")
        return EXIT_BROKEN
    print(f"recorded in the audit log of {db}: entry {entry['id']}, {entry['subject']}, exported by "
          f"{entry['actor']} at {entry['at']}")
    return 0


def _add_report_parser(sub) -> None:
    r = sub.add_parser("report", help="build a case's HTML report (and PDF), or verify a report's hash and origin")
    rs = r.add_subparsers(dest="report_command", required=True)
    rb = rs.add_parser("build", help="write the case report (HTML; --pdf also prints it with headless Chromium)")
    rb.add_argument("case", help="the case's id or name")
    rb.add_argument("--out", help="HTML file to write (default case-<id>-report.html)")
    rb.add_argument("--pdf", metavar="PATH", help="also write the PDF here (needs Chromium)")
    rb.add_argument("--no-heatmaps", action="store_true", help="no Grad-CAM on the key frames")
    rb.add_argument("--key-frames", type=int, default=6, help="at most this many key frames per file (default 6)")
    rb.add_argument("--actor", default="local", help="who exports it, for the audit log")
    rv = rs.add_parser("verify", help="check a report's sha256 against its content, and that the database's "
                                      "audit log recorded exporting it (exit 1 if not)")
    rv.add_argument("file", help="the report (.html, or a .pdf by its own sha256)")
    for p in (rb, rv):
        p.add_argument("--db", help="SQLite database (default: var/workbench.db or WORKBENCH_DB)")
    r.set_defaults(func=cmd_report)


def _add_weights_parser(sub) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--manifest", help="weights manifest (default: WORKBENCH_WEIGHTS_MANIFEST, else weights/manifest.toml)")
    common.add_argument("--weights-dir", help="weights folder (default: WORKBENCH_WEIGHTS_DIR, else weights/)")
    w = sub.add_parser("weights", help="list, install, add and verify detector weights")
    ws = w.add_subparsers(dest="weights_command", required=True)
    ws.add_parser("list", parents=[common], help="per detector: files, installed or not, trust, size")
    i = ws.add_parser("install", parents=[common], help="download, check and convert a detector's upstream weights")
    i.add_argument("name", help="detector name")
    i.add_argument("--source", help="upstream source name (default: the manifest's first for the detector)")
    i.add_argument("--quiet", action="store_true", help="no progress bar")
    ad = ws.add_parser("add", parents=[common], help="install from a file you already have (tar archive or checkpoint)")
    ad.add_argument("name", help="detector name")
    ad.add_argument("path", help="the upstream archive or checkpoint file")
    ad.add_argument("--source", help="upstream source name the file comes from")
    ws.add_parser("verify", parents=[common], help="re-hash every installed weights file; exit 2 on any mismatch")
    w.set_defaults(func=cmd_weights)


def _add_evaluate_arguments(e) -> None:
    e.add_argument("--labels", required=True,
                   help="CSV with columns path,label (real/fake) and any group columns; .jpg/.jpeg/.png rows are still images")
    e.add_argument("--detector", action="append", help="detector name (repeatable); default: the default detectors")
    e.add_argument("--out", help="folder for evaluation.json and evaluation.html (default var/evaluations/<time>)")
    e.add_argument("--sample-fps", type=float, default=2.0, help="frames per second to analyse (default 2)")
    e.add_argument("--min-videos", type=int, default=30, help="groups with fewer real or fake videos are flagged")
    e.add_argument("--allow-outside", action="store_true",
                   help="allow paths outside the labels file's folder (refused by default)")
    e.add_argument("--db", help="SQLite database (default: var/workbench.db or WORKBENCH_DB)")
    e.add_argument("--evidence-dir", help="evidence store folder (default: var/evidence or WORKBENCH_EVIDENCE)")
    e.add_argument("--actor", default="local", help="who runs this, for the audit log")
    e.add_argument("--quiet", action="store_true", help="no progress bar")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m workbench", description="Deepfake-video analyst workbench (core).")
    sub = parser.add_subparsers(dest="command", required=True)

    a = sub.add_parser("analyze", help="analyse a video with face-swap detectors")
    a.add_argument("video")
    a.add_argument("--detector", action="append", help="detector name (repeatable); default: the default detectors")
    mode = a.add_mutually_exclusive_group()
    mode.add_argument("--sample-fps", type=float, default=2.0, help="frames per second to analyse (default 2)")
    mode.add_argument("--every-frame", action="store_true", help="analyse every frame")
    a.add_argument("--detect-every", type=int, default=None, help="run face detection on every k-th analysed frame")
    a.add_argument("--track-rule", choices=sorted(TRACK_METHODS), default="top25-mean")
    a.add_argument("--video-rule", choices=sorted(VIDEO_METHODS), default="max")
    a.add_argument("--min-frames", type=int, default=3, help="frames a track needs before it gets a score")
    a.add_argument("--ensemble", choices=sorted(ENSEMBLE_RULES), default="mean")
    a.add_argument("--db", help="SQLite database (default: var/workbench.db or WORKBENCH_DB)")
    a.add_argument("--evidence-dir", help="evidence store folder (default: var/evidence or WORKBENCH_EVIDENCE)")
    a.add_argument("--case", help="add the evidence to this case (created if new)")
    a.add_argument("--json", metavar="PATH|-", help="write the JSON result to PATH, or to stdout with -")
    a.add_argument("--device", help="torch device (default: WORKBENCH_DEVICE, else cuda if available, else cpu)")
    a.add_argument("--actor", default="local", help="who runs this, for the audit log")
    a.add_argument("--quiet", action="store_true", help="no progress bar")
    a.add_argument("--background", action="store_true",
                   help="queue the analysis as a job for the workers (`python -m workbench worker`) and return")
    a.set_defaults(func=cmd_analyze)

    bt = sub.add_parser("batch", help="ingest and analyse every video of a folder or CSV into a case; "
                                       "results table sorted by score (resumable)")
    bt.add_argument("source", metavar="DIR_OR_CSV", help="a folder (searched recursively) or a CSV with a `path` column")
    bt.add_argument("--case", required=True, help="the case the files go into (created if new)")
    bt.add_argument("--detector", action="append", help="detector name (repeatable); default: the default detectors")
    bt.add_argument("--sample-fps", type=float, default=2.0, help="frames per second to analyse (default 2)")
    bt.add_argument("--ensemble", choices=sorted(ENSEMBLE_RULES), default="mean")
    bt.add_argument("--workers", type=int, default=1, help="worker processes (or Ray CPUs with --ray auto); default 1")
    bt.add_argument("--out", help="folder for results.csv and results.json (default var/batches/batch-<id>)")
    bt.add_argument("--ray", metavar="ADDRESS|auto",
                    help="run each video as a Ray task: a cluster's address, or auto for a local instance "
                         "(needs requirements-cluster.txt)")
    bt.add_argument("--max-retries", type=int, default=2, help="tries again a video whose worker died (default 2)")
    bt.add_argument("--gpus-per-task", type=float, help="with --ray on GPU nodes: GPUs per video (default 1)")
    bt.add_argument("--register", action="append", metavar="MODULE:NAME",
                    help="a detector class (or a function registering some) every worker imports (repeatable)")
    bt.add_argument("--device", help="torch device for every worker (default: each worker's own)")
    bt.add_argument("--db", help="SQLite database (default: var/workbench.db or WORKBENCH_DB)")
    bt.add_argument("--evidence-dir", help="evidence store folder (default: var/evidence or WORKBENCH_EVIDENCE)")
    bt.add_argument("--actor", default="local", help="who runs this, for the audit log")
    bt.add_argument("--quiet", action="store_true", help="no progress bar")
    bt.set_defaults(func=cmd_batch)

    d = sub.add_parser("detectors", help="list detectors, their weights and model cards")
    d.add_argument("--json", action="store_true")
    d.set_defaults(func=cmd_detectors)

    e = sub.add_parser("evaluate", aliases=["bias"],
                       help="measure detectors and the ensemble on labelled videos and images (ROC AUC, TPR at FPR, "
                            "log loss, per-group rates); `bias` is an alias")
    _add_evaluate_arguments(e)
    e.set_defaults(func=cmd_evaluate)

    m = sub.add_parser("demo", help="write the demo clip with a known face-swap segment")
    m.add_argument("--out", default="var/demo/demo.mp4")
    m.add_argument("--seconds", type=float, default=10.0)
    m.add_argument("--if-missing", action="store_true", help="do nothing if the clip is already there")
    m.add_argument("--analyse", action="store_true",
                   help="also create the demo case in the store (a fresh install) and analyse it with the default "
                        "detector once, so the app opens on results; nothing if it was analysed before")
    m.set_defaults(func=cmd_demo)

    _add_weights_parser(sub)
    _add_report_parser(sub)

    t = sub.add_parser("train", help="train a new detector (Self-Blended Images) on a folder of your own real videos "
                                     "and photos; it is then listed and run like any detector")
    t.add_argument("--real", required=True, help="folder of real videos and photos (no fakes needed)")
    t.add_argument("--name", required=True, help="the new detector's name (lower-case letters, digits, hyphens)")
    t.add_argument("--epochs", type=int, default=2, help="training epochs (default 2)")
    t.add_argument("--arch", choices=["mobilenetv2", "efficientnet-lite0"], default="mobilenetv2")
    t.add_argument("--no-pretrained", action="store_true",
                   help="start from random weights (otherwise ImageNet weights from requirements-train.txt)")
    t.add_argument("--frames-per-video", type=int, default=24, help="evenly spaced frames read per video (default 24)")
    t.add_argument("--device", help="cpu or cuda (default: cuda when present, else cpu)")
    t.add_argument("--replace", action="store_true", help="replace an earlier trained detector of the same name")
    t.set_defaults(func=cmd_train)

    b = sub.add_parser("backup", help="copy the database with SQLite's backup API and check the copy")
    b.add_argument("path", help="where to write the copy (refused if it exists, unless --force)")
    b.add_argument("--db", help="SQLite database (default: var/workbench.db or WORKBENCH_DB)")
    b.add_argument("--force", action="store_true", help="replace an existing file at PATH")
    b.set_defaults(func=cmd_backup)

    v = sub.add_parser("verify", help="verify the audit hash chain and the facts it records (exit 1 if broken)",
                       description="Check the audit log's hash chain and every analysis, case, evidence, note and "
                                   "verdict against the entry that recorded it. Keep the printed head hash "
                                   "elsewhere: whoever can write the database could rebuild the whole chain, "
                                   "and --expect-head with an earlier head shows that.")
    v.add_argument("--db", help="SQLite database (default: var/workbench.db or WORKBENCH_DB)")
    v.add_argument("--expect-head", metavar="HASH", help="a head hash printed earlier; the history must contain it")
    v.set_defaults(func=cmd_verify)

    wk = sub.add_parser("worker", help="run analysis jobs in worker processes (`make run` starts this)")
    wk.add_argument("--workers", type=int,
                    help="worker processes (default: WORKBENCH_WORKERS, else one per GPU, else 1)")
    wk.add_argument("--db", help="SQLite database (default: var/workbench.db or WORKBENCH_DB)")
    wk.set_defaults(func=cmd_worker)

    j = sub.add_parser("jobs", help="list recent analysis jobs with their progress, or cancel one")
    j.add_argument("--cancel", type=int, metavar="ID", help="cancel this job (a running one stops at its next frame)")
    j.add_argument("--limit", type=int, default=20, help="how many recent jobs to list (default 20)")
    j.add_argument("--db", help="SQLite database (default: var/workbench.db or WORKBENCH_DB)")
    j.add_argument("--actor", default="local", help="who cancels, for the audit log")
    j.set_defaults(func=cmd_jobs)

    sv = sub.add_parser("serve", help="serve the HTTP API (`serve --api`) on 127.0.0.1:8600")
    sv.add_argument("--api", action="store_true", help="serve the HTTP API (bearer tokens: `token create`)")
    sv.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    sv.add_argument("--port", type=int, default=8600, help="port (default 8600)")
    sv.add_argument("--allow-remote", action="store_true",
                    help="allow a non-loopback --host (put a TLS reverse proxy in front of it)")
    sv.add_argument("--max-upload-mb", type=float,
                    help="largest upload in MiB (default: WORKBENCH_API_MAX_UPLOAD_MB, else 500)")
    sv.add_argument("--rate-limit", type=int,
                    help="requests a minute per token (default: WORKBENCH_API_RATE_PER_MINUTE, else 120)")
    sv.add_argument("--db", help="SQLite database (default: var/workbench.db or WORKBENCH_DB)")
    sv.set_defaults(func=cmd_serve)

    tk = sub.add_parser("token", help="create, list or revoke HTTP API tokens")
    tks = tk.add_subparsers(dest="token_command", required=True)
    tc = tks.add_parser("create", help="make a token for NAME; printed once, only its sha256 is stored")
    tc.add_argument("name", help="the identity the token stands for (recorded as who asked)")
    tks.add_parser("list", help="every token: name, created, active or revoked (never the token)")
    tr = tks.add_parser("revoke", help="revoke NAME's token (at once, also for a running server)")
    tr.add_argument("name")
    for p in tks.choices.values():
        p.add_argument("--db", help="SQLite database (default: var/workbench.db or WORKBENCH_DB)")
        p.add_argument("--actor", default=getpass.getuser(), help="who does this, for the audit log (default: you)")
    tk.set_defaults(func=cmd_token)
    _add_case_parser(sub)
    _add_search_parser(sub)
    return parser


ROOT_WARNING = ("warning: running as root: the database, evidence and decoder children get root's rights; "
                "run the workbench as an ordinary user")


def _stderr_is_terminal() -> bool:
    return sys.stderr.isatty()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    finally:
        # A nudge for the person at the terminal: after the command, so a refusal stays the first
        # line, never in scripts' captured output, and never changing the exit code.
        if hasattr(os, "geteuid") and os.geteuid() == 0 and _stderr_is_terminal():
            print(ROOT_WARNING, file=sys.stderr)


def cmd_case(args) -> int:
    """`case export | import | verify`: case bundles (workbench/bundle.py); exit 0 done, 1 verification
    failed, 2 refused."""
    from workbench import bundle  # lazy: only these commands read and write bundles

    if args.case_command == "verify":
        try:
            check = bundle.verify_bundle(args.bundle)
        except bundle.BundleError as exc:
            print(f"refused: {exc}", file=sys.stderr)
            return EXIT_REFUSED
        for problem in check.problems:
            print(f"FAILED: {problem}")
        print(check.summary())
        if check.ok:
            print(f"source head {check.manifest['audit']['head']}: compare it with the head the exporter's "
                  "`python -m workbench verify` printed")
        return 0 if check.ok else EXIT_BROKEN
    store = _open_store(args)
    try:
        if args.case_command == "export":
            done = bundle.export_case(store, args.case_id, args.out, actor=args.actor, with_evidence=args.with_evidence,
                                      with_report=not args.no_report)
            print(f"bundle {done['path']}  {done['bytes']} bytes  {done['members']} members  "
                  f"evidence files {'included' if done['with_evidence'] else 'not included'}")
            print(f"bundle sha256 {done['bundle_sha256']}")
        else:
            done = bundle.import_bundle(store, args.bundle, actor=args.actor,
                                        evidence_dir=args.evidence_dir or config.evidence_dir(),
                                        bundles_dir=config.home() / "bundles", video_limits=config.limits())
            print(f"imported as case #{done['case_id']} (bundle sha256 {done['bundle_sha256']}, exported by "
                  f"{done['exporter']['actor']!r})")
            for sha, what in done["evidence"].items():
                print(f"  {sha}  {what}")
    except (bundle.BundleError, StoreError) as exc:
        print(f"refused: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    finally:
        store.close()
    return 0


def _add_case_parser(sub) -> None:
    c = sub.add_parser("case", help="export a case as a bundle, verify a bundle, import one as a new case")
    cs = c.add_subparsers(dest="case_command", required=True)
    ex = cs.add_parser("export", help="write a case (facts, audit entries, report; evidence optional) as one zip")
    ex.add_argument("case_id", type=int, metavar="CASE_ID")
    ex.add_argument("out", metavar="OUT.zip", help="the bundle to write (refused if it exists)")
    ex.add_argument("--with-evidence", action="store_true", help="include the evidence files (under their sha256)")
    ex.add_argument("--no-report", action="store_true", help="leave the HTML case report out")
    im = cs.add_parser("import", help="verify a bundle, then import it as a NEW case (never twice)")
    im.add_argument("bundle", metavar="BUNDLE.zip")
    im.add_argument("--evidence-dir", help="evidence store folder (default: var/evidence or WORKBENCH_EVIDENCE)")
    for p in (ex, im):
        p.add_argument("--db", help="SQLite database (default: var/workbench.db or WORKBENCH_DB)")
        p.add_argument("--actor", required=True, help="who exports or imports (named in the bundle and the audit log)")
    ve = cs.add_parser("verify", help="check a bundle's members, evidence hashes, audit segment and facts (exit 1 if any fails)")
    ve.add_argument("bundle", metavar="BUNDLE.zip")
    c.set_defaults(func=cmd_case)


def cmd_search(args) -> int:
    """Search every case's names, notes, file names and hash prefixes; one result per line.

    Exit 0 (whether or not anything matched), 2 for an empty query or no database.
    """
    source = Path(args.db or config.db_path())
    if not source.is_file():
        print(f"search failed: no database at {str(source)!r}", file=sys.stderr)
        return EXIT_REFUSED
    store = Store(source)
    try:
        results = store.search(args.text, limit=args.limit, include_archived=args.archived)
    except StoreError as exc:
        print(f"refused: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    finally:
        store.close()
    for hit in results:
        where = f"case #{hit['case_id']} {hit['case_name']}"
        if hit["sha256"]:
            where += f"\tfile {hit['sha256']}"
        if hit["note_id"] is not None:
            where += f"\tnote {hit['note_id']}" + (f" frame {hit['frame']}" if hit["frame"] is not None else "")
        # One line per result: a note's line breaks would split it.
        text = " ".join((hit["text"] or "").split())
        print(f"{hit['kind']}\t{where}\t{hit['field']}: {text}" + ("\t[archived]" if hit["archived"] else ""))
    print(f"{len(results)} result(s)", file=sys.stderr)
    return 0


def _add_search_parser(sub) -> None:
    se = sub.add_parser("search", help="search cases, notes, file names and hash prefixes across every case")
    se.add_argument("text", help="the text to find (matched literally: % and _ are not wildcards)")
    se.add_argument("--archived", action="store_true", help="also search archived cases and files")
    se.add_argument("--limit", type=int, default=50, help="results per kind (cases, files, notes); default 50")
    se.add_argument("--db", help="SQLite database (default: var/workbench.db or WORKBENCH_DB)")
    se.set_defaults(func=cmd_search)
