"""Write the labels CSV of a FairFace half (path,label=real,age,gender) for `python -m workbench evaluate`.

    python -m tools.datasets.fairface_labels OUT.csv [--split eval|train] [--folder DIR]

Paths are absolute (the photos stay where they are), so the evaluation needs `--allow-outside`
unless OUT.csv is written inside the FairFace folder.
"""
from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

from tools.datasets.fairface import CREDIT, FAIRFACE_DIR, split


def write_labels(out: Path, half: str = "eval", folder: Path = FAIRFACE_DIR) -> int:
    """Write one row per photo of a FairFace half: every one is a real face. Returns the row count."""
    images = split(half, folder)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "label", "age", "gender"])
        for im in images:
            writer.writerow([str(Path(im.path).resolve()), "real", im.age, im.gender])
    return len(images)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.datasets.fairface_labels", description=__doc__.splitlines()[0])
    parser.add_argument("out", help="the labels CSV to write")
    parser.add_argument("--split", choices=("eval", "train"), default="eval", help="which half (default: eval)")
    parser.add_argument("--folder", default=str(FAIRFACE_DIR), help="the FairFace folder with ground_truth.json")
    args = parser.parse_args(argv)
    try:
        n = write_labels(Path(args.out), args.split, Path(args.folder))
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {n} rows ({args.split} half) to {args.out}; data: {CREDIT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
