"""One TinyHD distillation step with the teacher-map cache vs with HD2S run on the fly.

A distillation step = teacher maps for the batch + student forward + the Eq. 2/3 loss + backward + SGD step,
run by the trainer's own code (:func:`tinyhd.training.step_loss`, :func:`~tinyhd.training.make_optimizer`, its
``GradScaler``; CPU: :mod:`tinyhd.cpu_train`; CUDA: autocast unless ``--no-amp``), so it times what
``tinyhd train`` does per step. With :class:`tinyhd.teacher.OnlineTeacher` the teacher costs one HD2S forward per
target frame (16 per MIMO sample); with :class:`tinyhd.teacher_cache.CachedTeacher` it is a memory-mapped read.
Prints the median time of each and the speed-up (issue 5's goal: ≥ 10×).

Uses the reduced-scale teacher (``ensure_reduced_teacher``: built once and cached, ~2–3 min the first time on a
2-core CPU) on the synthetic set. Usage::

    python benchmarks/distill_step.py [--output multi|single] [--batch 2] [--repeats 3] [--threads 2]
    python benchmarks/distill_step.py --size 192x256 --videos 1 --repeats 1     # the paper's resolution
    python benchmarks/distill_step.py --size 192x256 --videos 1 --device cuda   # on a GPU (not yet measured)

Measured on this repo's 2-core AMD EPYC (Zen 4), TinyHD-M, batch 2, 192×256, 2 threads, median of 3
(``--size 192x256 --videos 1``; 2026-11-21, machine otherwise idle):

* with the trainer's CPU path (``--train-path fast``: :mod:`tinyhd.cpu_train` + ``keep_freed_memory``), three
  runs before the pixel-shuffle kernel (one warm-up step): cached 1.95 / 2.07 / 1.90 s per step, on the fly
  20.9 / 15.7 / 17.0 s → **10.7× / 7.6× / 8.9×** per step. Three runs with it (two warm-up steps, the
  machine in a slower phase: a bare model step alternating in one process took 1.74 s, vs 1.55 s earlier that
  day): cached 1.93 / 1.92 / 1.84 s, on the fly 20.6 / 18.4 / 16.4 s → **10.7× / 9.6× / 8.9×**. Three more
  runs later that day with the BatchNorm kernels' streamed stores (median of 3, then of 5 steps): cached
  1.86 / 1.87 / 1.99 s, on the fly 21.5 / 21.7 / 19.1 s → **11.5× / 11.6× / 9.6×**. All these on-the-fly
  numbers were inflated by the allocator: with ``keep_freed_memory``'s old 1 GiB trim threshold, HD2S's freed windows
  went back to the kernel and each step re-faulted 1.2–1.4 M pages. With trimming off (the current code), three
  runs (median of 5 steps; the machine in a slow phase again, cached steps 2.05–2.2 s): cached 2.14 / 2.20 /
  2.05 s, on the fly 20.6 / 17.0 / 17.5 s → **9.6× / 7.7× / 8.5×**. The on-the-fly teacher's time varies most
  (14.6–19.6 s for its 32 HD2S windows over all runs), and the student's share of an on-the-fly step is larger
  than a cached step (2.1–3.8 s, with no page faults; why was not investigated). Teacher maps alone: 10–15 ms vs
  14–20 s (**~1,000–2,000×** over all twelve runs). So the 10× goal per step is **not met** on this CPU with the
  current code (7.7–9.6×): the cached step would have to be ≤ ~1.7 s at the machine speed of those runs.
* before tinyhd.cpu_train existed (PyTorch's default training path, earlier run under load 3–9, 1 thread):
  cached 27.0 s/step, on the fly 55.6 s/step → 2.1×.

The cache removes the teacher's cost (three orders of magnitude for the maps); what is left of a cached step is
the student's own forward/backward. On this CPU that step is mostly memory-bound layers with few channels per
voxel (2026-11-21 profile, bare model step ~1.6 s: pointwise convolutions 0.55 s, depthwise 0.45 s,
BatchNorm+ReLU6 0.35 s, pixel-shuffle copies 0.13 s before their kernel), while HD2S's 3D convolutions are
compute-bound, which is why the ratio sits near 10×. On a GPU both sides get faster by different factors (the
on-the-fly teacher also decodes and preprocesses the frames of each window on the CPU), so the GPU ratio cannot
be inferred from these numbers: it is not measured, as no GPU was available.

Since 2026-11-22 the step is the trainer's (``step_loss``, its SGD parameter groups with weight decay, the
scaler), no longer a copy of it; one run of 5 steps: cached 2.11 s, on the fly 18.4 s (16.2 s of it HD2S, so the
student's share was 2.2 s) → **8.7×**, teacher maps 1,217×. Then HD2S's max pools stopped going through
PyTorch's slow CPU ``max_pool3d`` (:class:`tinyhd.s3d.SeparableMaxPool3d`, bit-identical maps), which made the
teacher itself ~1.55× faster (32 windows: 16.2 → 10.4 s, ~325 ms per window, its convolutions now ~75 % of
this CPU's FMA peak): cached 1.97 s, on the fly 12.4 s → **6.3×** per step, 804× for the maps. A faster
teacher is what every CPU user of it wants (``tinyhd cache-teacher`` included), and it moves this ratio away
from 10×: on this CPU the goal would now need a ~1.2 s student step.

Why the student step cannot get there layer by layer on this CPU (2026-11-22): one cached TinyHD-M step at
192×256 (batch 2) allocates 9.1 GB of activations, gradients and temporaries (the profiler's memory events over
one steady-state step). Writing each of them once and reading it once is ≥ 18 GB of memory traffic, i.e.
≥ 0.8–0.9 s at this machine's 20–22 GB/s copy bandwidth (``torch.Tensor.copy_`` of 1 GiB, 2 threads), before
any BatchNorm's second pass or any compute-bound convolution. The step runs at 1.75–1.95 s, ~2.2× that floor;
1.2 s would mean running within ~1.4× of it everywhere. What would get there is fewer tensors: the IRBs'
batch-statistics BatchNorms fused into the neighbouring convolutions (a training-mode fused IRB), or a GPU.

Latest run (2026-11-22, ``--size 192x256 --videos 1 --repeats 3``, machine otherwise idle): cached 1.63 s, on
the fly 10.9 s (9.3 s of it HD2S) → **6.7×** per step, 1,036× for the teacher maps alone.

Flip by mirroring vs HD2S on the mirrored clip (the cache's approximation for flipped items): this comparison
compared unflipped maps with themselves whenever the loader had already flipped the batch's items (both teachers
then saw flip=False), which is how it printed mean |Δ| 0.0009, max 0.0020, CC 0.9998–1.0000 before
2026-11-22 (an earlier v1 reduced teacher had flat maps too). Fixed to mirror every item: with the current 64×96
reduced HD2S, mean |Δ| 0.0219, max 0.8508, CC 0.9088 (``--repeats 1 --warmup 0 --threads 1``, 2026-11-22);
HD2S run directly on a mirrored 16-frame clip vs its mirrored maps, four reduced teachers: CC 0.76–0.91,
max |Δ| 0.60–0.74. So mirroring is a coarse approximation for these teachers, and since 2026-11-22 the cache
also stores the maps of the mirrored video (``cache-teacher --flipped``, the default): flipped clips, cached
maps vs HD2S on the mirrored clip, mean |Δ| 0.0010, max |Δ| 0.0020 (the uint8 quantisation), CC 0.9999.
"""
from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--output", default="multi", choices=("single", "multi"))
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=2,
                    help="untimed steps per teacher first (the allocator and page reuse settle after two steps: "
                         "3.3, 2.2, then 1.7 s for the cached TinyHD-M step at 192×256)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--size", default="64x96")
    ap.add_argument("--device", default="cpu",
                    help="cpu (default) or cuda: the student, the on-the-fly HD2S and the loss run there, as "
                         "tinyhd train does with device: cuda")
    ap.add_argument("--amp", action=argparse.BooleanOptionalAction, default=True,
                    help="mixed precision for the student's step on CUDA, as tinyhd train (amp: true; no effect "
                         "on a CPU)")
    ap.add_argument("--train-path", default="fast", choices=("fast", "default"),
                    help="the student's CPU training step: 'fast' = what tinyhd train does on a CPU "
                         "(tinyhd.cpu_train: channels-last + C++ backward kernels), 'default' = PyTorch's defaults")
    ap.add_argument("--videos", type=int, default=None,
                    help="instead of the reduced teacher's cache, cache only the first N train videos at --size "
                         "(e.g. --size 192x256 --videos 1 for the paper's resolution; the reduced HD2S is reused)")
    args = ap.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available to this process")
    torch.set_num_threads(args.threads)
    size = tuple(int(v) for v in args.size.split("x"))

    import tinyhd
    from tinyhd.data import SaliencyClipDataset
    from tinyhd.synth import ensure_synthetic
    from tinyhd.teacher import OnlineTeacher, load_hd2s
    from tinyhd.teacher_cache import CachedTeacher, ensure_reduced_teacher
    from tinyhd.training import TrainConfig, collate, make_optimizer, step_loss

    # the trainer's own step: its config defaults (SGD, the paper's lr groups), loss and AMP rules
    cfg = TrainConfig(output=args.output, size=size, batch_size=args.batch, teacher="benchmark", distill_on="all",
                      amp=args.amp, cpu_fast_path=args.train_path == "fast")
    use_amp = cfg.amp and device.type == "cuda"

    root = ensure_synthetic("dhf1k")
    if args.videos is None:
        ckpt, cache = ensure_reduced_teacher(root)
        if tuple(size) != (64, 96):
            raise SystemExit("the reduced teacher's cache is 64×96: use --videos N to cache other sizes")
    else:
        from tinyhd.paths import cache_dir
        from tinyhd.teacher_cache import build_teacher_cache, ensure_reduced_hd2s

        ckpt = ensure_reduced_hd2s(root)
        out = cache_dir() / "bench" / f"{ckpt.parent.name}_{size[0]}x{size[1]}_flipped"   # with the mirrored maps
        cache = build_teacher_cache(load_hd2s(ckpt), root, out, size=size, max_videos=args.videos)
    ds = SaliencyClipDataset(root, split="train", size=size, output=args.output, sampling="random", seed=0,
                             max_videos=args.videos)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    class Timed:
        """The teacher, timing its calls (the maps' share of a step)."""

        def __init__(self, teacher) -> None:
            self.teacher, self.seconds = teacher, 0.0

        def __call__(self, batch):
            sync()
            t0 = time.perf_counter()
            maps = self.teacher(batch)
            sync()
            self.seconds = time.perf_counter() - t0
            return maps

    teachers = {"cached": Timed(CachedTeacher(cache)),
                "on the fly": Timed(OnlineTeacher(load_hd2s(ckpt), device=device, frames=ds.frames))}
    torch.manual_seed(0)
    student = tinyhd.TinyHD(output=args.output).to(device)
    fast_path = contextlib.ExitStack()  # held until main() returns, as inside tinyhd.training.train
    if device.type == "cpu" and cfg.cpu_fast_path:  # what tinyhd train does on a CPU
        from tinyhd.cpu_train import cpu_training
        from tinyhd.fast import keep_freed_memory

        keep_freed_memory()  # it speeds up both teachers' steps alike
        fast_path.enter_context(cpu_training(student))
    opt = make_optimizer(student, cfg)
    scaler = torch.amp.GradScaler(device.type, enabled=use_amp)
    # target-set clips, tagged as the trainer's epoch mix tags them (the teacher terms apply to all of them)
    batches = [collate([{**ds[(r * args.batch + j) % len(ds)], "source": "target"} for j in range(args.batch)])
               for r in range(args.repeats + args.warmup)]

    def step(teacher: Timed, batch) -> tuple[float, float]:
        sync()
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        terms = step_loss(cfg, student, batch, device, use_amp, teacher, 0.0)
        scaler.scale(terms["total"]).backward()
        scaler.step(opt)
        scaler.update()
        sync()
        return time.perf_counter() - t0, teacher.seconds

    results = {}
    for name, teacher in teachers.items():
        for b in batches[:args.warmup]:  # warm-up (opens the memory maps, settles the allocator)
            step(teacher, b)
        times = [step(teacher, b) for b in batches[args.warmup:]]
        results[name] = (statistics.median(t for t, _ in times), statistics.median(t for _, t in times))
    where = (f"{torch.cuda.get_device_name(device)}{', AMP' if use_amp else ''}" if device.type == "cuda"
             else f"{args.threads} CPU thread(s), {args.train_path} training path")
    print(f"distillation step (tinyhd.training.step_loss), TinyHD-{'M' if args.output == 'multi' else 'S'}, "
          f"batch {args.batch}, {size[0]}×{size[1]}, {where}, "
          f"median of {args.repeats} after {args.warmup} warm-up step(s):")
    for name, (total, teach) in results.items():
        print(f"  teacher {name:>10}: {total * 1000:9.1f} ms/step  (teacher maps {teach * 1000:9.1f} ms)")
    # flipped clips: the cache's maps of the mirrored video (mirrored maps if built with --no-flipped) vs HD2S run
    # on the mirrored clip
    # every item mirrored (an item already flipped by the loader is first un-mirrored: comparing two unflipped
    # items would compare the cache with itself)
    b = batches[0]
    flipped = b["flip"].bool().view(-1, *[1] * (b["clip"].dim() - 1))
    plain = torch.where(flipped, b["clip"].flip(-1), b["clip"])
    mirrored = {**b, "clip": plain.flip(-1), "flip": torch.ones_like(b["flip"], dtype=torch.bool)}
    on = teachers["on the fly"].teacher(mirrored)["final"].float().cpu()
    ca = teachers["cached"].teacher(mirrored)["final"].float().cpu()
    r = torch.corrcoef(torch.stack([on.flatten(), ca.flatten()]))[0, 1]
    print(f"  flipped clips, cached maps vs HD2S on the mirrored clip: mean |Δ| {float((on - ca).abs().mean()):.4f}, "
          f"max |Δ| {float((on - ca).abs().max()):.4f}, CC {float(r):.4f}")
    speedup = results["on the fly"][0] / results["cached"][0]
    print(f"  speed-up of the cache: {speedup:.1f}× per step (goal ≥ 10×), "
          f"{results['on the fly'][1] / max(results['cached'][1], 1e-9):.0f}× for the teacher maps alone")
    fast_path.close()

if __name__ == "__main__":
    main()
