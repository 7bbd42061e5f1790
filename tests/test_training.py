"""The trainer: config parsing, the epoch plan, sharding, optimizer groups, distillation wiring, chains, CLI."""
from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from tinyhd import cli
from tinyhd.errors import UserError
from tinyhd.training import (TrainConfig, StudentTeacher, collate, config_from_dict, epoch_plan, load_config,
                             load_model, param_groups, shard_batches, train, train_chain)

CONFIGS = Path(__file__).resolve().parents[1] / "tinyhd" / "configs"
TINY = dict(size=(32, 32), batch_size=2, max_videos=4, max_aux_videos=4, val_videos=1, val_clips_per_video=1,
            num_threads=1, progress=False, device="cpu", epochs=1)


# -- configuration ---------------------------------------------------------------------------------------

def test_defaults_are_the_paper_recipe():
    cfg = TrainConfig()
    assert (cfg.lr, cfg.momentum, cfg.weight_decay, cfg.batch_size, cfg.epochs) == (0.01, 0.9, 5e-4, 12, 200)
    assert cfg.milestones == (100, 150, 180) and cfg.gamma == 0.1
    assert (cfg.encoder_lr_mult, cfg.bias_lr_mult) == (0.5, 2.0)


@pytest.mark.parametrize("name", sorted(p.name for p in CONFIGS.glob("*.yaml")))
def test_packaged_configs_parse(name):
    from tinyhd.training import _stage_refs

    values = yaml.safe_load((CONFIGS / name).read_text())
    stages = values.pop("stages", None) or [{}]
    for i, stage in enumerate(stages):
        merged = {**values, **{k: v for k, v in stage.items() if k != "name"}}
        earlier = [s["name"] for s in stages[:i]]
        assert all(ref in earlier for _, ref in _stage_refs(merged)), (name, stage)   # '@name': an earlier stage
        merged = {k: (v.replace("@", "/x/") if isinstance(v, str) else v) for k, v in merged.items()}
        config_from_dict(merged, source=name)


def test_unknown_key_names_key_and_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("epochs: 3\nlearning_rate: 0.1\n")
    with pytest.raises(UserError, match=r"bad\.yaml.*'learning_rate'"):
        load_config(path)


@pytest.mark.parametrize("values, field", [
    ({"distill_on": "everything"}, "distill_on"),
    ({"distill_on": "all"}, "distill_on"),          # no teacher
    ({"size": [100, 96]}, "size"),
    ({"reduce_factor": 2}, "reduce_factor"),        # no init_from
    ({"teacher": "magic:x", "distill_on": "all"}, "teacher"),
    ({"batch_size": 0}, "batch_size"),
    ({"flip": "maybe"}, "flip"),                    # a truthy string is not true
    ({"amp": 1}, "amp"),
    ({"epochs": 2.5}, "epochs"),
    ({"lr": "fast"}, "lr"),
    ({"dataset": 3}, "dataset"),
    ({"clip_len": 20}, "clip_len"),                 # TinyHD-S: at most 16 (a bare traceback from the model)
    ({"clip_len": 8, "output": "multi"}, "clip_len"),   # TinyHD-M: 16
    ({"device": "gpu"}, "device"),                  # was a bare RuntimeError from torch.device
    ({"device": "cuda:x"}, "device"),
    ({"gamma": -1}, "gamma"),                       # was accepted
    ({"gamma": 0}, "gamma"),
    ({"momentum": -0.1}, "momentum"),
    ({"momentum": 1.5}, "momentum"),
    ({"weight_decay": -1e-4}, "weight_decay"),
    ({"decoders": "d1"}, "decoders"),               # a string: was ('d', '1') and a model error without the file
    ({"decoders": ["d1", "d4"]}, "decoders"),
    ({"decoders": []}, "decoders"),
    ({"head_lr_mult": 30}, "head_lr_mult"),         # HD2S-only keys were silently ignored for TinyHD
    ({"dsl_sources": [{"name": "A"}]}, "dsl_sources"),
    ({"da_multilevel": True}, "da_multilevel"),
    ({"da_target_root": "/data/UCF"}, "da_target_root"),
    ({"teacher_domain": "DHF1K"}, "teacher_domain"),                                # no hd2s: teacher
    ({"teacher": "cache:/c", "distill_on": "all", "teacher_domain": "DHF1K"}, "teacher_domain"),
])
def test_bad_values_are_named(values, field):
    with pytest.raises(UserError, match=f"cfg.yaml: {field}"):
        config_from_dict({"distill_on": "none", **values}, source="cfg.yaml")


def test_scalar_fields_take_their_type_and_numbers_written_as_yaml_strings():
    """PyYAML reads ``1e-3`` as a string: a float field takes it as the number; numpy scalars (a notebook's
    computed values) pass as their Python kinds."""
    cfg = config_from_dict(yaml.safe_load("distill_on: none\nlr: 1e-3\nflip: false\n"), source="cfg.yaml")
    assert cfg.lr == 0.001 and isinstance(cfg.lr, float) and cfg.flip is False
    TrainConfig(distill_on="none", max_steps=np.int64(3), flip=np.bool_(True), lr=np.float32(0.01)).validate()


def test_cli_reports_bad_config_as_one_line(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text("epochs: 1\nfoo: 2\n")
    assert cli.main(["train", str(path), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "bad.yaml" in err and "'foo'" in err
    assert cli.main(["train", str(tmp_path / "missing.yaml"), "--out", str(tmp_path / "r")]) == 2
    # a bad --set is named as such, not blamed on the file
    path.write_text("epochs: 1\n")
    assert cli.main(["train", str(path), "--out", str(tmp_path / "run"), "--set", "bogus=1"]) == 2
    assert "--set bogus: unknown key" in capsys.readouterr().err
    assert cli.main(["train", str(path), "--out", str(tmp_path / "run"), "--set", "lr=abc"]) == 2
    assert "bad.yaml with --set lr: lr: must be a number" in capsys.readouterr().err
    path.write_text("epochs: 1\ndistill_on: none\n")
    assert cli.main(["train", str(path), "--out", str(tmp_path / "run"), "--set", "device=gpu"]) == 2
    assert "bad.yaml with --set device: device: not a device" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_cuda_without_cuda_is_named(monkeypatch):
    """device: cuda (or cuda:N) on a machine without CUDA is a config error, not a traceback at the first .to()."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for device in ("cuda", "cuda:0"):
        with pytest.raises(UserError, match=f"cfg.yaml: device: no CUDA device .* \\(got '{device}'\\)"):
            config_from_dict({"distill_on": "none", "device": device}, source="cfg.yaml")
    assert config_from_dict({"distill_on": "none", "device": "cpu"}).device == "cpu"
    assert config_from_dict({"distill_on": "none", "decoders": ["d1"]}).decoders == ("d1",)


# -- epoch plan and sharding --------------------------------------------------------------------------------

def test_epoch_plan_is_a_pure_function_of_seed_and_epoch():
    a = epoch_plan(10, 7, 10, seed=3, epoch=5)
    assert a == epoch_plan(10, 7, 10, seed=3, epoch=5)
    assert a != epoch_plan(10, 7, 10, seed=3, epoch=6)
    assert sorted(i for s, i in a if s == 0) == list(range(10))      # every target video once
    aux = [i for s, i in a if s == 1]
    assert len(aux) == 10 and set(aux) == set(range(7))               # all aux videos before repeats
    assert epoch_plan(5, 0, 0, 0, 0) and all(s == 0 for s, _ in epoch_plan(5, 0, 0, 0, 0))


@pytest.mark.parametrize("n, batch, world", [(24, 12, 1), (25, 12, 2), (7, 4, 3), (5, 2, 2)])
def test_shards_cover_the_epoch_evenly(n, batch, world):
    shards = [shard_batches(n, batch, r, world) for r in range(world)]
    assert len({len(s) for s in shards}) == 1                          # same number of steps on every rank
    seen = [p for s in shards for b in s for p in b]
    assert set(seen) == set(range(n))                                 # every clip, padding only by wrap-around
    assert len(seen) - n < world
    assert all(len(b) <= max(1, batch // world) for s in shards for b in s)
    if world == 1:
        assert [p for b in shards[0] for p in b] == list(range(n)) and len(shards[0][0]) == batch


# -- optimizer ----------------------------------------------------------------------------------------------

def test_param_groups_follow_sheet_e():
    from tinyhd.model import TinyHD

    model = TinyHD(output="single", reduction=4)
    groups = {g["name"]: g for g in param_groups(model, TrainConfig())}
    assert groups["encoder.weight"]["lr"] == pytest.approx(0.005) and groups["encoder.weight"]["weight_decay"] == 5e-4
    assert groups["encoder.bias"]["lr"] == pytest.approx(0.01) and groups["encoder.bias"]["weight_decay"] == 0
    assert groups["decoders.weight"]["lr"] == pytest.approx(0.01)
    assert groups["decoders.bias"]["lr"] == pytest.approx(0.02) and groups["decoders.bias"]["weight_decay"] == 0
    n = sum(len(g["params"]) for g in groups.values())
    assert n == len(list(model.parameters()))


def test_collate_mixes_labelled_and_auxiliary_items():
    lab = {"clip": torch.zeros(3, 16, 32, 32), "saliency": torch.ones(1, 32, 32), "fixation": torch.zeros(1, 32, 32),
           "has_sal": torch.tensor(True), "video": "001", "frame_index": torch.tensor([15]), "flip": torch.tensor(False),
           "source": "target"}
    aux = {k: v for k, v in lab.items() if k not in ("saliency", "fixation", "has_sal")}
    aux.update(video="k/1", source="aux")
    batch = collate([lab, aux])
    assert batch["clip"].shape == (2, 3, 16, 32, 32) and batch["saliency"].shape == (2, 1, 32, 32)
    assert batch["has_sal"].tolist() == [True, False] and batch["saliency"][1].sum() == 0
    assert batch["video"] == ["001", "k/1"] and batch["source"] == ["target", "aux"]


# -- training with a stand-in teacher -----------------------------------------------------------------------

class CentreTeacher:
    """A stand-in teacher: a centred blob for every map; records what it was asked about."""

    def __init__(self):
        self.sources: list[str] = []

    def __call__(self, batch):
        self.sources += list(batch["source"])
        b, _, _, h, w = batch["clip"].shape
        y = torch.linspace(-1, 1, h)[:, None]
        x = torch.linspace(-1, 1, w)[None, :]
        blob = torch.exp(-(x ** 2 + y ** 2) / 0.2)
        return {"final": blob.expand(b, 1, h, w).clone(), "conspicuity": blob.expand(b, 4, 1, h, w).clone()}


def test_distillation_on_target_and_auxiliary(tmp_path):
    teacher = CentreTeacher()
    cfg = TrainConfig(**TINY, distill_on="all", teacher="cache:unused", max_steps=3)
    result = train(cfg, tmp_path / "all", teacher=teacher)
    rows = [r for r in result.history if r["kind"] == "train"]
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert all(r["kd_final"] > 0 and r["kd_d1"] > 0 for r in rows)
    assert all(torch.isfinite(torch.tensor(r["total"])) for r in rows)
    assert "aux" in teacher.sources and "target" in teacher.sources  # epoch = target clips + auxiliary clips
    val = [r for r in result.history if r["kind"] == "val"]
    assert val and all(k in val[-1] for k in ("cc", "nss", "sim", "kld", "val_loss"))
    assert result.best is not None and result.last.is_file()
    # best.pt: the weights and where they came from, not the optimizer (nothing resumes from it); last.pt: all
    best = torch.load(result.best, weights_only=True)
    last = torch.load(result.last, weights_only=True)
    assert set(best) == {"format", "config", "model", "train_config", "state"}
    assert set(last) == set(best) | {"optimizer", "scheduler", "scaler", "rng"}
    assert type(load_model(result.best)) is type(result.model)


def test_distill_on_target_uses_no_auxiliary_clips(tmp_path):
    teacher = CentreTeacher()
    cfg = TrainConfig(**TINY, distill_on="target", teacher="cache:unused", max_steps=2)
    train(cfg, tmp_path / "td", teacher=teacher)
    assert teacher.sources and set(teacher.sources) == {"target"}


def test_a_cached_teacher_is_checked_against_the_videos_distilled_on_before_training(tmp_path):
    """The trainer asks a cache-like teacher (``verify_sources``) about every target and auxiliary video first."""
    from tinyhd.errors import DataError

    class Refusing(CentreTeacher):
        def verify_sources(self, entries):
            self.checked = [e.id for e in entries]
            raise DataError("built from another dataset")

    teacher = Refusing()
    cfg = TrainConfig(**TINY, distill_on="all", teacher="cache:unused", max_steps=2)
    with pytest.raises(DataError, match="another dataset"):
        train(cfg, tmp_path / "v", teacher=teacher)
    assert not teacher.sources                          # refused before the first step
    assert len(teacher.checked) == 8 and len(set(teacher.checked)) == 8   # 4 target + 4 auxiliary videos
    assert not (tmp_path / "v").exists()                # the run folder it created is not left behind, empty
    with pytest.raises(DataError, match="another dataset"):
        train(cfg, tmp_path / "new" / "v", teacher=teacher)
    assert not (tmp_path / "new").exists()              # nor the parents it created
    train(cfg, tmp_path / "v", teacher=CentreTeacher())  # and the failed run released the folder's lock


class _MeanTeacher(torch.nn.Module):
    """A stand-in for HD2S that is cheap to cache: maps from the window's mean intensity (HD2S's output layout)."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(1))

    def forward(self, x):
        from types import SimpleNamespace

        m = torch.sigmoid(self.scale * x.mean(dim=(1, 2)))                   # b×H×W
        return SimpleNamespace(saliency=m[:, None], conspicuity=m[:, None].expand(-1, 4, -1, -1))


def test_a_cache_of_an_auxiliary_subset_names_max_aux_videos(tmp_path):
    """A cache holding all target videos but only the first 2 auxiliary ones (cache-teacher --max-videos 2 on
    Kinetics): the error says to set max_aux_videos to 2, and with it the run starts."""
    from tinyhd.errors import DataError
    from tinyhd.synth import ensure_synthetic
    from tinyhd.teacher_cache import build_teacher_cache

    for layout, n in (("dhf1k", 4), ("kinetics", 2)):
        build_teacher_cache(_MeanTeacher(), ensure_synthetic(layout, progress=False), tmp_path / "cache" / layout,
                            size=(32, 32), max_videos=n, progress=False)
    cfg = TrainConfig(**TINY, distill_on="all", teacher=f"cache:{tmp_path / 'cache'}", max_steps=1)
    with pytest.raises(DataError, match=r"Only auxiliary videos lack maps \(2 of the 4.*max_aux_videos: 4\): "
                                        r"set max_aux_videos: 2 \(--set max_aux_videos=2\)"):
        train(cfg, tmp_path / "run")
    result = train(replace(cfg, max_aux_videos=2), tmp_path / "run")
    assert [r["step"] for r in result.history if r["kind"] == "train"] == [1]
    # a missing target video is not blamed on max_aux_videos
    with pytest.raises(DataError, match="no teacher maps") as info:
        train(replace(cfg, max_videos=5, max_aux_videos=2), tmp_path / "run5")
    assert "max_aux_videos" not in str(info.value)


def _val_rows(out):
    return [(r["epoch"], r["step"]) for r in map(json.loads, (out / "log.jsonl").read_text().splitlines())
            if r["kind"] == "val"]


def test_extending_a_run_stopped_at_an_epoch_end_validates_each_epoch_once(tmp_path):
    cfg = TrainConfig(**{**TINY, "epochs": 3}, distill_on="none", max_steps=2)      # 2 steps per epoch
    train(cfg, tmp_path / "r")
    assert _val_rows(tmp_path / "r") == [(0, 2)]
    train(replace(cfg, max_steps=4), tmp_path / "r")    # the first epoch's end (deferred by max_steps) comes now
    assert _val_rows(tmp_path / "r") == [(0, 2), (1, 4)]


def test_a_kill_between_the_epoch_end_validation_and_its_checkpoint_is_redone_once(tmp_path, monkeypatch):
    """The mid-epoch checkpoint at an epoch's last step precedes that epoch's validation: killed before the
    epoch-end checkpoint, the resumed run validates again, and the log keeps one row for it (it kept both)."""
    import tinyhd.training as tt

    real = tt.atomic_torch_save

    def killed_at_first_epoch_end(payload, path):
        if Path(path).name == "last.pt" and payload["state"]["epoch"] == 1 and payload["state"]["step_in_epoch"] == 0:
            raise KeyboardInterrupt("killed")
        real(payload, path)

    cfg = TrainConfig(**{**TINY, "epochs": 2}, distill_on="none", checkpoint_every=1)
    monkeypatch.setattr(tt, "atomic_torch_save", killed_at_first_epoch_end)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "k")
    assert _val_rows(tmp_path / "k") == [(0, 2)]          # logged after last.pt (step 2, mid-epoch) was written
    monkeypatch.setattr(tt, "atomic_torch_save", real)
    train(cfg, tmp_path / "k")
    assert _val_rows(tmp_path / "k") == [(0, 2), (1, 4)]
    steps = [r["step"] for r in train(cfg, tmp_path / "k").history if r["kind"] == "train"]
    assert steps == [1, 2, 3, 4]


def test_calling_train_on_a_finished_run_leaves_its_log_untouched(tmp_path):
    """A finished run asked for again (a notebook re-executed) returns its history without rewriting log.jsonl;
    a half-written last line (a kill while logging) is still dropped on resume."""
    cfg = TrainConfig(**TINY, distill_on="none", max_steps=2)
    train(cfg, tmp_path / "r")
    log = tmp_path / "r" / "log.jsonl"
    before = (log.read_bytes(), log.stat().st_mtime_ns)
    os.utime(log, ns=(before[1] - 10**9, before[1] - 10**9))      # an older mtime, so a rewrite would show
    train(cfg, tmp_path / "r")
    assert (log.read_bytes(), log.stat().st_mtime_ns) == (before[0], before[1] - 10**9)
    with open(log, "a") as fh:
        fh.write('{"kind": "tra')
    train(cfg, tmp_path / "r")
    assert log.read_bytes() == before[0]


def test_unusable_run_folders_and_last_pt_are_named(tmp_path):
    import shutil

    from tinyhd.errors import CheckpointError

    cfg = TrainConfig(**TINY, distill_on="none", max_steps=1)
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match=r"file: exists and is not a folder"):
        train(cfg, tmp_path / "file")
    result = train(cfg, tmp_path / "r")
    for name, content, message in (("empty", b"", r"empty file \(0 bytes"),
                                   ("text", b"not a checkpoint", r"not a readable PyTorch checkpoint .*: \w+"),
                                   ("best", result.best.read_bytes(), r"not a resumable checkpoint .*no optimizer, rng")):
        run = tmp_path / name
        shutil.copytree(tmp_path / "r", run)
        (run / "last.pt").write_bytes(content)
        with pytest.raises(CheckpointError, match=rf"last\.pt: {message}.*use a new --out folder to start over"):
            train(cfg, run)


def test_a_run_folder_without_last_pt_is_not_overwritten(tmp_path):
    """last.pt moved away (the old advice), or a folder where only best.pt was kept: a new run there would truncate
    log.jsonl and overwrite best.pt. It is refused, naming them, and nothing is touched."""
    cfg = TrainConfig(**TINY, distill_on="none", max_steps=1)
    run = tmp_path / "r"
    train(cfg, run)
    (run / "last.pt").rename(tmp_path / "moved_last.pt")
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    with pytest.raises(UserError, match=r"r: has best\.pt and log\.jsonl but no last\.pt .*new --out folder"):
        train(cfg, run)
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before
    (run / "log.jsonl").unlink()
    with pytest.raises(UserError, match=r"has best\.pt but no last\.pt"):
        train(cfg, run)
    (run / "best.pt").unlink()
    (run / "log.jsonl").write_text("")          # an empty log holds nothing: a new run may start
    assert [r["step"] for r in train(cfg, run).history if r["kind"] == "train"] == [1]


def test_a_run_killed_before_its_first_checkpoint_starts_again(tmp_path, monkeypatch):
    """Killed after its first validation (best.pt, log rows) but before its first last.pt, a run's folder holds
    only its own files: the same command starts it again and ends as the uninterrupted run."""
    import tinyhd.training as tt

    real = tt.atomic_torch_save

    def killed_at_first_last_pt(payload, path):
        if Path(path).name == "last.pt":
            raise KeyboardInterrupt("killed")
        real(payload, path)

    cfg = TrainConfig(**{**TINY, "epochs": 2}, distill_on="none", checkpoint_every=100)
    ref = train(cfg, tmp_path / "ref")
    monkeypatch.setattr(tt, "atomic_torch_save", killed_at_first_last_pt)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "k")
    assert (tmp_path / "k" / "best.pt").is_file() and _val_rows(tmp_path / "k") == [(0, 2)]
    assert not (tmp_path / "k" / "last.pt").exists()
    monkeypatch.setattr(tt, "atomic_torch_save", real)
    again = train(cfg, tmp_path / "k")
    assert _val_rows(tmp_path / "k") == [(0, 2), (1, 4)]
    assert [r for r in again.history if r["kind"] == "train"] == [r for r in ref.history if r["kind"] == "train"]
    assert not (tmp_path / "k" / tt.STARTED).exists()


def test_one_trainer_per_run_folder(tmp_path):
    """A second trainer on a folder whose lock is held (another process, here another open file) is refused before
    it writes anything; the lock goes with the run that held it."""
    import fcntl

    cfg = TrainConfig(**TINY, distill_on="none", max_steps=1)
    run = tmp_path / "r"
    run.mkdir()
    with open(run / ".lock", "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(UserError, match=r"r: another trainer is running in this folder"):
            train(cfg, run)
        assert sorted(p.name for p in run.iterdir()) == [".lock"]
    assert [r["step"] for r in train(cfg, run).history if r["kind"] == "train"] == [1]
    with open(run / ".lock", "a") as fh:            # released at the end of the run
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)


def test_two_trainer_processes_on_one_folder(tmp_path):
    """The same with a real second process: while one `tinyhd train` runs in a folder, another is refused (exit
    status 2, the folder named) and the first one's log keeps each of its steps once, in order."""
    import signal
    import subprocess
    import sys
    import time

    log = tmp_path / "r" / "log.jsonl"
    cmd = [sys.executable, "-m", "tinyhd", "train", "smoke", "--out", str(tmp_path / "r"),
           "--set", "epochs=100000", "--set", "max_steps=100000", "--set", "progress=false"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while not (log.is_file() and log.read_text().count("\n") >= 1):   # it holds the folder and is stepping
            assert first.poll() is None and time.monotonic() < deadline, "the first run did not start stepping"
            time.sleep(0.1)
        second = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)  # (used to train on)
        assert first.poll() is None
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=60)
    assert second.returncode == 2, second.stderr[-2000:]
    assert f"{tmp_path / 'r'}: another trainer is running in this folder" in second.stderr
    from tinyhd.training import _read_log

    steps = [r["step"] for r in _read_log(log) if r["kind"] == "train"]    # (a line cut by the kill is skipped)
    assert steps == list(range(1, len(steps) + 1))


def test_a_failed_data_check_leaves_no_run_folder(tmp_path):
    cfg = TrainConfig(**TINY, distill_on="none", max_steps=1, data_root=str(tmp_path / "nowhere"))
    with pytest.raises(UserError, match="nowhere"):
        train(cfg, tmp_path / "new" / "run")
    assert not (tmp_path / "new" / "run").exists()


def test_a_path_spelled_differently_still_resumes(tmp_path):
    from tinyhd.synth import ensure_synthetic

    root = str(ensure_synthetic("dhf1k", progress=False))
    cfg = TrainConfig(**TINY, distill_on="none", max_steps=1, data_root=root)
    train(cfg, tmp_path / "r")
    result = train(replace(cfg, data_root=root + "//", max_steps=2), tmp_path / "r")   # was "data_root differ"
    assert [r["step"] for r in result.history if r["kind"] == "train"] == [1, 2]


def test_changed_config_refuses_to_resume(tmp_path):
    cfg = TrainConfig(**TINY, distill_on="none", max_steps=1)
    train(cfg, tmp_path / "r")
    with pytest.raises(UserError, match="lr"):
        train(TrainConfig(**{**TINY, "size": (32, 32)}, distill_on="none", max_steps=1, lr=0.5), tmp_path / "r")
    # more steps on the same run is allowed: it continues from step 1
    res = train(TrainConfig(**TINY, distill_on="none", max_steps=2), tmp_path / "r")
    assert [r["step"] for r in res.history if r["kind"] == "train"] == [1, 2]


def test_teacher_assistant_chain_from_the_command_line(tmp_path):
    """A `stages:` YAML through `tinyhd train`: ×1, then a ×½ student averaged from it and distilled from it (TA)."""
    cfg = {**{k: (list(v) if isinstance(v, tuple) else v) for k, v in TINY.items()}, "max_steps": 1,
           "stages": [{"name": "x1", "distill_on": "none"},
                      {"name": "x1_2_ta", "init_from": "@x1", "reduce_factor": 2, "teacher": "student:@x1",
                       "distill_on": "target"}]}
    path = tmp_path / "chain.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert cli.main(["train", str(path), "--out", str(tmp_path / "out")]) == 0
    from tinyhd.training import _read_log, load_model

    assert load_model(tmp_path / "out" / "x1" / "last.pt").config["reduction"] == 1
    assert load_model(tmp_path / "out" / "x1_2_ta" / "last.pt").config["reduction"] == 2
    rows = [r for r in _read_log(tmp_path / "out" / "x1_2_ta" / "log.jsonl") if r["kind"] == "train"]
    assert rows and rows[0]["kd_final"] > 0 and rows[0]["kd_d1"] > 0
    # the ×½ student's encoder started from the ×1 kernels averaged (reduce_channels), not at random:
    # with lr 0 the weights after one step are the initial ones
    from tinyhd.reduction import reduce_channels

    expected = reduce_channels(load_model(tmp_path / "out" / "x1" / "best.pt"), 2).state_dict()
    start = train(TrainConfig(**{**TINY, "max_steps": 1}, init_from=str(tmp_path / "out" / "x1" / "best.pt"),
                              reduce_factor=2, distill_on="none", lr=1e-30, momentum=0.0, weight_decay=0.0),
                  tmp_path / "probe").model.state_dict()
    key = next(k for k in expected if k.startswith("encoder.") and k.endswith("weight"))
    assert torch.allclose(start[key], expected[key], atol=1e-6)
    # a second run of the same command finds every stage finished
    mtime = (tmp_path / "out" / "x1_2_ta" / "last.pt").stat().st_mtime_ns
    assert cli.main(["train", str(path), "--out", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "x1_2_ta" / "last.pt").stat().st_mtime_ns == mtime


def test_hd2s_teacher_on_the_fly(tmp_path):
    """teacher: hd2s:CKPT runs HD2S on each batch (OnlineTeacher) and feeds Eq. 3."""
    from tinyhd.teacher import HD2S, save_hd2s
    from tinyhd.training import build_teacher

    torch.manual_seed(0)
    save_hd2s(HD2S(pretrained_backbone=False), tmp_path / "hd2s.pt")
    cfg = TrainConfig(**TINY, teacher=f"hd2s:{tmp_path / 'hd2s.pt'}", distill_on="target", max_steps=1)
    t = build_teacher(cfg)
    maps = t({"clip": torch.randn(1, 3, 16, 32, 32), "frame_index": torch.tensor([[15]]), "video": ["001"],
              "flip": torch.tensor([False])})
    assert maps["final"].shape == (1, 1, 32, 32) and maps["conspicuity"].shape == (1, 4, 1, 32, 32)
    res = train(cfg, tmp_path / "run")
    rows = [r for r in res.history if r["kind"] == "train"]
    assert rows[0]["kd_final"] > 0 and rows[0]["kd_d1"] > 0


def test_hd2s_teacher_gives_mimo_targets_the_frames_before_the_clip(tmp_path):
    """teacher: hd2s:CKPT on TinyHD-M clips that do not start the video: target frame t's window is the 16 video
    frames ending at t, decoded from the run's own datasets (target and auxiliary), so the maps are the cache's
    (tinyhd.teacher_cache, the same weights and videos) up to its uint8 rounding. It used to pad the frames before
    the clip with the clip's first one (off by ~0.06 in the final map and ~0.5 in the conspicuity maps here)."""
    from tinyhd import teacher as tt
    from tinyhd.synth import ensure_synthetic
    from tinyhd.teacher_cache import CachedTeacher, build_teacher_cache, recalibrate_batchnorm
    from tinyhd.training import build_data, build_teacher
    from tinyhd.video import read_video

    root = ensure_synthetic("dhf1k", progress=False)
    torch.manual_seed(0)
    # BatchNorm statistics of real clips: a freshly initialised HD2S gives the same maps whatever its input
    hd2s = recalibrate_batchnorm(tt.HD2S(), root, (32, 64), clips_per_video=1, batch_size=8)
    tt.save_hd2s(hd2s, tmp_path / "hd2s.pt")
    build_teacher_cache(tt.load_hd2s(tmp_path / "hd2s.pt"), root, tmp_path / "cache", size=(32, 64), max_videos=1,
                        progress=False)
    cfg = TrainConfig(size=(32, 64), output="multi", flip=False, max_videos=1, max_aux_videos=1, device="cpu",
                      teacher=f"hd2s:{tmp_path / 'hd2s.pt'}", distill_on="all").validate()
    ds = build_data(cfg).train[0][1]
    ds.set_epoch(0)
    item = ds[0]
    assert item["frame_index"][0] > 0                   # the clip starts after the video's first frame
    batch = collate([{**item, "source": "target"}])
    online, cached = build_teacher(cfg)(batch), CachedTeacher(tmp_path / "cache")(batch)
    padded = tt.OnlineTeacher(tt.load_hd2s(tmp_path / "hd2s.pt"))(batch)   # the old behaviour
    for key in ("final", "conspicuity"):
        assert online[key].shape == cached[key].shape
        assert float((online[key] - cached[key]).abs().max()) <= 1 / 255, key
    assert float((padded["conspicuity"] - cached["conspicuity"]).abs().max()) > 0.1   # the check can fail
    # an auxiliary video's frames come from the auxiliary set
    frames = build_teacher(cfg).frames
    aux = build_data(cfg).aux.entries[0]
    assert np.array_equal(frames(aux.id)[np.array([0, 5])], read_video(aux.source)[[0, 5]])


def test_dsl_teacher_distils_from_the_named_domain(tmp_path):
    """teacher: hd2s:CKPT of an HD2S_DSL needs teacher_domain (its domains give different maps; it used the first
    one silently); any other teacher refuses it."""
    from tinyhd import teacher as tt
    from tinyhd.training import build_teacher

    torch.manual_seed(0)
    dsl = tt.HD2S_DSL(domains=["DHF1K", "UCF"]).eval()
    with torch.no_grad():
        dsl.last_block__ucf[0].bias += 2.0              # fresh domains start alike: make UCF's fusion its own
    tt.save_hd2s(dsl, tmp_path / "dsl.pt")
    tt.save_hd2s(tt.HD2S(), tmp_path / "hd2s.pt")
    batch = {"clip": torch.randn(1, 3, 16, 32, 32), "frame_index": torch.tensor([[15]]), "video": ["001"],
             "flip": torch.tensor([False])}
    cfg = TrainConfig(**TINY, teacher=f"hd2s:{tmp_path / 'dsl.pt'}", distill_on="target")
    with pytest.raises(UserError, match=r"dsl\.pt: an HD2S_DSL checkpoint with domains .*set teacher_domain"):
        build_teacher(cfg)
    with pytest.raises(UserError, match=r"teacher_domain 'Hollywood'.*one of DHF1K, UCF"):
        build_teacher(replace(cfg, teacher_domain="Hollywood"))
    maps = build_teacher(replace(cfg, teacher_domain="ucf"))(batch)["final"]
    from tinyhd.preprocess import student_to_teacher_input

    with torch.no_grad():
        x = student_to_teacher_input(batch["clip"])
        ucf, dhf1k = dsl(x, domain="UCF").saliency, dsl(x, domain="DHF1K").saliency
    assert torch.equal(maps[:, 0], ucf[:, 0]) and not torch.equal(ucf, dhf1k)
    with pytest.raises(UserError, match=r"hd2s\.pt: a HD2S checkpoint has no domains"):
        build_teacher(replace(cfg, teacher=f"hd2s:{tmp_path / 'hd2s.pt'}", teacher_domain="UCF"))


def test_student_teacher_contract():
    from tinyhd.model import TinyHD

    t = StudentTeacher(TinyHD(output="single", reduction=4))
    maps = t({"clip": torch.randn(2, 3, 16, 32, 32)})
    assert maps["final"].shape == (2, 1, 32, 32) and maps["conspicuity"].shape == (2, 4, 1, 32, 32)
    assert ((maps["final"] > 0) & (maps["final"] < 1)).all()


def test_reload_best_at_milestones(tmp_path):
    """The authors' option: when a milestone is reached the model restarts from best.pt."""
    cfg = TrainConfig(**{**TINY, "max_videos": 2}, distill_on="none", milestones=(2,), reload_best_at_milestones=True)
    train(cfg, tmp_path / "r")                                  # epoch 0 (one step); best.pt written
    # plant recognisable weights in best.pt, and make sure the next validation cannot replace them
    best = torch.load(tmp_path / "r" / "best.pt", weights_only=True)
    marker = {k: (v + 1.0 if v.is_floating_point() else v) for k, v in best["model"].items()}
    best["model"] = marker
    torch.save(best, tmp_path / "r" / "best.pt")
    last = torch.load(tmp_path / "r" / "last.pt", weights_only=True)
    last["state"]["best"] = float("-inf")
    torch.save(last, tmp_path / "r" / "last.pt")
    res = train(TrainConfig(**{**TINY, "max_videos": 2, "epochs": 2}, distill_on="none", milestones=(2,),
                            reload_best_at_milestones=True), tmp_path / "r")   # epoch 1, then the milestone
    final = res.model.state_dict()
    assert all(torch.equal(final[k], marker[k]) for k in marker)


def test_worker_processes_do_not_change_the_run(tmp_path):
    """num_workers only changes where clips are decoded: the weights after two steps are identical."""
    runs = [train(TrainConfig(**{**TINY, "max_videos": 2}, distill_on="none", max_steps=2, num_workers=w),
                  tmp_path / f"w{w}").model.state_dict() for w in (0, 1)]
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])


def test_optimizer_choice():
    """The paper's SGD by default; Adam on request (reduced-scale notebooks); anything else is refused."""
    from tinyhd.model import TinyHD
    from tinyhd.training import make_optimizer

    model = TinyHD(reduction=4)
    assert isinstance(make_optimizer(model, TrainConfig()), torch.optim.SGD)
    adam = make_optimizer(model, TrainConfig(optimizer="adam", lr=0.01))
    assert isinstance(adam, torch.optim.Adam)
    assert {g["name"] for g in adam.param_groups} == {"encoder.bias", "encoder.weight", "decoders.bias",
                                                      "decoders.weight"}
    with pytest.raises(UserError, match="optimizer"):
        TrainConfig(optimizer="rmsprop", distill_on="none").validate()


@pytest.mark.parametrize("kind", ["sgd", "adam", "hd2s"])
def test_optimizers_are_fused_and_step_like_the_plain_ones(kind):
    """make_optimizer picks PyTorch's fused implementation (one kernel for all tensors); three steps move every
    parameter as the plain (for-loop) implementation with the same groups does, up to float32 rounding."""
    import copy

    from tinyhd.model import TinyHD
    from tinyhd.training import make_optimizer

    torch.manual_seed(0)
    if kind == "hd2s":
        model, cfg = torch.nn.Sequential(torch.nn.Conv3d(3, 4, 3), torch.nn.BatchNorm3d(4)), TrainConfig(model="hd2s")
    else:
        model, cfg = TinyHD(reduction=4), TrainConfig(optimizer=kind, lr=0.01)
    start, plain_model = copy.deepcopy(model), copy.deepcopy(model)
    opt = make_optimizer(model, cfg)
    assert opt.defaults["fused"] is True
    name_of = {id(p): n for n, p in model.named_parameters()}
    twin = dict(plain_model.named_parameters())
    plain = type(opt)([{**{k: v for k, v in g.items() if k != "params"},
                        "params": [twin[name_of[id(p)]] for p in g["params"]]} for g in opt.param_groups],
                      fused=False, foreach=False)
    assert not plain.defaults["fused"]
    for _ in range(3):
        for p, q in zip(model.parameters(), plain_model.parameters()):
            p.grad = torch.randn_like(p)
            q.grad = p.grad.clone()
        opt.step()
        plain.step()
    for (n, p), q, p0 in zip(model.named_parameters(), plain_model.parameters(), start.parameters()):
        p, q, p0 = p.detach(), q.detach(), p0.detach()
        assert float((p - q).abs().max()) <= 1e-6 * max(1.0, float(q.abs().max())), n
        assert float((p - p0).abs().max()) > 1e-5, n  # the step did move it


def test_centre_bias_validation_scores_the_fixed_gaussian(tmp_path, monkeypatch):
    """The baseline goes through the same validation as a model: finite scores, CC in (0, 1) on the synthetic set
    (objects are often off-centre), the same for every call."""
    from tinyhd.training import centre_bias_validation

    monkeypatch.setenv("TINYHD_CACHE", str(tmp_path / "cache"))
    cfg = TrainConfig(size=(32, 64), distill_on="none", val_videos=1, val_clips_per_video=1)
    scores = centre_bias_validation(cfg)
    assert 0 < scores["cc"] < 0.5 and scores["kld"] > 0
    assert centre_bias_validation(cfg) == scores


def test_notebook_scale_reduced_and_full_defaults():
    from tinyhd.training import notebook_scale

    reduced = notebook_scale(None, epochs=2)
    assert (reduced.full, reduced.size, reduced.batch_size, reduced.max_steps, reduced.optimizer,
            reduced.milestones) == (False, (32, 64), 2, 40, "adam", ())
    assert (reduced.epochs, reduced.teacher) == (2, "reduced")
    assert notebook_scale(None).epochs == 10
    full = notebook_scale("/data/DHF1K", epochs=200, teacher="hd2s:/w/hd2s.pth")
    assert (full.full, full.size, full.batch_size, full.max_steps, full.optimizer,
            full.milestones, full.teacher) == (True, (192, 256), 12, None, "sgd", (100, 150, 180), "hd2s:/w/hd2s.pth")
    # epochs left at None is the paper's 200 at full scale (a -p data_root run is the paper's schedule)
    assert notebook_scale("/data/DHF1K", teacher="cache:/c").epochs == 200
    assert notebook_scale("/data/DHF1K", teacher="cache:/c").milestones == (100, 150, 180)
    explicit = notebook_scale("/data/DHF1K", size=(96, 128), batch_size=4, max_steps=7, optimizer="adam", epochs=40,
                              teacher=None)
    assert (explicit.size, explicit.batch_size, explicit.max_steps, explicit.optimizer,
            explicit.milestones) == ((96, 128), 4, 7, "adam", (20, 30, 36))


@pytest.mark.parametrize("teacher", ["auto", "reduced"])
def test_notebook_scale_wants_a_real_teacher_at_full_scale(teacher):
    """The reduced teacher at full scale would train a toy HD2S and cache its maps over all of DHF1K and
    Kinetics-400 on the CPU: the notebooks say what to pass instead, before anything runs."""
    from tinyhd.errors import UserError
    from tinyhd.training import notebook_scale

    with pytest.raises(UserError, match="hd2s:") as info:
        notebook_scale("/data/DHF1K", teacher=teacher)
    assert "cache" in str(info.value)


def test_reduced_teacher_is_refused_on_a_real_dataset(tmp_path):
    """build_teacher refuses teacher: reduced when data_root or aux_root is not a synthetic set (no own
    manifest.yaml named synthetic-*), before training or caching anything."""
    from tinyhd.errors import UserError
    from tinyhd.synth import ensure_synthetic
    from tinyhd.training import TrainConfig, build_teacher

    real = tmp_path / "DHF1K"
    real.mkdir()
    with pytest.raises(UserError, match=r"data_root = .*DHF1K.*hd2s:CKPT"):
        build_teacher(TrainConfig(data_root=str(real), teacher="reduced"))
    with pytest.raises(UserError, match=r"aux_root = .*kinetics"):
        build_teacher(TrainConfig(data_root=str(ensure_synthetic("dhf1k")), aux_root=str(tmp_path / "kinetics"),
                                  teacher="reduced"))
    assert not any(tmp_path.rglob("*.npy"))


def test_progress_bar_is_sparse_outside_a_terminal(tmp_path, capsys):
    """In a notebook or a log file the bar is not redrawn on every step (a full-scale run would leave one
    output per step): a 4-step run draws it at its start and its end only."""
    cfg = TrainConfig(**{**TINY, "progress": True}, distill_on="none", max_steps=4)
    train(cfg, tmp_path / "p")
    err = capsys.readouterr().err
    draws = err.count("train p:")
    assert 1 <= draws <= 3, err


def test_validation_clips_are_resized_then_centre_cropped_as_the_authors_loader_does(tmp_path):
    """Sheet (e) "Val": 200×355 then a 192×256 centre crop (scaled for reduced sizes); training clips are a plain
    resize. The val item equals a dataset built with that val_resize, and differs from a plain resize."""
    from tinyhd import data as tdata
    from tinyhd.synth import ensure_synthetic
    from tinyhd.training import build_datasets

    cfg = TrainConfig(size=(32, 64), val_videos=1, val_clips_per_video=1, distill_on="none").validate()
    train_ds, _, val_ds = build_datasets(cfg)
    assert train_ds.val_resize is None and val_ds.val_resize == (33, 89) == tdata.val_resize_for((32, 64))
    assert tdata.val_resize_for((192, 256)) == (200, 355)
    root = ensure_synthetic("dhf1k", progress=False)
    kw = dict(split="val", sampling="uniform", flip=False, max_videos=1, clips_per_video=1, size=(32, 64),
              clip_len=cfg.clip_len, output=cfg.output, seed=cfg.seed)
    by_hand = tdata.SaliencyClipDataset(root, val_resize=(33, 89), **kw)[0]
    plain = tdata.SaliencyClipDataset(root, **kw)[0]
    item = val_ds[0]
    assert torch.equal(item["clip"], by_hand["clip"]) and torch.equal(item["saliency"], by_hand["saliency"])
    assert not torch.equal(item["clip"], plain["clip"])


def _chain_file(tmp_path, stages, **base):
    cfg = {**{k: (list(v) if isinstance(v, tuple) else v) for k, v in TINY.items()}, "max_steps": 1,
           "distill_on": "none", **base, "stages": stages}
    path = tmp_path / "chain.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.parametrize("stages, message", [
    (["x1", "x2"], r"stage 1 is 'x1', expected a mapping"),
    ([{"name": 2}], r"stage 1 needs a 'name' that is a folder name .* got 2"),
    ([{"name": "a/b"}], r"stage 1 needs a 'name'"),
    ([{"name": "x1"}, {"name": "half", "init_from": "@quarter", "reduce_factor": 2},
      {"name": "quarter", "init_from": "@half", "reduce_factor": 2}],
     r"stage half.*init_from refers to '@quarter', which is a later stage"),
    ([{"name": "x1"}, {"name": "half", "teacher": "student:@x2", "distill_on": "target"}],
     r"stage half.*teacher refers to '@x2', which is not a stage"),
    ([{"name": "x1"}, {"name": "half", "init_from": "@x1", "reduce_factr": 2}], r"stage half.*'reduce_factr'"),
])
def test_a_chain_is_checked_whole_before_its_first_stage_trains(tmp_path, stages, message):
    """A malformed stage list, a typo or a bad '@name' in a later stage is named before any stage trains (it
    was found after the earlier stages had trained, or as a bare traceback)."""
    from tinyhd.training import run_config_file

    path = _chain_file(tmp_path, stages)
    with pytest.raises(UserError, match=message):
        run_config_file(path, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_set_changes_the_shared_keys_and_a_stage_keeps_its_own(tmp_path, monkeypatch, capsys):
    """--set teacher=… on a TA chain changes the HD2S stages' teacher, not the TA stage's student:@x1."""
    import tinyhd.training as tt

    seen: dict = {}
    monkeypatch.setattr(tt, "train", lambda cfg, out: seen.setdefault(Path(out).name, cfg))
    path = _chain_file(tmp_path, [{"name": "x1"},
                                  {"name": "x1_2_ta", "init_from": "@x1", "reduce_factor": 2,
                                   "teacher": "student:@x1"},
                                  {"name": "x1_2_hd2s", "init_from": "@x1", "reduce_factor": 2}],
                       teacher="cache:/data/old", distill_on="target")
    tt.run_config_file(path, tmp_path / "out", {"teacher": "cache:/mine", "epochs": 3})
    assert seen["x1"].teacher == seen["x1_2_hd2s"].teacher == "cache:/mine"
    assert seen["x1_2_ta"].teacher == f"student:{tmp_path / 'out' / 'x1' / 'last.pt'}"
    assert {c.epochs for c in seen.values()} == {3}
    assert "stage(s) x1_2_ta set their own teacher and keep it" in capsys.readouterr().err


def test_init_from_refuses_a_reduction_or_decoders_the_checkpoint_does_not_give(tmp_path):
    from tinyhd.checkpoints import save_checkpoint
    from tinyhd.model import TinyHD
    from tinyhd.training import build_model

    torch.manual_seed(0)
    save_checkpoint(TinyHD(output="single"), tmp_path / "x1.pt")
    base = dict(output="single", init_from=str(tmp_path / "x1.pt"), distill_on="none")
    for extra, message in (({"reduction": 2}, r"reduction 2: .*set reduce_factor: 2"),
                           ({"reduction": 4, "reduce_factor": 2}, r"reduction 4: .*reduced by reduce_factor 2"),
                           ({"decoders": ["d1"]}, r"decoders \['d1'\]: .*has decoders \['d1', 'd2', 'd3'\]")):
        with pytest.raises(UserError, match=message):
            build_model(TrainConfig(**base, **extra).validate())
    assert build_model(TrainConfig(**base, reduction=2, reduce_factor=2).validate()).config["reduction"] == 2
    assert build_model(TrainConfig(**base, reduce_factor=2).validate()).config["reduction"] == 2


@pytest.mark.parametrize("given", ["64x96", "64×96", "[64, 96]", [64, 96], (64, 96)])
def test_notebook_scale_takes_the_size_as_papermill_passes_it(given):
    """papermill -p size 64x96 passes a string; it was split into characters (a bare error about '[', '3' …)."""
    from tinyhd.training import notebook_scale

    assert notebook_scale(None, size=given).size == (64, 96)
    with pytest.raises(UserError, match="size"):
        notebook_scale(None, size="[64]")
