"""DistributedDataParallel on CPU: two gloo processes run the same trainer; both end with identical weights,
and rank 0 alone writes the checkpoint and the log."""
from __future__ import annotations

import hashlib
import json
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from tinyhd.synth import ensure_synthetic

TINY = dict(size=(32, 32), batch_size=2, max_videos=4, val_videos=1, val_clips_per_video=1, num_threads=1,
            progress=False, device="cpu", epochs=1, max_steps=2, distill_on="none")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    import torch.distributed as dist

    from tinyhd.training import TrainConfig, train

    result = train(TrainConfig(**TINY), Path(out) / "run")
    torch.save({k: v.detach().clone() for k, v in result.model.state_dict().items()}, Path(out) / f"rank{rank}.pt")
    dist.destroy_process_group()


@pytest.mark.slow
def test_two_gloo_ranks_hold_identical_weights(tmp_path):
    ensure_synthetic("dhf1k", progress=False)
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    w0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    w1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    init = None
    for k in w0:
        assert torch.equal(w0[k], w1[k]), k
    # training happened (weights moved from the seeded initialisation) and rank 0 wrote the checkpoint/log
    from tinyhd.training import TrainConfig, build_model

    init = build_model(TrainConfig(**TINY)).state_dict()
    assert any(not torch.equal(init[k], w0[k]) for k in w0 if k.endswith("weight"))
    ckpt = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert ckpt["state"]["step"] == 2
    assert all(torch.equal(ckpt["model"][k], w0[k]) for k in w0)
    steps = [json.loads(l)["step"] for l in (tmp_path / "run" / "log.jsonl").read_text().splitlines()
             if json.loads(l)["kind"] == "train"]
    assert steps == [1, 2]  # one log line per step, from rank 0 only


# -- the teacher HD2S (model: hd2s | hd2s_da | hd2s_dsl) under DDP --------------------------------------------------
#
# Each rank takes its share of every global mini-batch (``hd2s_epoch(..., rank, world)``) and DDP averages the
# gradients, so a two-rank step is the single-process step on the same global batch — *except* for BatchNorm
# (each rank normalises with its own half-batch statistics) and the DA classifiers' Dropout (each rank draws its
# own mask). The trainer promises no more than that, so the equivalence is checked on a model whose norms and
# dropouts are frozen in eval mode (``_frozen``): what remains is exactly the sharding, the loss normalisation and
# the gradient averaging. The unmodified run checks what DDP must give anyway: identical ranks (parameters and
# BN buffers), checkpoints written by rank 0 only, in the layout ``load_hd2s`` reads, and one log line per step.

HD2S_FAST = dict(val_videos=1, val_clips_per_video=1, progress=False, num_threads=1, checkpoint_every=1)
HD2S_KINDS = {  # the smoke configs at 32×64; batch_size is the global mini-batch, half of it per rank
    "hd2s": dict(batch_size=2, accumulation=2, max_steps=1, val_every=1),   # 1 clip per rank, 2 mini-batches a step
    "hd2s_da": dict(batch_size=4, max_steps=1, val_every=1),                # 2 source + 2 target clips per rank
    "hd2s_dsl": dict(batch_size=2, max_steps=2, val_every=2),               # DHF1K, then Hollywood; not UCFSports
}


def _hd2s_cfg(kind: str, frozen: bool = False):
    """The kind's run; the frozen ones write one checkpoint (an HD2S one with Adam's moments is ~360 MB)."""
    from tinyhd.training import load_config, packaged_config

    quiet = dict(val_every=0, checkpoint_every=100) if frozen else {}
    return load_config(packaged_config(f"{kind}_smoke"), {**HD2S_FAST, **HD2S_KINDS[kind], **quiet})


def _frozen(model: torch.nn.Module) -> torch.nn.Module:
    """Every BatchNorm and Dropout kept in eval mode (running statistics, no mask) whatever ``train()`` says."""
    for m in model.modules():
        if isinstance(m, (torch.nn.modules.batchnorm._BatchNorm, torch.nn.Dropout)):
            m.eval()
            m.train = lambda mode=True, m=m: m  # type: ignore[method-assign]
    return model


def _hd2s_run(kind: str, out: Path, frozen: bool):
    from tinyhd.training import build_model, train

    cfg = _hd2s_cfg(kind, frozen)
    model = build_model(cfg)
    return train(cfg, out, model=_frozen(model) if frozen else model)


def _digest(state: dict[str, torch.Tensor]) -> dict[str, str]:
    """Per tensor, a hash of its dtype, shape and bytes: equal digests are bitwise-equal tensors. The ranks write
    these instead of their weights (an HD2S state dict is 120 MB; the test compares the two ranks exactly)."""
    def raw(v: torch.Tensor) -> bytes:
        return v.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()

    return {k: f"{v.dtype}{tuple(v.shape)}:" + hashlib.sha256(raw(v)).hexdigest() for k, v in state.items()}


def _hd2s_worker(rank: int, world: int, port: int, out: str, kind: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    import torch.distributed as dist

    import tinyhd.training as training

    real = training.atomic_torch_save

    def recorded(obj, path):  # every checkpoint write, by rank
        with open(Path(path).parent.parent / f"saves{rank}.txt", "a") as fh:
            fh.write(f"{Path(path).parent.name}/{Path(path).name}\n")
        return real(obj, path)

    training.atomic_torch_save = recorded
    run = Path(out) / kind
    for name in ("plain", "frozen"):
        result = _hd2s_run(kind, run / name, frozen=name == "frozen")
        (run / f"{name}{rank}.json").write_text(json.dumps(_digest(result.model.state_dict())))
    dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.parametrize("kind", list(HD2S_KINDS))
def test_hd2s_two_gloo_ranks_match_each_other_and_the_single_process_step(kind, tmp_path):
    """Two gloo ranks train the kind twice (unmodified, then ``_frozen``) into ``<tmp>/<kind>/<name>``; then one
    process trains the frozen run on the same global batches. (One kind per test: its ~1.2 GB of checkpoints
    go with its ``tmp_path``.)"""
    from tinyhd import teacher as tteacher
    from tinyhd.synth import ensure_synthetic
    from tinyhd.training import build_model

    for layout in ("dhf1k", "kinetics", "ucf", "hollywood2"):
        ensure_synthetic(layout, progress=False)  # built once here, not by two ranks at once
    mp.spawn(_hd2s_worker, args=(2, _free_port(), str(tmp_path), kind), nprocs=2, join=True)
    out = tmp_path / kind
    cfg = _hd2s_cfg(kind)
    steps = cfg.max_steps

    # the unmodified run: identical ranks (parameters and BN running statistics), weights moved, rank 0 writes
    d0, d1 = (json.loads((out / f"plain{r}.json").read_text()) for r in (0, 1))
    assert d0.keys() == d1.keys()
    for k in d0:
        assert d0[k] == d1[k], k
    run = out / "plain"
    loaded = tteacher.load_hd2s(run / "last.pt")
    w0 = loaded.state_dict()
    assert _digest(w0) == d0  # last.pt holds the ranks' final weights
    init = build_model(cfg).state_dict()
    moved = [k for k in w0 if k.endswith("weight") and not torch.equal(init[k], w0[k])]
    assert len(moved) > 20
    if kind == "hd2s_dsl":  # DDP (find_unused_parameters) leaves the parameters of an unused domain without a
        # gradient, as a single process does (a zero-filled one would let Adam's weight decay move them)
        for d, used in (("dhf1k", True), ("hollywood", True), ("ucfsports", False)):
            own = [k for k in w0 if f"__{d}" in k or f".bn_{d}." in k.lower()]
            assert len(own) > 50 and any(not torch.equal(init[k], w0[k]) for k in own) == used, d
    saves = (out / "saves0.txt").read_text().split()
    assert not (out / "saves1.txt").exists(), "rank 1 wrote a checkpoint"
    # last.pt after each step but the final one, best.pt at the validation, last.pt at the end (frozen: no
    # validation, no mid-run checkpoint)
    assert saves == [f"plain/{n}" for n in ["last.pt"] * (steps - 1) + ["best.pt", "last.pt"]] + ["frozen/last.pt"]
    ckpt = torch.load(run / "last.pt", weights_only=True)
    assert ckpt["format"] == "hd2s" and ckpt["step"] == steps and ckpt["state"]["finished"]
    assert type(loaded) is type(build_model(cfg))
    assert type(tteacher.load_hd2s(run / "best.pt")) is type(loaded)
    del ckpt, loaded
    rows = [json.loads(l) for l in (run / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["kind"] == "train"] == list(range(1, steps + 1))  # rank 0 only
    assert [r["step"] for r in rows if r["kind"] == "val"] == [steps]
    assert not list(run.glob(".*.tmp"))

    # norms and dropouts frozen: the two-rank run is the single-process run on the same global batches
    f0, f1 = (json.loads((out / f"frozen{r}.json").read_text()) for r in (0, 1))
    assert f0 == f1
    _hd2s_run(kind, tmp_path / "single", frozen=True)
    a = torch.load(out / "frozen" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "single" / "last.pt", weights_only=True)
    wa, wb = (tteacher.load_hd2s(d / "last.pt").state_dict() for d in (out / "frozen", tmp_path / "single"))
    assert wa.keys() == wb.keys() == f0.keys() and _digest(wa) == f0
    # Adam's first moments (the gradients, scale included: a loss summed instead of averaged over the batch, or
    # the wrong clips on a rank, shows here) agree to float rounding, all tensors together
    ma = torch.cat([s["exp_avg"].flatten() for s in a["optimizer"]["state"].values()])
    mb = torch.cat([s["exp_avg"].flatten() for s in b["optimizer"]["state"].values()])
    assert ma.shape == mb.shape and mb.norm() > 0
    assert float((ma - mb).norm() / mb.norm()) < 5e-3
    # and so do the steps taken (Adam's normalised updates, all tensors together: different clips on a rank
    # would flip the signs of many). Not tensor by tensor: at a fresh init some gradients (the 1×1 output heads)
    # are ~1e-8, Adam's eps, and cancel to a few % of float rounding, so there the summation order (two ranks
    # vs one batch) decides Adam's step, up to lr apart
    keys = [k for k in wb if wb[k].is_floating_point()]
    da = torch.cat([(wa[k] - wb[k]).flatten() for k in keys])
    db = torch.cat([(wb[k] - init[k]).flatten() for k in keys])
    assert db.norm() > 0 and float(da.norm() / db.norm()) < 1e-2
    # the same log rows (the logged losses are rank 0's share of each batch, so not compared)
    ddp_rows = [json.loads(l) for l in (out / "frozen" / "log.jsonl").read_text().splitlines()]
    single_rows = [json.loads(l) for l in (tmp_path / "single" / "log.jsonl").read_text().splitlines()]
    assert [(r["kind"], r["step"]) for r in ddp_rows] == [(r["kind"], r["step"]) for r in single_rows]
