"""Dataset manifests (``data_manifests/*.yaml``) and ``tinyhd verify-data MANIFEST ROOT``.

A manifest says where a dataset comes from, how a copy is laid out on disk, which videos belong to which
split and how many there are (issue 2, item 5). The loaders in ``tinyhd.data`` read the layout from the
same manifest, so a copy that passes ``verify-data`` is a copy the loaders can read.

Schema (``schema_version: 1``)::

    name: dhf1k                   # short name: ``tinyhd verify-data dhf1k ROOT``
    kind: labeled | unlabeled
    ids: range | folder | glob    # how videos are enumerated (see below)
    video_id: "{n:03d}"           # range only: the id string of video number n
    layout:                       # the default variant; templates use {n} {id} {split_dir}
      source: "video/{n:03d}.AVI"           # a video file, or a folder of frames
      maps: "annotation/{n:04d}/maps"        # labeled only: one PNG per frame, grey level/255 = density
      fixations: "annotation/{n:04d}/fixation"  # labeled only: one PNG per frame, nonzero = fixated
    variants:                     # other layouts in common use; keys override ``layout``
      frames: {source: "annotation/{n:04d}/images"}
    splits:
      train: {range: [1, 600], count: 600, annotated: true}   # ids: range
      test:  {dir: testing, count: 47, annotated: true}       # ids: folder / glob: one folder per split
    frames: {"001": 48, ...}      # optional: frame count per video id

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
    """A manifest path, a dataset folder holding ``manifest.yaml``, or a short name like ``dhf1k``."""
    text = str(manifest)
    key = text.lower()
    if key in ALIASES and not Path(text).exists():
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
                         dir=s.get("dir"), classes=s.get("classes"))
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
    variants = raw.get("variants") or {}
    if not isinstance(variants, dict) or not all(isinstance(v, dict) for v in variants.values()):
        raise bad("'variants' must map variant names to layout overrides")
    return Manifest(name=str(raw["name"]), kind=raw["kind"], ids=raw["ids"], layout=dict(layout),
                    splits=splits, video_id=str(raw.get("video_id", "{n:03d}")),
                    variants={str(k): dict(v) for k, v in variants.items()},
                    frames={str(k): int(v) for k, v in frames.items()}, path=path, raw=raw)


def dataset_key(name: str) -> str:
    """A dataset name compared across spellings: aliases resolved and ``synthetic-`` dropped, so "kinetics",
    "kinetics400" and "synthetic-kinetics400" (the synthetic set in that layout) are the same dataset."""
    key = name.lower().removeprefix("synthetic-")
    return ALIASES.get(key, key)


def manifest_for_root(root: str | os.PathLike, dataset: str | None = None, refuse_other: bool = False) -> Manifest:
    """``ROOT/manifest.yaml`` when the dataset carries its own (synthetic sets do), else the named one. With
    ``refuse_other``, a named ``dataset`` that is not the one of the folder's own manifest is a UserError (the
    loaders pass their default name and keep the folder's; ``tinyhd cache-teacher`` refuses the contradiction)."""
    root = Path(root)
    own = root / "manifest.yaml"
    if own.is_file():
        m = load_manifest(own)
        if refuse_other and dataset is not None and dataset_key(load_manifest(dataset).name) != dataset_key(m.name):
            raise UserError(f"{own}: the dataset folder has its own manifest, for {m.name!r}, but the dataset given "
                            f"is {dataset!r}; name no dataset to use that manifest")
        return m
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
    checked: dict[str, int] = field(default_factory=dict)  # split -> videos checked
    variant: str = "default"

    @property
    def ok(self) -> bool:
        return not self.problems

    def add(self, path: Path, message: str) -> None:
        self.problems.append(Problem(Path(path), message))


def _readable_pngs(files: list[Path], report: Report, what: str) -> None:
    import cv2

    for f in files:
        img = cv2.imread(str(f), cv2.IMREAD_UNCHANGED)
        if img is None or img.size == 0:
            report.add(f, f"unreadable {what} image (corrupt or not an image)")


def _check_labels(entry: VideoEntry, report: Report, deep: bool) -> int | None:
    """Maps and fixations of one video: present, same frame names, readable. Returns the map count."""
    n_maps = None
    names: dict[str, list[str]] = {}
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
        if what == "map":
            n_maps = len(files)
        if deep:
            _readable_pngs(files, report, what)
    if len(names) == 2 and names["map"] != names["fixation"]:
        only_m = sorted(set(names["map"]) - set(names["fixation"]), key=natural_key)
        only_f = sorted(set(names["fixation"]) - set(names["map"]), key=natural_key)
        detail = []
        if only_m:
            detail.append(f"{len(only_m)} map(s) without fixation, e.g. {entry.maps / only_m[0]}")
        if only_f:
            detail.append(f"{len(only_f)} fixation(s) without map, e.g. {entry.fixations / only_f[0]}")
        report.add(entry.fixations, "maps and fixations disagree: " + "; ".join(detail or ["order differs"]))
    return n_maps


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
                _readable_pngs(files, report, "frame")
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


def verify(manifest: Manifest, root: str | os.PathLike, splits: list[str] | None = None,
           variant: str | None = None, deep: bool = True, progress: bool = False) -> Report:
    """Check a dataset copy: every expected video present, readable and consistent with its annotations.

    ``deep`` decodes every video and reads every PNG (thorough; minutes on the real DHF1K); without it,
    frame counts come from container headers and images are only listed.
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
        try:
            vids = manifest.videos(root, split, variant)
        except DataError as exc:
            report.add(Path(str(exc).split(": ", 1)[0]), str(exc).split(": ", 1)[-1])
            continue
        if manifest.ids != "range" and spec.count is not None:
            counts = spec.count if isinstance(spec.count, list) else [spec.count]
            if len(vids) not in counts:
                report.add(root / spec.dir, f"split {split!r} has {len(vids)} videos, the manifest expects "
                                            f"{' or '.join(map(str, counts))}")
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
            n_maps = _check_labels(e, report, deep)
            if n_src is not None and n_maps is not None and n_src != n_maps:
                report.add(e.source, f"{n_src} frames but {n_maps} maps in {e.maps}")
            if n_maps is not None and e.source is not None and e.source.exists():
                _check_sizes(e, report)
        if e.frames is not None and n_src is not None and n_src != e.frames:
            report.add(e.source, f"{n_src} frames, the manifest's frame table says {e.frames}")
    return report


def _check_sizes(e: VideoEntry, report: Report) -> None:
    """The first map must have the frames' size (maps are at the video's native resolution)."""
    from tinyhd.video import read_image, video_info

    try:
        info = video_info(e.source)
        maps = list_images(e.maps)
        h, w = read_image(maps[0], grayscale=True).shape
    except (DataError, IndexError):
        return  # already reported
    if (info["height"], info["width"]) != (h, w):
        report.add(maps[0], f"map is {h}×{w} but the video frames are {info['height']}×{info['width']}")


def cli_main(argv: list[str]) -> int:
    """``tinyhd verify-data MANIFEST ROOT``: one line per problem, then a summary; exit 1 if any."""
    parser = argparse.ArgumentParser(prog="tinyhd verify-data", description=(
        "Check a dataset copy against its manifest: lists every missing, unreadable or inconsistent item. "
        "MANIFEST is a .yaml path, a folder holding manifest.yaml, or a short name (dhf1k, ucf, hollywood2, "
        "kinetics)."))
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
    manifest = load_manifest(args.manifest)
    report = verify(manifest, root, splits=args.split, variant=args.variant, deep=not args.quick,
                    progress=sys.stderr.isatty())
    for problem in report.problems:
        print(problem)
    counts = ", ".join(f"{k} {v}" for k, v in report.checked.items())
    where = f"{manifest.name} (layout {report.variant}) at {root}"
    if report.ok:
        print(f"OK: {where}: {counts} videos checked, no problems")
        return 0
    print(f"FAILED: {where}: {len(report.problems)} problem(s); {counts} videos checked")
    return 1
