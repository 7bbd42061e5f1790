"""tinyhd.video: OpenCV decoding of files and frame folders, bit-exact on the authors' AVI, clear errors."""
from __future__ import annotations

import hashlib
import json

import cv2
import numpy as np
import pytest

from tinyhd.errors import DataError
from tinyhd.video import count_frames, list_images, read_image, read_video, video_info, write_video


def _frames(n: int = 12, h: int = 40, w: int = 56, seed: int = 0) -> np.ndarray:
    """Smooth, distinct frames (MJPG is lossy; smooth content survives it with small errors)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    out = np.empty((n, h, w, 3), np.uint8)
    for t in range(n):
        c = rng.uniform(40, 200, 3)
        out[t] = np.clip(c + 40 * np.sin(x[..., None] / 7.0 + t) * np.cos(y[..., None] / 9.0), 0, 255)
    return out


@pytest.mark.official
def test_fixture_video_decodes_to_the_authors_frames(official_dir):
    """Issue 2 item 6: md5 of each decoded uint8 RGB frame of 0068.AVI matches decoded_frame_md5.json."""
    expected = json.loads((official_dir / "decoded_frame_md5.json").read_text())
    frames = read_video(official_dir / "0068.AVI")
    assert frames.shape == (540, 360, 640, 3) and frames.dtype == np.uint8
    got = {str(i): hashlib.md5(np.ascontiguousarray(f).tobytes()).hexdigest() for i, f in enumerate(frames)}
    assert len(expected) == 540
    mismatched = [k for k in expected if got.get(k) != expected[k]]
    assert not mismatched, f"{len(mismatched)} frames differ, first {mismatched[:5]}"
    # a frame range decodes to the same frames as the full decode (sequential, frame-exact)
    assert np.array_equal(read_video(official_dir / "0068.AVI", 500, 516), frames[500:516])
    assert video_info(official_dir / "0068.AVI")["frames"] == 540


def test_roundtrip_ranges_and_indices(tmp_path):
    src = _frames()
    path = write_video(tmp_path / "v.avi", src)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temporary file left behind"
    full = read_video(path)
    assert full.shape == src.shape and full.dtype == np.uint8
    assert np.abs(full.astype(int) - src).mean() < 6  # MJPG is lossy but close
    assert np.array_equal(read_video(path, 3, 7), full[3:7])
    assert np.array_equal(read_video(path, indices=[9, 2, 2, 11]), full[[9, 2, 2, 11]])
    assert count_frames(path) == 12 and video_info(path)["frames"] == 12
    assert (video_info(path)["height"], video_info(path)["width"]) == (40, 56)


def test_frame_folder_natural_order_and_grayscale(tmp_path):
    src = _frames(n=11)
    for t, f in enumerate(src):  # 1.png ... 11.png: natural order, not "1, 10, 11, 2"
        cv2.imwrite(str(tmp_path / f"{t + 1}.png"), cv2.cvtColor(f, cv2.COLOR_RGB2GRAY))
    (tmp_path / "notes.txt").write_text("not a frame")
    assert [p.name for p in list_images(tmp_path)][:3] == ["1.png", "2.png", "3.png"]
    frames = read_video(tmp_path)
    assert frames.shape == (11, 40, 56, 3)
    assert np.array_equal(frames[..., 0], frames[..., 1]) and np.array_equal(frames[..., 1], frames[..., 2])
    gray = cv2.cvtColor(src[10], cv2.COLOR_RGB2GRAY)
    assert np.array_equal(frames[10, :, :, 0], gray)
    assert np.array_equal(read_video(tmp_path, 2, 5), frames[2:5])
    assert read_image(tmp_path / "3.png", grayscale=True).shape == (40, 56)


def test_errors_name_the_file(tmp_path):
    with pytest.raises(DataError, match="nothere.avi: video file does not exist"):
        read_video(tmp_path / "nothere.avi")
    junk = tmp_path / "junk.avi"
    junk.write_bytes(b"this is not a video" * 10)
    with pytest.raises(DataError, match="junk.avi"):
        read_video(junk)
    path = write_video(tmp_path / "v.avi", _frames(n=5))
    with pytest.raises(DataError, match=r"v\.avi: asked for frames up to 9 but only 5 frames decode"):
        read_video(path, 0, 10)
    empty = tmp_path / "frames"
    empty.mkdir()
    with pytest.raises(DataError, match="frame folder contains no images"):
        read_video(empty)
    bad_png = tmp_path / "bad.png"
    bad_png.write_bytes(b"\x89PNG garbage")
    with pytest.raises(DataError, match="bad.png: unreadable image"):
        read_image(bad_png)


def test_truncated_video_is_reported(tmp_path):
    path = write_video(tmp_path / "v.avi", _frames(n=20))
    data = path.read_bytes()
    cut = tmp_path / "cut.avi"
    cut.write_bytes(data[: len(data) // 2])
    # either the container no longer opens, or fewer frames decode than the header promises
    try:
        n = count_frames(cut)
    except DataError as exc:
        assert "cut.avi" in str(exc)
    else:
        assert n < 20
        with pytest.raises(DataError, match="cut.avi"):
            read_video(cut, 0, 20)


def test_odd_sizes_are_refused_by_the_writer_not_cropped(tmp_path):
    """OpenCV's writers would silently crop 97×131 to 96×130; write_video refuses with a clear message."""
    with pytest.raises(ValueError, match=r"odd\.avi: video frames must have an even height and width.*97×131"):
        write_video(tmp_path / "odd.avi", np.zeros((2, 97, 131, 3), np.uint8))
    assert list(tmp_path.iterdir()) == []
    padded = read_video(write_video(tmp_path / "pad.avi", np.full((2, 97, 131, 3), 128, np.uint8), pad_odd=True))
    assert padded.shape == (2, 98, 132, 3) and abs(int(padded[0, 97, 131, 0]) - 128) <= 3


def test_frame_numbers_and_gaps_in_a_frame_folder(tmp_path):
    """Names carrying one common numbering give their numbers; a gap or a repeat is refused, naming it."""
    from pathlib import Path

    from tinyhd.video import check_frame_numbering, frame_numbers

    assert frame_numbers([Path("0000.png"), Path("0001.png")]) == [0, 1]
    assert frame_numbers(["frame_9.jpg", "frame_10.jpg"]) == [9, 10]
    assert frame_numbers(["v2_0007_x.png"]) == [7]  # the last digit run of the stem
    assert frame_numbers(["a.png", "b.png"]) is None and frame_numbers(["1.png", "x.png"]) is None
    assert frame_numbers(["a1.png", "b2.png"]) is None  # no common pattern: name order only
    for k in [*range(5, 20), *range(21, 24)]:
        (tmp_path / f"{k:04d}.png").write_bytes(b"")
    with pytest.raises(DataError, match=r"numbering jumps 0019\.png → 0021\.png"):
        check_frame_numbering(tmp_path)
    (tmp_path / "0020.png").write_bytes(b"")
    assert check_frame_numbering(tmp_path) == 5  # consecutive from 5
    (tmp_path / "20.png").write_bytes(b"")
    with pytest.raises(DataError, match=r"numbering repeats a number: 0020\.png → 20\.png|20\.png → 0020\.png"):
        check_frame_numbering(tmp_path)
    assert check_frame_numbering(tmp_path, [tmp_path / "a.png", tmp_path / "b.png"]) is None
