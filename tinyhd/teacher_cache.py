"""Teacher maps computed once and read back: ``tinyhd cache-teacher``, :class:`CachedTeacher`.

Distilling TinyHD-M from HD2S costs 16 teacher forwards per training sample (one 16-frame window per target
frame, TinyHD sheet (f) / HD2S sheet §12) — about 354 GMAC at 192×256, minutes per sample on a CPU. The
teacher is frozen, so its maps depend only on the video, the frame and the resolution: we run it once over a
dataset and store, for **every frame t of every video, the maps of the window ending at t** (frames before 0
repeat frame 0, exactly like :func:`tinyhd.data.clip_frame_indices` pads clips), at the student's resolution.

Layout of a cache folder (one per dataset)::

    meta.json            format, dataset (the manifest used), split(s), size, dtype, encoding, model fingerprint,
                         HD2S_DSL domain (null for HD2S), window rule
    <video id>.npy       N×5×H×W per video: channel 0 = final map, 1..4 = conspicuity maps (levels 2, 3, 4, 5)
    <video id>.flip.npy  the same for the horizontally mirrored video (HD2S run on mirrored frames), unless the
                         cache was built with ``flipped=False`` (``--no-flipped``)
    sources.json         per video: what it was computed from (file size or frame-file count, frames cached);
                         updated after every video, and merged across runs (a run over fewer videos keeps the others)
    complete             written last: the cache is finished (the number of videos recorded)

* **Compact.** ``uint8`` (default) stores q = ⌊256·m⌋ clipped to 255 and reads back (q + ½)/256: error ≤ 1/512,
  and read-back maps stay strictly inside (0, 1) as the KL losses want. ``float16`` is also available.
  Files are memory-mapped at read time, so a batch touches only its frames.
* **Flip.** Training flips clips at random (p = ½), and the authors' wrapper runs the teacher on the flipped
  clip (sheet §12). HD2S is far from mirror-equivariant (its kernels are not symmetric): on the reduced HD2S,
  mirroring its maps instead of running it on the mirrored clip gives CC 0.76–0.91 with the real thing and
  differences up to 0.85 (``benchmarks/distill_step.py`` prints it). So by default the cache also stores the
  maps of the mirrored video (twice the time and space) and a flipped clip reads those: exactly the authors'
  targets. A cache built with ``flipped=False`` mirrors its maps for flipped clips, with a warning.
* **Atomic and resumable.** Every ``.npy`` is written through :func:`tinyhd.paths.atomic_open`; a rerun (after
  checking ``meta.json`` matches) skips the videos already there whose ``sources.json`` record still matches the
  video (its signature and frame count), and recomputes the others, saying so on stderr: an interrupted build just
  continues, and a rerun over another copy of the dataset does not keep maps of other videos. The inputs are all
  checked before anything is written, so a failed command leaves the folder free for the corrected one; an
  existing non-empty folder that is not a teacher cache is refused (its files are not ours to replace).
* **One domain.** An ``HD2S_DSL`` has per-domain priors, BatchNorms and fusion: the domain to cache must be named
  (``--domain``); it is recorded in ``meta.json`` and hashed into the model fingerprint.
* **Checked when read.** :class:`CachedTeacher` checks each ``.npy`` header once (shape, channels, dtype against
  ``meta.json``) and ``float16`` values on the frames it reads; a damaged file is a ``DataError`` naming it.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, NamedTuple, Sequence

import numpy as np
import torch

from tinyhd.cli import parse_size as _parse_size  # noqa: F401  (--size; the tests reach it here)
from tinyhd.errors import DataError, UserError
from tinyhd.paths import atomic_directory, atomic_open, atomic_write_text, cache_dir

if TYPE_CHECKING:
    from tinyhd.manifest import Manifest, VideoEntry

FORMAT = "tinyhd-teacher-cache/1"
FLIP_SUFFIX = ".flip.npy"   # <video id>.flip.npy: the maps of the mirrored video
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


def model_fingerprint(model: torch.nn.Module, domain: str | None = None) -> str:
    """sha1 of the model's state dict (names, shapes and values) and, for an HD2S_DSL, of the domain it runs in:
    a cache belongs to one set of weights used one way (None leaves a plain HD2S's fingerprint as it always was)."""
    h = hashlib.sha1()
    for k, v in model.state_dict().items():
        h.update(k.encode())
        h.update(str(tuple(v.shape)).encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    if domain is not None:
        h.update(f"domain={domain}".encode())
    return h.hexdigest()[:16]


def checked_domain(model: torch.nn.Module, domain: str | None, what: str = "teacher model") -> str | None:
    """The domain an HD2S_DSL is to run in, spelled as in the model (matched ignoring case); None for a model
    without domains. ``what`` names the model in errors (e.g. the checkpoint's path).

    Its domains differ in their priors, BatchNorms and fusion, so an HD2S_DSL without a domain is refused rather
    than silently run in its first one; a domain given for a model that has none is refused too."""
    from tinyhd.teacher import HD2S_DSL

    if not isinstance(model, HD2S_DSL):
        if domain is not None:
            raise UserError(f"{what}: {type(model).__name__} has no domains, but domain {domain!r} was given "
                            f"(only an HD2S_DSL checkpoint takes --domain)")
        return None
    domains = list(model.domains)
    if domain is None:
        raise UserError(f"{what}: an HD2S_DSL with domains {', '.join(domains)}; name the one to cache with "
                        f"--domain (its priors, BatchNorms and fusion differ per domain)")
    match = [d for d in domains if d.lower() == str(domain).lower()]
    if not match:
        raise UserError(f"{what}: unknown domain {domain!r}; this HD2S_DSL has {', '.join(domains)}")
    return match[0]


# -- building --------------------------------------------------------------------------------------------------

def _manifest(dataset_root: Path, dataset: str | None) -> "Manifest":
    """The manifest that lists ``dataset_root``'s videos: the folder's own ``manifest.yaml`` when it has one
    (``dataset``, if given, must then name the same dataset), else the named one (default ``dhf1k``)."""
    from tinyhd.manifest import manifest_for_root

    if dataset is None and not (dataset_root / "manifest.yaml").is_file():
        dataset = "dhf1k"
    return manifest_for_root(dataset_root, dataset, refuse_other=True)


def _entries(m: "Manifest", dataset_root: Path, splits: Sequence[str],
             max_videos: int | None) -> "list[VideoEntry]":
    """The videos to cache: the first ``max_videos`` of each split (all if None), every source checked to exist."""
    if not splits:
        raise UserError(f"{dataset_root}: no split given (e.g. train)")
    variant = m.detect_variant(dataset_root)
    out = []
    for split in splits:
        if split not in m.splits:
            raise UserError(f"{dataset_root}: {m.name} has no split {split!r} (it has {', '.join(m.splits)})")
        entries = m.videos(dataset_root, split, variant)
        out += entries[:max_videos] if max_videos is not None else entries
    if not out:
        raise DataError(f"{dataset_root}: no videos in split(s) {', '.join(splits)}")
    missing = [e.source for e in out if not e.source.exists()]
    if missing:
        raise DataError(f"{dataset_root}: {len(missing)} of the {len(out)} videos of split(s) {', '.join(splits)} "
                        f"are missing (first: {missing[0]}); check the copy with `tinyhd verify-data`, or cache "
                        f"only the first videos of each split with --max-videos N")
    return out


def _flip_path(path: Path) -> Path:
    """``<video id>.npy`` -> ``<video id>.flip.npy``."""
    return path.with_name(path.name[:-len(".npy")] + FLIP_SUFFIX)


def _video_maps(model: torch.nn.Module, frames: np.ndarray, size: Sequence[int], batch_size: int,
                device: torch.device, domain: str | None = None, mirrored: bool = False) -> torch.Tensor:
    """HD2S maps for every frame of a video: N×5×H×W (final, conspicuity 2..5), window ending at each frame
    (an HD2S_DSL runs in ``domain``); ``mirrored``: of the horizontally mirrored video, as a flipped clip is."""
    from tinyhd.preprocess import preprocess, student_to_teacher_input
    from tinyhd.teacher import window_indices

    x = student_to_teacher_input(preprocess(frames, tuple(size)))     # 3×N×H×W, exactly the clip pipeline
    x = x.flip(-1) if mirrored else x
    win = window_indices(range(len(frames)))                          # N×16
    out = []
    with torch.inference_mode():
        for i in range(0, len(win), batch_size):
            clips = x[:, win[i:i + batch_size]].permute(1, 0, 2, 3, 4)  # b×3×16×H×W
            o = model(clips.to(device)) if domain is None else model(clips.to(device), domain)
            out.append(torch.cat([o.saliency, o.conspicuity], dim=1).cpu())  # b×5×H×W
    return torch.cat(out)


def _meta(dataset: str, splits: Sequence[str], size: Sequence[int], dtype: str, fingerprint: str,
          domain: str | None = None, flipped: bool = True) -> dict:
    return {"format": FORMAT, "dataset": dataset, "splits": list(splits), "size": [int(size[0]), int(size[1])],
            "dtype": dtype, "encoding": "uint8: (q+0.5)/256" if dtype == "uint8" else "float16",
            "channels": list(CHANNELS), "window": "16 frames ending at each frame; frame 0 repeats before the start",
            "model": fingerprint, "domain": domain, "flipped": bool(flipped)}


def _read_json_object(path: Path) -> dict:
    """A cache's JSON file (``meta.json``, ``sources.json``) as a dict; a :class:`~tinyhd.errors.DataError` naming
    the file if it is unreadable or not a JSON object."""
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON ({exc})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot be read ({exc})") from None
    if not isinstance(meta, dict):
        raise DataError(f"{path}: expected a JSON object, found a {type(meta).__name__}")
    return meta


def _same_setting(key: str, old: Any, new: Any) -> bool:
    """Whether a recorded ``meta.json`` field matches; ``dataset`` compares names, not spellings (older versions
    recorded the name given, e.g. ``dhf1k`` for a synthetic DHF1K-layout set, now ``synthetic-dhf1k``)."""
    if key == "dataset" and isinstance(old, str) and isinstance(new, str):
        from tinyhd.manifest import dataset_key

        return dataset_key(old) == dataset_key(new)
    if key == "flipped":   # caches from before mirrored maps existed have no such field: they hold none
        return bool(old) == bool(new)
    return old == new


def _meta_is_current(out: Path, meta: dict) -> bool:
    """Whether ``out/meta.json`` already describes ``meta`` (then a run resumes). One that differs or is unreadable
    is refused while the folder holds maps, and is to be replaced when it holds none (it came from a run that
    stored nothing)."""
    path = out / "meta.json"
    if not path.is_file():
        return False
    holds_maps = next(out.rglob("*.npy"), None) is not None
    try:
        old = _read_json_object(path)
    except DataError as exc:
        if holds_maps:
            raise DataError(f"{exc}; the folder holds teacher maps of unknown settings: use another folder") from None
        return False
    diff = [k for k in meta if not _same_setting(k, old.get(k), meta[k])]
    if diff and holds_maps:
        hint = ("; to resume it, build without the mirrored videos' maps (--no-flipped, flipped=False)"
                if diff == ["flipped"] and not old.get("flipped") else "")
        raise UserError(f"{out}: holds a teacher cache built with different {', '.join(diff)} "
                        f"({', '.join(f'{k}={old.get(k)!r}' for k in diff)}); use another folder{hint}")
    return not diff


def _refuse_foreign_folder(out: Path) -> None:
    """Refuse an existing, non-empty ``out`` that is not a teacher cache (no ``meta.json`` of ours): a
    ``<video id>.npy`` there would otherwise be taken for a damaged map and replaced."""
    if not out.is_dir():
        return
    contents = sorted(p.name for p in out.iterdir())
    if not contents:
        return
    shown = ", ".join(contents[:5]) + (f", … ({len(contents)} entries)" if len(contents) > 5 else "")
    meta = out / "meta.json"
    if not meta.is_file():
        raise UserError(f"{out}: not empty and not a teacher cache (no meta.json); it holds {shown}. Give a new or "
                        f"empty folder to --out: files there may be replaced")
    try:
        fmt = _read_json_object(meta).get("format")
    except DataError as exc:
        others = [n for n in contents if n not in ("meta.json", "complete", SOURCES)]
        if others:  # with maps, _meta_is_current refuses it too; without, only a bare meta.json may be replaced
            raise DataError(f"{exc}; the folder also holds {', '.join(others[:5])}: it is not a teacher cache to "
                            f"resume, use another folder") from None
        return
    if fmt != FORMAT:
        raise UserError(f"{meta}: not a teacher cache's (format {fmt!r}, expected {FORMAT!r}); {out} holds {shown}. "
                        f"Give a new or empty folder to --out")


def _read_sources(path: Path) -> dict[str, dict[str, int]]:
    """A cache's ``sources.json``: video id -> signature (:func:`source_signature` + ``frames``); a
    :class:`~tinyhd.errors.DataError` naming the file if it is unreadable or a record is not an object."""
    records = _read_json_object(path)
    bad = [k for k, v in records.items() if not isinstance(v, dict)]
    if bad:
        raise DataError(f"{path}: the record of video {bad[0]!r} is {records[bad[0]]!r}, expected an object "
                        f"such as {{\"bytes\": 123, \"frames\": 20}}")
    return records


def _existing_records(out: Path, started: bool) -> tuple[dict[str, dict[str, int]], bool]:
    """What a resumed cache recorded (``sources.json``) and whether it is a legacy cache (maps, no ``sources.json``:
    built before it existed). An unreadable ``sources.json`` counts as no record (its maps get recomputed)."""
    if not started:
        return {}, False
    path = out / SOURCES
    if not path.is_file():
        return {}, True
    try:
        return _read_sources(path), False
    except DataError as exc:
        print(f"{exc}: the maps already cached are recomputed", file=sys.stderr)
        return {}, False


def _stale_reason(path: Path, record: Mapping[str, int] | None, source: Path, signature: Mapping[str, int],
                  size: Sequence[int], dtype: str, flipped: bool = False) -> str | None:
    """Why a cached ``path`` cannot be kept (None: it can): no record of its source, unreadable or of another
    shape, fewer/more frames than recorded, (``flipped``) no readable mirrored maps of as many frames beside it,
    or recorded from a video whose signature differs from ``source``'s."""
    if record is None:
        return f"not recorded in {SOURCES} (what it was computed from is unknown)"
    try:
        n = len(_open_maps(path, size, np.dtype(dtype)))
    except DataError as exc:
        return str(exc).removeprefix(f"{path}: ").split("; delete it")[0]
    if record.get("frames") != n:
        return f"holds {n} frames but {SOURCES} recorded {record.get('frames')!r}"
    if flipped:
        fpath = _flip_path(path)
        if not fpath.is_file():
            return f"has no maps of the mirrored video ({fpath.name})"
        try:
            n_flip = len(_open_maps(fpath, size, np.dtype(dtype)))
        except DataError as exc:
            return str(exc).split("; delete it")[0]
        if n_flip != n:
            return f"{fpath.name} holds {n_flip} frames, {path.name} {n}"
    if any(record.get(k) != v for k, v in signature.items()):
        return (f"cached from a video with {_describe_signature(record)}, but {source} has "
                f"{_describe_signature(signature)} (another copy or version of the video)")
    return None


def _start_cache(out: Path, meta: dict) -> None:
    """Create ``out`` and write its ``meta.json`` and an empty ``sources.json`` (dropping a ``complete`` left by a
    run that stored no maps): from the start, every map the cache holds is recorded, or is recomputed."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "complete").unlink(missing_ok=True)
    atomic_write_text(out / "meta.json", json.dumps(meta, indent=1))
    atomic_write_text(out / SOURCES, json.dumps({}))


def build_teacher_cache(teacher_model: torch.nn.Module, dataset_root: str | os.PathLike, out: str | os.PathLike,
                        dataset: str | None = None, size: Sequence[int] = (192, 256),
                        splits: Sequence[str] = ("train",), dtype: str = "uint8", batch_size: int = 8,
                        device: str | torch.device = "cpu", max_videos: int | None = None,
                        progress: bool = True, domain: str | None = None, flipped: bool = True) -> Path:
    """Run ``teacher_model`` (an HD2S) once over ``splits`` of a dataset and store its maps under ``out``.

    ``flipped`` (default): also the maps of each horizontally mirrored video (``<id>.flip.npy``), the exact
    targets of flipped training clips (twice the time and space); without them flipped clips get mirrored maps.

    ``dataset`` names the manifest (``dhf1k``, ``kinetics``, ...); None means ``dataset_root/manifest.yaml`` if
    the folder has one, else ``dhf1k``. A name that contradicts the folder's own manifest is refused.
    ``max_videos`` caps the videos taken from each split. ``domain`` is required for an HD2S_DSL (one of its
    domains) and refused for other models (:func:`checked_domain`).

    Every argument, the folder, the splits and the videos' presence are checked before anything is written; the
    folder and its ``meta.json`` are created when the first map is about to be stored, so a run that fails
    earlier leaves nothing behind (a ``meta.json`` without any maps, left by older versions, is replaced). An
    existing non-empty ``out`` that is not a teacher cache is refused.
    Resumable: a video already cached is skipped when its ``sources.json`` record matches the video (signature
    and frame count) and recomputed otherwise (a note on stderr); the records of videos outside this run are
    kept. A cache built with other settings, weights or domain is refused (a :class:`~tinyhd.errors.UserError`
    naming the differing field). A cache from before ``sources.json`` gets its maps recorded as they are (they
    cannot be checked). Returns ``out``.
    """
    from tqdm.auto import tqdm

    from tinyhd.inference import checked_device
    from tinyhd.video import read_video

    dataset_root, out = Path(dataset_root).expanduser(), Path(out).expanduser()
    splits = (splits,) if isinstance(splits, str) else tuple(splits)   # "train" is one split, not five letters
    size = (int(size[0]), int(size[1]))
    if min(size) <= 0 or size[0] % 32 or size[1] % 32:
        raise UserError(f"teacher cache size {size[0]}×{size[1]}: HD2S needs positive multiples of 32")
    encode_maps(torch.zeros(1), dtype)  # validates dtype
    if batch_size < 1:
        raise UserError(f"batch size must be at least 1, not {batch_size}")
    if max_videos is not None and max_videos < 1:
        raise UserError(f"max videos (per split) must be at least 1, not {max_videos}")
    device = checked_device(device)
    if not dataset_root.is_dir():
        raise DataError(f"{dataset_root}: dataset folder does not exist" if not dataset_root.exists()
                        else f"{dataset_root}: not a folder (give the dataset's root folder)")
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: exists and is not a folder (the cache output must be a folder)")
    domain = checked_domain(teacher_model, domain)
    _refuse_foreign_folder(out)
    m = _manifest(dataset_root, dataset)
    entries = _entries(m, dataset_root, splits, max_videos)

    model = teacher_model.to(device).eval()
    meta = _meta(m.name, splits, size, dtype, model_fingerprint(model, domain), domain, flipped)
    started = _meta_is_current(out, meta)
    # video id -> its source's signature and the frames cached; other runs' videos are kept (merged)
    sources, legacy = _existing_records(out, started)

    def save_sources() -> None:
        atomic_write_text(out / SOURCES, json.dumps(sources, indent=0, sort_keys=True))

    if legacy:  # built before sources.json: record the maps there as they are (once, before anything else)
        for e in entries:
            path = out / f"{e.id}.npy"
            if path.is_file():
                try:
                    sources[e.id] = {**source_signature(e.source),
                                     "frames": len(_open_maps(path, size, np.dtype(dtype)))}
                except DataError:
                    pass  # unreadable or another shape: unrecorded, recomputed below
        save_sources()
        if sources:
            print(f"{out}: a cache without {SOURCES} (older tinyhd): recorded {len(sources)} cached video(s) as "
                  f"computed from the videos now in {dataset_root} (this cannot be checked)", file=sys.stderr)
    for e in tqdm(entries, desc=f"teacher maps {m.name}", unit="video", disable=not progress):
        path = out / f"{e.id}.npy"
        signature = source_signature(e.source)
        if path.is_file():
            reason = _stale_reason(path, sources.get(e.id), e.source, signature, size, dtype, flipped)
            if reason is None:
                continue
            tqdm.write(f"{path}: {reason}; recomputing it", file=sys.stderr)  # on its own line, not the bar's
            if sources.pop(e.id, None) is not None:
                save_sources()  # a crash while replacing it must not leave the old record on the new maps
        frames = read_video(e.source)
        if len(frames) == 0:
            raise DataError(f"{e.source}: no frames decode")
        stored = encode_maps(_video_maps(model, frames, size, batch_size, device, domain), dtype)
        if not started:
            _start_cache(out, meta)
            started = True
        path.parent.mkdir(parents=True, exist_ok=True)
        if flipped:   # first: a video counts as cached once its .npy and its record exist
            mirrored = encode_maps(_video_maps(model, frames, size, batch_size, device, domain, mirrored=True), dtype)
            with atomic_open(_flip_path(path), "wb") as fh:
                np.save(fh, mirrored)
        with atomic_open(path, "wb") as fh:
            np.save(fh, stored)
        sources[e.id] = {**signature, "frames": len(stored)}
        save_sources()   # after every video: an interrupted run resumes with every map it stored recorded
    sources = {k: v for k, v in sources.items() if (out / f"{k}.npy").is_file()}  # drop records of deleted maps
    save_sources()
    atomic_write_text(out / "complete", f"{len(sources)} videos\n")
    return out


SOURCES = "sources.json"  # video id -> signature of the video it was computed from (see source_signature)


def source_signature(source: Path) -> dict[str, int]:
    """What tells one copy of a video from another without decoding it: a video file's size in bytes, a frame
    folder's number of files. :meth:`CachedTeacher.verify_sources` compares it with the training data's."""
    source = Path(source)
    if source.is_dir():
        return {"frame_files": sum(1 for p in source.iterdir() if p.is_file() and not p.name.startswith("."))}
    return {"bytes": source.stat().st_size}


def _describe_signature(sig: Mapping[str, int]) -> str:
    parts = {"bytes": "{} bytes", "frame_files": "{} frame files", "frames": "{} frames"}
    return ", ".join(parts[k].format(v) for k, v in sig.items() if k in parts)


# -- reading ---------------------------------------------------------------------------------------------------

_FLOAT16_ONE = 0x3C00  # bit pattern of float16 1.0: +0.0 … 1.0 are exactly the patterns 0x0000 … 0x3C00


def _unreadable_reason(path: Path, exc: BaseException) -> str:
    """Why ``np.load`` could not map ``path``, in words (a truncated file: what its header promises)."""
    fmt = np.lib.format
    try:
        size = path.stat().st_size
        if size == 0:
            return "the file is empty"
        with open(path, "rb") as fh:
            try:
                version = fmt.read_magic(fh)
            except ValueError:
                return "not a .npy file (no NumPy header)"
            read_header = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
            shape, _, dt = read_header(fh)
            need = fh.tell() + int(np.prod(shape)) * dt.itemsize
        if size < need:
            return (f"truncated: its header describes a {'×'.join(map(str, shape))} {dt} array, {need} bytes, "
                    f"but the file has {size}")
    except (ValueError, OSError, EOFError):
        pass
    return f"{type(exc).__name__}: {exc}"


def _open_maps(path: Path, size: Sequence[int], dtype: np.dtype) -> np.ndarray:
    """Memory-map a cached ``.npy`` after checking its header: N×5×H×W at the cache's size and dtype.

    Raises :class:`~tinyhd.errors.DataError` naming the file and what differs. Costs one header read per file.
    """
    try:
        arr = np.load(path, mmap_mode="r")
    except (ValueError, OSError, EOFError) as exc:
        raise DataError(f"{path}: unreadable teacher maps, {_unreadable_reason(path, exc)}; delete it and rerun "
                        "`tinyhd cache-teacher` to recompute it") from None
    want = f"N×{len(CHANNELS)}×{size[0]}×{size[1]} {dtype}"
    found = f"{'×'.join(map(str, arr.shape))} {arr.dtype}"
    if arr.ndim != 4 or arr.shape[0] == 0:
        problem = f"holds a {found} array, expected {want}"
    elif arr.shape[1] != len(CHANNELS):
        problem = (f"has {arr.shape[1]} channels, expected {len(CHANNELS)} (final + 4 conspicuity maps): "
                   f"{found} array, expected {want}")
    elif tuple(arr.shape[2:]) != tuple(size):
        problem = (f"maps are {arr.shape[2]}×{arr.shape[3]}, expected {size[0]}×{size[1]} (meta.json's size): "
                   f"{found} array, expected {want}")
    elif arr.dtype != dtype:
        problem = f"dtype is {arr.dtype}, expected {dtype} (meta.json's dtype)"
    else:
        return arr
    raise DataError(f"{path}: {problem}; delete it and rerun `tinyhd cache-teacher` to recompute it")


def _check_float16_range(stored: np.ndarray, path: Path, frames: np.ndarray) -> None:
    """Raise a :class:`~tinyhd.errors.DataError` naming ``path`` if float16 maps leave [0, 1] (or are NaN).

    One integer max over the frames read (a float16 in [0, 1] has a bit pattern ≤ 0x3C00: anything negative,
    above 1, infinite or NaN is above it); the exact check runs only when that fails (−0.0 passes it).
    """
    if stored.view(np.uint16).max() <= _FLOAT16_ONE:
        return
    v = stored.astype(np.float32)
    bad = ~((v >= 0) & (v <= 1))
    if bad.any():
        where = sorted({int(f) for f in frames[bad.reshape(len(v), -1).any(axis=1)]})
        finite = v[np.isfinite(v)]
        found = f"min {finite.min():g}, max {finite.max():g}" if finite.size else "no finite value"
        nan = ", NaN" if np.isnan(v).any() else ""
        raise DataError(f"{path}: maps outside [0, 1] in frame(s) {', '.join(map(str, where))} ({found}{nan}); "
                        "the file is damaged: delete it and rerun `tinyhd cache-teacher` to recompute it")


def _cache_meta(root: Path) -> dict:
    """``root/meta.json`` checked for what the reader relies on: format, a finished cache, size, dtype, channels."""
    path = root / "meta.json"
    meta = _read_json_object(path)
    if meta.get("format") != FORMAT:
        raise DataError(f"{path}: unknown cache format {meta.get('format')!r} (expected {FORMAT!r})")
    if not (root / "complete").is_file():
        raise DataError(f"{root}: teacher cache is unfinished (rerun `tinyhd cache-teacher` to resume it)")
    size = meta.get("size")
    if not (isinstance(size, list) and len(size) == 2 and all(isinstance(v, int) and v > 0 for v in size)):
        raise DataError(f"{path}: size is {size!r}, expected [H, W] (two positive integers)")
    if meta.get("dtype") not in ("uint8", "float16"):
        raise DataError(f"{path}: dtype is {meta.get('dtype')!r}, expected 'uint8' or 'float16'")
    if meta.get("channels", list(CHANNELS)) != list(CHANNELS):
        raise DataError(f"{path}: channels are {meta['channels']!r}, expected {list(CHANNELS)!r}")
    return meta


class CachedTeacher:
    """The teacher contract from a cache: ``teacher(batch) -> {"final": B×T'×H×W, "conspicuity": B×4×T'×H×W}``.

    ``path`` is one cache folder or a folder of them (e.g. ``dhf1k/`` + ``kinetics/``, as
    :func:`ensure_reduced_teacher` writes); videos are looked up by id across all of them. Flipped items get the
    maps of the mirrored video where the cache has them (built with ``flipped=True``, the default), else the
    mirrored maps (an approximation; a warning says so once per cache folder). Raises :class:`~tinyhd.errors.DataError` naming the file for an unknown video, a frame
    past the end, an unfinished cache, a size that differs from the batch's, an unreadable ``meta.json``, and a
    ``.npy`` that is truncated or whose shape, channels or dtype differ from ``meta.json`` (checked once, from
    its header, when the file is first opened) or, for ``float16`` caches, whose frames read leave [0, 1].
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path).expanduser()
        if self.path.is_file():
            raise DataError(f"{self.path}: a file, not a teacher cache folder (teacher: cache:FOLDER, as written by "
                            f"`tinyhd cache-teacher`; a checkpoint is teacher: hd2s:PATH)")
        if not self.path.is_dir():
            raise DataError(f"{self.path}: teacher cache folder does not exist (build it with `tinyhd cache-teacher`)")
        roots = [self.path] if (self.path / "meta.json").is_file() else sorted(
            p.parent for p in self.path.glob("*/meta.json"))
        if not roots:
            raise DataError(f"{self.path}: not a teacher cache (no meta.json here or in its sub-folders)")
        self.index: dict[str, Path] = {}
        self.size: tuple[int, int] | None = None
        self._dtype: dict[str, np.dtype] = {}   # video id -> the dtype its cache's meta.json promises
        self._sources: dict[str, dict[str, int]] = {}   # video id -> what it was cached from (sources.json)
        self._root: dict[str, Path] = {}        # video id -> the cache folder holding its maps
        self._unrecorded: list[Path] = []       # caches from before sources.json
        self._flipped: dict[str, Path] = {}     # video id -> its mirrored video's maps (.flip.npy)
        self._warned_mirroring: set[Path] = set()
        for root in roots:
            meta = _cache_meta(root)
            records = None
            if (root / SOURCES).is_file():
                records = _read_sources(root / SOURCES)
            else:
                self._unrecorded.append(root)
            size = tuple(meta["size"])
            if self.size is not None and size != self.size:
                raise DataError(f"{root}: maps are {size[0]}×{size[1]} but {roots[0]} has {self.size[0]}×{self.size[1]}")
            self.size = size
            for f in root.rglob("*.npy"):
                if f.name.endswith(FLIP_SUFFIX):
                    continue
                vid = f.relative_to(root).with_suffix("").as_posix()
                if vid in self.index:
                    raise DataError(f"{self.path}: video id {vid!r} is in two caches ({self.index[vid]} and {f})")
                self.index[vid] = f
                self._root[vid] = root
                self._dtype[vid] = np.dtype(meta["dtype"])
                if meta.get("flipped"):
                    self._flipped[vid] = _flip_path(f)
                if records is not None and vid in records:  # a record counts only in the folder holding the maps
                    self._sources[vid] = records[vid]
        self._open: dict[tuple[str, bool], np.ndarray] = {}

    def verify_sources(self, entries: Sequence["VideoEntry"]) -> None:
        """Check that this cache was built from these videos (the ones a run will distil on), before training.

        Every video needs maps, and each recorded signature (:func:`source_signature`: file size or frame-file
        count, and the frame count where the manifest has one) must match the video's: maps cached from another
        copy or version of a dataset whose ids coincide would otherwise be used silently. A video whose cache has a
        ``sources.json`` without a record of it is refused too (nothing says what its maps were computed from).
        Caches built before ``sources.json`` existed cannot be checked (a warning says so; rerunning ``tinyhd
        cache-teacher`` on them adds it without recomputing the maps). Raises :class:`~tinyhd.errors.DataError`
        naming the video.
        """
        missing = [e for e in entries if e.id not in self.index]
        if missing:
            raise DataError(f"{self.path}: no teacher maps for {len(missing)} of the {len(entries)} videos to distil "
                            f"on (first: {missing[0].id}, {missing[0].source}); build the cache over this dataset "
                            f"with `tinyhd cache-teacher`")
        unrecorded = [e for e in entries if e.id not in self._sources and self._root[e.id] not in self._unrecorded]
        if unrecorded:
            e = unrecorded[0]
            raise DataError(f"{self._root[e.id] / SOURCES}: no record of what the maps of {len(unrecorded)} of the "
                            f"{len(entries)} videos to distil on were computed from (first: {self.index[e.id]}, for "
                            f"{e.source}); rerun `tinyhd cache-teacher` over this dataset with --out "
                            f"{self._root[e.id]} (it recomputes maps it has no record of)")
        for e in entries:
            recorded = self._sources.get(e.id)
            if recorded is None:
                continue
            found = source_signature(e.source)
            if e.frames is not None:
                found["frames"] = e.frames
            differ = {k: v for k, v in found.items() if k in recorded and recorded[k] != v}
            if differ:
                raise DataError(
                    f"{self.index[e.id]}: cached from a video with {_describe_signature(recorded)}, but {e.source} "
                    f"has {_describe_signature(found)}: the cache was built from another copy or version of the "
                    f"dataset; rebuild it from this one with `tinyhd cache-teacher` (another --out folder)")
        if self._unrecorded:
            import warnings

            warnings.warn(f"{', '.join(map(str, self._unrecorded))}: teacher cache(s) without {SOURCES} (built by an "
                          f"older tinyhd): cannot check that they were built from this dataset; rerun `tinyhd "
                          f"cache-teacher` on them to record it", stacklevel=2)

    def maps(self, video: str, mirrored: bool = False) -> np.ndarray:
        """The stored N×5×H×W array of a video, or (``mirrored``) of the mirrored video, memory-mapped; its header
        is checked when first opened."""
        key = (video, bool(mirrored))
        if key not in self._open:
            if video not in self.index:
                raise DataError(f"{self.path}: no teacher maps for video {video!r} (was it cached?)")
            path = self._flipped.get(video) if mirrored else self.index[video]
            if path is None:
                raise DataError(f"{self._root[video]}: no maps of the mirrored videos (built with --no-flipped)")
            if mirrored and not path.is_file():
                raise DataError(f"{path}: missing (the cache's meta.json says it holds the mirrored videos' maps); "
                                f"rerun `tinyhd cache-teacher` with --out {self._root[video]} to recompute it")
            self._open[key] = _open_maps(path, self.size, self._dtype[video])
            if mirrored and len(self._open[key]) != len(self.maps(video)):
                raise DataError(f"{path}: holds {len(self._open[key])} frames, {self.index[video].name} "
                                f"{len(self.maps(video))}; rerun `tinyhd cache-teacher` to recompute it")
        return self._open[key]

    def _warn_mirroring(self, video: str) -> None:
        root = self._root[video]
        if root not in self._warned_mirroring:
            import warnings

            self._warned_mirroring.add(root)
            warnings.warn(f"{root}: a teacher cache without the mirrored videos' maps (built with --no-flipped or "
                          f"by an older tinyhd): flipped clips get its maps mirrored, an approximation of HD2S on "
                          f"the flipped clip (CC 0.76–0.91 on the reduced HD2S); rebuild it to get exact targets",
                          stacklevel=3)

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
            video, flip = batch["video"][b], bool(flips[b])
            exact = flip and video in self._flipped      # the mirrored video's own maps
            if flip and not exact and video in self.index:
                self._warn_mirroring(video)
            arr = self.maps(video, mirrored=exact)
            path = self._flipped[video] if exact else self.index[video]
            idx = frame_index[b].numpy()
            if idx.max() >= len(arr) or idx.min() < 0:
                bad = int(idx.min()) if idx.min() < 0 else int(idx.max())
                raise DataError(f"{path}: frame {bad} asked, {len(arr)} cached")
            stored = arr[idx]                                          # T'×5×H×W, read from the memory map
            if stored.dtype == np.float16:
                _check_float16_range(stored, path, idx)
            m = decode_maps(stored)
            out.append(m.flip(-1) if flip and not exact else m)
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

    HD2S keeps the authors' BatchNorm momenta (spec sheet §2.1, §3.1, §3.2): 0.001 in the S3D backbone, the
    temporal reducers and the first conv of each decoder stage, 0.1 in the depthwise-separable units. At 0.001 a
    running statistic still gives its initial 0 or 1 a weight of 0.999^n after n train-mode forwards (0.86 after
    150), so after a few hundred steps from scratch it lags the weights and the eval-mode maps come out nearly flat
    although the train-mode ones are not. Here every BatchNorm's momentum is set to None (a cumulative average)
    for these passes and then restored to its own value. Only the reduced-scale teacher uses it
    (a converged model does not need it).
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
    lr 1e-3 and no multiplier, for thousands of steps from Kinetics weights; weight decay 2e-7, the multi-level KL
    loss of HD2S Eq. 1 — the caption of the paper's Table 3 says Equation 5, but its Eq. 5 is p = iteration/total)
    at ``size``; no Kinetics initialisation (offline). ``None`` means the synthetic DHF1K-layout set. Keyed by the
    arguments under ``cache_dir()/teachers/`` and created atomically (two racing processes: the loser uses the
    winner's).
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
    key, name = _key_name("cache", size, {"aux": str(aux_root.resolve()), "aux_videos": aux_videos, "flipped": True})

    def build(tmp: Path) -> None:
        model = load_hd2s(ckpt)  # cache exactly what was saved, BN in eval mode
        build_teacher_cache(model, data_root, tmp / "target", dataset="dhf1k", size=size, splits=("train",),
                            progress=progress)
        build_teacher_cache(model, aux_root, tmp / "aux", dataset="kinetics", size=size, splits=("train",),
                            max_videos=aux_videos, progress=progress)

    return ReducedTeacher(ckpt, _build_once(ckpt.parent / name, key, build))


# -- command line ----------------------------------------------------------------------------------------------

def cli_main(argv: list[str]) -> int:
    """``tinyhd cache-teacher CHECKPOINT DATA_ROOT --out DIR [--dataset dhf1k|kinetics] [--size 192x256]
    [--domain D] …``."""
    parser = argparse.ArgumentParser(prog="tinyhd cache-teacher", description=(
        "Run an HD2S teacher once over a dataset and store, for every frame, its final and four conspicuity "
        "maps (window of 16 frames ending at the frame) at the student's resolution. Resumes an interrupted run."))
    parser.add_argument("checkpoint", help="HD2S checkpoint: the authors' state dict or one saved by tinyhd")
    parser.add_argument("data_root", help="dataset folder (DHF1K/UCF/Hollywood2 or Kinetics-400 layout)")
    parser.add_argument("--out", required=True, help=(
        "cache folder (created; resumed if it is a teacher cache; another non-empty folder is refused)"))
    parser.add_argument("--dataset", default=None, help=(
        "manifest name (dhf1k, ucf, hollywood2, kinetics) or a manifest .yaml; default: DATA_ROOT/manifest.yaml "
        "if the folder has one, else dhf1k; naming a dataset other than the one in that manifest is an error"))
    parser.add_argument("--splits", default="train", help="comma-separated splits (default: %(default)s)")
    parser.add_argument("--size", default="192x256", type=_parse_size, help=(
        "H×W of the student's input, multiples of 32; written 192x256 or 192×256 (default: %(default)s)"))
    parser.add_argument("--dtype", default="uint8", choices=("uint8", "float16"), help=(
        "storage of the maps: uint8, 1 byte per value, error ≤ 1/512; or float16, 2 bytes (default: %(default)s)"))
    parser.add_argument("--batch-size", type=int, default=8, help=(
        "16-frame windows per teacher forward; lower it if memory runs short (default: %(default)s)"))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help=(
        "device HD2S runs on, e.g. cpu, cuda, cuda:1 (default here: %(default)s)"))
    parser.add_argument("--max-videos", type=int, default=None, metavar="N", help=(
        "cache only the first N videos of each split, counted per split (default: all)"))
    parser.add_argument("--flipped", action=argparse.BooleanOptionalAction, default=True, help=(
        "also cache the maps of each horizontally mirrored video, the exact targets of the randomly flipped "
        "training clips (twice the time and space; default: on). --no-flipped: flipped clips get mirrored maps, "
        "an approximation"))
    parser.add_argument("--domain", default=None, help=(
        "for an HD2S_DSL checkpoint (required there, refused otherwise): the domain whose priors, BatchNorms and "
        "fusion to run, one of the checkpoint's (e.g. DHF1K, Hollywood, UCFSports; any case)"))
    args = parser.parse_args(argv)
    from tinyhd.inference import checked_device
    from tinyhd.teacher import load_hd2s

    device = checked_device(args.device)
    model = load_hd2s(args.checkpoint)
    domain = checked_domain(model, args.domain, what=args.checkpoint)
    if device.type == "cpu":
        from tinyhd.fast import keep_freed_memory

        # HD2S frees ~GBs of activations per batch; by default glibc returns them and the next batch re-faults
        # them: 1.4 M page faults per batch of 8 windows at 192×256, ~600 vs ~360 ms per window on 2 threads
        keep_freed_memory()
    out = build_teacher_cache(model, args.data_root, args.out, dataset=args.dataset, size=args.size,
                              splits=[s for s in args.splits.split(",") if s], dtype=args.dtype,
                              batch_size=args.batch_size, device=device, max_videos=args.max_videos,
                              domain=domain, flipped=args.flipped)
    print(f"teacher maps cached in {out}")
    return 0
