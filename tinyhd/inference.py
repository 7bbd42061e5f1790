"""Whole-video inference exactly as the TinyHD authors run the released weights, and ``tinyhd predict``.

What the authors' ``generate.py`` does (architecture sheet (e) "Inference and post-processing"; fixture README
"How frames map to outputs" and "Post-processing behind the PNG maps"):

* **Input.** 16 consecutive frames → ``tinyhd.preprocess`` (÷255, ImageNet mean/std, then bilinear resize to
  192×256 with ``antialias=False``).
* **MISO (TinyHD-S).** Every 16-frame window with step 1; window [i−15, i] gives the map of frame i. The first
  15 frames use *padded* windows: for frame i < 15 the window is [frame 0 repeated 15−i times] + frames 0..i
  (``first_frames="pad"``, generate.py). ``first_frames="reverse"`` is the HD2S paper's alternative (§3.4):
  frame i < 15 is predicted from frames i+15, i+14, …, i (time-reversed, so the window still ends on frame i);
  indices past the end of a short video are clamped to its last frame.
* **MIMO (TinyHD-M).** Windows start at 0, 16, 32, …; a last window starting at N−16 is added unless already
  present, and its outputs overwrite the overlapping frames. Output t of a window is the map of window frame t.
* **Frame folders** (ours) are read in natural name order and used by position; numbered names must run
  without a gap (:func:`tinyhd.video.check_frame_numbering`: a missing ``0020.png`` would shift every later map
  and join frames across the gap in a window). ``tinyhd predict`` names each map after its frame's number
  (``0000.png`` for a folder numbered from 0); a video's maps, and an unnumbered folder's, are numbered from 1.
* **Videos shorter than 16 frames** (both modes) are padded at the start by repeating frame 0, as the MISO
  padded windows do: a MIMO video of N < 16 frames is one window [frame 0 × (16−N)] + frames 0..N−1, and the
  last N outputs are its maps.
* **Post-processing** (:func:`postprocess`) of each raw 192×256 map: min-max normalise (no epsilon); ×255 and
  truncate to uint8; ``cv2.resize`` to the original W×H with INTER_CUBIC; ``cv2.GaussianBlur`` 5×5, σ=0
  (OpenCV derives σ = 1.1); clip to 0..255. :func:`predict_video` returns these maps as float32 = uint8/255.

The authors batch 20 clips; batch size does not change the maps beyond ~3e-5 (fixture README).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from tinyhd.errors import CheckpointError, DataError, UserError
from tinyhd.preprocess import INPUT_SIZE, preprocess
from tinyhd.video import check_frame_numbering

CLIP_LEN = 16
FIRST_FRAMES = ("pad", "reverse")


# ----------------------------------------------------------------------------------------------------------
# post-processing
# ----------------------------------------------------------------------------------------------------------
def _as_numpy_map(raw_map: Any) -> np.ndarray:
    if isinstance(raw_map, torch.Tensor):
        raw_map = raw_map.detach().float().cpu().numpy()
    m = np.asarray(raw_map)
    if m.ndim == 3 and m.shape[0] == 1:
        m = m[0]
    if m.ndim != 2:
        raise ValueError(f"postprocess expects one H×W map, got shape {m.shape}")
    return m.astype(np.float32, copy=False)


def postprocess_u8(raw_map: Any, size: Sequence[int]) -> np.ndarray:
    """The authors' post-processing of one raw map -> H×W uint8 at ``size`` = (H, W) (the PNG they write).

    min-max normalise (float32, no epsilon) → ×255 → truncate (``astype(uint8)``) → ``cv2.resize`` to (W, H),
    INTER_CUBIC → ``cv2.GaussianBlur`` 5×5, σ=0 → clip 0..255. A constant map (where the authors' 0/0 gives
    NaN and an undefined cast) becomes all zeros.
    """
    import cv2

    m = _as_numpy_map(raw_map)
    h, w = int(size[0]), int(size[1])
    if h < 1 or w < 1:
        raise ValueError(f"postprocess: invalid output size {tuple(size)} (expected (H, W))")
    lo, hi = m.min(), m.max()
    if not np.isfinite(lo) or not np.isfinite(hi):
        raise ValueError("postprocess: the raw map contains NaN or infinite values")
    if hi > lo:
        u8 = ((m - lo) / (hi - lo) * np.float32(255.0)).astype(np.uint8)  # truncation, as astype does
    else:
        u8 = np.zeros(m.shape, dtype=np.uint8)
    u8 = cv2.resize(u8, (w, h), interpolation=cv2.INTER_CUBIC)  # saturates to 0..255 for uint8
    u8 = cv2.GaussianBlur(u8, (5, 5), 0)
    return np.clip(u8, 0, 255).astype(np.uint8)


def postprocess(raw_map: Any, size: Sequence[int]) -> np.ndarray:
    """The authors' post-processing of one raw 192×256 map, as float32 in [0, 1] at ``size`` = (H, W).

    Equals :func:`postprocess_u8` / 255 (the PNG the authors' generate.py writes, read back and scaled).
    """
    return postprocess_u8(raw_map, size).astype(np.float32) / np.float32(255.0)


# ----------------------------------------------------------------------------------------------------------
# window planning
# ----------------------------------------------------------------------------------------------------------
def miso_window(i: int, n_frames: int, clip_len: int = CLIP_LEN, first_frames: str = "pad") -> np.ndarray:
    """Frame indices of the MISO window whose output is the map of frame ``i`` (length ``clip_len``)."""
    if first_frames not in FIRST_FRAMES:
        raise ValueError(f"first_frames must be one of {FIRST_FRAMES}, got {first_frames!r}")
    if first_frames == "reverse" and i < clip_len - 1:
        return np.minimum(np.arange(i + clip_len - 1, i - 1, -1), n_frames - 1).astype(np.int64)
    return np.maximum(np.arange(i - clip_len + 1, i + 1), 0).astype(np.int64)


def mimo_windows(n_frames: int, clip_len: int = CLIP_LEN) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """The authors' MIMO windows: list of (window frame indices, output positions used, frames they map to).

    Starts 0, clip_len, 2·clip_len, … while a full window fits, plus a last window at N − clip_len; later
    windows overwrite earlier ones, so each frame is assigned to the last window that covers it. A video
    shorter than ``clip_len`` is one window padded at the start with frame 0.
    """
    if n_frames < 1:
        raise ValueError("mimo_windows: a video needs at least one frame")
    if n_frames < clip_len:
        pad = clip_len - n_frames
        idx = np.concatenate([np.zeros(pad, dtype=np.int64), np.arange(n_frames, dtype=np.int64)])
        return [(idx, np.arange(pad, clip_len), np.arange(n_frames))]
    starts = list(range(0, n_frames - clip_len + 1, clip_len))
    if starts[-1] != n_frames - clip_len:
        starts.append(n_frames - clip_len)
    owner = np.empty(n_frames, dtype=np.int64)
    for k, s in enumerate(starts):
        owner[s:s + clip_len] = k  # later windows overwrite
    out = []
    for k, s in enumerate(starts):
        frames = np.flatnonzero(owner == k)
        if frames.size:
            out.append((np.arange(s, s + clip_len, dtype=np.int64), frames - s, frames))
    return out


def plan_windows(n_frames: int, output: str, frames: Sequence[int] | None = None, clip_len: int = CLIP_LEN,
                 first_frames: str = "pad") -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Windows to run for the requested ``frames`` (all when None): (indices, output positions, frames).

    The windows are those of a whole-video run (so a subset of frames gets exactly the maps a full run gives);
    only windows that produce a requested frame are kept.
    """
    if output not in ("single", "multi"):
        raise ValueError(f"output must be 'single' or 'multi', got {output!r}")
    want = np.arange(n_frames) if frames is None else np.unique(np.asarray(list(frames), dtype=np.int64))
    if want.size and (want.min() < 0 or want.max() >= n_frames):
        raise ValueError(f"frames: indices must be in 0..{n_frames - 1}, got {int(want.min())}..{int(want.max())}")
    if output == "single":
        return [(miso_window(int(i), n_frames, clip_len, first_frames), np.array([0]), np.array([int(i)]))
                for i in want]
    wanted = np.zeros(n_frames, dtype=bool)
    wanted[want] = True
    plan = []
    for idx, pos, fr in mimo_windows(n_frames, clip_len):
        keep = wanted[fr]
        if keep.any():
            plan.append((idx, pos[keep], fr[keep]))
    return plan


# ----------------------------------------------------------------------------------------------------------
# running the model
# ----------------------------------------------------------------------------------------------------------
def checked_device(device: str | torch.device) -> torch.device:
    """``torch.device(device)``, or a :class:`~tinyhd.errors.UserError` saying why not (a bad name, or CUDA asked
    for where there is none) — for devices a user typed (``--device``)."""
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise UserError(f"device {str(device)!r}: not a torch device ({exc})") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {str(device)!r}: no CUDA device is available to this process (use cpu)")
    return dev


def note_training_size(model: nn.Module, checkpoint: Any, command: str) -> None:
    """On stderr: a checkpoint trained on clips of another size than the authors' 192×256 pipeline that
    ``predict``/``evaluate`` run (e.g. a reduced-scale 32×64 run) sees its objects larger than in training."""
    size = getattr(model, "trained_size", None)
    if size and tuple(size) != tuple(INPUT_SIZE):
        print(f"tinyhd {command}: note: {checkpoint} was trained on {size[0]}×{size[1]} clips; {command} runs the "
              f"authors' pipeline at {INPUT_SIZE[0]}×{INPUT_SIZE[1]}, so its maps are those of frames "
              f"{INPUT_SIZE[0] / size[0]:.3g}× larger than in training", file=sys.stderr)


def _model_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    for b in model.buffers():
        return b.device
    return torch.device("cpu")


def _model_output(model: nn.Module, output: str | None) -> str:
    mode = output or getattr(model, "output", None)
    if mode not in ("single", "multi"):
        raise ValueError("cannot tell whether the model is MISO or MIMO: pass output='single' or 'multi'")
    return mode


def _as_frames(video: Any) -> np.ndarray:
    """Frames given as an array (N×H×W×3 / N×H×W / N×H×W×1 uint8, numpy or torch) -> N×H×W×3 uint8 RGB."""
    frames = video.detach().cpu().numpy() if isinstance(video, torch.Tensor) else np.asarray(video)
    if frames.ndim == 4 and frames.shape[-1] == 1:
        frames = frames[..., 0]
    if frames.ndim == 3:
        frames = np.repeat(frames[..., None], 3, axis=3)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be N×H×W×3 (RGB) or N×H×W (gray), got shape {frames.shape}")
    if frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 (0..255), got {frames.dtype}")
    if len(frames) == 0:
        raise ValueError("frames: the video has no frames")
    return frames


def _load_frames(video: Any) -> tuple[np.ndarray, Path | None]:
    """A path (video file or frame folder) or frames (N×H×W×3 / N×H×W uint8) -> N×H×W×3 uint8 RGB."""
    if isinstance(video, (str, os.PathLike)):
        from tinyhd.video import read_video

        path = Path(video)
        if not path.exists():
            raise DataError(f"{path}: no such video file or frame folder")
        if path.is_dir():
            check_frame_numbering(path)  # a gap in the numbering would shift every later map
        return read_video(path), path
    return _as_frames(video), None


def count_video_frames(path: str | os.PathLike) -> int:
    """Frames of a video file or frame folder, counted without keeping any: a folder's images (``DataError`` when
    their numbers have a gap, see :func:`tinyhd.video.check_frame_numbering`), or a file's decodable frames
    (``DataError`` when the header promises more: truncated or corrupt)."""
    from tinyhd.video import count_frames, list_images

    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such video file or frame folder")
    if path.is_dir():
        files = list_images(path)
        if not files:
            raise DataError(f"{path}: frame folder contains no images")
        check_frame_numbering(path, files)
        return len(files)
    n = count_frames(path)
    if n == 0:
        raise DataError(f"{path}: no frame could be decoded (empty, truncated or corrupt video)")
    _check_not_truncated(path, n)
    return n


class _FrameSource:
    """Frames read forward on demand from an iterator, kept only while a later window may still need them."""

    def __init__(self, frames: Iterator[np.ndarray], n: int, where: str) -> None:
        self._it, self.n, self._where = frames, n, where
        self._next = 0                             # index of the next frame the iterator yields
        self.rgb: dict[int, np.ndarray] = {}       # frame index -> H×W×3 uint8

    def load_until(self, last: int, first_kept: int = 0) -> None:
        """Read frames up to index ``last`` (inclusive), keeping those from ``first_kept`` on."""
        while self._next <= last:
            frame = next(self._it, None)
            if frame is None:
                raise DataError(f"{self._where}: only {self._next} frames decode this time, {self.n} before "
                                f"(did the file change while it was read?)")
            if self._next >= first_kept:
                self.rgb[self._next] = frame
            self._next += 1

    def drop_before(self, first: int) -> None:
        for i in [i for i in self.rgb if i < first]:
            del self.rgb[i]


def _source(video: Any, n_frames: int | None = None) -> _FrameSource:
    """A :class:`_FrameSource` over a path (decoded as it is consumed; a first pass counts the frames unless
    ``n_frames`` says how many decode) or an in-memory array (no copy)."""
    if isinstance(video, (str, os.PathLike)):
        from tinyhd.video import iter_frames

        path = Path(video)
        if n_frames is not None and path.is_dir():
            check_frame_numbering(path)  # count_video_frames checks it otherwise
        n = count_video_frames(path) if n_frames is None else int(n_frames)
        return _FrameSource(iter_frames(path), n, str(path))
    frames = _as_frames(video)
    return _FrameSource(iter(frames), len(frames), "frames")


def _batches(plan: list, batch_size: int) -> Iterator[list]:
    for k in range(0, len(plan), batch_size):
        yield plan[k:k + batch_size]


def iter_raw_maps(model: nn.Module, video: Any, *, frames: Sequence[int] | None = None, batch_size: int = 8,
                  device: str | torch.device | None = None, output: str | None = None, first_frames: str = "pad",
                  clip_len: int = CLIP_LEN, progress: bool = True,
                  n_frames: int | None = None) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """Stream the raw maps of a video: (frame index, map 192×256 float32, decoded frame H×W×3 uint8), in frame
    order, each as soon as its window has run.

    Same windows, batches and arithmetic as a whole-video run (:func:`predict_raw`), but a video file or
    frame folder is decoded as it is consumed and only the frames that the current and later batches still
    need are kept: about ``(batch_size + 1) · clip_len`` frames for MIMO, ``batch_size + clip_len`` for MISO,
    whatever the video's length. A file is decoded twice (a first pass counts its frames: the last MIMO
    window starts at N − 16; pass ``n_frames`` when :func:`count_video_frames` already counted them). Other
    arguments as for :func:`predict_video`.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    src = _source(video, n_frames)
    mode = _model_output(model, output)
    plan = plan_windows(src.n, mode, frames, clip_len, first_frames)
    batches = list(_batches(plan, batch_size))
    # first frame index any batch from k on needs: frames below it are dropped once batch k starts
    keep_from = [min(int(idx.min()) for idx, _, _ in b) for b in batches]
    for k in range(len(batches) - 2, -1, -1):
        keep_from[k] = min(keep_from[k], keep_from[k + 1])
    dev = torch.device(device) if device is not None else _model_device(model)
    if device is not None and _model_device(model) != dev:
        model.to(dev)
    was_training = model.training
    model.eval()
    cache: dict[int, torch.Tensor] = {}  # preprocessed frames (3×h×w) of the previous batch
    expect_t = 1 if mode == "single" else clip_len
    from tqdm.auto import tqdm

    try:
        with tqdm(total=len(plan), desc="predict", unit="clip", disable=not progress, leave=False) as bar:
            for k, batch in enumerate(batches):
                need = sorted({int(i) for idx, _, _ in batch for i in idx})
                src.drop_before(keep_from[k])
                src.load_until(need[-1], keep_from[k])
                missing = [i for i in need if i not in cache]
                # the batch's new frames in one call, as the whole-video code made it: the resize's vectorisation
                # depends on how many frames a call holds (values move by ~1e-6 otherwise)
                if missing:
                    x = preprocess(np.stack([src.rgb[i] for i in missing]))  # 3×M×192×256
                    fresh = {i: x[:, j] for j, i in enumerate(missing)}
                else:
                    fresh = {}
                cache = {i: cache[i] if i in cache else fresh[i] for i in need}
                clip = torch.stack([torch.stack([cache[int(i)] for i in idx], dim=1) for idx, _, _ in batch])
                with torch.inference_mode():
                    out = model(clip.to(dev))  # B×3×T×h×w -> saliency B×T'×h×w
                sal = getattr(out, "saliency", out)
                if not isinstance(sal, torch.Tensor) or sal.ndim != 4:
                    raise ValueError(f"the model must return maps B×T'×H×W (or an object with .saliency), "
                                     f"got {getattr(sal, 'shape', type(sal))}")
                if sal.shape[0] != len(batch) or sal.shape[1] != expect_t:
                    raise ValueError(f"{mode} model returned maps of shape {tuple(sal.shape)} for {len(batch)} "
                                     f"clips of {clip_len} frames (expected {len(batch)}×{expect_t}×H×W)")
                sal = sal.float().cpu().numpy()
                bar.update(len(batch))
                for b, (_, pos, fr) in enumerate(batch):  # windows own disjoint, increasing frame ranges
                    for p, f in zip(pos, fr):
                        yield int(f), sal[b, int(p)], src.rgb[int(f)]
    finally:
        model.train(was_training)


def predict_raw(model: nn.Module, video: Any, *, frames: Sequence[int] | None = None, batch_size: int = 8,
                device: str | torch.device | None = None, output: str | None = None, first_frames: str = "pad",
                clip_len: int = CLIP_LEN, progress: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Raw model maps of a video: (maps F×192×256 float32, frame indices F, decoded frames N×H×W×3 uint8).

    ``frames`` selects which frame indices to predict (all when None); the maps are those a whole-video run
    gives (same windows). Holds the whole decoded video (it returns it): :func:`iter_raw_maps` streams
    instead. See :func:`predict_video` for the other arguments.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    rgb, _ = _load_frames(video)
    maps, wanted = [], []
    for f, m, _ in iter_raw_maps(model, rgb, frames=frames, batch_size=batch_size, device=device, output=output,
                                 first_frames=first_frames, clip_len=clip_len, progress=progress):
        wanted.append(f)
        maps.append(m)
    out = np.stack(maps) if maps else np.empty((0,) + tuple(INPUT_SIZE), dtype=np.float32)  # F×192×256
    return out, np.asarray(wanted, dtype=np.int64), rgb


def predict_video(model: nn.Module, path_or_frames: Any, *, postprocess: bool = True,
                  frames: Sequence[int] | None = None, batch_size: int = 8,
                  device: str | torch.device | None = None, output: str | None = None, first_frames: str = "pad",
                  clip_len: int = CLIP_LEN, progress: bool = True) -> np.ndarray:
    """Saliency maps of a whole video, as the authors' generate.py computes them.

    Args:
        model: a :class:`tinyhd.TinyHD` (or any module mapping B×3×T×192×256 clips to an object with
            ``.saliency`` B×T'×H×W, or to that tensor); put it on CUDA to run there.
        path_or_frames: a video file, a folder of frame images (natural name order; numbered names must run
            without a gap, else ``DataError``), or frames N×H×W×3 (RGB) / N×H×W uint8. Map ``k`` is the
            ``k``-th frame's (0-based position, whatever number its file name carries).
        postprocess: True (default): the authors' post-processing (:func:`postprocess`) → N×H×W float32 in
            [0, 1] at the original size (= their uint8 PNG / 255). False: the raw N×192×256 sigmoid maps.
        frames: 0-based frame indices to predict (sorted, unique); None = every frame. The maps equal those of
            a whole-video run (same windows).
        batch_size: clips per forward pass.
        device: where to run; None = the model's device (the model is moved if another device is given).
        output: "single"/"multi"; None = ``model.output``.
        first_frames: MISO windows of frames 0..14: "pad" (generate.py, default) or "reverse" (HD2S paper).
        clip_len: frames per window (16 for the released weights).
        progress: show a tqdm bar.
    Returns:
        F×H×W float32 (or F×192×256 raw), one map per requested frame, in frame order.
    """
    maps, _, rgb = predict_raw(model, path_or_frames, frames=frames, batch_size=batch_size, device=device,
                               output=output, first_frames=first_frames, clip_len=clip_len, progress=progress)
    if not postprocess:
        return maps
    h, w = rgb.shape[1:3]
    out = np.empty((len(maps), h, w), dtype=np.float32)
    for k, m in enumerate(maps):
        out[k] = postprocess_u8(m, (h, w))
    out /= np.float32(255.0)
    return out


# ----------------------------------------------------------------------------------------------------------
# overlay and the command line
# ----------------------------------------------------------------------------------------------------------
def overlay(frame: np.ndarray, map_u8: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend an H×W uint8 map as a JET heatmap over an H×W×3 uint8 RGB frame -> H×W×3 uint8 RGB."""
    import cv2

    heat = cv2.cvtColor(cv2.applyColorMap(np.ascontiguousarray(map_u8), cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)
    return cv2.addWeighted(np.ascontiguousarray(frame), 1.0 - alpha, heat, alpha, 0.0)


def resolve_checkpoint(spec: str, download: bool = False) -> Path:
    """A checkpoint path, or the name of a released file in the weights registry (``tinyhd weights list``).

    A registry name is used only if a verified copy is already in ``tinyhd.weights.default_dest()``, unless
    ``download`` is True (then ``tinyhd.weights.download`` fetches and verifies it).
    """
    path = Path(spec).expanduser()
    if path.exists():
        if path.is_dir():
            raise CheckpointError(f"{path}: is a folder, not a checkpoint file")
        return path
    from tinyhd import weights

    try:
        known = spec in weights.registry()
    except UserError:
        known = False
    if not known:
        raise CheckpointError(f"{path}: no such checkpoint file (nor the name of a released checkpoint; see "
                              f"`tinyhd weights list`)")
    if download:
        return Path(weights.download(spec))
    local = weights.default_dest() / spec
    if not local.is_file():
        raise CheckpointError(f"{spec}: released checkpoint not downloaded: not in {weights.default_dest()} (where "
                              f"`tinyhd weights download {spec}` puts it); run that or pass --download, or, for a "
                              f"copy downloaded with --dest, pass its path")
    weights.verify(local, spec)  # CheckpointError if the local copy is damaged
    return local


def _check_not_truncated(path: Path, n_decoded: int) -> None:
    """A video file whose header promises more frames than decode is truncated or corrupt: say so."""
    if path.is_dir():
        return
    from tinyhd.video import video_info

    claimed = int(video_info(path)["frames"])
    if claimed > 0 and n_decoded < claimed:
        raise DataError(f"{path}: truncated or corrupt video: the header says {claimed} frames but only "
                        f"{n_decoded} decode")


# what `tinyhd predict` writes into --out, and the record it keeps of it there
MARKER = ".tinyhd-predict.json"
OVERLAY_NAME = "overlay.mp4"
_MAP_NAME = re.compile(r"\d{4,}\.png")


def _is_output_name(name: str) -> bool:
    return bool(_MAP_NAME.fullmatch(name)) or name == OVERLAY_NAME


def _owned_files(out_dir: Path) -> set[str]:
    """Names in ``out_dir`` that an earlier ``tinyhd predict`` wrote and that are unchanged since (its marker
    records each file's size and mtime; files of an interrupted run, recorded without them, count too)."""
    try:
        record = json.loads((out_dir / MARKER).read_text())
        files = record["files"]
        if record.get("written_by") != "tinyhd predict" or not isinstance(files, dict):
            return set()
    except (OSError, ValueError, KeyError, TypeError):
        return set()
    owned = set()
    for name, stat in files.items():
        path = out_dir / str(name)
        if not _is_output_name(str(name)) or not path.is_file():
            continue
        st = path.stat()
        if stat is None or (isinstance(stat, list) and stat == [st.st_size, st.st_mtime_ns]):
            owned.add(str(name))
    return owned


def _write_marker(out_dir: Path, names: Sequence[str], video: Path, checkpoint: Path, n: int, complete: bool) -> None:
    from tinyhd.paths import atomic_write_text

    files: dict[str, Any] = {}
    for name in names:
        st = (out_dir / name).stat() if complete else None
        files[name] = [st.st_size, st.st_mtime_ns] if st is not None else None
    record = {"written_by": "tinyhd predict", "video": str(video), "checkpoint": str(checkpoint), "frames": n,
              "complete": complete, "files": files}
    atomic_write_text(out_dir / MARKER, json.dumps(record) + "\n")


def prepare_out_dir(out_dir: Path, video: Path, targets: Sequence[str], overwrite: bool) -> list[Path]:
    """Check that ``tinyhd predict`` may write ``targets`` (file names) into ``out_dir``; return the files
    of an earlier run to delete first (maps numbered past this video's frames, an overlay not asked for).

    Refused (UserError, nothing touched): ``out_dir`` is the input frame folder or would replace the input
    video; ``out_dir`` holds map-like files (``NNNN.png``, 4 digits or more) or ``overlay.mp4`` that this
    command did not write there (see :data:`MARKER`), unless ``overwrite``.
    """
    out_res, vid_res = out_dir.resolve(), video.resolve()
    if video.is_dir() and out_res == vid_res:
        raise UserError(f"{out_dir}: --out is the input frame folder; its frames would be replaced by maps. "
                        f"Choose another --out folder")
    if video.is_file() and vid_res.parent == out_res and _is_output_name(vid_res.name):
        raise UserError(f"{out_dir}: --out holds the input video {video.name}, which predict would replace or "
                        f"remove. Choose another --out folder")
    if not out_dir.is_dir():
        return []
    existing = sorted((p for p in out_dir.iterdir() if _is_output_name(p.name)), key=lambda p: p.name)
    owned = _owned_files(out_dir)
    foreign = [p.name for p in existing if p.name not in owned]
    if foreign and not overwrite:
        raise UserError(f"{out_dir}: holds {len(foreign)} file(s) named like predict's output that it did not write "
                        f"there ({', '.join(foreign[:3])}{' …' if len(foreign) > 3 else ''}); they would be "
                        f"replaced or left to pass for this video's maps. Use an empty --out folder, or pass "
                        f"--overwrite to replace them")
    if any(not p.is_file() for p in existing):
        bad = next(p for p in existing if not p.is_file())
        raise UserError(f"{bad}: is not a file; predict would write a file of that name")
    wanted = set(targets)
    return [p for p in existing if p.name not in wanted]


def cli_main(argv: list[str]) -> int:
    """``tinyhd predict VIDEO --checkpoint CKPT --out DIR [--overlay] [--overwrite]``."""
    parser = argparse.ArgumentParser(
        prog="tinyhd predict",
        description=("Saliency maps for a video with a TinyHD checkpoint, computed as the authors' generate.py "
                     "does: one grayscale PNG per frame at the video's original size, named %04d.png with "
                     "1-based frame numbers (0001.png is the first frame), written to DIR; for a folder of frames "
                     "whose names are numbered (0000.png, frame_12.jpg …), each map carries the number of its "
                     "frame instead, and a gap in that numbering is refused. With --overlay, also "
                     "DIR/overlay.mp4: the video with the map blended in as a JET heatmap. The video is decoded "
                     "as it is processed (a file twice: a first pass counts its frames), so memory does not grow "
                     "with its length. predict records what it wrote in DIR/" + MARKER + ": it replaces its own "
                     "earlier output there (removing maps past this video's end and an overlay not asked for "
                     "again), but refuses to touch NNNN.png or overlay.mp4 files it did not write unless given "
                     "--overwrite, and never writes into the input frame folder."))
    parser.add_argument("video", metavar="VIDEO", help="a video file (any format OpenCV decodes) or a folder of frames")
    parser.add_argument("--checkpoint", required=True, metavar="CKPT",
                        help="a checkpoint file (ours or the authors' .pth), or the name of a released checkpoint "
                             "already downloaded with `tinyhd weights download` into its default folder (or pass "
                             "--download); a copy downloaded with --dest is used by passing its path")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder (created if needed)")
    parser.add_argument("--overlay", action="store_true", help="also write DIR/overlay.mp4 (heatmap over the video)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace NNNN.png maps and overlay.mp4 in DIR that predict did not write there "
                             "itself, and remove those this run would not rewrite (maps past this video's end, "
                             "overlay.mp4 without --overlay)")
    parser.add_argument("--alpha", type=float, default=0.5, help="heatmap opacity in the overlay (default 0.5)")
    parser.add_argument("--download", action="store_true",
                        help="allow downloading a released checkpoint named by --checkpoint")
    parser.add_argument("--batch-size", type=int, default=8, help="clips per forward pass (default 8)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 … (default: cuda if available)")
    parser.add_argument("--first-frames", choices=FIRST_FRAMES, default="pad",
                        help="MISO windows of the first 15 frames: padded with frame 0 (authors' generate.py, "
                             "default) or time-reversed (HD2S paper)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--plain", action="store_true",
                        help="run the model as built, without tinyhd.fast.optimize_for_inference (folded BN, "
                             "channels-last fused convs; same maps within 1e-5, several times faster on CPU)")
    args = parser.parse_args(argv)

    if not 0.0 <= args.alpha <= 1.0:
        raise UserError(f"--alpha must be in [0, 1], got {args.alpha}")
    if args.batch_size < 1:
        raise UserError(f"--batch-size must be >= 1, got {args.batch_size}")
    out_dir = Path(args.out).expanduser()
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"{out_dir}: --out must be a folder, but a file of that name exists")
    video = Path(args.video).expanduser()
    if not video.exists():
        raise DataError(f"{video}: no such video file or frame folder")
    if video.is_file() and video.stat().st_size == 0:
        raise DataError(f"{video}: empty file, not a video")
    if video.is_dir():  # before the frame count, which lists the folder
        prepare_out_dir(out_dir, video, [], overwrite=args.overwrite)

    from tinyhd.checkpoints import load_checkpoint

    ckpt = resolve_checkpoint(args.checkpoint, download=args.download)
    model = load_checkpoint(ckpt)
    note_training_size(model, ckpt, "predict")
    dev = checked_device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model.to(dev)

    n = count_video_frames(video)  # DataError for a truncated file or a gap in a folder's numbering, before any write
    # maps of a video are numbered from 1 (generate.py); those of a numbered frame folder carry their frame's number
    first = check_frame_numbering(video) if video.is_dir() else None
    first = 1 if first is None else first
    names = [f"{first + k:04d}.png" for k in range(n)]
    targets = names + ([OVERLAY_NAME] if args.overlay else [])
    stale = prepare_out_dir(out_dir, video, targets, overwrite=args.overwrite)
    if not args.plain:
        from tinyhd.fast import keep_freed_memory, optimize_for_inference

        model = optimize_for_inference(model)
        keep_freed_memory()

    from tqdm.auto import tqdm

    from tinyhd.video import VideoWriter, video_info, write_image

    out_dir.mkdir(parents=True, exist_ok=True)
    for p in stale:  # an earlier run's maps past this video's end, or its overlay not asked for now
        p.unlink()
    _write_marker(out_dir, targets, video, ckpt, n, complete=False)
    writer = None
    if args.overlay:
        fps = video_info(video)["fps"] if video.is_file() else None
        writer = VideoWriter(out_dir / OVERLAY_NAME, fps=fps or 30.0, fourcc="mp4v", pad_odd=True)
    h = w = 0
    try:
        stream = iter_raw_maps(model, video, batch_size=args.batch_size, device=dev, output=model.output,
                               first_frames=args.first_frames, progress=not args.no_progress, n_frames=n)
        for f, m, frame in tqdm(stream, total=n, desc="write", unit="frame", disable=args.no_progress, leave=False):
            h, w = frame.shape[:2]
            u8 = postprocess_u8(m, (h, w))
            write_image(out_dir / names[f], u8)
            if writer is not None:
                writer.write(overlay(frame, u8, args.alpha))
        if writer is not None:
            writer.close()
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    _write_marker(out_dir, targets, video, ckpt, n, complete=True)
    msg = f"wrote {n} saliency maps ({h}×{w}, H×W) to {out_dir}"
    if video.is_dir() and names[0] != "0001.png":
        msg += f" as {names[0]} … {names[-1]}, named after the input frames' numbers"
    if writer is not None:
        msg += f" and the overlay video {out_dir / OVERLAY_NAME}"
    print(msg)
    return 0
