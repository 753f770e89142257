"""Video probing under limits, frame-accurate random access and streaming decode (PyAV)."""
from __future__ import annotations

import bisect
import functools
import os
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Generator, Iterable, Iterator

import av
import numpy as np

# Containers we agree to open. Playlists and indirections (hls, concat, dash, image sequences)
# are refused: they make the demuxer open further files or URLs named inside the "video".
ALLOWED_FORMATS = frozenset(
    {
        "mov", "mp4", "m4a", "3gp", "3g2", "mj2", "matroska", "webm", "avi", "mpeg", "mpegts",
        "mpegvideo", "flv", "asf", "ogg", "h264", "hevc", "m4v", "mxf", "mjpeg", "nut", "ivf",
    }
)
# Only plain local files: nothing inside a container may make the demuxer open a network URL.
_OPEN_OPTIONS = {"protocol_whitelist": "file"}


class VideoError(Exception):
    """A video that cannot or must not be decoded; the message says why, in plain words."""


class ReadInterrupted(Exception):
    """FrameReader.read gave up because its `stop` callback asked it to (nothing is wrong with the video)."""


@dataclass(frozen=True)
class Limits:
    """What a video may be before we agree to decode it (all checked from the container)."""

    max_pixels: int = 7680 * 4320  # 8K UHD
    max_frames: int = 250_000  # a little over 2 h 15 min at 30 fps
    max_duration_s: float = 3 * 3600.0
    max_file_bytes: int = 8 * 1024**3


DEFAULT_LIMITS = Limits()


@dataclass(frozen=True)
class VideoInfo:
    """Facts about a video, read from its container and its first frame."""

    path: str
    frames: int
    fps: float
    width: int
    height: int
    duration_s: float
    codec: str
    container: str
    rotation: int
    size_bytes: int
    pix_fmt: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def _open(path: str | os.PathLike) -> av.container.InputContainer:
    try:
        return av.open(os.fspath(path), mode="r", options=_OPEN_OPTIONS)
    except av.FFmpegError as exc:
        raise VideoError(f"not a readable video file ({exc.strerror or type(exc).__name__})") from exc


def _video_stream(container: av.container.InputContainer):
    if not container.streams.video:
        raise VideoError("not a video: the file has no video stream")
    return container.streams.video[0]


def open_stream(path: str | os.PathLike):
    """Open a local video (plain files only) for decoding: (container, its first video stream).

    The caller closes the container. Raises VideoError when the file is not a readable video.
    """
    container = _open(path)
    try:
        return container, _video_stream(container)
    except VideoError:
        container.close()
        raise


def _check_format(container) -> str:
    names = set((container.format.name or "").split(","))
    if not names & ALLOWED_FORMATS:
        raise VideoError(
            f"not a supported video container (detected {container.format.name!r}); "
            "playlists, image sequences and other indirect formats are refused"
        )
    return container.format.name


def _fps(stream) -> float:
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    return float(rate) if rate else 0.0


def build_index(path: str | os.PathLike) -> list[int]:
    """Like _build_index, remembered per file (path, size, mtime): probe and every reader need it."""
    st = os.stat(path)
    return list(_cached_index(os.fspath(path), st.st_size, st.st_mtime_ns))


@functools.lru_cache(maxsize=64)
def _cached_index(path: str, size: int, mtime_ns: int) -> tuple[int, ...]:
    return tuple(_build_index(path))


def _build_index(path: str | os.PathLike) -> list[int]:
    """Presentation timestamps of every frame, in display order, read by demuxing (no decoding).

    The n-th entry is the pts of the n-th frame a sequential decode returns. When the container
    does not give every packet a timestamp, the index is built by decoding instead.

    Returns:
        Sorted list of pts values in the stream's time base.
    """
    with _open(path) as container:
        stream = _video_stream(container)
        pts = []
        missing = False
        for packet in container.demux(stream):
            if packet.size == 0:  # the flush packet at the end
                continue
            if packet.pts is None:
                missing = True
                break
            if not packet.is_corrupt and not packet.is_discard:
                pts.append(packet.pts)
        if not missing and len(set(pts)) == len(pts):
            return sorted(pts)
    # Fallback: the exact index a sequential decode gives, at the cost of one decode pass.
    with _open(path) as container:
        stream = _video_stream(container)
        stream.thread_type = "AUTO"
        pts = [frame.pts for frame in container.decode(stream)]
    if any(p is None for p in pts) or len(set(pts)) != len(pts):
        raise VideoError("frames without usable timestamps: random access is not possible")
    return pts


def probe(path: str | os.PathLike, limits: Limits = DEFAULT_LIMITS) -> VideoInfo:
    """Read a video's facts and refuse it, before any decoding, if it breaks a limit.

    Args:
        path: a local file.
        limits: resolution, frame-count, duration and file-size limits.

    Returns:
        VideoInfo with an exact frame count.

    Raises:
        VideoError: not a video, unsupported container, empty, or over a limit.
    """
    return _probe(path, limits, lambda header: build_index(path))


def inspect(path: str | os.PathLike, limits: Limits = DEFAULT_LIMITS,
            on_progress: Callable[[int], None] | None = None) -> tuple[VideoInfo, "PacketScan"]:
    """`probe` with the index taken from one checked packet scan (`scan_packets`): what ingest runs.

    Decodes only the first frame (rotation, pixel format, proof that the stream starts
    decoding); `on_progress(n)` is called as packets are read (the sandbox's progress report).

    Raises:
        VideoError: refused by the probe's limits or by the packet scan, with the reason.
    """
    scans = []

    def index_of(header: dict) -> list[int]:
        scans.append(scan_packets(path, header, limits, on_progress))
        return list(scans[0].index)

    info = _probe(path, limits, index_of)
    return info, scans[0]


def _probe(path: str | os.PathLike, limits: Limits, index_of) -> VideoInfo:
    path = Path(path)
    if not path.is_file():
        raise VideoError(f"no such file: {path.name!r}")
    size = path.stat().st_size
    if size == 0:
        raise VideoError("empty file (0 bytes)")
    if size > limits.max_file_bytes:
        raise VideoError(f"file is {size / 1e9:.1f} GB, above the limit of {limits.max_file_bytes / 1e9:.1f} GB")
    with _open(path) as container:
        fmt = _check_format(container)
        stream = _video_stream(container)
        ctx = stream.codec_context
        width, height = int(ctx.width or 0), int(ctx.height or 0)
        if width <= 0 or height <= 0:
            raise VideoError("the video stream declares no frame size")
        if width * height > limits.max_pixels:
            raise VideoError(
                f"resolution {width}x{height} is above the limit of {limits.max_pixels:,} pixels per frame"
            )
        fps = _fps(stream)
        duration = stream_duration = None
        if stream.duration is not None and stream.time_base:
            duration = stream_duration = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            duration = container.duration / av.time_base
        if duration is not None and duration > limits.max_duration_s:
            raise VideoError(f"duration {duration:.0f} s is above the limit of {limits.max_duration_s:.0f} s")
        declared = stream.frames or (int(round(duration * fps)) if duration and fps else 0)
        if declared > limits.max_frames:
            raise VideoError(f"{declared:,} frames is above the limit of {limits.max_frames:,}")
        codec = ctx.name
        header = {"frames": int(stream.frames or 0), "duration_s": stream_duration, "fps": fps, "size_bytes": size,
                  "width": width, "height": height}
    index = index_of(header)
    if not index:
        raise VideoError("the video has no frames")
    if len(index) > limits.max_frames:
        raise VideoError(f"{len(index):,} frames is above the limit of {limits.max_frames:,}")
    # Decode the first frame: proves the stream decodes and gives the display rotation.
    with _open(path) as container:
        stream = _video_stream(container)
        try:
            first = next(container.decode(stream), None)
        except av.FFmpegError as exc:
            raise VideoError(f"the first frame cannot be decoded ({exc.strerror or type(exc).__name__})") from exc
        if first is None:
            raise VideoError("the video has no decodable frames")
        rotation = int(first.rotation or 0) % 360
        pix_fmt = first.format.name
        if first.width != width or first.height != height:
            width, height = first.width, first.height
            if width * height > limits.max_pixels:
                raise VideoError(f"resolution {width}x{height} is above the limit")
    if not fps:
        raise VideoError("the video declares no frame rate")
    if duration is None or duration <= 0:
        duration = len(index) / fps
    if rotation in (90, 270):
        width, height = height, width
    return VideoInfo(
        path=str(path), frames=len(index), fps=fps, width=width, height=height,
        duration_s=round(duration, 3), codec=codec, container=fmt, rotation=rotation,
        size_bytes=size, pix_fmt=pix_fmt,
    )


# The packets' time span and the header's stream duration may differ by a frame or two (edit
# lists, the last frame's duration); a larger gap is a header that lies about the video.
SPAN_TOLERANCE_S = 1.0
SPAN_TOLERANCE_SHARE = 0.1


@dataclass(frozen=True)
class PacketScan:
    """What one demux pass over every packet found (no decoding): counts, bytes, time span.

    `index` is the frame index (presentation timestamps in display order), as `build_index`.
    """

    packets: int
    keyframes: int
    video_bytes: int
    other_bytes: int
    file_bytes: int
    span_s: float | None
    header_duration_s: float | None
    index: tuple[int, ...] = ()

    def to_dict(self) -> dict:
        """The scan's facts without the index (for the audit log)."""
        facts = asdict(self)
        del facts["index"]
        return facts


def scan_packets(path: str | os.PathLike, header: dict, limits: Limits = DEFAULT_LIMITS,
                 on_progress: Callable[[int], None] | None = None) -> PacketScan:
    """Demux every packet once, without decoding, and refuse a file whose packets contradict it.

    Refused, each with its reason: no video packet; more packets than the frame limit; a first
    video packet that is not a key frame (what comes before the first key frame cannot decode);
    a packet the demuxer flags as corrupt (cut short: a truncated file); decoding timestamps that
    go backwards; fewer or more video packets than the header's frame count (MP4's sample
    table); packets adding up to more bytes than the file has (an index that points at the same
    bytes many times); a packet span that disagrees with the header's stream duration.

    Args:
        header: the container's claims: frames (0 if not stated), duration_s (None if not
            stated), fps, size_bytes.
        on_progress: called with the number of packets read so far, after each packet.

    Returns:
        PacketScan, its `index` the frame index for random access.

    Raises:
        VideoError: refused, with the reason in plain words.
    """
    packets = keyframes = video_bytes = other_bytes = 0
    pts: list[int] = []
    missing_pts = False
    first_pts = last_end = last_dts = None
    with _open(path) as container:
        stream = _video_stream(container)
        time_base = stream.time_base
        try:
            for packet in container.demux():
                if packet.size == 0:  # the flush packet at the end of each stream
                    continue
                if packet.stream.index != stream.index:
                    other_bytes += packet.size
                    continue
                if packets == 0 and not packet.is_keyframe:
                    raise VideoError("the video does not start with a key frame: its first frames cannot be decoded")
                if packet.is_corrupt:
                    raise VideoError(f"video packet {packets} is damaged or cut short (the file may be truncated)")
                if packet.dts is not None:
                    if last_dts is not None and packet.dts < last_dts:
                        raise VideoError(f"packet timestamps go backwards at video packet {packets}")
                    last_dts = packet.dts
                packets += 1
                if on_progress is not None:
                    on_progress(packets)
                keyframes += bool(packet.is_keyframe)
                video_bytes += packet.size
                if packets > limits.max_frames:
                    raise VideoError(f"more than {limits.max_frames:,} video packets; above the frame limit")
                if packet.pts is None:
                    missing_pts = True
                elif not packet.is_discard:
                    pts.append(packet.pts)
                    first_pts = packet.pts if first_pts is None else min(first_pts, packet.pts)
                    end = packet.pts + (packet.duration or 0)
                    last_end = end if last_end is None else max(last_end, end)
        except av.FFmpegError as exc:
            raise VideoError(f"the file cannot be read to its end (at video packet {packets}: "
                             f"{exc.strerror or type(exc).__name__})") from exc
    if packets == 0:
        raise VideoError("the video has no frames")
    size = int(header["size_bytes"])
    if video_bytes + other_bytes > size:
        raise VideoError(f"the packets add up to {video_bytes + other_bytes:,} bytes, more than the file's {size:,}: "
                         "the container's index points at the same data more than once")
    declared = int(header.get("frames") or 0)
    if declared and declared != packets:
        raise VideoError(f"the header lists {declared:,} frames but the file holds {packets:,} video packets"
                         + (" (the file may be truncated)" if packets < declared else ""))
    span = None
    if first_pts is not None and time_base:
        span = float((last_end - first_pts) * time_base)
    claimed = header.get("duration_s")
    if span is not None and claimed is not None:
        if abs(span - claimed) > max(SPAN_TOLERANCE_S, SPAN_TOLERANCE_SHARE * claimed):
            raise VideoError(f"the header claims {claimed:.2f} s but the video packets span {span:.2f} s")
    if missing_pts or len(set(pts)) != len(pts):
        index = _build_index(path)  # decodes once: only for streams whose packets lack timestamps
    else:
        index = sorted(pts)
    return PacketScan(packets, keyframes, video_bytes, other_bytes, size, None if span is None else round(span, 3),
                      None if claimed is None else round(claimed, 3), tuple(index))


def _to_rgb(frame: av.VideoFrame, rotation: int) -> np.ndarray:
    rgb = frame.to_ndarray(format="rgb24")
    # `rotation` is the display matrix angle (counter-clockwise); turn the pixels upright.
    if rotation:
        rgb = np.ascontiguousarray(np.rot90(rgb, k=rotation // 90))
    return rgb


class FrameReader:
    """Exact random access to the frames of one video, tuned for scrubbing.

    `read(n)` returns exactly the n-th frame of a sequential decode. It seeks to the key frame
    before frame n and decodes forward to n's timestamp; reading n+1 after n (playback, the ±1
    buttons) continues the open decoder instead of seeking again.

    >>> reader = FrameReader("clip.mp4")  # doctest: +SKIP
    >>> reader.read(42).shape  # doctest: +SKIP
    (720, 1280, 3)
    """

    # Decoding forward beats seeking when the target is this close after the last frame read.
    FORWARD_WINDOW = 48

    def __init__(self, path: str | os.PathLike, info: VideoInfo | None = None):
        self.path = os.fspath(path)
        self.info = info or probe(path)
        self.index = build_index(self.path)
        self._lock = threading.Lock()
        self._container = None
        self._decoder = None
        self._last = -1
        self._last_rgb: np.ndarray | None = None  # the page often asks for the same frame twice

    def __len__(self) -> int:
        return len(self.index)

    def continues_to(self, n: int) -> bool:
        """Whether read(n) needs no seek: n is the last frame read or a few frames after it."""
        return self._decoder is not None and self._last <= n <= self._last + self.FORWARD_WINDOW

    def close(self) -> None:
        with self._lock:
            self._reset()

    def __enter__(self) -> "FrameReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _reset(self) -> None:
        if self._container is not None:
            self._container.close()
        self._container = self._decoder = None
        self._last = -1
        self._last_rgb = None

    def _start(self, seek_pts: int | None) -> None:
        self._reset()
        self._container = _open(self.path)
        stream = _video_stream(self._container)
        stream.thread_type = "AUTO"
        if seek_pts is not None:
            self._container.seek(seek_pts, stream=stream, backward=True, any_frame=False)
        self._decoder = self._container.decode(stream)

    def _decode_until(self, target_pts: int, stop: Callable[[], bool] | None = None) -> av.VideoFrame | None:
        """Decode forward; the frame with target_pts, or None if we passed it (seek overshot)."""
        for frame in self._decoder:
            if frame.pts is None:
                continue
            if frame.pts == target_pts:
                return frame
            if frame.pts > target_pts:
                return None
            if stop is not None and stop():
                # Keep the decoder where it is: a later read of a frame after this one continues.
                passed = bisect.bisect_left(self.index, frame.pts)
                if passed < len(self.index) and self.index[passed] == frame.pts:
                    self._last, self._last_rgb = passed, None
                else:
                    self._reset()
                raise ReadInterrupted(f"stopped at pts {frame.pts}")
        return None

    def read(self, n: int, stop: Callable[[], bool] | None = None) -> np.ndarray:
        """The n-th frame (0-based) as an RGB uint8 array, upright.

        Args:
            stop: asked between decoded frames; when it returns True the read gives up (a
                background prefetch yielding to the page's own read).

        Raises:
            IndexError: n outside [0, frames).
            VideoError: the frame cannot be decoded.
            ReadInterrupted: `stop` returned True before frame n was reached.
        """
        if not 0 <= n < len(self.index):
            raise IndexError(f"frame {n} is outside 0..{len(self.index) - 1}")
        target = self.index[n]
        with self._lock:
            if n == self._last and self._last_rgb is not None:
                return self._last_rgb.copy()
            try:
                frame = None
                if self._decoder is not None and self._last < n <= self._last + self.FORWARD_WINDOW:
                    frame = self._decode_until(target, stop)
                # Seek to the key frame at or before the target; if the demuxer lands after it
                # (some codecs' seek tables are coarse), step the seek point back and retry.
                back = 0
                while frame is None:
                    seek_n = max(0, n - back)
                    self._start(None if seek_n == 0 else self.index[seek_n])
                    frame = self._decode_until(target, stop)
                    if seek_n == 0:
                        break
                    back = max(1, back * 4)
                if frame is None:
                    raise VideoError(f"frame {n} could not be decoded")
                self._last = n
                self._last_rgb = _to_rgb(frame, self.info.rotation)
                return self._last_rgb.copy()
            except av.FFmpegError as exc:
                self._reset()
                raise VideoError(f"frame {n} could not be decoded ({exc.strerror or type(exc).__name__})") from exc


def frame(video: str | os.PathLike, n: int) -> np.ndarray:
    """Exactly the n-th frame of a sequential read of `video` (opens and closes a reader)."""
    with FrameReader(video) as reader:
        return reader.read(n)


def iter_frames(
    video: str | os.PathLike, wanted: Iterable[int] | None = None, rotation: int = 0
) -> Iterator[tuple[int, np.ndarray]]:
    """Decode sequentially, yielding (frame number, RGB array) for the wanted frames only.

    Only one frame is held at a time, so memory does not grow with the video's length; frames
    that are not wanted are decoded (the codec needs them) but never converted to RGB.
    """
    wanted_sorted = sorted(set(wanted)) if wanted is not None else None
    last_wanted = wanted_sorted[-1] if wanted_sorted else None
    with _open(video) as container:
        stream = _video_stream(container)
        stream.thread_type = "AUTO"
        try:
            for n, frm in enumerate(container.decode(stream)):
                if wanted_sorted is not None:
                    if n > last_wanted:
                        break
                    i = bisect.bisect_left(wanted_sorted, n)
                    if i == len(wanted_sorted) or wanted_sorted[i] != n:
                        continue
                yield n, _to_rgb(frm, rotation)
        except av.FFmpegError as exc:
            raise VideoError(f"decoding failed ({exc.strerror or type(exc).__name__})") from exc


def decode_checked(
    path: str | os.PathLike, info: VideoInfo, wanted: Iterable[int] | None = None,
    on_decoded: Callable[[int], None] | None = None,
) -> Generator[tuple[int, np.ndarray], None, int]:
    """Decode every frame once, in order, checking it against `info`; yield the wanted ones as RGB.

    The validation a full decode gives: every frame decodes, keeps the probed size, and the
    count equals the index's (`info.frames`), so the frame numbers the analysis uses are the
    viewer's. Decoding continues past the last wanted frame to check the count. Runs in the
    decode sandbox (`workbench.sandbox.isolated_frames`); `on_decoded(n)` is called after each
    decoded frame (the sandbox's progress report).

    Yields:
        (frame number, RGB uint8 array, upright) for the wanted frames (all when wanted is None).

    Returns:
        The number of frames decoded (== info.frames).

    Raises:
        VideoError: a frame fails to decode, changes size, or the count differs from the index.
    """
    wanted_set = None if wanted is None else set(wanted)
    size = (info.height, info.width) if info.rotation in (90, 270) else (info.width, info.height)
    n = 0
    with _open(path) as container:
        stream = _video_stream(container)
        stream.thread_type = "AUTO"
        try:
            for frm in container.decode(stream):
                if (frm.width, frm.height) != size:
                    raise VideoError(f"frame {n} is {frm.width}x{frm.height}, not the probed {size[0]}x{size[1]}")
                if n >= info.frames:
                    raise VideoError(f"more frames decode than the {info.frames:,} the container's index lists: "
                                     "the file is damaged, and frame-accurate review is not possible")
                if wanted_set is None or n in wanted_set:
                    yield n, _to_rgb(frm, info.rotation)
                n += 1
                if on_decoded is not None:
                    on_decoded(n)
        except av.FFmpegError as exc:
            raise VideoError(f"decoding failed at frame {n} ({exc.strerror or type(exc).__name__})") from exc
    if n != info.frames:
        raise VideoError(f"{n:,} frames decode but the container's index lists {info.frames:,}: the file is damaged, "
                         "and frame-accurate review is not possible")
    return n


def write_video(
    path: str | os.PathLike,
    frames: Iterable[np.ndarray],
    fps: float,
    codec: str = "libx264",
    gop: int = 250,
    crf: int = 20,
    container_format: str | None = None,
) -> int:
    """Encode RGB uint8 frames into a video file (used by the demo, the benchmark and tests).

    Args:
        path: output file; the container follows the suffix unless container_format is given.
        frames: iterable of HxWx3 RGB arrays, all the same size (even width and height).
        fps: frame rate.
        codec: 'libx264' (H.264), 'mpeg4' (MPEG-4 Part 2) or any encoder PyAV has.
        gop: distance between key frames; long GOPs are what break naive seeking.
        crf: quality for libx264 (lower is better).

    Returns:
        The number of frames written.
    """
    from fractions import Fraction

    count = 0
    with av.open(os.fspath(path), mode="w", format=container_format) as out:
        stream = None
        for rgb in frames:
            if stream is None:
                h, w = rgb.shape[:2]
                stream = out.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
                stream.width, stream.height = w, h
                stream.pix_fmt = "yuv420p"
                stream.codec_context.gop_size = gop
                if codec == "libx264":
                    stream.options = {"crf": str(crf), "preset": "veryfast", "threads": "2"}
                elif codec in ("mpeg4", "mpeg1video", "mpeg2video"):
                    stream.codec_context.bit_rate = 4_000_000
                    stream.options = {"bf": "2", "qscale": "3"}
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")):
                out.mux(packet)
            count += 1
        if stream is not None:
            for packet in stream.encode():
                out.mux(packet)
    return count
