"""Training the teacher with the TinyHD trainer (issue 5): HD2S, HD2S_DA (§3.5) and HD2S_DSL (§3.6) through
``tinyhd.training.train`` / ``tinyhd train``; per-kind defaults, checkpoints that load as teachers, exact resume,
the λ schedule, the DSL cycling and parameter isolation, and the ``train_hd2s`` wrapper.

Everything runs at 32×64 on the synthetic sets with batch 1–2 and 1–3 steps (HD2S needs H, W multiples of 32)."""
from __future__ import annotations

import json
import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from tinyhd import cli
from tinyhd import teacher as tteacher
from tinyhd.errors import UserError
from tinyhd.training import (TrainConfig, build_data, build_model, build_teacher, config_from_dict, config_key,
                             hd2s_epoch, load_config, packaged_config, step_loss, train)

FAST = dict(val_videos=1, val_clips_per_video=1, progress=False)


def _cfg(name: str, **over) -> TrainConfig:
    return load_config(packaged_config(name), {**FAST, **over})


def _rows(out: Path, kind: str = "train") -> list[dict]:
    return [r for r in map(json.loads, (out / "log.jsonl").read_text().splitlines()) if r["kind"] == kind]


def _weights(path: Path) -> dict[str, torch.Tensor]:
    """A trainer HD2S checkpoint's tensors in our key layout."""
    return tteacher.load_hd2s(path).state_dict()


def _domain_keys(keys, domain: str) -> list[str]:
    """The keys of one DSL domain's own parameters and buffers (priors, BatchNorms, fusion, smoothing)."""
    return [k for k in keys if f"__{domain.lower()}" in k or f".bn_{domain}." in k]


# -- configuration ---------------------------------------------------------------------------------------------

def test_kind_defaults_and_tinyhd_unchanged():
    tiny = TrainConfig()
    assert (tiny.optimizer, tiny.lr, tiny.weight_decay, tiny.batch_size, tiny.size, tiny.distill_on) == \
        ("sgd", 0.01, 5e-4, 12, (192, 256), "all") and tiny.milestones == (100, 150, 180)
    hd2s = TrainConfig(model="hd2s").validate()  # HD2S sheet §8: Adam 1e-3, wd 2e-7, no schedule, 8, 128×192
    assert (hd2s.optimizer, hd2s.lr, hd2s.weight_decay, hd2s.batch_size, hd2s.size, hd2s.distill_on) == \
        ("adam", 1e-3, 2e-7, 8, (128, 192), "none") and hd2s.milestones == ()
    assert TrainConfig(model="hd2s_da", lr=3e-3).lr == 3e-3  # explicit values win
    # a TinyHD config keeps the key it had before the HD2S fields existed (notebook run folders are named by it)
    assert config_key(TrainConfig(size=(32, 64), distill_on="none")) == "fe3e88df48"
    assert config_key(TrainConfig(size=(32, 64), distill_on="none", accumulation=2)) != "fe3e88df48"


@pytest.mark.parametrize("values, field", [
    ({"model": "hd2s3"}, "model"),
    ({"model": "hd2s", "distill_on": "all", "teacher": "reduced"}, "teacher"),
    ({"model": "hd2s", "teacher": "cache:/x"}, "teacher"),         # was blamed on distill_on
    ({"model": "hd2s", "distill_on": "all"}, "distill_on"),        # was "needs a teacher"
    ({"model": "hd2s", "output": "multi"}, "output"),
    ({"model": "hd2s", "clip_len": 10}, "clip_len"),
    ({"model": "hd2s", "optimizer": "sgd"}, "optimizer"),
    ({"model": "hd2s", "accumulation": 0}, "accumulation"),
    ({"model": "hd2s", "head_lr_mult": 0}, "head_lr_mult"),
    ({"model": "hd2s", "val_every": -1}, "val_every"),
    ({"model": "hd2s", "reload_best_at_milestones": True}, "reload_best_at_milestones"),
    ({"model": "hd2s", "dsl_sources": [{"name": "A"}]}, "dsl_sources"),
    ({"model": "hd2s_da", "batch_size": 1}, "batch_size"),
    ({"model": "hd2s_da", "da_target_dataset": "imagenet"}, "da_target_dataset"),
    ({"model": "hd2s_dsl"}, "dsl_sources"),
    ({"model": "hd2s_dsl", "dsl_sources": [{"name": "A"}, {"name": "a"}]}, "dsl_sources"),
    ({"model": "hd2s_dsl", "dsl_sources": [{"name": "A", "path": "/x"}]}, "dsl_sources"),
    ({"model": "hd2s_dsl", "dsl_sources": [{"name": "A", "dataset": "kinetics"}]}, "dsl_sources"),
    ({"model": "hd2s", "da_multilevel": True}, "da_multilevel"),       # DA-only keys were ignored by other kinds
    ({"model": "hd2s_dsl", "dsl_sources": [{"name": "A"}], "da_target_root": "/x"}, "da_target_root"),
    ({"model": "hd2s", "teacher_domain": "A"}, "teacher_domain"),
])
def test_bad_hd2s_values_are_named(values, field):
    with pytest.raises(UserError, match=f"cfg.yaml: {field}"):
        config_from_dict(values, source="cfg.yaml")


def test_da_classifiers_sized_for_other_clips_roundtrip(tmp_path):
    torch.manual_seed(0)
    model = tteacher.HD2S_DA(domain_input_size=(32, 64))   # not the authors' layout (theirs: 128×192)
    assert model.domainClassifier2.domainClassifier[0].in_features == 4 * 4 * 8
    assert model.domainClassifier5.domainClassifier[0].in_features == 16 * 1 * 2
    assert tteacher.HD2S_DA().config == {"pretrained_backbone": False}  # the default stays the authors'
    out = model.train()(torch.zeros(2, 3, 8, 32, 64), lambda_=0.5)
    assert out.domain.shape == (2, 4, 2)
    with pytest.raises(ValueError, match="32×64"):
        model(torch.zeros(2, 3, 8, 64, 96), lambda_=0.5)
    tteacher.save_hd2s(model, tmp_path / "da.pt")
    back = tteacher.load_hd2s(tmp_path / "da.pt")
    assert back.domain_input_size == (32, 64)
    assert all(torch.equal(v, back.state_dict()[k]) for k, v in model.state_dict().items())


# -- one run of each kind ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Iterator[dict[str, Path]]:
    """The three packaged smoke configs, shortened to 2 (base) or 3 steps; the base run goes through the CLI.
    Deleted after the module (~1 GB of checkpoints)."""
    root = tmp_path_factory.mktemp("hd2s_runs")
    out = {"hd2s": root / "hd2s", "hd2s_da": root / "da"}
    assert cli.main(["train", "hd2s_smoke", "--out", str(out["hd2s"]), "--set", "max_steps=2",
                     "--set", "val_every=1", "--set", "progress=false"]) == 0
    train(_cfg("hd2s_da_smoke"), out["hd2s_da"])
    yield out
    shutil.rmtree(root, ignore_errors=True)


def test_hd2s_training_on_a_cpu_keeps_freed_memory(tmp_path, monkeypatch):
    """HD2S frees and re-allocates its activations every step; on a CPU the trainer keeps the pages (8–12 % per
    step), as it does for TinyHD's CPU path."""
    import tinyhd.fast

    kept = []
    monkeypatch.setattr(tinyhd.fast, "keep_freed_memory", lambda: kept.append(True) or True)
    train(_cfg("hd2s_smoke", max_steps=1, val_every=0, device="cpu"), tmp_path / "run")
    assert kept == [True]


def test_base_run_writes_checkpoints_that_load_as_teachers(runs, tmp_path):
    out = runs["hd2s"]
    rows = _rows(out)
    assert [r["step"] for r in rows] == [1, 2] and all(r["total"] > r["final"] > 0 for r in rows)
    assert [r["step"] for r in _rows(out, "val")] == [1, 2]               # val_every: 1
    last = torch.load(out / "last.pt", weights_only=True)
    assert last["format"] == "hd2s" and last["variant"] == "HD2S" and last["step"] == 2
    assert "featureExtractor.block1.0.conv_s.weight" in last["model"]       # the authors' key layout
    assert last["train_config"]["accumulation"] == 2 and last["state"]["finished"]
    best = torch.load(out / "best.pt", weights_only=True)
    assert best["val_kl"] == min(r["val_loss"] for r in _rows(out, "val"))
    assert type(tteacher.load_hd2s(out / "last.pt")) is tteacher.HD2S
    # the adam state exists: one optimiser step per 2 accumulated mini-batches, 2 steps
    assert all(int(s["step"]) == 2 for s in last["optimizer"]["state"].values())
    # `teacher: hd2s:CKPT` and `tinyhd cache-teacher` take it
    tcfg = TrainConfig(size=(32, 64), teacher=f"hd2s:{out / 'best.pt'}", distill_on="target")
    assert isinstance(build_teacher(tcfg), tteacher.OnlineTeacher)
    from tinyhd.synth import ensure_synthetic

    assert cli.main(["cache-teacher", str(out / "last.pt"), str(ensure_synthetic("dhf1k", progress=False)),
                     "--out", str(tmp_path / "cache"), "--size", "32x64", "--splits", "val", "--max-videos", "1"]) == 0
    assert (tmp_path / "cache" / "complete").is_file()


def test_da_run_follows_the_lambda_schedule_and_trains_the_classifiers(runs):
    out = runs["hd2s_da"]
    rows = _rows(out)
    total = 3  # max_steps × accumulation 1: p = mini-batch counter / 3 (sheet §10)
    assert [r["step"] for r in rows] == [1, 2, 3]
    for r in rows:
        assert r["lambda"] == pytest.approx(tteacher.grl_lambda((r["step"] - 1) / total), abs=1e-6)
        assert 0.0 <= r["domain_acc"] <= 1.0 and r["domain"] > 0 and r["saliency"] > 0
        assert r["total"] == pytest.approx(r["saliency"] + r["domain"], rel=1e-5)
    assert rows[0]["lambda"] == 0.0 and rows[-1]["lambda"] > rows[1]["lambda"] > 0.9
    init = build_model(_cfg("hd2s_da_smoke")).state_dict()
    trained = _weights(out / "last.pt")
    heads = [k for k in init if k.startswith(("domainClassifier", "featureReduction")) and k.endswith("weight")]
    assert len(heads) > 8 and all(not torch.equal(init[k], trained[k]) for k in heads)


def test_da_step_gives_the_domain_branch_gradients():
    cfg = _cfg("hd2s_da_smoke")
    data = build_data(cfg)
    ds, batches = hd2s_epoch(cfg, data, epoch=0)
    from tinyhd.training import collate

    batch = collate([ds[i] for i in batches[0]])
    assert batch["source"] == ["source", "source", "target", "target"]  # B source + B target clips
    torch.manual_seed(0)
    model = build_model(cfg).train()
    terms = step_loss(cfg, model, batch, torch.device("cpu"), False, None, progress=0.5)
    terms["domain"].backward()
    for name, p in model.named_parameters():
        if name.startswith(("domainClassifier", "featureReduction")):
            assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert model.decoder5.last_conv5.weight.grad is None  # the domain loss does not reach the decoders


# -- resume -----------------------------------------------------------------------------------------------------

def test_interrupted_da_run_resumes_to_the_uninterrupted_weights(tmp_path, monkeypatch):
    """Stop a DA run in the middle of an accumulated step (after the step-2 checkpoint), rerun it, and get the
    uninterrupted run's weights, Adam moments and log (dropout RNG, λ and the clip stream are all restored)."""
    import tinyhd.training as training

    cfg = _cfg("hd2s_da_smoke", accumulation=2, val_every=0)
    ref = train(cfg, tmp_path / "ref")
    real, calls = training.step_loss, {"n": 0}

    def interrupted(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 6:  # the second mini-batch of step 3
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(training, "step_loss", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "cut")
    assert torch.load(tmp_path / "cut" / "last.pt", weights_only=True)["step"] == 2
    monkeypatch.setattr(training, "step_loss", real)
    cut = train(cfg, tmp_path / "cut")
    a = torch.load(tmp_path / "ref" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "cut" / "last.pt", weights_only=True)
    assert a["step"] == b["step"] == 3
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert torch.equal(sa["exp_avg"], sb["exp_avg"]) and torch.equal(sa["exp_avg_sq"], sb["exp_avg_sq"])
    assert _rows(tmp_path / "cut") == _rows(tmp_path / "ref")  # each step logged once, same values
    assert all(torch.equal(v, cut.model.state_dict()[k]) for k, v in ref.model.state_dict().items())


def test_extended_da_run_keeps_the_lambda_schedule_it_started(tmp_path, monkeypatch):
    """λ's progress p = mini-batch counter / (horizon × accumulation), the horizon fixed at the run's first start
    and kept in its state. A run stopped at max_steps 2 and extended to 4 goes on along its schedule (p = 1, 1.5:
    λ never steps back); it used to re-time it (p = 0.5 at step 3 after 0.5 at step 2). An interrupted run resumed
    with the same config is the uninterrupted one (test_interrupted_da_run_resumes_to_the_uninterrupted_weights)."""
    import tinyhd.training as training

    real, progress = training.step_loss, []

    def recording(cfg, model, batch, device, use_amp, teacher, p):
        progress.append(p)
        return real(cfg, model, batch, device, use_amp, teacher, p)

    monkeypatch.setattr(training, "step_loss", recording)
    cfg = _cfg("hd2s_da_smoke", max_steps=2, val_every=0, checkpoint_every=100)
    train(cfg, tmp_path / "r")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train(_cfg("hd2s_da_smoke", max_steps=4, val_every=0, checkpoint_every=100), tmp_path / "r")
    assert progress == [0.0, 0.5, 1.0, 1.5]
    assert any("keeps the schedule of this run's first start (2 steps)" in str(w.message) for w in caught)
    rows = _rows(tmp_path / "r")
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    for r in rows:
        assert r["lambda"] == pytest.approx(tteacher.grl_lambda((r["step"] - 1) / 2), abs=1e-6)
    assert torch.load(tmp_path / "r" / "last.pt", weights_only=True, mmap=True)["state"]["lambda_steps"] == 2


# -- domain-specific learning -------------------------------------------------------------------------------------

def test_dsl_cycles_sources_and_updates_only_the_active_domain(tmp_path, monkeypatch):
    import tinyhd.training as training

    cfg = _cfg("hd2s_dsl_smoke", val_every=0)
    domains = [s["name"] for s in cfg.dsl_sources]
    ds, batches = hd2s_epoch(cfg, build_data(cfg), epoch=0)
    sources = [ds.plan[b[0]][0] for b in batches[:6]]
    assert sources == [0, 1, 2, 0, 1, 2]                       # DHF1K → Hollywood → UCFSports (sheet §11)

    # one run of 3 steps (one per source); the weights seen by each step's loss are the previous step's result
    snapshots, real = [], training.step_loss

    def spy(cfg, model, *args, **kwargs):
        snapshots.append({k: v.clone() for k, v in model.state_dict().items()})
        return real(cfg, model, *args, **kwargs)

    monkeypatch.setattr(training, "step_loss", spy)
    result = train(cfg, tmp_path / "run")
    snapshots.append(result.model.state_dict())
    assert len(snapshots) == 4 and [r["source"] for r in _rows(tmp_path / "run")] == domains
    shared = "decoder5.deconvlayer5_5.0.conv.weight"
    for step, active in enumerate(domains):
        before, after = snapshots[step], snapshots[step + 1]
        assert not torch.equal(before[shared], after[shared])   # shared parameters learn from every source
        for d in domains:
            keys = _domain_keys(before, d)
            assert len(keys) > 50
            changed = [k for k in keys if not torch.equal(before[k], after[k])]
            if d == active:
                assert f"gaussians5__{d.lower()}" in changed and f"last_block__{d.lower()}.0.weight" in changed
            else:  # no gradient (None), so Adam and weight decay leave them alone, momentum included
                assert changed == [], (step, d, changed[:3])
    # validation per source, each with its own domain
    fresh = train(_cfg("hd2s_dsl_smoke", max_steps=1, val_every=1), tmp_path / "val")
    row = _rows(fresh.out_dir, "val")[-1]
    assert {f"{d}/val_loss" for d in domains} <= set(row)
    assert row["val_loss"] == pytest.approx(sum(row[f"{d}/val_loss"] for d in domains) / 3)


def test_synthetic_ucf_and_hollywood2_layouts_and_their_held_out_validation(tmp_path):
    from tinyhd.data import SaliencyClipDataset, list_videos
    from tinyhd.synth import build

    roots = {k: build(tmp_path / k, k, videos=4, frames=18, size=(48, 64), seed=0, progress=False)
             for k in ("ucf", "hollywood2")}
    assert list_videos(roots["ucf"], "train", "ucf") == ["Diving-Side-001", "Golf-Swing-Front-002", "Kicking-Front-003"]
    assert list_videos(roots["hollywood2"], "test", "hollywood2") == ["actioncliptest00001"]
    assert (roots["ucf"] / "training" / "Diving-Side-001" / "maps" / "0018.png").is_file()
    item = SaliencyClipDataset(roots["ucf"], split="train", dataset="ucf", size=(32, 64))[0]
    assert item["saliency"].sum() > 0 and item["clip"].shape == (3, 16, 32, 64)
    cfg = TrainConfig(model="hd2s_dsl", size=(32, 64), dsl_sources=(
        {"name": "UCF", "root": str(roots["ucf"]), "dataset": "ucf"},
        {"name": "Hollywood", "root": str(roots["hollywood2"]), "dataset": "hollywood2"}))
    data = build_data(cfg.validate())
    for (name, train_ds), (vname, val_ds) in zip(data.train, data.val):
        # no val split in these layouts: the last training video (10 %, at least one) is held out
        assert name == vname and val_ds.split == "train" and len(val_ds.entries) == 1
        assert [e.id for e in train_ds.entries] + [val_ds.entries[0].id] == list_videos(train_ds.root, "train")


# -- the train_hd2s wrapper ----------------------------------------------------------------------------------------

def test_train_hd2s_wrapper_trains_one_dsl_domain(tmp_path):
    from tinyhd.synth import ensure_synthetic

    torch.manual_seed(0)
    model = tteacher.HD2S_DSL(domains=("A", "B"))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    losses = tteacher.train_hd2s(model, ensure_synthetic("dhf1k", progress=False), steps=1, size=(32, 64),
                                 batch_size=1, domain="B", out_dir=tmp_path, progress=False)
    assert len(losses) == 1 and losses[0] > 0 and not model.training
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in _domain_keys(before, "A"))
    assert not torch.equal(before["gaussians2__b"], after["gaussians2__b"])
    assert tteacher.load_hd2s(tmp_path / "last.pt").domains == ["A", "B"]
    with pytest.raises(ValueError, match="hd2s_da"):
        tteacher.train_hd2s(tteacher.HD2S_DA(), ensure_synthetic("dhf1k", progress=False), steps=1)
