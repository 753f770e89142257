"""Face detection (media layer): facenet-pytorch MTCNN, batched, on downscaled frames."""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch



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
