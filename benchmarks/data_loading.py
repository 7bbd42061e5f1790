"""Clips per second from the synthetic DHF1K layout, with 0 and 2 DataLoader workers.

    .venv/bin/python benchmarks/data_loading.py [--epochs 3] [--batch-size 4] [--size 192x256] [--output single]

Decoding is OpenCV (MJPG AVIs for the synthetic set); each clip is 16 frames resized to ``--size`` with
the authors' preprocessing, plus its maps and fixations. Prints one line per worker count.
"""
from __future__ import annotations

import argparse
import time

import torch
from torch.utils.data import DataLoader

from tinyhd.data import SaliencyClipDataset
from tinyhd.synth import ensure_synthetic


def measure(ds: SaliencyClipDataset, workers: int, batch_size: int, epochs: int) -> tuple[float, int]:
    # one loader per epoch, as a trainer does: workers copy the dataset (and its epoch) when iteration
    # starts, so persistent workers would not see set_epoch. Worker start-up is part of the figure.
    clips = 0
    start = time.perf_counter()
    for epoch in range(epochs):
        ds.set_epoch(epoch)
        loader = DataLoader(ds, batch_size=batch_size, shuffle=True, num_workers=workers)
        for batch in loader:
            clips += batch["clip"].shape[0]
    return clips / (time.perf_counter() - start), clips


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--size", default="192x256")
    parser.add_argument("--output", default="single", choices=["single", "multi"])
    parser.add_argument("--sampling", default="uniform", choices=["random", "uniform", "all"],
                        help="uniform (5 clips per video) gives more clips per epoch than random (1 per video)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    size = tuple(int(v) for v in args.size.split("x"))
    root = ensure_synthetic("dhf1k")
    ds = SaliencyClipDataset(root, split="train", size=size, output=args.output, sampling=args.sampling)
    print(f"dataset: {ds}")
    print(f"torch threads per process: {torch.get_num_threads()}, batch size {args.batch_size}, "
          f"{args.epochs} epochs of {len(ds)} clips")
    for workers in (0, 2):
        rate, n = measure(ds, workers, args.batch_size, args.epochs)
        print(f"workers={workers}: {rate:7.1f} clips/s  ({n} clips of 3×16×{size[0]}×{size[1]}, {args.output} targets)")


if __name__ == "__main__":
    main()
