"""Self-Blended Images (Shiohara & Yamasaki, CVPR 2022): pseudo-fakes made from one real face crop."""
from __future__ import annotations

from functools import lru_cache
from statistics import NormalDist

import cv2
import numpy as np

# Blend ratios from the paper: mostly a full blend, sometimes a partial one.
BLEND_RATIOS = (0.25, 0.5, 0.75, 1.0, 1.0, 1.0)
# Least mean absolute difference (grey levels, over the mask's core) a fake must show against
# both the target copy and the untouched crop; below it the sample would teach "real" as "fake".
MIN_CHANGE = 2.0
# Standard-normal quantiles at the 256 mid-probabilities: a lookup table for fast noise.
_NORMAL_QUANTILES = np.float32([NormalDist().inv_cdf((i + 0.5) / 256) for i in range(256)]).reshape(256, 1)


def _check_image(img: np.ndarray) -> None:
    if not isinstance(img, np.ndarray) or img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"expected an HxWx3 uint8 RGB image, got {getattr(img, 'shape', None)} "
                         f"{getattr(img, 'dtype', type(img).__name__)}")


def _odd(x: float, lo: int = 3) -> int:
    k = max(lo, int(round(x)))
    return k if k % 2 else k + 1


def _box_ellipse_mask(shape: tuple[int, int], box, rng: np.random.Generator) -> np.ndarray:
    # Fallback when the landmarks are unusable: an ellipse inscribed in (a jittered) box.
    h, w = shape
    x1, y1, x2, y2 = (float(v) for v in box)
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    ax = max(2.0, (x2 - x1) / 2 * rng.uniform(0.7, 1.0))
    ay = max(2.0, (y2 - y1) / 2 * rng.uniform(0.7, 1.0))
    if not np.isfinite([cx, cy, ax, ay]).all():
        cx, cy, ax, ay = w / 2, h / 2, w / 4, h / 4
    out = np.zeros((h, w), np.uint8)
    cv2.ellipse(out, (int(round(cx)), int(round(cy))), (int(round(ax)), int(round(ay))), 0, 0, 360, 1, -1)
    if not out.any():  # a box outside the crop: the crop is centred on the face anyway
        cv2.ellipse(out, (w // 2, h // 2), (max(1, w // 4), max(1, h // 4)), 0, 0, 360, 1, -1)
    return out.astype(np.float32)


def face_hull_mask(shape: tuple[int, int], landmarks: np.ndarray, box, rng: np.random.Generator) -> np.ndarray:
    """A filled convex face region built from MTCNN's 5 landmarks and the face box.

    Synthetic contour points (forehead, temples, cheeks, jaw, chin) are placed in a face frame
    (eye line / eye-to-mouth axis); one random "extent" moves them all between an inner-face
    and a whole-face hull, small per-point jitter changes the shape, and the face box
    (randomly enlarged a little) bounds them.

    Args:
        shape: (H, W) of the crop.
        landmarks: (5, 2) x, y of left eye, right eye, nose, left and right mouth corners.
        box: (x1, y1, x2, y2) face box in the same pixels.
        rng: the only source of randomness.

    Returns:
        float32 (H, W) mask, 1 inside the hull and 0 outside.
    """
    h, w = int(shape[0]), int(shape[1])
    lm = np.asarray(landmarks, dtype=np.float64).reshape(5, 2)
    le, re, _nose, lmo, rmo = lm
    eye_c, mouth_c = (le + re) / 2, (lmo + rmo) / 2
    axis = eye_c - mouth_c  # points "up" the face, whatever the roll
    d = float(np.hypot(*axis))
    eye_w = float(np.hypot(*(re - le)))
    if not np.isfinite(lm).all() or d < 2.0 or eye_w < 2.0:
        return _box_ellipse_mask((h, w), box, rng)
    up = axis / d
    right = np.array([-up[1], up[0]])
    if np.dot(right, re - le) < 0:  # image-left to image-right, even if the face is mirrored
        right = -right

    e = rng.uniform()  # 0: inner face (brows to lips), 1: whole face (hairline to chin, ears)
    lerp = lambda a, b: a + (b - a) * e  # noqa: E731

    forehead = lerp(0.35, 1.05) * d
    temple = lerp(0.15, 0.65) * eye_w
    cheek = lerp(0.10, 0.60) * eye_w
    chin = lerp(0.30, 0.85) * d
    # (anchor, up offset, right offset): a rough face outline, left to right around the top.
    anchors = np.array([le, re, eye_c, le, re, (le + lmo) / 2, (re + rmo) / 2, lmo, rmo, lmo, rmo, mouth_c])
    ups = np.array([forehead * 0.85, forehead * 0.85, forehead, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0,
                    -chin * 0.65, -chin * 0.65, -chin])
    rights = np.array([-temple * 0.6, temple * 0.6, 0.0, -temple, temple, -(temple + cheek) / 2,
                       (temple + cheek) / 2, -cheek, cheek, -cheek * 0.6, cheek * 0.6, 0.0])
    jitter = rng.uniform(0.85, 1.15, size=(2, anchors.shape[0]))  # irregular, not a template
    pts = anchors + np.outer(ups * jitter[0], up) + np.outer(rights * jitter[1], right)
    pts = np.vstack([pts, lm])  # the hull always holds the landmarks themselves

    # The detector's box says where the face ends; allow a little slack so hulls can reach it.
    x1, y1, x2, y2 = (float(v) for v in box)
    if np.isfinite([x1, y1, x2, y2]).all() and x2 > x1 and y2 > y1:
        mx, my = (x2 - x1) * rng.uniform(0.0, 0.1), (y2 - y1) * rng.uniform(0.0, 0.1)
        pts[:, 0] = np.clip(pts[:, 0], x1 - mx, x2 + mx)
        pts[:, 1] = np.clip(pts[:, 1], y1 - my, y2 + my)
    pts[:, 0] = np.clip(pts[:, 0], 0, w - 1)
    pts[:, 1] = np.clip(pts[:, 1], 0, h - 1)

    hull = cv2.convexHull(np.round(pts).astype(np.int32))
    out = np.zeros((h, w), np.uint8)
    cv2.fillConvexPoly(out, hull, 1)
    if not out.any():
        return _box_ellipse_mask((h, w), box, rng)
    return out.astype(np.float32)


@lru_cache(maxsize=8)
def _identity_grid(h: int, w: int) -> np.ndarray:
    # (H, W, 2) pixel coordinates, x then y: the base of a cv2.remap field (read-only, shared).
    grid = np.stack(np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32)), axis=-1)
    grid.setflags(write=False)
    return grid


def deform_mask(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Warp the mask by a random smooth displacement field, so boundaries are not convex hulls.

    Args:
        mask: float32 (H, W) mask in [0, 1].
        rng: the only source of randomness.

    Returns:
        float32 (H, W) binary mask (0/1); the input itself if the warp would empty it.
    """
    h, w = mask.shape
    _, _, bw, bh = cv2.boundingRect((mask > 0.5).astype(np.uint8))
    if bw == 0 or bh == 0:
        return mask.astype(np.float32)
    size = float(max(bw, bh))
    # Amplitude relative to the face, so a small face is not torn apart and a big one still bends.
    amp = size * rng.uniform(0.02, 0.07)
    n = int(rng.integers(3, 7))  # control grid: fewer points -> broader bends
    coarse = rng.standard_normal((n, n, 2)).astype(np.float32) * np.float32(amp)
    # One 2-channel (x, y) field: cv2 resizes it several times faster than two 1-channel ones.
    field = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC) + _identity_grid(h, w)
    warped = cv2.remap(mask.astype(np.float32), field, None, cv2.INTER_LINEAR,
                       borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    out = (warped > 0.5).astype(np.float32)
    return out if out.any() else mask.astype(np.float32)


def erode_dilate_mask(mask: np.ndarray, rng: np.random.Generator, p: float = 0.5) -> np.ndarray:
    """With probability p, erode or dilate the mask (even odds) by 1-8% of the face's size.

    The blend boundary then falls inside the face or out onto hair and background, not always
    on the hull: a swap's mask edge is where its tool put it, not where ours is.

    Args:
        mask: float32 (H, W) binary mask.
        rng: the only source of randomness.
        p: how often the mask is changed at all.

    Returns:
        float32 (H, W) binary mask; the input itself when untouched or when erosion would empty it.
    """
    m = (mask > 0.5).astype(np.uint8)
    area = int(m.sum())
    if area == 0 or rng.uniform() >= p:
        return mask.astype(np.float32)
    k = _odd(np.sqrt(area) * rng.uniform(0.01, 0.08))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))
    out = cv2.erode(m, kernel) if rng.uniform() < 0.5 else cv2.dilate(m, kernel)
    return out.astype(np.float32) if out.any() else mask.astype(np.float32)


def blur_mask(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Soften the mask edge with two Gaussian blurs of random odd size, then scale by a blend ratio.

    The first blur's not-fully-inside part is cut away before the second blur, so the soft
    transition lies inside the (deformed) hull instead of spilling onto the background.

    Args:
        mask: float32 (H, W) binary mask.
        rng: the only source of randomness.

    Returns:
        float32 (H, W) mask in [0, ratio], ratio drawn from BLEND_RATIOS.
    """
    m = mask.astype(np.float32)
    area = float(m.sum())
    if area <= 0:
        return m
    scale = np.sqrt(area)  # face size in pixels: kernels follow it, not the crop size
    k1 = _odd(scale * rng.uniform(0.05, 0.25))
    k2 = _odd(scale * rng.uniform(0.05, 0.25))
    b = cv2.GaussianBlur(m, (k1, k1), 0, borderType=cv2.BORDER_CONSTANT)
    core = (b > 1.0 - 1e-3).astype(np.float32)
    if core.sum() < 0.05 * area:  # thin mask: eroding would leave nothing worth blending
        core = m
    b = cv2.GaussianBlur(core, (k2, k2), 0, borderType=cv2.BORDER_CONSTANT)
    peak = float(b.max())
    if peak > 0:
        b /= peak
    ratio = BLEND_RATIOS[int(rng.integers(len(BLEND_RATIOS)))]
    return np.clip(b * np.float32(ratio), 0.0, 1.0)


def _colour_lut(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    # RGB shift and brightness/contrast folded into one per-channel lookup table (one pass).
    x = np.arange(256, dtype=np.float32)[:, None]
    shift = rng.uniform(-15, 15, size=3).astype(np.float32) if rng.uniform() < 0.5 else np.zeros(3, np.float32)
    if rng.uniform() < 0.5:
        alpha, beta = rng.uniform(0.9, 1.1), rng.uniform(-0.1, 0.1) * 255
    else:
        alpha, beta = 1.0, 0.0
    lut = np.clip((x + shift - 128.0) * alpha + 128.0 + beta, 0, 255)
    return cv2.LUT(img, np.rint(lut).astype(np.uint8).reshape(256, 1, 3))


def _hsv_shift(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    dh, ds, dv = int(rng.integers(-4, 5)), int(rng.integers(-20, 21)), int(rng.integers(-20, 21))
    hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV)  # 8-bit hue is 0..179 and wraps around
    x = np.arange(256)
    lut = np.stack([np.where(x < 180, (x + dh) % 180, x), np.clip(x + ds, 0, 255), np.clip(x + dv, 0, 255)], axis=1)
    hsv = cv2.LUT(hsv, lut.astype(np.uint8).reshape(256, 1, 3))
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)


def source_target_augment(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Colour and frequency jitter for one of the two copies (the statistical mismatch).

    Args:
        img: uint8 RGB (H, W, 3).
        rng: the only source of randomness.

    Returns:
        uint8 RGB array of the same shape (possibly equal to the input; self_blend guarantees
        a minimal change itself).
    """
    _check_image(img)
    out = _colour_lut(img, rng)
    if rng.uniform() < 0.5:
        out = _hsv_shift(out, rng)
    r = rng.uniform()
    h, w = out.shape[:2]
    if r < 0.35:  # lower resolution than the other copy, as when a face is pasted from afar
        f = rng.uniform(0.4, 0.8)
        small = cv2.resize(out, (max(1, round(w * f)), max(1, round(h * f))), interpolation=cv2.INTER_AREA)
        out = cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)
    elif r < 0.7:  # over-sharpened copy (unsharp mask)
        amount = rng.uniform(0.3, 1.0)
        blurred = cv2.GaussianBlur(out, (0, 0), rng.uniform(0.8, 1.5))
        out = cv2.addWeighted(out, 1.0 + amount, blurred, -amount, 0)
    return out


def _geometry_matrix(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    # Per-axis scale 0.95-1.05 about the mask's centroid (the face grows or shrinks in place,
    # not towards the crop corner) and a shift of up to 3% of the crop size.
    h, w = mask.shape
    sx, sy = rng.uniform(0.95, 1.05, size=2)
    tx, ty = rng.uniform(-0.03, 0.03) * w, rng.uniform(-0.03, 0.03) * h
    mom = cv2.moments((mask > 0.5).astype(np.uint8), binaryImage=True)
    cx, cy = (mom["m10"] / mom["m00"], mom["m01"] / mom["m00"]) if mom["m00"] > 0 else (w / 2, h / 2)
    return np.float32([[sx, 0, cx - sx * cx + tx], [0, sy, cy - sy * cy + ty]])


def _warp_image(img: np.ndarray, m: np.ndarray, x: int = 0, y: int = 0, size: tuple[int, int] | None = None) -> np.ndarray:
    # Warp only the (x, y, w, h) window of the full result when asked: the source is needed only
    # under the mask, and this is the costliest step of a blend.
    m = m.copy()
    m[:, 2] -= (x, y)
    dsize = size if size is not None else (img.shape[1], img.shape[0])
    return cv2.warpAffine(img, m, dsize, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)


def _warp_mask(mask: np.ndarray, m: np.ndarray) -> np.ndarray:
    # The mask is still binary here, so nearest-neighbour on uint8 is exact enough and cheap.
    h, w = mask.shape
    out = cv2.warpAffine((mask > 0.5).astype(np.uint8), m, (w, h), flags=cv2.INTER_NEAREST,
                         borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    return out.astype(np.float32) if out.any() else mask.astype(np.float32)


def source_target_geometry(img: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Slightly rescale (0.95-1.05 per axis) and shift (up to 3% of the size) the source and its mask.

    Args:
        img: uint8 RGB (H, W, 3) source copy.
        mask: float32 (H, W) binary mask in the source's coordinates.
        rng: the only source of randomness.

    Returns:
        (warped image, warped binary mask), same shapes and dtypes.
    """
    m = _geometry_matrix(mask, rng)
    return _warp_image(img, m), _warp_mask(mask, m)


def _core_diff(a: np.ndarray, b: np.ndarray, core: np.ndarray) -> float:
    # Mean |a - b| over the mask's core, on uint8 with cv2 (several times faster than numpy).
    return float(np.mean(cv2.mean(cv2.absdiff(a, b), mask=core)[:3]))


def _blend(source: np.ndarray, target: np.ndarray, mask: np.ndarray) -> np.ndarray:
    t = target.astype(np.float32)
    # t + (s - t) * m is exactly t where m == 0; a convex mix, so only rounding needs the clip.
    return np.clip(np.rint(t + (source.astype(np.float32) - t) * mask[..., None]), 0, 255).astype(np.uint8)


def self_blend(img: np.ndarray, landmarks: np.ndarray, box, rng: np.random.Generator,
               return_parts: bool = False):
    """Make one SBI pseudo-fake: the crop blended with a jittered copy of itself inside a face mask.

    One copy gets the colour/frequency jitter; a coin decides whether that copy is the source
    (pasted inside the mask) or the target (kept outside). The source is then slightly rescaled
    and shifted together with the mask, the mask is elastically deformed, sometimes eroded or
    dilated, and blurred, and
    blended = source * mask + target * (1 - mask).

    Args:
        img: uint8 RGB (H, W, 3) real face crop.
        landmarks: (5, 2) MTCNN landmarks in crop pixels.
        box: (x1, y1, x2, y2) face box in crop pixels.
        rng: the only source of randomness.
        return_parts: also return the (warped) source and the target copies, for tests.

    Returns:
        (blended uint8 (H, W, 3), mask float32 (H, W) in [0, 1]); with return_parts,
        (blended, mask, source, target). Where mask == 0 the result equals target exactly.
    """
    _check_image(img)
    mask = face_hull_mask(img.shape[:2], landmarks, box, rng)
    jittered = source_target_augment(img, rng)
    source, target = (jittered, img) if rng.uniform() < 0.5 else (img, jittered)
    # Same steps as source_target_geometry, but the source is warped later, under the mask only.
    geom = _geometry_matrix(mask, rng)
    mask = blur_mask(erode_dilate_mask(deform_mask(_warp_mask(mask, geom), rng), rng), rng)

    x, y, bw, bh = cv2.boundingRect((mask > 0).astype(np.uint8))
    roi = (slice(y, y + bh), slice(x, x + bw))
    src = _warp_image(source, geom, x, y, (bw, bh))
    peak = float(mask.max())
    core = (mask[roi] >= 0.5 * peak).astype(np.uint8)
    out = target.copy()
    out[roi] = _blend(src, target[roi], mask[roi])
    # Guarantee a visible blend: if the jitter was negligible here (or cancels against the
    # crop), push the source's colour until the core differs from both the target and the crop.
    sign = 1 if rng.uniform() < 0.5 else -1
    step = 0
    pushed = src
    while step < 8 and (_core_diff(out[roi], target[roi], core) < MIN_CHANGE
                        or _core_diff(out[roi], img[roi], core) < MIN_CHANGE):
        delta = int(round(sign * (-1) ** step * 4 * 2 ** (step // 2) / max(peak, 1e-3)))
        pushed = cv2.LUT(src, np.clip(np.arange(256) + delta, 0, 255).astype(np.uint8))
        out[roi] = _blend(pushed, target[roi], mask[roi])
        step += 1
    if not return_parts:
        return out, mask
    full = _warp_image(source, geom)
    full[roi] = pushed
    return out, mask, full, target


def common_augment(img: np.ndarray, rng: np.random.Generator, flip: bool | None = None) -> np.ndarray:
    """Degradations applied alike to real and fake samples, so they carry no label information.

    Usually a whole-image colour/brightness/contrast/gamma change; sometimes a downscale-upscale,
    a Gaussian blur and Gaussian noise; always a JPEG
    re-compression (quality 30-95); a horizontal flip with p = 0.5 unless `flip` decides it.

    Args:
        img: uint8 RGB (H, W, 3).
        rng: the only source of randomness.
        flip: force the flip on/off (make_pair shares one decision across a pair).

    Returns:
        uint8 RGB array of the same shape.
    """
    _check_image(img)
    h, w = img.shape[:2]
    out = img
    if rng.uniform() < 0.8:
        # Whole-image colour, brightness, contrast and gamma: new people, cameras and lights
        # look different everywhere at once; only a mismatch *inside* the face marks a blend.
        gain = rng.uniform(0.8, 1.2, 3) * rng.uniform(0.75, 1.25)
        gamma = rng.uniform(0.75, 1.35)
        lut = np.clip(255.0 * (np.arange(256)[:, None] / 255.0) ** gamma * gain[None, :] + rng.uniform(-20, 20), 0, 255)
        out = cv2.merge([cv2.LUT(c, lut[:, i].astype(np.uint8)) for i, c in enumerate(cv2.split(out))])
    if rng.uniform() < 0.2:
        f = rng.uniform(0.4, 0.9)
        small = cv2.resize(out, (max(1, round(w * f)), max(1, round(h * f))), interpolation=cv2.INTER_AREA)
        out = cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)
    if rng.uniform() < 0.2:
        out = cv2.GaussianBlur(out, (0, 0), rng.uniform(0.3, 1.5))
    if rng.uniform() < 0.2:
        # Gaussian noise via random bytes through a table of normal quantiles: the same
        # distribution (to 1/256 quantiles, tails cut at 2.9 sigma) at ~1/10 the cost.
        sigma = np.float32(rng.uniform(2.0, 8.0))
        idx = np.frombuffer(rng.bytes(out.size), np.uint8).reshape(out.shape)
        out = cv2.add(out, cv2.LUT(idx, _NORMAL_QUANTILES * sigma), dtype=cv2.CV_8U)
    quality = int(rng.integers(30, 96))
    # cv2's codec expects BGR: swap around it so JPEG's luma/chroma split sees the true colours.
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(out, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if ok:
        out = cv2.cvtColor(cv2.imdecode(buf, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    do_flip = rng.uniform() < 0.5 if flip is None else bool(flip)
    if do_flip:
        out = cv2.flip(out, 1)
    return out.copy() if out is img else out  # never hand back the caller's own array


def _resize(img: np.ndarray, size: int) -> np.ndarray:
    if img.shape[0] == size and img.shape[1] == size:
        return img
    # Area averaging only for real shrinking; a mild one (e.g. 256 -> 224) aliases no more with
    # bilinear, which is ~5x cheaper. Real and fake always take the same branch.
    interp = cv2.INTER_AREA if size < 0.7 * img.shape[0] else cv2.INTER_LINEAR
    return cv2.resize(img, (size, size), interpolation=interp)


def make_pair(img: np.ndarray, landmarks: np.ndarray, box, rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """A training pair from one real crop: (real, SBI fake), both (size, size, 3) uint8.

    Both go through the same resize and share one flip decision, so the only systematic
    difference between them is the blend; the other degradations are drawn independently
    from the same distribution.

    Args:
        img: uint8 RGB (H, W, 3) real face crop.
        landmarks: (5, 2) MTCNN landmarks in crop pixels.
        box: (x1, y1, x2, y2) face box in crop pixels.
        rng: the only source of randomness.
        size: output side in pixels.

    Returns:
        (real, fake) uint8 arrays of shape (size, size, 3).
    """
    flip = bool(rng.uniform() < 0.5)
    fake, _ = self_blend(img, landmarks, box, rng)
    real = common_augment(img, rng, flip=flip)
    fake = common_augment(fake, rng, flip=flip)
    return _resize(real, size), _resize(fake, size)
