"""End-to-end speed of ``tinyhd predict``: decode → preprocess → model → post-process, in frames/s.

Default: the authors' released TinyHD-M ×¼ (``../shared/fixtures/official/d123m_rc4_rc1T.pth``) on the first
``--frames`` frames of their ``0068.AVI`` (640×360). Without the fixtures, a random model and a random video.
``--checkpoint``/``--video`` use your own; ``--model s|m --reduction R`` times a random model of that variant.

    python benchmarks/predict_speed.py [--frames 64] [--batch-size 8] [--device cuda] [--model s --reduction 4]
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

import tinyhd
from tinyhd.inference import postprocess_u8, predict_raw
from tinyhd.paths import official_fixtures_dir
from tinyhd.video import read_video


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint")
    ap.add_argument("--video")
    ap.add_argument("--model", choices=("s", "m"), help="time a random TinyHD-S/M instead of a checkpoint")
    ap.add_argument("--reduction", type=int, default=4)
    ap.add_argument("--frames", type=int, default=64, help="frames of the video to process")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()

    fixtures = official_fixtures_dir()
    if args.model:
        model = tinyhd.TinyHD(output="single" if args.model == "s" else "multi", reduction=args.reduction)
        what = f"random TinyHD-{args.model.upper()} ×1/{args.reduction}"
    elif args.checkpoint or fixtures is not None:
        ckpt = args.checkpoint or fixtures / "d123m_rc4_rc1T.pth"
        model = tinyhd.load_checkpoint(ckpt)
        what = str(ckpt)
    else:
        model = tinyhd.TinyHD(output="multi", reduction=4)
        what = "random TinyHD-M ×1/4 (no fixtures found)"
    model = model.to(args.device).eval()

    t0 = time.perf_counter()
    if args.video or fixtures is not None:
        video = args.video or fixtures / "0068.AVI"
        frames = read_video(video, 0, args.frames)
    else:
        video = "random 360×640 frames"
        frames = np.random.default_rng(0).integers(0, 256, (args.frames, 360, 640, 3), dtype=np.uint8)
    t_decode = time.perf_counter() - t0
    n, h, w = frames.shape[:3]

    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    raw, _, _ = predict_raw(model, frames, batch_size=args.batch_size, device=args.device, progress=False)
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    t_model = time.perf_counter() - t0
    t0 = time.perf_counter()
    for m in raw:
        postprocess_u8(m, (h, w))
    t_post = time.perf_counter() - t0
    total = t_decode + t_model + t_post
    print(f"model: {what} ({model.output}), device {args.device}, torch threads {torch.get_num_threads()}")
    print(f"video: {video}, {n} frames {w}x{h}, batch size {args.batch_size}")
    print(f"  decode           {t_decode:7.2f} s  ({n / t_decode:8.1f} frames/s)")
    print(f"  preprocess+model {t_model:7.2f} s  ({n / t_model:8.1f} frames/s)")
    print(f"  post-process     {t_post:7.2f} s  ({n / t_post:8.1f} frames/s)")
    print(f"  end to end       {total:7.2f} s  ({n / total:8.1f} frames/s)")


if __name__ == "__main__":
    main()
