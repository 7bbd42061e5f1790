"""DistributedDataParallel on CPU: two gloo processes run the same trainer; both end with identical weights,
and rank 0 alone writes the checkpoint and the log."""
from __future__ import annotations

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
