"""Detectors a team trained on its own real footage (`python -m workbench train`): their folder under the installed-weights folder, name rules, and registration."""
from __future__ import annotations

import re
import tomllib
import warnings
from pathlib import Path

from torch import nn

from detectors.base import ModelCard
from detectors.registry import register, registered
from detectors.sbi import LITE_MEAN, LITE_STD, SbiDetector, build_efficientnet_lite0, read_metrics
from detectors.weights import CARDS_DIR, WeightFile, weights_dir

CUSTOM_DIR = "custom"  # under weights_dir(): custom/<name>/{<name>.safetensors, detector.toml, card.toml, ...}
NAME_RULE = "2 to 40 characters: lower-case letters, digits and single hyphens, starting with a letter"
_NAME_RE = re.compile(r"[a-z](?:-?[a-z0-9])+")
ARCHES = ("mobilenetv2", "efficientnet-lite0")


class CustomDetectorError(ValueError):
    """A name or folder that cannot become a user-trained detector; the message says why."""


def custom_root(root: Path | None = None) -> Path:
    """Where user-trained detectors live: <installed weights>/custom."""
    return (root or weights_dir()) / CUSTOM_DIR


def builtin_names() -> set[str]:
    """Names of the detectors that ship with the workbench (one card each)."""
    return {p.stem for p in CARDS_DIR.glob("*.toml")}


def check_name(name: str, root: Path | None = None, replace: bool = False) -> str:
    """Refuse a name that is malformed, a built-in detector's, or (unless replace) already trained.

    Returns:
        the name, unchanged.

    Raises:
        CustomDetectorError: with the reason.
    """
    if not isinstance(name, str) or len(name) > 40 or not _NAME_RE.fullmatch(name):
        raise CustomDetectorError(f"detector name {name!r} is not allowed: use {NAME_RULE}")
    if name in builtin_names():
        raise CustomDetectorError(f"{name!r} is a built-in detector; choose another name")
    if not replace and (custom_root(root) / name).exists():
        raise CustomDetectorError(f"a trained detector named {name!r} already exists in {custom_root(root) / name}; "
                                  "choose another name or pass --replace")
    return name


def _build(arch: str) -> nn.Module:
    if arch == "mobilenetv2":
        from detectors.sbi_mobilenetv2 import build_model  # lazy: import only the architecture asked for
    elif arch == "efficientnet-lite0":
        return build_efficientnet_lite0()
    else:
        raise CustomDetectorError(f"unknown architecture {arch!r}; known: {', '.join(ARCHES)}")
    return build_model()


def _norm(arch: str) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    return (LITE_MEAN, LITE_STD) if arch == "efficientnet-lite0" else None


def detector_from_folder(folder: Path, root: Path | None = None) -> type[SbiDetector]:
    """The detector class described by a trained folder (detector.toml + card.toml); not registered.

    Raises:
        CustomDetectorError: a missing or malformed file.
    """
    try:
        meta = tomllib.loads((folder / "detector.toml").read_text(encoding="utf-8"))
        card = ModelCard(**tomllib.loads((folder / "card.toml").read_text(encoding="utf-8")))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError, TypeError) as exc:
        raise CustomDetectorError(f"{folder}: not a trained detector ({exc})") from exc
    name, arch = meta.get("name"), meta.get("arch")
    if name != folder.name:
        raise CustomDetectorError(f"{folder}: detector.toml names {name!r}, the folder {folder.name!r}")
    if arch not in ARCHES:
        raise CustomDetectorError(f"{folder}: unknown architecture {arch!r}")
    base = custom_root(root).parent
    weight = WeightFile(
        file=str((folder / meta["file"]).relative_to(base)) if folder.is_relative_to(base) else str(folder / meta["file"]),
        sha256=meta["sha256"], size=meta["size"], licence="made by its user from their own footage; see the model card",
        source=f"python -m workbench train, {meta.get('created', '?')}", detector=name, format="safetensors",
    )
    norm = _norm(arch)
    attrs = {
        "name": name, "version": "1 (user-trained)", "card": card, "weights": (weight,),
        "threshold": float(meta.get("threshold", 0.5)),
        "metrics": read_metrics(folder / "metrics.json", meta["sha256"]),
        "install_hint": f"python -m workbench train --real FOLDER --name {name}",
        "build": lambda self, arch=arch: _build(arch),
        "gradcam_layer": lambda self, model, arch=arch: model.features[-1] if arch == "mobilenetv2" else model.bn2,
        # Not a module of this package: the registry's shipped/user split reads __module__.
        "__module__": "user-trained",
    }
    if norm:
        attrs["mean"], attrs["std"] = norm
    return type(f"UserTrained_{name.replace('-', '_')}", (SbiDetector,), attrs)


def register_installed(root: Path | None = None) -> list[str]:
    """Register every trained detector under custom_root(root) not registered yet; returns their names.

    A broken folder is skipped with a warning: it must not take the shipped detectors down with it.
    """
    names = []
    base = custom_root(root)
    for meta in sorted(base.glob("*/detector.toml")) if base.is_dir() else []:
        folder = meta.parent
        if folder.name in registered():
            continue
        try:
            check_name(folder.name, root, replace=True)
            register(detector_from_folder(folder, root))
        except (CustomDetectorError, ValueError, KeyError) as exc:
            warnings.warn(f"user-trained detector in {folder} skipped: {exc}", stacklevel=2)
            continue
        names.append(folder.name)
    return names
