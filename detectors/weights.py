"""Weights as data with a pedigree: the manifest, sha256 verification and strict loading."""
from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from detectors.base import WEIGHTS_DIR, WeightFile, WeightsError, WeightsUnavailable, sha256_file, weights_dir

MANIFEST = WEIGHTS_DIR / "manifest.toml"
# The local install record (git-ignored), written by detectors.weights_manager: sha256, size,
# installed_at and trust ("manifest" or "first-use") of every downloaded and converted file.
INSTALLED = WEIGHTS_DIR / "installed.toml"


@dataclass(frozen=True)
class ManifestEntry:
    """One row of weights/manifest.toml."""

    detector: str
    file: str
    sha256: str | None
    size: int | None
    url: str | None
    licence: str
    source: str
    made: str
    format: str

    def weight_file(self) -> WeightFile:
        return WeightFile(self.file, self.sha256, self.size, self.url, self.licence, self.source)


def read_manifest(path: Path = MANIFEST) -> list[ManifestEntry]:
    """Every entry of the weights manifest."""
    if not path.is_file():
        return []
    data = tomllib.loads(path.read_text())
    return [
        ManifestEntry(
            detector=row["detector"], file=row["file"], sha256=row.get("sha256"), size=row.get("size"),
            url=row.get("url"), licence=row.get("licence", ""), source=row.get("source", ""),
            made=row.get("made", ""), format=row.get("format", "safetensors"),
        )
        for row in data.get("weights", [])
    ]


def read_installed(path: Path = INSTALLED) -> dict[str, dict]:
    """The local install record: file (relative to the weights folder) -> its row."""
    if not path.is_file():
        return {}
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise WeightsError(f"{path}: the install record is not valid TOML ({exc})") from exc
    return {row["file"]: row for row in data.get("files", []) if "file" in row}


def manifest_path() -> Path:
    """The manifest: $WORKBENCH_WEIGHTS_MANIFEST, else weights/manifest.toml."""
    return Path(os.environ.get("WORKBENCH_WEIGHTS_MANIFEST") or MANIFEST)


def manifest_files(detector: str, path: Path | None = None, installed: Path | None = None) -> tuple[WeightFile, ...]:
    """The weight files the manifest lists for one detector.

    A file's sha256 is the manifest's; where the manifest has none (upstream publishes no
    checksum), the one recorded at first install in weights/installed.toml; else None, and
    verify() refuses the file as unverified.
    """
    records = read_installed(installed or weights_dir() / INSTALLED.name)
    out = []
    for e in read_manifest(path or manifest_path()):
        if e.detector != detector:
            continue
        weight = e.weight_file()
        rec = records.get(e.file)
        if not weight.sha256 and rec and rec.get("sha256"):
            weight = replace(weight, sha256=rec["sha256"], size=weight.size if weight.size is not None else rec.get("size"))
        out.append(weight)
    return tuple(out)


def verify(weight: WeightFile, path: Path | None = None) -> str:
    """Check a weights file against its recorded size and sha256 before anything reads it.

    Returns:
        The file's sha256.

    Raises:
        WeightsUnavailable: the file is not there.
        WeightsError: size or hash differ from the manifest, or no hash is recorded.
    """
    path = Path(path or weight.path)
    if not path.is_file():
        raise WeightsUnavailable(f"weights file {weight.file} is not installed")
    if weight.size is not None and path.stat().st_size != weight.size:
        raise WeightsError(f"{weight.file}: size {path.stat().st_size} differs from the manifest's {weight.size}; refusing to load")
    if not weight.sha256:
        raise WeightsError(f"{weight.file}: no sha256 recorded in the manifest; refusing to load unverified weights")
    actual = sha256_file(path)
    if actual != weight.sha256:
        raise WeightsError(
            f"{weight.file}: sha256 {actual[:16]}… does not match the manifest's {weight.sha256[:16]}…; "
            "the file was changed or corrupted, refusing to load"
        )
    return actual


def load_safetensors_strict(model: nn.Module, weight: WeightFile, path: Path | None = None) -> str:
    """Verify, then load a safetensors state dict into `model` with strict=True.

    Returns:
        The file's sha256.

    Raises:
        WeightsUnavailable, WeightsError: as verify(); also on missing, unexpected or
            mis-shaped keys (never a partial load).
    """
    digest = verify(weight, path)
    try:
        state = load_file(str(path or weight.path))
    except Exception as exc:  # a corrupt header or body
        raise WeightsError(f"{weight.file}: not a readable safetensors file ({exc})") from exc
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise WeightsError(f"{weight.file}: keys or shapes do not match the architecture: {exc}") from exc
    return digest


def load_torch_checkpoint(path: Path) -> dict:
    """Read a PyTorch pickle checkpoint without running code: weights_only=True, tensors only."""
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise WeightsError(f"{path.name}: refused by the safe loader (weights_only=True): {exc}") from exc


def check_state_dict(state: dict, expected: dict, what: str, name_of=lambda key: key, unexpected=()) -> None:
    """Refuse a converted state dict whose keys or shapes are not exactly the architecture's.

    Args:
        state: key -> tensor, in our naming.
        expected: key -> shape (a tuple or anything with .shape), in our naming.
        what: how the error names the file, e.g. "ckpt_x.pth: not a WM WS-DAN checkpoint".
        name_of: maps our key to the upstream name shown in messages.
        unexpected: upstream keys already found to have no place in the architecture.

    Raises:
        WeightsError: listing missing, unexpected and mis-shaped keys (never a partial load).
    """
    shape = lambda v: tuple(getattr(v, "shape", v))  # noqa: E731
    missing = [name_of(k) for k in expected if k not in state]
    unexpected = list(unexpected) + [
        name_of(k) for k, v in state.items() if k not in expected or not isinstance(v, torch.Tensor)]
    wrong = [f"{name_of(k)} {tuple(v.shape)} (expected {shape(expected[k])})" for k, v in state.items()
             if k in expected and isinstance(v, torch.Tensor) and tuple(v.shape) != shape(expected[k])]
    parts = []
    if missing:
        parts.append(f"missing {len(missing)} key(s): {', '.join(missing[:5])}")
    if unexpected:
        parts.append(f"unexpected {len(unexpected)} key(s): {', '.join(str(k) for k in unexpected[:5])}")
    if wrong:
        parts.append(f"wrong shape: {', '.join(wrong[:5])}")
    if parts:
        raise WeightsError(f"{what}; " + "; ".join(parts))
