"""Command line: `python -m workbench analyze | detectors | evaluate | demo | weights | train | backup | verify` (the core without a browser)."""
from __future__ import annotations

import argparse
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

from tqdm import tqdm

from detectors import weights_manager
from detectors.base import CARD_FIELDS, SCOPE_CAVEAT
from detectors.registry import UnknownDetector, default_detectors, get_detector, list_detectors
from workbench import bias_report, config, demo
from workbench.aggregate import ENSEMBLE_RULES, TRACK_METHODS, VIDEO_METHODS, Rule
from workbench.evidence import EvidenceError, ingest
from workbench.pipeline import Sampling
from workbench.service import analyse_evidence
from workbench.store import MIGRATIONS, Store, history_summary, snapshot_backup

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
        print(render_text(payload))
    return 0


def render_text(payload: dict) -> str:
    """A plain-text summary of an analysis (the caveat always included)."""
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
    ens = payload["ensemble"]
    shown = f"{ens['score']:.3f}" if ens["score"] is not None else ens["status"].upper()
    left = f"; left out: {', '.join(f'{n} ({s})' for n, s in ens['left_out'].items())}" if ens["left_out"] else ""
    lines.append(f"{'ensemble (' + ens['rule'] + ')':<24}{shown:>14}{left}")
    lines.append("")
    lines.append(f"Caveat: {SCOPE_CAVEAT}")
    return "\n".join(lines)


def cmd_detectors(args) -> int:
    rows = []
    for name in list_detectors():
        det = get_detector(name)
        status = det.weights_status()
        rows.append({"name": name, "version": det.version, "default": det.default, "weights": status.detail,
                     "installed": status.installed, "input": det.crop.size, "card": det.card.to_dict()})
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print("no detectors registered")
    for r in rows:
        mark = " (default)" if r["default"] else ""
        print(f"{r['name']}{mark}  v{r['version']}  input {r['input']}px  weights: {r['weights']}")
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
        return 0
    out.parent.mkdir(parents=True, exist_ok=True)
    truth = demo.make_demo(out, seconds=args.seconds)
    print(out)
    if truth.swap_frames:
        first, last = truth.swap_frames
        print(f"swapped frames {first}..{last} ({truth.swap_target} <- {truth.swap_donor}); "
              f"truth in {demo.truth_path(out)}", file=sys.stderr)
    else:
        print("the clip is too short to reach the swapped segment", file=sys.stderr)
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
    a.set_defaults(func=cmd_analyze)

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
    m.set_defaults(func=cmd_demo)

    _add_weights_parser(sub)

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
