"""Face-swap detectors: the interface, the registry, and (imported here) every detector."""
from detectors.base import (  # noqa: F401
    SCOPE_CAVEAT,
    CropPolicy,
    Detector,
    ModelCard,
    SamplingPolicy,
    Status,
    WeightFile,
    WeightsError,
    WeightsUnavailable,
)
from detectors.registry import default_detectors, get_detector, list_detectors, register  # noqa: F401
