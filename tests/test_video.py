"""Probe, limits, exact random access and streaming decode."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import numbered_frames, shared
from workbench.video import FrameReader, Limits, VideoError, frame, iter_frames, probe, write_video


def sequential(path):
    return [rgb for _, rgb in iter_frames(path)]


def test_probe_reports_facts(h264_clip):
    info = probe(h264_clip)
    assert (info.frames, info.width, info.height, info.fps) == (120, 320, 240, 25.0)
    assert info.codec == "h264" and info.rotation == 0
    assert info.duration_s == pytest.approx(4.8, abs=0.05)
    assert info.size_bytes == h264_clip.stat().st_size


@pytest.mark.parametrize("clip", ["h264_clip", "mpeg4_clip"])
def test_random_access_matches_sequential_read(clip, request):
    path = request.getfixturevalue(clip)
    seq = sequential(path)
    assert len(seq) == 120
    reader = FrameReader(path)
    # Backwards, forwards, across the long GOP's key frames (0, 100), repeats and single steps.
    order = list(range(119, -1, -7)) + [0, 1, 2, 99, 100, 101, 55, 56, 119, 3, 98]
    for n in order:
        assert np.array_equal(reader.read(n), seq[n]), f"frame {n} differs from the sequential read"
    reader.close()


def test_frame_function_and_bounds(h264_clip):
    seq = sequential(h264_clip)
    assert np.array_equal(frame(h264_clip, 77), seq[77])
    with FrameReader(h264_clip) as reader:
        with pytest.raises(IndexError):
            reader.read(120)
        with pytest.raises(IndexError):
            reader.read(-1)


def test_random_access_agrees_with_opencv_sequential_read(mpeg4_clip):
    cv2 = pytest.importorskip("cv2")
    cap = cv2.VideoCapture(str(mpeg4_clip))
    cv_frames = []
    while True:
        ok, bgr = cap.read()
        if not ok:
            break
        cv_frames.append(bgr[..., ::-1])
    assert len(cv_frames) == 120
    with FrameReader(mpeg4_clip) as reader:
        for n in (110, 3, 64, 100):
            diff = np.abs(reader.read(n).astype(int) - cv_frames[n].astype(int)).mean()
            assert diff < 2.0, f"frame {n}: mean difference {diff}"


def test_iter_frames_yields_only_wanted(h264_clip):
    got = [n for n, _ in iter_frames(h264_clip, [5, 1, 60, 60, 119])]
    assert got == [1, 5, 60, 119]


def test_iter_frames_is_streaming(h264_clip):
    gen = iter_frames(h264_clip)
    n, first = next(gen)
    assert n == 0 and first.shape == (240, 320, 3)
    gen.close()


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "empty"),
        (b"hello, this is not a video\n" * 50, "not a readable video"),
        (bytes(range(256)) * 40, "not a readable video"),
    ],
)
def test_refuses_non_videos(tmp_path, content, message):
    path = tmp_path / "evil.mp4"
    path.write_bytes(content)
    with pytest.raises(VideoError, match=message):
        probe(path)


def test_refuses_playlist_disguised_as_video(tmp_path):
    path = tmp_path / "clip.mp4"
    path.write_text("#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:10,\nhttp://127.0.0.1:9/x.ts\n#EXT-X-ENDLIST\n")
    with pytest.raises(VideoError):
        probe(path)


def test_refuses_image_renamed_as_video(tmp_path):
    cv2 = pytest.importorskip("cv2")
    path = tmp_path / "photo.mp4"
    ok, png = cv2.imencode(".png", np.zeros((32, 32, 3), np.uint8))
    path.write_bytes(png.tobytes())
    with pytest.raises(VideoError):
        probe(path)


def test_refuses_truncated_header(h264_clip, tmp_path):
    path = tmp_path / "cut.mp4"
    path.write_bytes(h264_clip.read_bytes()[:200])
    with pytest.raises(VideoError):
        probe(path)


@pytest.mark.parametrize(
    "limits, message",
    [
        (Limits(max_pixels=320 * 239), "resolution 320x240 is above"),
        (Limits(max_frames=100), "frames is above"),
        (Limits(max_duration_s=2.0), "duration"),
        (Limits(max_file_bytes=1000), "above the limit"),
    ],
)
def test_limits_are_enforced(h264_clip, limits, message):
    with pytest.raises(VideoError, match=message):
        probe(h264_clip, limits)


def test_missing_file(tmp_path):
    with pytest.raises(VideoError, match="no such file"):
        probe(tmp_path / "nothing.mp4")


def test_rotation_is_reported_and_applied(tmp_path):
    import av
    from fractions import Fraction

    path = tmp_path / "rotated.mp4"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=Fraction(10))
        stream.width, stream.height, stream.pix_fmt = 64, 32, "yuv420p"
        stream.set_display_rotation(90)
        for rgb in numbered_frames(10, 64, 32):
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    info = probe(path)
    assert info.rotation in (90, 270)
    assert (info.width, info.height) == (32, 64)
    assert frame(path, 3).shape == (64, 32, 3)


def test_mpeg1_program_stream(tmp_path):
    path = tmp_path / "clip.mpg"
    write_video(path, numbered_frames(40, 160, 128), fps=25, codec="mpeg1video", gop=15, container_format="mpeg")
    seq = sequential(path)
    with FrameReader(path) as reader:
        for n in (39, 0, 17, 16, 30):
            assert np.array_equal(reader.read(n), seq[n])


@pytest.mark.shared_data
def test_exact_access_on_real_clips():
    for rel in (("grid", "bbaf2n.mpg"), ("multiface", "pedestrians_1080p.mp4")):
        path = shared(*rel)
        seq = sequential(path)
        assert probe(path).frames == len(seq)
        with FrameReader(path) as reader:
            for n in (len(seq) - 1, 0, len(seq) // 2, 7, 8):
                assert np.array_equal(reader.read(n), seq[n]), f"{rel}: frame {n}"
