"""``tinyhd evaluate``: a checkpoint over a dataset split, the seven metrics per frame, and both aggregations.

The protocol (metrics sheet ``../shared/spec/metrics.md``, "The DHF1K evaluation pipeline"):

* **Predictions** are the authors' post-processed maps (``tinyhd.predict_video``: uint8 PNG maps at the
  video's size, /255); each metric resizes them to the GT size itself (MATLAB bicubic, :mod:`tinyhd.metrics`).
* **Ground truth.** AUC-J, AUC-B, sAUC and NSS use the binary fixation maps; CC, SIM and KLD the GT density
  maps (PNG / 255).
* **sAUC negatives.** For every evaluated frame, 10 frames are drawn at random (without replacement) from the
  *evaluated* frames — any video, the frame's own included, as DHF1K's ``randsample(#frames, 10)`` — and the
  union of their fixated pixels, rescaled to the frame's GT size, is the "other map". Seeded (``seed``). The
  pool is what is evaluated, not the whole split: with ``videos``/``max_videos``, a ``frame_step`` or
  predictions for some frames only, it shrinks (with one video, to that video's own frames), and sAUC is not
  comparable with a full-split number. The summary records the pool (``sauc_pool``) and the table says when
  it is a subset of the split.
* **Aggregation, both ways users compare.** ``per_video``: mean over the frames of each video, then over the
  videos (the TinyHD authors' ``compute_metrics.py``). ``pooled``: mean over all frames of all videos (the
  DHF1K MATLAB scripts). NaN frames (e.g. no fixation, a constant prediction) are skipped in both, as the DHF1K
  scripts do; ``n_valid`` counts the frames that did count, per metric (a model that loses most frames to NaN
  shows there), and a metric with no valid frame is NaN (``null`` in ``summary.json``). One difference from
  the DHF1K scripts: they pool at most 50 000 randomly chosen frames; here every evaluated frame counts (the
  same on sets up to 50 000 frames, e.g. DHF1K val; on larger sets their number estimates this one).
* **Cache.** Post-processed predictions are stored as uint8 ``.npz`` per video under
  ``tinyhd.paths.cache_dir()/predictions/<model key>/``, keyed by the checkpoint's SHA-256 (or a hash of the
  model's tensors), the video file's identity (path, size, mtime) and the inference settings, so evaluating
  again (other seed, other aggregation) does not re-run the model.

A cheap mode for training-time validation: pass ``predictions`` (maps you already computed, any size, e.g.
raw 192×256 outputs) and optionally ``gt_size`` (evaluate against GT resized down) and ``frame_step``. The
command line scores a folder of predicted PNG maps the same way (``--predictions DIR``, laid out
``DIR/<video>/<frame>.png`` as ``tinyhd predict --out`` writes them).
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import math
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from tinyhd import metrics as M
from tinyhd.errors import DataError, UserError

CACHE_VERSION = 1
N_OTHER = 10  # sAUC: other frames per evaluated frame (DHF1K evaluationFunc.m)
DISPLAY = {"auc_judd": "AUC-J", "auc_borji": "AUC-B", "auc_shuffled": "sAUC", "cc": "CC", "nss": "NSS",
           "sim": "SIM", "kld": "KLD"}
TABLE_ORDER = ("auc_judd", "sim", "auc_shuffled", "cc", "nss", "auc_borji", "kld")  # DHF1K's 5, then the rest


# ----------------------------------------------------------------------------------------------------------
# prediction cache
# ----------------------------------------------------------------------------------------------------------
def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def model_key(model: Any) -> str:
    """A short hash of a model's configuration and tensors (identifies its predictions in the cache)."""
    h = hashlib.sha256()
    h.update(repr(sorted(getattr(model, "config", {}).items())).encode())
    for name, t in model.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def _video_key(path: Path, first_frames: str) -> str:
    st = path.stat()
    ident = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}|{first_frames}|v{CACHE_VERSION}"
    if path.is_dir():  # frame folder: its images' names and sizes
        from tinyhd.video import list_images

        ident += "|" + ",".join(f"{p.name}:{p.stat().st_size}" for p in list_images(path))
    return hashlib.sha1(ident.encode()).hexdigest()[:12]


def _cache_path(cache_root: Path, key: str, video: str, path: Path, first_frames: str) -> Path:
    return cache_root / key / f"{video}-{_video_key(path, first_frames)}.npz"


def _load_cached(path: Path) -> np.ndarray | None:
    if not path.is_file():
        return None
    try:
        with np.load(path) as z:
            return z["maps"]
    except Exception:  # a damaged cache entry is recomputed, never trusted
        return None


def _save_cached(path: Path, maps_u8: np.ndarray) -> None:
    from tinyhd.paths import atomic_open

    buf = io.BytesIO()
    np.savez_compressed(buf, maps=maps_u8)
    with atomic_open(path, "wb") as fh:
        fh.write(buf.getvalue())


def predict_cached(model: Any, video_path: Path, video: str, key: str, cache_root: Path | None,
                   batch_size: int = 8, device: Any = None, first_frames: str = "pad",
                   progress: bool = False) -> np.ndarray:
    """Post-processed uint8 maps N×H×W of a video, from the cache when present (written there otherwise)."""
    from tinyhd.inference import postprocess_u8, predict_raw

    target = _cache_path(cache_root, key, video, video_path, first_frames) if cache_root is not None else None
    if target is not None:
        cached = _load_cached(target)
        if cached is not None:
            return cached
    raw, _, rgb = predict_raw(model, video_path, batch_size=batch_size, device=device, first_frames=first_frames,
                              progress=progress)
    h, w = rgb.shape[1:3]
    maps = np.stack([postprocess_u8(m, (h, w)) for m in raw])
    if target is not None:
        _save_cached(target, maps)
    return maps


# ----------------------------------------------------------------------------------------------------------
# evaluation
# ----------------------------------------------------------------------------------------------------------
def _resize_gt(density: np.ndarray, fixations: np.ndarray, size: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Cheap mode: GT density resized with area averaging; every fixated pixel moved to the pixel containing it."""
    import cv2

    h, w = int(size[0]), int(size[1])
    d = cv2.resize(density.astype(np.float32), (w, h), interpolation=cv2.INTER_AREA)
    f = M.other_fixation_map([fixations], (h, w))
    return d, f


def _as_pred_list(entry: Any, n_frames: int, video: str) -> tuple[np.ndarray, Any]:
    """``predictions[video]``: one map per GT frame (N×h×w, or N×1×h×w …), or a tuple (frame indices, maps).

    Refused rather than guessed, since any of them would pair maps with the wrong GT frames or drop frames
    silently: a plain form whose map count is not the video's GT frame count, a map count that differs from the
    index count, indices outside the video, and repeated indices. Returns (frame indices, maps).
    """
    where = f"predictions[{video!r}]"
    if isinstance(entry, tuple) and len(entry) == 2:
        idx = np.asarray(entry[0]).ravel()
        if idx.size and not np.issubdtype(idx.dtype, np.integer):
            raise ValueError(f"{where}: frame indices must be integers, got dtype {idx.dtype}")
        idx = idx.astype(np.int64)
        maps = entry[1]
        if len(maps) != len(idx):
            raise ValueError(f"{where}: {len(maps)} maps for {len(idx)} frame indices")
    else:
        maps = entry
        if len(maps) != n_frames:
            raise ValueError(f"{where}: {len(maps)} maps but the GT of video {video} has {n_frames} frames "
                             "(pass (frame indices, maps) to score only some frames)")
        idx = np.arange(n_frames)
    shape = getattr(maps, "shape", None)
    if shape is not None and len(shape) < 3:
        raise ValueError(f"{where}: expected a stack of maps (N×H×W), got an array of shape {tuple(shape)}")
    bad = idx[(idx < 0) | (idx >= n_frames)]
    if bad.size:
        raise ValueError(f"{where}: frame index {int(bad[0])} is outside the {n_frames} GT frames of video "
                         f"{video} (0..{n_frames - 1})")
    uniq, counts = np.unique(idx, return_counts=True)
    if (counts > 1).any():
        raise ValueError(f"{where}: frame index {int(uniq[counts > 1][0])} is given {int(counts.max())} times; "
                         "each frame takes one map")
    return idx, maps


class _MapFolder:
    """The predicted maps of one video in a folder of PNGs, one per GT frame, each read when indexed (uint8 H×W).

    Frames are matched as :func:`tinyhd.similarity.load_prediction_dirs` matches them: numbered files
    (``0001.png`` as ``tinyhd predict --out`` writes, or from 0) by number, otherwise natural name order; a
    missing, extra or repeated frame is a DataError naming the folder, since it would shift every map after it
    against the GT. A map of another size than its GT frame is resized to it by the metrics (MATLAB
    ``imresize``, as the benchmark does).
    """

    def __init__(self, folder: Path, n_frames: int) -> None:
        from tinyhd.similarity import _frame_files

        self.folder = folder
        self.files = _frame_files(folder, n_frames)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> np.ndarray:
        from tinyhd.video import read_image

        return read_image(self.files[i], grayscale=True)  # H×W uint8


def summarise(per_frame: "Any") -> dict[str, Any]:
    """Both aggregations of a per-frame table: ``per_video`` (mean of video means) and ``pooled`` (frame mean).

    NaN frames are skipped (as the DHF1K scripts do), so each metric also gets its count of what did count:
    ``n_valid`` (frames in the pooled mean) and ``n_valid_videos`` (videos with a mean, in the per-video mean).
    """
    cols = [c for c in M.METRIC_NAMES if c in per_frame.columns]
    with np.errstate(all="ignore"):
        per_video_means = per_frame.groupby("video", sort=True)[cols].mean()  # NaN frames skipped
        return {
            "per_video": {c: float(per_video_means[c].mean()) for c in cols},
            "pooled": {c: float(per_frame[c].mean()) for c in cols},
            "n_videos": int(per_frame["video"].nunique()),
            "n_frames": int(len(per_frame)),
            "n_valid": {c: int(per_frame[c].notna().sum()) for c in cols},
            "n_valid_videos": {c: int(per_video_means[c].notna().sum()) for c in cols},
        }


def evaluate(model: Any, root: str | os.PathLike, split: str = "val", dataset: str | None = None, *,
             predictions: Mapping[str, Any] | str | os.PathLike | None = None,
             videos: Sequence[str] | None = None,
             max_videos: int | None = None, frame_step: int = 1, gt_size: Sequence[int] | None = None,
             seed: int = 0, n_other: int = N_OTHER, batch_size: int = 8, device: Any = None,
             first_frames: str = "pad", cache: bool | str | os.PathLike = True, checkpoint_key: str | None = None,
             progress: bool = True) -> tuple["Any", dict[str, Any]]:
    """Evaluate a model (or given predictions) on a labeled split: per-frame metrics and their summaries.

    Args:
        model: a TinyHD (or any model :func:`tinyhd.predict_video` accepts); None when ``predictions`` covers
            every video.
        root, split, dataset: the data (``tinyhd.data.SaliencyClipDataset`` layout: dhf1k, ucf, hollywood2;
            None: ROOT's own manifest.yaml, else dhf1k). The summary records the manifest actually used.
        predictions: video id -> maps of every GT frame (N×h×w, or N×1×h×w; any size/dtype), or (frame
            indices, maps). Used instead of running the model (cheap training-time validation). Every key must be
            a video of the split; a map count that is not the video's frame count, and repeated indices, are
            refused. Or a folder of predicted PNG maps, ``DIR/<video>/<frame>.png`` (see
            :class:`_MapFolder`): every evaluated video needs its folder there, with one map per GT frame.
        videos, max_videos: evaluate a subset of the split's videos.
        frame_step: evaluate every k-th frame (1 = all, the benchmark).
        gt_size: (H, W) to evaluate against GT resized down (cheap mode; the benchmark uses the GT's size).
        seed: seeds the sAUC other-frame draw and the metrics' random splits/jitter.
        n_other: other frames per evaluated frame for sAUC (10 in DHF1K).
        batch_size, device, first_frames: passed to the inference.
        cache: True (``cache_dir()/predictions``), a folder, or False; ``checkpoint_key`` names the model in
            it (default: a hash of its tensors).
    Returns:
        (per_frame DataFrame with columns video, frame and the seven metrics; summary dict with ``per_video``
        and ``pooled`` means, counts (``n_valid`` per metric), the sAUC pool (``sauc_pool``), the dataset
        manifest used (``dataset``, ``manifest``) and the settings).
    """
    import pandas as pd
    from tqdm.auto import tqdm

    from tinyhd.data import SaliencyClipDataset

    if frame_step < 1:
        raise ValueError(f"frame_step must be >= 1, got {frame_step}")
    ds = SaliencyClipDataset(root, split=split, dataset=dataset, output="single", sampling="uniform", flip=False,
                             size=None, videos=videos, max_videos=max_videos)
    if not ds.annotated:
        raise UserError(f"{root}: split {split!r} has no annotations to evaluate against")
    ids = ds.video_ids
    split_ids = [e.id for e in ds.manifest.videos(ds.root, split, ds.variant)]
    pred_dir: Path | None = None
    if isinstance(predictions, (str, os.PathLike)):
        pred_dir = Path(predictions).expanduser()
        if not pred_dir.is_dir():
            raise DataError(f"{pred_dir}: predictions folder does not exist")
        absent = [v for v in ids if not (pred_dir / v).is_dir()]
        if absent:
            raise DataError(f"{pred_dir / absent[0]}: no predictions for video {absent[0]} ({len(absent)} of the "
                            f"{len(ids)} videos evaluated have no folder in {pred_dir}; expected "
                            f"{pred_dir}/<video>/0001.png …)")
        predictions = None  # filled per video in pass 1, once its GT frame count is known
    predictions = dict(predictions or {})
    unknown = sorted(set(predictions) - set(split_ids), key=str)
    if unknown:
        raise ValueError(f"predictions for {len(unknown)} video(s) that split {split!r} of {root} does not have: "
                         f"{unknown[:5]} (its videos: {split_ids[:3]} …)")
    missing = [] if pred_dir is not None else [v for v in ids if v not in predictions]
    if model is None and missing:
        raise ValueError(f"no model given and no predictions for video(s) {missing[:5]}")
    cache_root: Path | None = None
    key = checkpoint_key
    if model is not None and missing and cache:  # only the model's own predictions are cached
        from tinyhd.paths import cache_dir

        cache_root = Path(cache) if isinstance(cache, (str, os.PathLike)) else cache_dir() / "predictions"
        key = key or model_key(model)

    # pass 1: ground truth of every video; fixation coordinates of every evaluated frame (for sAUC)
    gts: dict[str, Any] = {}
    frames_of: dict[str, np.ndarray] = {}
    n_gt_frames: dict[str, int] = {}
    coords: list[tuple[np.ndarray, np.ndarray, tuple[int, int]]] = []
    budget = 512 * 2**20
    for v in tqdm(ids, desc="ground truth", unit="video", disable=not progress, leave=False):
        gt = ds.ground_truth(v)
        n = len(gt.maps)
        if pred_dir is not None:
            predictions[v] = _MapFolder(pred_dir / v, n)
        if v in predictions:
            idx, _ = _as_pred_list(predictions[v], n, v)
            idx = idx[::frame_step]
        else:
            idx = np.arange(0, n, frame_step)
        frames_of[v] = idx
        n_gt_frames[v] = n
        for i in idx:
            fix = gt.fixations[i]
            if gt_size is not None:
                fix = M.other_fixation_map([fix], gt_size)
            r, c = np.nonzero(fix)
            coords.append((r, c, fix.shape))
        if budget > 0:
            gts[v] = gt
            budget -= gt.maps.nbytes + gt.fixations.nbytes
    total = len(coords)
    if total == 0:
        raise DataError(f"{root}: split {split!r} has no frames to evaluate")

    rng = np.random.default_rng(seed)
    rows: list[dict[str, Any]] = []
    g = 0  # global index of the evaluated frame
    bar = tqdm(total=total, desc="evaluate", unit="frame", disable=not progress, leave=False)
    for v in ids:
        gt = gts.pop(v, None) or ds.ground_truth(v)
        n = len(gt.maps)
        if v in predictions:
            idx_all, maps_all = _as_pred_list(predictions[v], n, v)
            pos = {int(i): k for k, i in enumerate(idx_all)}
            get_pred = lambda i, maps_all=maps_all, pos=pos: maps_all[pos[int(i)]]  # noqa: E731
        else:
            maps_u8 = predict_cached(model, ds.video_path(v), v, key, cache_root, batch_size, device, first_frames,
                                     progress)
            if len(maps_u8) < n:
                raise DataError(f"{ds.video_path(v)}: {len(maps_u8)} frames decode but there are {n} GT maps")
            get_pred = lambda i, maps_u8=maps_u8: maps_u8[int(i)]  # noqa: E731
        for i in frames_of[v]:
            density, fix = gt.maps[i], gt.fixations[i]
            if gt_size is not None:
                density, fix = _resize_gt(density, fix, gt_size)
            shape = fix.shape
            others = rng.choice(total, size=min(n_other, total), replace=False)
            other = np.zeros(shape, dtype=bool)
            for o in others:
                r, c, src = coords[o]
                if src != shape:
                    r = np.clip(np.round((r + 0.5) * shape[0] / src[0] - 0.5), 0, shape[0] - 1).astype(np.int64)
                    c = np.clip(np.round((c + 0.5) * shape[1] / src[1] - 0.5), 0, shape[1] - 1).astype(np.int64)
                other[r, c] = True
            res = M.compute_all(get_pred(i), density, fix, other, rng=rng)
            rows.append({"video": v, "frame": int(i), **res})
            g += 1
            bar.update(1)
    bar.close()
    per_frame = pd.DataFrame(rows, columns=["video", "frame", *M.METRIC_NAMES])
    summary = summarise(per_frame)
    summary["sauc_pool"] = {  # the frames sAUC's other maps were drawn from: the evaluated ones
        "frames": total, "videos": sum(1 for v in ids if len(frames_of[v])),
        "split_videos": len(split_ids),
        "whole_split": len(ids) == len(split_ids) and total == sum(n_gt_frames.values()),
    }
    summary.update({"root": str(root), "split": split, "dataset": ds.manifest.name,  # what was evaluated
                    "manifest": str(Path(ds.manifest.path).resolve()) if ds.manifest.path is not None else None,
                    "seed": seed, "n_other": n_other, "frame_step": frame_step,
                    "gt_size": list(gt_size) if gt_size is not None else None, "model": key})
    if pred_dir is not None:
        summary["predictions"] = str(pred_dir)
    return per_frame, summary


# ----------------------------------------------------------------------------------------------------------
# reporting and the command line
# ----------------------------------------------------------------------------------------------------------
def format_table(summary: Mapping[str, Any]) -> str:
    """The seven metrics, per-video and pooled means side by side (higher is better except KLD), with the number
    of frames each metric was valid on, and a note when sAUC's other frames came from part of the split only."""
    n_frames = summary["n_frames"]
    valid = summary.get("n_valid", {})
    lines = [f"{'metric':<8}{'per video':>12}{'pooled':>12}{'valid frames':>16}",
             "-" * 48]
    for k in TABLE_ORDER:
        if k in summary["per_video"]:
            n_ok = f"{valid[k]}/{n_frames}" if k in valid else ""
            lines.append(f"{DISPLAY[k]:<8}{summary['per_video'][k]:>12.4f}{summary['pooled'][k]:>12.4f}{n_ok:>16}")
    lines.append(f"({summary['n_videos']} videos, {n_frames} frames; per video = mean of video means "
                 f"as the TinyHD authors, pooled = mean over frames as the DHF1K scripts; NaN frames skipped)")
    pool = summary.get("sauc_pool")
    if pool is not None and not pool["whole_split"]:
        lines.append(f"note: sAUC's other frames were drawn from the {pool['frames']} evaluated frames of "
                     f"{pool['videos']} video(s), not the whole split ({pool['split_videos']} videos): not "
                     f"comparable with a full-split sAUC")
    return "\n".join(lines)


def _json_ready(x: Any) -> Any:
    """``x`` with every NaN/infinite float replaced by None, so that it is written as valid JSON (``null``)."""
    if isinstance(x, Mapping):
        return {k: _json_ready(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_ready(v) for v in x]
    if isinstance(x, (float, np.floating)):
        return float(x) if math.isfinite(x) else None
    if isinstance(x, np.integer):
        return int(x)
    return x


def write_results(per_frame: Any, summary: Mapping[str, Any], out_dir: str | os.PathLike) -> list[Path]:
    """per_frame.csv, per_video.csv and summary.json in ``out_dir``, each written atomically.

    per_video.csv has each video's metric means, its frame count and ``n_valid_<metric>`` (frames that were not
    NaN). summary.json is strict JSON: a NaN mean (no valid frame) is written as ``null``.
    """
    from tinyhd.paths import atomic_write_text

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: --out must be a folder, but a file of that name exists")
    cols = [c for c in M.METRIC_NAMES if c in per_frame.columns]
    grouped = per_frame.groupby("video", sort=True)
    per_video = grouped[cols].mean()
    per_video["n_frames"] = grouped.size()
    for c in cols:
        per_video[f"n_valid_{c}"] = grouped[c].count()  # count() skips NaN
    per_video = per_video.reset_index()
    text = json.dumps(_json_ready(summary), indent=2, sort_keys=True, default=str, allow_nan=False) + "\n"
    files = [out / "per_frame.csv", out / "per_video.csv", out / "summary.json"]
    atomic_write_text(files[0], per_frame.to_csv(index=False))
    atomic_write_text(files[1], per_video.to_csv(index=False))
    atomic_write_text(files[2], text)
    return files


def _video_list(text: str | None) -> list[str] | None:
    """``--videos "009, 010"`` -> ["009", "010"] (spaces around ids are dropped)."""
    if text is None:
        return None
    ids = [v.strip() for v in text.split(",") if v.strip()]
    if not ids:
        raise UserError(f"--videos: no video id in {text!r} (give comma-separated ids, e.g. 601,602)")
    return ids


def cli_main(argv: list[str]) -> int:
    """``tinyhd evaluate (--checkpoint CKPT | --predictions DIR) --data ROOT [--split val] [--out DIR] …``."""
    parser = argparse.ArgumentParser(
        prog="tinyhd evaluate",
        description=("Run a checkpoint over a dataset split, or read a folder of predicted maps, and print the "
                     "seven saliency metrics (AUC-J, SIM, sAUC, CC, NSS, AUC-B, KLD) as the MIT/DHF1K benchmark "
                     "defines them, averaged per video (TinyHD authors) and pooled over frames (DHF1K scripts). "
                     "A checkpoint's predictions are cached, so a second evaluation does not re-run the model."))
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", metavar="CKPT",
                        help="checkpoint file (ours or the authors'), or a downloaded released name")
    source.add_argument("--predictions", metavar="DIR",
                        help=("score predicted maps instead of running a model: DIR/<video>/<frame>.png, one "
                              "grayscale map per annotated frame, numbered from 1 (0001.png, as `tinyhd predict "
                              "--out DIR/<video>` writes) or from 0; a missing, extra or repeated frame is an "
                              "error, and a map of another size is resized to the GT's (MATLAB bicubic, as the "
                              "benchmark)"))
    parser.add_argument("--data", required=True, metavar="ROOT", help="dataset root")
    parser.add_argument("--split", default="val", help="split to evaluate (default val)")
    parser.add_argument("--dataset", default=None, choices=("dhf1k", "ucf", "hollywood2"),
                        help=("dataset layout (default: ROOT/manifest.yaml when ROOT has one, e.g. synthetic sets, "
                              "else dhf1k; a dataset named here must be the one of ROOT's own manifest)"))
    parser.add_argument("--out", metavar="DIR", help="write per_frame.csv, per_video.csv and summary.json here")
    parser.add_argument("--videos", help="comma-separated video ids to evaluate (default: the whole split)")
    parser.add_argument("--max-videos", type=int, help="evaluate only the first N videos")
    parser.add_argument("--frame-step", type=int, default=1, help="evaluate every k-th frame (default 1: all)")
    parser.add_argument("--seed", type=int, default=0, help="seed of sAUC's other frames and the random splits")
    parser.add_argument("--batch-size", type=int, default=8, help="clips per forward pass")
    parser.add_argument("--device", default=None, help="cpu, cuda … (default: cuda if available)")
    parser.add_argument("--no-cache", action="store_true", help="neither read nor write the prediction cache")
    parser.add_argument("--cache-dir", help="prediction cache folder (default: <tinyhd cache>/predictions)")
    parser.add_argument("--download", action="store_true", help="allow downloading a released checkpoint")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)

    if args.out and Path(args.out).exists() and not Path(args.out).is_dir():
        raise UserError(f"{args.out}: --out must be a folder, but a file of that name exists")
    if args.frame_step < 1:
        raise UserError(f"--frame-step must be >= 1, got {args.frame_step}")
    videos = _video_list(args.videos)
    root = Path(args.data).expanduser()
    if not root.is_dir():
        raise DataError(f"{root}: dataset folder does not exist")
    model, ckpt, device, pred_dir = None, None, None, None
    if args.predictions is not None:
        pred_dir = Path(args.predictions).expanduser()
        if not pred_dir.is_dir():
            raise DataError(f"{pred_dir}: --predictions folder does not exist")
    else:
        import torch

        from tinyhd.checkpoints import load_checkpoint
        from tinyhd.inference import checked_device, note_training_size, resolve_checkpoint

        ckpt = resolve_checkpoint(args.checkpoint, download=args.download)
        model = load_checkpoint(ckpt)
        note_training_size(model, ckpt, "evaluate")
        device = checked_device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        model.to(device)
    cache: bool | str = False if args.no_cache else (args.cache_dir or True)
    per_frame, summary = evaluate(
        model, root, args.split, args.dataset, predictions=pred_dir,
        videos=videos, max_videos=args.max_videos,
        frame_step=args.frame_step, seed=args.seed, batch_size=args.batch_size, device=device, cache=cache,
        checkpoint_key=file_sha256(ckpt)[:16] if ckpt is not None else None, progress=not args.no_progress)
    if ckpt is not None:
        summary["checkpoint"] = str(ckpt)
    print(format_table(summary))
    if args.out:
        files = write_results(per_frame, summary, args.out)
        print(f"wrote {', '.join(str(f) for f in files)}")
    return 0
