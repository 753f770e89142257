"""Frame geometry (media layer): boxes, IoU, interpolation, crop rectangles, crops, heatmaps placed back on frames."""
from __future__ import annotations

from dataclasses import asdict, dataclass

import cv2
import numpy as np

Box = tuple[float, float, float, float]  # x1, y1, x2, y2 in full-resolution pixels


@dataclass(frozen=True)
class CropPolicy:
    """How a detector wants its face crop cut from the full-resolution frame.

    Args:
        size: side of the square crop the model takes, in pixels.
        margin: fraction of the box's width/height added on each side before cropping.
        square: grow the (margin-expanded) box to a square around its centre first.
        pad: resize isotropically (longest side = size) and pad to a square with black,
            instead of stretching the crop to size x size.
    """

    size: int
    margin: float = 0.2
    square: bool = True
    pad: bool = False

    def to_dict(self) -> dict:
        return asdict(self)


def iou(a: Box, b: Box) -> float:
    """Intersection over union of two x1,y1,x2,y2 boxes."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def interpolate(a: Box, b: Box, t: float) -> Box:
    """The box a fraction t of the way from a to b."""
    return tuple(float(x + (y - x) * t) for x, y in zip(a, b))  # type: ignore[return-value]


def crop_rect(box: Box, policy: CropPolicy) -> tuple[int, int, int, int]:
    """The frame rectangle (x1, y1, x2, y2, integers, may extend past the frame) a crop covers."""
    x1, y1, x2, y2 = box
    w, h = x2 - x1, y2 - y1
    x1, x2 = x1 - w * policy.margin, x2 + w * policy.margin
    y1, y2 = y1 - h * policy.margin, y2 + h * policy.margin
    if policy.square:
        cx, cy, side = (x1 + x2) / 2, (y1 + y2) / 2, max(x2 - x1, y2 - y1)
        x1, x2, y1, y2 = cx - side / 2, cx + side / 2, cy - side / 2, cy + side / 2
    x1, y1, x2, y2 = (int(round(v)) for v in (x1, y1, x2, y2))
    return x1, y1, max(x2, x1 + 1), max(y2, y1 + 1)


def crop_face(frame: np.ndarray, box: Box, policy: CropPolicy) -> np.ndarray:
    """Cut a face out of a full-resolution RGB frame the way a detector asks for it.

    The box grows by `policy.margin` of its size on each side (and to a square if asked);
    parts outside the frame are filled with black so the face stays centred.

    Returns:
        uint8 RGB array of shape (policy.size, policy.size, 3).
    """
    x1, y1, x2, y2 = crop_rect(box, policy)
    fh, fw = frame.shape[:2]
    region = np.zeros((y2 - y1, x2 - x1, 3), dtype=np.uint8)
    sx1, sy1, sx2, sy2 = max(0, x1), max(0, y1), min(fw, x2), min(fh, y2)
    if sx2 > sx1 and sy2 > sy1:
        region[sy1 - y1 : sy2 - y1, sx1 - x1 : sx2 - x1] = frame[sy1:sy2, sx1:sx2]
    size = policy.size
    if not policy.pad:
        interp = cv2.INTER_AREA if region.shape[0] > size else cv2.INTER_LINEAR
        return cv2.resize(region, (size, size), interpolation=interp)
    rh, rw = region.shape[:2]
    scale = size / max(rh, rw)
    nw, nh = max(1, round(rw * scale)), max(1, round(rh * scale))
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC
    resized = cv2.resize(region, (nw, nh), interpolation=interp)
    out = np.zeros((size, size, 3), dtype=np.uint8)
    top, left = (size - nh) // 2, (size - nw) // 2
    out[top : top + nh, left : left + nw] = resized
    return out


def blend_heatmap(rgb: np.ndarray, heatmap: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """A [0, 1] heatmap coloured (jet) and blended over an RGB image of the same size."""
    colour = cv2.applyColorMap(np.uint8(255 * np.clip(heatmap, 0, 1)), cv2.COLORMAP_JET)[..., ::-1]
    return np.uint8(np.clip((1 - alpha) * rgb + alpha * colour, 0, 255))


def heatmap_on_frame(frame: np.ndarray, box: Box, policy: CropPolicy, heatmap: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """Put a crop's heatmap back where the crop came from on the full frame (uint8 RGB)."""
    x1, y1, x2, y2 = crop_rect(box, policy)
    fh, fw = frame.shape[:2]
    if policy.pad:
        # Undo the isotropic resize and padding of crop_face: keep the part that holds the region.
        rw, rh = x2 - x1, y2 - y1
        scale = policy.size / max(rw, rh)
        nw, nh = max(1, round(rw * scale)), max(1, round(rh * scale))
        top, left = (policy.size - nh) // 2, (policy.size - nw) // 2
        heatmap = heatmap[top : top + nh, left : left + nw]
    full = cv2.resize(heatmap, (x2 - x1, y2 - y1), interpolation=cv2.INTER_LINEAR)
    sx1, sy1, sx2, sy2 = max(0, x1), max(0, y1), min(fw, x2), min(fh, y2)
    out = frame.copy()
    if sx2 > sx1 and sy2 > sy1:
        region = out[sy1:sy2, sx1:sx2]
        out[sy1:sy2, sx1:sx2] = blend_heatmap(region, full[sy1 - y1 : sy2 - y1, sx1 - x1 : sx2 - x1], alpha)
    return out


def isotropic_fit(region: np.ndarray, size: int) -> np.ndarray:
    """Resize so the longer side is `size` (area when shrinking, cubic when growing), then put it in
    the centre of a black size x size square (selimsef's isotropic resize and put-to-centre)."""
    h, w = region.shape[:2]
    if max(h, w) != size:
        scale = size / max(h, w)
        nw, nh = (size, int(h * scale)) if w > h else (int(w * scale), size)
        region = cv2.resize(region, (max(1, nw), max(1, nh)), interpolation=cv2.INTER_CUBIC if scale > 1 else cv2.INTER_AREA)
    region = region[:size, :size]
    out = np.zeros((size, size, 3), dtype=np.uint8)
    top, left = (size - region.shape[0]) // 2, (size - region.shape[1]) // 2
    out[top : top + region.shape[0], left : left + region.shape[1]] = region
    return out


def heatmap_into_rect(frame: np.ndarray, rect: tuple[int, int, int, int], heatmap: np.ndarray,
                      content: tuple[int, int, int, int] | None = None, alpha: float = 0.45) -> np.ndarray:
    """Blend a crop's heatmap back over the frame rectangle the crop was cut from.

    Args:
        rect: x1, y1, x2, y2 inside the frame.
        content: the part of the heatmap (left, top, right, bottom) that holds the rectangle, when
            the crop was padded around it; the whole heatmap otherwise.
    """
    x1, y1, x2, y2 = rect
    if content is not None:
        left, top, right, bottom = content
        heatmap = heatmap[top:bottom, left:right]
    out = frame.copy()
    if x2 > x1 and y2 > y1 and heatmap.size:
        full = cv2.resize(heatmap.astype(np.float32), (x2 - x1, y2 - y1), interpolation=cv2.INTER_LINEAR)
        out[y1:y2, x1:x2] = blend_heatmap(out[y1:y2, x1:x2], full, alpha)
    return out
