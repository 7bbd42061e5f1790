"""Saliency maps per second of TinyHD-S/M (×1, ×½, ×¼) at 192×256: plain model vs the optimised path.

    .venv/bin/python benchmarks/speed.py                       # CPU, 2 threads, all six variants
    .venv/bin/python benchmarks/speed.py --variants M1 S1 --rounds 5
    .venv/bin/python benchmarks/speed.py --device cuda --batch 1 8 32 --amp   # GPU: batch sizes, fp16 autocast

A MISO model (S) makes one map per forward, a MIMO model (M) 16 (paper §3.2.1), so maps/s = batch ×
maps per forward / seconds per forward. Paths: ``plain`` = ``TinyHD`` in eval mode; ``fold`` = BatchNorm
folded into the convs; ``onednn`` = ``tinyhd.fast.optimize_for_inference(model, cpu_kernels=False)`` (BN
folded, oneDNN fused conv+ReLU6 on channels-last activations, channels-last pixel shuffle); ``fast`` = the
default ``optimize_for_inference(model)``: the same plus tinyhd's fused C++ kernels on CPU (narrow decoder
IRBs in one pass, pixel shuffle + Up_t + skip add in one pass; built once, ~30 s); ``compile`` (opt-in) =
``torch.compile`` of the fast path. Every path runs after ``tinyhd.fast.keep_freed_memory()`` (glibc keeps
freed activation memory instead of re-faulting it each forward) unless ``--default-malloc``. Timing: one warm-up, then ``--rounds`` rounds in which every path runs
``--reps`` forwards in turn (interleaved, so that load from other processes hits all paths alike); each
round's median is kept and the *minimum over rounds* reported. On a shared machine the numbers are noisy:
compare paths within one run, and trust the minimum more than any single round.
Random weights (speed does not depend on them); no download.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from typing import Callable

import torch

VARIANTS = {"S1": ("single", 1), "S2": ("single", 2), "S4": ("single", 4),
            "M1": ("multi", 1), "M2": ("multi", 2), "M4": ("multi", 4)}
LABEL = {"S1": "TinyHD-S ×1", "S2": "TinyHD-S ×½", "S4": "TinyHD-S ×¼",
         "M1": "TinyHD-M ×1", "M2": "TinyHD-M ×½", "M4": "TinyHD-M ×¼"}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _paths(model: torch.nn.Module, names: list[str]) -> dict[str, torch.nn.Module]:
    from tinyhd.fast import optimize_for_inference

    out: dict[str, torch.nn.Module] = {}
    for name in names:
        if name == "plain":
            out[name] = model
        elif name == "fold":
            out[name] = optimize_for_inference(model, channels_last=False)
        elif name == "onednn":
            out[name] = optimize_for_inference(model, cpu_kernels=False)
        elif name == "fast":
            out[name] = optimize_for_inference(model)
        elif name == "compile":
            out[name] = torch.compile(optimize_for_inference(model), dynamic=False)
        else:
            raise SystemExit(f"unknown path {name!r}; choose from plain, fold, onednn, fast, compile")
    return out


def time_paths(fns: dict[str, Callable[[], object]], device: torch.device, rounds: int, reps: int) -> dict[str, float]:
    """Seconds per call of each function: min over rounds of the per-round median (interleaved rounds)."""
    for fn in fns.values():  # warm-up (oneDNN primitive creation, allocator, cudnn autotune)
        fn()
    _sync(device)
    best = {k: float("inf") for k in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            times = []
            for _ in range(reps):
                _sync(device)
                t0 = time.perf_counter()
                fn()
                _sync(device)
                times.append(time.perf_counter() - t0)
            best[name] = min(best[name], statistics.median(times))
    return best


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--paths", nargs="+", default=["plain", "fold", "onednn", "fast"])
    p.add_argument("--device", default="auto", help="cpu, cuda or auto (cuda when present)")
    p.add_argument("--threads", type=int, default=2, help="CPU threads (torch.set_num_threads)")
    p.add_argument("--batch", type=int, nargs="+", default=None, help="batch sizes (default: 1 on CPU, 1 8 32 on CUDA)")
    p.add_argument("--amp", action="store_true", help="also time fp16 autocast (CUDA) / bf16 autocast (CPU)")
    p.add_argument("--size", type=int, nargs=2, default=(192, 256), metavar=("H", "W"))
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--check", action="store_true", help="also report max |fast − plain| on the timed input")
    p.add_argument("--default-malloc", action="store_true",
                   help="leave glibc malloc as it is (default: tinyhd.fast.keep_freed_memory(), for all paths)")
    args = p.parse_args(argv)
    from tinyhd.fast import keep_freed_memory

    malloc = "glibc default" if args.default_malloc else (
        "keep_freed_memory()" if keep_freed_memory() else "default (keep_freed_memory unavailable)")

    from tinyhd.model import TinyHD

    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    torch.set_num_threads(args.threads)
    batches = args.batch or ([1, 8, 32] if device.type == "cuda" else [1])
    dtypes = [None] + ([torch.float16 if device.type == "cuda" else torch.bfloat16] if args.amp else [])
    print(f"# torch {torch.__version__}, device {device}"
          + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else
             f", {torch.get_num_threads()} threads, {os.cpu_count()} CPUs visible")
          + f", input B×3×{args.frames}×{args.size[0]}×{args.size[1]}, {args.rounds} rounds × {args.reps} reps"
          + f", malloc: {malloc}")
    if device.type == "cpu":
        try:
            load = os.getloadavg()[0]
            print(f"# load average (1 min) at start: {load:.1f} — other processes share these cores; numbers are noisy")
        except OSError:
            pass
    header = f"{'model':<13} {'path':<8} {'batch':>5} {'dtype':>9} {'ms/forward':>11} {'maps/s':>9} {'× plain':>8}"
    print(header)
    print("-" * len(header))
    for key in args.variants:
        output, reduction = VARIANTS[key]
        torch.manual_seed(0)
        model = TinyHD(output=output, reduction=reduction).eval().to(device)
        maps_per_forward = args.frames if output == "multi" else 1
        paths = _paths(model, args.paths)
        for batch in batches:
            clip = torch.randn(batch, 3, args.frames, *args.size, device=device)
            for dtype in dtypes:
                def call(m, dtype=dtype):
                    def fn():
                        with torch.inference_mode(), torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                            return m(clip)
                    return fn
                try:
                    secs = time_paths({n: call(m) for n, m in paths.items()}, device, args.rounds, args.reps)
                except RuntimeError as exc:  # e.g. out of memory at a large batch, or an unsupported autocast op
                    print(f"{LABEL[key]:<13} batch {batch} {dtype}: failed ({str(exc).splitlines()[0][:80]})")
                    continue
                base = secs.get("plain")
                for name, s in secs.items():
                    speedup = f"{base / s:7.2f}×" if base else ""
                    dname = "fp32" if dtype is None else str(dtype).replace("torch.", "") + "-amp"
                    print(f"{LABEL[key]:<13} {name:<8} {batch:>5} {dname:>9} {1000 * s:>11.1f} "
                          f"{batch * maps_per_forward / s:>9.1f} {speedup:>8}")
                if args.check and "plain" in paths and "fast" in paths and dtype is None:
                    with torch.inference_mode():
                        diff = (paths["fast"](clip).saliency - paths["plain"](clip).saliency).abs().max().item()
                    print(f"{'':<13} max |fast − plain| = {diff:.2e}")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
