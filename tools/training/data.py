"""Training faces for the reference detector: sources, identities, the split, and face extraction."""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

from detectors.weights import sha256_file
from workbench.faces import Face, FaceDetector
from workbench.geometry import CropPolicy, crop_face, crop_rect

SHARED_DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
DATA_LIST = Path(__file__).resolve().parent / "data_list.json"

# Faces are stored with twice the detector's margin (0.5 of the box on each side) at 256 px, so
# the central 192 px are exactly the detector's crop (margin 0.25 at 192 px) and the blending
# and augmentations have context around the face to work with.
CONTEXT = CropPolicy(size=256, margin=0.5, square=True, pad=False)
FINAL_SIZE = 192
FINAL_OFFSET = (CONTEXT.size - FINAL_SIZE) // 2

# GRID speakers, identified by looking at the clips (file names are sentence codes, not
# speakers; id2_vcd_swwp2s and pwij3p show the same man). Validation identities never train.
GRID_SPEAKERS = {
    "bbaf2n.mpg": "grid-a", "brbk7n.mpg": "grid-b", "id2_vcd_swwp2s.mpg": "grid-c", "lbax4n.mpg": "grid-d",
    "lbbc2a.mpg": "grid-e", "lrwp9a.mpg": "grid-f", "lwbsza.mpg": "grid-g", "pwij3p.mpg": "grid-c",
    "sbia1a.mpg": "grid-h", "sbwe5n.mpg": "grid-i", "swiz3n.mpg": "grid-j",
}
VALIDATION_IDENTITIES = {"grid-d", "grid-f", "grid-i"}
# FairFace photos are one person each: a fixed fifth of the training half validates (by image,
# hence by identity); the evaluation half is never read here.
FAIRFACE_VAL_FRACTION = 0.2
GRID_FRAME_STEP = 2
MIN_FACE_PX = 60


@dataclass
class Source:
    path: str  # relative to the data root
    sha256: str
    identity: str
    split: str
    kind: str  # "video" or "photo"
    age: str | None = None  # FairFace's labels; None where the data set has none
    gender: str | None = None


def list_sources(root: Path = SHARED_DATA, fairface: bool = True) -> list[Source]:
    """Every training/validation source file with its identity and split (no decoding).

    Deepface and facenet stills are of unlabelled or other people: they only ever train.
    FairFace contributes its training half only (tools/datasets/fairface.py), a fifth of it
    held out for validation; its evaluation half stays unseen for the per-group measurements.
    """
    sources = []
    for clip in sorted((root / "grid").glob("*.mpg")):
        identity = GRID_SPEAKERS.get(clip.name)
        if identity is None:
            continue  # an unknown speaker cannot be placed on one side of the split safely
        split = "val" if identity in VALIDATION_IDENTITIES else "train"
        sources.append(Source(str(clip.relative_to(root)), sha256_file(clip), identity, split, "video"))
    for photo in sorted((root / "stills").rglob("*.jpg")):
        rel = photo.relative_to(root)
        identity = f"still:{rel.parent.name}/{photo.stem}" if rel.parent.name == "deepface" else f"still:{rel.parent.name}"
        sources.append(Source(str(rel), sha256_file(photo), identity, "train", "photo"))
    if fairface and (root / "fairface" / "ground_truth.json").is_file():
        from tools.datasets.fairface import split as fairface_split

        half = fairface_split("train", root / "fairface")
        # Per age x gender cell, the first fifth (in the split's fixed hash order) validates.
        cells: dict[tuple[str, str], list] = {}
        for im in sorted(half, key=lambda im: hashlib.sha256(f"fairface-val-v1:{im.id}".encode()).hexdigest()):
            cells.setdefault((im.age, im.gender), []).append(im)
        val_ids = {im.id for cell in cells.values() for im in cell[: max(1, round(len(cell) * FAIRFACE_VAL_FRACTION))]}
        for im in half:
            path = Path(im.path)
            sources.append(Source(str(path.relative_to(root)), sha256_file(path), f"fairface:{im.id}",
                                  "val" if im.id in val_ids else "train", "photo", im.age, im.gender))
    return sources


@dataclass
class FaceSample:
    crop: np.ndarray  # (256, 256, 3) uint8, the context crop
    landmarks: np.ndarray  # (5, 2) float32, in crop pixels
    box: np.ndarray  # (4,) float32, in crop pixels
    identity: str
    split: str
    source: str


def to_context(frame: np.ndarray, face: Face) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The context crop of a face, with its box and landmarks mapped into the crop."""
    left, top, right, _ = crop_rect(face.box, CONTEXT)
    scale = CONTEXT.size / (right - left)
    crop = crop_face(frame, face.box, CONTEXT)
    marks = (np.asarray(face.landmarks, np.float32) - [left, top]) * scale
    box = (np.asarray(face.box, np.float32) - [left, top, left, top]) * scale
    return crop, marks.astype(np.float32), box.astype(np.float32)


def extract_faces(sources: list[Source], root: Path = SHARED_DATA, detector: FaceDetector | None = None) -> list[FaceSample]:
    """Find faces in every source with the project's MTCNN pipeline and cut context crops."""
    from workbench.video import iter_frames, probe

    detector = detector or FaceDetector(detect_size=1280)
    samples = []
    for src in sources:
        path = root / src.path
        if src.kind == "video":
            info = probe(path)
            frames = [rgb for _, rgb in iter_frames(path, range(0, info.frames, GRID_FRAME_STEP))]
            faces_per = detector.detect(frames)
            # A talking head: one person per clip, the largest face.
            pairs = [(f, faces[0]) for f, faces in zip(frames, faces_per) if faces]
        else:
            rgb = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
            faces = detector.detect([rgb])[0]
            # A FairFace photo is labelled for one person, the largest face; others are unlabelled.
            pairs = [(rgb, face) for face in (faces[:1] if src.age is not None else faces)]
        for frame, face in pairs:
            if face.size < MIN_FACE_PX or face.landmarks is None:
                continue
            crop, marks, box = to_context(frame, face)
            samples.append(FaceSample(crop, marks, box, src.identity, src.split, src.path))
    return samples


def save_samples(samples: list[FaceSample], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        path, crops=np.stack([s.crop for s in samples]), landmarks=np.stack([s.landmarks for s in samples]),
        boxes=np.stack([s.box for s in samples]), identity=np.array([s.identity for s in samples]),
        split=np.array([s.split for s in samples]), source=np.array([s.source for s in samples]),
    )


def load_samples(path: Path) -> list[FaceSample]:
    with np.load(path, allow_pickle=False) as data:
        return [
            FaceSample(c, lm, b, str(i), str(sp), str(src))
            for c, lm, b, i, sp, src in zip(data["crops"], data["landmarks"], data["boxes"], data["identity"],
                                            data["split"], data["source"])
        ]


def write_data_list(sources: list[Source], samples: list[FaceSample], path: Path = DATA_LIST) -> dict:
    """The committed record of what the weights were trained on: every file with its sha256."""
    counts: dict[str, int] = {}
    for s in samples:
        counts[s.source] = counts.get(s.source, 0) + 1
    doc = {
        "data_root": "../shared/data (not part of the repository; see its README for licences)",
        "grid_frame_step": GRID_FRAME_STEP,
        "min_face_px": MIN_FACE_PX,
        "validation_identities": sorted({src.identity for src in sources if src.split == "val"}),
        "faces": {"train": sum(s.split == "train" for s in samples), "val": sum(s.split == "val" for s in samples)},
        "identities": {"train": len({s.identity for s in samples if s.split == "train"}),
                       "val": len({s.identity for s in samples if s.split == "val"})},
        "fairface_faces": demographics(sources, counts),
        "sources": [dict(asdict(src), faces=counts.get(src.path, 0)) for src in sources],
    }
    path.write_text(json.dumps(doc, indent=1) + "\n")
    return doc


def demographics(sources: list[Source], counts: dict[str, int]) -> dict:
    """Faces per split and FairFace label (age band, gender); FairFace's subset has no race labels."""
    out: dict = {}
    for src in sources:
        if src.age is None or not counts.get(src.path):
            continue
        for column, value in (("age", src.age), ("gender", src.gender)):
            cell = out.setdefault(src.split, {}).setdefault(column, {})
            cell[value] = cell.get(value, 0) + counts[src.path]
    return {split: {col: dict(sorted(v.items())) for col, v in cols.items()} for split, cols in sorted(out.items())}


def final_crop(context_crop: np.ndarray) -> np.ndarray:
    """The detector's 192-px crop out of a 256-px context crop."""
    o = FINAL_OFFSET
    return context_crop[o : o + FINAL_SIZE, o : o + FINAL_SIZE]
