"""The Medics' face geometry and preprocessing, as pure functions: which frames, face regions through time, crops, per-model inputs.

Reproduces FakeFinder's `detectors/medics/face_utils.py` and `ensemble.py` (780839f; a port of
the authors' Kaggle notebook), quirks included where they change results:
  * only the first 100 frames are analysed; faces are found on frames 0, 10, ..., 90 shrunk to
    0.25 x 1920 / max(w, h) (retry at 0.5 x when no face region is kept);
  * a face is a connected region of a 3-D (sampled frame x row x column) mask of the MTCNN boxes,
    kept when it spans >= 30 frames, visited in descending mean detection probability;
  * a box edge is truncated with int() and used as a Python slice bound, so a box whose top or left
    is at or below -1 slices from the far edge and usually marks nothing in that frame;
  * the 3-D crop is the region's static union box, pasted at the TOP-LEFT of a zero square, resized
    to 256 and centre-cropped to 224;
  * the 2-D crops follow the region's centre, interpolated with both ends included.
The MTCNN call itself lives elsewhere; these functions take its boxes.
Written from the research spec (/work/notes/issue15-spec.md §3.3), not copied.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import skimage.measure
import torch

MAX_FRAMES = 100          # the authors' limit: frames 0..99 at most
FACE_FRAME_STEP = 10      # detection on every 10th of those
DETECTION_FACTOR = 0.25   # x 1920 / max(w, h)
RETRY_FACTOR = 0.5        # when no region is kept at DETECTION_FACTOR
OOM_FACTOR = 0.125        # upstream's retry after a RuntimeError (CUDA out of memory)
MIN_FRAMES_FOR_FACE = 30
MAX_FRAMES_FOR_FACE = 100
FACE_SIZE = 256
CROP_3D = 224
FRAMES_2D = 32
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# FakeFinder's cnn3d/builder.py "norm" of each 3-D architecture.
NORM_OF_3D = {"i3d": "i3d", "res34": "nil", "mc3_112": "112_imagenet", "mc3_224": "224_imagenet",
              "r2p1_112": "112_imagenet"}


def face_finding_frames(frame_count: int) -> list[int]:
    """The frame indices MTCNN sees: 0, 10, 20, ... below min(frame_count, 100)."""
    return list(range(0, min(frame_count, MAX_FRAMES), FACE_FRAME_STEP))


def detection_scale(width: int, height: int, factor: float = DETECTION_FACTOR) -> float:
    """Upstream's `rescale`: factor x 1920 / max(width, height); 1 / this maps boxes back to the full frame."""
    if width <= 0 or height <= 0:
        raise ValueError(f"frame size must be positive, got {width}x{height}")
    return factor * 1920.0 / max(width, height)


def detection_size(width: int, height: int, scale: float) -> tuple[int, int]:
    """(width, height) of the shrunk detection frame: each side times `scale`, truncated (cv2.resize dsize)."""
    return int(width * scale), int(height * scale)


def shrink_frame(rgb: np.ndarray, scale: float) -> np.ndarray:
    """A frame as MTCNN sees it: cv2.resize to `detection_size` with INTER_LINEAR.

    Upstream resizes the BGR frame and then converts to RGB; INTER_LINEAR treats each channel
    alone, so resizing the RGB frame gives the same pixels.
    """
    h, w = rgb.shape[:2]
    return cv2.resize(rgb, detection_size(w, h, scale), interpolation=cv2.INTER_LINEAR)


def face_mask(boxes_per_frame, probs_per_frame, shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """The boolean face volume and its probability volume (upstream get_roi_for_each_face, first part).

    Args:
        boxes_per_frame: per sampled frame, None or a sequence of (left, top, right, bottom) boxes
            in the shrunk frame (MTCNN's float boxes).
        probs_per_frame: per sampled frame, the boxes' probabilities (same nesting).
        shape: (sampled frames, rows, cols) of the shrunk frames.
    Returns:
        (mask bool (n, h, w), probability float32 (n, h, w)); a later box overwrites an earlier one's
        probability. Each edge is int()-truncated and used as a slice bound unclamped, as upstream:
        a top of -0.7 becomes 0 but -3.2 becomes -3, i.e. the last 3 rows.
    """
    if len(boxes_per_frame) != shape[0]:
        raise ValueError(f"{len(boxes_per_frame)} box lists for {shape[0]} sampled frames")
    mask = np.zeros(shape, dtype=bool)
    prob = np.zeros(shape, dtype=np.float32)
    for i, boxes in enumerate(boxes_per_frame):
        if boxes is None:
            continue
        for box, p in zip(boxes, probs_per_frame[i]):
            left, top, right, bottom = (int(v) for v in box)
            mask[i, top:bottom, left:right] = True
            prob[i, top:bottom, left:right] = p
    return mask, prob


def fill_gaps(mask: np.ndarray) -> np.ndarray:
    """Fill each empty interior frame with the AND of its neighbours, in frame order (a filled frame feeds the next)."""
    out = mask.copy()
    for i in range(1, len(out) - 1):
        if not out[i].any():
            out[i] = out[i - 1] & out[i + 1]
    return out


@dataclass(frozen=True)
class FaceRegion:
    """One face through time: frames [frame_from, frame_to) of the video, a static box in full-frame pixels.

    `rows` and `cols` are inclusive (first, last) pixel indices; `mask` is the region's own
    sampled-frame mask (bool, sampled frames frame_from // 10 ... frame_to // 10) in the shrunk frame.
    """
    frame_from: int
    frame_to: int
    rows: tuple[int, int]
    cols: tuple[int, int]
    mask: np.ndarray


def face_regions(boxes_per_frame, probs_per_frame, shape: tuple[int, int, int], scale: float,
                 step: int = FACE_FRAME_STEP) -> list[FaceRegion]:
    """The faces through time, in upstream's order (descending mean probability), short ones dropped.

    Args:
        boxes_per_frame, probs_per_frame, shape: as `face_mask`.
        scale: the detection scale (`detection_scale`); boxes are mapped back with 1 / scale.
        step: the sampling step between the sampled frames.
    Returns:
        One FaceRegion per connected component (26-connectivity) spanning >= 30 frames.
    """
    mask, prob = face_mask(boxes_per_frame, probs_per_frame, shape)
    labels = skimage.measure.label(fill_gaps(mask))
    region_labels = np.unique(labels)[1:]
    mean_probs = [np.mean(prob[labels == r]) for r in region_labels]
    # Upstream's argsort (default kind) reversed: ties come out in descending label order.
    order = region_labels[np.argsort(mean_probs)[::-1]]
    upsample = 1.0 / scale
    out = []
    for r in order:
        region = labels == r
        frames = np.flatnonzero(region.any(axis=(1, 2)))
        first, last = int(frames.min()), int(frames.max())
        rows = np.flatnonzero(region[first:last + 1].any(axis=(0, 2)))
        cols = np.flatnonzero(region[first:last + 1].any(axis=(0, 1)))
        frame_from = first * step
        frame_to = min((last + 1) * step - 1, frame_from + MAX_FRAMES_FOR_FACE)
        if frame_to - frame_from < MIN_FRAMES_FOR_FACE:
            continue
        out.append(FaceRegion(
            frame_from, frame_to,
            (int(rows.min() * upsample), int(rows.max() * upsample)),
            (int(cols.min() * upsample), int(cols.max() * upsample)),
            region[frame_from // step:frame_to // step + 1]))
    return out


def _first_last_pixel(frame_mask: np.ndarray):
    """(x1, y1, x2, y2) from the first and last True pixel in row-major order, or None (upstream get_coords)."""
    coords = np.argwhere(frame_mask)
    if len(coords) == 0:
        return None
    (y1, x1), (y2, x2) = coords[0], coords[-1]
    return int(x1), int(y1), int(x2), int(y2)


def face_boxes_2d(region: FaceRegion, scale: float) -> np.ndarray:
    """The 2-D model's per-frame square boxes for one region (upstream get_faces), in full-frame pixels.

    Args:
        region: a region from `face_regions`.
        scale: the detection scale it was found at.
    Returns:
        int array (10 x (sampled frames - 1), 4) of (x1, y1, x2, y2); box k goes with frame frame_from + k.
    Raises:
        ValueError: an interior sampled frame of the region has no pixel (upstream raised here too).
    """
    corners = [_first_last_pixel(m) for m in region.mask]
    if len(corners) < 2:
        raise ValueError("a face region needs at least two sampled frames")
    if corners[0] is None:
        corners[0] = corners[1]
    if corners[-1] is None:
        corners[-1] = corners[-2]
    if any(c is None for c in corners):
        raise ValueError("a face region has an empty interior frame")
    rows, cols = region.mask.shape[1:]
    face = np.asarray(corners)
    side = int(np.percentile(np.concatenate([face[:, 2] - face[:, 0], face[:, 3] - face[:, 1]]), 90) * 1.2)
    centres = np.stack([(face[:, 0] + face[:, 2]) / 2, (face[:, 1] + face[:, 3]) / 2], axis=1)
    # Both ends included: each later centre appears twice (end of one gap, start of the next).
    path = np.vstack([np.stack([np.linspace(a[0], b[0], 10), np.linspace(a[1], b[1], 10)], axis=1)
                      for a, b in zip(centres[:-1], centres[1:])]).astype(int)
    x1, y1 = path[:, 0] - side // 2, path[:, 1] - side // 2
    x2, y2 = path[:, 0] + side // 2, path[:, 1] + side // 2
    # Shift (not shrink) back inside the shrunk frame, in upstream's order.
    x2[x1 < 0] -= x1[x1 < 0]
    y2[y1 < 0] -= y1[y1 < 0]
    x1[x1 < 0] = 0
    y1[y1 < 0] = 0
    y1[y2 > rows] += rows - y2[y2 > rows]
    x1[x2 > cols] += cols - x2[x2 > cols]
    y2[y2 > rows] = rows
    x2[x2 > cols] = cols
    return (np.stack([x1, y1, x2, y2], axis=1) * (1.0 / scale)).astype(int)


def frames_2d(region: FaceRegion, n_boxes: int) -> list[int]:
    """The video frames the 2-D model sees for a region: frame_from ... min(frame_from + 32, frame_to - 1) - 1, one per box."""
    return list(range(region.frame_from, min(region.frame_from + FRAMES_2D, region.frame_to - 1)))[:n_boxes]


def last_frame_needed(regions: list[FaceRegion]) -> int:
    """How many frames the models need decoded: max frame_to (frame frame_to itself is never used)."""
    return max((r.frame_to for r in regions), default=0)


def square_top_left(frames: np.ndarray, size: int = FACE_SIZE) -> np.ndarray:
    """Paste each frame at the top-left of a zero square of side max(h, w), resize to size (INTER_LINEAR on float64), truncate to uint8.

    Args:
        frames: (T, h, w, 3) uint8 crops.
    Returns:
        (T, size, size, 3) uint8 (upstream resize_and_square_face).
    """
    t, h, w = frames.shape[:3]
    side = max(h, w)
    out = np.empty((t, size, size, 3), dtype=np.uint8)
    for i, frame in enumerate(frames):
        padded = np.zeros((side, side, 3))
        padded[:h, :w] = frame
        if side != size:
            padded = cv2.resize(padded, (size, size))
        out[i] = padded.astype(np.uint8)
    return out


def centre_crop(frames: np.ndarray, size: int = CROP_3D) -> np.ndarray:
    """The central size x size window of each frame (offset (h - size) // 2), as float64 like upstream."""
    h, w = frames.shape[1:3]
    y, x = (h - size) // 2, (w - size) // 2
    return frames[:, y:y + size, x:x + size].astype(np.float64)


def crop_3d(video: np.ndarray, region: FaceRegion) -> np.ndarray:
    """The region's static box over frames [frame_from, frame_to), squared at the top-left, 256, centre 224.

    Args:
        video: (frames, H, W, 3) uint8 RGB, full resolution, from frame 0.
    Returns:
        (T, 224, 224, 3) float64 in 0..255.
    """
    (r0, r1), (c0, c1) = region.rows, region.cols
    clip = video[region.frame_from:region.frame_to, r0:r1 + 1, c0:c1 + 1]
    if clip.size == 0:
        raise ValueError(f"empty 3-D crop: frames {region.frame_from}-{region.frame_to}, rows {region.rows}, "
                         f"cols {region.cols} of a {video.shape} video")
    return centre_crop(square_top_left(clip))


def _albumentations_normalize(frame: np.ndarray) -> np.ndarray:
    """albumentations 0.5.2 Normalize(): float32 (x - mean*255) * (1 / (std*255))."""
    mean = np.array(IMAGENET_MEAN, dtype=np.float32) * 255.0
    denominator = np.reciprocal(np.array(IMAGENET_STD, dtype=np.float32) * 255.0, dtype=np.float32)
    return (frame.astype(np.float32) - mean) * denominator


def model_input_3d(clip: np.ndarray, norm: str) -> torch.Tensor:
    """One 3-D member's input from `crop_3d`'s clip: (3, T, H, W) float32.

    Args:
        clip: (T, 224, 224, 3) float64 RGB in 0..255.
        norm: "i3d" (x / 255 * 2 - 1), "nil" (raw 0..255), "224_imagenet" (ImageNet Normalize at 224)
            or "112_imagenet" (INTER_LINEAR resize to 112, then Normalize); see NORM_OF_3D.
    """
    if norm == "112_imagenet":
        clip = np.array([_albumentations_normalize(cv2.resize(f, (112, 112), interpolation=cv2.INTER_LINEAR))
                         for f in clip])
    elif norm == "224_imagenet":
        clip = np.array([_albumentations_normalize(f) for f in clip])
    elif norm not in ("i3d", "nil"):
        raise ValueError(f"unknown Medics normalisation {norm!r}")
    x = torch.from_numpy(np.ascontiguousarray(clip.transpose(3, 0, 1, 2))).float()
    return x / 255.0 * 2 - 1 if norm == "i3d" else x


def model_input_2d(crops: list[np.ndarray]) -> torch.Tensor:
    """The 2-D member's input from its face crops: (1, 3, N, 256, 256) float32.

    Each RGB uint8 crop is resized to 256 x 256 (INTER_CUBIC), reversed to BGR, scaled to 0..1 and
    normalised with the ImageNet RGB-order mean/std applied to the BGR channels (upstream's
    Preprocessor); frames 0, 2, 4, ... are mirrored left-right.
    """
    if not crops:
        raise ValueError("no 2-D face crops")
    empty = [i for i, c in enumerate(crops) if c.size == 0]
    if empty:
        # upstream: cv2.resize raised and its bare except dropped the whole 2-D model
        raise ValueError(f"empty 2-D face crop(s) at {empty[:5]} (a box past the frame edge)")
    x = np.asarray([cv2.resize(c, (256, 256), interpolation=cv2.INTER_CUBIC) for c in crops])
    x = ((x[..., ::-1].astype(np.float32) - 0.0) * 1.0) / 255.0 + 0.0
    for ch in range(3):
        x[..., ch] -= IMAGENET_MEAN[ch]
        x[..., ch] /= IMAGENET_STD[ch]
    x = x.transpose(3, 0, 1, 2)
    x[:, ::2] = x[:, ::2, :, ::-1]
    return torch.from_numpy(np.ascontiguousarray(x)).unsqueeze(0)


def crops_2d(video: np.ndarray, region: FaceRegion, boxes: np.ndarray) -> list[np.ndarray]:
    """Slice the full-resolution frames with the 2-D boxes (box k on frame frame_from + k)."""
    return [video[f, y1:y2, x1:x2] for f, (x1, y1, x2, y2) in zip(frames_2d(region, len(boxes)), boxes)]


def crop_sizes_2d(region: FaceRegion, boxes: np.ndarray, frame_size: tuple[int, int]) -> list[tuple[int, int]]:
    """(rows, cols) of each crop `crops_2d` cuts, from the boxes alone (Python slice semantics, negative starts included).

    Args:
        region, boxes: as `crops_2d`.
        frame_size: (height, width) of the full-resolution frames.
    """
    height, width = frame_size
    return [(len(range(height)[y1:y2]), len(range(width)[x1:x2]))
            for _, (x1, y1, x2, y2) in zip(frames_2d(region, len(boxes)), boxes)]


def fakefinder_stacks_2d(sizes: list[tuple[int, int]]) -> bool:
    """Whether FakeFinder's `np.asarray(x)` of one face's 2-D crops succeeded under its numpy 1.21.1.

    Crops of one size stack; crops whose heights differ become an object array that its
    preprocessing still handles; but when every height is the same and a width differs, numpy
    before 1.24 raises ValueError ("could not broadcast input array from shape ... into shape ..."),
    and FakeFinder's bare except then dropped the 2-D model for the whole video. Box sides are
    equal in the shrunk frame, so this happens when 1 / scale is not a whole number (e.g. 720p)
    and the face's boxes move sideways but not up or down.
    """
    heights, widths = {h for h, _ in sizes}, {w for _, w in sizes}
    return len(heights) > 1 or len(widths) <= 1


@dataclass(frozen=True)
class FaceSearch:
    """What the face search found: the regions, the scale they were found at, and each attempt as (factor, outcome)."""
    regions: list[FaceRegion]
    scale: float
    attempts: list[tuple[float, str]]


def search_faces(detect, width: int, height: int) -> FaceSearch:
    """Upstream face_detection_wrapper's attempts around a detector, without its silent excepts.

    Args:
        detect: detect(scale) -> (boxes_per_frame, probs_per_frame, (n, h, w)) for the sampled
            frames shrunk by `scale` (`shrink_frame`); MTCNN with the Medics settings.
        width, height: the video's frame size.
    Returns:
        A FaceSearch. First at 0.25 x 1920 / max(w, h); a RuntimeError there (upstream: CUDA out
        of memory) retries at 0.125 x; when no region is kept, once more at 0.5 x (upstream's x 2
        of 0.25, whichever scale the first attempt ended at). A RuntimeError in a retry ends the
        search with no regions and names it in `attempts`; other errors propagate.
    """
    attempts: list[tuple[float, str]] = []

    def attempt(factor: float) -> tuple[list[FaceRegion], float]:
        scale = detection_scale(width, height, factor)
        boxes, probs, shape = detect(scale)
        regions = face_regions(boxes, probs, shape, scale)
        attempts.append((factor, f"{len(regions)} face region(s)"))
        return regions, scale

    try:
        regions, scale = attempt(DETECTION_FACTOR)
    except RuntimeError as exc:
        attempts.append((DETECTION_FACTOR, f"failed: {exc}"))
        try:
            regions, scale = attempt(OOM_FACTOR)
        except RuntimeError as exc2:
            attempts.append((OOM_FACTOR, f"failed: {exc2}"))
            return FaceSearch([], detection_scale(width, height, OOM_FACTOR), attempts)
    if regions:
        return FaceSearch(regions, scale, attempts)
    try:
        regions, scale = attempt(RETRY_FACTOR)
    except RuntimeError as exc:
        attempts.append((RETRY_FACTOR, f"failed: {exc}"))
        return FaceSearch([], detection_scale(width, height, RETRY_FACTOR), attempts)
    return FaceSearch(regions, scale, attempts)
