"""Decoding (and writing) videos with OpenCV, with errors that name the file and the problem.

Two sources of frames are in common use for the saliency datasets:

* a video file (DHF1K ``video/NNN.AVI``, Kinetics ``*.mp4``): decoded with ``cv2.VideoCapture`` and
  converted BGR→RGB, exactly as the authors' code does (issue 2, item 6: on the authors' ``0068.AVI`` the
  decoded frames match ``decoded_frame_md5.json`` frame by frame);
* a folder of frame images (the "frame-folder" variants, e.g. ``annotation/NNNN/images/0001.png``), read in
  natural name order (``2.png`` before ``10.png``).

Everything returns uint8 RGB frames laid out ``N×H×W×3``; grayscale sources are replicated to three
channels. Frame indices are 0-based. Decoding is sequential: ``cv2.CAP_PROP_POS_FRAMES`` seeks are not
frame-exact for inter-coded AVIs, so frames before ``start`` are skipped with ``grab()`` (no colour
conversion) instead.
"""
from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np

from tinyhd.errors import DataError

VIDEO_EXTENSIONS = (".avi", ".mp4", ".mkv", ".mov", ".webm", ".m4v", ".mpg", ".mpeg")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def _cv2():
    import cv2

    return cv2


def natural_key(name: str) -> list:
    """Sort key that orders ``frame2.png`` before ``frame10.png`` (digit runs compare as numbers)."""
    return [int(tok) if tok.isdigit() else tok.lower() for tok in re.split(r"(\d+)", name)]


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Image files of ``folder`` in natural name order (hidden and temporary files are ignored)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: frame folder does not exist")
    files = [p for p in folder.iterdir()
             if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".") and p.is_file()]
    return sorted(files, key=lambda p: natural_key(p.name))


def _to_rgb(frame: np.ndarray, path: Path, cv2) -> np.ndarray:
    """One decoded OpenCV frame (BGR, BGRA or gray) -> H×W×3 uint8 RGB."""
    if frame.dtype != np.uint8:
        if frame.dtype == np.uint16:  # 16-bit PNGs: keep the top 8 bits
            frame = (frame >> 8).astype(np.uint8)
        else:
            raise DataError(f"{path}: unsupported pixel type {frame.dtype} (expected 8-bit images)")
    if frame.ndim == 2:
        return np.repeat(frame[:, :, None], 3, axis=2)
    if frame.shape[2] == 1:
        return np.repeat(frame, 3, axis=2)
    if frame.shape[2] == 4:
        return cv2.cvtColor(frame, cv2.COLOR_BGRA2RGB)
    return cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)


def read_image(path: str | os.PathLike, grayscale: bool = False) -> np.ndarray:
    """Read one image: H×W×3 uint8 RGB, or H×W uint8 when ``grayscale`` (for maps and fixations)."""
    cv2 = _cv2()
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: image file does not exist")
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None or img.size == 0:
        raise DataError(f"{path}: unreadable image (corrupt or not an image)")
    if grayscale:
        if img.dtype == np.uint16:
            img = (img >> 8).astype(np.uint8)
        if img.dtype != np.uint8:
            raise DataError(f"{path}: unsupported pixel type {img.dtype} (expected 8-bit images)")
        if img.ndim == 3:
            # saliency maps are stored gray; a colour map is read as its luminance (alpha ignored)
            img = img[:, :, 0] if img.shape[2] == 1 else cv2.cvtColor(img[:, :, :3], cv2.COLOR_BGR2GRAY)
        return img
    return _to_rgb(img, path, cv2)


def _open(path: Path):
    cv2 = _cv2()
    if not path.exists():
        raise DataError(f"{path}: video file does not exist")
    if path.is_dir():
        raise DataError(f"{path}: expected a video file, found a folder")
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        cap.release()
        raise DataError(f"{path}: cannot open video (unsupported codec, or not a video)")
    return cap


def video_info(path: str | os.PathLike) -> dict:
    """Header information: ``{"frames", "height", "width", "fps"}``.

    For a video file ``frames`` is what the container claims (cheap, but may be wrong for a truncated
    file; ``count_frames`` decodes to be sure). For a frame folder it is the number of images.
    """
    path = Path(path)
    if path.is_dir():
        files = list_images(path)
        if not files:
            raise DataError(f"{path}: frame folder contains no images")
        h, w = read_image(files[0]).shape[:2]
        return {"frames": len(files), "height": h, "width": w, "fps": None}
    cv2 = _cv2()
    cap = _open(path)
    try:
        return {
            "frames": int(cap.get(cv2.CAP_PROP_FRAME_COUNT)),
            "height": int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)),
            "width": int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)),
            "fps": float(cap.get(cv2.CAP_PROP_FPS)) or None,
        }
    finally:
        cap.release()


def count_frames(path: str | os.PathLike) -> int:
    """Number of frames that actually decode (``grab`` through the whole file; images in a folder)."""
    path = Path(path)
    if path.is_dir():
        return len(list_images(path))
    cap = _open(path)
    n = 0
    try:
        while cap.grab():
            n += 1
    finally:
        cap.release()
    return n


def read_video(path: str | os.PathLike, start: int = 0, stop: int | None = None,
               indices: Sequence[int] | None = None) -> np.ndarray:
    """Decode frames ``[start, stop)`` (0-based) of a video file or frame folder -> N×H×W×3 uint8 RGB.

    ``stop=None`` reads to the end. ``indices`` (sorted or not, repeats allowed) reads exactly those frames
    instead. Asking for frames past the end raises ``DataError`` naming the file and how many frames it has;
    a file that decodes to no frame at all is an error too.
    """
    path = Path(path)
    if indices is not None:
        idx = np.asarray(list(indices), dtype=np.int64)
        if idx.size == 0:
            raise ValueError("read_video: empty list of frame indices")
        if idx.min() < 0:
            raise ValueError(f"read_video: negative frame index {int(idx.min())}")
        lo, hi = int(idx.min()), int(idx.max()) + 1
        block = read_video(path, lo, hi)
        return block[idx - lo]
    if start < 0 or (stop is not None and stop < start):
        raise ValueError(f"read_video: bad frame range [{start}, {stop})")
    if path.is_dir():
        return _read_folder(path, start, stop)
    return _read_file(path, start, stop)


def _read_folder(path: Path, start: int, stop: int | None) -> np.ndarray:
    files = list_images(path)
    if not files:
        raise DataError(f"{path}: frame folder contains no images")
    stop_ = len(files) if stop is None else stop
    if stop_ > len(files):
        raise DataError(f"{path}: asked for frames up to {stop_ - 1} but the folder has {len(files)} frames")
    frames = [read_image(f) for f in files[start:stop_]]
    shapes = {f.shape for f in frames}
    if len(shapes) > 1:
        raise DataError(f"{path}: frames have different sizes {sorted(shapes)}")
    if not frames:
        return np.zeros((0, 0, 0, 3), np.uint8)
    return np.stack(frames)


def _read_file(path: Path, start: int, stop: int | None) -> np.ndarray:
    cv2 = _cv2()
    cap = _open(path)
    frames: list[np.ndarray] = []
    n = 0
    try:
        while n < start:  # skip without decoding colour
            if not cap.grab():
                break
            n += 1
        if n == start:
            while stop is None or n < stop:
                ok, frame = cap.read()
                if not ok or frame is None:
                    break
                frames.append(_to_rgb(frame, path, cv2))
                n += 1
    finally:
        cap.release()
    if n == 0 and not frames:
        raise DataError(f"{path}: no frame could be decoded (empty, truncated or corrupt video)")
    if stop is not None and n < stop:
        raise DataError(f"{path}: asked for frames up to {stop - 1} but only {n} frames decode")
    if not frames:
        raise DataError(f"{path}: asked for frames from {start} but only {n} frames decode")
    return np.stack(frames)


def write_video(path: str | os.PathLike, frames: np.ndarray, fps: float = 30.0, fourcc: str = "MJPG",
                pad_odd: bool = False) -> Path:
    """Write N×H×W×3 uint8 RGB frames (or N×H×W gray) atomically: temporary name, then rename.

    MJPG in ``.avi`` is available in every OpenCV build; ``mp4v`` in ``.mp4`` works with the FFMPEG backend.
    Height and width must be even (OpenCV's writers would crop odd sizes silently): odd sizes raise
    ``ValueError``, or with ``pad_odd=True`` (e.g. for overlay videos) get one replicated row/column added.
    """
    cv2 = _cv2()
    path = Path(path)
    frames = np.asarray(frames)
    if frames.ndim == 3:
        frames = np.repeat(frames[..., None], 3, axis=3)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or len(frames) == 0:
        raise ValueError(f"write_video expects N×H×W×3 uint8 frames, got {frames.shape} {frames.dtype}")
    if pad_odd and (frames.shape[1] % 2 or frames.shape[2] % 2):
        frames = np.pad(frames, ((0, 0), (0, frames.shape[1] % 2), (0, frames.shape[2] % 2), (0, 0)), mode="edge")
    if frames.shape[1] % 2 or frames.shape[2] % 2:
        # OpenCV's FFMPEG writers silently crop odd sizes to even ones; refuse rather than change the size
        raise ValueError(f"{path}: video frames must have an even height and width to be written "
                         f"(got {frames.shape[1]}×{frames.shape[2]}); store odd sizes as frame folders")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        h, w = frames.shape[1:3]
        writer = cv2.VideoWriter(tmp, cv2.VideoWriter_fourcc(*fourcc), float(fps), (int(w), int(h)))
        if not writer.isOpened():
            raise DataError(f"{path}: this OpenCV build cannot write {fourcc!r} video into {path.suffix!r} files")
        try:
            for frame in frames:
                writer.write(cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_RGB2BGR))
        finally:
            writer.release()
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def write_image(path: str | os.PathLike, image: np.ndarray) -> Path:
    """Write an H×W (gray) or H×W×3 (RGB) uint8 image atomically; the format follows the suffix."""
    cv2 = _cv2()
    from tinyhd.paths import atomic_write_bytes

    path = Path(path)
    img = np.asarray(image)
    if img.ndim == 3:
        img = cv2.cvtColor(np.ascontiguousarray(img), cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(path.suffix or ".png", img)
    if not ok:
        raise DataError(f"{path}: cannot encode image as {path.suffix!r}")
    atomic_write_bytes(path, buf.tobytes())
    return path
