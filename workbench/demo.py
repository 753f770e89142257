"""Synthetic demo, benchmark and test clips with a known ground-truth face swap."""
from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import os
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Iterator, Sequence

import cv2
import numpy as np
from PIL import Image

from workbench.video import write_video

GENERATOR = "workbench.demo v1"

# The standard demo's manipulated segment, in seconds (start inclusive, end exclusive).
DEMO_SWAP_SECONDS = (4.0, 7.0)
DEMO_SWAP_TARGET = "grace_hopper"
# The astronaut faces the camera; the camera man is in profile, so his face aligns badly.
DEMO_SWAP_DONOR = "astronaut"

# Where each public-domain photo lives: (package, path inside the package directory).
_SOURCE_FILES = {
    "grace_hopper": ("matplotlib", ("mpl-data", "sample_data", "grace_hopper.jpg")),
    "astronaut": ("skimage", ("data", "astronaut.png")),
    "camera": ("skimage", ("data", "camera.png")),
}
SOURCES = tuple(_SOURCE_FILES)


@dataclass(frozen=True)
class SceneFace:
    """One person in the synthetic scene.

    Positions are fractions of the frame as seen at t=0 (before the camera moves).
    """

    source: str
    x: float
    y: float
    height: float  # face box height as a fraction of frame height
    appear_s: float = 0.0
    disappear_s: float | None = None  # None: visible till the end
    drift: tuple[float, float] = (0.0, 0.0)  # own motion, fraction of frame per second


@dataclass(frozen=True)
class CameraPath:
    """Smooth pan and zoom of the whole scene.

    pan: total shift of the view centre, as fractions of frame width and height.
    zoom: scale at the start and at the end of one sweep (1.0 = as laid out).
    period_s: None sweeps once over the clip (ease in, ease out); otherwise the camera
        swings out and back every period_s seconds, for long benchmark clips.
    """

    pan: tuple[float, float] = (0.06, 0.02)
    zoom: tuple[float, float] = (1.0, 1.12)
    period_s: float | None = None


STILL_CAMERA = CameraPath(pan=(0.0, 0.0), zoom=(1.0, 1.0))


@dataclass(frozen=True)
class DemoTruth:
    """What a generated clip contains; written as JSON beside the clip (see truth_path)."""

    frames: int
    fps: float
    width: int
    height: int
    swap_frames: tuple[int, int] | None  # inclusive frame range where a face is swapped
    swap_target: str | None
    swap_donor: str | None
    face_boxes: dict[str, list[list[float] | None]]  # per source, per frame: [x1,y1,x2,y2] or None
    generator: str = GENERATOR
    sources_sha256: dict[str, str] = field(default_factory=dict)
    seed: int = 0

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_dict(cls, data: dict) -> "DemoTruth":
        swap = data.get("swap_frames")
        return cls(
            frames=int(data["frames"]), fps=float(data["fps"]),
            width=int(data["width"]), height=int(data["height"]),
            swap_frames=tuple(swap) if swap is not None else None,
            swap_target=data.get("swap_target"), swap_donor=data.get("swap_donor"),
            face_boxes={k: list(v) for k, v in data["face_boxes"].items()},
            generator=data.get("generator", ""),
            sources_sha256=dict(data.get("sources_sha256", {})),
            seed=int(data.get("seed", 0)),
        )


@dataclass(frozen=True)
class FaceGeometry:
    """A source photo's face as MTCNN sees it, in the photo's pixel coordinates."""

    box: tuple[float, float, float, float]  # x1, y1, x2, y2
    landmarks: np.ndarray  # 5x2: eyes (left, right in the image), nose, mouth corners


# ---------------------------------------------------------------- sources


def demo_sources() -> dict[str, Path]:
    """Locate the public-domain face photos shipped inside matplotlib and scikit-image.

    Returns:
        {"grace_hopper": Path, "astronaut": Path, "camera": Path}

    Raises:
        RuntimeError: a package is not installed or no longer ships the photo.
    """
    found = {}
    for name, (package, parts) in _SOURCE_FILES.items():
        # find_spec locates the package without importing it (no config dirs, no plugins).
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.origin:
            raise RuntimeError(
                f"demo photo {name!r} needs the {package!r} package, which is not installed"
            )
        path = Path(spec.origin).parent.joinpath(*parts)
        if not path.is_file():
            raise RuntimeError(f"the installed {package!r} package does not ship {path.name} (looked at {path})")
        found[name] = path
    return found


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@lru_cache(maxsize=None)
def _photo(name: str) -> np.ndarray:
    path = demo_sources()[name]
    # camera.png is grayscale; every photo becomes 3-channel RGB.
    with Image.open(path) as img:
        rgb = np.asarray(img.convert("RGB"), dtype=np.uint8)
    rgb.setflags(write=False)
    return rgb


@lru_cache(maxsize=1)
def _mtcnn():
    from facenet_pytorch import MTCNN  # imports torch: only when a clip is actually made

    return MTCNN(keep_all=True, device="cpu")


@lru_cache(maxsize=None)
def source_geometry(name: str) -> FaceGeometry:
    """Face box and 5 landmarks of one source photo, found by MTCNN (cached per process).

    Args:
        name: one of SOURCES.

    Returns:
        FaceGeometry of the most confident face.
    """
    boxes, probs, points = _mtcnn().detect(Image.fromarray(_photo(name)), landmarks=True)
    if boxes is None or len(boxes) == 0:
        raise RuntimeError(f"MTCNN found no face in the demo photo {name!r}")
    best = int(np.argmax(probs))
    # Rounded so that float noise between torch builds cannot change the rendered bytes.
    box = tuple(round(float(v), 2) for v in boxes[best])
    landmarks = np.round(np.asarray(points[best], dtype=np.float64), 2)
    landmarks.setflags(write=False)
    return FaceGeometry(box=box, landmarks=landmarks)


# ---------------------------------------------------------------- the swap


def _inner_face_mask(shape: tuple[int, int], landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Hard and feathered masks of the inner face (brows to below the lips, cheek to cheek)."""
    eyes_mid = landmarks[:2].mean(axis=0)
    mouth_mid = landmarks[3:].mean(axis=0)
    eye_vec = landmarks[1] - landmarks[0]
    eye_dist = float(np.hypot(*eye_vec))
    eye_mouth = float(np.hypot(*(mouth_mid - eyes_mid)))
    angle = math.degrees(math.atan2(eye_vec[1], eye_vec[0]))
    # Shifted a little towards the brows: a swap that stops at the eyes looks cut off.
    centre = (eyes_mid + mouth_mid) / 2 - 0.12 * (mouth_mid - eyes_mid)
    axes = (0.82 * eye_dist, 0.95 * eye_mouth)
    hard = np.zeros(shape, np.uint8)
    cv2.ellipse(hard, (centre, (2 * axes[0], 2 * axes[1]), angle), 255, -1, cv2.LINE_AA)
    # The blend fades inside the hard ellipse so its seam sits on the cheeks, not at the box edge.
    sigma = 0.09 * eye_dist
    shrunk = np.zeros(shape, np.uint8)
    cv2.ellipse(shrunk, (centre, (1.7 * axes[0], 1.75 * axes[1]), angle), 255, -1, cv2.LINE_AA)
    ksize = 2 * int(math.ceil(3 * sigma)) + 1
    soft = cv2.GaussianBlur(shrunk.astype(np.float32) / 255.0, (ksize, ksize), sigma)
    return hard > 127, soft


def _lab_transfer(src_rgb: np.ndarray, ref_rgb: np.ndarray, region: np.ndarray) -> np.ndarray:
    """src recoloured so its LAB mean/std inside region match ref's (float32 RGB in 0..1)."""
    src = cv2.cvtColor(src_rgb, cv2.COLOR_RGB2LAB)
    ref = cv2.cvtColor(ref_rgb, cv2.COLOR_RGB2LAB)
    out = np.empty_like(src)
    for c in range(3):
        s, r = src[..., c][region], ref[..., c][region]
        # A grayscale donor has zero a/b spread: the floor keeps its chroma at the target's mean.
        scale = max(float(r.std()), 1e-3) / max(float(s.std()), 0.5)
        out[..., c] = (src[..., c] - float(s.mean())) * scale + float(r.mean())
    return np.clip(cv2.cvtColor(out, cv2.COLOR_LAB2RGB), 0.0, 1.0)


@lru_cache(maxsize=4)
def swap_face(target: str, donor: str) -> tuple[np.ndarray, np.ndarray]:
    """A classic landmark-aligned face swap of one source photo by another.

    The donor photo is aligned to the target's 5 MTCNN landmarks by a similarity transform,
    colour-matched in LAB inside the inner-face region and blended through a feathered ellipse.

    Args:
        target: source whose face is replaced.
        donor: source whose face is blended in.

    Returns:
        (swapped photo as RGB uint8, blend mask as float32 0..1), both of the target's size,
        read-only (cached per process).
    """
    tgt = _photo(target)
    don = _photo(donor)
    tg, dg = source_geometry(target), source_geometry(donor)
    matrix, _ = cv2.estimateAffinePartial2D(
        dg.landmarks.astype(np.float32), tg.landmarks.astype(np.float32), method=cv2.LMEDS
    )
    if matrix is None:
        raise RuntimeError(f"could not align {donor!r} to {target!r}")
    h, w = tgt.shape[:2]
    tgt_f = tgt.astype(np.float32) / 255.0
    warped = cv2.warpAffine(don.astype(np.float32) / 255.0, matrix, (w, h), flags=cv2.INTER_CUBIC,
                            borderMode=cv2.BORDER_REFLECT)
    covered = cv2.warpAffine(np.ones(don.shape[:2], np.float32), matrix, (w, h), flags=cv2.INTER_LINEAR)
    hard, soft = _inner_face_mask((h, w), tg.landmarks)
    region = hard & (covered > 0.999)
    matched = _lab_transfer(np.clip(warped, 0.0, 1.0), tgt_f, region)
    mask = soft * np.clip(covered, 0.0, 1.0)
    blended = tgt_f * (1.0 - mask[..., None]) + matched * mask[..., None]
    # Pixels the mask does not touch keep the target's exact bytes.
    out = np.where(mask[..., None] > 0, np.round(blended * 255.0), tgt).astype(np.uint8)
    out.setflags(write=False)
    mask.setflags(write=False)
    return out, mask


# ---------------------------------------------------------------- scene


def _background(width: int, height: int, seed: int) -> np.ndarray:
    """A deterministic room wall: tinted gradient, multi-scale texture, panels and soft lights."""
    rng = np.random.default_rng(seed)
    ys = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None]
    xs = np.linspace(0.0, 1.0, width, dtype=np.float32)[None, :]
    base = rng.uniform(0.45, 0.7, size=3).astype(np.float32)
    tint = rng.uniform(-0.12, 0.12, size=3).astype(np.float32)
    img = base[None, None, :] + (0.15 * (0.5 - ys) + 0.06 * np.sin(3.1 * xs + rng.uniform(0, 6)))[..., None]
    img = img + tint[None, None, :] * xs[..., None]
    # Smooth value noise at several scales: texture that a tracker or a flow estimator can lock on.
    for cell, amp in ((160, 0.07), (48, 0.04), (12, 0.025), (4, 0.015)):
        small = rng.standard_normal((height // cell + 2, width // cell + 2)).astype(np.float32)
        noise = cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC)
        img = img + amp * noise[..., None] * (1.0 + 0.3 * tint[None, None, :])
    canvas = np.clip(img * 255.0, 0, 255).astype(np.uint8)
    # A floor band and framed panels make camera motion readable at a glance.
    floor_y = int(height * rng.uniform(0.8, 0.86))
    floor = (np.array([0.35, 0.25, 0.18]) * 255 * rng.uniform(0.8, 1.1)).astype(np.uint8)
    canvas[floor_y:] = (canvas[floor_y:].astype(np.float32) * 0.35 + floor * 0.65).astype(np.uint8)
    cv2.line(canvas, (0, floor_y), (width, floor_y), (40, 30, 25), max(2, height // 200), cv2.LINE_AA)
    for _ in range(int(rng.integers(5, 9))):
        w = int(width * rng.uniform(0.05, 0.14))
        h = int(height * rng.uniform(0.08, 0.2))
        x = int(rng.uniform(0, width - w))
        y = int(rng.uniform(0.05 * height, floor_y - h - 0.05 * height))
        colour = tuple(int(c) for c in rng.integers(30, 220, size=3))
        cv2.rectangle(canvas, (x, y), (x + w, y + h), colour, -1, cv2.LINE_AA)
        cv2.rectangle(canvas, (x, y), (x + w, y + h), (35, 30, 28), max(2, w // 25), cv2.LINE_AA)
    lights = np.zeros((height, width), np.float32)
    for _ in range(int(rng.integers(6, 12))):
        centre = (int(rng.uniform(0, width)), int(rng.uniform(0, floor_y)))
        cv2.circle(lights, centre, int(height * rng.uniform(0.02, 0.06)), float(rng.uniform(0.1, 0.3)), -1,
                   cv2.LINE_AA)
    lights = cv2.GaussianBlur(lights, (0, 0), height / 120)
    out = canvas.astype(np.float32) + lights[..., None] * 255.0
    return np.clip(out, 0, 255).astype(np.uint8)


@dataclass
class _Sprite:
    """A face cut-out, pre-scaled, as premultiplied RGBA float32; maps to source coords."""

    rgba: np.ndarray
    rgba_swapped: np.ndarray | None
    origin: np.ndarray  # source-photo coordinates of sprite pixel (0, 0)
    scale: float  # sprite pixels per source pixel


def _cutout_alpha(shape: tuple[int, int], box: Sequence[float]) -> np.ndarray:
    """Head-and-shoulders oval around a face box, fading smoothly to zero at its rim."""
    x1, y1, x2, y2 = box
    bw, bh = x2 - x1, y2 - y1
    # The oval reaches below the chin so that the neck and shoulders come along with the face.
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2 + 0.35 * bh
    ax, ay = 1.1 * bw, 1.25 * bh
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float32)
    r = np.sqrt(((xx - cx) / ax) ** 2 + ((yy - cy) / ay) ** 2)
    t = np.clip((1.0 - r) / 0.18, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _make_sprite(photo: np.ndarray, swapped: np.ndarray | None, box: Sequence[float], scale: float) -> _Sprite:
    h, w = photo.shape[:2]
    alpha = _cutout_alpha((h, w), box)
    ys, xs = np.nonzero(alpha > 0)
    x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
    size = (max(1, round((x1 - x0) * scale)), max(1, round((y1 - y0) * scale)))
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC

    def premultiplied(img: np.ndarray) -> np.ndarray:
        rgba = np.dstack([img[y0:y1, x0:x1].astype(np.float32), alpha[y0:y1, x0:x1] * 255.0])
        rgba = np.clip(cv2.resize(rgba, size, interpolation=interp), 0.0, 255.0) / 255.0
        rgba[..., :3] *= rgba[..., 3:]
        return rgba

    # Sprite pixel p covers source point origin + (p + 0.5) / scale - 0.5 after a resize.
    real_scale = size[0] / (x1 - x0)
    origin = np.array([x0, y0], np.float64) + 0.5 / real_scale - 0.5
    return _Sprite(
        rgba=premultiplied(photo),
        rgba_swapped=premultiplied(swapped) if swapped is not None else None,
        origin=origin, scale=real_scale,
    )


def _camera_at(camera: CameraPath, t: float, seconds: float) -> tuple[float, float, float]:
    """(zoom, pan_x, pan_y) at time t; pan as fractions of the frame."""
    if camera.period_s:
        u = 0.5 - 0.5 * math.cos(2 * math.pi * t / camera.period_s)
    else:
        u = 0.5 - 0.5 * math.cos(math.pi * min(max(t / seconds, 0.0), 1.0))
    zoom = camera.zoom[0] + (camera.zoom[1] - camera.zoom[0]) * u
    return zoom, camera.pan[0] * u, camera.pan[1] * u


def _visible(face: SceneFace, t: float) -> bool:
    return t >= face.appear_s and (face.disappear_s is None or t < face.disappear_s)


def _swap_range(swap: tuple[float, float], fps: float, frames: int) -> tuple[int, int] | None:
    # Frame n shows time n/fps; the epsilon keeps 4.0 s at 25 fps on frame 100, not 101.
    first = max(0, math.ceil(swap[0] * fps - 1e-6))
    last = min(frames - 1, math.ceil(swap[1] * fps - 1e-6) - 1)
    return (first, last) if first <= last else None


def _check(faces: Sequence[SceneFace], fps: float, width: int, height: int, seconds: float,
           swap, swap_target, swap_donor) -> None:
    if width % 2 or height % 2 or width <= 0 or height <= 0:
        raise ValueError(f"width and height must be positive and even (got {width}x{height})")
    if fps <= 0 or seconds <= 0:
        raise ValueError("fps and seconds must be positive")
    names = [f.source for f in faces]
    for name in names:
        if name not in _SOURCE_FILES:
            raise ValueError(f"unknown source {name!r}; choose from {', '.join(SOURCES)}")
    if len(set(names)) != len(names):
        raise ValueError("each source may appear once in a scene (the truth is keyed by source)")
    if swap is not None:
        if swap_target not in names:
            raise ValueError(f"swap_target {swap_target!r} is not one of the scene's faces {names}")
        if swap_donor not in _SOURCE_FILES or swap_donor == swap_target:
            raise ValueError(f"swap_donor {swap_donor!r} must be a source other than the target")
        if not swap[0] < swap[1]:
            raise ValueError("swap must be (start_s, end_s) with start before end")


def render_scene(
    faces: Sequence[SceneFace],
    *,
    seconds: float,
    fps: float,
    width: int,
    height: int,
    seed: int = 0,
    swap: tuple[float, float] | None = None,
    swap_target: str | None = None,
    swap_donor: str | None = None,
    camera: CameraPath = CameraPath(),
) -> tuple[Iterator[np.ndarray], DemoTruth]:
    """Render a synthetic scene frame by frame, with its ground truth.

    Args:
        faces: the people in the scene, pasted in this order (later ones on top).
        seconds, fps, width, height: clip length, rate and (even) frame size.
        seed: background texture and layout; the same seed gives the same bytes.
        swap: (start_s, end_s) during which swap_target's face is replaced by swap_donor's.
        camera: pan and zoom applied to the whole scene.

    Returns:
        (iterator of RGB uint8 frames, rendered lazily one at a time; DemoTruth). The truth
        is known before any frame is rendered.
    """
    _check(faces, fps, width, height, seconds, swap, swap_target, swap_donor)
    n_frames = max(1, int(round(seconds * fps)))
    swap_frames = _swap_range(swap, fps, n_frames) if swap is not None else None
    zooms = [camera.zoom[0], camera.zoom[1]]
    max_zoom, min_zoom = max(zooms), min(zooms)

    geoms = {f.source: source_geometry(f.source) for f in faces}
    # World coordinates are the frame's pixels at t=0 (zoom 1, no pan); a source pixel q lands
    # at k * (q - face centre in the photo) + the face's centre in the world.
    def placement(face: SceneFace, t: float) -> tuple[float, np.ndarray, np.ndarray]:
        x1, y1, x2, y2 = geoms[face.source].box
        k = face.height * height / (y2 - y1)
        centre = np.array([(face.x + face.drift[0] * t) * width, (face.y + face.drift[1] * t) * height])
        return k, np.array([(x1 + x2) / 2, (y1 + y2) / 2]), centre

    def view(t: float) -> tuple[float, np.ndarray]:
        zoom, px, py = _camera_at(camera, t, seconds)
        return zoom, np.array([width / 2 + px * width, height / 2 + py * height])

    def to_frame(face: SceneFace, t: float, pts: np.ndarray) -> np.ndarray:
        k, c_src, centre = placement(face, t)
        zoom, cam = view(t)
        world = k * (pts - c_src) + centre
        return zoom * (world - cam) + np.array([width / 2, height / 2])

    boxes: dict[str, list] = {f.source: [] for f in faces}
    for n in range(n_frames):
        t = n / fps
        for f in faces:
            box = None
            if _visible(f, t):
                x1, y1, x2, y2 = geoms[f.source].box
                (a, b), (c, d) = to_frame(f, t, np.array([[x1, y1], [x2, y2]]))
                a, b, c, d = max(a, 0.0), max(b, 0.0), min(c, float(width)), min(d, float(height))
                if a < c and b < d:
                    box = [round(float(v), 1) for v in (a, b, c, d)]
            boxes[f.source].append(box)

    sources = demo_sources()
    used = {f.source for f in faces} | ({swap_donor} if swap is not None else set())
    truth = DemoTruth(
        frames=n_frames, fps=float(fps), width=width, height=height, swap_frames=swap_frames,
        swap_target=swap_target if swap is not None else None,
        swap_donor=swap_donor if swap is not None else None,
        face_boxes=boxes, generator=GENERATOR,
        sources_sha256={name: _sha256(sources[name]) for name in sorted(used)}, seed=seed,
    )

    def frames() -> Iterator[np.ndarray]:
        # The canvas covers everything the camera can see, plus a margin for rounding.
        pan_px = (abs(camera.pan[0]) * width, abs(camera.pan[1]) * height)
        half = (width / 2 / min_zoom, height / 2 / min_zoom)
        ox = math.floor(width / 2 - half[0] - pan_px[0] - 8)
        oy = math.floor(height / 2 - half[1] - pan_px[1] - 8)
        cw = math.ceil(width / 2 + half[0] + pan_px[0] + 8) - ox
        ch = math.ceil(height / 2 + half[1] + pan_px[1] + 8) - oy
        background = _background(cw, ch, seed)
        sprites = {}
        for f in faces:
            swapped = swap_face(swap_target, swap_donor)[0] if swap is not None and f.source == swap_target else None
            k, _, _ = placement(f, 0.0)
            # Pre-scaled to the largest size the zoom reaches: the per-frame warp only shrinks a bit.
            sprites[f.source] = _make_sprite(_photo(f.source), swapped, geoms[f.source].box, k * max_zoom)
        for n in range(n_frames):
            t = n / fps
            zoom, cam = view(t)
            m_bg = np.array([[zoom, 0.0, zoom * (ox - cam[0]) + width / 2],
                             [0.0, zoom, zoom * (oy - cam[1]) + height / 2]])
            frame = cv2.warpAffine(background, m_bg, (width, height), flags=cv2.INTER_LINEAR,
                                   borderMode=cv2.BORDER_REFLECT)
            for f in faces:
                if not _visible(f, t):
                    continue
                sp = sprites[f.source]
                use_swap = swap_frames is not None and f.source == swap_target and (
                    swap_frames[0] <= n <= swap_frames[1])
                rgba = sp.rgba_swapped if use_swap else sp.rgba
                _paste(frame, rgba, sp, lambda pts, f=f, t=t: to_frame(f, t, pts))
            yield frame

    return frames(), truth


def _paste(frame: np.ndarray, rgba: np.ndarray, sprite: _Sprite, to_frame) -> None:
    """Alpha-composite a premultiplied sprite into frame, warping only the covered region."""
    sh, sw = rgba.shape[:2]
    # Sprite px -> source px is linear; map three points to get the full affine to the frame.
    src_pts = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    dst = to_frame(sprite.origin + src_pts / sprite.scale)
    matrix = np.array([[dst[1, 0] - dst[0, 0], dst[2, 0] - dst[0, 0], dst[0, 0]],
                       [dst[1, 1] - dst[0, 1], dst[2, 1] - dst[0, 1], dst[0, 1]]])
    corners = np.array([[0, 0, 1], [sw, 0, 1], [0, sh, 1], [sw, sh, 1]], np.float64) @ matrix.T
    h, w = frame.shape[:2]
    x0, y0 = max(0, math.floor(corners[:, 0].min())), max(0, math.floor(corners[:, 1].min()))
    x1, y1 = min(w, math.ceil(corners[:, 0].max()) + 1), min(h, math.ceil(corners[:, 1].max()) + 1)
    if x0 >= x1 or y0 >= y1:
        return
    matrix[:, 2] -= (x0, y0)
    warped = cv2.warpAffine(rgba, matrix, (x1 - x0, y1 - y0), flags=cv2.INTER_LINEAR,
                            borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0, 0))
    roi = frame[y0:y1, x0:x1].astype(np.float32) / 255.0
    out = roi * (1.0 - warped[..., 3:]) + warped[..., :3]
    frame[y0:y1, x0:x1] = np.clip(np.round(out * 255.0), 0, 255).astype(np.uint8)


# ---------------------------------------------------------------- clips


def truth_path(clip_path: str | os.PathLike) -> Path:
    """Where a clip's ground truth lives: '<clip file name>.truth.json' beside it."""
    clip_path = Path(clip_path)
    return clip_path.with_name(clip_path.name + ".truth.json")


def make_clip(
    path: str | os.PathLike,
    faces: Sequence[SceneFace],
    *,
    seconds: float,
    fps: float = 25,
    width: int = 1280,
    height: int = 720,
    seed: int = 0,
    swap: tuple[float, float] | None = None,
    swap_target: str | None = None,
    swap_donor: str | None = None,
    codec: str = "libx264",
    gop: int = 125,
    camera: CameraPath = CameraPath(),
) -> DemoTruth:
    """Render a scene, encode it to path and write its truth JSON beside it (streams frames).

    Args:
        path: output video; see render_scene for the scene arguments.
        codec, gop: passed to write_video.

    Returns:
        The clip's DemoTruth (also written to truth_path(path)).
    """
    frames, truth = render_scene(
        faces, seconds=seconds, fps=fps, width=width, height=height, seed=seed,
        swap=swap, swap_target=swap_target, swap_donor=swap_donor, camera=camera,
    )
    written = write_video(path, frames, fps, codec=codec, gop=gop)
    if written != truth.frames:
        raise RuntimeError(f"wrote {written} frames, expected {truth.frames}")
    truth_path(path).write_text(truth.to_json())
    return truth


def demo_faces() -> list[SceneFace]:
    """The standard demo's two people: Grace Hopper on the left, the astronaut on the right."""
    return [
        SceneFace("grace_hopper", x=0.30, y=0.45, height=0.30),
        SceneFace("astronaut", x=0.70, y=0.42, height=0.27, drift=(-0.004, 0.002)),
    ]


def make_demo(
    path: str | os.PathLike, *, seconds: float = 10.0, fps: float = 25, width: int = 1280,
    height: int = 720, seed: int = 0,
) -> DemoTruth:
    """Write the standard demo clip: two people, smooth pan and slow zoom, one swapped segment.

    Grace Hopper's inner face is replaced by the astronaut's during DEMO_SWAP_SECONDS
    (frames 100..174 at 25 fps), clipped to the clip's length.

    Returns:
        The clip's DemoTruth.
    """
    start, end = DEMO_SWAP_SECONDS
    swap = (min(start, seconds), min(end, seconds)) if start < seconds else None
    return make_clip(
        path, demo_faces(), seconds=seconds, fps=fps, width=width, height=height, seed=seed,
        swap=swap, swap_target=DEMO_SWAP_TARGET if swap else None,
        swap_donor=DEMO_SWAP_DONOR if swap else None,
    )


def load_truth(clip_path: str | os.PathLike) -> DemoTruth:
    """Read the ground truth written beside a clip by make_clip.

    Args:
        clip_path: the clip (its truth is truth_path(clip_path)).

    Returns:
        DemoTruth.
    """
    return DemoTruth.from_dict(json.loads(truth_path(clip_path).read_text()))
