"""How similar are the predictions of different saliency models? (TinyHD paper, §1 and Fig. 1)

TinyHD's motivation: TASED, ViNet and HD2S score alike against the DHF1K ground truth (CC 0.470–0.511, SIM
0.361–0.406), yet their maps agree with *each other* less than those scores suggest — different decoders
learn different saliency patterns, hence TinyHD's heterogeneous decoders. Fig. 1 shows the pairwise CC and SIM
between the three models' predictions on DHF1K val, and of each against the ground truth.

:func:`similarity_matrix` computes such a matrix for any set of models (arrays of maps, frame-aligned), with the
benchmark's metrics (:func:`tinyhd.metrics.cc`, :func:`tinyhd.metrics.sim`, both symmetric in their two
arguments); :func:`load_prediction_dirs` reads folders of predicted PNG maps (e.g. the released TASED/ViNet/HD2S
predictions on DHF1K val) aligned with a dataset's ground truth.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Mapping, Sequence

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


def similarity_matrix(predictions: Mapping[str, np.ndarray | Sequence[np.ndarray]], gt: np.ndarray | None = None,
                      metric: str | Callable[[np.ndarray, np.ndarray], float] = "cc"):
    """Mean per-frame similarity between every pair of models (and the ground truth, if given).

    ``predictions``: name -> N×H×W maps (any dtype/size; they are resized to the second map's size by the metric),
    the same N frames for every model. ``gt``: N×H×W GT density maps or None. Returns a symmetric
    ``pandas.DataFrame`` (rows/columns: the model names, then ``"ground truth"``) whose diagonal is 1; frames where
    the metric is undefined (NaN: a constant map) are skipped.
    """
    import pandas as pd

    fn = _metric(metric)
    maps = {name: np.asarray(v) for name, v in predictions.items()}
    if gt is not None:
        maps[GROUND_TRUTH] = np.asarray(gt)
    if len(maps) < 2:
        raise UserError("similarity_matrix needs at least two sets of maps")
    n = {k: len(v) for k, v in maps.items()}
    if len(set(n.values())) != 1:
        raise UserError(f"every model needs the same frames; got frame counts {n}")
    names = list(maps)
    out = pd.DataFrame(np.eye(len(names)), index=names, columns=names)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            # against the ground truth the GT is the "density" argument, as the benchmark scores a model
            x, y = (maps[a], maps[b]) if b == GROUND_TRUTH or a != GROUND_TRUTH else (maps[b], maps[a])
            vals = np.array([fn(x[t], y[t]) for t in range(len(x))], dtype=np.float64)
            value = float(np.nanmean(vals)) if np.isfinite(vals).any() else float("nan")
            out.loc[a, b] = out.loc[b, a] = value
    return out


def agreement_summary(matrix) -> dict[str, float]:
    """Mean model–model similarity and mean model–GT similarity of a :func:`similarity_matrix` with a GT row."""
    names = [n for n in matrix.index if n != GROUND_TRUTH]
    if GROUND_TRUTH not in matrix.index or len(names) < 2:
        raise UserError("agreement_summary needs a matrix with the ground truth and at least two models")
    pairs = [matrix.loc[a, b] for i, a in enumerate(names) for b in names[i + 1:]]
    return {"model_vs_model": float(np.nanmean(pairs)),
            "model_vs_gt": float(np.nanmean([matrix.loc[n, GROUND_TRUTH] for n in names]))}


def _frame_file(folder: Path, index: int, files: list[Path] | None) -> Path:
    for name in (f"{index + 1:04d}.png", f"{index:04d}.png", f"{index + 1:03d}.png", f"{index + 1}.png"):
        if (folder / name).is_file():
            return folder / name
    if files is not None and index < len(files):
        return files[index]
    raise DataError(f"{folder}: no predicted map for frame {index} (expected e.g. {index + 1:04d}.png)")


def load_prediction_dirs(prediction_dirs: Mapping[str, str | os.PathLike], data_root: str | os.PathLike,
                         split: str = "val", dataset: str = "dhf1k", videos: Sequence[str] | None = None,
                         every: int = 1) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Predicted PNG maps from folders laid out ``<dir>/<video id>/<frame>.png`` (``0001.png`` = first frame, as
    DHF1K results are usually shared; otherwise the sorted PNGs), aligned with the GT of ``data_root``'s split.

    Every ``every``-th frame of each video is used. Returns (name -> N×h×w float32 in [0, 1], GT N×H×W float32);
    predictions keep their own size (the metrics resize them to the GT's).
    """
    from tinyhd.data import SaliencyClipDataset
    from tinyhd.video import list_images, read_image

    ds = SaliencyClipDataset(data_root, split=split, dataset=dataset, size=None, videos=videos)
    preds: dict[str, list[np.ndarray]] = {name: [] for name in prediction_dirs}
    gts: list[np.ndarray] = []
    for vid in ds.video_ids:
        gt = ds.ground_truth(vid).maps
        frames = range(0, len(gt), max(1, int(every)))
        gts += [gt[t] for t in frames]
        for name, d in prediction_dirs.items():
            folder = Path(d).expanduser() / vid
            if not folder.is_dir():
                raise DataError(f"{folder}: no predictions for video {vid} of model {name!r}")
            files = list_images(folder)
            preds[name] += [read_image(_frame_file(folder, t, files), grayscale=True).astype(np.float32) / 255.0
                            for t in frames]
    if not gts:
        raise DataError(f"{data_root}: no frames in split {split!r}")
    return {k: np.stack(v) for k, v in preds.items()}, np.stack(gts)


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
