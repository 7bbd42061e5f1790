"""Registry of the authors' released TinyHD checkpoints: list, opt-in verified download, verify.

The registry is ``data_manifests/weights.yaml`` (file names, download address, git blob id, sha256 where
known, training set, variant). Nothing is downloaded unless a user asks (``tinyhd weights download NAME``);
a download is streamed to a temporary file, verified (sha256 when known, else the git blob id — the sha1 of
``b"blob <size>\\0" + content`` that ``git hash-object`` prints) and only then renamed into place.

    tinyhd weights list
    tinyhd weights download d123m_rc4_rc1T.pth [--dest DIR]
    tinyhd weights verify FILE
"""
from __future__ import annotations

import argparse
import hashlib
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tinyhd.errors import CheckpointError, UserError
from tinyhd.paths import atomic_open, cache_dir, manifests_dir

_CHUNK = 1 << 20
_RC = {1: "×1", 2: "×½", 4: "×¼"}


@dataclass(frozen=True)
class WeightFile:
    """One released checkpoint as listed in ``weights.yaml``."""

    name: str
    url: str
    git_blob: str
    sha256: str | None
    training_set: str
    description: str
    variant: dict[str, Any]


def registry(path: str | os.PathLike | None = None) -> dict[str, WeightFile]:
    """The released checkpoints, by file name."""
    path = Path(path) if path is not None else manifests_dir() / "weights.yaml"
    try:
        raw = yaml.safe_load(path.read_text())
        pattern = raw["url_pattern"]
        return {name: WeightFile(name=name, url=pattern.format(file=name), git_blob=entry["git_blob"],
                                 sha256=entry.get("sha256"), training_set=entry["training_set"],
                                 description=entry["description"], variant=dict(entry["variant"]))
                for name, entry in raw["weights"].items()}
    except (OSError, yaml.YAMLError, KeyError, TypeError, AttributeError) as exc:
        raise UserError(f"{path}: not a valid weights registry ({type(exc).__name__}: {exc})") from exc


class _Hasher:
    """sha256 and git blob id (sha1 of b"blob <size>\\0" + content) in one pass."""

    def __init__(self, size: int) -> None:
        self.sha256 = hashlib.sha256()
        self.git = hashlib.sha1(f"blob {size}\0".encode())

    def update(self, chunk: bytes) -> None:
        self.sha256.update(chunk)
        self.git.update(chunk)


def file_hashes(path: str | os.PathLike) -> dict[str, str]:
    """``{"sha256": ..., "git_blob": ...}`` of a file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    h = _Hasher(path.stat().st_size)
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    return {"sha256": h.sha256.hexdigest(), "git_blob": h.git.hexdigest()}


def _match(hashes: dict[str, str], entry: WeightFile) -> bool:
    if entry.sha256:
        return hashes["sha256"] == entry.sha256 and hashes["git_blob"] == entry.git_blob
    return hashes["git_blob"] == entry.git_blob


def verify(path: str | os.PathLike, name: str | None = None) -> WeightFile:
    """The registry entry whose hashes ``path`` has (by ``name`` if given); CheckpointError if none."""
    path = Path(path)
    hashes = file_hashes(path)
    entries = registry()
    if name is not None:
        if name not in entries:
            raise UserError(f"{name}: not a released checkpoint; known: {', '.join(entries)}")
        if not _match(hashes, entries[name]):
            raise CheckpointError(f"{path}: content does not match the released {name} (git blob "
                                  f"{hashes['git_blob']}, expected {entries[name].git_blob})")
        return entries[name]
    for entry in entries.values():
        if _match(hashes, entry):
            return entry
    raise CheckpointError(f"{path}: not one of the authors' released checkpoints (git blob {hashes['git_blob']}, "
                          f"sha256 {hashes['sha256']})")


def default_dest() -> Path:
    """``<cache>/weights``: where downloads go unless ``dest`` is given."""
    return cache_dir() / "weights"


def download(name: str, dest: str | os.PathLike | None = None, timeout: float = 60.0) -> Path:
    """Download released checkpoint ``name`` into folder ``dest`` (default :func:`default_dest`), verified.

    A file already there that verifies is reused. The download is written atomically and kept only if its
    hashes match the registry.
    """
    entries = registry()
    if name not in entries:
        raise UserError(f"{name}: not a released checkpoint; known: {', '.join(entries)}")
    entry = entries[name]
    folder = Path(dest) if dest is not None else default_dest()
    target = folder / name
    damaged = ""  # why a copy already at target is not used
    if target.is_file():
        try:
            verify(target, name)
            return target
        except CheckpointError:  # a stale or damaged copy: download again (replaced atomically)
            damaged = (f"; the file already at {target} does not verify (git blob {file_hashes(target)['git_blob']}, "
                       f"expected {entry.git_blob}): replace it")
    try:
        with urllib.request.urlopen(entry.url, timeout=timeout) as resp:
            size = int(resp.headers.get("Content-Length") or 0)
            with atomic_open(target, "wb") as fh:
                data_size = 0
                chunks = []
                while chunk := resp.read(_CHUNK):
                    fh.write(chunk)
                    chunks.append(chunk)
                    data_size += len(chunk)
                if size and size != data_size:
                    raise UserError(f"{entry.url}: download truncated ({data_size} of {size} bytes)")
                h = _Hasher(data_size)
                for chunk in chunks:
                    h.update(chunk)
                got = {"sha256": h.sha256.hexdigest(), "git_blob": h.git.hexdigest()}
                if not _match(got, entry):
                    raise CheckpointError(f"{entry.url}: downloaded content does not match the registry (git blob "
                                          f"{got['git_blob']}, expected {entry.git_blob}); nothing was written")
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        reason = getattr(exc, "reason", exc)
        where = f"place it at {target}" if folder.is_dir() else f"create the folder {folder} and place it at {target}"
        use = "" if dest is None else f"; pass that path to --checkpoint (only {default_dest()} is searched by name)"
        raise UserError(f"could not download {name} from {entry.url} ({reason}); offline, fetch it elsewhere, "
                        f"{where} (then `tinyhd weights verify {target}`){use}{damaged}") from exc
    return target


def cli_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="tinyhd weights", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("list", help="the released checkpoints")
    p_dl = sub.add_parser("download", help="download and verify one released checkpoint")
    p_dl.add_argument("name")
    p_dl.add_argument("--dest", default=None,
                      help=f"folder (default {default_dest()}, where predict/evaluate find a release by its name; "
                           f"a copy elsewhere is used by passing its path)")
    p_v = sub.add_parser("verify", help="check that a file is one of the released checkpoints")
    p_v.add_argument("file")
    p_v.add_argument("--name", default=None, help="the file it should be")
    args = parser.parse_args(argv)
    if args.cmd == "list":
        entries = registry()
        width = max(map(len, entries))
        for e in entries.values():
            v = e.variant
            print(f"{e.name.ljust(width)}  {v['output']:<6} {_RC[v['reduction']]}  {e.training_set:<10}  "
                  f"{'sha256' if e.sha256 else 'git blob':<8}  {e.description}")
        return 0
    if args.cmd == "download":
        print(download(args.name, args.dest))
        return 0
    entry = verify(args.file, args.name)
    print(f"{args.file}: OK, {entry.name} ({entry.description}, {entry.training_set})")
    return 0
