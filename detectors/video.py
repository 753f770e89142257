"""Video-level detectors: those whose authors judged a whole video (their own faces, tubes, clips), and what they return."""
from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np
import torch
from torch import nn

from detectors.base import Detector, Status, WeightStatus
from detectors.weights import WeightFile, combined_sha256, load_safetensors_strict
from workbench.video import VideoInfo


Progress = Callable[[int, int, str], None]


class MemberStatus:
    """What became of one member model on one video."""

    OK = "ok"
    FAILED = "failed"  # it ran and raised, or returned a non-finite value: named with the reason, left out of the rule
    UNAVAILABLE = "unavailable"  # its weights are not installed (an optional member): named, left out of the rule


@dataclass
class Member:
    """One member model's part in a video result."""

    name: str
    status: str
    reason: str | None = None
    value: float | None = None  # the member's own video-level value, where the authors' rule has one

    def __post_init__(self):
        if self.status not in (MemberStatus.OK, MemberStatus.FAILED, MemberStatus.UNAVAILABLE):
            raise ValueError(f"unknown member status {self.status!r}")
        if self.status != MemberStatus.OK and not self.reason:
            raise ValueError(f"member {self.name}: a {self.status} member must say why")
        if self.status != MemberStatus.OK and self.value is not None:
            raise ValueError(f"member {self.name}: only an ok member may carry a value")


@dataclass
class VideoFace:
    """One face as the detector's own face finding saw it: where, and what the rule made of it.

    `frames` and `boxes` (x1, y1, x2, y2 in full-resolution pixels) are where the face was found or
    placed on the frames the detector read; they let the pipeline file it under our face tracks.
    """

    id: int
    frames: list[int]
    boxes: list[tuple[float, float, float, float]]
    score: float | None = None
    members: dict[str, float | None] = field(default_factory=dict)
    reason: str | None = None  # why this face has no score

    def __post_init__(self):
        if len(self.frames) != len(self.boxes):
            raise ValueError(f"face {self.id}: {len(self.frames)} frames but {len(self.boxes)} boxes")


@dataclass
class VideoVerdict:
    """A video-level detector's result on one video. A score exists only when status is ok.

    frame_scores: (frame, face id, value) for values that belong to one frame (a frame model's
        probability), shown on the timeline; values of a whole clip or tube belong to `faces`.
    frames_analysed: the frames the detector actually read.
    notes: plain-language facts an analyst must see beside the score (e.g. "the first 3.3 s only").
    """

    status: str
    score: float | None = None
    reason: str | None = None
    members: list[Member] = field(default_factory=list)
    faces: list[VideoFace] = field(default_factory=list)
    frame_scores: list[tuple[int, int, float]] = field(default_factory=list)
    frames_analysed: list[int] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    timings: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.status not in {s.value for s in Status}:
            raise ValueError(f"unknown status {self.status!r}")
        if self.status != Status.OK.value and self.score is not None:
            raise ValueError("only an ok result may carry a score")
        if self.status == Status.OK.value and (self.score is None or not math.isfinite(self.score)):
            raise ValueError(f"an ok result needs a finite score, got {self.score!r}")
        if self.status != Status.OK.value and not self.reason:
            raise ValueError(f"a {self.status} result must say why")

    def details(self) -> dict:
        """The members, faces, frames and notes as plain values (stored with the result)."""
        return {
            "kind": "video",
            "members": [asdict(m) for m in self.members],
            "faces": [{"id": f.id, "frames": list(f.frames), "boxes": [[round(float(v), 2) for v in b] for b in f.boxes],
                       "score": f.score, "members": dict(f.members), "reason": f.reason} for f in self.faces],
            "frames_analysed": len(self.frames_analysed),
            "first_frame": self.frames_analysed[0] if self.frames_analysed else None,
            "last_frame": self.frames_analysed[-1] if self.frames_analysed else None,
            "notes": list(self.notes),
        }


class VideoRun(ABC):
    """One video going through a video-level detector: frames in, then one verdict.

    The pipeline decodes each video once and hands every detector the frames it asked for
    (`VideoDetector.wanted_frames`), in increasing order, as RGB uint8 (H, W, 3) at full
    resolution. A run keeps only what its authors' method needs. Frames the decoder could not give
    are never added: a run judges what it was given and says so in `frames_analysed`.
    """

    @abstractmethod
    def add(self, n: int, rgb: np.ndarray) -> None:
        """Take frame `n` (one of the wanted frames, in order)."""

    @abstractmethod
    def finish(self) -> VideoVerdict:
        """The verdict once every wanted frame was given. Raising is the detector failing (status error)."""


class VideoDetector(Detector):
    """A detector reproduced from authors who judged whole videos with their own face finding.

    It reads the frames its authors read (`wanted_frames`), finds faces its authors' way, scores
    members on tubes, windows or frames, and returns one `VideoVerdict` headlined by the authors'
    video rule. Members that fail or are not installed are named and left out; never a stand-in value.
    `build` returns every member (and the face finder) in one module; `load_weights` loads them strictly.
    """

    kind = "video"
    # Video models hold 3-D convolutions, whose 5-D weights channels_last refuses.
    memory_format = torch.preserve_format

    @abstractmethod
    def wanted_frames(self, info: VideoInfo) -> list[int]:
        """The frame numbers this detector reads from a video, in increasing order (its frame policy)."""

    @abstractmethod
    def start(self, info: VideoInfo, progress: Progress | None = None) -> VideoRun:
        """A fresh run for one video (the model is loaded by then).

        Args:
            progress: called as progress(done, total, stage) while the run works (may be None).
        """

    def member_weights(self) -> dict[str, WeightFile]:
        """Each member's weights file, keyed by the member's attribute name on the built model
        ({}: the detector lists its files in `weights` only)."""
        return {}

    def weights_status(self) -> WeightStatus:
        """Installed when every member's file is there (a detector with optional members says otherwise)."""
        if not self.member_weights():
            return super().weights_status()
        missing = [w.file for w in self.member_weights().values() if not w.path.is_file()]
        if missing:
            return WeightStatus(False, f"not installed: {', '.join(missing)}; install with `{self.install_hint}`")
        return WeightStatus(True, "installed")

    def load_members(self, model: nn.Module) -> str:
        """Each member strictly from its verified safetensors file; a sha256 over the files' sha256s."""
        return combined_sha256([load_safetensors_strict(getattr(model, m), w) for m, w in self.member_weights().items()])

    def unavailable_members(self) -> dict[str, str]:
        """Optional members whose weights are not installed, with why ({} when all are there).
        They are named on every result and left out of the authors' rule."""
        return {}

    def use_random_weights(self, seed: int = 0) -> None:
        """Architecture tests and the benchmark: this instance runs a freshly built, random-init
        model of the exact layout (never shared with other instances, never a real result)."""
        torch.manual_seed(seed)
        self._model = self.build().eval().to(self._device, memory_format=self.memory_format)
        self._weights_sha256 = None

    # A video detector has no per-crop path: the pipeline calls `start`, never `predict`.
    def predict(self, crops: np.ndarray) -> np.ndarray:
        raise TypeError(f"{self.name} is a video-level detector: it scores whole videos, not single crops")

    def gradcam_layer(self, model: nn.Module) -> nn.Module:
        raise TypeError(f"{self.name} is a video-level detector: Grad-CAM on single crops is not offered for it")

    def describe(self) -> dict:
        described = super().describe()
        described["kind"] = self.kind
        return described
