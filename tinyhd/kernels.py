"""Building and loading tinyhd's fused CPU kernels (``tinyhd/csrc/cpu_kernels.cpp``).

:func:`cpu_kernels` compiles the C++ source once per machine with ``torch.utils.cpp_extension`` (a C++
compiler and ninja are needed; ~30 s on a 2-core CPU) into ``cache_dir()/kernels/<key>/``, where the key covers
the source, the torch version, the Python version and the CPU's instruction-set flags (the code is built with
``-march=native``; ``TINYHD_KERNEL_ARCH=x86-64-v3`` builds for any AVX2 CPU instead, as the tests do to check
that nothing needs AVX-512). Later processes load the built library in milliseconds. Where the build is impossible (no
compiler, no ninja, a non-x86 CPU without the flags) it returns ``None`` and says why once; callers
(:mod:`tinyhd.fast`) then keep the oneDNN path, which computes the same maps. ``TINYHD_CPU_KERNELS=0`` turns
the kernels off.
"""
from __future__ import annotations

import hashlib
import logging
import os
import platform
import sys
import threading
import time
import warnings
from pathlib import Path
from types import ModuleType

import torch

from tinyhd.paths import cache_dir

SOURCE = Path(__file__).resolve().parent / "csrc" / "cpu_kernels.cpp"


def cflags() -> list[str]:
    """Compiler flags: ``-march`` from ``TINYHD_KERNEL_ARCH`` (default ``native``); OpenMP because
    ``at::parallel_for`` splits rows over threads."""
    arch = os.environ.get("TINYHD_KERNEL_ARCH", "").strip() or "native"
    if not all(c.isalnum() or c in "-_." for c in arch):
        raise ValueError(f"TINYHD_KERNEL_ARCH={arch!r} is not a -march value (e.g. native, x86-64-v3)")
    return ["-O3", f"-march={arch}", "-fopenmp"]

_lock = threading.Lock()
_state: dict[str, object] = {}


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def build_key() -> str:
    """What the built library depends on: source, compiler flags, torch, Python, CPU features."""
    h = hashlib.sha256()
    for part in (SOURCE.read_bytes(), " ".join(cflags()).encode(), torch.__version__.encode(),
                 sys.version.encode(), _cpu_flags().encode()):
        h.update(part)
        h.update(b"\0")
    return h.hexdigest()[:16]


def _build_copy(build_dir: Path) -> Path:
    """The source, copied into its build folder once, to build from. ninja's build file records the source's
    path: built from ``SOURCE`` itself, two checkouts of the same code (a clone, a git worktree) sharing the
    cache would each rebuild the library (~30 s) whenever the other had used it last. The key covers the
    source's bytes, so the copy never needs refreshing; it is written atomically (racing processes)."""
    copy = build_dir / SOURCE.name
    if not copy.is_file():
        tmp = build_dir / f".{SOURCE.name}.{os.getpid()}.tmp"
        tmp.write_bytes(SOURCE.read_bytes())
        os.replace(tmp, copy)
    return copy


def unavailable_reason() -> str | None:
    """Why the kernels cannot be used here (None when :func:`cpu_kernels` returned a module)."""
    cpu_kernels()
    return _state.get("reason")  # type: ignore[return-value]


def cpu_kernels(verbose: bool = False) -> ModuleType | None:
    """The compiled kernel module (``fused_irb``, ``shuffle_up_add``, ``dw_conv3d_backward``), building it on first
    use; None if unavailable."""
    with _lock:
        if "module" in _state:
            return _state["module"]  # type: ignore[return-value]
        module, reason = None, None
        if os.environ.get("TINYHD_CPU_KERNELS", "1").strip().lower() in ("0", "false", "no", "off"):
            reason = "turned off by TINYHD_CPU_KERNELS=0"
        elif platform.machine().lower() not in ("x86_64", "amd64"):
            reason = f"the kernels use x86-64 vector code; this machine is {platform.machine()}"
        else:
            # its import logs "No CUDA runtime is found" on CPU-only machines: irrelevant for this CPU build
            logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
            from torch.utils import cpp_extension

            key = build_key()
            build_dir = cache_dir() / "kernels" / key
            build_dir.mkdir(parents=True, exist_ok=True)
            lock = build_dir / "lock"  # torch's build lock; one left by a build that was killed would block forever
            try:
                if lock.exists() and time.time() - lock.stat().st_mtime > 600:
                    lock.unlink()
            except OSError:
                pass
            name = f"tinyhd_cpu_kernels_{key}"
            if not list(build_dir.glob(f"{name}*.so")):
                print(f"tinyhd: building the fused CPU kernels once (~30 s) in {build_dir}", file=sys.stderr)
            try:
                source = _build_copy(build_dir)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # "no CUDA runtime found" etc.: irrelevant for a CPU build
                    module = cpp_extension.load(name, [str(source)], extra_cflags=cflags(), extra_ldflags=["-fopenmp"],
                                                build_directory=str(build_dir), verbose=verbose)
            except Exception as exc:  # no compiler / ninja, or a failed build: keep the oneDNN path
                lines = str(exc).strip().splitlines() or [type(exc).__name__]
                first = next((ln for ln in lines if "error" in ln.lower() and ln.strip() != lines[0].strip()), lines[0])
                reason = f"could not build {SOURCE.name} in {build_dir} ({first.strip()[:300]})"
        if module is None and "TINYHD_CPU_KERNELS" not in reason:
            warnings.warn(f"tinyhd: fused CPU kernels unavailable: {reason}; using oneDNN (same maps, slower)",
                          RuntimeWarning, stacklevel=2)
        _state["module"], _state["reason"] = module, reason
        return module


class KernelHandle:
    """A reference to the compiled kernel module that modules can hold: deep copies share it, and pickling
    (``torch.save`` of a whole optimised model) stores only "the kernels", loaded again (or built) on unpickling
    — a Python extension module itself cannot be pickled or copied."""

    def __init__(self, module: ModuleType) -> None:
        self._module = module

    def __getattr__(self, name: str):
        if name.startswith("__") or name == "_module":
            raise AttributeError(name)
        return getattr(self._module, name)

    def __deepcopy__(self, memo) -> "KernelHandle":
        return self

    def __reduce__(self):
        return (_handle_from_this_machine, ())


def _handle_from_this_machine() -> KernelHandle | None:
    module = cpu_kernels()
    return KernelHandle(module) if module is not None else None
