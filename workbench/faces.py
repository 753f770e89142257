"""Face detection (facenet-pytorch MTCNN, batched, on downscaled frames) and face cropping."""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch

from detectors.base import CropPolicy


@dataclass(frozen=True)
class Face:
    """One detected face in full-resolution frame coordinates."""

    box: tuple[float, float, float, float]  # x1, y1, x2, y2
    prob: float
    landmarks: tuple[tuple[float, float], ...] | None = None  # eyes, nose, mouth corners

    @property
    def size(self) -> float:
        """The shorter side of the box, in pixels."""
        return min(self.box[2] - self.box[0], self.box[3] - self.box[1])


class FaceDetector:
    """MTCNN over batches of same-sized frames, run at a reduced size and mapped back.

    Args:
        detect_size: frames are downscaled so their longer side is at most this (pixels).
        min_prob: faces below this MTCNN probability are dropped.
        min_face_size: MTCNN's smallest face, in pixels of the downscaled frame.
        device: torch device; MTCNN's weights ship inside facenet-pytorch.
    """

    def __init__(
        self,
        detect_size: int = 640,
        min_prob: float = 0.92,
        min_face_size: int = 20,
        device: str | torch.device = "cpu",
        batch_size: int = 8,
    ):
        from facenet_pytorch import MTCNN  # heavy import, only when faces are wanted

        self.detect_size = detect_size
        self.min_prob = min_prob
        self.batch_size = batch_size
        self.mtcnn = MTCNN(keep_all=True, min_face_size=min_face_size, device=torch.device(device), post_process=False)

    def scale_for(self, shape: tuple[int, ...]) -> float:
        longest = max(shape[0], shape[1])
        return min(1.0, self.detect_size / longest)

    @torch.inference_mode()
    def detect(self, frames: list[np.ndarray]) -> list[list[Face]]:
        """Faces in each RGB frame (all frames the same size), largest first.

        Returns:
            One list of Face per frame, boxes and landmarks in full-resolution pixels.
        """
        results: list[list[Face]] = []
        if not frames:
            return results
        scale = self.scale_for(frames[0].shape)
        for start in range(0, len(frames), self.batch_size):
            chunk = frames[start : start + self.batch_size]
            if scale < 1.0:
                h, w = chunk[0].shape[:2]
                size = (max(1, round(w * scale)), max(1, round(h * scale)))
                chunk = [cv2.resize(f, size, interpolation=cv2.INTER_AREA) for f in chunk]
            boxes, probs, points = self.mtcnn.detect(np.stack(chunk), landmarks=True)
            for b, p, l in zip(boxes, probs, points):
                faces = []
                if b is not None:
                    for box, prob, marks in zip(b, p, l):
                        if prob is None or prob < self.min_prob:
                            continue
                        box = tuple(float(v) / scale for v in box)
                        marks = tuple((float(x) / scale, float(y) / scale) for x, y in marks)
                        faces.append(Face(box=box, prob=float(prob), landmarks=marks))
                faces.sort(key=lambda f: -(f.box[2] - f.box[0]) * (f.box[3] - f.box[1]))
                results.append(faces)
        return results


def crop_rect(box: tuple[float, float, float, float], policy: CropPolicy) -> tuple[int, int, int, int]:
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


def crop_face(frame: np.ndarray, box: tuple[float, float, float, float], policy: CropPolicy) -> np.ndarray:
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
