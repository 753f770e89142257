"""Face tracks: linking detections across frames (IoU + centre distance), confirming doubtful faces over time, filling frames between."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import linear_sum_assignment

from workbench.faces import CONFIRM_PROB, Face
from workbench.geometry import Box, interpolate, iou


@dataclass
class TrackPoint:
    """A track's box on one analysed frame; `detected` is False where it was interpolated."""

    frame: int
    box: Box
    prob: float | None
    detected: bool
    landmarks: tuple[tuple[float, float], ...] | None = None


@dataclass
class FaceTrack:
    """A face followed across frames; `id` is 0 until the track is confirmed as a face."""

    id: int
    points: dict[int, TrackPoint] = field(default_factory=dict)
    last_detection: int = -1
    missed: int = 0
    confirmed: bool = False
    hits: int = 0  # detections in a row while not yet confirmed

    @property
    def frames(self) -> list[int]:
        return sorted(self.points)


class Tracker:
    """Links the faces of successive detection frames into tracks with stable ids.

    A detection joins a track when their boxes overlap (IoU) or, for fast motion at low
    sampling rates, when its centre is close to the track's last box relative to its size and
    the sizes are similar. Matching is a global assignment (Hungarian), not greedy. A track
    missed on more than `max_missed` detection frames in a row ends; a face seen later gets a
    new id.

    A track is a face once one of its detections reaches `confirm_prob`, or once it has been
    detected on `confirm_hits` detection frames in a row at any lower probability: a real face
    in poor light keeps coming back where it was, a false face on texture rarely does. Until
    then it is tentative: it takes part in matching but is not in `tracks`, has id 0, and
    ends at its first miss. Confirmed tracks are numbered 1, 2, ... in the order confirmed.
    """

    def __init__(self, iou_threshold: float = 0.25, max_centre_shift: float = 1.0, max_missed: int = 2,
                 confirm_prob: float = CONFIRM_PROB, confirm_hits: int = 3):
        self.iou_threshold = iou_threshold
        self.max_centre_shift = max_centre_shift
        self.max_missed = max_missed
        self.confirm_prob = confirm_prob
        self.confirm_hits = confirm_hits
        self.tracks: list[FaceTrack] = []
        self.dropped = 0  # tentative tracks that ended unconfirmed
        self._active: list[FaceTrack] = []

    def _hit(self, track: FaceTrack, face: Face) -> None:
        if track.confirmed:
            return
        track.hits += 1
        if face.prob >= self.confirm_prob or track.hits >= self.confirm_hits:
            track.confirmed = True
            track.id = len(self.tracks) + 1
            self.tracks.append(track)

    def tentative_since(self) -> int | None:
        """The first frame of the oldest tentative track still active (its boxes are not final), or None."""
        firsts = [min(t.points) for t in self._active if not t.confirmed]
        return min(firsts) if firsts else None

    def unconfirmed(self) -> int:
        """Tentative tracks so far that were never confirmed (ended, or still waiting)."""
        return self.dropped + sum(1 for t in self._active if not t.confirmed)

    def expected_faces(self) -> int:
        """Active tracks detected on the last detection frame: faces the next frame should show."""
        return sum(1 for t in self._active if t.missed == 0)

    def _affinity(self, a: Box, b: Box) -> float:
        """Higher is better; 0 means the two boxes cannot be the same face."""
        overlap = iou(a, b)
        if overlap >= self.iou_threshold:
            return 1.0 + overlap
        aw, ah, bw, bh = a[2] - a[0], a[3] - a[1], b[2] - b[0], b[3] - b[1]
        size = max(1e-6, (aw + ah + bw + bh) / 4)
        ratio = (bw * bh) / max(1e-6, aw * ah)
        shift = np.hypot((a[0] + a[2] - b[0] - b[2]) / 2, (a[1] + a[3] - b[1] - b[3]) / 2) / size
        if shift <= self.max_centre_shift and 0.5 <= ratio <= 2.0:
            return 1.0 - shift / self.max_centre_shift * 0.99
        return 0.0

    def update(self, frame: int, faces: list[Face]) -> list[tuple[FaceTrack, TrackPoint | None, int | None]]:
        """Add one detection frame.

        Returns:
            (track, point, previous detection frame) for each track active before this frame,
            point None when the track was not matched; then (track, point, None) for new tracks.
        """
        prev_active = list(self._active)
        matched: dict[int, int] = {}
        if prev_active and faces:
            affinity = np.array([[self._affinity(self._last_box(t), f.box) for f in faces] for t in prev_active])
            rows, cols = linear_sum_assignment(-affinity)
            matched = {r: c for r, c in zip(rows, cols) if affinity[r, c] > 0}
        out: list[tuple[FaceTrack, TrackPoint | None, int | None]] = []
        used = set(matched.values())
        still_active = []
        for i, track in enumerate(prev_active):
            prev = track.last_detection
            if i in matched:
                face = faces[matched[i]]
                point = TrackPoint(frame, face.box, face.prob, True, face.landmarks)
                track.points[frame] = point
                track.last_detection, track.missed = frame, 0
                self._hit(track, face)
                still_active.append(track)
                out.append((track, point, prev))
            else:
                track.missed += 1
                if track.confirmed and track.missed <= self.max_missed:
                    still_active.append(track)
                elif not track.confirmed:
                    self.dropped += 1
                out.append((track, None, prev))
        for j, face in enumerate(faces):
            if j in used:
                continue
            track = FaceTrack(id=0)
            point = TrackPoint(frame, face.box, face.prob, True, face.landmarks)
            track.points[frame] = point
            track.last_detection = frame
            self._hit(track, face)
            still_active.append(track)
            out.append((track, point, None))
        self._active = still_active
        return out

    @staticmethod
    def _last_box(track: FaceTrack) -> Box:
        return track.points[track.last_detection].box


def fill_between(track: FaceTrack, start: int, end: int, frames: list[int]) -> list[TrackPoint]:
    """Interpolated points for `frames` strictly between two detections of a track at start, end."""
    a, b = track.points[start].box, track.points[end].box
    points = []
    for n in frames:
        if start < n < end:
            point = TrackPoint(n, interpolate(a, b, (n - start) / (end - start)), None, False)
            track.points[n] = point
            points.append(point)
    return points
