"""How similar are the predictions of different saliency models? (TinyHD paper, §1 and Fig. 1)

TinyHD's motivation: TASED, ViNet and HD2S score alike against the DHF1K ground truth (CC 0.470–0.511, SIM
0.361–0.406), yet their maps agree with *each other* less than those scores suggest — different decoders
learn different saliency patterns, hence TinyHD's heterogeneous decoders. Fig. 1 shows the pairwise CC and SIM
between the three models' predictions on DHF1K val, and of each against the ground truth.

:func:`similarity_matrix` computes such a matrix for any set of models (arrays of maps, frame-aligned), with the
benchmark's metrics (:func:`tinyhd.metrics.cc`, :func:`tinyhd.metrics.sim`, both symmetric in their two
arguments); :func:`load_prediction_dirs` reads folders of predicted PNG maps (e.g. the released TASED/ViNet/HD2S
predictions on DHF1K val) aligned with a dataset's ground truth, and :func:`similarity_from_dirs` computes the
matrices from such folders one video at a time (a whole split does not fit in memory).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from tinyhd.errors import DataError, UserError

GROUND_TRUTH = "ground truth"


def _metric(metric: str | Callable[[np.ndarray, np.ndarray], float]) -> Callable[[np.ndarray, np.ndarray], float]:
    if callable(metric):
        return metric
    from tinyhd import metrics

    table = {"cc": metrics.cc, "sim": metrics.sim}
    if metric.lower() not in table:
        raise UserError(f"similarity metric must be 'cc', 'sim' or a callable, not {metric!r}")
    return table[metric.lower()]


def _as_frames(name: str, v) -> np.ndarray | list[np.ndarray]:
    """A model's maps as an N×H×W array, or as a list of N H×W arrays when their sizes differ."""
    if isinstance(v, np.ndarray):
        if v.ndim != 3:
            raise UserError(f"{name!r}: maps must be N×H×W, got an array of shape {v.shape}")
        return v
    frames = [np.asarray(f) for f in v]
    bad = [i for i, f in enumerate(frames) if f.ndim != 2]
    if bad:
        raise UserError(f"{name!r}: map {bad[0]} has shape {frames[bad[0]].shape}; every map must be H×W")
    return np.stack(frames) if len({f.shape for f in frames}) == 1 and frames else frames


def similarity_matrix(predictions: Mapping[str, np.ndarray | Sequence[np.ndarray]], gt=None,
                      metric: str | Callable[[np.ndarray, np.ndarray], float] = "cc"):
    """Mean per-frame similarity between every pair of models (and the ground truth, if given).

    ``predictions``: name -> N×H×W maps, or a sequence of N H×W maps of any sizes (any dtype; the metric resizes
    its first argument to the second's size), the same N frames for every model. ``gt``: the N GT density maps
    (an N×H×W array or a sequence of H×W maps) or None. Returns a symmetric ``pandas.DataFrame`` (rows/columns:
    the model names, then ``"ground truth"``) whose diagonal is 1; frames where the metric is undefined (NaN: a
    constant map) are skipped.
    """
    fn = _metric(metric)
    maps = {name: _as_frames(name, v) for name, v in predictions.items()}
    if gt is not None:
        maps[GROUND_TRUTH] = _as_frames(GROUND_TRUTH, gt)
    if len(maps) < 2:
        raise UserError("similarity_matrix needs at least two sets of maps")
    n = {k: len(v) for k, v in maps.items()}
    if len(set(n.values())) != 1:
        raise UserError(f"every model needs the same frames; got frame counts {n}")
    if not next(iter(n.values())):
        raise UserError("similarity_matrix got no frames (every set of maps is empty)")
    names = list(maps)
    sums = _pair_sums(maps, fn)
    return _to_frame(names, sums)


def _pair_sums(maps: Mapping[str, np.ndarray | Sequence[np.ndarray]],
               fn: Callable[[np.ndarray, np.ndarray], float]) -> dict[tuple[str, str], tuple[float, int]]:
    """(a, b) -> (sum, count) of the finite per-frame values of ``fn`` over the frames of every pair of sets."""
    names = list(maps)
    sums = {}
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            # against the ground truth the GT is the "density" argument, as the benchmark scores a model
            x, y = (maps[a], maps[b]) if b == GROUND_TRUTH or a != GROUND_TRUTH else (maps[b], maps[a])
            vals = np.array([fn(x[t], y[t]) for t in range(len(x))], dtype=np.float64)
            ok = np.isfinite(vals)
            sums[a, b] = (float(vals[ok].sum()), int(ok.sum()))
    return sums


def _to_frame(names: Sequence[str], sums: Mapping[tuple[str, str], tuple[float, int]]):
    """The symmetric matrix of mean values (NaN where no frame had a defined value), diagonal 1."""
    import pandas as pd

    out = pd.DataFrame(np.eye(len(names)), index=list(names), columns=list(names))
    for (a, b), (total, count) in sums.items():
        out.loc[a, b] = out.loc[b, a] = total / count if count else float("nan")
    return out


def agreement_summary(matrix) -> dict[str, float]:
    """Mean model–model similarity and mean model–GT similarity of a :func:`similarity_matrix` with a GT row."""
    names = [n for n in matrix.index if n != GROUND_TRUTH]
    if GROUND_TRUTH not in matrix.index or len(names) < 2:
        raise UserError("agreement_summary needs a matrix with the ground truth and at least two models")
    pairs = [matrix.loc[a, b] for i, a in enumerate(names) for b in names[i + 1:]]
    return {"model_vs_model": float(np.nanmean(pairs)),
            "model_vs_gt": float(np.nanmean([matrix.loc[n, GROUND_TRUTH] for n in names]))}


def _frame_files(folder: Path, n_frames: int) -> list[Path]:
    """The predicted map of each of a video's ``n_frames`` frames in ``folder``.

    Numbered files (``0001.png``, ``1.png`` ...) are matched by number, counting from the folder's first number,
    which must be 0 or 1 (DHF1K results are usually shared 1-based, as its annotation; some tools write 0-based);
    otherwise the images in natural name order. Either way the folder must hold exactly one map per frame: a
    missing, extra or duplicated number would shift every map after it against the ground truth.
    """
    from tinyhd.video import list_images

    files = list_images(folder)
    if not files:
        raise DataError(f"{folder}: no image files (expected one predicted map per frame, e.g. 0001.png)")
    if all(f.stem.isdigit() for f in files):
        by_number: dict[int, Path] = {}
        for f in files:
            other = by_number.setdefault(int(f.stem), f)
            if other != f:
                raise DataError(f"{folder}: {other.name} and {f.name} both claim frame number {int(f.stem)}")
        numbers = sorted(by_number)
        first = numbers[0]
        if first not in (0, 1):
            raise DataError(f"{folder}: the maps are numbered from {by_number[first].name}; expected the first "
                            f"frame's map to be numbered 0 or 1 (e.g. 0001.png)")
        missing = [first + t for t in range(n_frames) if first + t not in by_number]
        extra = [k for k in numbers if k - first >= n_frames]
        if missing or extra:
            what = (f"no map numbered {missing[0]} (frame {missing[0] - first})" if missing
                    else f"{len(extra)} map(s) past the last frame, e.g. {by_number[extra[0]].name}")
            raise DataError(f"{folder}: holds {len(files)} maps numbered {first}–{numbers[-1]} for a video with "
                            f"{n_frames} annotated frames: {what}")
        return [by_number[first + t] for t in range(n_frames)]
    if len(files) != n_frames:
        raise DataError(f"{folder}: holds {len(files)} maps for a video with {n_frames} annotated frames "
                        f"(name them by frame number, e.g. 0001.png, to use a subset)")
    return files


def _video_maps(prediction_dirs: Mapping[str, str | os.PathLike], ds, vid: str,
                every: int) -> tuple[dict[str, list[np.ndarray]], list[np.ndarray]]:
    """Every ``every``-th GT map of video ``vid`` of ``ds`` and each model's map of the same frames (resized to
    the GT frame's size where it differs)."""
    from tinyhd.metrics import imresize
    from tinyhd.video import read_image

    gt = ds.ground_truth(vid).maps
    frames = range(0, len(gt), int(every))
    preds: dict[str, list[np.ndarray]] = {}
    for name, d in prediction_dirs.items():
        folder = Path(d).expanduser() / vid
        if not folder.is_dir():
            raise DataError(f"{folder}: no predictions for video {vid} of model {name!r}")
        files = _frame_files(folder, len(gt))
        maps = preds[name] = []
        for t in frames:
            m = read_image(files[t], grayscale=True).astype(np.float32) / 255.0
            if m.shape != gt[t].shape:
                m = imresize(m, gt[t].shape).astype(np.float32)
            maps.append(m)
    return preds, [gt[t] for t in frames]


def _split(data_root, split: str, dataset: str | None, videos: Sequence[str] | None, every: int):
    from tinyhd.data import SaliencyClipDataset

    if int(every) < 1:
        raise UserError(f"every must be a positive frame step, got {every!r}")
    return SaliencyClipDataset(data_root, split=split, dataset=dataset, size=None, videos=videos)


def load_prediction_dirs(prediction_dirs: Mapping[str, str | os.PathLike], data_root: str | os.PathLike,
                         split: str = "val", dataset: str | None = None, videos: Sequence[str] | None = None,
                         every: int = 1) -> tuple[dict[str, np.ndarray | list[np.ndarray]], np.ndarray | list[np.ndarray]]:
    """Predicted maps from folders laid out ``<dir>/<video id>/<frame>.png``, aligned with the GT of
    ``data_root``'s split: one map per annotated frame, numbered from 1 (``0001.png``, as DHF1K results are
    usually shared) or from 0, or any names in natural order (:func:`_frame_files`). ``dataset`` as for
    :class:`tinyhd.data.SaliencyClipDataset` (None: ROOT's own manifest, else DHF1K's).

    Every ``every``-th frame of each video is used. A map whose size differs from its GT frame's is resized to it
    (MATLAB ``imresize``, :func:`tinyhd.metrics.imresize`: what the benchmark does before scoring it). Returns
    (name -> maps, GT maps), float32 in [0, 1] (a resized map may overshoot slightly, as in the benchmark), each
    an N×H×W array, or a list of N H×W arrays when the videos differ in size (:func:`similarity_matrix` takes
    both). Everything is held in memory (float32 at the GT's size: ~0.9 MB per 360×640 frame and model); for
    the matrices of a whole split use :func:`similarity_from_dirs`, which holds one video at a time.
    """
    ds = _split(data_root, split, dataset, videos, every)
    preds: dict[str, list[np.ndarray]] = {name: [] for name in prediction_dirs}
    gts: list[np.ndarray] = []
    for vid in ds.video_ids:
        p, g = _video_maps(prediction_dirs, ds, vid, every)
        gts += g
        for name in preds:
            preds[name] += p[name]
    if not gts:
        raise DataError(f"{data_root}: no frames in split {split!r}")

    def pack(maps: list[np.ndarray]) -> np.ndarray | list[np.ndarray]:
        return np.stack(maps) if len({m.shape for m in maps}) == 1 else maps

    return {k: pack(v) for k, v in preds.items()}, pack(gts)


def similarity_from_dirs(prediction_dirs: Mapping[str, str | os.PathLike], data_root: str | os.PathLike,
                         split: str = "val", dataset: str | None = None, videos: Sequence[str] | None = None,
                         every: int = 1, metrics: Sequence[str] = ("cc", "sim"),
                         baselines: Mapping[str, Callable[[tuple[int, int]], np.ndarray]] | None = None,
                         progress: bool = True) -> dict[str, Any]:
    """The :func:`similarity_matrix` of folders of predicted maps against each other and the ground truth, for
    each metric, reading one video at a time (memory: one video's maps, not the split's).

    Arguments as for :func:`load_prediction_dirs`. ``baselines``: name -> a function of a GT frame's (H, W)
    returning a map of that size (e.g. the centre bias), compared like a model. Returns metric -> matrix; each
    entry is the same as :func:`similarity_matrix` over all the frames at once (the mean over every frame where
    the metric is defined); ``matrix.attrs["frames"]`` is the number of frames compared.
    """
    from tqdm.auto import tqdm

    fns = {m: _metric(m) for m in metrics}
    baselines = dict(baselines or {})
    clash = set(baselines) & (set(prediction_dirs) | {GROUND_TRUTH})
    if clash:
        raise UserError(f"baseline name {sorted(clash)[0]!r} is also a model's (or the ground truth's) name")
    ds = _split(data_root, split, dataset, videos, every)
    names = [*prediction_dirs, *baselines, GROUND_TRUTH]
    if len(names) < 2:
        raise UserError("similarity_from_dirs needs at least one folder of predictions or a baseline")
    totals = {m: {} for m in metrics}
    n_frames = 0
    base_maps: dict[tuple[str, tuple[int, int]], np.ndarray] = {}    # one map per baseline and size
    bar = tqdm(ds.video_ids, desc="similarity", unit="video", disable=not progress,
               mininterval=1.0 if sys.stderr.isatty() else 30.0)
    for vid in bar:
        preds, gt = _video_maps(prediction_dirs, ds, vid, every)
        for name, fn in baselines.items():
            preds[name] = [base_maps.setdefault((name, g.shape), np.asarray(fn(g.shape), dtype=np.float32))
                           for g in gt]
        maps = {**preds, GROUND_TRUTH: gt}
        n_frames += len(gt)
        for m, fn in fns.items():
            for pair, (total, count) in _pair_sums(maps, fn).items():
                t, c = totals[m].get(pair, (0.0, 0))
                totals[m][pair] = (t + total, c + count)
    if not n_frames:
        raise DataError(f"{data_root}: no frames in split {split!r}")
    mats = {m: _to_frame(names, totals[m]) for m in metrics}
    for mat in mats.values():
        mat.attrs["frames"] = n_frames
    return mats


def predict_maps(model, frames: np.ndarray, size: Sequence[int], indices: Sequence[int] | None = None,
                 batch_size: int = 8, conspicuity: bool = False):
    """One saliency map per requested frame of a video, from the 16-frame window ending at it (frame 0 repeats
    before the start, as everywhere in tinyhd), at ``size`` (H×W). Works for HD2S (given [−1, 1] input) and for
    any student-style model (ImageNet-normalised input, ``.saliency`` B×T'×H×W: the last map is the frame's).

    frames: N×H×W×3 uint8 RGB. Returns F×H×W float32; with ``conspicuity=True`` (HD2S only) also HD2S's four
    conspicuity maps, F×4×H×W (levels 2, 3, 4, 5), as a second value.
    """
    import torch

    from tinyhd.preprocess import preprocess, student_to_teacher_input
    from tinyhd.teacher import HD2S, window_indices

    indices = list(range(len(frames))) if indices is None else [int(i) for i in indices]
    if not indices:
        raise UserError("predict_maps: no frame indices given")
    bad = [i for i in indices if not 0 <= i < len(frames)]
    if bad:
        raise UserError(f"predict_maps: frame index {bad[0]} is outside the video's {len(frames)} frames "
                        f"(0–{len(frames) - 1})")
    x = preprocess(frames, tuple(size))                                        # 3×N×H×W
    is_hd2s = isinstance(model, HD2S)
    if is_hd2s:
        x = student_to_teacher_input(x)
    if conspicuity and not is_hd2s:
        raise UserError("conspicuity maps exist only for HD2S models")
    win = window_indices(indices)
    out, consp = [], []
    model.eval()
    with torch.inference_mode():
        for i in range(0, len(win), batch_size):
            clips = x[:, win[i:i + batch_size]].permute(1, 0, 2, 3, 4)       # b×3×16×H×W
            o = model(clips)
            s = o.saliency if hasattr(o, "saliency") else o
            out.append(s.reshape(s.shape[0], -1, *s.shape[-2:])[:, -1].float().numpy())
            if conspicuity:
                consp.append(o.conspicuity.float().numpy())
    if conspicuity:
        return np.concatenate(out), np.concatenate(consp)
    return np.concatenate(out)
