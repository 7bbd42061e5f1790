"""Kill a smoke run with SIGKILL after its first checkpoint, rerun the same command, and get exactly the
weights of an uninterrupted run (issue 6 "done when"). Every checkpoint seen on disk must load."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tinyhd.synth import ensure_synthetic

# the packaged smoke config, shortened so the test stays well under a minute per run
STEPS = 10
ARGS = ["--set", f"max_steps={STEPS}", "--set", "checkpoint_every=3"]


def _cmd(out: Path) -> list[str]:
    return [sys.executable, "-m", "tinyhd", "train", "smoke", "--out", str(out), *ARGS]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return env


def _load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


def _run_polling(cmd: list[str], out: Path) -> set[int]:
    """Run to the end while loading every version of last.pt that appears: each must be complete."""
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    seen: set[int] = set()
    try:
        while proc.poll() is None:
            if (out / "last.pt").is_file():
                ckpt = torch.load(out / "last.pt", map_location="cpu", weights_only=True)  # no pickled code either
                seen.add(ckpt["state"]["step"])
                assert set(ckpt) >= {"format", "config", "model", "train_config", "optimizer", "scheduler",
                                     "rng", "state"}
            time.sleep(0.25)
    finally:
        proc.wait(timeout=600)
    assert proc.returncode == 0
    return seen


@pytest.mark.slow
def test_sigkill_then_rerun_gives_the_uninterrupted_weights(tmp_path):
    ensure_synthetic("dhf1k", progress=False)  # build the data once, outside the timed runs
    ref, cut = tmp_path / "ref", tmp_path / "cut"
    seen = _run_polling(_cmd(ref), ref)
    assert len(seen) >= 2 and max(seen) <= STEPS  # several checkpoints, each loadable when seen

    proc = subprocess.Popen(_cmd(cut), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    try:
        while not (cut / "last.pt").is_file():
            assert proc.poll() is None, "the run ended before writing its first checkpoint"
            assert time.monotonic() < deadline, "no checkpoint appeared"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    first = _load(cut / "last.pt")  # what the kill left on disk loads
    assert 0 < first["state"]["step"] < STEPS, "killed before the end, after a checkpoint"
    assert first["state"]["step"] % 3 == 0 or first["state"]["step_in_epoch"] == 0

    subprocess.run(_cmd(cut), check=True, env=_env(), capture_output=True, timeout=600)
    a, b = _load(ref / "last.pt"), _load(cut / "last.pt")
    assert a["state"]["step"] == b["state"]["step"] == STEPS
    assert a["model"].keys() == b["model"].keys()
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    # the optimizer's momentum buffers too: the runs are the same run
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert torch.equal(sa["momentum_buffer"], sb["momentum_buffer"])
    assert not list(cut.glob(".*.tmp")), "no temporary files left behind"
    # the log has each step exactly once
    import json

    steps = [json.loads(line)["step"] for line in (cut / "log.jsonl").read_text().splitlines()
             if json.loads(line)["kind"] == "train"]
    assert steps == list(range(1, STEPS + 1))

    # a finished run: the same command returns at once and changes nothing
    t0 = (ref / "last.pt").stat().st_mtime_ns
    subprocess.run(_cmd(ref), check=True, env=_env(), capture_output=True, timeout=300)
    assert (ref / "last.pt").stat().st_mtime_ns == t0  # not even rewritten
    again = _load(ref / "last.pt")
    assert again["state"]["finished"] and again["state"]["step"] == STEPS
    assert all(torch.equal(a["model"][k], again["model"][k]) for k in a["model"])
