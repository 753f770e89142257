"""NTechLab (DFDC 3rd) as FakeFinder deployed it: DSFD faces on a 15 fps sampling, IoU tracks, two B7 frame models and a B7 sequence model, the authors' pooled rule.

Reproduces IQTLabs/FakeFinder 780839f `detectors/ntech` (= NTech-Lab/deepfake-detection-challenge
52095ce `predict.py`), written from docs/fakefinder-part2.md §1, not copied. The geometry lives in
detectors/ntech_faces.py, the face detector in detectors/ntech_dsfd.py, the B7s in detectors/effnet063.py
and the rule in detectors/fakefinder_rules.py; here they are put together as one video-level detector,
with the weights' conversion from the four fp16 upstream files.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from detectors.base import Status, load_card
from detectors.effnet063 import EfficientNet063
from detectors.fakefinder_rules import rule_ntech
from detectors.ntech_dsfd import DSFD, detect
from detectors.ntech_faces import (
    DETECTOR_STEP, SEQUENCE_LENGTH, crop_bounds, detections_to_frame, detector_input, face_tracks, track_iou,
    frame_model_crop, frame_model_entries, normalise, sampled_frame_indices, sampling_step, sequence_windows,
)
from detectors.registry import register
from detectors.video import Member, MemberStatus, Progress, VideoDetector, VideoFace, VideoRun, VideoVerdict
from detectors.weights import (
    WeightFile, WeightsError, as_fp32, check_state_dict, listed_file,
    load_torch_checkpoint, manifest_files,
)
from workbench.video import VideoInfo

NAME = "ntech"
log = logging.getLogger(__name__)

# member -> (file in FakeFinder's ntech.tar.gz, as FF's ensemble.py opens it under /weights/; converted file).
# The archive's member names are inferred from those paths: the archive itself could not be listed.
UPSTREAM = {
    "dsfd": ("ntech/WIDERFace_DSFD_RES152.fp16.pth", "ntech/dsfd_res152.safetensors"),
    "sequence": ("ntech/efficientnet-b7_ns_seq_aa-original-mstd0.5_100k_v4_cad79a/snapshot_100000.fp16.pth",
                 "ntech/b7_seq.safetensors"),
    "large_crop": ("ntech/efficientnet-b7_ns_aa-original-mstd0.5_large_crop_100k_v4_cad79a/snapshot_100000.fp16.pth",
                   "ntech/b7_large_crop.safetensors"),
    "re": ("ntech/efficientnet-b7_ns_aa-original-mstd0.5_re_100k_v4_cad79a/snapshot_100000.fp16.pth",
           "ntech/b7_re.safetensors"),
}
# The three classifiers in the order upstream pools them (sequence first, then the frame models).
MEMBERS = ("sequence", "large_crop", "re")
MEMBER_TITLES = {
    "sequence": "B7 sequence model (7-frame windows)",
    "large_crop": "B7 frame model 1 (large crop)",
    "re": "B7 frame model 2 (random erasing)",
}
DETECTOR_BATCH = 16  # upstream's DETECTOR_BATCH_SIZE
FRAME_BATCH = 16  # frame-model crops per forward pass (batching changes no value in eval mode)
WINDOW_BATCH = 4  # sequence windows per forward pass


def build_member(member: str) -> nn.Module:
    """One of the four networks, in upstream's exact layout (bare keys, no prefix)."""
    if member == "dsfd":
        return DSFD()
    if member == "sequence":
        return EfficientNet063("efficientnet-b7", num_classes=1, seq_length=SEQUENCE_LENGTH)
    if member in ("large_crop", "re"):
        return EfficientNet063("efficientnet-b7", num_classes=1)
    raise ValueError(f"unknown NTechLab member {member!r}; known: {', '.join(UPSTREAM)}")


class NTechModels(nn.Module):
    """The face detector and the three B7s in one module; each submodule's own keys are upstream's."""

    def __init__(self):
        super().__init__()
        for member in UPSTREAM:
            self.add_module(member, build_member(member))


# -- weights --------------------------------------------------------------------------------------
def member_of(raw_path: Path) -> str:
    """Which member an upstream file is: by its name, and for the three `snapshot_100000.fp16.pth` by its folder."""
    raw_path = Path(raw_path)
    for member, (raw, _) in UPSTREAM.items():
        raw_name, raw_folder = Path(raw).name, Path(raw).parent.name
        if raw_path.name == raw_name and (raw_folder == "ntech" or raw_path.parent.name == raw_folder):
            return member
    known = ", ".join(raw for raw, _ in UPSTREAM.values())
    raise WeightsError(f"{raw_path.name} (in {raw_path.parent.name}/): not an NTechLab weights file (expected one of {known})")


def expected_shapes(member: str) -> dict[str, tuple[int, ...]]:
    """Upstream's key -> shape for one member (built on the meta device: no memory, no init)."""
    with torch.device("meta"):
        model = build_member(member)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def convert_checkpoint(raw_path: Path) -> dict[str, torch.Tensor]:
    """Read one of the four upstream fp16 files safely and return the fp32 state dict our module loads.

    NTechLab's `copy_weights.py` saved `{key: tensor.half()}` for every entry, so BatchNorm's
    integer `num_batches_tracked` became fp16 too (100k steps overflow fp16 to inf); FakeFinder cast
    everything with `.float()` and loaded strictly. We cast floats to fp32 and give `num_batches_tracked`
    back its int64 type (a value fp16 could not hold becomes 0; the counter is not read at inference);
    one missing from the 2019 DSFD file is added as 0, as torch's own BatchNorm loader does for old dicts.

    Raises:
        WeightsError: unknown file, unreadable or unsafe pickle, not a bare dict of tensors, or any
            key/shape difference from upstream's layout.
    """
    raw_path = Path(raw_path)
    member = member_of(raw_path)
    ckpt = load_torch_checkpoint(raw_path)
    if not isinstance(ckpt, dict) or not ckpt:
        raise WeightsError(f"{raw_path.name}: expected a bare state dict, found {type(ckpt).__name__}")
    expected = expected_shapes(member)
    state = {str(k): v for k, v in ckpt.items()}
    fixed = []
    for key in expected:
        if not key.endswith("num_batches_tracked"):
            continue
        value = state.get(key)
        if value is None:
            if key[: -len("num_batches_tracked")] + "running_mean" in state:
                state[key] = torch.zeros((), dtype=torch.int64)
                fixed.append(f"{key} added as 0")
        elif isinstance(value, torch.Tensor) and value.is_floating_point():
            finite = bool(torch.isfinite(value).all())
            state[key] = torch.nan_to_num(value.double(), nan=0.0, posinf=0.0, neginf=0.0).round().to(torch.int64)
            if not finite:
                fixed.append(f"{key} was {value.item()} in fp16, set to 0")
    what = {"dsfd": "DSFD ResNet-152", "sequence": "EfficientNet-B7 sequence",
            "large_crop": "EfficientNet-B7 (large crop)", "re": "EfficientNet-B7 (re)"}[member]
    check_state_dict(state, expected, f"{raw_path.name}: not the NTechLab {what} checkpoint")
    if fixed:
        log.info("%s: %d num_batches_tracked entries repaired (%s…)", raw_path.name, len(fixed), fixed[0])
    return as_fp32(state)


# -- faces ------------------------------------------------------------------------------------------
@torch.inference_mode()
def find_faces(dsfd: nn.Module, frames_rgb: list[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Upstream's `Detector.detect` on same-sized frames: per frame (boxes (n, 4) x1 y1 x2 y2 in frame pixels,
    scores (n,)), faces scoring above 0.3, best first.

    DSFD sees BGR (the cv2 frame upstream read), resized and padded as torchvision 0.5 did
    (`ntech_faces.detector_input`); `ntech_dsfd.detect` decodes and suppresses; the boxes are scaled back
    with upstream's unpadded-size quirk (`ntech_faces.detections_to_frame`).
    """
    out = []
    device = next(dsfd.parameters()).device
    for start in range(0, len(frames_rgb), DETECTOR_BATCH):
        chunk = [np.ascontiguousarray(f[:, :, ::-1]) for f in frames_rgb[start:start + DETECTOR_BATCH]]
        batch, sizes = detector_input(chunk)
        rows = detect(dsfd(batch.to(device)), tuple(batch.shape[-2:]))
        for r, resized, frame in zip(rows, sizes, chunk):
            out.append(detections_to_frame(r.cpu().numpy(), resized, frame.shape[:2]))
    return out


# -- one video ----------------------------------------------------------------------------------------
@dataclass
class NTechVerdict(VideoVerdict):
    """A VideoVerdict that also records every value the authors' rule pooled.

    windows: one row per sequence-model window: face id, its 7 frames, whether it was mirrored, its 7 values.
    face_values: one row per frame-model input: face id, frame, model, whether mirrored, value.
    A face's `score` (and each of its `members`) is the authors' pooling applied to that face's values only
    (to that member's on that face); the headline pools every face's values, as upstream.
    """

    windows: list[dict] = field(default_factory=list)
    face_values: list[dict] = field(default_factory=list)

    def details(self) -> dict:
        details = super().details()
        details["windows"] = [dict(w) for w in self.windows]
        details["face_values"] = [dict(v) for v in self.face_values]
        return details


class NTechRun(VideoRun):
    """One video: sampled frames kept (RGB, as given), DSFD run on every 3rd as they arrive (16 at a time, as
    upstream batched them), tracks and the three classifiers at the end.

    A sampled frame is kept until the tracks around it are known, because any of them may lie inside a
    track (upstream held them all): a detector frame without a face settles the tracks before it (see
    `_release`), and the rest are settled at the end, before the classifiers run.
    """

    def __init__(self, models: NTechModels, info: VideoInfo, progress: Progress | None = None):
        self.models = models
        self.info = info
        self.progress = progress
        self.numbers: list[int] = []  # decoded frame number of each sampled frame, in order
        self.frames: list[np.ndarray | None] = []  # None: released, no track can use it
        self.shape: tuple | None = None
        self.pending: list[np.ndarray] = []  # detector frames not yet through DSFD
        self.detections: list[tuple[np.ndarray, np.ndarray]] = []
        self.settled = 0  # detector positions before this one are past a faceless detector frame
        self.dead_before = 0  # sampled positions before this one are needed only if in `needed`
        self.needed: set[int] = set()
        self.timings = {"detect_s": 0.0}

    def add(self, n: int, rgb: np.ndarray) -> None:
        if self.shape is None:
            self.shape = rgb.shape
        elif rgb.shape != self.shape:
            raise ValueError(f"frame {n} is {rgb.shape}, the first sampled frame {self.shape}")
        # Upstream's positions count the frames it could read, so a frame the decoder skipped shifts the rest.
        position = len(self.frames)
        if position % DETECTOR_STEP == 0:
            self.pending.append(rgb)
        self.numbers.append(int(n))
        self.frames.append(None if position < self.dead_before and position not in self.needed else rgb)
        if len(self.pending) >= DETECTOR_BATCH:
            self._detect()

    def _detect(self) -> None:
        if not self.pending:
            return
        t = time.perf_counter()
        self.detections += find_faces(self.models.dsfd, self.pending)
        self.pending = []
        self.timings["detect_s"] += time.perf_counter() - t
        self._release()

    def _release(self) -> None:
        """Drop the frames no track can use, up to the last detector frame without a face.

        A detector frame without a face ends every track (the tracker keeps no track across a miss), so
        the tracks before it are final: the tracker run on that stretch alone gives exactly the tracks the
        whole video's run has there. Frames of that stretch on none of its kept tracks are released.
        """
        empty = [d for d in range(self.settled, len(self.detections)) if len(self.detections[d][1]) == 0]
        if not empty:
            return
        last = empty[-1]
        for track in track_iou(self.detections[self.settled:last]):
            first = (self.settled + track.start) * DETECTOR_STEP
            self.needed.update(range(first, first + (len(track.boxes) - 1) * DETECTOR_STEP + 1))
        self.dead_before = (last + 1) * DETECTOR_STEP
        for position in range(self.settled * DETECTOR_STEP, min(self.dead_before, len(self.frames))):
            if position not in self.needed:
                self.frames[position] = None
        self.settled = last + 1

    def finish(self) -> NTechVerdict:
        self._detect()
        step = sampling_step(self.info.fps)
        notes = [
            f"Frames as the authors sampled them: every {step or '-'} decoded frame (round(int(fps) / 15) with fps "
            f"{self.info.fps:g}), {len(self.frames)} read; DSFD faces on every 3rd of those ({len(self.detections)}). "
            "Decoded with PyAV where upstream used OpenCV: frame numbers and pixels can differ slightly.",
            "Headline: the authors' rule over every probability of every face track: the two frame models' values "
            "(shown per frame on the timeline) and the sequence model's (7 values per 7-frame window, not shown per "
            "frame: its temporal convolutions mix neighbouring frames and one box serves the whole window).",
        ]
        if self.info.rotation:
            # OpenCV 4.2 (FakeFinder's) ignored rotation metadata; our decoder turns frames upright.
            notes.append(f"The video carries rotation metadata ({self.info.rotation} degrees): the detector saw its frames "
                         "upright, as they play; FakeFinder's OpenCV 4.2 ignored that metadata and scored them sideways, so "
                         "upstream's answer on this video can differ greatly.")
        if not self.frames:
            reason = (f"no frame sampled: the authors' sampling takes none at {self.info.fps:g} fps (step 0)" if step == 0
                      else "no frame could be read")
            return NTechVerdict(Status.INCONCLUSIVE.value, reason=reason + " (upstream answered 0.5)",
                                notes=notes, timings=self._timings())
        t = time.perf_counter()
        tracks = face_tracks(self.detections)
        self.timings["track_s"] = time.perf_counter() - t
        if not tracks:
            return NTechVerdict(Status.INCONCLUSIVE.value,
                                reason="no face track: DSFD found no face kept by the authors' tracker (a track needs "
                                       "7 detections in a row on every 3rd sampled frame, one scoring 0.9 or more; "
                                       "upstream answered 0.5)",
                                frames_analysed=list(self.numbers), notes=notes,
                                timings=self._timings())
        # Frames no track uses are not needed any more.
        used = set()
        for entries, _ in tracks:
            used.update(int(s) for s in entries)
        self.frames = [f if i in used else None for i, f in enumerate(self.frames)]
        values: dict[str, list] = {m: [] for m in MEMBERS}  # member -> per track, its values
        members, failed = [], {}
        for done, member in enumerate(MEMBERS):
            if self.progress is not None:
                self.progress(done, len(MEMBERS), f"NTechLab: {MEMBER_TITLES[member]}")
            t = time.perf_counter()
            try:
                values[member] = [self._score(member, face_id, track) for face_id, track in enumerate(tracks)]
            except Exception as exc:  # one member's failure is named and left out of the rule
                failed[member] = f"{type(exc).__name__}: {exc}"
            self.timings[f"{member}_s"] = time.perf_counter() - t
        for member in MEMBERS:
            if member in failed:
                members.append(Member(member, MemberStatus.FAILED, reason=failed[member]))
            else:
                members.append(Member(member, MemberStatus.OK))
        self.frames = []
        ok = [m for m in MEMBERS if m not in failed]
        faces, frame_scores, windows, face_values, pooled = [], [], [], [], []
        for face_id, (entries, boxes) in enumerate(tracks):
            face_pool, per_member = [], {}
            for member in ok:
                rows = values[member][face_id]
                member_pool = [v for row in rows for v in row["values"]]
                per_member[member] = rule_ntech(member_pool).score if member_pool else None
                face_pool += member_pool
                if member == "sequence":
                    windows += rows
                else:
                    face_values += rows
                    frame_scores += [(row["frame"], face_id, row["values"][0]) for row in rows]
            pooled += face_pool
            result = rule_ntech(face_pool)
            faces.append(VideoFace(face_id, [self.numbers[int(s)] for s in entries],
                                   [tuple(float(v) for v in b) for b in boxes], score=result.score,
                                   members=per_member, reason=None if result.score is not None else result.reason))
        common = dict(members=members, faces=faces, frame_scores=sorted(frame_scores), windows=windows,
                      face_values=face_values, frames_analysed=list(self.numbers), notes=notes, timings=self._timings())
        if not ok:
            return NTechVerdict(Status.ERROR.value, reason="every member failed: " + "; ".join(
                f"{m}: {r}" for m, r in failed.items()), **common)
        if failed:
            notes.append(f"Left out of the rule because they failed: {', '.join(MEMBER_TITLES[m] for m in failed)}.")
        result = rule_ntech(pooled)
        if result.score is None:
            return NTechVerdict(Status.INCONCLUSIVE.value, reason=result.reason, **common)
        return NTechVerdict(Status.OK.value, score=result.score, **common)

    def _timings(self) -> dict:
        return {k: round(v, 3) for k, v in self.timings.items()}

    def _face(self, position: int, box, flip: bool) -> np.ndarray:
        """Upstream's `extract_face` on sampled frame `position`: box x 1.5, truncated, clipped, mirrored when `flip`.
        Our frames are RGB, so the slice is already what upstream's BGR slice + BGR2RGB gave."""
        frame = self.frames[position]
        if frame is None:
            raise RuntimeError(f"sampled frame {position} was released but a track needs it")
        x1, y1, x2, y2 = crop_bounds(box, frame.shape[1], frame.shape[0])
        if x2 <= x1 or y2 <= y1:
            raise ValueError(f"empty face crop {x1, y1, x2, y2} for box {list(box)}")
        face = frame[y1:y2, x1:x2]
        return np.ascontiguousarray(face[:, ::-1] if flip else face)

    @torch.inference_mode()
    def _score(self, member: str, face_id: int, track) -> list[dict]:
        """One member's values on one track: rows with the frame(s), mirroring and values."""
        entries, boxes = track
        model = getattr(self.models, member)
        device = next(model.parameters()).device
        rows, inputs = [], []
        if member == "sequence":
            for w in sequence_windows(len(entries)):
                start = int(entries[w.start])
                box = boxes[w.box_entry]
                # one box (the window's 4th entry's) for all 7 frames; the sequence model's crop is model 2's
                clip = [normalise(frame_model_crop(self._face(start + k, box, w.flip), 1)) for k in range(SEQUENCE_LENGTH)]
                inputs.append(torch.stack(clip))
                rows.append({"face": face_id, "frames": [self.numbers[start + k] for k in range(SEQUENCE_LENGTH)],
                             "flipped": w.flip})
            out = []
            for i in range(0, len(inputs), WINDOW_BATCH):
                batch = torch.cat(inputs[i:i + WINDOW_BATCH]).to(device)
                out.append(torch.sigmoid(model(batch).float()).flatten().cpu())
            probs = torch.cat(out).numpy().astype(np.float64).reshape(-1, SEQUENCE_LENGTH) if out else np.zeros((0, 7))
            for row, p in zip(rows, probs):
                row["values"] = [float(v) for v in p]
        else:
            which = 0 if member == "large_crop" else 1
            for e in frame_model_entries(len(entries)):
                if e.model != which:
                    continue
                face = self._face(int(entries[e.entry]), boxes[e.entry], e.flip)
                inputs.append(normalise(frame_model_crop(face, which)))
                rows.append({"face": face_id, "frame": self.numbers[int(entries[e.entry])], "model": which + 1,
                             "flipped": e.flip})
            out = []
            for i in range(0, len(inputs), FRAME_BATCH):
                batch = torch.stack(inputs[i:i + FRAME_BATCH]).to(device)
                out.append(torch.sigmoid(model(batch).float()).flatten().cpu())
            probs = torch.cat(out).numpy().astype(np.float64) if out else np.zeros(0)
            for row, p in zip(rows, probs):
                row["values"] = [float(p)]
        if not rows:
            raise ValueError(f"no input for {member} on face {face_id}")
        if not all(np.isfinite(v) for row in rows for v in row["values"]):
            raise FloatingPointError(f"{member} returned a non-finite value on face {face_id}")
        return rows


# -- the detector ---------------------------------------------------------------------------------------
@register
class NTech(VideoDetector):
    """NTechLab's whole-video method: frames, DSFD faces, tracks, three B7s and their pooled rule (see the module)."""

    name = NAME
    version = "1.0"
    card = load_card(NAME)
    threshold = 0.5
    default = False
    install_hint = "python -m workbench weights install ntech"
    upstream_rule = (
        "Every probability of every face track is pooled: the sequence model's 7 values per 7-frame window and "
        "the two frame models' value per face (every 2nd track frame, pairs alternating between the models). "
        "With d = p - 0.5, each p becomes clip(0.5 + sign(d)·|d|^0.65, 0.01, 0.99) and is weighted by |d| + 0.0001; "
        "the video score is the weighted mean. (Upstream answered 0.5 when no face track was found.)"
    )

    def wanted_frames(self, info: VideoInfo) -> list[int]:
        """Every round(int(fps) / 15)-th decoded frame from frame 0 (none below 8 fps), as upstream."""
        return sampled_frame_indices(info.frames, info.fps)

    @property
    def weights(self) -> tuple[WeightFile, ...]:  # read at use: installs happen while the app runs
        return manifest_files(NAME) or tuple(WeightFile(f, sha256=None) for _, f in UPSTREAM.values())

    def member_weights(self) -> dict[str, WeightFile]:
        return {m: listed_file(f, self.weights) for m, (_, f) in UPSTREAM.items()}

    def build(self) -> nn.Module:
        return NTechModels()

    def load_weights(self, model: nn.Module) -> str:
        """The four networks (DSFD and the three classifiers, all required), strictly."""
        return self.load_members(model)

    def start(self, info: VideoInfo, progress: Progress | None = None) -> NTechRun:
        return NTechRun(self.model(), info, progress)

    convert_checkpoint = staticmethod(convert_checkpoint)
