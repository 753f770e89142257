"""How a Grad-CAM heatmap is shown: blended at an analyst's opacity, re-weighted in place, and its colour scale."""
from __future__ import annotations

import inspect

import cv2
import numpy as np

from workbench.geometry import blend_heatmap

# Detectors put a heatmap back on the frame through blend_heatmap at its default opacity (see
# Detector.place_heatmap and its overrides); re-weighting starts from that opacity.
PLACED_OPACITY: float = inspect.signature(blend_heatmap).parameters["alpha"].default


def blend_at(image: np.ndarray, heatmap: np.ndarray, opacity: float) -> np.ndarray:
    """The heatmap coloured (jet) over an RGB image of the same size at an opacity in [0, 1].

    Args:
        image: uint8 RGB (h, w, 3).
        heatmap: float (h, w) in [0, 1].
        opacity: 0 shows the image alone, 1 the colour alone.

    Returns:
        uint8 RGB (h, w, 3).
    """
    return blend_heatmap(image, heatmap, _opacity(opacity))


def reweight(original: np.ndarray, blended: np.ndarray, opacity: float, used: float = PLACED_OPACITY) -> np.ndarray:
    """An image blended at `used` opacity, re-blended at another opacity without the heatmap.

    A detector's place_heatmap returns the frame with its heatmap blended at `used`; where a pixel
    changed, the colour it blended in is recovered from the two images, so the in-place view follows
    the opacity slider without another Grad-CAM pass (exact up to the 8-bit rounding of `blended`).

    Args:
        original: uint8 RGB, the image before blending.
        blended: uint8 RGB of the same shape, `original` with a colour blended in at `used`.
        opacity: the wanted opacity in [0, 1].
        used: the opacity `blended` was made with (> 0).

    Returns:
        uint8 RGB, `original` with the same colour at `opacity`.

    >>> base = np.full((1, 1, 3), 100, np.uint8)
    >>> int(reweight(base, np.full((1, 1, 3), 145, np.uint8), 0.9, used=0.45)[0, 0, 0])
    190
    """
    if original.shape != blended.shape:
        raise ValueError(f"original {original.shape} and blended {blended.shape} differ in shape")
    if not 0 < used <= 1:
        raise ValueError(f"the opacity blended with must be in (0, 1], not {used}")
    base = original.astype(np.float32)
    change = blended.astype(np.float32) - base  # = used * (colour - original)
    return np.uint8(np.clip(np.rint(base + change * (_opacity(opacity) / used)), 0, 255))


def colour_bar(width: int = 256, height: int = 18, label_height: int = 16) -> np.ndarray:
    """The heatmap's colour scale as an RGB image: jet from 0 (left) to 1 (right), labelled 0, 0.5, 1 beneath.

    Returns:
        uint8 RGB (height + label_height, width, 3) on white.
    """
    if width < 32 or height < 1 or label_height < 10:
        raise ValueError("the colour bar needs width >= 32, height >= 1 and label_height >= 10")
    ramp = np.uint8(np.round(np.linspace(0, 255, width)))
    bar = cv2.applyColorMap(np.tile(ramp, (height, 1)), cv2.COLORMAP_JET)[..., ::-1]
    labels = np.full((label_height, width, 3), 255, np.uint8)
    scale, thick = 0.4, 1
    for text, at in (("0", 0.0), ("0.5", 0.5), ("1", 1.0)):
        (tw, th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thick)
        x = int(round(at * (width - 1) - tw / 2))
        x = max(0, min(width - tw, x))
        cv2.putText(labels, text, (x, label_height - (label_height - th) // 2), cv2.FONT_HERSHEY_SIMPLEX, scale,
                    (0, 0, 0), thick, cv2.LINE_AA)
    return np.ascontiguousarray(np.vstack([bar, labels]))


def context_square(frame: np.ndarray, box, scale: float = 2.0) -> tuple[int, int, int, int]:
    """A square around a face box (`scale` times its longer side): (x1, y1, x2, y2).

    Near an edge the square slides inside the frame rather than being cut, so it stays square
    (it is cut only where the frame itself is narrower than the square).
    """
    x1, y1, x2, y2 = (float(v) for v in box)
    h, w = frame.shape[:2]
    side = int(round(max(x2 - x1, y2 - y1) * scale))
    if side < 1 or x2 <= 0 or y2 <= 0 or x1 >= w or y1 >= h:
        raise ValueError(f"the box {box} lies outside the {w}x{h} frame")

    def span(centre: float, length: int) -> tuple[int, int]:
        size = min(side, length)
        start = int(round(centre - size / 2))
        start = max(0, min(length - size, start))
        return start, start + size

    left, right = span((x1 + x2) / 2, w)
    top, bottom = span((y1 + y2) / 2, h)
    return left, top, right, bottom


def _opacity(opacity: float) -> float:
    value = float(opacity)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"opacity must be in [0, 1], not {opacity}")
    return value


def fit_square(image: np.ndarray, size: int) -> np.ndarray:
    """An image scaled to fit a size x size square (aspect kept, white margins), so panels line up.

    Enlarging uses nearest-neighbour: the analyst sees the model input's real pixels, not invented detail.
    """
    h, w = image.shape[:2]
    scale = size / max(h, w)
    nw, nh = max(1, int(round(w * scale))), max(1, int(round(h * scale)))
    resized = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_NEAREST if scale > 1 else cv2.INTER_AREA)
    out = np.full((size, size, 3), 255, np.uint8)
    top, left = (size - nh) // 2, (size - nw) // 2
    out[top : top + nh, left : left + nw] = resized
    return out
