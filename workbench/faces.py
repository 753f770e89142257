"""Face detection (media layer): facenet-pytorch MTCNN, batched, at a resolution chosen from the smallest face to be scored."""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch

# MTCNN's confidence on a face it sees at this size or larger is dependable; below it, a real face
# in dim light or at a low resolution often scores 0.7-0.9 (issue 12), so frames are never shrunk
# so far that a face the pipeline would score falls below it.
RELIABLE_PX = 40
# MTCNN's smallest window: its P-Net looks at 12x12 pixels.
FINEST_PX = 12
# A face at or above this probability is a face on one frame; below it (down to CANDIDATE_PROB) it
# is a candidate that the tracker confirms over time or drops. The dim-light DFDC clip of issue 12
# (abofeumbvv) scores 0.69-0.78 at full resolution on every frame.
CONFIRM_PROB = 0.92
CANDIDATE_PROB = 0.6
# MTCNN's own per-stage cuts (P-Net, R-Net, O-Net). facenet-pytorch's 0.6/0.7/0.7 drop that face
# before its probability is seen; the cut that matters is min_prob, applied afterwards.
STAGE_THRESHOLDS = (0.5, 0.5, 0.5)
# Faces a little below the scoring minimum are still looked for, so that "too small" can be told
# apart from "no face".
_BELOW_MINIMUM = 0.8
# The retry looks for faces down to this size (or a little below the scoring minimum, if that is
# smaller), whatever the scoring minimum: "no face found at any scale" means none of 25 px or more.
SEARCH_FLOOR_PX = 32


def search_floor_px(min_face_px: float) -> int:
    """The smallest face (full-resolution pixels) the full-resolution retry looks for."""
    return max(FINEST_PX, int(min(min_face_px, SEARCH_FLOOR_PX) * _BELOW_MINIMUM))


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
    """MTCNN over batches of same-sized frames, at a reduced size where faces allow, mapped back.

    Two searches. `detect`, on every detection frame, looks for faces of `find_face_px` or more
    at a size where such a face is at least RELIABLE_PX pixels; `retry`, for the few frames where
    that comes up short, looks at full resolution for every face down to a little below
    `min_face_px`, the smallest face scored. Faces between the two are found by the retry only.

    Args:
        detect_size: frames are downscaled so their longer side is at most this (pixels), but
            never so far that a face of `find_face_px` would be smaller than RELIABLE_PX.
        min_prob: faces below this MTCNN probability are dropped. The default suits still images
            (no second frame can confirm a doubtful face); video passes CANDIDATE_PROB and lets
            the tracker confirm.
        min_face_px: the smallest face (full-resolution pixels, shorter side) that is scored;
            the retry searches below it (`search_floor_px`), so "too small" is told from "none".
        find_face_px: the smallest face (full-resolution pixels) looked for on every detection frame.
        device: torch device; MTCNN's weights ship inside facenet-pytorch.

    >>> d = FaceDetector(find_face_px=64)
    >>> d.scale_for((1080, 1920, 3))  # a 64-px face is 21 px at 640 wide: 1200 wide instead
    0.625
    >>> d.scale_for((240, 320, 3))  # never enlarged
    1.0
    """

    def __init__(
        self,
        detect_size: int = 640,
        min_prob: float = CONFIRM_PROB,
        min_face_px: int = 32,
        find_face_px: int = 64,
        device: str | torch.device = "cpu",
        batch_size: int = 8,
    ):
        from facenet_pytorch import MTCNN  # heavy import, only when faces are wanted

        self.detect_size = detect_size
        self.min_prob = min_prob
        self.min_face_px = min_face_px
        self.find_face_px = max(min_face_px, find_face_px)
        self.batch_size = batch_size
        self.mtcnn = MTCNN(keep_all=True, min_face_size=FINEST_PX, thresholds=list(STAGE_THRESHOLDS),
                           device=torch.device(device), post_process=False)

    def scale_for(self, shape: tuple[int, ...]) -> float:
        """The factor frames of this shape are resized by before MTCNN sees them (at most 1)."""
        longest = max(shape[0], shape[1])
        return min(1.0, max(self.detect_size / longest, RELIABLE_PX / max(1, self.find_face_px)))

    def window_for(self, scale: float) -> int:
        """MTCNN's smallest face, in pixels of the resized frame: a little below `find_face_px` there."""
        return max(FINEST_PX, int(self.find_face_px * scale * _BELOW_MINIMUM))

    @torch.inference_mode()
    def detect(self, frames: list[np.ndarray]) -> list[list[Face]]:
        """Faces in each RGB frame (all frames the same size), largest first.

        Returns:
            One list of Face per frame, boxes and landmarks in full-resolution pixels.
        """
        if not frames:
            return []
        scale = self.scale_for(frames[0].shape)
        return self._run(frames, scale, self.window_for(scale))

    @torch.inference_mode()
    def retry(self, frame: np.ndarray) -> list[Face]:
        """Faces in one frame at full resolution, down to `search_floor_px` (below the smallest face scored).

        For a frame where `detect` found nothing (or lost a face). It costs several times a
        normal detection on large frames, so callers ration it.
        """
        return self._run([frame], 1.0, search_floor_px(self.min_face_px))[0]

    def _run(self, frames: list[np.ndarray], scale: float, window: int) -> list[list[Face]]:
        results: list[list[Face]] = []
        h, w = frames[0].shape[:2]
        side = min(max(1, round(w * scale)), max(1, round(h * scale)))
        if side < FINEST_PX:  # smaller than MTCNN's smallest window: no face can be found
            return [[] for _ in frames]
        # A face cannot be larger than the frame: on a frame smaller than the window, MTCNN would
        # have no pyramid level at all (and fail), so the window shrinks to the frame.
        self.mtcnn.min_face_size = min(window, side)
        for start in range(0, len(frames), self.batch_size):
            chunk = frames[start : start + self.batch_size]
            if scale < 1.0:
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
