"""Dataset manifests (``data_manifests/*.yaml``) and ``tinyhd verify-data MANIFEST ROOT``.

A manifest says where a dataset comes from, how a copy is laid out on disk, which videos belong to which
split and how many there are (issue 2, item 5). The loaders in ``tinyhd.data`` read the layout from the
same manifest, so a copy that passes ``verify-data`` is a copy the loaders can read.

Schema (``schema_version: 1``)::

    name: dhf1k                   # short name: ``tinyhd verify-data dhf1k ROOT``
    kind: labeled | unlabeled
    ids: range | folder | glob    # how videos are enumerated (see below)
    video_id: "{n:03d}"           # range only: the id string of video number n
    frame_names: "{frame:04d}.png"  # optional: map/fixation file names, numbered 1..N without gaps
    layout:                       # the default variant; templates use {n} {id} {split_dir}
      source: "video/{n:03d}.AVI"           # a video file, or a folder of frames
      maps: "annotation/{n:04d}/maps"        # labeled only: one PNG per frame, grey level/255 = density
      fixations: "annotation/{n:04d}/fixation"  # labeled only: one PNG per frame, nonzero = fixated
    variants:                     # other layouts in common use; keys override ``layout``
      frames: {source: "annotation/{n:04d}/images"}
    splits:
      train: {range: [1, 600], count: 600, annotated: true}   # ids: range
      test:  {dir: testing, count: 47, annotated: true}       # ids: folder / glob: one folder per split
      # optional for ids folder/glob: ``videos: [id, ...]`` (the split's ids; verify-data names missing and
      # extra ones); ``count_uncertain: true`` (the sources disagree: a count between the smallest and the
      # largest of ``count`` is a warning, one below the smallest or above the largest is still a problem);
      # ``optional: true`` (a copy without the split's ``dir`` is complete: verify-data notes its absence
      # instead of failing, unless the split is asked for with ``--split``; Kinetics-400's val_256)
    frames: {"001": 48, ...}      # optional: frame count per video id

Every map and fixation PNG has the size of its video's frames (the annotations are at the video's native
resolution); ``verify-data`` checks it and the loaders refuse other sizes, naming the file.

``ids: range`` numbers the videos (DHF1K); ``ids: folder`` takes every sub-folder of the split's ``dir`` as
a video (UCF-Sports, Hollywood2 frame folders); ``ids: glob`` takes every video file
``<split dir>/<class>/<file>`` (Kinetics-400), the id being ``<class>/<file stem>``.
"""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import yaml

from tinyhd.errors import DataError, UserError
from tinyhd.paths import manifests_dir
from tinyhd.video import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS, count_frames, list_images, natural_key

SCHEMA_VERSION = 1

# short names accepted wherever a manifest is expected
ALIASES = {
    "dhf1k": "dhf1k", "ucf": "ucf_sports", "ucf_sports": "ucf_sports", "ucf-sports": "ucf_sports",
    "ucfsports": "ucf_sports", "hollywood2": "hollywood2", "hollywood": "hollywood2",
    "kinetics": "kinetics400", "kinetics400": "kinetics400", "kinetics-400": "kinetics400",
}


@dataclass(frozen=True)
class VideoEntry:
    """One video of a split, with the paths the layout gives it (which may or may not exist)."""

    id: str
    split: str
    source: Path                  # video file or frame folder
    maps: Path | None = None      # folder of GT density PNGs (labeled, annotated splits)
    fixations: Path | None = None  # folder of fixation PNGs
    frames: int | None = None     # frame count from the manifest's table, if it has one


@dataclass
class SplitSpec:
    name: str
    count: int | list[int] | None = None
    annotated: bool = True
    range: tuple[int, int] | None = None
    dir: str | None = None
    classes: int | None = None
    videos: list[str] | None = None   # ids folder/glob: the split's video ids, when known
    count_uncertain: bool = False      # the sources disagree: a count between theirs is only a warning
    optional: bool = False             # ids folder/glob: a copy may lack the split's folder altogether


@dataclass
class Manifest:
    """A parsed manifest. ``videos(root, split)`` lists a split's videos with their paths under ``root``."""

    name: str
    kind: str
    ids: str
    layout: dict[str, str | None]
    splits: dict[str, SplitSpec]
    video_id: str = "{n:03d}"
    variants: dict[str, dict[str, str | None]] = field(default_factory=dict)
    frames: dict[str, int] = field(default_factory=dict)
    frame_names: str | None = None     # e.g. "{frame:04d}.png": label files are named 1..N without gaps
    path: Path | None = None
    raw: dict[str, Any] = field(default_factory=dict)

    @property
    def labeled(self) -> bool:
        return self.kind == "labeled"

    def variant_names(self) -> list[str]:
        return ["default", *self.variants]

    def layout_for(self, variant: str | None = None) -> dict[str, str | None]:
        if variant in (None, "default"):
            return dict(self.layout)
        if variant not in self.variants:
            raise UserError(f"{self.path or self.name}: no layout variant {variant!r} "
                            f"(known: {', '.join(self.variant_names())})")
        return {**self.layout, **self.variants[variant]}

    def _split(self, split: str) -> SplitSpec:
        if split not in self.splits:
            raise UserError(f"{self.path or self.name}: no split {split!r} (known: {', '.join(self.splits)})")
        return self.splits[split]

    def detect_variant(self, root: str | os.PathLike) -> str:
        """The first layout variant whose first video source exists under ``root`` ("default" if none does)."""
        root = Path(root)
        for variant in self.variant_names():
            for split in self.splits:
                try:
                    entries = self.videos(root, split, variant)
                except DataError:
                    continue
                if entries and entries[0].source.exists():
                    return variant
        return "default"

    def videos(self, root: str | os.PathLike, split: str, variant: str | None = None) -> list[VideoEntry]:
        """The videos of ``split`` under ``root``: every expected id for ``ids: range``, what is on disk else."""
        root = Path(root)
        spec = self._split(split)
        layout = self.layout_for(variant)
        annotated = self.labeled and spec.annotated
        out: list[VideoEntry] = []
        for fields in self._enumerate(root, spec):
            vid = fields["id"]
            source = root / _fill(layout["source"], fields, self) if layout.get("source") else None
            if fields.get("_file"):  # glob: the source is the file found on disk
                source = fields["_file"]
            maps = root / _fill(layout["maps"], fields, self) if annotated and layout.get("maps") else None
            fix = root / _fill(layout["fixations"], fields, self) if annotated and layout.get("fixations") else None
            out.append(VideoEntry(vid, split, source, maps, fix, self.frames.get(vid)))
        return out

    def _enumerate(self, root: Path, spec: SplitSpec) -> Iterator[dict[str, Any]]:
        if self.ids == "range":
            lo, hi = spec.range
            for n in range(lo, hi + 1):
                yield {"n": n, "id": self.video_id.format(n=n), "split_dir": spec.dir or ""}
        elif self.ids == "folder":
            base = root / spec.dir
            if not base.is_dir():
                raise DataError(f"{base}: split folder for {spec.name!r} does not exist")
            for p in sorted((p for p in base.iterdir() if p.is_dir() and not p.name.startswith(".")),
                            key=lambda p: natural_key(p.name)):
                yield {"id": p.name, "name": p.name, "split_dir": spec.dir}
        elif self.ids == "glob":
            base = root / spec.dir
            if not base.is_dir():
                raise DataError(f"{base}: split folder for {spec.name!r} does not exist")
            for cls in sorted((p for p in base.iterdir() if p.is_dir() and not p.name.startswith(".")),
                              key=lambda p: natural_key(p.name)):
                for f in sorted((f for f in cls.iterdir() if f.suffix.lower() in VIDEO_EXTENSIONS
                                 and not f.name.startswith(".")), key=lambda p: natural_key(p.name)):
                    yield {"id": f"{cls.name}/{f.stem}", "name": f.stem, "class": cls.name,
                           "split_dir": spec.dir, "_file": f}
        else:  # validated at load time
            raise AssertionError(self.ids)


def _fill(template: str, fields: dict[str, Any], manifest: Manifest) -> str:
    try:
        return template.format(**{k: v for k, v in fields.items() if not k.startswith("_")})
    except (KeyError, ValueError, IndexError) as exc:
        raise UserError(f"{manifest.path or manifest.name}: bad layout template {template!r} ({exc})") from None


# ----------------------------------------------------------------------------------------------------------
# loading


def resolve_manifest_path(manifest: str | os.PathLike) -> Path:
    """A manifest path, a dataset folder holding ``manifest.yaml``, or a short name like ``dhf1k``.

    A known short name (any case, no path separator, no ``.yaml``/``.yml`` suffix) always means the packaged
    manifest, whatever the current folder holds: a ``./dhf1k`` dataset folder must not shadow it. Write
    ``./dhf1k`` (or pass a ``Path``) to mean the folder.
    """
    text = str(manifest)
    key = text.lower()
    is_name = isinstance(manifest, str) and not any(sep in text for sep in ("/", os.sep, os.altsep or "/"))
    if is_name and key in ALIASES:
        return manifests_dir() / f"{ALIASES[key]}.yaml"
    path = Path(text).expanduser()
    if path.is_dir():
        path = path / "manifest.yaml"
    if not path.is_file():
        names = ", ".join(sorted(set(ALIASES.values())))
        raise UserError(f"{text}: no such manifest (give a .yaml path, a dataset folder with manifest.yaml, "
                        f"or one of: {names})")
    return path


def load_manifest(manifest: str | os.PathLike) -> Manifest:
    """Parse and validate a manifest; errors name the file and the offending key."""
    path = resolve_manifest_path(manifest)
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise UserError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot read manifest ({exc.strerror})") from None
    return parse_manifest(raw, path)


def parse_manifest(raw: Any, path: Path | None = None) -> Manifest:
    where = path or "manifest"

    def bad(msg: str) -> UserError:
        return UserError(f"{where}: {msg}")

    if not isinstance(raw, dict):
        raise bad("expected a YAML mapping at the top level")
    version = raw.get("schema_version")
    if version != SCHEMA_VERSION:
        raise bad(f"schema_version is {version!r}; this tinyhd reads schema_version {SCHEMA_VERSION}")
    for key in ("name", "kind", "ids", "layout", "splits"):
        if key not in raw:
            raise bad(f"missing key {key!r}")
    if raw["kind"] not in ("labeled", "unlabeled"):
        raise bad(f"kind must be 'labeled' or 'unlabeled', not {raw['kind']!r}")
    if raw["ids"] not in ("range", "folder", "glob"):
        raise bad(f"ids must be 'range', 'folder' or 'glob', not {raw['ids']!r}")
    layout = raw["layout"]
    if not isinstance(layout, dict) or ("source" not in layout and raw["ids"] != "glob"):
        raise bad("layout must be a mapping with at least 'source'")
    if raw["kind"] == "labeled" and not (layout.get("maps") and layout.get("fixations")):
        raise bad("a labeled layout needs 'maps' and 'fixations'")
    splits: dict[str, SplitSpec] = {}
    if not isinstance(raw["splits"], dict) or not raw["splits"]:
        raise bad("splits must be a non-empty mapping")
    for name, s in raw["splits"].items():
        if not isinstance(s, dict):
            raise bad(f"split {name!r} must be a mapping")
        spec = SplitSpec(name=str(name), count=s.get("count"), annotated=bool(s.get("annotated", True)),
                         dir=s.get("dir"), classes=s.get("classes"),
                         count_uncertain=bool(s.get("count_uncertain", False)),
                         optional=s.get("optional", False))
        if not isinstance(spec.optional, bool):
            raise bad(f"split {name!r}: 'optional' must be true or false, not {spec.optional!r}")
        if spec.optional and raw["ids"] == "range":
            raise bad(f"split {name!r}: 'optional' applies to ids folder or glob only (a split with its own dir)")
        if s.get("videos") is not None:
            ids = s["videos"]
            if raw["ids"] == "range" or not isinstance(ids, list) or not all(isinstance(v, str) for v in ids):
                raise bad(f"split {name!r}: 'videos' must be a list of video ids (ids folder or glob only)")
            if len(set(ids)) != len(ids):
                raise bad(f"split {name!r}: 'videos' lists an id twice")
            counts = spec.count if isinstance(spec.count, list) else [spec.count]
            if spec.count is not None and len(ids) not in counts:
                raise bad(f"split {name!r}: 'videos' lists {len(ids)} ids but count is {spec.count}")
            spec.videos = list(ids)
        if raw["ids"] == "range":
            r = s.get("range")
            if not (isinstance(r, (list, tuple)) and len(r) == 2 and all(isinstance(v, int) for v in r)
                    and r[0] <= r[1]):
                raise bad(f"split {name!r}: 'range' must be [first, last] video numbers")
            spec.range = (int(r[0]), int(r[1]))
            if spec.count is not None and spec.count != r[1] - r[0] + 1:
                raise bad(f"split {name!r}: count {spec.count} disagrees with range {r[0]}–{r[1]}")
        elif not spec.dir:
            raise bad(f"split {name!r}: 'dir' is required when ids is {raw['ids']!r}")
        splits[spec.name] = spec
    frames = raw.get("frames") or {}
    if not isinstance(frames, dict) or not all(isinstance(v, int) and v > 0 for v in frames.values()):
        raise bad("'frames' must map video ids to positive frame counts")
    frame_names = raw.get("frame_names")
    if frame_names is not None:
        try:
            ok = isinstance(frame_names, str) and frame_names.format(frame=1) != frame_names.format(frame=2)
        except (KeyError, ValueError, IndexError):
            ok = False
        if not ok:
            raise bad(f"'frame_names' must be a template using {{frame}}, e.g. \"{{frame:04d}}.png\", "
                      f"not {frame_names!r}")
    variants = raw.get("variants") or {}
    if not isinstance(variants, dict) or not all(isinstance(v, dict) for v in variants.values()):
        raise bad("'variants' must map variant names to layout overrides")
    return Manifest(name=str(raw["name"]), kind=raw["kind"], ids=raw["ids"], layout=dict(layout),
                    splits=splits, video_id=str(raw.get("video_id", "{n:03d}")),
                    variants={str(k): dict(v) for k, v in variants.items()},
                    frames={str(k): int(v) for k, v in frames.items()}, frame_names=frame_names, path=path,
                    raw=raw)


def frame_name_problem(names: list[str], template: str) -> str | None:
    """None when ``names`` are exactly ``template`` for frames 1..N (N = len(names)), else what is wrong.

    Frames, maps and fixations are paired by position, so a gap (a missing ``0020.png`` with an extra
    ``0049.png``) would silently shift every later map by one frame; this cheap check (names only) catches it.
    """
    expected = [template.format(frame=k) for k in range(1, len(names) + 1)]
    if names == expected:
        return None
    have, want = set(names), set(expected)
    missing = [n for n in expected if n not in have]
    extra = sorted(have - want, key=natural_key)

    def few(items: list[str]) -> str:
        return ", ".join(items[:5]) + (f" and {len(items) - 5} more" if len(items) > 5 else "")

    detail = []
    if missing:
        detail.append(f"missing {few(missing)}")
    if extra:
        detail.append(f"unexpected {few(extra)}")
    return (f"{len(names)} files not named {expected[0]}…{expected[-1]} without gaps (frame_names "
            f"{template!r}): " + "; ".join(detail or ["order differs"]))


def dataset_key(name: str) -> str:
    """A dataset name compared across spellings: aliases resolved and ``synthetic-`` dropped, so "kinetics",
    "kinetics400" and "synthetic-kinetics400" (the synthetic set in that layout) are the same dataset."""
    key = name.lower().removeprefix("synthetic-")
    return ALIASES.get(key, key)


def manifest_for_root(root: str | os.PathLike, dataset: str | None = None, refuse_other: bool = False,
                      default: str | None = None) -> Manifest:
    """``ROOT/manifest.yaml`` when the dataset carries its own (synthetic sets do), else the named one.

    ``default`` is the manifest used when no ``dataset`` is named and ROOT has no manifest of its own. With
    ``refuse_other``, a named ``dataset`` that is not the one of the folder's own manifest is a UserError (the
    loaders pass it whenever a dataset is named: naming one and silently reading another would be wrong)."""
    root = Path(root)
    own = root / "manifest.yaml"
    if own.is_file():
        m = load_manifest(own)
        if refuse_other and dataset is not None and dataset_key(load_manifest(dataset).name) != dataset_key(m.name):
            raise UserError(f"{own}: the dataset folder has its own manifest, for {m.name!r}, but the dataset given "
                            f"is {dataset!r}; name no dataset to use that manifest")
        return m
    dataset = dataset if dataset is not None else default
    if dataset is None:
        raise DataError(f"{root}: no manifest.yaml in the dataset folder; name the dataset (e.g. 'dhf1k')")
    return load_manifest(dataset)


# ----------------------------------------------------------------------------------------------------------
# verify-data


@dataclass
class Problem:
    path: Path
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


@dataclass
class Report:
    problems: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)  # doubtful, not wrong (e.g. an uncertain count)
    notes: list[Problem] = field(default_factory=list)     # neither (e.g. an optional split that is absent)
    checked: dict[str, int] = field(default_factory=dict)  # split -> videos checked
    variant: str = "default"

    @property
    def ok(self) -> bool:
        return not self.problems

    def add(self, path: Path, message: str) -> None:
        self.problems.append(Problem(Path(path), message))

    def warn(self, path: Path, message: str) -> None:
        self.warnings.append(Problem(Path(path), message))

    def note(self, path: Path, message: str) -> None:
        self.notes.append(Problem(Path(path), message))


Shape = tuple[int, int]


def _readable_pngs(files: list[Path], report: Report, what: str) -> dict[Path, Shape]:
    """Read every image; unreadable ones are reported. Returns the (height, width) of the readable ones."""
    import cv2

    shapes: dict[Path, Shape] = {}
    for f in files:
        img = cv2.imread(str(f), cv2.IMREAD_UNCHANGED)
        if img is None or img.size == 0:
            report.add(f, f"unreadable {what} image (corrupt or not an image)")
        else:
            shapes[f] = (int(img.shape[0]), int(img.shape[1]))
    return shapes


def _check_labels(entry: VideoEntry, report: Report, deep: bool,
                  frame_names: str | None = None) -> tuple[int | None, dict[str, dict[Path, Shape]]]:
    """Maps and fixations of one video: present, same frame names (numbered 1..N without gaps when the manifest
    has ``frame_names``), readable. Returns the map count and, in deep mode, every image's size per kind."""
    n_maps = None
    names: dict[str, list[str]] = {}
    shapes: dict[str, dict[Path, Shape]] = {}
    for what, folder in (("map", entry.maps), ("fixation", entry.fixations)):
        if folder is None:
            continue
        if not folder.is_dir():
            report.add(folder, f"missing {what} folder")
            continue
        files = list_images(folder)
        if not files:
            report.add(folder, f"{what} folder has no images")
            continue
        names[what] = [f.name for f in files]
        if frame_names:
            problem = frame_name_problem(names[what], frame_names)
            if problem:
                report.add(folder, f"{what} {problem}")
        if what == "map":
            n_maps = len(files)
        if deep:
            shapes[what] = _readable_pngs(files, report, what)
    if len(names) == 2 and names["map"] != names["fixation"]:
        only_m = sorted(set(names["map"]) - set(names["fixation"]), key=natural_key)
        only_f = sorted(set(names["fixation"]) - set(names["map"]), key=natural_key)
        detail = []
        if only_m:
            detail.append(f"{len(only_m)} map(s) without fixation, e.g. {entry.maps / only_m[0]}")
        if only_f:
            detail.append(f"{len(only_f)} fixation(s) without map, e.g. {entry.fixations / only_f[0]}")
        report.add(entry.fixations, "maps and fixations disagree: " + "; ".join(detail or ["order differs"]))
    return n_maps, shapes


def _check_source(entry: VideoEntry, report: Report, deep: bool) -> int | None:
    src = entry.source
    if src is None or not src.exists():
        report.add(src, "missing video" if src is None or src.suffix else "missing frame folder")
        return None
    try:
        if src.is_dir():
            files = list_images(src)
            if not files:
                report.add(src, "frame folder has no images")
                return None
            if deep:
                shapes = _readable_pngs(files, report, "frame")
                _same_size(src, shapes, next(iter(shapes.values()), None), "frame", "the first frame is", report)
            return len(files)
        if deep:
            n = count_frames(src)
            if n == 0:
                report.add(src, "no frame decodes (empty, truncated or corrupt video)")
                return None
            return n
        from tinyhd.video import video_info

        return video_info(src)["frames"]
    except DataError as exc:
        report.add(src, str(exc).split(": ", 1)[-1])
        return None


def _unexpected_entries(manifest: Manifest, root: Path, variant: str, report: Report) -> None:
    """For ``ids: range``: anything in the layout's parent folders that no split expects (renamed items)."""
    expected: dict[Path, set[str]] = {}
    for split in manifest.splits:
        for e in manifest.videos(root, split, variant):
            for p in (e.source, e.maps, e.fixations):
                if p is None:
                    continue
                rel = p.relative_to(root)
                top = root / rel.parts[0]
                if len(rel.parts) >= 2:
                    expected.setdefault(top, set()).add(rel.parts[1])
    for top, names in expected.items():
        if not top.is_dir():
            continue
        for child in sorted(top.iterdir(), key=lambda p: natural_key(p.name)):
            if child.name.startswith(".") or child.name in names:
                continue
            report.add(child, "unexpected item (renamed or extra video?) — no split of the manifest lists it")


def _few_ids(ids: list[str], n: int = 6) -> str:
    """``a, b, c … x, y, z`` for long lists: enough to see which ids a folder holds."""
    if len(ids) <= 2 * n:
        return ", ".join(ids)
    return f"{', '.join(ids[:n])} … {', '.join(ids[-n:])}"


def _check_split_ids(manifest: Manifest, spec: SplitSpec, vids: list[VideoEntry], root: Path,
                     report: Report) -> None:
    """``ids: folder`` / ``glob``: the split's ids against the manifest's list (each missing or extra one named),
    or, without a list, its count (naming the ids found, so a wrong copy can be compared by eye)."""
    split, base = spec.name, root / spec.dir
    found = [e.id for e in vids]
    if spec.videos is not None:
        have, want = set(found), set(spec.videos)
        for vid in spec.videos:
            if vid not in have:
                report.add(base / vid, f"missing video (split {split!r} of the manifest lists it)")
        for e in vids:
            if e.id not in want:
                report.add(e.source.parent if manifest.ids == "folder" else e.source,
                           f"unexpected video {e.id!r} (split {split!r} of the manifest does not list it)")
        return
    if spec.count is None:
        return
    counts = spec.count if isinstance(spec.count, list) else [spec.count]
    if len(vids) in counts:
        return
    message = (f"split {split!r} has {len(vids)} videos, the manifest expects {' or '.join(map(str, counts))}"
               f" (found: {_few_ids(found) or 'none'})")
    if spec.count_uncertain and min(counts) < len(vids) < max(counts):
        # between two of the sources' counts: plausibly another cut of the same videos, so only doubtful
        report.warn(base, message + "; the sources disagree on this count, so one between them is only a "
                                    f"warning (see the notes of {manifest.path or manifest.name})")
    elif spec.count_uncertain:
        # fewer than the smallest count any source gives (a partial copy) or more than the largest: wrong
        report.add(base, message + f"; the sources disagree on this count, but {len(vids)} is "
                                   f"{'below the smallest' if len(vids) < min(counts) else 'above the largest'}")
    else:
        report.add(base, message)


def verify(manifest: Manifest, root: str | os.PathLike, splits: list[str] | None = None,
           variant: str | None = None, deep: bool = True, progress: bool = False) -> Report:
    """Check a dataset copy: every expected video present, readable and consistent with its annotations.

    ``deep`` decodes every video and reads every PNG (thorough; minutes on the real DHF1K), checking every
    image's size; without it, frame counts come from container headers, images are only listed and only the
    first map and fixation of each video are measured. A split marked ``optional`` whose folder is absent is
    skipped with a note, unless ``splits`` names it.
    """
    root = Path(root)
    if not root.exists():
        raise DataError(f"{root}: dataset folder does not exist")
    if not root.is_dir():
        raise DataError(f"{root}: expected a dataset folder, found a file")
    variant = variant or manifest.detect_variant(root)
    report = Report(variant=variant)
    entries: list[VideoEntry] = []
    for split in splits or list(manifest.splits):
        spec = manifest._split(split)
        report.checked[split] = 0
        if spec.optional and not splits and not (root / spec.dir).exists():
            report.note(root / spec.dir, f"optional split {split!r} is not in this copy; skipped "
                                         f"(name it with --split {split} to require it)")
            continue
        try:
            vids = manifest.videos(root, split, variant)
        except DataError as exc:
            report.add(Path(str(exc).split(": ", 1)[0]), str(exc).split(": ", 1)[-1])
            continue
        if manifest.ids != "range":
            _check_split_ids(manifest, spec, vids, root, report)
        if spec.classes is not None and manifest.ids == "glob":
            n_cls = len({e.id.split("/")[0] for e in vids})
            if n_cls != spec.classes:
                report.add(root / spec.dir, f"split {split!r} has {n_cls} classes, the manifest expects {spec.classes}")
        report.checked[split] = len(vids)
        entries += vids
    if manifest.ids == "range":
        _unexpected_entries(manifest, root, variant, report)
    iterator: Any = entries
    if progress:
        from tqdm import tqdm

        iterator = tqdm(entries, desc=f"verify {manifest.name}", unit="video", file=sys.stderr)
    for e in iterator:
        n_src = _check_source(e, report, deep)
        if manifest.labeled and e.maps is not None:
            n_maps, shapes = _check_labels(e, report, deep, manifest.frame_names)
            if n_src is not None and n_maps is not None and n_src != n_maps:
                report.add(e.source, f"{n_src} frames but {n_maps} maps in {e.maps}")
            if n_maps is not None and e.source is not None and e.source.exists():
                _check_sizes(e, report, shapes if deep else None)
        if e.frames is not None and n_src is not None and n_src != e.frames:
            report.add(e.source, f"{n_src} frames, the manifest's frame table says {e.frames}")
    return report


def _same_size(folder: Path, shapes: dict[Path, Shape], want: Shape | None, what: str, ref: str,
               report: Report) -> None:
    """One line per folder: the first image whose size is not ``want`` (and how many others differ)."""
    if want is None:
        return
    bad = [(f, hw) for f, hw in shapes.items() if hw != want]
    if bad:
        f, (h, w) = bad[0]
        more = f" ({len(bad)} of the {len(shapes)} {what} images in {folder} differ)" if len(bad) > 1 else ""
        report.add(f, f"{what} is {h}×{w} but {ref} {want[0]}×{want[1]}{more}")


def _check_sizes(e: VideoEntry, report: Report, shapes: dict[str, dict[Path, Shape]] | None) -> None:
    """Maps and fixations must have the video frames' size (they are at the video's native resolution).

    ``shapes`` (deep mode) holds the size of every map and fixation; without it only the first of each is read.
    """
    from tinyhd.video import read_image, video_info

    try:
        info = video_info(e.source)
    except DataError:
        return  # already reported
    frame = (info["height"], info["width"])
    if shapes is None:
        shapes = {}
        for what, folder in (("map", e.maps), ("fixation", e.fixations)):
            try:
                first = list_images(folder)[0]
                shapes[what] = {first: read_image(first, grayscale=True).shape}
            except (DataError, IndexError):
                continue  # already reported
    for what, folder in (("map", e.maps), ("fixation", e.fixations)):
        _same_size(folder, shapes.get(what, {}), frame, what, "the video frames are", report)


def _own_manifest_line(manifest: Manifest, root: Path) -> tuple[Manifest, str | None, bool]:
    """The manifest verify-data checks ROOT against, a line saying why if it is not the one named, and whether
    that pairing is an error. ROOT's own ``manifest.yaml`` is what the loaders read for ROOT, so it wins over
    a shipped manifest of the same dataset; a manifest of another dataset is refused, as the loaders do."""
    own = root / "manifest.yaml"
    if not own.is_file() or (manifest.path is not None and manifest.path.resolve() == own.resolve()):
        return manifest, None, False
    mine = load_manifest(own)
    if dataset_key(mine.name) != dataset_key(manifest.name):
        return manifest, (f"{own}: the dataset folder has its own manifest, for {mine.name!r}, not {manifest.name!r} "
                          f"({manifest.path}); the loaders refuse this pairing. Check it with "
                          f"`tinyhd verify-data {root}`, or name the right dataset"), True
    return mine, (f"{own}: checking the folder's own manifest ({mine.name!r}), which the loaders use for it, "
                  f"instead of {manifest.name!r} ({manifest.path})"), False


def cli_main(argv: list[str]) -> int:
    """``tinyhd verify-data MANIFEST ROOT``: one line per problem, then a summary; exit 1 if any."""
    parser = argparse.ArgumentParser(prog="tinyhd verify-data", description=(
        "Check a dataset copy against its manifest: lists every missing, unreadable or inconsistent item. "
        "MANIFEST is a .yaml path, a folder holding manifest.yaml, or a short name (dhf1k, ucf, hollywood2, "
        "kinetics). A ROOT holding its own manifest.yaml (synthetic sets) is checked against that one, as the "
        "loaders read it."))
    parser.add_argument("manifest")
    parser.add_argument("root", nargs="?", help="dataset folder (default: MANIFEST itself when it is a dataset "
                                                "folder holding its own manifest.yaml)")
    parser.add_argument("--split", action="append", help="check only this split (repeatable)")
    parser.add_argument("--variant", help="layout variant (default: detected from what is on disk)")
    parser.add_argument("--quick", action="store_true",
                        help="trust container frame counts and only list images (no full decode)")
    args = parser.parse_args(argv)
    if args.root is None:
        if not (Path(args.manifest).expanduser() / "manifest.yaml").is_file():
            raise UserError(f"{args.manifest}: give ROOT, or a dataset folder that holds its own manifest.yaml")
        args.root = args.manifest
    root = Path(args.root).expanduser()
    if not root.exists():
        raise DataError(f"{root}: dataset folder does not exist")
    manifest, line, refused = _own_manifest_line(load_manifest(args.manifest), root)
    if line:
        print(line)
    if refused:
        print(f"FAILED: {root} is not a copy of {manifest.name}: 1 problem(s); no videos checked")
        return 1
    report = verify(manifest, root, splits=args.split, variant=args.variant, deep=not args.quick,
                    progress=sys.stderr.isatty())
    for problem in report.problems:
        print(problem)
    for warning in report.warnings:
        print(f"{warning.path}: warning: {warning.message}")
    for note in report.notes:
        print(f"{note.path}: note: {note.message}")
    counts = ", ".join(f"{k} {v}" for k, v in report.checked.items() if v)
    checked = f"{counts} videos checked" if counts else "no videos checked"
    warned = f", {len(report.warnings)} warning(s)" if report.warnings else ""
    where = f"{manifest.name} (layout {report.variant}) at {root}"
    if report.ok:
        print(f"OK: {where}: {checked}, no problems{warned}")
        return 0
    print(f"FAILED: {where}: {len(report.problems)} problem(s){warned}; {checked}")
    return 1
