"""The detector registry: names to detector classes, filled by explicit imports."""
from __future__ import annotations

from typing import TypeVar

from detectors.base import Detector

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


def unregister(name: str) -> None:
    """Remove a detector (tests register throwaway detectors and clean up after)."""
    _REGISTRY.pop(name, None)


def list_detectors() -> list[str]:
    """Registered detector names, sorted."""
    return sorted(_REGISTRY)


def default_detectors() -> list[str]:
    """Names of the detectors used when the user names none."""
    return [name for name in list_detectors() if _REGISTRY[name].default]


_INSTANCES: dict[str, Detector] = {}


def get_detector(name: str) -> Detector:
    """The (shared) instance of a registered detector.

    Raises:
        UnknownDetector: with the list of known names.
    """
    if name not in _REGISTRY:
        known = ", ".join(list_detectors()) or "none"
        raise UnknownDetector(f"unknown detector {name!r}; registered detectors: {known}")
    inst = _INSTANCES.get(name)
    if inst is None or type(inst) is not _REGISTRY[name]:
        inst = _INSTANCES[name] = _REGISTRY[name]()
    return inst


def detector_class(name: str) -> type[Detector]:
    get_detector(name)
    return _REGISTRY[name]


