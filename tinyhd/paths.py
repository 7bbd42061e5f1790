"""Where things live (caches, manifests) and crash-safe writes used everywhere in the package.

Nothing half-written may ever look complete: every file is written to a temporary name in the same
folder, flushed and fsync'ed, then renamed over the final name (``os.replace`` is atomic on POSIX).
The result gets the permissions a plain ``open``/``mkdir`` would give it (0o666 / 0o777 less the umask), not the
private 0o600 / 0o700 of :mod:`tempfile`: caches and checkpoints are shared in a lab.
"""
from __future__ import annotations

import contextlib
import errno
import io
import os
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any, Iterator

REPO_ROOT = Path(__file__).resolve().parent.parent
PACKAGE_ROOT = Path(__file__).resolve().parent


def cache_dir() -> Path:
    """Root of tinyhd's caches: ``$TINYHD_CACHE``, else ``~/.cache/tinyhd``."""
    root = os.environ.get("TINYHD_CACHE")
    path = Path(root).expanduser() if root else Path.home() / ".cache" / "tinyhd"
    path.mkdir(parents=True, exist_ok=True)
    return path


def manifests_dir() -> Path:
    """The ``data_manifests/`` folder of this checkout."""
    return REPO_ROOT / "data_manifests"


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


_PROC_STATUS = "/proc/self/status"  # Linux ≥ 4.7 reports the umask there ("Umask:\t0022")
_UMASK_LOCK = threading.Lock()


def current_umask() -> int:
    """The process's umask. Read from ``/proc/self/status`` where the system has it; elsewhere ``os.umask`` must
    set one to read it: it sets the private 0o077 for that instant (under a lock), so a file another thread creates
    meanwhile is at worst too private, never too open."""
    with contextlib.suppress(OSError, ValueError):
        with open(_PROC_STATUS) as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    with _UMASK_LOCK:
        mask = os.umask(0o077)
        os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb") -> Iterator[io.IOBase]:
    """Open a temporary file beside ``path``; on success fsync it and rename it to ``path``.

    If the block raises, the temporary file is removed and ``path`` is left as it was. The file gets mode
    0o666 less the umask, like ``open(path, "w")`` (``mkstemp`` alone makes it 0o600).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with contextlib.suppress(OSError):  # a file system without modes keeps its own
            os.fchmod(fd, 0o666 & ~current_umask())
        with os.fdopen(fd, mode) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_open(path, "wb") as fh:
        fh.write(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_open(path, "w") as fh:
        fh.write(text)


LOW_DISK_BYTES = 256 * 2**20  # a failed write with less than this left on the disk is reported as a full disk


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` through a temporary file + fsync + rename: a reader never sees a partial checkpoint.

    A full disk makes ``torch.save`` fail with "PytorchStreamWriter failed writing file ..."; that is reported as
    ``OSError(ENOSPC)`` naming ``path`` and the space left (the previous checkpoint at ``path`` is kept).
    """
    import torch

    path = Path(path)
    with atomic_open(path, "wb") as fh:
        try:
            torch.save(obj, fh)
        except (RuntimeError, OSError) as exc:
            written = fh.tell() if not fh.closed else 0
            free = shutil.disk_usage(path.parent).free
            if free >= LOW_DISK_BYTES:
                raise
            raise OSError(errno.ENOSPC, f"{path}: could not write the checkpoint: the disk is full "
                          f"({free / 2**20:.0f} MiB free after {written / 2**20:.0f} MiB of it were written; "
                          f"the previous file is kept). Free some space or write elsewhere ({exc})") from exc


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike) -> Iterator[Path]:
    """Build a folder under a temporary name and rename it to ``path`` only when the block succeeds.

    Used for generated datasets and caches: an interrupted build leaves no folder that looks complete.
    Raises ``FileExistsError`` if ``path`` already exists. The folder gets mode 0o777 less the umask, like
    ``mkdir`` (``mkdtemp`` alone makes it 0o700).
    """
    path = Path(path)
    if path.exists():
        raise FileExistsError(f"{path} already exists")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent))
    try:
        with contextlib.suppress(OSError):
            os.chmod(tmp, 0o777 & ~current_umask())
        yield tmp
        _fsync_dir(tmp)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def runs_dir() -> Path:
    """``runs/`` in this checkout (git-ignored): executed notebooks, figures, training runs."""
    path = REPO_ROOT / "runs"
    path.mkdir(parents=True, exist_ok=True)
    return path


def official_fixtures_dir() -> Path | None:
    """The authors' released material (``../shared/fixtures/official``) if present, else None.

    ``$TINYHD_OFFICIAL_FIXTURES`` overrides the location. Tests skip with a clear reason when this is None.
    """
    env = os.environ.get("TINYHD_OFFICIAL_FIXTURES")
    path = Path(env) if env else REPO_ROOT.parent / "shared" / "fixtures" / "official"
    return path if path.is_dir() else None
