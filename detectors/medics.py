"""The Medics (DFDC 5th, as FakeFinder deployed it): the video-level detector, its frame policies, members, weights and verdict.

The authors' method (FakeFinder `detectors/medics/ensemble.py` and `face_utils.py` at 780839f, a
port of the authors' Kaggle notebook): only the first 100 frames; MTCNN on frames 0, 10, ..., 90
shrunk to 0.25 x 1920 / max(w, h) (again at 0.5 x when no face is kept); each face a region of
>= 30 frames; seven 3-D CNNs on the face's static box (flip TTA, p = 1 - softmax[1]) and a 2-D
SE-ResNeXt50 on up to 32 of its frames (lower median); per model the mean over faces; the video
score the mean of the models' values, clipped to [0.001, 0.999] (`rule_medics`).

Differences, all named on the result: each member runs on its own, so a failing one is named and
the others are used (upstream's single try/except silently dropped that model and every later
3-D one); no face is `inconclusive`, not 0.5. The geometry lives in detectors/medics_faces.py, the
networks in detectors/medics_models.py. Written from the research spec, not copied.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from detectors import medics_faces as mf
from detectors.base import Status, load_card
from detectors.fakefinder_rules import MEDICS_2D, MEDICS_MEMBERS, rule_medics
from detectors.medics_models import MEMBER_2D, MEMBERS_3D, build_member_2d, build_member_3d, face_score_2d, face_score_3d
from detectors.registry import register
from detectors.video import Member, MemberStatus, Progress, VideoDetector, VideoFace, VideoRun, VideoVerdict
from detectors.weights import (
    WeightFile, WeightsError, as_fp32, check_state_dict, listed_file, load_torch_checkpoint,
    manifest_files, state_dict_of,
)
from workbench.video import VideoInfo

NAME = "medics"
# member -> (file inside FakeFinder's medics.tar.gz, converted file under weights/)
FILES = {member: (f"{stem}.model", f"medics/{stem}.safetensors") for member, stem, _ in MEMBERS_3D}
FILES[MEMBER_2D[0]] = (f"{MEMBER_2D[1]}.PTH", f"medics/{MEMBER_2D[1]}.safetensors")
KIND_3D = {member: kind for member, _, kind in MEMBERS_3D}
# facenet-pytorch MTCNN as FakeFinder's Ensemble built it (ensemble.py l.114-115; constants.py).
MTCNN_THRESHOLDS = (0.8, 0.8, 0.9)
MTCNN_FACTOR = 0.71
AUTHORS = "authors"
WHOLE = "whole"
FRAME_POLICIES = (AUTHORS, WHOLE)
WINDOW = mf.MAX_FRAMES  # frames per window: the authors' limit, 100
FIRST_FRAMES_NOTE = "first 100 frames (about 3.3 s) only: the authors' own limit; the rest of the video is not looked at"


def build_face_finder(device: torch.device | str = "cpu") -> nn.Module:
    """facenet-pytorch MTCNN with the Medics' settings (its own weights ship inside facenet-pytorch)."""
    from facenet_pytorch import MTCNN  # lazy: heavy import, only when the detector is built

    return MTCNN(margin=0, keep_all=True, post_process=False, select_largest=False,
                 thresholds=list(MTCNN_THRESHOLDS), factor=MTCNN_FACTOR, device=torch.device(device))


class MedicsModels(nn.Module):
    """Every Medics network in one module: the seven 3-D members and `srxt50` under their member
    names (each with upstream's own keys inside), and `mtcnn`, the face finder."""

    def __init__(self):
        super().__init__()
        for member, _, kind in MEMBERS_3D:
            self.add_module(member, build_member_3d(kind))
        self.add_module(MEMBER_2D[0], build_member_2d())
        self.mtcnn = build_face_finder()


# -- weights --------------------------------------------------------------------------------------
def _member_of_file(name: str) -> str | None:
    for member, (raw, _) in FILES.items():
        if name == raw or (member == MEDICS_2D and name.lower() == raw.lower()):
            return member
    return None


def _expected_shapes(member: str) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        model = build_member_2d() if member == MEDICS_2D else build_member_3d(KIND_3D[member])
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def convert_checkpoint(raw_path: Path) -> dict[str, torch.Tensor]:
    """Read one of the eight upstream Medics files safely and return the state dict its member loads.

    Upstream loads each file with a plain strict `load_state_dict(torch.load(path))`: bare state
    dicts without prefix. A `state_dict` wrapper or a DataParallel `module.` prefix is undone
    defensively. Every key and shape is checked; floating tensors become fp32.

    Raises:
        WeightsError: unknown file name, refused or unreadable pickle, or any key/shape mismatch.
    """
    raw_path = Path(raw_path)
    member = _member_of_file(raw_path.name)
    if member is None:
        known = ", ".join(raw for raw, _ in FILES.values())
        raise WeightsError(f"{raw_path.name}: not a Medics weights file (expected one of {known})")
    state = state_dict_of(load_torch_checkpoint(raw_path), raw_path.name)
    check_state_dict(state, _expected_shapes(member), f"{raw_path.name}: not the Medics {member} checkpoint")
    return as_fp32(state)


# -- one window of frames through the authors' method ---------------------------------------------
class FrameStack:
    """Consecutive frames held as a list, indexed like upstream's (frames, H, W, 3) video array,
    so a face's crop is cut without stacking the whole window first."""

    def __init__(self, frames: list[np.ndarray]):
        self.frames = frames

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.frames), *self.frames[0].shape) if self.frames else (0,)

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, key):
        first, rest = (key[0], key[1:]) if isinstance(key, tuple) else (key, ())
        if isinstance(first, slice):
            picked = self.frames[first]
            if not picked:
                return np.zeros((0, 0, 0, 3), np.uint8)
            return np.stack([f[rest] for f in picked])
        return self.frames[first][rest]


@dataclass
class WindowResult:
    """What the authors' method made of one window of frames (the whole method for the authors' policy)."""

    start: int
    frames: int
    scores: dict[str, float] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)
    faces: list[VideoFace] = field(default_factory=list)
    status: str = Status.OK.value
    score: float | None = None
    reason: str | None = None
    search: str = ""
    notes: list[str] = field(default_factory=list)


def find_faces(mtcnn, frames: list[np.ndarray]) -> mf.FaceSearch:
    """The authors' face search on one window: MTCNN (one batched call) on its frames 0, 10, ..., 90,
    shrunk, with upstream's retries (medics_faces.search_faces)."""
    height, width = frames[0].shape[:2]
    sampled = mf.face_finding_frames(len(frames))

    def detect(scale: float):
        small = np.stack([mf.shrink_frame(frames[i], scale) for i in sampled])
        boxes, probs = mtcnn.detect(small, landmarks=False)
        return list(boxes), list(probs), small.shape[:3]

    return mf.search_faces(detect, width, height)


def _member_values(model: nn.Module, member: str, video: FrameStack, regions, scale: float) -> list[float]:
    """One member's value for each face (raises on the first face it cannot score: upstream's member fails whole)."""
    net = getattr(model, member)
    values = []
    for i, region in enumerate(regions):
        try:
            value = (face_score_2d(net, video, region, scale) if member == MEDICS_2D
                     else face_score_3d(net, KIND_3D[member], video, region))
        except Exception as exc:
            raise RuntimeError(f"face {i + 1}: {type(exc).__name__}: {exc}") from exc
        if not np.isfinite(value) or not 0.0 <= value <= 1.0:
            raise ValueError(f"face {i + 1}: not a probability ({value!r})")
        values.append(float(value))
    return values


def score_window(model: nn.Module, frames: list[np.ndarray], start: int, first_face_id: int,
                 timings: dict, progress: Progress | None = None) -> WindowResult:
    """The authors' method on consecutive frames (frame 0 of the list is video frame `start`).

    Members run one by one; one that raises (or gives a non-probability) is named failed with the
    reason and the others are used. The rule is `rule_medics` (upstream's `if preds_2d:` drop of a
    2-D value of exactly 0.0 is not reproduced: 0.0 is a value).
    """
    out = WindowResult(start, len(frames))
    t = time.perf_counter()
    search = find_faces(model.mtcnn, frames)
    timings["face_search_s"] = timings.get("face_search_s", 0.0) + time.perf_counter() - t
    out.search = "; ".join(f"{factor:g} x 1920/max(w,h): {what}" for factor, what in search.attempts)
    if not search.regions:
        out.status, out.reason = Status.INCONCLUSIVE.value, f"no face found in frames {start}-{start + len(frames) - 1} ({out.search})"
        return out
    needed = min(len(frames), mf.last_frame_needed(search.regions))
    video = FrameStack(frames[:needed])
    per_face: dict[str, list[float]] = {}
    for k, member in enumerate(MEDICS_MEMBERS):
        t = time.perf_counter()
        try:
            per_face[member] = _member_values(model, member, video, search.regions, search.scale)
            out.scores[member] = float(np.mean(per_face[member]))
        except Exception as exc:  # the member's failure is named and left out of the rule
            out.failures[member] = f"{type(exc).__name__}: {exc}"
        timings[f"{member}_s"] = timings.get(f"{member}_s", 0.0) + time.perf_counter() - t
        if progress is not None:
            progress(k + 1, len(MEDICS_MEMBERS), f"{NAME} {member}")
    for i, region in enumerate(search.regions):
        values = {m: per_face[m][i] for m in per_face}
        face_rule = rule_medics(values, {m: "no value" for m in MEDICS_MEMBERS if m not in values})
        (r0, r1), (c0, c1) = region.rows, region.cols
        frames_of_face = list(range(start + region.frame_from, start + min(region.frame_to, needed)))
        out.faces.append(VideoFace(
            id=first_face_id + i, frames=frames_of_face, boxes=[(c0, r0, c1 + 1, r1 + 1)] * len(frames_of_face),
            score=face_rule.score, members=dict(values),
            reason=None if face_rule.score is not None else "no member scored this face"))
    rule = rule_medics(out.scores, out.failures)
    out.status, out.score = rule.status.value, rule.score
    out.reason = rule.reason or None
    if MEDICS_2D in out.scores:
        out.notes.extend(_fakefinder_2d_drop(video, search, out, first_face_id))
    return out


def _fakefinder_2d_drop(video: FrameStack, search: mf.FaceSearch, out: WindowResult, first_face_id: int) -> list[str]:
    """A note when FakeFinder could not have stacked some face's 2-D crops (medics_faces.fakefinder_stacks_2d)
    and so dropped the 2-D model for the whole video; ours scores it, the note gives FakeFinder's value."""
    for i, region in enumerate(search.regions):
        sizes = mf.crop_sizes_2d(region, mf.face_boxes_2d(region, search.scale), video.shape[1:3])
        if mf.fakefinder_stacks_2d(sizes):
            continue
        widths = sorted({w for _, w in sizes})
        without = rule_medics({m: v for m, v in out.scores.items() if m != MEDICS_2D},
                              {**out.failures, MEDICS_2D: "dropped as FakeFinder did"})
        value = f"{without.score:.3f}" if without.score is not None else "no score"
        return [f"FakeFinder would have dropped the 2-D model ({MEDICS_2D}) here: face {first_face_id + i}'s 2-D crops "
                f"are all {sizes[0][0]} px high but {widths[0]}-{widths[-1]} px wide, which its numpy 1.21 could not "
                f"stack (its bare except then skipped the 2-D model for the whole video); here it is scored. "
                f"The authors' rule without it: {value}"]
    return []


# -- the run --------------------------------------------------------------------------------------
class MedicsRun(VideoRun):
    """One video: frames are kept per window (the authors' policy has one, frames 0-98) and each
    window is scored when its last frame has come; a window's frames are dropped once scored."""

    def __init__(self, model: nn.Module, info: VideoInfo, policy: str, window: int,
                 progress: Progress | None = None):
        self.model, self.info, self.policy, self.window, self.progress = model, info, policy, window, progress
        self.start: int | None = None  # the first frame of the window being read
        self.window_start = 0
        self.broken = False
        self.frames: list[np.ndarray] = []
        self.gaps: list[str] = []
        self.read: list[int] = []
        self.results: list[WindowResult] = []
        self.timings: dict[str, float] = {}
        self._next_face = 1

    def add(self, n: int, rgb: np.ndarray) -> None:
        window_start = n - n % self.window
        if self.start is not None and window_start != self.window_start:
            self._score_window()
        if self.start is None:
            self.window_start, self.start, self.broken = window_start, n, False
            if n != window_start:
                self.gaps.append(f"frames {window_start}-{n - 1} could not be decoded: that window starts at frame {n}")
        if self.broken:
            return
        expected = self.start + len(self.frames)
        if n != expected:
            # Upstream stops reading at the first frame it cannot read: so does a window.
            self.broken = True
            self.gaps.append(f"frame {expected} could not be decoded: that window ends at frame {expected - 1}")
            return
        self.frames.append(rgb)
        self.read.append(n)

    def _score_window(self) -> None:
        if self.frames:
            result = score_window(self.model, self.frames, self.start, self._next_face, self.timings, self.progress)
            self._next_face += len(result.faces)
            self.results.append(result)
        self.start, self.frames = None, []

    def finish(self) -> VideoVerdict:
        self._score_window()
        if not self.results:
            return VideoVerdict(Status.INCONCLUSIVE.value, reason="no frame of the first 100 could be decoded",
                                notes=self._notes(), timings=self._timings())
        headline = self._headline()
        members = [Member(m, MemberStatus.OK, value=headline.scores[m]) if m in headline.scores
                   else Member(m, MemberStatus.FAILED, reason=headline.failures.get(m, "not run: no face"))
                   for m in MEDICS_MEMBERS] if headline.faces else []
        return VideoVerdict(
            headline.status, score=headline.score, reason=headline.reason, members=members,
            faces=[f for r in self.results for f in r.faces], frames_analysed=list(self.read),
            notes=self._notes(headline), timings=self._timings())

    def _headline(self) -> WindowResult:
        """The authors' policy: its one window. The whole-video policy: the window with the highest
        score by the authors' rule (the most suspicious 100 frames); ties go to the earliest."""
        if self.policy == AUTHORS:
            return self.results[0]
        scored = [r for r in self.results if r.score is not None]
        if not scored:
            reasons = "; ".join(r.reason or "" for r in self.results)
            return WindowResult(self.results[0].start, 0, status=Status.INCONCLUSIVE.value,
                                reason=f"no 100-frame window gave a score ({reasons})")
        return max(scored, key=lambda r: (r.score, -r.start))

    def _notes(self, headline: WindowResult | None = None) -> list[str]:
        notes = []
        if self.policy == AUTHORS:
            notes.append(FIRST_FRAMES_NOTE)
            if self.read:
                fps = self.info.fps or 0.0
                seconds = f" ({(self.read[-1] + 1) / fps:.1f} s of {self.info.duration_s:.1f} s)" if fps > 0 else ""
                notes.append(f"analysed frames {self.read[0]}-{self.read[-1]} of {self.info.frames}{seconds}")
        else:
            notes.append("frame policy 'whole' (ours, not the authors'): the authors' method on each consecutive "
                         "100-frame window; the headline is the window with the highest score by the authors' rule")
            for r in self.results:
                last = r.start + r.frames - 1
                value = f"{r.score:.3f}" if r.score is not None else f"{r.status} ({r.reason})"
                notes.append(f"window frames {r.start}-{last}: {value}")
            if headline is not None and headline.score is not None:
                notes.append(f"headline window: frames {headline.start}-{headline.start + headline.frames - 1}")
        for r in self.results:
            if r.search:
                notes.append(f"face search, frames from {r.start}: {r.search}")
            notes.extend(n if self.policy == AUTHORS else f"window frames {r.start}-{r.start + r.frames - 1}: {n}"
                         for n in r.notes)
        if self.results and any(r.failures for r in self.results):
            notes.append("each member runs on its own: a failed member is named and left out of the mean "
                         "(FakeFinder's single try/except silently dropped it and every later 3-D member)")
        return notes + self.gaps

    def _timings(self) -> dict:
        return {k: round(v, 3) for k, v in self.timings.items()}


# -- the detector ---------------------------------------------------------------------------------
@register
class Medics(VideoDetector):
    name = NAME
    version = "1.0"
    card = load_card(NAME)
    threshold = 0.5
    default = False
    install_hint = "python -m workbench weights install medics"
    frame_policy = AUTHORS
    upstream_rule = (
        "First 100 frames only (about 3.3 s at 30 fps). MTCNN (0.8, 0.8, 0.9; factor 0.71) on frames 0, 10, …, 90 "
        "shrunk to 0.25 × 1920 / max(w, h), again at 0.5 × when no face is kept; a face is a connected region of "
        "the boxes through time spanning ≥ 30 frames. Seven 3-D CNNs (I3D ×2, 3-D ResNet-34, mc3_18 at 112 and "
        "224, r2plus1d_18 ×2) on the face's static box with flip TTA, p = 1 − softmax[1]; a 2-D SE-ResNeXt50 on up "
        "to 32 frames, lower median. Per model the mean over faces; video score = mean of the models' values, "
        "clipped to [0.001, 0.999]. (FakeFinder answered 0.5 with no face.)"
    )

    def __init__(self, device: torch.device | str = "cpu", frame_policy: str | None = None) -> None:
        super().__init__(device)
        policy = frame_policy or type(self).frame_policy
        if policy not in FRAME_POLICIES:
            raise ValueError(f"unknown Medics frame policy {policy!r}; expected one of {', '.join(FRAME_POLICIES)}")
        self.frame_policy = policy

    @property
    def weights(self) -> tuple[WeightFile, ...]:  # read at use: installs happen while the app runs
        return manifest_files(NAME) or tuple(WeightFile(f, sha256=None) for _, f in FILES.values())

    def member_weights(self) -> dict[str, WeightFile]:
        return {m: listed_file(f, self.weights) for m, (_, f) in FILES.items()}

    def build(self) -> nn.Module:
        return MedicsModels()

    def load_weights(self, model: nn.Module) -> str:
        """All eight members, strictly (MTCNN's weights ship with facenet-pytorch)."""
        return self.load_members(model)

    convert_checkpoint = staticmethod(convert_checkpoint)

    def wanted_frames(self, info: VideoInfo) -> list[int]:
        """The authors': frames 0 … min(frames, 100) − 1 but 99, which no step reads (faces on 0 … 90, clips end
        before frame_to ≤ 99). 'whole': the same in every consecutive 100-frame window."""
        # A face's frames end before frame_to <= 10 x (last sampled frame + 1) - 1 = 99.
        frames = range(min(info.frames, WINDOW)) if self.frame_policy == AUTHORS else range(info.frames)
        return [n for n in frames if n % WINDOW < WINDOW - 1]

    def start(self, info: VideoInfo, progress: Progress | None = None) -> VideoRun:
        model = self.model()
        # facenet's MTCNN keeps the device it was built on; follow the module wherever it was moved.
        model.mtcnn.device = next(model.mtcnn.parameters()).device
        return MedicsRun(model, info, self.frame_policy, WINDOW, progress)

    def describe(self) -> dict:
        described = super().describe()
        described["frame_policy"] = self.frame_policy
        described["face_finder"] = {"kind": "mtcnn", "thresholds": list(MTCNN_THRESHOLDS), "factor": MTCNN_FACTOR,
                                    "select_largest": False, "frames": "0, 10, …, 90 of each 100",
                                    "scale": "0.25 × 1920 / max(w, h), retry 0.5 ×"}
        return described
