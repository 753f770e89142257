"""The detector registry: names to detector classes; it fills itself on first lookup."""
from __future__ import annotations

import importlib
import threading
from typing import TypeVar

from detectors.base import Detector
from detectors.weights import CARDS_DIR

_REGISTRY: dict[str, type[Detector]] = {}
T = TypeVar("T", bound=type[Detector])


class UnknownDetector(KeyError):
    def __str__(self) -> str:  # KeyError quotes its message; say it plainly
        return self.args[0]


def register(cls: T) -> T:
    """Class decorator: add a detector under its `name`. A duplicate name is an error."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name")
    if cls.name in _REGISTRY:
        raise ValueError(f"a detector named {cls.name!r} is already registered")
    if cls.card is None:
        raise ValueError(f"detector {cls.name!r} has no model card")
    missing = cls.card.problems()
    if missing:
        raise ValueError(f"detector {cls.name!r} has an incomplete model card: empty {', '.join(missing)}")
    _REGISTRY[cls.name] = cls
    return cls


def registered() -> set[str]:
    """The names registered so far, without triggering discovery."""
    return set(_REGISTRY)


def unregister(name: str) -> None:
    """Remove a detector (tests register throwaway detectors and clean up after)."""
    _REGISTRY.pop(name, None)


_DISCOVERY_LOCK = threading.RLock()
_discovered = False


def discover() -> None:
    """Import every shipped detector once: each has a model card, cards/<name>.toml, and a module
    detectors/<name with - as _>.py that registers it. A card without its module is an error.
    Then the detectors a user trained (`python -m workbench train`) in the installed-weights folder."""
    global _discovered
    if _discovered:
        return
    with _DISCOVERY_LOCK:
        if _discovered:
            return
        for card in sorted(CARDS_DIR.glob("*.toml")):
            # importlib, not an import statement: the registry sits below the detectors it finds.
            importlib.import_module(f"detectors.{card.stem.replace('-', '_')}")
        importlib.import_module("detectors.custom").register_installed()
        _discovered = True


def list_detectors() -> list[str]:
    """Registered detector names, sorted."""
    discover()
    return sorted(_REGISTRY)


def default_detectors() -> list[str]:
    """Names of the detectors used when the user names none."""
    return [name for name in list_detectors() if _REGISTRY[name].default]


def get_detector(name: str, device: str | None = None) -> Detector:
    """A new instance of a registered detector (its loaded model is shared; see Detector.model).

    Raises:
        UnknownDetector: with the list of known names.
    """
    return detector_class(name)() if device is None else detector_class(name)(device)


def detector_class(name: str) -> type[Detector]:
    """The class registered under `name`.

    Raises:
        UnknownDetector: with the list of known names.
    """
    discover()
    if name not in _REGISTRY:
        known = ", ".join(list_detectors()) or "none"
        raise UnknownDetector(f"unknown detector {name!r}; registered detectors: {known}")
    return _REGISTRY[name]


def describe_all() -> list[dict]:
    """Every registered detector: name, version, default, weights status, input size and model card."""
    rows = []
    for name in list_detectors():
        det = get_detector(name)
        status = det.weights_status()
        rows.append({"name": name, "version": det.version, "default": det.default, "weights": status.detail,
                     "installed": status.installed, "card": det.card.to_dict(),
                     # A video-level detector has no single crop size: its members each take their own.
                     "kind": det.kind, "input": None if det.kind == "video" else det.crop.size})
    return rows
