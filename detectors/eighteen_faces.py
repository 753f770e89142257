"""Eighteen Years Old (DFDC 4th): frame sampling, RetinaFace in Eighteen mode, face tubes and crop squares.

The geometry is pure functions (numpy/ints); `detect_frames` runs a given RetinaFace the authors' way and
`face_crops` chains everything from sampled frames to per-face crops. They reproduce the authors' inference
script as FakeFinder deployed it (IQTLabs/FakeFinder 780839f `detectors/eighteen/ensemble.py` `Config`, `detect_face`, `detect_video_face`, `Ensemble.inference`, and
`utils.py` `get_boundingbox`, `adjust_boundingbox`, `vanilla_bbox_iou_overlaps`; = Siyu-C/RobustForensics
`inference/ensemble-align-face2-frame-all-rob-policy-flip.py`), written from the spec
(/work/notes/issue15-spec.md §2.3), not copied. Integer arithmetic follows upstream exactly (int64 boxes,
floor division, truncation) because the crop squares, and so every member's input, depend on it.

A tube is a list of (frame index, face index) entries, frame indices counting sampled frames.
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torchvision

from detectors.retinaface import decode_boxes, prior_boxes

MAX_FRAMES = 160  # upstream `frame_nums`
TUBE_IOU = 0.5
MAX_FACES = 2
BOX_SCALE = 1.3
CROP_SIZES = (256, 299)  # SlowFast and ResNet-34 at 256, Xception and the EfficientNets at 299


@dataclass(frozen=True)
class DetectionSettings:
    """RetinaFace-MobileNet-0.25 as Eighteen ran it (FF `ensemble.py` `Config`, `cfg_mnet`)."""

    target_size: int = 400  # short side after resizing
    max_size: int = 2150  # the long side's cap
    bgr_mean: tuple[float, float, float] = (104.0, 117.0, 123.0)  # subtracted in BGR order, no std
    confidence: float = 0.02  # candidates kept before NMS (strictly greater)
    nms_iou: float = 0.4  # torchvision.ops.nms
    keep_score: float = 0.8  # faces kept per frame (greater or equal)
    batch: int = 8
    body: str = "mobilenet0.25"


EIGHTEEN_DETECTION = DetectionSettings()


@dataclass(frozen=True)
class Resize:
    """How one frame size is resized for detection: the scale, the size priors are built for, cv2's output size."""

    scale: float
    prior_hw: tuple[int, int]  # int-truncated, as upstream builds its PriorBox
    image_hw: tuple[int, int]  # what cv2.resize(fx=fy=scale) returns (it rounds)


def sampling_interval(frame_count: float) -> int:
    """Stride between analysed frames: max(1, ceil(count / 160)) for the container's frame count."""
    if frame_count < 0 or not math.isfinite(frame_count):
        raise ValueError(f"frame count must be a finite number >= 0, got {frame_count!r}")
    return max(1, math.ceil(frame_count / MAX_FRAMES))


def sampled_frames(frame_count: float, decoded: int | None = None) -> list[int]:
    """Frame indices upstream analyses: 0, k, 2k, … below the number of frames that actually decode.

    Args:
        frame_count: the container's declared count (cv2 CAP_PROP_FRAME_COUNT); sets the stride only.
        decoded: how many frames really decode (upstream reads until a read fails); defaults to frame_count.
    """
    step = sampling_interval(frame_count)
    end = int(frame_count) if decoded is None else decoded
    return list(range(0, max(end, 0), step))


def detection_resize(height: int, width: int, settings: DetectionSettings = EIGHTEEN_DETECTION) -> Resize:
    """Short side to 400 unless the long side would then round above 2150, in which case the long side to 2150."""
    if height <= 0 or width <= 0:
        raise ValueError(f"frame size must be positive, got {height}x{width}")
    short, long = min(height, width), max(height, width)
    scale = float(settings.target_size) / float(short)
    # np.round halves to even, as upstream compares it
    if np.round(scale * long) > settings.max_size:
        scale = float(settings.max_size) / float(long)
    prior_hw = (int(height * scale), int(width * scale))
    # cv2.resize with dsize None: saturate_cast<int>(size * f), i.e. rounding half to even
    image_hw = (int(np.rint(height * scale)), int(np.rint(width * scale)))
    return Resize(scale, prior_hw, image_hw)


def priors_match(resize: Resize, steps: tuple[int, ...] = (8, 16, 32)) -> bool:
    """Whether the priors (built for the truncated size) line up with the network's maps (from cv2's rounded size).

    Each stride-2 stage maps n to ceil(n / 2), so a level has ceil(n / step) cells. Where the two sizes give
    different counts upstream's decode fails on the shape and the whole video scores 0.5 (e.g. 333x500 frames).
    """
    return all(math.ceil(p / s) == math.ceil(i / s)
               for s in steps for p, i in zip(resize.prior_hw, resize.image_hw))


def confident_boxes(dets: np.ndarray, keep_score: float = EIGHTEEN_DETECTION.keep_score) -> np.ndarray:
    """One frame's NMS output (K, 5: x1, y1, x2, y2, score) -> the (M, 4) int64 boxes with score >= 0.8 (truncated)."""
    dets = np.asarray(dets, dtype=np.float64).reshape(-1, 5)
    return dets[dets[:, 4] >= keep_score][:, :4].astype(np.int64)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU (len(a), len(b)) with the +1-pixel convention; the union floored at 1."""
    a, b = np.asarray(a, dtype=np.float64).reshape(-1, 4), np.asarray(b, dtype=np.float64).reshape(-1, 4)
    area_a = (a[:, 2] - a[:, 0] + 1) * (a[:, 3] - a[:, 1] + 1)
    area_b = (b[:, 2] - b[:, 0] + 1) * (b[:, 3] - b[:, 1] + 1)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = np.maximum(rb - lt + 1, 0.0)
    inter = wh[..., 0] * wh[..., 1]
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1.0)


def modal_face_count(faces: list[np.ndarray]) -> int:
    """The most frequent number of faces per frame; a tie goes to the count seen first. 0 means "no face"."""
    if not faces:
        raise ValueError("no frames")
    tally = Counter(len(f) for f in faces)  # insertion-ordered: first-seen counts come first
    best, best_n = 0, 0
    for count, n in tally.items():
        if n > best_n:
            best, best_n = count, n
    return best


def face_tubes(faces: list[np.ndarray]) -> list[list[tuple[int, int]]]:
    """Link faces over frames: each face joins the tube whose last box it overlaps most (IoU >= 0.5), else starts one.

    IoUs are taken against the tubes' last boxes as they stood when the frame began; a tube takes at most one
    face per frame, and a face whose best tube is already taken is dropped (not a new tube). Tubes in order
    of creation.
    """
    tubes: list[list[tuple[int, int]]] = []
    last: list[np.ndarray] = []
    for frame, boxes in enumerate(faces):
        boxes = np.asarray(boxes).reshape(-1, 4)
        if not len(boxes):
            continue
        first = not last  # every face of the first frame with faces starts a tube, even overlapping ones
        if not first:
            ious = box_iou(boxes, np.stack(last))
            best_iou, best = ious.max(axis=1), ious.argmax(axis=1)
            taken = [False] * len(last)
        for face, box in enumerate(boxes):
            if first or best_iou[face] < TUBE_IOU:
                tubes.append([(frame, face)])
                last.append(box.copy())
                continue
            tube = int(best[face])
            if taken[tube]:
                continue
            taken[tube] = True
            last[tube] = box.copy()
            tubes[tube].append((frame, face))
    return tubes


def chosen_tubes(faces: list[np.ndarray]) -> list[list[tuple[int, int]]]:
    """The longest min(modal count, 2) tubes (a stable sort: equal lengths keep creation order); [] = no face."""
    wanted = modal_face_count(faces)
    if wanted <= 0:
        return []
    tubes = sorted(face_tubes(faces), key=len, reverse=True)
    return tubes[: min(wanted, MAX_FACES, len(tubes))]


def nearest_entries(tube: list[tuple[int, int]], num_frames: int) -> list[tuple[int, int]]:
    """For every sampled frame, the tube entry upstream uses: a pointer that moves one entry on whenever
    the next entry is strictly nearer in time (so frames before, between and after detections borrow them)."""
    if not tube:
        raise ValueError("empty tube")
    out, at = [], 0
    for frame in range(num_frames):
        if at + 1 < len(tube) and abs(tube[at][0] - frame) > abs(tube[at + 1][0] - frame):
            at += 1
        out.append(tube[at])
    return out


def clamped_square(box: np.ndarray, width: int, height: int, scale: float = BOX_SCALE) -> tuple[int, int, int]:
    """Upstream `get_boundingbox`: side int(1.3 · max side) about the integer centre, top-left clamped at 0,
    the side shortened to fit the frame's right and bottom edges -> (x1, y1, side)."""
    x1, y1, x2, y2 = (int(v) for v in box[:4])
    side = int(max(x2 - x1, y2 - y1) * scale)
    cx, cy = (x1 + x2) // 2, (y1 + y2) // 2
    left, top = max(cx - side // 2, 0), max(cy - side // 2, 0)
    side = min(width - left, side)
    side = min(height - top, side)
    return left, top, side


def square_origin(box: np.ndarray, width: int, height: int, side: int) -> tuple[int, int]:
    """Upstream `adjust_boundingbox`: top-left of a side x side square about the box's integer centre, kept inside."""
    x1, y1, x2, y2 = (int(v) for v in box[:4])
    cx, cy = (x1 + x2) // 2, (y1 + y2) // 2
    return min(max(cx - side // 2, 0), width - side), min(max(cy - side // 2, 0), height - side)


@dataclass(frozen=True)
class TubeCrop:
    """Where one sampled frame's crop of a face comes from."""

    source_frame: int  # the sampled frame whose pixels are cut (the nearest detection's, not necessarily this one)
    x: int
    y: int
    side: int


def tube_crops(faces: list[np.ndarray], tube: list[tuple[int, int]], width: int, height: int) -> list[TubeCrop]:
    """One square per sampled frame for a tube: a fixed side (the largest clamped 1.3x square, made even,
    at most min(width, height)) following each frame's nearest detection, cut from that detection's frame."""
    entries = nearest_entries(tube, len(faces))
    boxes = [np.asarray(faces[f])[i] for f, i in entries]
    side = max([0] + [clamped_square(b, width, height)[2] for b in boxes])  # upstream's running max starts at 0
    side = min(side // 2 * 2, width, height)
    return [TubeCrop(f, *square_origin(b, width, height, side), side) for (f, _), b in zip(entries, boxes)]


class PriorMismatch(ValueError):
    """The frame size where upstream's priors and the network's maps disagree (upstream scores the video 0.5)."""


@torch.inference_mode()
def detect_frames(model: torch.nn.Module, frames_bgr: list[np.ndarray],
                  settings: DetectionSettings = EIGHTEEN_DETECTION) -> list[np.ndarray]:
    """RetinaFace on every sampled frame the way Eighteen ran it -> per frame (K, 5) x1, y1, x2, y2, score.

    All frames share the first one's size (one video). Each is resized by `detection_resize` (cv2 INTER_LINEAR),
    mean-subtracted in BGR order, run in batches of 8; boxes decoded against priors for the truncated size,
    scaled by the resized image's size and divided by the scale; candidates with score > 0.02 go through
    torchvision NMS at 0.4 (kept in descending score). `confident_boxes` then picks the faces.

    Raises:
        PriorMismatch: the frame size is one where upstream's decode fails (see `priors_match`).
    """
    if not frames_bgr:
        return []
    h, w = frames_bgr[0].shape[:2]
    r = detection_resize(h, w, settings)
    if not priors_match(r):
        raise PriorMismatch(f"{h}x{w} frames: priors for {r.prior_hw} but the network sees {r.image_hw}; "
                            "upstream's decode fails here and it scores the video 0.5")
    device = next(model.parameters()).device
    priors = prior_boxes(*r.prior_hw).to(device)
    mean = np.array(settings.bgr_mean, dtype=np.float32)
    out: list[np.ndarray] = []
    for start in range(0, len(frames_bgr), settings.batch):
        batch = []
        for frame in frames_bgr[start:start + settings.batch]:
            if frame.shape[:2] != (h, w):
                raise ValueError(f"frame {start + len(batch)} is {frame.shape[:2]}, the video's first is {(h, w)}")
            if r.scale != 1:
                frame = cv2.resize(frame, None, None, fx=r.scale, fy=r.scale, interpolation=cv2.INTER_LINEAR)
            batch.append(frame.astype(np.float32) - mean)
        x = torch.from_numpy(np.stack(batch).transpose(0, 3, 1, 2).copy()).to(device)
        loc, conf, _ = model(x)
        ih, iw = x.shape[2:]
        size = torch.tensor([iw, ih, iw, ih], dtype=torch.float32, device=device)
        for i in range(len(batch)):
            boxes = decode_boxes(loc[i].float(), priors) * size / r.scale
            scores = conf[i, :, 1].float()
            keep = scores > settings.confidence
            boxes, scores = boxes[keep], scores[keep]
            kept = torchvision.ops.nms(boxes, scores, settings.nms_iou)
            out.append(torch.cat([boxes[kept], scores[kept, None]], dim=1).cpu().numpy())
    return out


def cut_crops(frames_bgr: list[np.ndarray], crops: list[TubeCrop], sizes: tuple[int, ...] = CROP_SIZES
              ) -> dict[int, np.ndarray]:
    """One tube's squares cut from their source frames and resized (cv2 INTER_LINEAR, still BGR uint8).

    Returns:
        size -> (frames, size, size, 3) for each of `sizes` (256 and 299 upstream).
    """
    out: dict[int, list[np.ndarray]] = {s: [] for s in sizes}
    for c in crops:
        patch = frames_bgr[c.source_frame][c.y:c.y + c.side, c.x:c.x + c.side]
        if patch.shape[:2] != (c.side, c.side) or c.side <= 0:
            raise ValueError(f"crop {c} does not fit frame {c.source_frame} of size {frames_bgr[c.source_frame].shape[:2]}")
        for s in sizes:
            out[s].append(cv2.resize(patch, (s, s), interpolation=cv2.INTER_LINEAR))
    return {s: np.stack(v) if v else np.zeros((0, s, s, 3), np.uint8) for s, v in out.items()}


def face_crops(model: torch.nn.Module, frames_bgr: list[np.ndarray],
               settings: DetectionSettings = EIGHTEEN_DETECTION) -> list[dict[int, np.ndarray]]:
    """Upstream `detect_video_face`: detect, keep faces >= 0.8, link tubes, keep the longest min(mode, 2), crop.

    Returns:
        One entry per kept face: size -> (frames, size, size, 3) BGR uint8 crops, one per sampled frame.
        [] means "no face" (the modal face count is 0), which upstream scores 0.5.
    """
    if not frames_bgr:
        return []
    faces = [confident_boxes(d, settings.keep_score) for d in detect_frames(model, frames_bgr, settings)]
    height, width = frames_bgr[0].shape[:2]
    return [cut_crops(frames_bgr, tube_crops(faces, tube, width, height)) for tube in chosen_tubes(faces)]
