"""Scrubbing one evidence file: a byte-bounded cache of decoded frames, a prefetcher in the scrub direction, low-res proxies."""
from __future__ import annotations

import bisect
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass

import av
import numpy as np

from workbench.video import FrameReader, ReadInterrupted, VideoError, VideoInfo, build_index, open_stream, probe

DEFAULT_CACHE_BYTES = 192 * 1024**2  # ~69 frames of 720p RGB
DEFAULT_PROXY_BYTES = 32 * 1024**2
DEFAULT_AHEAD_S = 2.0
PROXY_WIDTH = 320
CONTIGUOUS_STEP = 4  # steps up to this many frames prefetch every frame ahead; longer ones only their targets
PREDICTED_STEPS = 3  # targets prefetched for long steps
WAIT_WINDOW = 12  # a page read waits for the thread when it is at most this many frames before
PROXY_LABEL = "low-res preview, exact frame loading"


class FrameLRU:
    """Decoded frames by number, least recently used dropped first once their bytes pass max_bytes.

    Thread-safe: the page's reads and the prefetcher's writes meet here.
    """

    def __init__(self, max_bytes: int):
        if max_bytes <= 0:
            raise ValueError("max_bytes must be positive")
        self.max_bytes = int(max_bytes)
        self._frames: OrderedDict[int, np.ndarray] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    @property
    def nbytes(self) -> int:
        """Bytes held now (never above max_bytes)."""
        with self._lock:
            return self._bytes

    def __len__(self) -> int:
        with self._lock:
            return len(self._frames)

    def __contains__(self, n: int) -> bool:
        with self._lock:
            return n in self._frames

    def frames(self) -> list[int]:
        """Frame numbers held, least recently used first."""
        with self._lock:
            return list(self._frames)

    def get(self, n: int) -> np.ndarray | None:
        """The held frame n (marked as just used), or None; callers must not write into it."""
        with self._lock:
            rgb = self._frames.get(n)
            if rgb is not None:
                self._frames.move_to_end(n)
            return rgb

    def put(self, n: int, rgb: np.ndarray) -> None:
        """Hold frame n, dropping the least recently used frames to stay within max_bytes.

        A frame larger than the whole budget is not held.
        """
        if rgb.nbytes > self.max_bytes:
            return
        with self._lock:
            old = self._frames.pop(n, None)
            if old is not None:
                self._bytes -= old.nbytes
            self._frames[n] = rgb
            self._bytes += rgb.nbytes
            while self._bytes > self.max_bytes:
                _, dropped = self._frames.popitem(last=False)
                self._bytes -= dropped.nbytes

    def clear(self) -> None:
        with self._lock:
            self._frames.clear()
            self._bytes = 0


@dataclass(frozen=True)
class Preview:
    """What the page can show at once for a requested frame.

    exact: True when `image` is exactly frame `frame` == the requested one; False for a low-res
    proxy of a nearby frame (`frame` says which), to be labelled PROXY_LABEL until the exact one
    arrives.
    """

    requested: int
    frame: int
    image: np.ndarray
    exact: bool

    @property
    def label(self) -> str:
        """The caption the page shows under this image."""
        if self.exact:
            return f"frame {self.frame}"
        return f"{PROXY_LABEL} (preview of frame {self.frame})"


class FrameCache:
    """Exact frames of one video for scrubbing: cache, prefetch in the scrub direction, proxies.

    `read(n)` returns exactly the n-th frame of a sequential decode (what FrameReader gives),
    from the cache when it holds it. After each read, a background thread (one per video; the
    video's two decoders are shared with the page) decodes the next frames in the direction the
    cursor moves, drops its plan for a new one when the cursor jumps, and gives way within a frame
    whenever the page must decode itself. When idle it builds low-res proxies of the whole file
    once (key frames first, then every stride-th frame within `proxy_bytes`), so that a far seek
    can show `preview(n)` immediately. The thread exits when it has no work; `close()` stops it
    and frees everything.

    >>> cache = FrameCache("clip.mp4")  # doctest: +SKIP
    >>> cache.read(42).shape  # doctest: +SKIP
    (720, 1280, 3)
    """

    def __init__(self, path: str | os.PathLike, info: VideoInfo | None = None, *,
                 max_bytes: int = DEFAULT_CACHE_BYTES, ahead_s: float = DEFAULT_AHEAD_S,
                 proxy_bytes: int = DEFAULT_PROXY_BYTES, proxy_width: int = PROXY_WIDTH,
                 prefetch: bool = True, proxies: bool = True):
        self.path = os.fspath(path)
        self.info = info or probe(self.path)
        self.index = build_index(self.path)
        self.frames = len(self.index)
        self.lru = FrameLRU(max_bytes)
        frame_bytes = self.info.width * self.info.height * 3
        # Half the budget ahead of the cursor, so a prefetch never evicts what it just decoded.
        self.ahead = max(0, min(int(round(ahead_s * self.info.fps)), self.lru.max_bytes // frame_bytes // 2 - 1))
        self._prefetch_on = prefetch and self.ahead > 0
        # Two decoders, used by the page and the thread alike: after a seek, the decoder left at the
        # cursor goes on forward for the prefetch while the other one serves the next seek.
        self._readers = (FrameReader(self.path, self.info), FrameReader(self.path, self.info))
        self._thread_reader: FrameReader | None = None  # the decoder the thread is using now
        self.proxy = _ProxyIndex(self.path, self.info, self.index, proxy_bytes, proxy_width) if proxies else None
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._cursor: int | None = None
        self._direction = 1
        self._step = 1  # frames per scrub step (1: arrow keys, drag; ~fps: one-second steps)
        self._plan: list[int] = []  # frames the thread decodes next, in order
        self._inflight: int | None = None  # the frame the thread is decoding now
        self._thread_last: int | None = None  # the frame the thread decoded last
        self._foreground = 0  # page reads decoding now
        self.error: str | None = None  # the thread's last failure; the page's reads still decode

    # -- the page's side -----------------------------------------------------------------------
    def read(self, n: int) -> np.ndarray:
        """Exactly frame n (0-based) as an RGB uint8 array, upright; moves the cursor to n.

        Raises:
            IndexError: n outside [0, frames).
            VideoError: the frame cannot be decoded.
        """
        if not 0 <= n < self.frames:
            raise IndexError(f"frame {n} is outside 0..{self.frames - 1}")
        rgb = self.lru.get(n)
        if rgb is None and self._prefetch_will_reach(n):
            rgb = self._wait_for(n)
        if rgb is None:
            with self._cond:
                self._foreground += 1  # the thread pauses: on a busy machine it would slow this decode
                reader = self._pick_reader(n, avoid=self._thread_reader)
            try:
                rgb = reader.read(n)
            finally:
                with self._cond:
                    self._foreground -= 1
                    self._cond.notify_all()
            self.lru.put(n, rgb)
        self._move_cursor(n)
        return rgb.copy()

    def cached(self, n: int) -> bool:
        """Whether read(n) would return from memory now, without decoding."""
        return n in self.lru

    def preview(self, n: int) -> Preview | None:
        """What can be shown for frame n without decoding: the exact frame if held, else the
        nearest low-res proxy (exact=False), else None."""
        rgb = self.lru.get(n)
        if rgb is not None:
            return Preview(n, n, rgb.copy(), True)
        if self.proxy is None:
            return None
        near = self.proxy.nearest(n)
        if near is None:
            return None
        m, small = near
        return Preview(n, m, small.copy(), False)

    def start_proxies(self) -> None:
        """Start building the proxies in the background now (also started by the first read)."""
        with self._cond:
            self._ensure_thread()

    # -- lifecycle -----------------------------------------------------------------------------
    def close(self) -> None:
        """Stop the background thread (waits for it), close both decoders and drop every frame."""
        with self._cond:
            self._closed = True
            self._plan = []
            self._cond.notify_all()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()
        for reader in self._readers:
            reader.close()
        if self.proxy is not None:
            self.proxy.close()
        self.lru.clear()

    def __enter__(self) -> "FrameCache":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def thread(self) -> threading.Thread | None:
        """The background thread while it runs (None when idle or closed)."""
        with self._cond:
            return self._thread

    def wait_idle(self, timeout: float = 30.0) -> bool:
        """Wait until the background thread has no work left (tests, the benchmark); True if it did."""
        thread = self.thread
        if thread is not None:
            thread.join(timeout)
            return not thread.is_alive()
        return True

    # -- prefetch ------------------------------------------------------------------------------
    def _move_cursor(self, n: int) -> None:
        with self._cond:
            if self._closed:
                return
            last, before = self._cursor, self._direction
            # A step of up to a second (or the prefetch window) is scrubbing; a longer one a jump.
            jump = last is not None and abs(n - last) > max(self.ahead, int(round(self.info.fps)))
            if last is not None and n != last:
                # After a jump the scrub direction is unknown: forward is what playback and +1 do.
                self._direction = 1 if jump else (1 if n > last else -1)
                self._step = 1 if jump else abs(n - last)
            self._cursor = n
            if self._prefetch_on:
                self._plan = self._next_plan(n, jump or self._direction != before)
            self._ensure_thread()
            self._cond.notify_all()

    def _next_plan(self, n: int, fresh: bool) -> list[int]:
        """The frames the thread decodes next, ascending (the decoder only runs forward)."""
        remaining = [] if fresh else self._plan
        step = self._step
        if self._direction > 0:
            if step > CONTIGUOUS_STEP:
                # Steps of a second: only where the cursor lands next (the decoder runs on between).
                targets = [n + k * step for k in range(1, PREDICTED_STEPS + 1)]
                return [m for m in targets if m < self.frames and m not in self.lru]
            # Frames the cursor has passed are dropped: the decoder steps over them without converting.
            kept = [m for m in remaining if m > n]
            start = (kept[-1] if kept else n) + 1
            # Nothing behind the cursor after a jump: that would cost a seek back to the key frame on
            # every jump, competing with the next seek, for a -1 step that is rarer than +1.
            return kept + [m for m in range(start, min(self.frames, n + 1 + self.ahead)) if m not in self.lru]
        if remaining:
            return remaining  # a backward chunk in progress: a new one would seek back again
        if step > CONTIGUOUS_STEP:
            targets = [n - k * step for k in range(PREDICTED_STEPS, 0, -1)]
            return [m for m in targets if m >= 0 and m not in self.lru]
        if all(m in self.lru for m in range(max(0, n - self.ahead // 2), n)):
            return []  # enough held behind the cursor; fetch the next chunk when half is used
        return [m for m in range(max(0, n - self.ahead), n) if m not in self.lru]

    def _prefetch_will_reach(self, n: int) -> bool:
        """Whether the thread is decoding towards n and will get there sooner than a fresh seek."""
        with self._cond:
            if self._thread is None:
                return False
            if n == self._inflight:
                return True
            # Only when the thread decodes forward close before n: a thread about to seek is slower.
            near = self._inflight if self._inflight is not None else self._thread_last
            return near is not None and near < n <= near + WAIT_WINDOW and n in self._plan

    def _yield_to_page(self) -> bool:
        return self._foreground > 0 or self._closed

    def _pick_reader(self, n: int, avoid: FrameReader | None) -> FrameReader:
        """The decoder that reaches n without a seek if one does, else one other than `avoid`."""
        # Called with self._cond held.
        for reader in self._readers:
            if reader.continues_to(n):
                return reader
        return self._readers[1] if self._readers[0] is avoid else self._readers[0]

    def _wait_for(self, n: int, timeout: float = 2.0) -> np.ndarray | None:
        with self._cond:
            self._cond.wait_for(lambda: n in self.lru or self._closed or self._thread is None
                                or (n != self._inflight and n not in self._plan), timeout)
        return self.lru.get(n)

    def _ensure_thread(self) -> None:
        # Called with self._cond held.
        if self._closed or self._thread is not None:
            return
        if not self._plan and (self.proxy is None or self.proxy.done):
            return
        self._thread = threading.Thread(target=self._run, name=f"framecache:{os.path.basename(self.path)}",
                                        daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            with self._cond:
                self._inflight = None
                self._cond.notify_all()
                self._cond.wait_for(lambda: self._foreground == 0 or self._closed)
                if self._closed:
                    self._thread = None
                    return
                if self._plan:
                    n = self._inflight = self._plan.pop(0)
                    # A seek takes the decoder not left at the cursor: the page may step on from there.
                    at_cursor = next((r for r in self._readers if self._cursor is not None
                                      and r.continues_to(self._cursor + 1)), None)
                    self._thread_reader = self._pick_reader(n, avoid=at_cursor)
                elif self.proxy is not None and not self.proxy.done:
                    n = None
                else:
                    self._thread = None  # no work: the thread ends; the next read starts another
                    return
            try:
                if n is not None:
                    if n not in self.lru:
                        self.lru.put(n, self._thread_reader.read(n, stop=self._yield_to_page))
                    self._thread_last = n
                else:
                    self.proxy.build_step(lambda: self._closed or bool(self._plan))
            except ReadInterrupted:
                with self._cond:  # the page reads now; the frame is decoded after, if still wanted
                    if not self._closed and n not in self.lru and n not in self._plan:
                        self._plan.insert(0, n)
            except (VideoError, av.FFmpegError, IndexError) as exc:
                # The page's own read reports a bad frame; a failed prefetch only stops prefetching.
                with self._cond:
                    self.error = str(exc)
                    self._plan = []
                    if n is None:
                        self.proxy.done = True


class _ProxyIndex:
    """Low-res copies of the key frames, then of every stride-th frame, built by one sequential pass."""

    def __init__(self, path: str, info: VideoInfo, index: list[int], max_bytes: int, width: int):
        self.path = path
        self.rotation = info.rotation
        w, h = (info.height, info.width) if info.rotation in (90, 270) else (info.width, info.height)
        self.width = min(width, w) // 2 * 2  # stored size before turning upright: even, no upscale
        self.height = max(2, int(round(h * self.width / w)) // 2 * 2)
        per_frame = self.width * self.height * 3
        self.stride = max(1, -(-len(index) * per_frame // max(1, max_bytes)))
        self.frame_of_pts = {pts: n for n, pts in enumerate(index)}
        self.done = False
        self._lock = threading.Lock()
        self._frames: dict[int, np.ndarray] = {}
        self._keys: list[int] = []
        self._pass = "keyframes"
        self._container = None
        self._decoder = None
        self._n = 0

    def nearest(self, n: int) -> tuple[int, np.ndarray] | None:
        """(frame number, low-res RGB) of the proxy closest to n, or None before the first one."""
        with self._lock:
            if not self._keys:
                return None
            i = bisect.bisect_left(self._keys, n)
            near = [k for k in self._keys[max(0, i - 1): i + 1]]
            m = min(near, key=lambda k: (abs(k - n), k))
            return m, self._frames[m]

    def __len__(self) -> int:
        with self._lock:
            return len(self._keys)

    def _keep(self, n: int, frame: av.VideoFrame) -> None:
        small = frame.reformat(width=self.width, height=self.height, format="rgb24").to_ndarray()
        if self.rotation:
            small = np.ascontiguousarray(np.rot90(small, k=self.rotation // 90))
        with self._lock:
            if n not in self._frames:
                bisect.insort(self._keys, n)
            self._frames[n] = small

    def build_step(self, interrupted, chunk: int = 8) -> None:
        """Decode up to `chunk` frames of the current pass; returns early when interrupted() says so."""
        if self._decoder is None:
            self._container, stream = open_stream(self.path)
            stream.thread_type = "AUTO"
            if self._pass == "keyframes":
                stream.codec_context.skip_frame = "NONKEY"  # only key frames decode: a coarse index at once
            self._decoder = self._container.decode(stream)
        for _ in range(chunk):
            if interrupted():
                return
            frame = next(self._decoder, None)
            if frame is None:
                self._container.close()
                self._container = self._decoder = None
                if self._pass == "keyframes":
                    self._pass = "stride"
                else:
                    self.done = True
                return
            if self._pass == "keyframes":
                n = self.frame_of_pts.get(frame.pts)
                if n is not None:
                    self._keep(n, frame)
            else:
                if self._n % self.stride == 0:
                    self._keep(self._n, frame)
                self._n += 1

    def close(self) -> None:
        if self._container is not None:
            self._container.close()
        self._container = self._decoder = None
        self.done = True
        with self._lock:
            self._frames.clear()
            self._keys.clear()
