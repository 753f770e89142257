"""Weights as data with a pedigree: where weights live, the one type for a weights file, the manifest, sha256 verification, safe checkpoint reading and strict loading."""
from __future__ import annotations

import hashlib
import os
import tomllib
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

# Every path the detectors read from, in one place.
PACKAGE_DIR = Path(__file__).resolve().parent
CARDS_DIR = PACKAGE_DIR / "cards"  # one model card per detector, <name>.toml
WEIGHTS_DIR = PACKAGE_DIR.parent / "weights"  # the manifest and the weights shipped in the repository
MANIFEST = WEIGHTS_DIR / "manifest.toml"
# The local install record (git-ignored), written by detectors.weights_manager: sha256, size,
# installed_at and trust ("manifest" or "first-use") of every downloaded and converted file.
INSTALLED = WEIGHTS_DIR / "installed.toml"


def weights_dir() -> Path:
    """Where installed weights live: $WORKBENCH_WEIGHTS_DIR, else the repository's weights/."""
    return Path(os.environ.get("WORKBENCH_WEIGHTS_DIR") or WEIGHTS_DIR)


class WeightsUnavailable(Exception):
    """The detector's weights are not installed; the message says how to install them."""


class WeightsError(Exception):
    """The weights are present but must not be used (hash mismatch, wrong keys, unsafe file)."""


@dataclass(frozen=True)
class WeightFile:
    """One weights file: a `[[weights]]` row of the manifest, and what a detector loads.

    Args:
        file: path relative to the weights folder.
        sha256, size: what the file must be (None where upstream publishes nothing and no
            install has recorded it yet; verify() then refuses it).
        detector: the detector that loads it ("" when built by hand, e.g. in tests).
        made: how the file was made (training run, conversion); format: "safetensors" or "pickle".
    """

    file: str
    sha256: str | None
    size: int | None = None
    url: str | None = None
    licence: str = ""
    source: str = ""
    detector: str = ""
    made: str = ""
    format: str = "safetensors"

    @property
    def path(self) -> Path:
        """The installed file; weights shipped in the repository stay found when an install
        folder is configured."""
        installed = weights_dir() / self.file
        shipped = WEIGHTS_DIR / self.file
        return shipped if not installed.is_file() and shipped.is_file() else installed


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def read_manifest(path: Path = MANIFEST) -> list[WeightFile]:
    """Every `[[weights]]` row of the weights manifest."""
    if not path.is_file():
        return []
    data = tomllib.loads(path.read_text())
    return [
        WeightFile(
            file=row["file"], sha256=row.get("sha256"), size=row.get("size"), url=row.get("url"),
            licence=row.get("licence", ""), source=row.get("source", ""), detector=row["detector"],
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


def listed_file(file: str, listed: tuple[WeightFile, ...]) -> WeightFile:
    """The manifest's row for `file` among a detector's `listed` files, or an unverified stand-in
    (sha256 None: loading refuses it) when the manifest lists no such file."""
    return next((w for w in listed if w.file == file), WeightFile(file, sha256=None))


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
        weight = e
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


def strip_module_prefix(state: dict, label: str = "checkpoint") -> dict:
    """Drop the `module.` prefix DataParallel adds; refuse if that makes two keys collide."""
    out = {}
    for key, value in state.items():
        new = key[len("module."):] if isinstance(key, str) and key.startswith("module.") else key
        if new in out:
            raise WeightsError(f"{label}: key {key!r} collides with {new!r} once 'module.' is stripped")
        out[new] = value
    return out


def state_dict_of(ckpt, label: str = "checkpoint") -> dict[str, torch.Tensor]:
    """The tensors of a loaded checkpoint: unwrap `state_dict`, strip `module.`, tensors only."""
    if isinstance(ckpt, dict) and isinstance(ckpt.get("state_dict"), dict):
        ckpt = ckpt["state_dict"]
    if not isinstance(ckpt, dict) or not ckpt:
        raise WeightsError(f"{label}: not a state dict (got {type(ckpt).__name__})")
    bad = [str(k) for k, v in ckpt.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise WeightsError(f"{label}: not a plain state dict; non-tensor entries: {', '.join(bad[:5])}")
    return strip_module_prefix(ckpt, label)


def generic_convert(raw_path: Path) -> dict[str, torch.Tensor]:
    """Read a pickle checkpoint safely (weights_only=True) and return its bare state dict."""
    return state_dict_of(load_torch_checkpoint(Path(raw_path)), Path(raw_path).name)


def as_fp32(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Floating tensors as contiguous fp32 (upstream fp16 checkpoints included); others unchanged."""
    return {k: v.detach().to(torch.float32 if v.is_floating_point() else v.dtype).contiguous() for k, v in state.items()}


def combined_sha256(digests: list[str]) -> str:
    """The weights hash of a detector made of several files: the file's own hash when there is one."""
    return digests[0] if len(digests) == 1 else hashlib.sha256("".join(digests).encode()).hexdigest()
