"""Face finding as an upstream detector's authors configured it (media layer): facenet-pytorch MTCNN on one frame."""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from workbench.faces import Face


class MTCNNFinder:
    """facenet-pytorch MTCNN with an author's settings, one frame at a time, boxes in full-resolution pixels.

    Unlike `workbench.faces.FaceDetector` (ours: downscaled to a fixed size, faces below 0.92
    dropped), nothing is filtered after MTCNN's own three thresholds, as the DFDC authors did.

    Args:
        thresholds: MTCNN's P-, R- and O-net thresholds.
        factor: MTCNN's image-pyramid scale factor.
        min_face_size: MTCNN's smallest face, in pixels of the resized frame.
        scale: the frame is resized by this factor first (PIL, bicubic: the default of Pillow 9.0.0,
            which FakeFinder's selimsef container pinned); boxes are divided by it again.
        keep: "all" boxes, or only the "largest".
        device: torch device; MTCNN's weights ship inside facenet-pytorch.

    >>> finder = MTCNNFinder(thresholds=(0.7, 0.8, 0.8), scale=0.5)  # selimsef's
    >>> faces = finder.find(rgb_frame)  # doctest: +SKIP
    """

    def __init__(self, thresholds: tuple[float, ...] = (0.6, 0.7, 0.7), factor: float = 0.709,
                 min_face_size: int = 20, scale: float = 1.0, keep: str = "all",
                 device: str | torch.device = "cpu"):
        from facenet_pytorch import MTCNN  # heavy import, only when faces are wanted

        if keep not in ("all", "largest"):
            raise ValueError(f"unknown face choice {keep!r}; expected 'all' or 'largest'")
        if not 0 < scale <= 1:
            raise ValueError(f"scale must be in (0, 1], got {scale}")
        self.scale = float(scale)
        self.keep = keep
        # select_largest=True (the default) orders the boxes largest first, so upstream's boxes[0]
        # is the largest box; keep_all only matters for MTCNN's forward, which is not used.
        self.mtcnn = MTCNN(min_face_size=min_face_size, thresholds=list(thresholds), factor=factor,
                           device=torch.device(device), select_largest=True)

    def resized(self, rgb: np.ndarray) -> np.ndarray:
        """The frame MTCNN sees: int(side * scale) pixels a side (selimsef: `s // 2`), bicubic."""
        if self.scale == 1.0:
            return rgb
        h, w = rgb.shape[:2]
        size = (max(1, int(w * self.scale)), max(1, int(h * self.scale)))
        return np.asarray(Image.fromarray(np.ascontiguousarray(rgb)).resize(size, Image.Resampling.BICUBIC))

    @torch.inference_mode()
    def find(self, rgb: np.ndarray) -> list[Face]:
        """Faces on one uint8 RGB frame, largest first, boxes and landmarks in full-resolution pixels."""
        boxes, probs, points = self.mtcnn.detect(self.resized(rgb), landmarks=True)
        if boxes is None:
            return []
        faces = []
        for box, prob, marks in zip(boxes, probs, points):
            faces.append(Face(box=tuple(float(v) / self.scale for v in box), prob=float(prob),
                              landmarks=tuple((float(x) / self.scale, float(y) / self.scale) for x, y in marks)))
        return faces[:1] if self.keep == "largest" else faces
