"""The detector interface: what a detector declares (card, crop, sampling, weights) and `predict`."""
from __future__ import annotations

import threading
import tomllib
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass
from enum import Enum
from typing import Sequence

import numpy as np
import torch
from torch import nn

from detectors.weights import CARDS_DIR, WeightFile
from workbench.geometry import CropPolicy, crop_face, heatmap_on_frame

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

SCOPE_CAVEAT = (
    "Face-swap detector: a score is the model's estimate, not evidence on its own. It does not "
    "judge audio, lip-sync or reenactment, fully synthetic faces, or edits outside the face. "
    "Read the model card, including its known biases, before relying on it."
)


class Status(str, Enum):
    """What a detector's result is. Anything but OK carries a reason and no score."""

    OK = "ok"
    INCONCLUSIVE = "inconclusive"
    UNAVAILABLE = "unavailable"
    ERROR = "error"


@dataclass(frozen=True)
class ModelCard:
    """Plain-language facts about a detector, shown wherever its results are.

    Every field must say something: a detector whose card leaves one empty cannot be
    registered. Where a figure was not measured, the card says "not measured".
    """

    summary: str
    detects: str
    does_not_detect: str
    training_data: str
    known_biases: str
    figures: str
    failure_modes: str
    licence: str
    source: str
    intended_use: str = ""
    out_of_scope_uses: str = ""
    evaluation_data: str = ""
    per_group_figures: str = ""
    scope_caveat: str = SCOPE_CAVEAT

    def to_dict(self) -> dict:
        return asdict(self)

    def problems(self) -> list[str]:
        """The fields left empty (a complete card has none)."""
        return [k for k, v in asdict(self).items() if not str(v).strip()]


# How cards are shown (app, reports, command line): label and field, in reading order.
CARD_FIELDS = [
    ("Summary", "summary"), ("Intended use", "intended_use"), ("Out-of-scope uses", "out_of_scope_uses"),
    ("Detects", "detects"), ("Does not detect", "does_not_detect"), ("Training data", "training_data"),
    ("Evaluation data", "evaluation_data"), ("Measured figures", "figures"), ("Per-group figures", "per_group_figures"),
    ("Known biases", "known_biases"), ("Failure modes", "failure_modes"), ("Licence", "licence"), ("Source", "source"),
]



def load_card(name: str, figures_suffix: str = "") -> ModelCard:
    """A detector's model card from detectors/cards/<name>.toml (one file per detector).

    Args:
        figures_suffix: measured figures appended to the card's own `figures` text.
    """
    data = tomllib.loads((CARDS_DIR / f"{name}.toml").read_text(encoding="utf-8"))
    if figures_suffix:
        data["figures"] = f"{data.get('figures', '')} {figures_suffix}".strip()
    known = set(ModelCard.__dataclass_fields__) - {"scope_caveat"}
    unknown = set(data) - known
    if unknown:
        raise ValueError(f"card {name}: unknown fields {', '.join(sorted(unknown))}")
    return ModelCard(**data)


@dataclass(frozen=True)
class SamplingPolicy:
    """Which frames a detector scores.

    kind:
        "analysed": every frame the analysis samples (our per-frame timeline).
        "even": `count` evenly spaced frames over the whole video (upstream DFDC practice).
        "every_nth": every `step`-th frame from frame `start`, at most `count` frames (0: all).
    faces: "all" scores every tracked face on a frame; "largest" only the largest one.
    """

    kind: str = "analysed"
    count: int = 0
    step: int = 1
    start: int = 0  # first frame for "every_nth"
    faces: str = "all"  # "all" faces of a frame, or only the "largest" (some upstream detectors)

    def frames(self, total_frames: int, analysed: Sequence[int]) -> list[int]:
        """Frame numbers this detector wants, given the video length and the analysed frames."""
        if self.kind == "analysed":
            return sorted(set(analysed))
        if self.kind == "even":
            if total_frames <= 0:
                return []
            n = min(self.count, total_frames)
            return sorted({int(i) for i in np.linspace(0, total_frames - 1, n, dtype=np.int64)})
        if self.kind == "every_nth":
            picked = list(range(self.start, total_frames, max(1, self.step)))
            return picked[: self.count] if self.count else picked
        raise ValueError(f"unknown sampling policy {self.kind!r}")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class FaceFinder:
    """How a detector's authors found faces, when the detector finds its own on every frame it scores.

    Our tracked faces (found every k-th frame and interpolated between) are replaced, for such a
    detector, by this finder run on each frame it samples; the pipeline builds the finder.

    kind: "mtcnn" (facenet-pytorch MTCNN with the settings below) or "retinaface" (the detector's
        own RetinaFace, loaded with its weights; the detector's `find_faces` runs it).
    keep: "all" boxes the finder returns, or only the "largest".
    scale: the frame is resized by this factor (PIL, bicubic) before detection; boxes are divided
        by it again.
    thresholds: MTCNN's P-, R- and O-net thresholds; RetinaFace: its one confidence threshold.
    factor, min_face_size: MTCNN's image-pyramid factor and smallest face (pixels of the resized frame).
    source: the upstream file that configured it this way.
    """

    kind: str
    keep: str = "all"
    scale: float = 1.0
    thresholds: tuple[float, ...] = (0.6, 0.7, 0.7)  # facenet-pytorch's defaults
    factor: float | None = 0.709
    min_face_size: int | None = 20
    source: str = ""

    def __post_init__(self):
        if self.kind not in ("mtcnn", "retinaface"):
            raise ValueError(f"unknown face finder {self.kind!r}; expected 'mtcnn' or 'retinaface'")
        if self.keep not in ("all", "largest"):
            raise ValueError(f"unknown face choice {self.keep!r}; expected 'all' or 'largest'")
        if not 0 < self.scale <= 1:
            raise ValueError(f"face finder scale must be in (0, 1], got {self.scale}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["thresholds"] = list(self.thresholds)
        return d


@dataclass
class WeightStatus:
    installed: bool
    detail: str
    sha256: str | None = None


def upstream_arithmetic() -> None:
    """Full fp32 precision on a GPU, as every reproduced detector's authors ran (2019-2020 stacks).

    torch lets cuDNN convolutions use TF32 on Ampere and newer GPUs by default, which rounds
    their inputs to 10 mantissa bits; the upstream solutions never ran that way. Set once, for
    the whole process, when a model is loaded on a CUDA device (an fp16 detector is unaffected).
    """
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False


# Loaded models shared by detector instances: (class, device, weight files) -> (model, weights sha256, lock).
_LOADED: dict[tuple, tuple[nn.Module, str | None, threading.Lock]] = {}
_LOAD_LOCK = threading.Lock()


class Detector(ABC):
    """A face-swap detector. Subclasses set the class attributes and build a model.

    The model maps a normalised batch (N, 3, size, size) to one logit per crop; `predict`
    turns uint8 RGB crops into probabilities that the face is manipulated.
    """

    name: str = ""
    version: str = "0"
    kind: str = "crop"  # "crop": scores one face crop at a time; "video": see detectors.video.VideoDetector
    card: ModelCard | None = None
    crop: CropPolicy = CropPolicy(size=224)
    sampling: SamplingPolicy = SamplingPolicy()
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    weights: tuple[WeightFile, ...] = ()
    threshold: float = 0.5
    default: bool = False
    batch_size: int = 32
    install_hint: str = ""
    # The authors' own video-level rule, in words, for a detector reproduced from a published solution.
    # When set, `upstream_aggregate` makes the headline video score and our track rule's score is kept
    # as its explanation; our gates (no face, too few frames) still decide whether there is a score.
    upstream_rule: str | None = None
    # True when `cut` needs facial landmarks: the pipeline then detects faces on every frame this
    # detector samples (interpolated boxes carry no landmarks).
    needs_landmarks: bool = False
    # Run in fp16 on a CUDA device, as the upstream authors did (weights stay fp32 on disk and on CPU).
    half_on_gpu: bool = False
    # How this detector's authors found faces, when it must find its own on every frame it scores
    # (None: the faces our tracker finds; see FaceFinder).
    face_finder: FaceFinder | None = None
    # How the loaded model's weights are laid out: channels_last suits 2-D convolutions; a detector
    # with 3-D convolutions (5-D weights, which channels_last refuses) keeps torch's own layout.
    memory_format: torch.memory_format = torch.channels_last

    def __init__(self, device: torch.device | str = "cpu") -> None:
        # Per instance: the registry hands out a fresh instance per use, so a device chosen by one
        # caller never changes another's. The loaded model itself is shared (see `model`).
        self._model: nn.Module | None = None
        self._device = torch.device(device)
        self._weights_sha256: str | None = None

    # -- what subclasses provide -------------------------------------------------------------
    @abstractmethod
    def build(self) -> nn.Module:
        """A fresh model with this detector's exact architecture (random or no weights)."""

    @abstractmethod
    def load_weights(self, model: nn.Module) -> str:
        """Load verified weights into `model` strictly; return the weights' sha256.

        Raises:
            WeightsUnavailable: not installed.
            WeightsError: present but refused (hash mismatch, wrong keys, unsafe file).
        """

    @abstractmethod
    def gradcam_layer(self, model: nn.Module) -> nn.Module:
        """The layer Grad-CAM should use inside `model` (what gradcam_target returned)."""

    # -- shared behaviour --------------------------------------------------------------------
    def weights_status(self) -> WeightStatus:
        """Whether the weights are installed (existence only; hashes are checked at load)."""
        missing = [w.file for w in self.weights if not w.path.is_file()]
        if missing:
            hint = self.install_hint or f"python -m workbench weights install {self.name}"
            return WeightStatus(False, f"not installed: {', '.join(missing)}; install with `{hint}`")
        return WeightStatus(True, "installed", self.weights[0].sha256 if len(self.weights) == 1 else None)

    @property
    def weights_sha256(self) -> str | None:
        return self._weights_sha256

    def model(self, device: torch.device | str | None = None) -> nn.Module:
        """The loaded model in eval mode on this instance's device.

        Loaded models are shared by every instance of the same detector class with the same
        weight files on the same device (loaded once per process, under a lock), so many
        sessions can use a detector without loading it again. Shared models are used for
        inference only; Grad-CAM, which hooks the model, holds `model_lock()`.
        """
        if device is not None and torch.device(device) != self._device:
            self._device = torch.device(device)
            self._model = None
        if self._model is None:
            key = (type(self), str(self._device), self._weights_key())
            with _LOAD_LOCK:
                loaded = _LOADED.get(key)
                if loaded is None:
                    if self._device.type == "cuda":
                        upstream_arithmetic()
                    model = self.build()
                    sha256 = self.load_weights(model)
                    # channels_last roughly doubles CPU convolution throughput (measured: 34 -> 71 crops/s).
                    model = model.eval().to(self._device, dtype=self.compute_dtype(), memory_format=self.memory_format)
                    loaded = _LOADED[key] = (model, sha256, threading.Lock())
            self._model, self._weights_sha256 = loaded[0], loaded[1]
        return self._model

    def model_lock(self) -> threading.Lock:
        """The lock of this instance's shared model (held while hooks are on it, e.g. Grad-CAM)."""
        model = self.model()
        return next(lock for m, _, lock in _LOADED.values() if m is model)

    def _weights_key(self) -> tuple:
        """Which weight files a load would read (path, size, mtime): a changed file is a new load."""
        key = []
        for w in self.weights:
            try:
                st = w.path.stat()
                key.append((str(w.path), st.st_size, st.st_mtime_ns))
            except OSError:
                key.append((str(w.path), None, None))
        return tuple(key)

    def compute_dtype(self) -> torch.dtype:
        """fp16 on a CUDA device for detectors whose authors ran them so, else fp32."""
        return torch.float16 if self.half_on_gpu and self._device.type == "cuda" else torch.float32

    def preprocess(self, crops: np.ndarray) -> torch.Tensor:
        """uint8 RGB crops (N, H, W, 3) at the crop size -> the normalised tensor the model sees."""
        if crops.ndim != 4 or crops.shape[-1] != 3:
            raise ValueError(f"expected (N, H, W, 3) RGB crops, got shape {crops.shape}")
        x = torch.from_numpy(np.ascontiguousarray(crops)).permute(0, 3, 1, 2).float().div_(255.0)
        mean = torch.tensor(self.mean).view(1, 3, 1, 1)
        std = torch.tensor(self.std).view(1, 3, 1, 1)
        return ((x - mean) / std).to(self._device, dtype=self.compute_dtype()).contiguous(memory_format=torch.channels_last)

    @torch.inference_mode()
    def predict(self, crops: np.ndarray) -> np.ndarray:
        """Probabilities (N,) in [0, 1] that each face crop is manipulated."""
        model = self.model()
        out = []
        for start in range(0, len(crops), self.batch_size):
            logits = model(self.preprocess(crops[start : start + self.batch_size]))
            out.append(torch.sigmoid(logits.float().reshape(-1)).cpu().numpy())
        probs = np.concatenate(out) if out else np.zeros(0, dtype=np.float32)
        if not np.all(np.isfinite(probs)):
            raise FloatingPointError("the model returned a non-finite score")
        return probs.astype(np.float64)

    def threshold_note(self) -> str | None:
        """What the operating threshold means on the detector's own evaluation data, when known."""
        return None

    def cut(self, frame: np.ndarray, box, landmarks: np.ndarray | None) -> np.ndarray | None:
        """This detector's input for one face: by default the crop policy's cut of the box.

        Returns:
            uint8 RGB crop, or None to leave this face unscored on this frame.
        """
        return crop_face(frame, box, self.crop)

    def predict_members(self, crops: np.ndarray) -> np.ndarray:
        """Per-member probabilities (M, N) for ensembles; predict() is combine_members of them."""
        return self.predict(crops)[None]

    def combine_members(self, member_scores: np.ndarray) -> np.ndarray:
        """Per-crop score (N,) from per-member scores (M, N): the mean unless the authors weighted them."""
        return member_scores.mean(axis=0)

    def place_heatmap(self, frame: np.ndarray, box, landmarks: np.ndarray | None, heatmap: np.ndarray) -> np.ndarray:
        """The frame with a heatmap over this detector's input put back where that input came from."""
        return heatmap_on_frame(frame, box, self.crop, heatmap)

    def upstream_aggregate(self, member_scores: np.ndarray) -> float | None:
        """The authors' video score from all face scores (M members x N faces, in frame order).

        Returns:
            The score, or None where the authors' rule gives none (their code's fallback is not a score).
        """
        return None

    def gradcam_target(self, model: nn.Module) -> nn.Module:
        """The module Grad-CAM runs forward on: one logit per crop (ensembles: one member)."""
        return model

    def find_faces(self, frame: np.ndarray) -> list:
        """Faces on one RGB frame found by the detector's own finder (face_finder.kind "retinaface",
        whose weights the detector loads); MTCNN finders are built by the pipeline instead.

        Returns:
            workbench.faces.Face objects in full-resolution pixels, largest first.
        """
        raise NotImplementedError(f"{self.name} declares no face finder of its own")

    def describe(self) -> dict:
        """Everything a result or report should carry about this detector."""
        described = {
            "name": self.name,
            "version": self.version,
            "crop": self.crop.to_dict(),
            "sampling": self.sampling.to_dict(),
            "mean": list(self.mean),
            "std": list(self.std),
            "threshold": self.threshold,
            "upstream_rule": self.upstream_rule,
            # The fields that decide what is loaded (not the manifest's notes on how a file was made).
            "weights": [{k: getattr(w, k) for k in ("file", "sha256", "size", "url", "licence", "source")}
                        for w in self.weights],
        }
        if self.face_finder is not None:
            # Part of the reuse key: results made with another way of finding faces are not reused.
            # Left out when absent, so the keys of detectors using our tracked faces do not change.
            described["face_finder"] = self.face_finder.to_dict()
        return described

