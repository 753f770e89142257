"""Train an SBI detector on a team's own real videos and photos (`python -m workbench train --real DIR --name NAME` runs this).

    python -m tools.training.custom --real DIR --name NAME [--epochs 2] [--arch mobilenetv2] [--no-pretrained]

Self-Blended Images need no fakes: every face found in DIR becomes a real sample and a
self-blended fake. A fifth of the files (at least one, when there are two or more) is held out
as validation, so the figures are on footage the model never saw. Writes, under the installed
weights folder, custom/NAME/: NAME.safetensors, detector.toml (sha256, threshold), card.toml
(the model card, stating the data), data_list.json (every file with its sha256) and
training.json; the workbench then lists and runs NAME like any detector.
"""
from __future__ import annotations

import argparse
import datetime as dt
import getpass
import hashlib
import json
import platform
import shutil
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np
import torch

from detectors.custom import ARCHES, CustomDetectorError, check_name, custom_root
from detectors.weights import sha256_file
from tools.training.data import MIN_FACE_PX, FaceSample, to_context
from tools.training.metrics import rates_at, summarise, threshold_for_fpr

VIDEO_EXT = {".mp4", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".m4v", ".wmv"}
PHOTO_EXT = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
OPERATING_FPR = 0.05


class TrainingInputError(ValueError):
    """The folder cannot be trained on; the message says why."""


def media_files(folder: Path) -> list[Path]:
    """Videos and photos under folder (recursively), sorted; hidden files skipped."""
    folder = Path(folder)
    if not folder.is_dir():
        raise TrainingInputError(f"{folder}: not a folder")
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in VIDEO_EXT | PHOTO_EXT
                   and not any(part.startswith(".") for part in p.relative_to(folder).parts))
    if not files:
        raise TrainingInputError(f"{folder}: no videos ({', '.join(sorted(VIDEO_EXT))}) or photos "
                                 f"({', '.join(sorted(PHOTO_EXT))}) in it")
    return files


def split_files(digests: list[str], val_fraction: float = 0.2) -> list[str]:
    """'train' or 'val' per file: a fixed fifth (by content hash) validates, when there are two or more."""
    if len(digests) < 2:
        return ["train"] * len(digests)
    order = sorted(range(len(digests)), key=lambda i: hashlib.sha256(f"val:{digests[i]}".encode()).hexdigest())
    val = set(order[: max(1, round(len(digests) * val_fraction))])
    return ["val" if i in val else "train" for i in range(len(digests))]


def faces_of(path: Path, detector, frames_per_video: int) -> list[tuple[np.ndarray, object]]:
    """(frame, face) pairs of a video's evenly spaced frames or of a photo; every face large enough."""
    from workbench.video import iter_frames, probe

    if path.suffix.lower() in PHOTO_EXT:
        bgr = cv2.imread(str(path))
        if bgr is None:
            return []
        frames = [cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)]
    else:
        info = probe(path)
        picks = np.unique(np.linspace(0, max(0, info.frames - 1), num=min(frames_per_video, max(1, info.frames))).astype(int))
        frames = [rgb for _, rgb in iter_frames(path, picks.tolist())]
    pairs = []
    for frame, faces in zip(frames, detector.detect(frames) if frames else []):
        pairs += [(frame, f) for f in faces if f.size >= MIN_FACE_PX and f.landmarks is not None]
    return pairs


def collect(folder: Path, frames_per_video: int = 24, log=print) -> tuple[list[FaceSample], list[dict]]:
    """Faces of every file with its split, and the data list (path, sha256, kind, split, faces).

    Raises:
        TrainingInputError: no usable file, or no face in any of them.
    """
    from workbench.faces import FaceDetector

    files = media_files(folder)
    digests = [sha256_file(p) for p in files]
    splits = split_files(digests)
    detector = FaceDetector(detect_size=1280)
    samples, listing = [], []
    for path, digest, split in zip(files, digests, splits):
        rel = str(path.relative_to(folder))
        try:
            pairs = faces_of(path, detector, frames_per_video)
            problem = None
        except Exception as exc:  # an undecodable file is reported and skipped, not fatal
            pairs, problem = [], f"{type(exc).__name__}: {exc}"
        for frame, face in pairs:
            crop, marks, box = to_context(frame, face)
            samples.append(FaceSample(crop, marks, box, f"file:{digest[:16]}", split, rel))
        listing.append({"path": rel, "sha256": digest, "kind": "photo" if path.suffix.lower() in PHOTO_EXT else "video",
                        "split": split, "faces": len(pairs), **({"skipped": problem} if problem else {})})
        log(f"{rel}: {len(pairs)} faces ({split}){' - ' + problem if problem else ''}")
    if not samples:
        raise TrainingInputError(f"{folder}: no face of at least {MIN_FACE_PX} px found in {len(files)} files")
    if not any(s.split == "train" for s in samples):
        # Only the held-out files had faces: train on them rather than on nothing, and say so.
        for s in samples:
            s.split = "train"
        for row in listing:
            row["split"] = "train"
    return samples, listing


def _card(name: str, arch: str, listing: list[dict], samples: list[FaceSample], record: dict, heldout: dict | None,
          folder: Path, created: str, who: str) -> dict:
    n_files = len(listing)
    n_with = sum(r["faces"] > 0 for r in listing)
    by_split = {sp: sum(s.split == sp for s in samples) for sp in ("train", "val")}
    files_val = sum(r["split"] == "val" and r["faces"] > 0 for r in listing)
    digest_of_list = hashlib.sha256("\n".join(sorted(r["sha256"] for r in listing)).encode()).hexdigest()
    shas = "; ".join(f"{r['path']} {r['sha256']}" for r in listing[:20])
    more = f" and {n_files - 20} more (all in data_list.json)" if n_files > 20 else ""
    if heldout:
        op = heldout["at_operating_threshold"]
        figures = (f"Held-out files ({files_val} files never trained on, {heldout['negatives']} real and "
                   f"{heldout['positives']} self-blended crops): ROC AUC {heldout['roc_auc']:.3f}, TPR "
                   f"{heldout['tpr_at_10pct_fpr']:.1%} at 10% FPR. Operating threshold {op['threshold']:.3f}, chosen "
                   f"there for at most 5% FPR (TPR {op['tpr']:.1%}; optimistic: chosen and measured on the same "
                   f"crops). Self-blended fakes are not real deepfakes: measure it on labelled clips with "
                   f"python -m workbench evaluate --labels LABELS.csv --detector {name}.")
    else:
        figures = ("Not measured: fewer than two files with faces, so nothing could be held out. The threshold is "
                   "0.5, not calibrated. Measure it with python -m workbench evaluate --labels LABELS.csv "
                   f"--detector {name}.")
    return {
        "summary": (f"A detector trained by {who} on {created[:10]} from their own real footage with Self-Blended "
                    f"Images (Shiohara & Yamasaki, CVPR 2022): each 'fake' is a real face blended with a jittered "
                    f"copy of itself. Architecture {arch}, {record['epochs']} epoch(s), "
                    f"{'ImageNet start' if record.get('imagenet_init_sha256') else 'random start'}."),
        "intended_use": ("Triage of footage like the footage it was trained on (same cameras, places, people), "
                         "reviewed by an analyst alongside the shipped detectors. Not a verdict on its own."),
        "out_of_scope_uses": ("Fully synthetic (GAN or diffusion) faces, lip-sync and reenactment that keep the "
                              "original face, audio and voice cloning, still images, cheapfakes (cuts, speed "
                              "changes, re-captioning), edits outside the face; and any automated decision about "
                              "a person without an analyst's review."),
        "detects": ("Traces of blending a face into a frame, as face swaps leave them: a pasted region's boundary "
                    "and colour or sharpness mismatches between the inner face and its surroundings."),
        "does_not_detect": ("Fully synthetic faces, lip-sync and reenactment, audio, edits outside the face. "
                            "Heavy compression and low resolution wash out the traces it looks for."),
        "training_data": (f"Only the real footage in {folder} as it was on {created}: {n_files} files "
                          f"({sum(r['kind'] == 'video' for r in listing)} videos, {sum(r['kind'] == 'photo' for r in listing)} "
                          f"photos), {n_with} with faces; {by_split['train']} training and {by_split['val']} "
                          f"validation faces (split by file). Files and sha256: {shas}{more}. sha256 of the sorted "
                          f"sha256 list: {digest_of_list}. Trained by {who} on {created}. No deepfakes were used."),
        "evaluation_data": (f"{files_val} held-out files of the same folder, as real crops and as self-blended fakes."
                            if heldout else "None held out (fewer than two files with faces)."),
        "figures": figures,
        "per_group_figures": ("Not measured: the footage carries no group labels. Measure false positives per "
                              "group with python -m workbench evaluate on a labelled set."),
        "known_biases": ("It has seen only the people, cameras and light of its training folder; on anything else "
                         "its error rates are unknown and may be much worse."),
        "failure_modes": ("Glasses, make-up, occlusions, motion blur and compression can look like blending "
                          "(false alarms); a colour-matched swap with a soft mask can pass. Few training faces give "
                          "noisy scores: read the timeline, not one number."),
        "licence": "Made by its user from their own footage; the footage's own terms apply to the weights.",
        "source": f"python -m workbench train (tools/training/custom.py), record in {custom_root().name}/{name}/training.json",
    }


def _toml(d: dict) -> str:
    return "".join(f"{k} = {json.dumps(v)}\n" for k, v in d.items())


def train_custom(folder: Path, name: str, epochs: int = 2, arch: str = "mobilenetv2", pretrained: bool = True,
                 device: str | None = None, frames_per_video: int = 24, replace: bool = False, seed: int = 0,
                 root: Path | None = None, log=print) -> Path:
    """Find faces in folder, train, measure on held-out files, and install the detector; returns its folder.

    Raises:
        CustomDetectorError: a bad name. TrainingInputError: nothing to train on.
    """
    from tools.training.train import normalisation, save_weights, score, train, validation_set

    check_name(name, root, replace=replace)
    if arch not in ARCHES:
        raise CustomDetectorError(f"unknown architecture {arch!r}; known: {', '.join(ARCHES)}")
    if epochs < 1:
        raise TrainingInputError("epochs must be at least 1")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    folder = Path(folder).resolve()
    samples, listing = collect(folder, frames_per_video, log)
    log(f"{sum(s.split == 'train' for s in samples)} training and {sum(s.split == 'val' for s in samples)} "
        f"validation faces; training {arch} for {epochs} epochs on {device}")
    model, record = train(samples, epochs, seed, device, pretrained, freeze=0 if not pretrained else
                          (14 if arch == "mobilenetv2" else 10), lr=3e-4, log=log, arch=arch)
    val = [s for s in samples if s.split == "val"]
    heldout = None
    threshold = 0.5
    if val:
        x, y = validation_set(val, seed)
        scores = score(model, x, torch.device(device), norm=normalisation(arch))
        heldout = summarise(y, scores)
        threshold = threshold_for_fpr(scores[y == 0], OPERATING_FPR)
        heldout["at_operating_threshold"] = rates_at(y, scores, threshold)
        heldout["at_0.5"] = rates_at(y, scores, 0.5)

    created = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    who = f"{getpass.getuser()}@{platform.node()}"
    dest = custom_root(root) / name
    # Written in a scratch folder next to the destination and moved in whole: a failed run
    # never leaves a half-made detector that the registry would try to load.
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=dest.parent))
    try:
        sha, size = save_weights(model, tmp / f"{name}.safetensors", name)
        record.update(name=name, folder=str(folder), created=created, run_by=who, weights_sha256=sha,
                      heldout=heldout, threshold=threshold)
        (tmp / "training.json").write_text(json.dumps(record, indent=1) + "\n")
        (tmp / "data_list.json").write_text(json.dumps({"folder": str(folder), "created": created, "files": listing},
                                                       indent=1) + "\n")
        if heldout:
            (tmp / "metrics.json").write_text(json.dumps({
                "weights_sha256": sha, "heldout_sbi": heldout, "heldout_who": "held-out files of the training folder",
                "operating_threshold": {"value": threshold, "fpr_target": OPERATING_FPR}}, indent=1) + "\n")
        (tmp / "detector.toml").write_text(_toml({
            "name": name, "arch": arch, "file": f"{name}.safetensors", "sha256": sha, "size": size,
            "threshold": threshold, "created": created, "run_by": who}))
        (tmp / "card.toml").write_text(_toml(_card(name, arch, listing, samples, record, heldout, folder, created, who)))
        if dest.exists():
            shutil.rmtree(dest)
        tmp.rename(dest)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    log(f"wrote {dest} (weights sha256 {sha}); `python -m workbench detectors` lists {name}")
    return dest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.training.custom", description=__doc__.splitlines()[0])
    parser.add_argument("--real", required=True, help="folder of your own real videos and photos (no fakes needed)")
    parser.add_argument("--name", required=True, help="the new detector's name")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--arch", choices=ARCHES, default="mobilenetv2")
    parser.add_argument("--no-pretrained", action="store_true", help="random start (no ImageNet weights needed)")
    parser.add_argument("--device", help="cpu or cuda (default: cuda when present)")
    parser.add_argument("--frames-per-video", type=int, default=24)
    parser.add_argument("--replace", action="store_true", help="replace a trained detector of the same name")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        train_custom(Path(args.real), args.name, args.epochs, args.arch, not args.no_pretrained, args.device,
                     args.frames_per_video, args.replace, args.seed, log=lambda m: print(m, file=sys.stderr))
    except (CustomDetectorError, TrainingInputError) as exc:
        print(f"refused: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
