"""The FairFace subset in ../shared/data/fairface (CC BY 4.0), split by image into a training half and an evaluation half balanced by age band x gender."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

FAIRFACE_DIR = Path(__file__).resolve().parents[3] / "shared" / "data" / "fairface"
CREDIT = ("FairFace (Kärkkäinen & Joo, WACV 2021), CC BY 4.0: 540 Flickr/YFCC-100M photos, 30 per age band "
          "x gender, from ../shared/data/fairface")


@dataclass(frozen=True)
class FairFaceImage:
    id: str
    path: Path
    age: str
    gender: str
    split: str  # "train" or "eval"


def _order(image_id: str) -> str:
    # A fixed pseudo-random order inside each cell: the same split on every machine, not the file order.
    return hashlib.sha256(f"fairface-split-v1:{image_id}".encode()).hexdigest()


def load(folder: Path = FAIRFACE_DIR) -> list[FairFaceImage]:
    """Every image with its labels and split: in each age x gender cell, half go to training.

    Raises:
        FileNotFoundError: the folder or its ground_truth.json is missing (callers skip then).
    """
    rows = json.loads((Path(folder) / "ground_truth.json").read_text())
    cells: dict[tuple[str, str], list[dict]] = {}
    for row in rows:
        cells.setdefault((row["age"], row["gender"]), []).append(row)
    out = []
    for cell in cells.values():
        ordered = sorted(cell, key=lambda r: _order(r["id"]))
        half = len(ordered) // 2
        for i, row in enumerate(ordered):
            out.append(FairFaceImage(row["id"], Path(folder) / row["filename"], row["age"], row["gender"],
                                     "train" if i < half else "eval"))
    return sorted(out, key=lambda im: im.id)


def split(name: str, folder: Path = FAIRFACE_DIR) -> list[FairFaceImage]:
    """The "train" or "eval" half."""
    if name not in ("train", "eval"):
        raise ValueError("split is 'train' or 'eval'")
    return [im for im in load(folder) if im.split == name]
