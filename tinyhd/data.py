"""Clip datasets: labeled (DHF1K, UCF-Sports, Hollywood2 layouts) and unlabeled (Kinetics-400 layout).

What the paper and the authors' code do (TinyHD §4.1 "Training details"; architecture sheet (e)):

* inputs are 16 consecutive frames resized to 192×256 (``tinyhd.preprocess``: ImageNet normalisation,
  then bilinear resize with ``antialias=False``, exactly as the released weights expect);
* the only augmentation is a random horizontal flip (p = 0.5) shared by the clip, the maps and the
  fixations ("spatial resize and cropping do not lead to significant benefits");
* the authors' *validation* loader (loss monitoring) resizes to 200×355 and centre-crops 192×256 instead
  (architecture sheet (e) "Val"): ``SaliencyClipDataset(val_resize=VAL_RESIZE)``, the clip, the maps and the
  fixations alike; :func:`val_resize_for` scales it for reduced-size runs;
* MISO (``output="single"``) targets the clip's last frame; MIMO (``output="multi"``) all of its frames;
* one epoch = one random clip per video (``RandomClipSampler``), so ``len(ds)`` is the number of videos.

Choices of ours, documented here because the sources are silent:

* **Determinism.** The clip and flip of item ``i`` are a pure function of ``(seed, epoch, i)``
  (``set_epoch``), so a resumed training run sees exactly the clips it would have seen.
* **Short videos** (< ``clip_len`` frames; UCF-Sports has many) are padded *at the start* by repeating the
  first frame, as the authors' inference does for the first 15 frames of a video. A padded position's
  target is the target of the frame it repeats, and its ``frame_index`` is 0.
* **Fixations** are resized by moving every fixated pixel to the output pixel nearest its centre (pixel-centre
  mapping, the rule of ``tinyhd.metrics.other_fixation_map`` and of ``tinyhd evaluate``), so a fixation never
  vanishes when the map shrinks (two may merge into one pixel). GT maps are resized like the frames
  (bilinear, ``antialias=False``) and clamped to [0, 1].
* **Annotations are checked** as they are read: every map and fixation PNG must have its video's frame size,
  and, when the manifest gives ``frame_names`` (DHF1K: ``0001.png`` …), the files must be numbered 1..N
  without gaps, since frames and maps are paired by position. A bad file is a DataError naming it.
* **Grayscale** videos are replicated to three channels; odd frame sizes (e.g. 97×131) are simply resized.
* A video that decodes to fewer frames than it has maps is used up to its last frame, with a warning
  naming the file (``tinyhd verify-data`` lists such videos); later clips of it end at that frame too.
* **Which manifest.** A ``ROOT/manifest.yaml`` (synthetic sets) describes ROOT. With no ``dataset`` named the
  loaders use it (else DHF1K's / Kinetics-400's); a named ``dataset`` must be the same dataset as ROOT's own
  manifest (``dhf1k`` for a ``synthetic-dhf1k`` folder), otherwise the loaders refuse rather than guess.
* Whole decoded videos are kept in a small per-worker LRU cache when they are small (the synthetic sets);
  large ones are decoded from the start up to the clip's last frame on each access (frame-exact).
"""
from __future__ import annotations

import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from tinyhd.errors import DataError, UserError
from tinyhd.manifest import Manifest, VideoEntry, frame_name_problem, manifest_for_root
from tinyhd.preprocess import INPUT_SIZE, preprocess
from tinyhd.video import list_images, read_image, read_video, video_info

OUTPUTS = ("single", "multi")
SAMPLINGS = ("random", "uniform", "all")


@dataclass
class VideoGT:
    """A video's full-resolution ground truth, for evaluation."""

    video: str
    path: Path                 # the video file or frame folder
    maps: np.ndarray           # N×H×W float32 in [0, 1] (PNG / 255)
    fixations: np.ndarray      # N×H×W bool (nonzero pixel = fixated)


def clip_frame_indices(end: int, clip_len: int) -> np.ndarray:
    """Indices of the ``clip_len`` frames ending at ``end`` (inclusive); before frame 0, frame 0 repeats."""
    return np.maximum(np.arange(end - clip_len + 1, end + 1), 0).astype(np.int64)


def resize_maps(maps: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """T×H×W float maps -> T×h×w, bilinear without antialiasing (like the frames), clamped to [0, 1]."""
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    from torchvision.transforms.functional import InterpolationMode, resize

    return resize(maps, list(size), interpolation=InterpolationMode.BILINEAR, antialias=False).clamp_(0, 1)


def fixation_cells(rows: np.ndarray, cols: np.ndarray, src: Sequence[int],
                   size: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Output pixel (row, col) of each source pixel when an H×W fixation map is resized to ``size``.

    Pixel-centre mapping: the centre ``(r + 0.5)`` of source pixel ``r`` lands at ``(r + 0.5)·h/H`` in the
    output, and the fixation goes to the output pixel nearest that point (half-way ties round to even,
    like ``np.round``). This is ``tinyhd.metrics.other_fixation_map``'s rule, so the training targets and the
    evaluated fixations agree.
    """
    (h, w), (oh, ow) = (int(src[0]), int(src[1])), (int(size[0]), int(size[1]))
    yo = np.clip(np.round((rows + 0.5) * oh / h - 0.5), 0, oh - 1).astype(np.int64)
    xo = np.clip(np.round((cols + 0.5) * ow / w - 0.5), 0, ow - 1).astype(np.int64)
    return yo, xo


def resize_fixations(fix: np.ndarray, size: Sequence[int]) -> torch.Tensor:
    """T×H×W bool fixations -> T×h×w float {0, 1}: each fixated pixel lands in the output pixel nearest its
    centre (:func:`fixation_cells`), so none vanishes when the map shrinks."""
    t, h, w = fix.shape
    oh, ow = int(size[0]), int(size[1])
    out = torch.zeros((t, oh, ow), dtype=torch.float32)
    if (h, w) == (oh, ow):
        out[torch.from_numpy(fix)] = 1.0
        return out
    ti, yi, xi = np.nonzero(fix)
    yo, xo = fixation_cells(yi, xi, (h, w), (oh, ow))
    out[torch.from_numpy(ti), torch.from_numpy(yo), torch.from_numpy(xo)] = 1.0
    return out


VAL_RESIZE = (200, 355)  # H×W the authors' validation loader resizes to before its 192×256 centre crop


def val_resize_for(size: Sequence[int]) -> tuple[int, int]:
    """The authors' validation resize (200×355 for 192×256 clips) scaled to clips of ``size`` = (h, w):
    ``round(200·h/192)``, ``round(355·w/256)`` (halves up), so the crop keeps the same share of the frame."""
    h, w = int(size[0]), int(size[1])
    return (int(np.floor(VAL_RESIZE[0] * h / INPUT_SIZE[0] + 0.5)),
            int(np.floor(VAL_RESIZE[1] * w / INPUT_SIZE[1] + 0.5)))


def centre_crop_box(src: Sequence[int], size: Sequence[int]) -> tuple[int, int]:
    """(top, left) of the centred ``size`` window in an image of ``src`` = (H, W): ``round((H − h) / 2)``,
    as ``torchvision.transforms.functional.center_crop`` places it."""
    return int(round((int(src[0]) - int(size[0])) / 2.0)), int(round((int(src[1]) - int(size[1])) / 2.0))


def centre_crop(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """The centred ``size`` = (h, w) window of the last two dimensions of ``x`` (…×H×W -> …×h×w)."""
    top, left = centre_crop_box(x.shape[-2:], size)
    return x[..., top:top + int(size[0]), left:left + int(size[1])]


class _VideoCache:
    """LRU of whole decoded videos, only for videos up to ``max_bytes`` (per worker process)."""

    def __init__(self, capacity: int, max_bytes: int) -> None:
        self.capacity, self.max_bytes = capacity, max_bytes
        self.items: OrderedDict[str, np.ndarray] = OrderedDict()
        self.info: dict[str, dict] = {}

    def frames(self, path: Path, indices: np.ndarray, n_frames: int | None) -> np.ndarray:
        key = str(path)
        if key in self.items:
            self.items.move_to_end(key)
            return self._take(path, self.items[key], indices)
        if self.capacity > 0:
            if key not in self.info:
                self.info[key] = video_info(path)
            info = self.info[key]
            n = n_frames or info["frames"]
            if n * info["height"] * info["width"] * 3 <= self.max_bytes:
                video = read_video(path)
                self.items[key] = video
                if len(self.items) > self.capacity:
                    self.items.popitem(last=False)
                return self._take(path, video, indices)
        return read_video(path, indices=indices)

    @staticmethod
    def _take(path: Path, video: np.ndarray, indices: np.ndarray) -> np.ndarray:
        if indices.max() >= len(video):
            raise DataError(f"{path}: asked for frame {int(indices.max())} but only {len(video)} frames decode")
        return video[indices]


class _ClipDatasetBase(Dataset):
    """What the labeled and unlabeled datasets share: clip placement, flips, decoding, item layout."""

    def __init__(self, clip_len: int, size: Sequence[int] | None, output: str, sampling: str, flip: bool,
                 seed: int, clips_per_video: int, cache_videos: int, cache_mb: float) -> None:
        if output not in OUTPUTS:
            raise UserError(f"output must be one of {OUTPUTS}, not {output!r}")
        if sampling not in SAMPLINGS:
            raise UserError(f"sampling must be one of {SAMPLINGS}, not {sampling!r}")
        if clip_len < 1:
            raise UserError(f"clip_len must be at least 1, not {clip_len}")
        self.clip_len, self.output, self.sampling = int(clip_len), output, sampling
        self.size = tuple(size) if size is not None else None
        self.val_resize: tuple[int, int] | None = None  # resize to this, then centre-crop to size (labeled sets)
        self.flip, self.seed, self.clips_per_video = bool(flip), int(seed), int(clips_per_video)
        self.epoch = 0
        self._cache = _VideoCache(cache_videos, int(cache_mb * 2**20))
        self._clips: list[tuple[int, int]] | None = None  # (video index, end frame) for uniform/all

    # -- epoch and clip placement -------------------------------------------------------------------
    def set_epoch(self, epoch: int) -> None:
        """Random clips and flips are a pure function of (seed, epoch, index).

        Call it before iterating a DataLoader: worker processes copy the dataset when iteration starts, so
        ``persistent_workers=True`` loaders keep the epoch they started with.
        """
        self.epoch = int(epoch)

    def _rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch, int(index)])

    def _num_frames(self, v: int) -> int:
        raise NotImplementedError

    def _build_clips(self) -> list[tuple[int, int]]:
        clips = []
        for v in range(len(self.entries)):
            n = self._num_frames(v)
            first = min(self.clip_len, n) - 1
            if self.sampling == "all":
                ends = range(first, n)
            else:
                ends = sorted(set(np.linspace(first, n - 1, self.clips_per_video).round().astype(int).tolist()))
            clips += [(v, int(e)) for e in ends]
        return clips

    def __len__(self) -> int:
        if self.sampling == "random":
            return len(self.entries)
        if self._clips is None:
            self._clips = self._build_clips()
        return len(self._clips)

    def _place(self, index: int) -> tuple[int, int, bool]:
        """(video index, last frame of the clip, flip?) for item ``index``."""
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} clips")
        rng = self._rng(index)
        if self.sampling == "random":
            v = index
            n = self._num_frames(v)
            end = int(rng.integers(min(self.clip_len, n) - 1, n))
        else:
            v, end = self._clips[index]
        flip = bool(self.flip and rng.random() < 0.5)
        return v, end, flip

    # -- decoding -----------------------------------------------------------------------------------
    def _clip(self, entry: VideoEntry, idx: np.ndarray, n_frames: int | None, flip: bool) -> torch.Tensor:
        uniq, inverse = np.unique(idx, return_inverse=True)
        frames = self._cache.frames(entry.source, uniq, n_frames)[inverse]  # T×H×W×3 uint8
        if self.val_resize is not None:
            clip = centre_crop(preprocess(frames, self.val_resize), self.size).contiguous()  # 3×T×H'×W' -> 3×T×h×w
        else:
            clip = preprocess(frames, self.size)  # 3×T×h×w
        return clip.flip(-1) if flip else clip

    def _target_indices(self, idx: np.ndarray) -> np.ndarray:
        return idx[-1:] if self.output == "single" else idx

    def _out_size(self, entry: VideoEntry) -> tuple[int, int]:
        if self.size is not None:
            return self.size
        info = self._cache.info.get(str(entry.source)) or video_info(entry.source)
        return info["height"], info["width"]


class SaliencyClipDataset(_ClipDatasetBase):
    """Clips with GT maps and fixations from a labeled dataset in the DHF1K, UCF-Sports or Hollywood2 layout.

    ``dataset`` names the manifest (``dhf1k``, ``ucf``, ``hollywood2``); None: ``ROOT/manifest.yaml`` when ROOT
    has one (synthetic sets), else DHF1K's. A named dataset must match ROOT's own manifest if it has one
    (a UserError otherwise). ``variant`` picks a layout variant (e.g. ``"frames"``), detected when None.
    ``sampling``: ``"random"`` one random clip per video per epoch, ``"uniform"`` ``clips_per_video``
    evenly spaced clips, ``"all"`` every clip (step 1). ``videos``/``max_videos`` select a subset.
    ``val_resize`` = (H', W'): resize the frames, maps and fixations to H'×W' (at least ``size``), then take
    the centred ``size`` window of each, as the authors' validation loader does (:data:`VAL_RESIZE`,
    :func:`val_resize_for`); fixations outside the window are dropped. None (default): resize to ``size``.
    """

    def __init__(self, root: str | os.PathLike, split: str = "train", dataset: str | None = None, clip_len: int = 16,
                 size: Sequence[int] | None = INPUT_SIZE, output: str = "single", sampling: str = "random",
                 flip: bool = True, seed: int = 0, clips_per_video: int = 5, variant: str | None = None,
                 videos: Sequence[str] | None = None, max_videos: int | None = None, cache_videos: int = 4,
                 cache_mb: float = 64.0, val_resize: Sequence[int] | None = None) -> None:
        super().__init__(clip_len, size, output, sampling, flip, seed, clips_per_video, cache_videos, cache_mb)
        if val_resize is not None:
            val_resize = tuple(int(v) for v in val_resize)
            if self.size is None or len(val_resize) != 2 or not (val_resize[0] >= self.size[0]
                                                                 and val_resize[1] >= self.size[1]):
                raise UserError(f"val_resize {val_resize} must be (H, W) at least as large as size {self.size} "
                                f"(resize, then centre-crop to size)")
            self.val_resize = val_resize
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise DataError(f"{self.root}: dataset folder does not exist")
        self.manifest: Manifest = manifest_for_root(self.root, dataset, refuse_other=True, default="dhf1k")
        if not self.manifest.labeled:
            raise UserError(f"{self.manifest.path}: {self.manifest.name} is unlabeled; use UnlabeledClipDataset")
        self.split = split
        self.variant = variant or self.manifest.detect_variant(self.root)
        entries = self.manifest.videos(self.root, split, self.variant)
        self.annotated = self.manifest.splits[split].annotated
        entries = _select(entries, videos, max_videos, self.root, split)
        self.entries: list[VideoEntry] = entries
        self._map_files: dict[int, tuple[list[Path], list[Path]]] = {}
        self._n: dict[int, int] = {}        # frames usable: the map count, or fewer if the video decodes fewer
        self._n_maps: dict[int, int] = {}   # the map count itself
        self._short: set[int] = set()       # videos found to decode fewer frames than their maps
        for v, e in enumerate(entries):
            if not e.source.exists():
                raise DataError(f"{e.source}: missing {'frame folder' if not e.source.suffix else 'video'} "
                                f"(split {split!r}; run `tinyhd verify-data` on {self.root}; for a partial copy, "
                                f"limit the run to the first videos: max_videos / val_videos in a training config, "
                                f"--max-videos for evaluate)")
            if self.annotated:
                maps, fix = list_images(e.maps), list_images(e.fixations)
                if not maps:
                    raise DataError(f"{e.maps}: no GT maps")
                if self.manifest.frame_names:  # names only: cheap, and catches a gap that would shift every map
                    for folder, files in ((e.maps, maps), (e.fixations, fix)):
                        problem = frame_name_problem([f.name for f in files], self.manifest.frame_names)
                        if problem:
                            raise DataError(f"{folder}: {problem} (run `tinyhd verify-data` on {self.root})")
                if len(maps) != len(fix):
                    raise DataError(f"{e.fixations}: {len(fix)} fixation maps but {len(maps)} GT maps in {e.maps}")
                self._map_files[v] = (maps, fix)
                self._n[v] = self._n_maps[v] = len(maps)

    @property
    def video_ids(self) -> list[str]:
        return [e.id for e in self.entries]

    def video_path(self, video: str) -> Path:
        return self._entry(video)[1].source

    def _entry(self, video: str) -> tuple[int, VideoEntry]:
        for v, e in enumerate(self.entries):
            if e.id == video:
                return v, e
        raise UserError(f"{self.root}: no video {video!r} in split {self.split!r}")

    def _num_frames(self, v: int) -> int:
        if v not in self._n:
            e = self.entries[v]
            self._n[v] = self.entries[v].frames or video_info(e.source)["frames"]
            if self._n[v] < 1:
                raise DataError(f"{e.source}: video has no frames")
        return self._n[v]

    def _shorter_video(self, v: int) -> int:
        """The video decodes to fewer frames than it has maps: clamp to what both have, with a warning (once).

        Afterwards ``_num_frames(v)`` is the decodable count and ``__getitem__`` ends every clip of the video
        there, so clips placed with the map count (uniform/all sampling) still load.
        """
        import warnings

        from tinyhd.video import count_frames

        e = self.entries[v]
        n_want = self._n_maps.get(v, self._num_frames(v))  # the maps, or the header's count (no annotations)
        claim = f"{e.maps} has {n_want} maps" if v in self._n_maps else f"its header claims {n_want} frames"
        n = count_frames(e.source)
        if n < 1 or n >= n_want:
            raise DataError(f"{e.source}: cannot decode the frames a clip needs ({n} frames decode; {claim}; "
                            f"run `tinyhd verify-data` on {self.root})")
        warnings.warn(f"{e.source}: {n} frames decode but {claim}; "
                      f"using the first {n} (run `tinyhd verify-data` on {self.root})", stacklevel=3)
        self._n[v] = n
        self._short.add(v)
        return n

    def _frame_size(self, v: int) -> tuple[int, int]:
        """(height, width) of the video's frames, from its header (cached): the size its annotations must have."""
        e = self.entries[v]
        key = str(e.source)
        if key not in self._cache.info:
            self._cache.info[key] = video_info(e.source)
        info = self._cache.info[key]
        return int(info["height"]), int(info["width"])

    def _read_labels(self, v: int, files: Sequence[Path], what: str) -> np.ndarray:
        """N×H×W uint8 images read one by one, each checked against the video's frame size (a DataError names
        the first file of another size, rather than failing later on a bare shape mismatch)."""
        want = self._frame_size(v)
        out = np.empty((len(files), *want), dtype=np.uint8)
        for i, p in enumerate(files):
            img = read_image(p, grayscale=True)
            if img.shape != want:
                raise DataError(f"{p}: {what} is {img.shape[0]}×{img.shape[1]} but the frames of "
                                f"{self.entries[v].source} are {want[0]}×{want[1]} "
                                f"(run `tinyhd verify-data` on {self.root})")
            out[i] = img
        return out

    def ground_truth(self, video: str) -> VideoGT:
        """A video's maps (float [0, 1]) and fixations (bool) at full resolution, every frame."""
        v, e = self._entry(video)
        if not self.annotated:
            raise UserError(f"{self.root}: split {self.split!r} has no annotations")
        maps, fix = self._map_files[v]
        m = self._read_labels(v, maps, "map").astype(np.float32) / 255.0  # N×H×W
        f = self._read_labels(v, fix, "fixation map") > 0                 # N×H×W
        return VideoGT(e.id, e.source, m, f)

    def frames(self, video: str) -> np.ndarray:
        """All decoded frames of a video, N×H×W×3 uint8 RGB."""
        return read_video(self.video_path(video))

    def __getitem__(self, index: int) -> dict[str, Any]:
        v, end, flip = self._place(index)
        e = self.entries[v]
        if v in self._short:  # clips placed with the map count end at the last frame that decodes
            end = min(end, self._n[v] - 1)
        idx = clip_frame_indices(end, self.clip_len)
        try:
            clip = self._clip(e, idx, self._n.get(v), flip)
        except DataError:
            if v in self._short:
                raise
            # fewer decodable frames than GT maps: warn once, then use the frames both have
            n = self._shorter_video(v)
            idx = clip_frame_indices(min(end, n - 1), self.clip_len)
            clip = self._clip(e, idx, n, flip)
        tgt = self._target_indices(idx)
        h, w = clip.shape[-2:]
        if self.annotated:
            maps_f, fix_f = self._map_files[v]
            uniq, inverse = np.unique(tgt, return_inverse=True)
            maps = self._read_labels(v, [maps_f[i] for i in uniq], "map")[inverse]                 # T×H×W
            fix = self._read_labels(v, [fix_f[i] for i in uniq], "fixation map")[inverse] > 0     # T×H×W
            to = self.val_resize or (h, w)  # resize to the clip's size, or to val_resize then crop like the clip
            sal = centre_crop(resize_maps(torch.from_numpy(maps.astype(np.float32) / 255.0), to), (h, w))
            fixation = centre_crop(resize_fixations(fix, to), (h, w))
            if flip:
                sal, fixation = sal.flip(-1), fixation.flip(-1)
        else:
            sal = torch.zeros((len(tgt), h, w))
            fixation = torch.zeros((len(tgt), h, w))
        return {
            "clip": clip,
            "saliency": sal.contiguous(),
            "fixation": fixation.contiguous(),
            "has_sal": torch.tensor(self.annotated),
            "video": e.id,
            "frame_index": torch.from_numpy(tgt.copy()),
            "flip": torch.tensor(flip),
        }

    def __repr__(self) -> str:
        return (f"SaliencyClipDataset({self.manifest.name}, split={self.split!r}, videos={len(self.entries)}, "
                f"clips={len(self)}, clip_len={self.clip_len}, size={self.size}, "
                f"{f'val_resize={self.val_resize}, ' if self.val_resize else ''}output={self.output!r}, "
                f"sampling={self.sampling!r}, layout={self.variant!r}, root={str(self.root)!r})")


class UnlabeledClipDataset(_ClipDatasetBase):
    """Clips without saliency from a Kinetics-400-layout folder (``train_256/<class>/<id>.mp4``).

    Items have the labeled dataset's keys so batches collate together; ``has_sal`` is False and the
    saliency/fixation tensors are zeros of the right shape. The teacher supplies their targets. ``dataset``:
    as for :class:`SaliencyClipDataset`, Kinetics-400's manifest when None and ROOT has none of its own.
    """

    def __init__(self, root: str | os.PathLike, clip_len: int = 16, size: Sequence[int] | None = INPUT_SIZE,
                 output: str = "single", seed: int = 0, split: str = "train", dataset: str | None = None,
                 sampling: str = "random", flip: bool = True, clips_per_video: int = 5,
                 max_videos: int | None = None, videos: Sequence[str] | None = None, cache_videos: int = 4,
                 cache_mb: float = 64.0) -> None:
        super().__init__(clip_len, size, output, sampling, flip, seed, clips_per_video, cache_videos, cache_mb)
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise DataError(f"{self.root}: dataset folder does not exist")
        self.manifest = manifest_for_root(self.root, dataset, refuse_other=True, default="kinetics400")
        self.split = split
        self.variant = self.manifest.detect_variant(self.root)
        entries = self.manifest.videos(self.root, split, self.variant)
        self.entries = _select(entries, videos, max_videos, self.root, split)
        self._n: dict[int, int] = {}

    @property
    def video_ids(self) -> list[str]:
        return [e.id for e in self.entries]

    def _num_frames(self, v: int) -> int:
        if v not in self._n:
            e = self.entries[v]
            n = e.frames or video_info(e.source)["frames"]
            if n < 1:  # some containers do not store a frame count
                from tinyhd.video import count_frames

                n = count_frames(e.source)
            if n < 1:
                raise DataError(f"{e.source}: no frame decodes")
            self._n[v] = n
        return self._n[v]

    def __getitem__(self, index: int) -> dict[str, Any]:
        v, end, flip = self._place(index)
        e = self.entries[v]
        end = min(end, self._num_frames(v) - 1)  # a recount (below) may have shortened the video since placement
        idx = clip_frame_indices(end, self.clip_len)
        try:
            clip = self._clip(e, idx, self._n.get(v), flip)
        except DataError:
            # the container over-stated its length (common for web videos): use what really decodes
            from tinyhd.video import count_frames

            n = count_frames(e.source)
            if n < 1:
                raise
            self._n[v] = n
            idx = clip_frame_indices(min(end, n - 1), self.clip_len)
            clip = self._clip(e, idx, n, flip)
        tgt = self._target_indices(idx)
        h, w = clip.shape[-2:]
        return {
            "clip": clip,
            "saliency": torch.zeros((len(tgt), h, w)),
            "fixation": torch.zeros((len(tgt), h, w)),
            "has_sal": torch.tensor(False),
            "video": e.id,
            "frame_index": torch.from_numpy(tgt.copy()),
            "flip": torch.tensor(flip),
        }

    def __repr__(self) -> str:
        return (f"UnlabeledClipDataset({self.manifest.name}, split={self.split!r}, videos={len(self.entries)}, "
                f"clip_len={self.clip_len}, size={self.size}, output={self.output!r}, root={str(self.root)!r})")


class MixedClipDataset(Dataset):
    """A target-dataset epoch plus ``ratio`` auxiliary clips per target clip (the authors' sampler mixes
    600 DHF1K clips with 600 Kinetics clips per epoch, ratio 1; UCF-Sports uses 1 : 10).

    Items ``0 .. len(target)-1`` are the target's; the rest are auxiliary clips whose video is drawn
    from ``(seed, epoch, index)``, so the auxiliary set may hold more videos than an epoch uses. Shuffle
    with the DataLoader.
    """

    def __init__(self, target: _ClipDatasetBase, aux: _ClipDatasetBase, ratio: float = 1.0, seed: int = 0) -> None:
        if ratio < 0:
            raise UserError(f"aux ratio must be >= 0, not {ratio}")
        if len(aux) == 0 and ratio > 0:
            raise DataError(f"{getattr(aux, 'root', 'auxiliary dataset')}: no auxiliary videos")
        self.target, self.aux, self.ratio, self.seed = target, aux, float(ratio), int(seed)
        self.n_aux = int(round(self.ratio * len(target)))
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        self.target.set_epoch(epoch)
        self.aux.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.target) + self.n_aux

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} clips")
        if index < len(self.target):
            return self.target[index]
        j = index - len(self.target)
        rng = np.random.default_rng([self.seed, self.epoch, j, 1])
        return self.aux[int(rng.integers(0, len(self.aux)))]


def _select(entries: list[VideoEntry], videos: Sequence[str] | None, max_videos: int | None, root: Path,
            split: str) -> list[VideoEntry]:
    if videos is not None:
        wanted = [str(v) for v in videos]
        by_id = {e.id: e for e in entries}
        missing = [v for v in wanted if v not in by_id]
        if missing:
            raise UserError(f"{root}: split {split!r} has no video(s) {', '.join(missing)}")
        entries = [by_id[v] for v in wanted]
    if max_videos is not None:
        entries = entries[: int(max_videos)]
    if not entries:
        raise DataError(f"{root}: split {split!r} has no videos")
    return entries


def list_videos(root: str | os.PathLike, split: str, dataset: str | None = None,
                variant: str | None = None) -> list[str]:
    """The video ids of a split, as the loaders see them (``dataset`` as for :class:`SaliencyClipDataset`)."""
    root = Path(root)
    m = manifest_for_root(root, dataset, refuse_other=True, default="dhf1k")
    return [e.id for e in m.videos(root, split, variant or m.detect_variant(root))]
