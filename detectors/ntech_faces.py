"""NTechLab (DFDC 3rd): frame sampling, DSFD input geometry, the IoU tracker, face crops and the frame-model crop transforms.

Pure functions reproducing the authors' `predict.py` as FakeFinder deployed it (IQTLabs/FakeFinder 780839f
`detectors/ntech/ensemble.py` `video_reader.process_video` and `Ensemble.inference`, `face_utils.py`,
`tracker/iou_tracker.py`, `tracker/utils.py`, `models/detector.py`, `models/classifiers.py`; = NTech-Lab
deepfake-detection-challenge 52095ce `predict.py`), written from docs/fakefinder-part2.md §1.3, not copied.
The DSFD network itself lives elsewhere; here is only what goes in and comes out of it.

Arithmetic follows upstream's libraries exactly where it decides pixels: torchvision 0.5's
`GeneralizedRCNNTransform` (torch 1.4 `interpolate` floors the output size), numpy 1.21's scalar casting
(a float32 box coordinate times a Python float is float64), Python `int()` truncation for crop bounds and
albumentations 0.5.2's `py3round` (round half to even) for resized sizes.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import cv2
import numpy as np
import torch
import torch.nn.functional as F

TARGET_FPS = 15
DETECTOR_STEP = 3  # detection on every 3rd sampled frame
DETECTOR_SIZE = 512  # GeneralizedRCNNTransform(min_size=512, max_size=512)
DETECTOR_BGR_MEAN = (104.0, 117.0, 123.0)  # subtracted in BGR order, std 1
SIZE_DIVISIBLE = 32
DETECTOR_THRESHOLD = 0.3  # class-1 rows kept when strictly greater

TRACKER_SIGMA_L = 0.3
TRACKER_SIGMA_H = 0.9
TRACKER_SIGMA_IOU = 0.3
TRACKER_T_MIN = 7

BOX_MULT = 1.5
CROP_HEIGHT = 224
CROP_WIDTH = 192
FACE_TRACK_STEP = 2  # the frame models see every 2nd track entry
SEQUENCE_LENGTH = 7
SEQUENCE_TRACK_STEP = 14

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# --- frames -----------------------------------------------------------------------------------------------

def sampling_step(fps: float) -> int:
    """Stride between sampled frames: Python round(int(fps) / 15); 0 means no frame is sampled.

    Upstream truncates OpenCV's CAP_PROP_FPS first (29.97 -> 29 -> step 2).
    """
    return round(int(fps) / TARGET_FPS)


def sampled_frame_indices(frame_count: int, fps: float) -> list[int]:
    """Decoded-frame indices (0-based) upstream keeps: i % step == 0; empty when the step is 0.

    A frame that fails to decode is simply missing from upstream's list, so the caller drops it from this one too.
    """
    step = sampling_step(fps)
    if step == 0 or frame_count <= 0:
        return []
    return list(range(0, int(frame_count), step))


def detector_positions(n_sampled: int) -> list[int]:
    """Positions in the sampled-frame list that go to the face detector (every 3rd, from the first)."""
    return list(range(0, n_sampled, DETECTOR_STEP))


# --- DSFD input and output (torchvision 0.5 GeneralizedRCNNTransform, eval mode) ---------------------------

def detector_resize(height: int, width: int, size: int = DETECTOR_SIZE) -> tuple[int, int]:
    """Resized (height, width) before padding: the longer side becomes `size` (min_size = max_size = size).

    torchvision 0.5: scale = size / short side, replaced by size / long side when the long side would
    exceed it; torch 1.4 `interpolate(scale_factor=)` floors input * scale for the output size.
    """
    scale = float(size) / float(min(height, width))
    if float(max(height, width)) * scale > size:
        scale = float(size) / float(max(height, width))
    return int(math.floor(float(height) * scale)), int(math.floor(float(width) * scale))


def padded_size(height: int, width: int, divisor: int = SIZE_DIVISIBLE) -> tuple[int, int]:
    """The batch tensor's (height, width): each side rounded up to a multiple of `divisor` (zeros bottom/right)."""
    stride = float(divisor)
    return int(math.ceil(height / stride) * stride), int(math.ceil(width / stride) * stride)


def detector_input(frames_bgr: list[np.ndarray]) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """The DSFD batch for BGR uint8 frames, and each frame's unpadded resized (height, width).

    Mean subtracted first (BGR order kept), then bilinear resize (align_corners False, no antialias) to
    `detector_resize`'s size, then zero padding to the batch's largest size rounded up to 32. The output
    size is passed to `interpolate` directly: torch 1.4 gave its kernel only the size, which `scale_factor=`
    no longer reproduces.
    """
    if not frames_bgr:
        raise ValueError("no frames to detect faces in")
    mean = torch.tensor(DETECTOR_BGR_MEAN, dtype=torch.float32).view(3, 1, 1)
    resized, sizes = [], []
    for frame in frames_bgr:
        if frame.ndim != 3 or frame.shape[2] != 3:
            raise ValueError(f"expected an H x W x 3 BGR frame, got shape {frame.shape}")
        image = torch.from_numpy(np.ascontiguousarray(frame)).permute(2, 0, 1).float() - mean
        out_hw = detector_resize(frame.shape[0], frame.shape[1])
        image = F.interpolate(image[None], size=out_hw, mode="bilinear", align_corners=False)[0]
        resized.append(image)
        sizes.append(out_hw)
    batch_h, batch_w = padded_size(max(h for h, _ in sizes), max(w for _, w in sizes))
    batch = torch.zeros((len(resized), 3, batch_h, batch_w), dtype=torch.float32)
    for i, image in enumerate(resized):
        batch[i, :, :image.shape[1], :image.shape[2]] = image
    return batch, sizes


def detections_to_frame(rows: np.ndarray, resized_hw: tuple[int, int], original_hw: tuple[int, int],
                        threshold: float = DETECTOR_THRESHOLD) -> tuple[np.ndarray, np.ndarray]:
    """Face boxes in frame pixels from one frame's DSFD rows (score, x1, y1, x2, y2) in [0, 1] units.

    Keeps rows with score > threshold; scales by the **unpadded** resized size although the priors were
    normalised to the padded tensor (upstream's quirk: boxes shift toward the top-left whenever padding is
    non-zero), then by original / resized per axis (torchvision 0.5 `postprocess`). float32 throughout.

    Returns:
        (boxes (n, 4) float32 x1, y1, x2, y2; scores (n,) float32)
    """
    rows = np.asarray(rows, dtype=np.float32).reshape(-1, 5)
    kept = rows[rows[:, 0] > np.float32(threshold)]  # an array against a scalar compares in float32
    res_h, res_w = resized_hw
    orig_h, orig_w = original_hw
    boxes = kept[:, 1:5].copy()
    boxes[:, [0, 2]] *= np.float32(res_w)
    boxes[:, [1, 3]] *= np.float32(res_h)
    boxes[:, [0, 2]] *= np.float32(float(orig_w) / float(res_w))
    boxes[:, [1, 3]] *= np.float32(float(orig_h) / float(res_h))
    return boxes, kept[:, 0].copy()


# --- tracking (Bochinski IoU tracker) ------------------------------------------------------------------------

def iou(box_a, box_b) -> float:
    """Plain continuous IoU of two (x1, y1, x2, y2) boxes (no +1); 0 when they do not overlap."""
    ax1, ay1, ax2, ay2 = (float(v) for v in box_a)
    bx1, by1, bx2, by2 = (float(v) for v in box_b)
    ix1, iy1, ix2, iy2 = max(ax1, bx1), max(ay1, by1), min(ax2, bx2), min(ay2, by2)
    if ix2 - ix1 <= 0 or iy2 - iy1 <= 0:
        return 0.0
    inter = (ix2 - ix1) * (iy2 - iy1)
    return inter / ((ax2 - ax1) * (ay2 - ay1) + (bx2 - bx1) * (by2 - by1) - inter)


@dataclass
class Track:
    """A run of detections on consecutive detector frames; `start` is the first one's detector-frame position."""

    start: int
    boxes: list = field(default_factory=list)
    max_score: float = 0.0


def track_iou(detections: list[tuple[np.ndarray, np.ndarray]], sigma_l: float = TRACKER_SIGMA_L,
              sigma_h: float = TRACKER_SIGMA_H, sigma_iou: float = TRACKER_SIGMA_IOU,
              t_min: int = TRACKER_T_MIN) -> list[Track]:
    """Bochinski's IoU tracker as upstream ran it, over detector frames in order.

    Args:
        detections: per detector frame, (boxes (n, 4), scores (n,)).
    Returns:
        finished tracks (in the order they ended, then those still active at the end) whose best score is
        >= sigma_h and which have >= t_min detections. A track ends at its first frame without a match
        (IoU >= sigma_iou with its last box); detections below sigma_l are ignored.
        Scores are compared as float64 (upstream compares float32 scalars with Python floats under numpy 1.21),
        so a float32 score of 0.9 (0.89999998) is below sigma_h.
    """
    active: list[Track] = []
    finished: list[Track] = []

    def keep(track: Track) -> bool:
        return track.max_score >= sigma_h and len(track.boxes) >= t_min

    for position, (boxes, scores) in enumerate(detections):
        pool = [(tuple(float(v) for v in box), float(score))
                for box, score in zip(np.asarray(boxes).reshape(-1, 4).tolist(), np.asarray(scores).reshape(-1).tolist())
                if score >= sigma_l]
        updated: list[Track] = []
        for track in active:
            matched = False
            if pool:
                # max() keeps the first of equal IoUs, like upstream's
                best = max(range(len(pool)), key=lambda k: iou(track.boxes[-1], pool[k][0]))
                if iou(track.boxes[-1], pool[best][0]) >= sigma_iou:
                    box, score = pool.pop(best)
                    track.boxes.append(box)
                    track.max_score = max(track.max_score, score)
                    updated.append(track)
                    matched = True
            if not matched and keep(track):
                finished.append(track)
        active = updated + [Track(start=position, boxes=[box], max_score=score) for box, score in pool]
    finished += [track for track in active if keep(track)]
    return finished


def interpolate_track(track: Track, detector_step: int = DETECTOR_STEP) -> tuple[np.ndarray, np.ndarray]:
    """A track on every sampled frame from its first to its last detection.

    Detections sit on sampled-frame indices (start + k) * step; each coordinate is `np.interp`olated onto
    every integer index in between and stored as float32 (upstream's boxes array).

    Returns:
        (sampled-frame indices (n,) int64, boxes (n, 4) float32)
    """
    boxes = np.asarray(track.boxes, dtype=np.float32).reshape(-1, 4)
    known = np.arange(track.start, track.start + len(boxes), dtype=np.int64) * detector_step
    frames = np.arange(known[0], known[-1] + 1, dtype=np.int64)
    out = np.zeros((len(frames), 4), dtype=np.float32)
    for c in range(4):
        out[:, c] = np.interp(frames, known, boxes[:, c])
    return frames, out


def face_tracks(detections: list[tuple[np.ndarray, np.ndarray]]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Upstream's `get_tracks`: tracker with 0.3 / 0.9 / 0.3 / 7, then each track interpolated."""
    return [interpolate_track(track) for track in track_iou(detections)]


# --- face crops ------------------------------------------------------------------------------------------------

def crop_bounds(box, frame_width: int, frame_height: int, mult: float = BOX_MULT) -> tuple[int, int, int, int]:
    """(x1, y1, x2, y2) of the face crop: width and height x 1.5 about the box centre, truncated, clipped.

    Upstream's box is a float32 row; under numpy 1.21 its width/height are float32 differences and the
    rest is float64 (a float32 scalar with a Python float). `int()` truncates toward zero, so a slightly
    negative x1 becomes 0 before the clip.
    """
    x1, y1, x2, y2 = (np.float32(v) for v in box)
    width = float(np.float32(x2 - x1))
    height = float(np.float32(y2 - y1))
    xc = float(x1) + width / 2
    yc = float(y1) + height / 2
    width *= mult
    height *= mult
    left = xc - width / 2
    top = yc - height / 2
    right = left + width
    bottom = top + height
    return max(int(left), 0), max(int(top), 0), min(int(right), frame_width), min(int(bottom), frame_height)


def extract_face(frame_bgr: np.ndarray, box, flip: bool) -> np.ndarray:
    """The RGB face crop of one frame (see `crop_bounds`), mirrored left-right when `flip`."""
    x1, y1, x2, y2 = crop_bounds(box, frame_bgr.shape[1], frame_bgr.shape[0])
    if x2 <= x1 or y2 <= y1:
        raise ValueError(f"empty face crop {x1, y1, x2, y2} for box {list(box)} in a {frame_bgr.shape} frame")
    face = cv2.cvtColor(np.ascontiguousarray(frame_bgr[y1:y2, x1:x2]), cv2.COLOR_BGR2RGB)
    return np.ascontiguousarray(face[:, ::-1]) if flip else face


@dataclass(frozen=True)
class FaceEntry:
    """One frame-model input: the track entry it comes from, whether it is mirrored, which model sees it (0 or 1)."""

    entry: int
    flip: bool
    model: int


def frame_model_entries(track_length: int) -> list[FaceEntry]:
    """Which track entries the two frame models see: every 2nd entry; the i-th of those is flipped when i is
    even and goes to model 0 (`large_crop`) when i % 4 < 2, else model 1 (`re`)."""
    return [FaceEntry(entry=entry, flip=i % 2 == 0, model=0 if i % 4 < 2 else 1)
            for i, entry in enumerate(range(0, track_length, FACE_TRACK_STEP))]


@dataclass(frozen=True)
class Window:
    """One sequence-model window: 7 entries from `start`, all cropped with entry `box_entry`'s box."""

    start: int
    box_entry: int
    flip: bool


def sequence_windows(track_length: int) -> list[Window]:
    """Upstream's `track[:-6:14]`: windows start at entries 0, 14, 28, ... while start < length - 6; the box is
    the window's 4th entry's; window w is flipped when w is even."""
    starts = range(0, max(track_length - (SEQUENCE_LENGTH - 1), 0), SEQUENCE_TRACK_STEP)
    return [Window(start=s, box_entry=w * SEQUENCE_TRACK_STEP + SEQUENCE_LENGTH // 2, flip=w % 2 == 0)
            for w, s in enumerate(starts)]


# --- the frame models' transforms (albumentations 0.5.2, reimplemented with cv2) --------------------------------

def smallest_max_size(image: np.ndarray, size: int) -> np.ndarray:
    """albumentations SmallestMaxSize: shorter side -> size, sides round(side * scale) half to even, INTER_LINEAR."""
    height, width = image.shape[:2]
    scale = size / float(min(width, height))
    if scale == 1.0:
        return image
    new_h, new_w = round(height * scale), round(width * scale)
    if (new_h, new_w) == (height, width):
        return image
    return cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)


def pad_if_needed(image: np.ndarray, min_height: int, min_width: int) -> np.ndarray:
    """albumentations PadIfNeeded with its default BORDER_REFLECT_101: int(missing / 2) before, the rest after."""
    height, width = image.shape[:2]
    top = int((min_height - height) / 2.0) if height < min_height else 0
    bottom = min_height - height - top if height < min_height else 0
    left = int((min_width - width) / 2.0) if width < min_width else 0
    right = min_width - width - left if width < min_width else 0
    if top == bottom == left == right == 0:
        return image
    return cv2.copyMakeBorder(image, top, bottom, left, right, cv2.BORDER_REFLECT_101)


def center_crop(image: np.ndarray, crop_height: int, crop_width: int) -> np.ndarray:
    """albumentations CenterCrop: top = (h - ch) // 2, left = (w - cw) // 2; smaller images are an error."""
    height, width = image.shape[:2]
    if height < crop_height or width < crop_width:
        raise ValueError(f"cannot centre-crop {crop_height}x{crop_width} from {height}x{width}")
    top, left = (height - crop_height) // 2, (width - crop_width) // 2
    return image[top:top + crop_height, left:left + crop_width]


def frame_model_crop(face_rgb: np.ndarray, model: int) -> np.ndarray:
    """A 224 x 192 uint8 input for frame model 0 (`large_crop`: shorter side 192, reflect-pad to 224 x 192,
    centre crop) or 1 (`re`, and the sequence model: shorter side 224, centre crop)."""
    if model == 0:
        image = pad_if_needed(smallest_max_size(face_rgb, CROP_WIDTH), CROP_HEIGHT, CROP_WIDTH)
    elif model == 1:
        image = smallest_max_size(face_rgb, CROP_HEIGHT)
    else:
        raise ValueError(f"frame model is 0 or 1, not {model!r}")
    return center_crop(image, CROP_HEIGHT, CROP_WIDTH)


def normalise(crop_rgb: np.ndarray) -> torch.Tensor:
    """albumentations Normalize (ImageNet, max_pixel 255, float32) then the old ToTensor: (3, H, W) float32."""
    mean = np.array(IMAGENET_MEAN, dtype=np.float32) * 255.0
    denominator = np.reciprocal(np.array(IMAGENET_STD, dtype=np.float32) * 255.0, dtype=np.float32)
    image = (crop_rgb.astype(np.float32) - mean) * denominator
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
