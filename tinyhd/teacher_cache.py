"""Teacher maps computed once and read back: ``tinyhd cache-teacher``, :class:`CachedTeacher`.

Distilling TinyHD-M from HD2S costs 16 teacher forwards per training sample (one 16-frame window per target
frame, TinyHD sheet (f) / HD2S sheet §12) — about 354 GMAC at 192×256, minutes per sample on a CPU. The
teacher is frozen, so its maps depend only on the video, the frame and the resolution: we run it once over a
dataset and store, for **every frame t of every video, the maps of the window ending at t** (frames before 0
repeat frame 0, exactly like :func:`tinyhd.data.clip_frame_indices` pads clips), at the student's resolution.

Layout of a cache folder (one per dataset)::

    meta.json            format, dataset, split(s), size, dtype, encoding, model fingerprint, window rule
    <video id>.npy       N×5×H×W per video: channel 0 = final map, 1..4 = conspicuity maps (levels 2, 3, 4, 5)
    complete             written last: the cache is finished

* **Compact.** ``uint8`` (default) stores q = ⌊256·m⌋ clipped to 255 and reads back (q + ½)/256: error ≤ 1/512,
  and read-back maps stay strictly inside (0, 1) as the KL losses want. ``float16`` is also available.
  Files are memory-mapped at read time, so a batch touches only its frames.
* **Flip.** Maps are stored for the unflipped video; a mirrored clip gets mirrored maps at read time.
  HD2S is not exactly mirror-equivariant (its kernels are not symmetric), so this is the usual cheap
  approximation "HD2S(mirrored clip) ≈ mirrored HD2S(clip)"; the authors' wrapper instead runs the teacher on
  the flipped clip (sheet §12). ``benchmarks/distill_step.py`` prints how far apart the two are.
* **Atomic and resumable.** Every ``.npy`` is written through :func:`tinyhd.paths.atomic_open`; a rerun skips
  the videos already there (after checking ``meta.json`` matches), so an interrupted build just continues.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Mapping, NamedTuple, Sequence

import numpy as np
import torch

from tinyhd.errors import DataError, UserError
from tinyhd.paths import atomic_directory, atomic_open, atomic_write_text, cache_dir

FORMAT = "tinyhd-teacher-cache/1"
CHANNELS = ("final", "conspicuity2", "conspicuity3", "conspicuity4", "conspicuity5")


# -- encoding --------------------------------------------------------------------------------------------------

def encode_maps(maps: torch.Tensor, dtype: str = "uint8") -> np.ndarray:
    """Maps in [0, 1] -> stored array (``uint8``: ⌊256·m⌋ clipped to 0..255; ``float16``: as is)."""
    if dtype == "uint8":
        return (maps.float() * 256).floor().clamp_(0, 255).to(torch.uint8).cpu().numpy()
    if dtype == "float16":
        return maps.to(torch.float16).cpu().numpy()
    raise UserError(f"teacher cache dtype must be 'uint8' or 'float16', not {dtype!r}")


def decode_maps(stored: np.ndarray) -> torch.Tensor:
    """Stored array -> float32 maps in (0, 1); inverse of :func:`encode_maps` up to its quantisation."""
    t = torch.from_numpy(np.ascontiguousarray(stored))
    if t.dtype == torch.uint8:
        return (t.float() + 0.5) / 256
    return t.float()


def model_fingerprint(model: torch.nn.Module) -> str:
    """sha1 of the model's state dict (names, shapes and values): a cache belongs to one set of weights."""
    h = hashlib.sha1()
    for k, v in model.state_dict().items():
        h.update(k.encode())
        h.update(str(tuple(v.shape)).encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


# -- building --------------------------------------------------------------------------------------------------

def _entries(dataset_root: Path, dataset: str, splits: Sequence[str], max_videos: int | None):
    from tinyhd.manifest import manifest_for_root

    m = manifest_for_root(dataset_root, dataset)
    variant = m.detect_variant(dataset_root)
    out = []
    for split in splits:
        if split not in m.splits:
            raise UserError(f"{dataset_root}: {m.name} has no split {split!r} (it has {', '.join(m.splits)})")
        entries = m.videos(dataset_root, split, variant)
        out += entries[:max_videos] if max_videos is not None else entries
    if not out:
        raise DataError(f"{dataset_root}: no videos in split(s) {', '.join(splits)}")
    return out


def _video_maps(model: torch.nn.Module, frames: np.ndarray, size: Sequence[int], batch_size: int,
                device: torch.device) -> torch.Tensor:
    """HD2S maps for every frame of a video: N×5×H×W (final, conspicuity 2..5), window ending at each frame."""
    from tinyhd.preprocess import preprocess, student_to_teacher_input
    from tinyhd.teacher import window_indices

    x = student_to_teacher_input(preprocess(frames, tuple(size)))     # 3×N×H×W, exactly the clip pipeline
    win = window_indices(range(len(frames)))                          # N×16
    out = []
    with torch.inference_mode():
        for i in range(0, len(win), batch_size):
            clips = x[:, win[i:i + batch_size]].permute(1, 0, 2, 3, 4)  # b×3×16×H×W
            o = model(clips.to(device))
            out.append(torch.cat([o.saliency, o.conspicuity], dim=1).cpu())  # b×5×H×W
    return torch.cat(out)


def _meta(dataset: str, splits: Sequence[str], size: Sequence[int], dtype: str, fingerprint: str) -> dict:
    return {"format": FORMAT, "dataset": dataset, "splits": list(splits), "size": [int(size[0]), int(size[1])],
            "dtype": dtype, "encoding": "uint8: (q+0.5)/256" if dtype == "uint8" else "float16",
            "channels": list(CHANNELS), "window": "16 frames ending at each frame; frame 0 repeats before the start",
            "model": fingerprint}


def build_teacher_cache(teacher_model: torch.nn.Module, dataset_root: str | os.PathLike, out: str | os.PathLike,
                        dataset: str = "dhf1k", size: Sequence[int] = (192, 256), splits: Sequence[str] = ("train",),
                        dtype: str = "uint8", batch_size: int = 8, device: str | torch.device = "cpu",
                        max_videos: int | None = None, progress: bool = True) -> Path:
    """Run ``teacher_model`` (an HD2S) once over ``splits`` of a dataset and store its maps under ``out``.

    Resumable: videos already cached are skipped; a cache built with other settings or weights is refused
    (a :class:`~tinyhd.errors.UserError` naming the differing field). Returns ``out``.
    """
    from tqdm.auto import tqdm

    from tinyhd.video import read_video

    dataset_root, out = Path(dataset_root).expanduser(), Path(out).expanduser()
    if size[0] % 32 or size[1] % 32:
        raise UserError(f"teacher cache size {size[0]}×{size[1]}: HD2S needs multiples of 32")
    encode_maps(torch.zeros(1), dtype)  # validates dtype early
    device = torch.device(device)
    model = teacher_model.to(device).eval()
    meta = _meta(dataset, splits, size, dtype, model_fingerprint(model))
    meta_path = out / "meta.json"
    if meta_path.is_file():
        old = json.loads(meta_path.read_text())
        diff = [k for k in meta if old.get(k) != meta[k]]
        if diff:
            raise UserError(f"{out}: holds a teacher cache built with different {', '.join(diff)} "
                            f"({', '.join(f'{k}={old.get(k)!r}' for k in diff)}); use another folder")
    else:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(meta_path, json.dumps(meta, indent=1))
    entries = _entries(dataset_root, dataset, splits, max_videos)
    for e in tqdm(entries, desc=f"teacher maps {dataset}", unit="video", disable=not progress):
        path = out / f"{e.id}.npy"
        if path.is_file():
            try:
                arr = np.load(path, mmap_mode="r")
                if arr.ndim == 4 and arr.shape[1:] == (5, *meta["size"]):
                    continue
            except (ValueError, OSError):
                pass  # unreadable: recompute
        frames = read_video(e.source)
        if len(frames) == 0:
            raise DataError(f"{e.source}: no frames decode")
        stored = encode_maps(_video_maps(model, frames, size, batch_size, device), dtype)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_open(path, "wb") as fh:
            np.save(fh, stored)
    atomic_write_text(out / "complete", f"{len(entries)} videos\n")
    return out


# -- reading ---------------------------------------------------------------------------------------------------

class CachedTeacher:
    """The teacher contract from a cache: ``teacher(batch) -> {"final": B×T'×H×W, "conspicuity": B×4×T'×H×W}``.

    ``path`` is one cache folder or a folder of them (e.g. ``dhf1k/`` + ``kinetics/``, as
    :func:`ensure_reduced_teacher` writes); videos are looked up by id across all of them. Flipped items get
    mirrored maps. Raises :class:`~tinyhd.errors.DataError` naming the cache for an unknown video, a frame
    past the end, an unfinished cache or a size that differs from the batch's.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path).expanduser()
        if not self.path.is_dir():
            raise DataError(f"{self.path}: teacher cache folder does not exist (build it with `tinyhd cache-teacher`)")
        roots = [self.path] if (self.path / "meta.json").is_file() else sorted(
            p.parent for p in self.path.glob("*/meta.json"))
        if not roots:
            raise DataError(f"{self.path}: not a teacher cache (no meta.json here or in its sub-folders)")
        self.index: dict[str, Path] = {}
        self.size: tuple[int, int] | None = None
        for root in roots:
            meta = json.loads((root / "meta.json").read_text())
            if meta.get("format") != FORMAT:
                raise DataError(f"{root / 'meta.json'}: unknown cache format {meta.get('format')!r}")
            if not (root / "complete").is_file():
                raise DataError(f"{root}: teacher cache is unfinished (rerun `tinyhd cache-teacher` to resume it)")
            size = tuple(meta["size"])
            if self.size is not None and size != self.size:
                raise DataError(f"{root}: maps are {size[0]}×{size[1]} but {roots[0]} has {self.size[0]}×{self.size[1]}")
            self.size = size
            for f in root.rglob("*.npy"):
                vid = f.relative_to(root).with_suffix("").as_posix()
                if vid in self.index:
                    raise DataError(f"{self.path}: video id {vid!r} is in two caches ({self.index[vid]} and {f})")
                self.index[vid] = f
        self._open: dict[str, np.ndarray] = {}

    def maps(self, video: str) -> np.ndarray:
        """The stored N×5×H×W array of a video (memory-mapped)."""
        if video not in self._open:
            if video not in self.index:
                raise DataError(f"{self.path}: no teacher maps for video {video!r} (was it cached?)")
            self._open[video] = np.load(self.index[video], mmap_mode="r")
        return self._open[video]

    def __call__(self, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        frame_index = torch.as_tensor(batch["frame_index"])
        B = len(batch["video"])
        frame_index = frame_index.view(B, -1)
        flips = torch.as_tensor(batch.get("flip", torch.zeros(B, dtype=torch.bool))).view(-1)
        if "clip" in batch and tuple(batch["clip"].shape[-2:]) != self.size:
            raise DataError(f"{self.path}: teacher maps are {self.size[0]}×{self.size[1]} but the batch's clips are "
                            f"{batch['clip'].shape[-2]}×{batch['clip'].shape[-1]}")
        out = []
        for b in range(B):
            arr = self.maps(batch["video"][b])
            idx = frame_index[b].numpy()
            if idx.max() >= len(arr) or idx.min() < 0:
                raise DataError(f"{self.index[batch['video'][b]]}: frame {int(idx.max())} asked, {len(arr)} cached")
            m = decode_maps(arr[idx])                                  # T'×5×H×W
            out.append(m.flip(-1) if bool(flips[b]) else m)
        maps = torch.stack(out)                                        # B×T'×5×H×W
        return {"final": maps[:, :, 0].contiguous(), "conspicuity": maps[:, :, 1:].transpose(1, 2).contiguous()}


# -- the reduced-scale teacher of the notebooks -----------------------------------------------------------------

class ReducedTeacher(NamedTuple):
    """What :func:`ensure_reduced_teacher` returns: the checkpoint and the cache; calling it is a
    :class:`CachedTeacher` on the cache (so it can be passed wherever a teacher is expected)."""

    checkpoint: Path
    cache: Path

    def __call__(self, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        teacher = _CACHED.get(self.cache)
        if teacher is None:
            teacher = _CACHED[self.cache] = CachedTeacher(self.cache)
        return teacher(batch)


_CACHED: dict[Path, CachedTeacher] = {}
REDUCED_VERSION = 2  # bump when the recipe below changes: it is part of the cache key


def _key_name(prefix: str, size: Sequence[int], fields: dict) -> tuple[str, str]:
    key = json.dumps({**fields, "size": list(size), "version": REDUCED_VERSION}, sort_keys=True)
    return key, f"{prefix}_{size[0]}x{size[1]}_{hashlib.sha1(key.encode()).hexdigest()[:10]}"


def _build_once(final: Path, key: str, build) -> Path:
    """Create ``final`` atomically with ``build(tmp)``; if another process wins the race, use its copy."""
    if (final / "key.json").is_file():
        return final
    try:
        with atomic_directory(final) as tmp:
            build(tmp)
            atomic_write_text(tmp / "key.json", key)
    except (FileExistsError, OSError) as exc:
        if (final / "key.json").is_file():
            return final
        raise UserError(f"{final}: could not be created ({exc})") from exc
    return final


# the reduced teacher's budget (notebooks 01, 04–06 share it through the cache): Adam steps, lr, and the lr
# multiplier of the 1×1 output convolutions (see tinyhd.teacher.train_hd2s)
REDUCED_STEPS, REDUCED_LR, REDUCED_HEAD_LR_MULT = 150, 3e-3, 30.0


@torch.no_grad()
def recalibrate_batchnorm(model: torch.nn.Module, data_root: str | os.PathLike, size: Sequence[int],
                          dataset: str = "dhf1k", clips_per_video: int = 3, batch_size: int = 4) -> torch.nn.Module:
    """Re-estimate every BatchNorm's running mean/variance as the plain average over evenly spaced train clips
    (forward passes in train mode, no gradient), then return the model in eval mode.

    After a few hundred steps from scratch the running statistics (momentum 0.1) still lag the weights, and
    the eval-mode maps come out nearly flat although the train-mode ones are not; recomputing the statistics
    for the final weights fixes that. Only the reduced-scale teacher uses it (a converged model does not need it).
    """
    from tinyhd.data import SaliencyClipDataset
    from tinyhd.preprocess import student_to_teacher_input
    from tinyhd.training import collate

    ds = SaliencyClipDataset(data_root, split="train", dataset=dataset, clip_len=16, size=tuple(size),
                             output="single", sampling="uniform", flip=False, clips_per_video=clips_per_video)
    if len(ds) == 0:
        raise UserError(f"{data_root}: no train clips to recalibrate BatchNorm on")
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the passes below
    model.train()
    device = next(model.parameters()).device
    for start in range(0, len(ds), batch_size):
        batch = collate([ds[i] for i in range(start, min(start + batch_size, len(ds)))])
        model(student_to_teacher_input(batch["clip"].to(device)))
    for m, momentum in zip(norms, saved):
        m.momentum = momentum
    return model.eval()


def ensure_reduced_hd2s(data_root: str | os.PathLike | None = None, size: Sequence[int] = (64, 96),
                        steps: int = REDUCED_STEPS, batch_size: int = 2, seed: int = 0, progress: bool = True,
                        lr: float = REDUCED_LR, head_lr_mult: float = REDUCED_HEAD_LR_MULT,
                        recalibrate: bool = True) -> Path:
    """The checkpoint of a small-budget HD2S trained from scratch on ``data_root``'s train split (cached).

    ``steps`` Adam steps (``lr``, the 1×1 output convolutions at ``head_lr_mult`` × ``lr``; the authors' recipe is
    lr 1e-3 and no multiplier, for thousands of steps from Kinetics weights; weight decay 2e-7, the multi-level KL of HD2S Eq. 5) at ``size``; no Kinetics
    initialisation (offline). ``None`` means the synthetic DHF1K-layout set. Keyed by the arguments under
    ``cache_dir()/teachers/`` and created atomically (two racing processes: the loser uses the winner's).
    Trained by :func:`tinyhd.teacher.train_hd2s`, i.e. the one trainer (:func:`tinyhd.training.train`,
    ``model: hd2s``); moving it there left the weights bit-identical, so ``REDUCED_VERSION`` stayed.
    """
    from tinyhd.synth import ensure_synthetic
    from tinyhd.teacher import HD2S, save_hd2s, train_hd2s

    data_root = Path(data_root) if data_root is not None else ensure_synthetic("dhf1k", progress=progress)
    key, name = _key_name("hd2s", size, {"data": str(data_root.resolve()), "steps": steps, "batch": batch_size,
                                         "seed": seed, "lr": lr,
                                         "head_lr_mult": head_lr_mult, "recalibrate": recalibrate})

    def build(tmp: Path) -> None:
        torch.manual_seed(seed)
        model = HD2S(pretrained_backbone=False)
        train_hd2s(model, data_root, steps=steps, size=size, batch_size=batch_size, seed=seed, lr=lr,
                   head_lr_mult=head_lr_mult, out_dir=tmp / "train", progress=progress)
        if recalibrate:  # BN statistics for the final weights (see recalibrate_batchnorm)
            recalibrate_batchnorm(model, data_root, size)
        save_hd2s(model, tmp / "hd2s.pt", steps=steps, data_root=str(data_root))

    return _build_once(cache_dir() / "teachers" / name, key, build) / "hd2s.pt"


def ensure_reduced_teacher(data_root: str | os.PathLike | None = None, aux_root: str | os.PathLike | None = None,
                           size: Sequence[int] = (64, 96), steps: int = REDUCED_STEPS, batch_size: int = 2,
                           seed: int = 0, aux_videos: int | None = 4, progress: bool = True,
                           lr: float = REDUCED_LR, head_lr_mult: float = REDUCED_HEAD_LR_MULT,
                           recalibrate: bool = True) -> ReducedTeacher:
    """A small-budget HD2S (:func:`ensure_reduced_hd2s`) and its teacher-map cache, built once.

    The reduced-scale stand-in for the authors' DHF1K-trained HD2S (no Kinetics weights offline, no GPU): the
    cache covers ``data_root``'s train split and the first ``aux_videos`` videos of ``aux_root`` (the unlabeled
    auxiliary set); ``None`` roots mean the synthetic sets of :func:`tinyhd.synth.ensure_synthetic`. Both the
    checkpoint and the cache are keyed by the arguments under ``cache_dir()/teachers/`` and created atomically.
    Returns ``(checkpoint, cache)``; the result is also callable as a :class:`CachedTeacher`.
    """
    from tinyhd.synth import ensure_synthetic
    from tinyhd.teacher import load_hd2s

    data_root = Path(data_root) if data_root is not None else ensure_synthetic("dhf1k", progress=progress)
    aux_root = Path(aux_root) if aux_root is not None else ensure_synthetic("kinetics", progress=progress)
    ckpt = ensure_reduced_hd2s(data_root, size, steps, batch_size, seed, progress, lr=lr,
                               head_lr_mult=head_lr_mult, recalibrate=recalibrate)
    key, name = _key_name("cache", size, {"aux": str(aux_root.resolve()), "aux_videos": aux_videos})

    def build(tmp: Path) -> None:
        model = load_hd2s(ckpt)  # cache exactly what was saved, BN in eval mode
        build_teacher_cache(model, data_root, tmp / "target", dataset="dhf1k", size=size, splits=("train",),
                            progress=progress)
        build_teacher_cache(model, aux_root, tmp / "aux", dataset="kinetics", size=size, splits=("train",),
                            max_videos=aux_videos, progress=progress)

    return ReducedTeacher(ckpt, _build_once(ckpt.parent / name, key, build))


# -- command line ----------------------------------------------------------------------------------------------

def _parse_size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise UserError(f"--size must look like HxW (e.g. 192x256), not {text!r}") from None
    return h, w


def cli_main(argv: list[str]) -> int:
    """``tinyhd cache-teacher CHECKPOINT DATA_ROOT --out DIR [--dataset dhf1k|kinetics] [--size 192x256] …``."""
    parser = argparse.ArgumentParser(prog="tinyhd cache-teacher", description=(
        "Run an HD2S teacher once over a dataset and store, for every frame, its final and four conspicuity "
        "maps (window of 16 frames ending at the frame) at the student's resolution. Resumes an interrupted run."))
    parser.add_argument("checkpoint", help="HD2S checkpoint: the authors' state dict or one saved by tinyhd")
    parser.add_argument("data_root", help="dataset folder (DHF1K/UCF/Hollywood2 or Kinetics-400 layout)")
    parser.add_argument("--out", required=True, help="cache folder (created; resumed if it exists)")
    parser.add_argument("--dataset", default="dhf1k", help="manifest name: dhf1k, ucf, hollywood2, kinetics")
    parser.add_argument("--splits", default="train", help="comma-separated splits (default: train)")
    parser.add_argument("--size", default="192x256", type=_parse_size, help="H×W of the student's input")
    parser.add_argument("--dtype", default="uint8", choices=("uint8", "float16"))
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--max-videos", type=int, default=None)
    args = parser.parse_args(argv)
    from tinyhd.teacher import load_hd2s

    model = load_hd2s(args.checkpoint)
    if torch.device(args.device).type == "cpu":
        from tinyhd.fast import keep_freed_memory

        # HD2S frees ~GBs of activations per batch; by default glibc returns them and the next batch re-faults
        # them: 1.4 M page faults per batch of 8 windows at 192×256, ~600 vs ~360 ms per window on 2 threads
        keep_freed_memory()
    out = build_teacher_cache(model, args.data_root, args.out, dataset=args.dataset, size=args.size,
                              splits=[s for s in args.splits.split(",") if s], dtype=args.dtype,
                              batch_size=args.batch_size, device=args.device, max_videos=args.max_videos)
    print(f"teacher maps cached in {out}")
    return 0
