"""Synthetic saliency datasets in the DHF1K layout (and unlabeled ones in the Kinetics-400 layout).

Real video-saliency data cannot ship with the repository, so notebooks, tests and CI train on a small
synthetic stand-in that a model can only score well on by using *appearance and motion* (issue 2, item 7):

* a cluttered, slowly panning background of muted colour gratings and blobs, with muted distractor
  shapes drifting over it;
* 1–3 salient objects: saturated colours with a checker texture, moving faster than everything else and
  bouncing off the borders; the first one is the most salient;
* ``observers`` simulated viewers. Each follows one object for a while (smooth pursuit, switching with a
  small probability per frame, preferring salient and fast objects) or looks near the centre (centre bias),
  with a personal constant offset and per-frame jitter;
* fixation PNGs (255 at each fixated pixel, 0 elsewhere) and GT maps = fixations blurred with a Gaussian
  and normalised to a maximum of 1 (×255 in the PNG), as DHF1K builds its maps.

``generate_video`` is a pure function of (seed, video number, frames, size) and also returns the
*generating density* (the mixture the fixations are drawn from), so one can check that a centre-bias
baseline scores clearly below it. ``ensure_synthetic`` builds a dataset once under
``tinyhd.paths.cache_dir()/synth/`` (atomically; two processes racing are fine) and returns its root.
"""
from __future__ import annotations

import argparse
import errno
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from tinyhd.cli import parse_size
from tinyhd.errors import UserError
from tinyhd.paths import atomic_write_text

GENERATOR_VERSION = 1  # bump when the pictures change: it is part of the cache path (and of the RNG seeds)
LAYOUT_VERSION = 2     # bump when what is written changes but the pictures do not: also part of the cache path
# layout 2: the DHF1K-layout test split is unannotated, as DHF1K's is; folder layouts list their video ids
FPS = 30.0
KINETICS_CLASSES = ("juggling_balls", "riding_a_bike", "walking_the_dog", "playing_tennis")


@dataclass
class SynthVideo:
    frames: np.ndarray      # N×H×W×3 uint8 RGB
    maps: np.ndarray        # N×H×W uint8, blurred fixations normalised to max 255
    fixations: np.ndarray   # N×H×W bool
    density: np.ndarray     # N×H×W float32, the generating density (sums to 1 per frame)


def _rng(seed: int, number: int, stream: int = 0) -> np.random.Generator:
    return np.random.default_rng([int(seed), int(number), int(stream), GENERATOR_VERSION])


def _gaussian(h: int, w: int, cy: float, cx: float, sy: float, sx: float) -> np.ndarray:
    y = np.arange(h, dtype=np.float32)[:, None]
    x = np.arange(w, dtype=np.float32)[None, :]
    return np.exp(-0.5 * (((y - cy) / sy) ** 2 + ((x - cx) / sx) ** 2)).astype(np.float32)


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A muted, cluttered H×W×3 float texture: a few colour gratings plus soft blobs (values ~0.25..0.7)."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.zeros((h, w, 3), np.float32)
    for _ in range(4):
        freq = rng.uniform(0.02, 0.12)
        theta = rng.uniform(0, np.pi)
        phase = rng.uniform(0, 2 * np.pi)
        grating = np.sin(freq * (x * np.cos(theta) + y * np.sin(theta)) * 2 * np.pi / 2 + phase)
        colour = rng.uniform(-0.5, 0.5, 3) * 0.25 + rng.uniform(-0.1, 0.1)
        img += grating[..., None] * colour
    for _ in range(10):
        blob = _gaussian(h, w, rng.uniform(0, h), rng.uniform(0, w), *rng.uniform(3, 0.15 * max(h, w), 2))
        img += blob[..., None] * rng.uniform(-0.12, 0.12, 3)
    grey = rng.uniform(0.4, 0.55)
    return np.clip(grey + img, 0.15, 0.8)


@dataclass
class _Mover:
    y: float
    x: float
    vy: float
    vx: float
    ry: float
    rx: float
    colour: np.ndarray
    colour2: np.ndarray
    check: float          # checker period in pixels (0 = flat)
    weight: float         # attractiveness to observers (0 for distractors)

    def step(self, h: int, w: int) -> None:
        self.y += self.vy
        self.x += self.vx
        if not self.ry <= self.y <= h - 1 - self.ry:
            self.vy = -self.vy
            self.y = float(np.clip(self.y, self.ry, h - 1 - self.ry))
        if not self.rx <= self.x <= w - 1 - self.rx:
            self.vx = -self.vx
            self.x = float(np.clip(self.x, self.rx, w - 1 - self.rx))

    def paint(self, img: np.ndarray, yy: np.ndarray, xx: np.ndarray) -> None:
        inside = ((yy - self.y) / self.ry) ** 2 + ((xx - self.x) / self.rx) ** 2 <= 1.0
        if self.check > 0:
            tex = ((np.floor((yy - self.y) / self.check) + np.floor((xx - self.x) / self.check)) % 2)[..., None]
            colour = tex * self.colour + (1 - tex) * self.colour2
            img[inside] = colour[inside]
        else:
            img[inside] = self.colour


def _salient_colour(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    hue = rng.uniform(0, 1)
    import colorsys

    c1 = np.array(colorsys.hsv_to_rgb(hue, 1.0, 1.0), np.float32)
    c2 = np.array(colorsys.hsv_to_rgb((hue + 0.5) % 1.0, 0.9, 0.95), np.float32)
    return c1, c2


def generate_video(seed: int, number: int, frames: int, size: tuple[int, int] = (96, 128),
                   observers: int = 12, labels: bool = True) -> SynthVideo:
    """Render video ``number`` of the synthetic set with ``seed``: a pure function of its arguments."""
    h, w = size
    rng = _rng(seed, number)
    scale = min(h, w)
    pad = max(8, int(0.25 * max(h, w)))
    canvas = _background(rng, h + 2 * pad, w + 2 * pad)
    pan = rng.uniform(-0.35, 0.35, 2) * scale / 96.0  # slow camera pan, px/frame
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)

    movers: list[_Mover] = []
    n_objects = int(rng.integers(1, 4))
    for k in range(n_objects):
        c1, c2 = _salient_colour(rng)
        r = rng.uniform(0.07, 0.12) * scale
        speed = rng.uniform(1.0, 2.2) * scale / 96.0
        ang = rng.uniform(0, 2 * np.pi)
        movers.append(_Mover(rng.uniform(r, h - r), rng.uniform(r, w - r), speed * np.sin(ang), speed * np.cos(ang),
                             r * rng.uniform(0.8, 1.2), r * rng.uniform(0.8, 1.2), c1, c2,
                             check=max(2.0, r / 2), weight=(1.0 if k == 0 else rng.uniform(0.3, 0.7))))
    for _ in range(int(rng.integers(3, 7))):  # distractors: background-like colours, slow
        base = canvas[int(rng.integers(0, h)), int(rng.integers(0, w))]
        r = rng.uniform(0.05, 0.11) * scale
        ang = rng.uniform(0, 2 * np.pi)
        speed = rng.uniform(0.1, 0.5) * scale / 96.0
        movers.append(_Mover(rng.uniform(r, h - r), rng.uniform(r, w - r), speed * np.sin(ang), speed * np.cos(ang),
                             r, r * rng.uniform(0.6, 1.4), np.clip(base + rng.uniform(-0.1, 0.1, 3), 0, 1),
                             np.clip(base + rng.uniform(-0.1, 0.1, 3), 0, 1),
                             check=float(rng.choice([0.0, r / 2])), weight=0.0))
    movers.sort(key=lambda m: m.weight)  # salient objects painted last (on top)
    salient = [m for m in movers if m.weight > 0]

    # observers: current target (-1 = centre), personal offset (in object radii) and centre point
    centre_p = 0.15
    target = rng.integers(-1, len(salient), observers)
    offset = rng.normal(0, 0.35, (observers, 2))
    centre_pt = rng.normal(0, 0.12, (observers, 2)) * np.array([h, w])
    sigma_map = max(1.5, 0.035 * w)

    out_frames = np.empty((frames, h, w, 3), np.uint8)
    maps = np.zeros((frames, h, w), np.uint8)
    fix = np.zeros((frames, h, w), bool)
    density = np.zeros((frames, h, w), np.float32)
    import cv2

    oy, ox = float(pad), float(pad)
    for t in range(frames):
        iy, ix = int(round(oy)), int(round(ox))
        img = canvas[iy:iy + h, ix:ix + w].copy()
        for m in movers:
            m.paint(img, yy, xx)
        noise = rng.normal(0, 0.015, img.shape).astype(np.float32)
        out_frames[t] = np.clip((img + noise) * 255 + 0.5, 0, 255).astype(np.uint8)
        if labels:
            speeds = np.array([np.hypot(m.vx, m.vy) for m in salient])
            attract = np.array([m.weight for m in salient]) * (0.5 + speeds / speeds.max())
            probs = np.concatenate([[centre_p], (1 - centre_p) * attract / attract.sum()])
            # generating density: the mixture observers sample from (centre bias + objects)
            dens = probs[0] * _gaussian(h, w, h / 2, w / 2, 0.15 * h, 0.15 * w) / (2 * np.pi * 0.0225 * h * w)
            for p, m in zip(probs[1:], salient):
                g = _gaussian(h, w, m.y, m.x, 0.4 * m.ry + 1, 0.4 * m.rx + 1)
                dens += p * g / g.sum()
            density[t] = dens / dens.sum()
            switch = rng.random(observers) < 0.08
            target[switch] = rng.choice(np.arange(-1, len(salient)), size=int(switch.sum()), p=probs)
            for o in range(observers):
                if target[o] < 0:
                    cy, cx = h / 2 + centre_pt[o, 0], w / 2 + centre_pt[o, 1]
                else:
                    m = salient[target[o]]
                    cy, cx = m.y + offset[o, 0] * m.ry, m.x + offset[o, 1] * m.rx
                fy = int(np.clip(round(cy + rng.normal(0, 1.0)), 0, h - 1))
                fx = int(np.clip(round(cx + rng.normal(0, 1.0)), 0, w - 1))
                fix[t, fy, fx] = True
            blurred = cv2.GaussianBlur(fix[t].astype(np.float32), (0, 0), sigma_map)
            maps[t] = np.clip(blurred / blurred.max() * 255 + 0.5, 0, 255).astype(np.uint8)
        for m in movers:
            m.step(h, w)
        oy = float(np.clip(oy + pan[0], 0, 2 * pad))
        ox = float(np.clip(ox + pan[1], 0, 2 * pad))
    return SynthVideo(out_frames, maps, fix, density)


def centre_bias(size: tuple[int, int], sigma: float = 0.25) -> np.ndarray:
    """The centre-bias baseline: an H×W Gaussian at the image centre, std ``sigma`` × height/width."""
    h, w = size
    return _gaussian(h, w, (h - 1) / 2, (w - 1) / 2, sigma * h, sigma * w)


def baseline_scores(seed: int = 0, videos: Sequence[int] = (1, 2, 3, 4), frames: int = 24,
                    size: tuple[int, int] = (96, 128), every: int = 4) -> dict[str, dict[str, float]]:
    """Mean CC and NSS (``tinyhd.metrics``) against the GT maps/fixations of regenerated synthetic videos for
    the generating density (the best any model can do on average) and the centre-bias baseline.

    Issue 2, item 7: the centre bias must score clearly below the generating density, so that a model has
    to use appearance and motion to do well.
    """
    from tinyhd import metrics

    prior = centre_bias(size)
    scores: dict[str, dict[str, list[float]]] = {k: {"CC": [], "NSS": []} for k in ("density", "centre bias")}
    for n in videos:
        v = generate_video(seed, n, frames, size)
        for t in range(0, frames, every):
            gt, fix = v.maps[t].astype(np.float64) / 255.0, v.fixations[t]
            for name, pred in (("density", v.density[t]), ("centre bias", prior)):
                scores[name]["CC"].append(metrics.cc(pred, gt))
                scores[name]["NSS"].append(metrics.nss(pred, fix))
    return {name: {m: float(np.mean(vals)) for m, vals in d.items()} for name, d in scores.items()}


# ----------------------------------------------------------------------------------------------------------
# writing datasets


def default_splits(videos: int) -> dict[str, tuple[int, int]]:
    """Train/val/test ranges (1-based, inclusive) in DHF1K's proportions: 12 -> 001–008, 009–010, 011–012."""
    if videos < 3:
        raise UserError(f"a synthetic DHF1K-layout set needs at least 3 videos (train/val/test), got {videos}")
    n_val = n_test = max(1, round(videos / 6))
    n_train = videos - n_val - n_test
    return {"train": (1, n_train), "val": (n_train + 1, n_train + n_val), "test": (n_train + n_val + 1, videos)}


def _frames_list(frames: int | Sequence[int], videos: int) -> list[int]:
    counts = [int(frames)] * videos if isinstance(frames, (int, np.integer)) else [int(f) for f in frames]
    if len(counts) != videos or min(counts) < 1:
        raise UserError(f"frames must be a positive count or one per video ({videos}), got {frames!r}")
    return counts


def write_dhf1k(root: str | os.PathLike, videos: int = 12, frames: int | Sequence[int] = 48,
                size: tuple[int, int] = (96, 128), seed: int = 0, observers: int = 12,
                progress: bool = True, gray: Sequence[int] = ()) -> Path:
    """Write a DHF1K-layout dataset into the (new or empty) folder ``root`` with its ``manifest.yaml``.

    The manifest is written last, so a folder without one is unfinished; ``build``/``ensure_synthetic``
    add the all-or-nothing rename around this. Like DHF1K's, the test split has no annotation folders
    (``annotated: false``), so the unannotated code paths run on the synthetic set too.

    ``frames`` may list one count per video (to include short videos); videos whose number is in ``gray``
    are written as grey-level frames (3 equal channels), to exercise the loaders.
    """
    import cv2
    import yaml

    root = Path(root)
    counts = _frames_list(frames, videos)
    splits = default_splits(videos)
    root.mkdir(parents=True, exist_ok=True)
    from tqdm import tqdm

    for n in tqdm(range(1, videos + 1), desc="synth dhf1k", unit="video", leave=False, disable=not progress):
        v = generate_video(seed, n, counts[n - 1], size, observers)
        frames_ = v.frames
        if n in gray:
            frames_ = np.repeat(cv2.cvtColor(frames_.reshape(-1, size[1], 3), cv2.COLOR_RGB2GRAY)
                                .reshape(len(frames_), *size)[..., None], 3, axis=3)
        _write_avi(root / "video" / f"{n:03d}.AVI", frames_)
        if n < splits["test"][0]:  # DHF1K withholds the test annotations
            ann = root / "annotation" / f"{n:04d}"
            _write_labels(ann / "maps", ann / "fixation", v)
    manifest = {
        "schema_version": 1,
        "name": "synthetic-dhf1k",
        "title": "tinyhd synthetic saliency set in the DHF1K layout",
        "kind": "labeled",
        "source": _generator_source(videos, counts, size, seed, observers),
        "ids": "range",
        "video_id": "{n:03d}",
        "frame_names": "{frame:04d}.png",
        "layout": {"source": "video/{n:03d}.AVI", "maps": "annotation/{n:04d}/maps",
                   "fixations": "annotation/{n:04d}/fixation"},
        "splits": {k: {"range": list(r), "count": r[1] - r[0] + 1, "annotated": k != "test"}
                   for k, r in splits.items()},
        "frames": {f"{n:03d}": counts[n - 1] for n in range(1, videos + 1)},
    }
    atomic_write_text(root / "manifest.yaml", yaml.safe_dump(manifest, sort_keys=False))  # written last
    return root


# the frame-folder layouts of UCF-Sports and Hollywood2 (data_manifests/ucf_sports.yaml, hollywood2.yaml):
# {training,testing}/<id>/{images,maps,fixation}/, ids taken from the folders, no val split
FOLDER_KINDS = {"ucf": ("ucf_sports", "UCF-Sports", 101), "hollywood2": ("hollywood2", "Hollywood2", 202)}
UCF_SPORTS = ("Diving-Side", "Golf-Swing-Front", "Kicking-Front", "Lifting", "Riding-Horse", "Run-Side",
              "SkateBoarding-Front", "Swing-Bench", "Walk-Front")


def folder_splits(videos: int) -> dict[str, int]:
    """Train/test video counts of a synthetic UCF-Sports/Hollywood2-layout set (about 2 : 1, like UCF's 103 / 47)."""
    if videos < 2:
        raise UserError(f"a synthetic UCF-Sports/Hollywood2-layout set needs at least 2 videos, got {videos}")
    n_test = max(1, round(videos / 3))
    return {"train": videos - n_test, "test": n_test}


def write_folder_layout(root: str | os.PathLike, kind: str = "ucf", videos: int = 12,
                        frames: int | Sequence[int] = 48, size: tuple[int, int] = (96, 128), seed: int = 0,
                        observers: int = 12, progress: bool = True) -> Path:
    """Write a labelled set in the UCF-Sports (``kind="ucf"``) or Hollywood2 (``"hollywood2"``) frame-folder
    layout — ``training/<id>/images|maps|fixation/*.png`` and ``testing/…``, as ``data_manifests/ucf_sports.yaml``
    and ``hollywood2.yaml`` describe — with its ``manifest.yaml`` (written last). Ids look like the real ones
    (``Diving-Side-001``; ``actioncliptrain00001``); the pictures differ from the DHF1K-layout set of the same
    seed (another stream of :func:`generate_video`). Like the real sets there is no val split."""
    import cv2
    import yaml

    manifest_name, title, stream = FOLDER_KINDS[kind]
    root = Path(root)
    counts = _frames_list(frames, videos)
    splits = folder_splits(videos)
    root.mkdir(parents=True, exist_ok=True)
    from tqdm import tqdm

    ids: dict[str, list[str]] = {"train": [], "test": []}
    for n in tqdm(range(1, videos + 1), desc=f"synth {kind}", unit="video", leave=False, disable=not progress):
        split = "train" if n <= splits["train"] else "test"
        k = n if split == "train" else n - splits["train"]
        vid = (f"{UCF_SPORTS[(n - 1) % len(UCF_SPORTS)]}-{n:03d}" if kind == "ucf"
               else f"actionclip{split}{k:05d}")
        ids[split].append(vid)
        folder = root / ("training" if split == "train" else "testing") / vid
        v = generate_video(seed + stream, n, counts[n - 1], size, observers)
        (folder / "images").mkdir(parents=True, exist_ok=True)
        for t in range(len(v.frames)):
            cv2.imwrite(str(folder / "images" / f"{t + 1:04d}.png"), cv2.cvtColor(v.frames[t], cv2.COLOR_RGB2BGR))
        _write_labels(folder / "maps", folder / "fixation", v)
    manifest = {
        "schema_version": 1,
        "name": f"synthetic-{manifest_name}",
        "title": f"tinyhd synthetic saliency set in the {title} layout",
        "kind": "labeled",
        "source": _generator_source(videos, counts, size, seed, observers),
        "ids": "folder",
        "frame_names": "{frame:04d}.png",
        "layout": {"source": "{split_dir}/{id}/images", "maps": "{split_dir}/{id}/maps",
                   "fixations": "{split_dir}/{id}/fixation"},
        # the ids are known here, so verify-data can name a missing or extra video, not just count them
        "splits": {"train": {"dir": "training", "count": splits["train"], "annotated": True, "videos": ids["train"]},
                   "test": {"dir": "testing", "count": splits["test"], "annotated": True, "videos": ids["test"]}},
        "frames": {},
    }
    atomic_write_text(root / "manifest.yaml", yaml.safe_dump(manifest, sort_keys=False))  # written last
    return root


def _write_labels(maps_dir: Path, fixation_dir: Path, v) -> None:
    """One PNG per frame of ``v``'s density maps and binary fixation maps (255 = fixation), 1-based names."""
    import cv2

    maps_dir.mkdir(parents=True, exist_ok=True)
    fixation_dir.mkdir(parents=True, exist_ok=True)
    for t in range(len(v.maps)):
        cv2.imwrite(str(maps_dir / f"{t + 1:04d}.png"), v.maps[t])
        cv2.imwrite(str(fixation_dir / f"{t + 1:04d}.png"), v.fixations[t].astype(np.uint8) * 255)


def _generator_source(videos: int, counts: list[int], size: tuple[int, int], seed: int, observers: int) -> dict:
    """The manifest's ``source`` entry of a labelled synthetic set: generator version and parameters."""
    return {"generator": f"tinyhd.synth (version {GENERATOR_VERSION}, layout {LAYOUT_VERSION})",
            "parameters": {"videos": videos, "frames": counts if len(set(counts)) > 1 else counts[0],
                           "size": list(size), "seed": seed, "observers": observers}}


def _write_avi(path: Path, frames: np.ndarray) -> None:
    from tinyhd.video import write_video

    write_video(path, frames, fps=FPS, fourcc="MJPG")


def write_kinetics(root: str | os.PathLike, videos: int = 8, frames: int | Sequence[int] = 48,
                   size: tuple[int, int] = (96, 128), seed: int = 0, progress: bool = True) -> Path:
    """Write an unlabeled Kinetics-400-layout set: ``train_256/<class>/<youtube_id>_<start>_<end>.avi``."""
    import yaml

    root = Path(root)
    counts = _frames_list(frames, videos)
    rng = _rng(seed, 0, stream=1)
    alphabet = np.array(list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_"))
    from tqdm import tqdm

    ids: list[str] = []
    for n in tqdm(range(1, videos + 1), desc="synth kinetics", unit="video", leave=False, disable=not progress):
        cls = KINETICS_CLASSES[(n - 1) % len(KINETICS_CLASSES)]
        yid = "".join(rng.choice(alphabet, 11))
        start = int(rng.integers(0, 300))
        v = generate_video(seed + 7919, n, counts[n - 1], size, labels=False)
        stem = f"{yid}_{start:06d}_{start + 10:06d}"
        _write_avi(root / "train_256" / cls / f"{stem}.avi", v.frames)
        ids.append(f"{cls}/{stem}")
    n_cls = min(videos, len(KINETICS_CLASSES))
    manifest = {
        "schema_version": 1,
        "name": "synthetic-kinetics400",
        "title": "tinyhd synthetic unlabeled set in the Kinetics-400 layout",
        "kind": "unlabeled",
        "source": {"generator": f"tinyhd.synth (version {GENERATOR_VERSION}, layout {LAYOUT_VERSION})",
                   "parameters": {"videos": videos, "frames": counts if len(set(counts)) > 1 else counts[0],
                                  "size": list(size), "seed": seed}},
        "ids": "glob",
        "layout": {"source": None},
        "splits": {"train": {"dir": "train_256", "count": videos, "classes": n_cls, "annotated": False,
                             "videos": ids}},
    }
    atomic_write_text(root / "manifest.yaml", yaml.safe_dump(manifest, sort_keys=False))  # written last
    return root


def synthetic_path(kind: str = "dhf1k", videos: int | None = None, frames: int = 48,
                   size: tuple[int, int] = (96, 128), seed: int = 0) -> Path:
    """Where ``ensure_synthetic`` caches the set with these parameters."""
    from tinyhd.paths import cache_dir

    kind = _check_kind(kind)
    videos = videos if videos is not None else (8 if kind == "kinetics" else 12)
    h, w = size
    return (cache_dir() / "synth"
            / f"{kind}_v{videos}_f{frames}_{h}x{w}_s{seed}_g{GENERATOR_VERSION}_l{LAYOUT_VERSION}")


def _check_kind(kind: str) -> str:
    kind = kind.lower()
    if kind in ("kinetics400", "kinetics-400"):
        kind = "kinetics"
    kind = {"ucf_sports": "ucf", "ucf-sports": "ucf"}.get(kind, kind)
    if kind not in ("dhf1k", "kinetics", *FOLDER_KINDS):
        raise UserError(f"synthetic dataset kind must be 'dhf1k', 'kinetics', 'ucf' or 'hollywood2', not {kind!r}")
    return kind


def build(root: str | os.PathLike, kind: str = "dhf1k", videos: int | None = None,
          frames: int | Sequence[int] = 48, size: tuple[int, int] = (96, 128), seed: int = 0,
          progress: bool = True, **kwargs) -> Path:
    """Build a synthetic set at ``root`` atomically (temporary folder, then rename).

    If another process finishes the same ``root`` first, its copy is kept and ours discarded. A ``root``
    that already holds something other than a finished synthetic set is an error.
    """
    from tinyhd.paths import atomic_directory

    kind = _check_kind(kind)
    root = Path(root).expanduser()
    videos = videos if videos is not None else (8 if kind == "kinetics" else 12)
    if (root / "manifest.yaml").is_file():
        return root
    if root.exists():
        if root.is_dir() and not any(root.iterdir()):
            root.rmdir()
        else:
            raise UserError(f"{root}: already exists and is not a synthetic dataset; choose a new folder")
    size = _check_size(size)
    writer = {"dhf1k": write_dhf1k, "kinetics": write_kinetics}.get(kind)
    if writer is None:  # the UCF-Sports / Hollywood2 frame-folder layouts
        kwargs["kind"] = kind
        writer = write_folder_layout
    try:
        with atomic_directory(root) as tmp:
            writer(tmp, videos=videos, frames=frames, size=tuple(size), seed=seed, progress=progress, **kwargs)
            if hasattr(os, "sync"):
                os.sync()  # the files' data reaches the disk before the folder gets its final name
    except (FileExistsError, OSError) as exc:
        lost_race = isinstance(exc, FileExistsError) or exc.errno in (errno.ENOTEMPTY, errno.EEXIST)
        if lost_race and (root / "manifest.yaml").is_file():
            return root  # another process built it first: use the winner's copy
        raise
    return root


def ensure_synthetic(kind: str = "dhf1k", videos: int | None = None, frames: int = 48,
                     size: tuple[int, int] = (96, 128), seed: int = 0, root: str | os.PathLike | None = None,
                     progress: bool = True) -> Path:
    """The root of a synthetic dataset, generated on first use and cached (the path encodes the parameters).

    ``kind="dhf1k"``: 12 videos (train 001–008, val 009–010, test 011–012 without annotations, as DHF1K's
    test split) of 48 frames at 96×128 by default.
    ``kind="kinetics"``: 8 unlabeled videos in the Kinetics-400 layout.
    ``kind="ucf"`` / ``"hollywood2"``: 12 videos (8 training, 4 testing) in the UCF-Sports / Hollywood2
    frame-folder layout (:func:`write_folder_layout`).
    """
    kind = _check_kind(kind)
    path = Path(root) if root is not None else synthetic_path(kind, videos, frames, size, seed)
    if (path / "manifest.yaml").is_file():
        return path
    return build(path, kind, videos, frames, size, seed, progress=progress)


def _parse_size(text: str) -> tuple[int, int]:
    return _check_size(parse_size(text))


def _check_size(size: Sequence[int]) -> tuple[int, int]:
    h, w = (int(v) for v in size)
    if h < 16 or w < 16 or h % 2 or w % 2:
        raise UserError(f"synthetic frame size {h}x{w}: height and width must be even and at least 16 "
                        f"(video writers crop odd sizes)")
    return h, w


def cli_main(argv: list[str]) -> int:
    """``tinyhd synth ROOT [--kind dhf1k|kinetics|ucf|hollywood2] [--videos N] [--frames F] [--size HxW] [--seed S]``."""
    parser = argparse.ArgumentParser(prog="tinyhd synth", description=(
        "Write a synthetic dataset: DHF1K layout (AVI videos, maps, fixations, manifest.yaml) or an unlabeled "
        "Kinetics-400 layout. Deterministic for a seed."))
    parser.add_argument("root", help="new folder to create")
    parser.add_argument("--kind", default="dhf1k", choices=["dhf1k", "kinetics", "ucf", "hollywood2"])
    parser.add_argument("--videos", type=int, default=None, help="number of videos (default 12, kinetics 8)")
    parser.add_argument("--frames", type=int, default=48, help="frames per video (default 48)")
    parser.add_argument("--size", default="96x128", help="frame size HxW (default 96x128)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.frames < 1 or (args.videos is not None and args.videos < 1):
        raise UserError("--videos and --frames must be positive")
    root = Path(args.root)
    if root.exists() and not (root.is_dir() and not any(root.iterdir())):
        raise UserError(f"{root}: already exists; choose a new folder")
    path = build(root, args.kind, args.videos, args.frames, _parse_size(args.size), args.seed)
    print(f"wrote {path} (verify with: tinyhd verify-data {path / 'manifest.yaml'} {path})")
    return 0
