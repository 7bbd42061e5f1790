"""Decoding (and writing) videos with OpenCV, with errors that name the file and the problem.

Two sources of frames are in common use for the saliency datasets:

* a video file (DHF1K ``video/NNN.AVI``, Kinetics ``*.mp4``): decoded with ``cv2.VideoCapture`` and
  converted BGR→RGB, exactly as the authors' code does (issue 2, item 6: on the authors' ``0068.AVI`` the
  decoded frames match ``decoded_frame_md5.json`` frame by frame);
* a folder of frame images (the "frame-folder" variants, e.g. ``annotation/NNNN/images/0001.png``), read in
  natural name order (``2.png`` before ``10.png``). :func:`check_frame_numbering` refuses numbered names with
  a gap (``tinyhd predict`` and ``tinyhd.predict_video`` call it; the dataset loaders check the annotations'
  names against the manifest instead).

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
from typing import Iterator, Sequence

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


_NUMBERED = re.compile(r"(.*?)(\d+)(\D*)")  # a stem's text before, digits of, and text after its last digit run


def frame_numbers(files: Sequence[str | os.PathLike]) -> list[int] | None:
    """The frame number each file name carries (``0007.png``, ``frame_7.jpg`` -> 7), or None when the names
    carry no common numbering (some stem has no digits, or the text around the last digit run differs)."""
    parts = [_NUMBERED.fullmatch(Path(f).stem) for f in files]
    if not parts or any(m is None for m in parts) or len({(m[1], m[3]) for m in parts}) != 1:
        return None
    return [int(m[2]) for m in parts]


def check_frame_numbering(folder: str | os.PathLike, files: Sequence[Path] | None = None) -> int | None:
    """The first frame number of a frame folder whose names are numbered (None when they carry no common
    numbering: frames are then taken in name order), after checking that the numbers run without a gap.

    Frames are used by position, so ``0019.png, 0021.png`` would silently make frame 0021 the 20th: every later
    map would be numbered one too low and a 16-frame window would join frames across the gap. A gap or a
    repeated number is a ``DataError`` naming the first one. ``files``: the folder's :func:`list_images`.
    """
    folder = Path(folder)
    files = list_images(folder) if files is None else list(files)
    numbers = frame_numbers(files)
    if numbers is None:
        return None
    for a, b, fa, fb in zip(numbers, numbers[1:], files, files[1:]):
        if b != a + 1:
            what = "repeats a number:" if b == a else "jumps"
            raise DataError(f"{folder}: frame folder numbering {what} {fa.name} → {fb.name}; frames are used by "
                            f"position, so every later frame would be misnumbered and windows would join frames "
                            f"across the gap. Restore the missing frames or renumber the folder without gaps")
    return numbers[0]


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


def iter_frames(path: str | os.PathLike) -> Iterator[np.ndarray]:
    """Decode a video file or frame folder one frame at a time (H×W×3 uint8 RGB), in order.

    The streaming counterpart of :func:`read_video` (same frames, same errors): only one decoded frame is held,
    so a long video never has to fit in memory. A frame folder whose images change size raises ``DataError``
    naming the first odd one out.
    """
    path = Path(path)
    if path.is_dir():
        files = list_images(path)
        if not files:
            raise DataError(f"{path}: frame folder contains no images")
        shape = None
        for f in files:
            img = read_image(f)
            if shape is not None and img.shape != shape:
                raise DataError(f"{path}: frames have different sizes ({f.name} is {img.shape[0]}×{img.shape[1]}, "
                                f"earlier frames {shape[0]}×{shape[1]})")
            shape = img.shape
            yield img
        return
    cv2 = _cv2()
    cap = _open(path)
    n = 0
    try:
        while True:
            ok, frame = cap.read()
            if not ok or frame is None:
                break
            n += 1
            yield _to_rgb(frame, path, cv2)
    finally:
        cap.release()
    if n == 0:
        raise DataError(f"{path}: no frame could be decoded (empty, truncated or corrupt video)")


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


class VideoWriter:
    """Write a video frame by frame, atomically: frames go to a temporary file renamed to ``path`` on a clean
    :meth:`close` (or ``with`` exit); an error or :meth:`abort` removes it, leaving any earlier ``path`` as it was.

    Frames are H×W×3 uint8 RGB (or H×W gray), all of the first frame's size. Height and width must be even
    (OpenCV's writers would crop odd sizes silently): odd sizes raise ``ValueError``, or with ``pad_odd=True``
    (e.g. for overlay videos) get one replicated row/column added.
    """

    def __init__(self, path: str | os.PathLike, fps: float = 30.0, fourcc: str = "MJPG", pad_odd: bool = False) -> None:
        self.path, self.fps, self.fourcc, self.pad_odd = Path(path), float(fps), fourcc, pad_odd
        self._writer = None
        self._tmp: str | None = None
        self._shape: tuple[int, ...] | None = None
        self.frames = 0

    def _start(self, h: int, w: int) -> None:
        cv2 = _cv2()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, self._tmp = tempfile.mkstemp(prefix=f".{self.path.stem}.", suffix=self.path.suffix, dir=self.path.parent)
        os.close(fd)
        self._writer = cv2.VideoWriter(self._tmp, cv2.VideoWriter_fourcc(*self.fourcc), self.fps, (int(w), int(h)))
        if not self._writer.isOpened():
            self.abort()
            raise DataError(f"{self.path}: this OpenCV build cannot write {self.fourcc!r} video into "
                            f"{self.path.suffix!r} files")

    def write(self, frame: np.ndarray) -> None:
        """Append one H×W×3 uint8 RGB (or H×W gray) frame."""
        cv2 = _cv2()
        frame = np.asarray(frame)
        if frame.ndim == 2:
            frame = np.repeat(frame[..., None], 3, axis=2)
        if frame.ndim != 3 or frame.shape[-1] != 3 or frame.dtype != np.uint8:
            self.abort()
            raise ValueError(f"{self.path}: video frames must be H×W×3 uint8, got {frame.shape} {frame.dtype}")
        if self._shape is None:
            self._shape = frame.shape
        elif frame.shape != self._shape:
            self.abort()
            raise ValueError(f"{self.path}: frame {self.frames} is {frame.shape[0]}×{frame.shape[1]}, the first "
                             f"was {self._shape[0]}×{self._shape[1]}")
        if self.pad_odd and (frame.shape[0] % 2 or frame.shape[1] % 2):
            frame = np.pad(frame, ((0, frame.shape[0] % 2), (0, frame.shape[1] % 2), (0, 0)), mode="edge")
        if frame.shape[0] % 2 or frame.shape[1] % 2:
            # OpenCV's FFMPEG writers silently crop odd sizes to even ones; refuse rather than change the size
            self.abort()
            raise ValueError(f"{self.path}: video frames must have an even height and width to be written "
                             f"(got {frame.shape[0]}×{frame.shape[1]}); store odd sizes as frame folders")
        if self._writer is None:
            self._start(*frame.shape[:2])
        self._writer.write(cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_RGB2BGR))
        self.frames += 1

    def close(self) -> Path:
        """Finish the file and move it into place (an error if no frame was written)."""
        if self._writer is None:
            raise ValueError(f"{self.path}: no frames to write")
        self._writer.release()
        self._writer = None
        try:
            with open(self._tmp, "rb+") as fh:
                os.fsync(fh.fileno())
            os.replace(self._tmp, self.path)
        except BaseException:
            self.abort()
            raise
        self._tmp = None
        return self.path

    def abort(self) -> None:
        """Drop the partial file; ``path`` is left untouched."""
        if self._writer is not None:
            self._writer.release()
            self._writer = None
        if self._tmp is not None and os.path.exists(self._tmp):
            os.unlink(self._tmp)
        self._tmp = None

    def __enter__(self) -> "VideoWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def write_video(path: str | os.PathLike, frames: np.ndarray, fps: float = 30.0, fourcc: str = "MJPG",
                pad_odd: bool = False) -> Path:
    """Write N×H×W×3 uint8 RGB frames (or N×H×W gray) atomically: temporary name, then rename.

    MJPG in ``.avi`` is available in every OpenCV build; ``mp4v`` in ``.mp4`` works with the FFMPEG backend.
    Height and width must be even (OpenCV's writers would crop odd sizes silently): odd sizes raise
    ``ValueError``, or with ``pad_odd=True`` (e.g. for overlay videos) get one replicated row/column added.
    :class:`VideoWriter` writes frame by frame, for videos that should not be held in memory.
    """
    path = Path(path)
    frames = np.asarray(frames)
    if frames.ndim == 3:
        frames = np.repeat(frames[..., None], 3, axis=3)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or len(frames) == 0:
        raise ValueError(f"write_video expects N×H×W×3 uint8 frames, got {frames.shape} {frames.dtype}")
    if not pad_odd and (frames.shape[1] % 2 or frames.shape[2] % 2):
        # checked before any file is created
        raise ValueError(f"{path}: video frames must have an even height and width to be written "
                         f"(got {frames.shape[1]}×{frames.shape[2]}); store odd sizes as frame folders")
    with VideoWriter(path, fps=fps, fourcc=fourcc, pad_odd=pad_odd) as writer:
        for frame in frames:
            writer.write(frame)
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
