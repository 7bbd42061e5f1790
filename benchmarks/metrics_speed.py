"""Throughput of the seven benchmark metrics (``tinyhd.metrics``) on DHF1K-sized frames.

Prints the mean time per call of each metric and of ``compute_all`` on a 360×640 ground truth (60 fixations,
Gaussian-blurred density) with a 192×256 prediction (so the MATLAB-style bicubic resize is included), and
the resulting frames/s. Usage: ``python benchmarks/metrics_speed.py [--repeats N]``.
"""
from __future__ import annotations

import argparse
import time

import cv2
import numpy as np

from tinyhd import metrics as M


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=20)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    h, w = 360, 640
    fix = np.zeros((h, w))
    fix.flat[rng.choice(h * w, 60, replace=False)] = 1
    gt = cv2.GaussianBlur(fix, (0, 0), 25)
    gt /= gt.max()
    other = np.zeros((h, w))
    other.flat[rng.choice(h * w, 249, replace=False)] = 1
    pred = cv2.GaussianBlur(rng.random((192, 256)).astype(np.float32), (0, 0), 5)
    calls = {
        "auc_judd": lambda: M.auc_judd(pred, fix, rng=rng),
        "auc_borji": lambda: M.auc_borji(pred, fix, rng=rng),
        "auc_shuffled": lambda: M.auc_shuffled(pred, fix, other, rng=rng),
        "cc": lambda: M.cc(pred, gt),
        "nss": lambda: M.nss(pred, fix),
        "sim": lambda: M.sim(pred, gt),
        "kld": lambda: M.kld(pred, gt),
        "compute_all": lambda: M.compute_all(pred, gt, fix, other, rng=rng),
    }
    print(f"prediction 192x256 float32 -> GT 360x640, 60 fixations, 249 other fixations; {args.repeats} repeats")
    for name, fn in calls.items():
        fn()  # warm-up (resize matrices are cached)
        t0 = time.perf_counter()
        for _ in range(args.repeats):
            fn()
        dt = (time.perf_counter() - t0) / args.repeats
        print(f"{name:>13s}: {dt * 1e3:8.2f} ms/frame  ({1.0 / dt:7.1f} frames/s)")


if __name__ == "__main__":
    main()
