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


# -- the teacher HD2S (model: hd2s, hd2s_da) -------------------------------------------------------------------------
#
# The same kill for the HD2S kinds, through the packaged smoke configs: accumulated steps (2 mini-batches each),
# Adam, the DA classifiers' Dropout and λ schedule, a checkpoint every 2 steps (hd2s: validation and best.pt too). An
# HD2S checkpoint with its Adam moments is ~360 MB even at 32×64, so few are written and each version is loaded
# once. The reference and the killed run go side by side (one core each) to halve the wall time.

HD2S_STEPS = {"hd2s": 4, "hd2s_da": 4}
HD2S_VAL_EVERY = {"hd2s": 2, "hd2s_da": 0}  # DA: no validation (best.pt), two ~360 MB writes fewer per run


def _hd2s_cmd(kind: str, out: Path) -> list[str]:
    over = {"max_steps": HD2S_STEPS[kind], "checkpoint_every": 2, "val_every": HD2S_VAL_EVERY[kind],
            "accumulation": 2, "val_videos": 1, "val_clips_per_video": 1, "progress": "false"}
    return [sys.executable, "-m", "tinyhd", "train", f"{kind}_smoke", "--out", str(out),
            *[a for k, v in over.items() for a in ("--set", f"{k}={v}")]]


def _rows(out: Path) -> list[dict]:
    import json

    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


@pytest.mark.slow
@pytest.mark.parametrize("kind", list(HD2S_STEPS))
def test_hd2s_sigkill_then_rerun_gives_the_uninterrupted_weights(kind, tmp_path):
    for layout in ("dhf1k", "kinetics"):
        ensure_synthetic(layout, progress=False)  # built once, outside the runs
    steps = HD2S_STEPS[kind]
    ref, cut = tmp_path / "ref", tmp_path / "cut"
    with open(tmp_path / "ref.err", "w") as err:
        ref_proc = subprocess.Popen(_hd2s_cmd(kind, ref), env=_env(), stdout=subprocess.DEVNULL, stderr=err)
    cut_proc = subprocess.Popen(_hd2s_cmd(kind, cut), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    seen: dict[tuple[int, int], int] = {}  # (inode, mtime) of each last.pt version → its step
    first = None

    def check_ref() -> None:
        """Open each new version of the reference's last.pt (an atomic rename gives each a new inode): a
        truncated file has no zip directory and fails to open (mmap: the ~360 MB are not read)."""
        try:
            st = (ref / "last.pt").stat()
        except FileNotFoundError:
            return
        if (st.st_ino, st.st_mtime_ns) not in seen:
            ckpt = torch.load(ref / "last.pt", map_location="cpu", weights_only=True, mmap=True)
            assert ckpt["format"] == "hd2s" and set(ckpt) >= {"model", "optimizer", "rng", "state"}
            seen[st.st_ino, st.st_mtime_ns] = ckpt["step"]

    procs = [ref_proc, cut_proc]
    deadline = time.monotonic() + 300
    try:
        while any(p.poll() is None for p in procs):
            assert time.monotonic() < deadline, "the runs did not end"
            if first is None and cut_proc.poll() is None and (cut / "last.pt").is_file():
                os.kill(cut_proc.pid, signal.SIGKILL)  # right after its first checkpoint
                cut_proc.wait(timeout=60)
                assert cut_proc.returncode == -signal.SIGKILL
                first = torch.load(cut / "last.pt", weights_only=True, mmap=True)  # what the kill left loads
                assert first["format"] == "hd2s" and 0 < first["step"] < steps, "killed after a checkpoint, early"
                # rerun the same command (while the reference goes on)
                procs.append(subprocess.Popen(_hd2s_cmd(kind, cut), env=_env(), stdout=subprocess.DEVNULL,
                                              stderr=subprocess.DEVNULL))
            check_ref()  # every version of the reference's last.pt seen on disk is complete
            time.sleep(0.05)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=60)
    assert ref_proc.returncode == 0, (tmp_path / "ref.err").read_text()[-2000:]
    assert first is not None, f"the run ended before writing its first checkpoint (rc {cut_proc.returncode})"
    assert procs[2].returncode == 0, "the rerun failed"
    check_ref()
    assert sorted(set(seen.values())) == [2, steps]  # the mid-run checkpoint and the final one

    a, b = _load(ref / "last.pt"), _load(cut / "last.pt")
    assert a["step"] == b["step"] == steps and b["state"]["finished"]
    assert a["model"].keys() == b["model"].keys()
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    # Adam's moments too (and each parameter's step count): the runs are the same run
    assert a["optimizer"]["state"].keys() == b["optimizer"]["state"].keys()
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert torch.equal(sa["step"], sb["step"]) and int(sb["step"]) == steps
        assert torch.equal(sa["exp_avg"], sb["exp_avg"]) and torch.equal(sa["exp_avg_sq"], sb["exp_avg_sq"])
    if HD2S_VAL_EVERY[kind]:  # best.pt: the same validation, the same weights
        best_a, best_b = _load(ref / "best.pt"), _load(cut / "best.pt")
        assert best_a["val_kl"] == best_b["val_kl"] and all(torch.equal(best_a["model"][k], best_b["model"][k])
                                                             for k in best_a["model"])
        assert [r["step"] for r in _rows(cut) if r["kind"] == "val"] == list(range(2, steps + 1, 2))
    assert not list(cut.glob(".*.tmp")), "no temporary files left behind"
    # the log has each step exactly once, with the uninterrupted run's values (losses, λ, validation)
    assert [r["step"] for r in _rows(cut) if r["kind"] == "train"] == list(range(1, steps + 1))
    assert _rows(cut) == _rows(ref)
