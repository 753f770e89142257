"""The scrubbing cache: its byte bound, exact frames on every path, the prefetch thread's life, and labelled proxies."""
from __future__ import annotations

import threading

import numpy as np
import pytest

from workbench.framecache import PROXY_LABEL, FrameCache, FrameLRU
from workbench.video import FrameReader, ReadInterrupted, iter_frames

FRAME_BYTES = 320 * 240 * 3  # the h264_clip fixture: 120 frames of 320x240, key frames at 0 and 100


@pytest.fixture(scope="module")
def sequential(h264_clip):
    return [rgb for _, rgb in iter_frames(h264_clip)]


def framecache_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("framecache:")]


def test_lru_holds_at_most_its_bytes_and_drops_the_least_recently_used():
    lru = FrameLRU(max_bytes=3 * 1000)
    for n in range(3):
        lru.put(n, np.full(1000, n, np.uint8))
    lru.get(0)  # 0 is now the most recently used: 1 goes first
    lru.put(3, np.zeros(1000, np.uint8))
    assert lru.frames() == [2, 0, 3] and lru.nbytes == 3000
    lru.put(4, np.zeros(2000, np.uint8))
    assert lru.frames() == [3, 4] and lru.nbytes == 3000
    lru.put(5, np.zeros(4000, np.uint8))  # larger than the whole budget: not held, nothing dropped
    assert lru.frames() == [3, 4] and 5 not in lru


def test_the_cache_stays_within_its_byte_budget_while_scrubbing(h264_clip):
    budget = 10 * FRAME_BYTES + 100
    with FrameCache(h264_clip, max_bytes=budget, ahead_s=0.2, proxies=False) as cache:
        for n in [0, 1, 2, 3, 50, 60, 59, 58, 110, 119, 5]:
            cache.read(n)
            assert cache.lru.nbytes <= budget
        cache.wait_idle()
        assert cache.lru.nbytes <= budget and len(cache.lru) == 10


def test_cold_reads_are_the_plain_decode(h264_clip, sequential):
    with FrameCache(h264_clip, prefetch=False, proxies=False) as cache:
        for n in [119, 0, 99, 100, 101, 57, 3]:
            assert not cache.cached(n)
            assert np.array_equal(cache.read(n), sequential[n]), n


def test_cached_reads_are_the_plain_decode_and_cannot_be_spoiled_by_the_caller(h264_clip, sequential):
    with FrameCache(h264_clip, prefetch=False, proxies=False) as cache:
        first = cache.read(42)
        first[:] = 0  # the caller owns its copy
        assert cache.cached(42)
        assert np.array_equal(cache.read(42), sequential[42])


def test_prefetched_frames_ahead_are_the_plain_decode(h264_clip, sequential):
    with FrameCache(h264_clip, ahead_s=0.4, proxies=False) as cache:  # 10 frames at 25 fps
        cache.read(95)
        assert cache.wait_idle()
        for n in range(96, 106):  # across the key frame at 100
            assert cache.cached(n), n
            assert np.array_equal(cache.read(n), sequential[n]), n


def test_stepping_backward_prefetches_behind_the_cursor(h264_clip, sequential):
    with FrameCache(h264_clip, ahead_s=0.4, proxies=False) as cache:
        cache.read(60)
        cache.read(59)  # the scrub direction is now backward
        assert cache.wait_idle()
        for n in range(49, 59):
            assert cache.cached(n), n
            assert np.array_equal(cache.read(n), sequential[n]), n


def test_a_jump_drops_the_old_prefetch_plan(h264_clip, monkeypatch):
    decoded = []
    plain_read = FrameReader.read

    def slow_read(self, n, stop=None):
        if threading.current_thread().name.startswith("framecache:"):
            decoded.append(n)
            threading.Event().wait(0.02)
        return plain_read(self, n, stop)

    monkeypatch.setattr(FrameReader, "read", slow_read)
    with FrameCache(h264_clip, ahead_s=1.0, proxies=False) as cache:  # 25 frames ahead
        cache.read(0)
        cache.read(80)  # a jump: the thread leaves 1..25 for 81..105
        assert cache.wait_idle()
    assert set(range(81, 106)) <= set(decoded)
    assert len(set(decoded) & set(range(1, 26))) < 25


def test_an_interrupted_read_leaves_a_reader_that_still_reads_exactly(h264_clip, sequential):
    asked = []

    def stop_after_ten():
        asked.append(1)
        return len(asked) > 10

    with FrameReader(h264_clip) as reader:
        with pytest.raises(ReadInterrupted):
            reader.read(60, stop=stop_after_ten)  # a background read giving way to the page
        assert len(asked) == 11
        assert reader.continues_to(15)  # it stopped a few frames in and can go on from there
        for n in [15, 16, 60, 3]:
            assert np.array_equal(reader.read(n), sequential[n]), n


def test_the_thread_ends_when_idle_and_when_closed(h264_clip):
    cache = FrameCache(h264_clip, ahead_s=2.0)
    cache.read(10)
    assert cache.thread is not None  # prefetching, then building proxies
    assert cache.wait_idle()
    assert cache.thread is None and not framecache_threads()
    cache.read(70)
    cache.close()  # while it prefetches
    assert cache.thread is None and not framecache_threads()
    assert len(cache.lru) == 0


def test_the_app_releases_an_evidence_files_cache_and_its_thread(h264_clip, mpeg4_clip, tmp_path):
    from workbench.ui import resources

    resources.frame_cache.clear()
    third = tmp_path / "third.mp4"
    third.write_bytes(h264_clip.read_bytes())
    first = resources.frame_cache("sha-a", str(h264_clip))
    first.read(5)
    resources.frame_cache("sha-b", str(mpeg4_clip))
    resources.frame_cache("sha-c", str(third))  # a third evidence file: the first one is released
    assert first.thread is None and len(first.lru) == 0
    assert resources.frame_cache("sha-a", str(h264_clip)) is not first
    resources.frame_cache.clear()  # every cache released: no thread left
    assert not framecache_threads()


def test_a_proxy_is_flagged_and_the_exact_frame_replaces_it(h264_clip, sequential):
    with FrameCache(h264_clip, prefetch=False, proxy_width=160) as cache:
        cache.start_proxies()
        assert cache.wait_idle()
        preview = cache.preview(61)
        assert not preview.exact and preview.requested == 61
        assert PROXY_LABEL in preview.label == f"{PROXY_LABEL} (preview of frame {preview.frame})"
        assert preview.image.shape == (120, 160, 3) and abs(preview.frame - 61) <= cache.proxy.stride
        cache.read(61)
        exact = cache.preview(61)
        assert exact.exact and exact.label == "frame 61" and np.array_equal(exact.image, sequential[61])


def test_proxies_fit_their_budget(h264_clip):
    with FrameCache(h264_clip, prefetch=False, proxy_width=160, proxy_bytes=30 * 160 * 120 * 3) as cache:
        cache.start_proxies()
        assert cache.wait_idle()
        assert cache.proxy.stride == 4
        assert len(cache.proxy) == 30  # every 4th frame; the key frames 0 and 100 among them


def test_the_page_shows_a_labelled_proxy_until_the_exact_frame_is_ready(h264_clip, monkeypatch):
    from workbench.ui import resources

    shown = []

    class Slot:
        def image(self, image, caption, width):
            shown.append(("image", image.shape, caption))

        def empty(self):
            shown.append(("removed",))

    class FakeStreamlit:
        def empty(self):
            return Slot()

    cache = FrameCache(h264_clip, prefetch=False)
    cache.start_proxies()
    cache.wait_idle()
    monkeypatch.setattr(resources, "st", FakeStreamlit())
    monkeypatch.setattr(resources, "frame_cache", lambda sha, path: cache)
    with resources.proxy_while_loading("sha", str(h264_clip), 33) as slot:
        assert len(shown) == 1 and shown[0][0] == "image" and PROXY_LABEL in shown[0][2]
        exact = cache.read(33)
    slot.image(exact, caption="frame 33", width="stretch")  # the page: the exact frame in the proxy's place
    assert shown[-1] == ("image", exact.shape, "frame 33")
    shown.clear()
    with resources.proxy_while_loading("sha", str(h264_clip), 33):  # held: no proxy at all
        pass
    assert shown == []
    with pytest.raises(ValueError):
        with resources.proxy_while_loading("sha", str(h264_clip), 90):
            raise ValueError("the exact frame failed")
    assert shown[-1] == ("removed",)  # no proxy left on screen as if it were the frame
    cache.close()
