"""Training and hierarchical distillation of TinyHD (paper §3.3, §4.2): one readable loop, resumable, DDP-ready.

Read top to bottom:

1. :class:`TrainConfig` — every knob, defaults = the paper's recipe (§4.2). A YAML file maps onto it
   (:func:`load_config`; unknown keys are rejected with the key and the file named).
2. Data: an *epoch* is one random clip per target video plus ``aux_per_target`` × as many auxiliary
   (unlabeled, Kinetics-layout) clips, shuffled (paper §4.2; sheet (e) "Epoch": ``RandomClipSampler_mix``,
   1 : 1 on DHF1K). The order is a pure function of (seed, epoch) (:func:`epoch_plan`) and the datasets
   draw their random clip/flip from (seed, epoch, index), so a run can stop after any step and continue.
3. The teacher (:func:`build_teacher`): cached HD2S maps, HD2S on the fly, or a trained student (the
   *teacher assistant* of §3.3.2) — all callables ``teacher(batch) -> {"final", "conspicuity"}``.
4. The loss: :func:`tinyhd.losses.distillation_loss` (Eq. 2/3). ``distill_on`` picks the Table 4 row:
   "none" (GT maps only), "target" (+ KD on the target set), "all" (+ KD on the auxiliary set).
5. :func:`train` — SGD (momentum 0.9, lr 0.01, encoder ×0.5, biases ×2 without weight decay, weight decay
   5e-4), lr ×0.1 at epochs 100/150/180, AMP on CUDA, validation every epoch, ``last.pt`` every
   ``checkpoint_every`` steps and at every epoch end, ``best.pt`` on the best validation KL. Running it again
   on the same folder resumes exactly where the last checkpoint left off.
6. :func:`train_chain` — several stages in one config (the ×1 → ×½ → ×¼ teacher-assistant chain, Table 5).
7. DDP: under ``torchrun`` each rank takes its share of every global batch; rank 0 logs and checkpoints.

Where the paper and the authors' code disagree we follow the paper and say so: batch 12 (paper) instead of
the yaml's 2. The authors' code also reloads the best checkpoint at each lr milestone
(``reload_best_at_milestones``, off by default: the paper does not mention it).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import random
import sys
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
import torch.distributed as dist
import yaml
from torch import nn
from torch.utils.data import DataLoader, Dataset

from tinyhd.errors import CheckpointError, UserError
from tinyhd.losses import distillation_loss, kl_maps
from tinyhd.paths import atomic_open, atomic_torch_save

DISTILL_ON = ("none", "target", "all")
OPTIMIZERS = ("sgd", "adam")
# fields that may change between a run and its resumption (they do not change what is computed per step)
RESUMABLE_CHANGES = {"epochs", "max_steps", "checkpoint_every", "num_workers", "log_every", "progress",
                     "device", "num_threads", "val_videos"}


# ----------------------------------------------------------------------------------------------------------
# 1. configuration


@dataclass
class TrainConfig:
    """Every training knob. Defaults are the paper's recipe (§4.2) for TinyHD-S on DHF1K with Kinetics-400."""

    # data
    data_root: str | None = None          # DHF1K-layout root; None → tinyhd.synth.ensure_synthetic("dhf1k")
    aux_root: str | None = None           # Kinetics-400-layout root; None → ensure_synthetic("kinetics")
    dataset: str = "dhf1k"                # layout of data_root: dhf1k, ucf, hollywood2
    size: tuple[int, int] = (192, 256)    # training resolution H×W (divisible by 32)
    clip_len: int = 16
    aux_per_target: float = 1.0           # auxiliary clips per target video per epoch (DHF1K 1:1, UCF 1:10)
    max_videos: int | None = None         # use only the first N training videos (reduced scale)
    max_aux_videos: int | None = None
    val_videos: int | None = None         # validate on the first N val videos (None: all)
    val_clips_per_video: int = 5          # evenly spaced val clips per video (sheet (e): 5)
    flip: bool = True                     # random horizontal flips (paper §4.2)
    # model
    output: str = "single"                # "single" = TinyHD-S (MISO), "multi" = TinyHD-M (MIMO)
    decoders: tuple[str, ...] = ("d1", "d2", "d3")
    reduction: int = 1
    pretrained_backbone: bool = False     # True: ImageNet MobileNetV2 (the paper; needs torchvision's download)
    init_from: str | None = None          # checkpoint to start from (ours or the authors')
    reduce_factor: int = 1                # 2 or 4: reduce_channels(init_from model) — §3.3.2 students
    # distillation
    teacher: str | None = None            # "cache:PATH" | "hd2s:CKPT" | "student:CKPT" | "reduced" | None
    distill_on: str = "all"               # "none" (GT only) | "target" (+KD on TD) | "all" (+KD on AD)
    # optimisation (paper §4.2; sheet (e))
    optimizer: str = "sgd"                # "sgd" (the paper) | "adam" (reduced-scale runs from a random init)
    epochs: int = 200
    batch_size: int = 12                  # paper; the authors' yaml says 2
    lr: float = 0.01                      # the paper's SGD lr; with optimizer "adam" use ~1e-3
    momentum: float = 0.9
    weight_decay: float = 5e-4
    encoder_lr_mult: float = 0.5
    bias_lr_mult: float = 2.0
    milestones: tuple[int, ...] = (100, 150, 180)
    gamma: float = 0.1
    reload_best_at_milestones: bool = False
    amp: bool = True                      # mixed precision (only on CUDA)
    max_steps: int | None = None          # stop after this many optimizer steps (in total)
    # bookkeeping
    seed: int = 0
    device: str = "auto"                  # "auto" → cuda if available, else cpu
    num_workers: int = 0
    num_threads: int | None = None        # torch.set_num_threads on CPU
    checkpoint_every: int = 200           # steps between mid-epoch checkpoints
    log_every: int = 1
    progress: bool = True

    def validate(self, source: str = "TrainConfig") -> "TrainConfig":
        """Raise :class:`UserError` naming ``source`` and the field for any invalid value; return self."""
        def bad(name: str, why: str) -> UserError:
            return UserError(f"{source}: {name}: {why} (got {getattr(self, name)!r})")

        if self.output not in ("single", "multi"):
            raise bad("output", "must be 'single' or 'multi'")
        if self.distill_on not in DISTILL_ON:
            raise bad("distill_on", f"must be one of {DISTILL_ON}")
        if self.distill_on != "none" and not self.teacher:
            raise bad("distill_on", "needs a teacher (set teacher: cache:PATH, hd2s:CKPT, student:CKPT or reduced)")
        if len(self.size) != 2 or any(int(s) <= 0 or int(s) % 32 for s in self.size):
            raise bad("size", "must be [H, W], both positive multiples of 32")
        if self.reduction not in (1, 2, 4):
            raise bad("reduction", "must be 1, 2 or 4")
        if self.reduce_factor not in (1, 2, 4):
            raise bad("reduce_factor", "must be 1, 2 or 4")
        if self.reduce_factor > 1 and not self.init_from:
            raise bad("reduce_factor", "needs init_from (the model whose kernels are averaged)")
        for name in ("epochs", "batch_size", "clip_len", "checkpoint_every", "log_every"):
            if int(getattr(self, name)) < 1:
                raise bad(name, "must be at least 1")
        if self.max_steps is not None and self.max_steps < 1:
            raise bad("max_steps", "must be at least 1 (or null)")
        if self.optimizer not in OPTIMIZERS:
            raise bad("optimizer", f"must be one of {OPTIMIZERS}")
        if self.lr <= 0:
            raise bad("lr", "must be positive")
        if self.aux_per_target < 0:
            raise bad("aux_per_target", "must be >= 0")
        if self.teacher and not (self.teacher == "reduced" or self.teacher.split(":", 1)[0] in ("cache", "hd2s", "student")):
            raise bad("teacher", "must be cache:PATH, hd2s:CKPT, student:CKPT or reduced")
        return self


def config_from_dict(values: Mapping[str, Any], source: str = "config") -> TrainConfig:
    """Map a plain dict (e.g. parsed YAML) onto :class:`TrainConfig`; unknown keys are an error."""
    known = {f.name: f for f in fields(TrainConfig)}
    unknown = [k for k in values if k not in known]
    if unknown:
        raise UserError(f"{source}: unknown key {unknown[0]!r} (known keys: {', '.join(sorted(known))})")
    kwargs = {}
    for key, value in values.items():
        if isinstance(value, list):
            value = tuple(value)
        kwargs[key] = value
    try:
        cfg = TrainConfig(**kwargs)
    except TypeError as exc:  # pragma: no cover - guarded above
        raise UserError(f"{source}: {exc}") from exc
    cfg.size = tuple(int(s) for s in cfg.size)  # type: ignore[assignment]
    cfg.milestones = tuple(int(m) for m in cfg.milestones)  # type: ignore[assignment]
    cfg.decoders = tuple(cfg.decoders)
    return cfg.validate(source)


def read_yaml(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: config file not found")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise UserError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(values, dict):
        raise UserError(f"{path}: expected a mapping of config keys, got {type(values).__name__}")
    return values


def load_config(path: str | os.PathLike, overrides: Mapping[str, Any] | None = None) -> TrainConfig:
    """A :class:`TrainConfig` from a YAML file (+ overrides). A file with ``stages:`` is a chain: use
    :func:`train_chain`."""
    values = read_yaml(path)
    if "stages" in values:
        raise UserError(f"{path}: has 'stages:' — a chain; run it with `tinyhd train` or train_chain()")
    return config_from_dict({**values, **(overrides or {})}, source=str(path))


def packaged_config(name: str) -> Path:
    """Path of a config shipped in ``tinyhd/configs`` (e.g. ``"smoke"``)."""
    path = Path(__file__).parent / "configs" / (name if name.endswith(".yaml") else f"{name}.yaml")
    if not path.is_file():
        raise UserError(f"no packaged config {name!r} in {path.parent}")
    return path


# ----------------------------------------------------------------------------------------------------------
# 2. data


def epoch_plan(n_target: int, n_aux: int, aux_per_epoch: int, seed: int, epoch: int) -> list[tuple[int, int]]:
    """The clips of one epoch, in order: ``(source, index)`` with source 0 = target video, 1 = auxiliary.

    Every target video once, plus ``aux_per_epoch`` auxiliary videos (each used once before any repeats),
    shuffled. A pure function of its arguments — the basis of exact resumption.
    """
    g = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(epoch))
    items = [(0, i) for i in range(n_target)]
    if n_aux > 0 and aux_per_epoch > 0:
        aux: list[int] = []
        while len(aux) < aux_per_epoch:
            aux += torch.randperm(n_aux, generator=g).tolist()
        items += [(1, j) for j in aux[:aux_per_epoch]]
    order = torch.randperm(len(items), generator=g).tolist()
    return [items[k] for k in order]


def shard_batches(n_items: int, batch_size: int, rank: int = 0, world: int = 1) -> list[list[int]]:
    """Positions in the epoch plan of this rank's batches (the DistributedSampler idea, without shuffling:
    the plan is already shuffled). ``batch_size`` is the *global* batch: each rank takes every world-th
    clip and forms batches of ``batch_size // world`` (at least 1), so global step k covers plan positions
    ``k·B .. (k+1)·B − 1`` as in a single-process run. The plan is padded by wrapping around so that every
    rank gets the same number of steps (DDP needs that)."""
    n_pad = (-n_items) % world
    positions = list(range(n_items)) + [i % n_items for i in range(n_pad)]
    mine = positions[rank::world]
    per_rank = max(1, batch_size // world)
    return [mine[i:i + per_rank] for i in range(0, len(mine), per_rank)]


class _EpochClips(Dataset):
    """The epoch plan as a dataset: position → the clip item (with ``source`` added)."""

    def __init__(self, target: Dataset, aux: Dataset | None, plan: list[tuple[int, int]]) -> None:
        self.target, self.aux, self.plan = target, aux, plan

    def __len__(self) -> int:
        return len(self.plan)

    def __getitem__(self, pos: int) -> dict[str, Any]:
        source, index = self.plan[pos]
        item = dict((self.target if source == 0 else self.aux)[index])
        item["source"] = "target" if source == 0 else "aux"
        return item


def collate(items: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Stack tensors, keep other values in lists. Auxiliary items without GT get zero maps (has_sal False)."""
    keys = list(dict.fromkeys(k for it in items for k in it))
    batch: dict[str, Any] = {}
    for key in keys:
        values = [it.get(key) for it in items]
        if key in ("saliency", "fixation") and any(v is None for v in values):
            shape = next((v.shape for v in values if v is not None), None)
            if shape is None:
                continue
            values = [torch.zeros(shape) if v is None else v for v in values]
        if key == "has_sal":
            values = [torch.as_tensor(False if v is None else v) for v in values]
        if all(isinstance(v, torch.Tensor) for v in values):
            batch[key] = torch.stack(values)
        else:
            batch[key] = values
    if "has_sal" not in batch:
        batch["has_sal"] = torch.zeros(len(items), dtype=torch.bool)
    return batch


def build_datasets(cfg: TrainConfig) -> tuple[Dataset, Dataset | None, Dataset]:
    """(train target set, auxiliary set or None, validation set) per the data contract."""
    from tinyhd import data as tdata
    from tinyhd.synth import ensure_synthetic

    root = Path(cfg.data_root) if cfg.data_root else ensure_synthetic("dhf1k", progress=False)
    if not root.is_dir():
        raise UserError(f"data_root {root}: no such folder")
    common = dict(clip_len=cfg.clip_len, size=tuple(cfg.size), output=cfg.output, seed=cfg.seed)
    train_ds: Dataset = tdata.SaliencyClipDataset(root, split="train", dataset=cfg.dataset, sampling="random",
                                                  flip=cfg.flip, max_videos=cfg.max_videos, **common)
    val_ds: Dataset = tdata.SaliencyClipDataset(root, split="val", dataset=cfg.dataset, sampling="uniform",
                                                flip=False, max_videos=cfg.val_videos,
                                                clips_per_video=cfg.val_clips_per_video, **common)
    aux_ds = None
    if cfg.distill_on == "all" and cfg.aux_per_target > 0:
        aux_root = Path(cfg.aux_root) if cfg.aux_root else ensure_synthetic("kinetics", progress=False)
        if not aux_root.is_dir():
            raise UserError(f"aux_root {aux_root}: no such folder")
        aux_ds = tdata.UnlabeledClipDataset(aux_root, flip=cfg.flip, max_videos=cfg.max_aux_videos, **common)
    return train_ds, aux_ds, val_ds


def _set_epoch(ds: Any, epoch: int) -> None:
    while ds is not None:
        if hasattr(ds, "set_epoch"):
            ds.set_epoch(epoch)
            return
        ds = getattr(ds, "dataset", None)


# ----------------------------------------------------------------------------------------------------------
# 3. model and teacher


def load_model(path: str | os.PathLike, map_location: Any = "cpu") -> nn.Module:
    """A TinyHD from one of our checkpoints (``last.pt``/``best.pt``/``save_checkpoint``) or the authors'."""
    from tinyhd.checkpoints import load_checkpoint

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    return load_checkpoint(path, map_location)


def build_model(cfg: TrainConfig) -> nn.Module:
    """A fresh TinyHD from the config, or ``init_from`` (then ``reduce_channels`` by ``reduce_factor``)."""
    from tinyhd.model import TinyHD

    torch.manual_seed(cfg.seed)
    if not cfg.init_from:
        return TinyHD(output=cfg.output, decoders=tuple(cfg.decoders), reduction=cfg.reduction,
                      pretrained_backbone=cfg.pretrained_backbone)
    model = load_model(cfg.init_from)
    if model.config["output"] != cfg.output:
        raise UserError(f"init_from {cfg.init_from}: a {model.config['output']!r}-output model, "
                        f"but output is {cfg.output!r}")
    if cfg.reduce_factor > 1:
        from tinyhd.reduction import reduce_channels

        torch.manual_seed(cfg.seed)  # the fresh decoders of the reduced student
        model = reduce_channels(model, cfg.reduce_factor)
    return model


class StudentTeacher:
    """A trained TinyHD used as teacher (the *teacher assistant*, §3.3.2): its final map supervises the
    student's final map and its D1 maps the student's D1 maps. Returns the teacher contract's dict."""

    def __init__(self, model: nn.Module, device: torch.device | str = "cpu") -> None:
        self.model = model.to(device).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.device = torch.device(device)

    @torch.no_grad()
    def __call__(self, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        out = self.model(batch["clip"].to(self.device))
        d1 = out.d1 if out.d1.dim() == 5 else out.d1.unsqueeze(2)       # B×4×T'×H×W
        return {"final": out.saliency.float(), "conspicuity": d1.float()}


def build_teacher(cfg: TrainConfig, device: torch.device | str = "cpu") -> Callable | None:
    """The teacher named by ``cfg.teacher`` (None when ``distill_on`` is "none")."""
    if cfg.distill_on == "none" or not cfg.teacher:
        return None
    kind, _, arg = cfg.teacher.partition(":")
    if kind == "cache":
        from tinyhd.teacher_cache import CachedTeacher

        return CachedTeacher(arg)
    if kind == "hd2s":
        from tinyhd import teacher as tteacher

        return tteacher.OnlineTeacher(tteacher.load_hd2s(arg), device=device)  # ours or the authors' layout
    if kind == "student":
        return StudentTeacher(load_model(arg), device)
    if kind == "reduced":
        from tinyhd.teacher_cache import ensure_reduced_teacher

        # the reduced-scale HD2S and its cached maps (train split + the auxiliary videos this run uses)
        return ensure_reduced_teacher(cfg.data_root, cfg.aux_root, size=tuple(cfg.size), seed=cfg.seed,
                                      aux_videos=cfg.max_aux_videos, progress=cfg.progress)
    raise UserError(f"teacher {cfg.teacher!r}: unknown kind {kind!r}")


def param_groups(model: nn.Module, cfg: TrainConfig) -> list[dict[str, Any]]:
    """Sheet (e) "Optimizer": encoder lr × ``encoder_lr_mult``; biases (incl. BN β) at ``bias_lr_mult`` × their
    lr and no weight decay; everything else (incl. BN γ) decayed."""
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            groups.setdefault((name.startswith("encoder."), name.endswith("bias")), []).append(p)
    out = []
    for (enc, bias), params in sorted(groups.items()):
        lr = cfg.lr * (cfg.encoder_lr_mult if enc else 1.0) * (cfg.bias_lr_mult if bias else 1.0)
        out.append({"params": params, "lr": lr, "weight_decay": 0.0 if bias else cfg.weight_decay,
                    "name": f"{'encoder' if enc else 'decoders'}.{'bias' if bias else 'weight'}"})
    return out


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """SGD with momentum (the paper, §4.2) or Adam (``optimizer: adam``: the reduced-scale notebooks, where a
    randomly initialised student gets a few dozen steps), both over :func:`param_groups`."""
    groups = param_groups(model, cfg)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr)
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)


# ----------------------------------------------------------------------------------------------------------
# 4. validation


@torch.no_grad()
def validate(model: nn.Module, val_ds: Dataset, cfg: TrainConfig, device: torch.device) -> dict[str, float]:
    """KL to the GT (the loss) and CC / NSS / SIM / KLD (``tinyhd.metrics``) on the val clips, at the
    training resolution (cheap; ``tinyhd evaluate`` is the benchmark protocol)."""
    from tinyhd import metrics

    was_training = model.training
    model.eval()
    loader = DataLoader(val_ds, batch_size=max(1, min(cfg.batch_size, 8)), collate_fn=collate,
                        num_workers=cfg.num_workers)
    losses, scores = [], {"cc": [], "nss": [], "sim": [], "kld": []}
    for batch in loader:
        with torch.autocast(device.type, enabled=cfg.amp and device.type == "cuda"):
            out = model(batch["clip"].to(device))
        sal = out.saliency.float()                                      # B×T'×H×W
        gt = batch["saliency"].to(device).reshape(sal.shape)
        losses.append(float(kl_maps(sal, gt, mask=batch["has_sal"])))
        fix = batch["fixation"].reshape(sal.shape).numpy()
        pred, dens = sal.cpu().numpy(), gt.cpu().numpy()
        for b in range(sal.shape[0]):
            for t in range(sal.shape[1]):
                if dens[b, t].sum() <= 0:
                    continue
                scores["cc"].append(metrics.cc(pred[b, t], dens[b, t]))
                scores["sim"].append(metrics.sim(pred[b, t], dens[b, t]))
                scores["kld"].append(metrics.kld(pred[b, t], dens[b, t]))
                if fix[b, t].sum() > 0:
                    scores["nss"].append(metrics.nss(pred[b, t], fix[b, t]))
    model.train(was_training)
    result = {"val_loss": float(np.mean(losses)) if losses else float("nan")}
    result.update({k: float(np.nanmean(v)) if v else float("nan") for k, v in scores.items()})
    return result


class _CentreBias(nn.Module):
    """The centre-bias baseline as a "model" for :func:`validate`: the same Gaussian for every frame."""

    def __init__(self, size: Sequence[int], frames: int) -> None:
        super().__init__()
        from tinyhd.synth import centre_bias

        self.register_buffer("prior", torch.from_numpy(centre_bias(tuple(size))).float())
        self.frames = frames

    def forward(self, clip: torch.Tensor) -> Any:
        from types import SimpleNamespace

        return SimpleNamespace(saliency=self.prior.expand(clip.shape[0], self.frames, *self.prior.shape))


def centre_bias_validation(cfg: TrainConfig) -> dict[str, float]:
    """:func:`validate` of the centre-bias baseline (``tinyhd.synth.centre_bias``) on ``cfg``'s val clips — the
    score a trained model has to beat to have learned anything beyond "look at the middle"."""
    cfg = dataclasses.replace(cfg).validate()
    _, _, val_ds = build_datasets(cfg)
    frames = 1 if cfg.output == "single" else cfg.clip_len
    return validate(_CentreBias(cfg.size, frames), val_ds, cfg, torch.device("cpu"))


# ----------------------------------------------------------------------------------------------------------
# 5. the loop


@dataclass
class TrainResult:
    model: nn.Module
    history: list[dict[str, Any]]
    out_dir: Path
    last: Path
    best: Path | None


def _rng_state() -> dict[str, Any]:
    """RNG states as tensors and plain containers, so checkpoints load with ``weights_only=True``."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos),
                                                        int(has_gauss), float(gauss)],
             "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _read_log(path: Path, max_step: int | None = None) -> list[dict[str, Any]]:
    """The JSON lines of ``path`` (a half-written last line, left by a kill, is skipped)."""
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if max_step is None or row.get("step", 0) <= max_step:
            rows.append(row)
    return rows


def _resolve_device(name: str, local_rank: int) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise UserError("device: 'cuda' asked for but no CUDA device is available")
        return torch.device("cuda", local_rank)
    return torch.device(name)


def train(cfg: TrainConfig, out_dir: str | os.PathLike, teacher: Callable | None = None) -> TrainResult:
    """Train (or distil) TinyHD per ``cfg`` into ``out_dir``; resume from ``out_dir/last.pt`` if present.

    ``teacher`` overrides ``cfg.teacher`` with any callable of the teacher contract. Returns the trained
    model (final weights), the history (the JSON-lines log) and the checkpoint paths.
    """
    cfg = dataclasses.replace(cfg).validate()
    out_dir = Path(out_dir)
    last_path, best_path, log_path = out_dir / "last.pt", out_dir / "best.pt", out_dir / "log.jsonl"

    # -- processes: plain, or one of WORLD_SIZE ranks under torchrun ------------------------------------
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if cfg.device != "cpu" and torch.cuda.is_available() else "gloo")
    rank = dist.get_rank() if dist.is_initialized() else 0
    world = dist.get_world_size() if dist.is_initialized() else 1
    is_main = rank == 0
    device = _resolve_device(cfg.device, int(os.environ.get("LOCAL_RANK", "0")))
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    use_amp = cfg.amp and device.type == "cuda"
    if is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        for stale in out_dir.glob(".*.pt.*.tmp"):  # a temp file left by a kill mid-write (never a checkpoint)
            stale.unlink(missing_ok=True)

    train_ds, aux_ds, val_ds = build_datasets(cfg)

    # -- resume state, model, optimizer ------------------------------------------------------------------
    ckpt = None
    if last_path.is_file():
        try:
            ckpt = torch.load(last_path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise CheckpointError(f"{last_path}: cannot resume from it ({exc}); move it away to start over") from exc
        saved = ckpt.get("train_config", {})
        changed = sorted(k for k, v in asdict(cfg).items()
                         if k not in RESUMABLE_CHANGES and k in saved and _norm(saved[k]) != _norm(v))
        if changed:
            raise UserError(f"{last_path}: was trained with a different config ({', '.join(changed)} differ); "
                            f"use a new --out folder or the same config")
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    if ckpt is not None:
        model = load_model(last_path)  # weights (strict); the training state is restored below
    else:
        model = build_model(cfg)
    model.to(device).train()
    teacher = teacher if teacher is not None else build_teacher(cfg, device)
    if cfg.distill_on != "none" and teacher is None:
        raise UserError("distill_on is not 'none' but there is no teacher")
    optimizer = make_optimizer(model, cfg)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(cfg.milestones), gamma=cfg.gamma)
    scaler = torch.amp.GradScaler(device.type, enabled=use_amp)
    state = {"epoch": 0, "step_in_epoch": 0, "step": 0, "best": math.inf, "finished": False}
    if ckpt is not None:
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        scaler.load_state_dict(ckpt["scaler"])
        state.update(ckpt["state"])
        _set_rng_state(ckpt["rng"])
    if is_main:  # drop log lines written after the checkpoint we resume from (they will be redone)
        rows = _read_log(log_path, max_step=state["step"])
        with atomic_open(log_path, "w") as fh:
            fh.writelines(json.dumps(r) + "\n" for r in rows)
    ddp_model: nn.Module = model
    if world > 1:
        ddp_model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    def save(path: Path) -> None:
        if not is_main:
            return
        atomic_torch_save({
            "format": "tinyhd", "config": dict(model.config), "model": model.state_dict(),
            "train_config": asdict(cfg), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(), "rng": _rng_state(), "state": dict(state),
        }, path)

    def log(row: dict[str, Any]) -> None:
        if is_main:
            with open(log_path, "a") as fh:
                fh.write(json.dumps(row) + "\n")
                fh.flush()

    # -- data (first: a wrong path fails before anything is built or downloaded) -----------------------------
    n_target = len(train_ds)  # type: ignore[arg-type]
    n_aux = len(aux_ds) if aux_ds is not None else 0  # type: ignore[arg-type]
    aux_per_epoch = round(cfg.aux_per_target * n_target) if n_aux else 0
    n_batches = len(shard_batches(n_target + aux_per_epoch, cfg.batch_size, rank, world))
    total = cfg.epochs * n_batches if cfg.max_steps is None else min(cfg.max_steps, cfg.epochs * n_batches)

    from tqdm import tqdm

    bar = tqdm(total=total, initial=min(state["step"], total), disable=not (is_main and cfg.progress),
               desc=f"train {out_dir.name}", unit="step")
    while True:
        epoch = state["epoch"]
        if epoch >= cfg.epochs or (cfg.max_steps and state["step"] >= cfg.max_steps):
            break  # done (also when resuming a finished run: nothing to redo)
        # the epoch's clips: a pure function of (seed, epoch); skip the batches done before a resume
        _set_epoch(train_ds, epoch)
        _set_epoch(aux_ds, epoch)
        plan = epoch_plan(n_target, n_aux, aux_per_epoch, cfg.seed, epoch)
        batches = shard_batches(len(plan), cfg.batch_size, rank, world)[state["step_in_epoch"]:]
        loader = DataLoader(_EpochClips(train_ds, aux_ds, plan), batch_sampler=batches, collate_fn=collate,
                            num_workers=cfg.num_workers,  # own generator: the global RNG is left untouched
                            generator=torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch))
        stopped = False
        for batch in loader:
            clip = batch["clip"].to(device, non_blocking=True)          # B×3×T×H×W
            with torch.autocast(device.type, enabled=use_amp):
                out = ddp_model(clip)                                   # saliency B×T'×H×W, d1 B×4×H×W
            teacher_maps, mask = None, None
            if teacher is not None and cfg.distill_on != "none":
                with torch.no_grad():
                    teacher_maps = teacher(batch)                       # final B×T'×H×W, conspicuity B×4×T'×H×W
                is_target = torch.tensor([s == "target" for s in batch["source"]])
                mask = is_target if cfg.distill_on == "target" else torch.ones_like(is_target)
            terms = distillation_loss(out, batch, teacher_maps, mask)   # Eq. 2 / Eq. 3
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(terms["total"]).backward()
            scaler.step(optimizer)
            scaler.update()
            state["step"] += 1
            state["step_in_epoch"] += 1
            bar.update(1)
            if state["step"] % cfg.log_every == 0:
                row = {"kind": "train", "epoch": epoch, "step": state["step"],
                       "lr": optimizer.param_groups[-1]["lr"], **{k: float(v.detach()) for k, v in terms.items()}}
                log(row)
                bar.set_postfix(loss=f"{row['total']:.3f}")
            if cfg.max_steps and state["step"] >= cfg.max_steps:
                stopped = True
                break
            if state["step"] % cfg.checkpoint_every == 0:
                _sync_buffers(model, world)
                save(last_path)
        if not stopped:  # end of epoch: next epoch, lr schedule
            state["epoch"] += 1
            state["step_in_epoch"] = 0
            scheduler.step()
        # validation (every epoch, and where max_steps stops the run)
        _sync_buffers(model, world)
        metrics_row = validate(model, val_ds, cfg, device) if is_main else {}
        done = stopped or state["epoch"] >= cfg.epochs
        log({"kind": "val", "epoch": epoch, "step": state["step"], **metrics_row})
        state["finished"] = done
        if is_main and metrics_row.get("val_loss", math.inf) < state["best"]:
            state["best"] = metrics_row["val_loss"]
            save(best_path)
        if cfg.reload_best_at_milestones and not stopped and state["epoch"] in cfg.milestones:
            if world > 1:
                dist.barrier()  # rank 0 has finished writing best.pt
            if best_path.is_file():  # the authors' code restarts each lr step from the best weights so far
                model.load_state_dict(torch.load(best_path, map_location="cpu", weights_only=True)["model"])
        save(last_path)
        if world > 1:
            dist.barrier()
    bar.close()
    return TrainResult(model=model, history=_read_log(log_path), out_dir=out_dir, last=last_path,
                       best=best_path if best_path.is_file() else None)


def _sync_buffers(model: nn.Module, world: int) -> None:
    """DDP keeps parameters equal, but each rank's last forward updates its own BN running statistics:
    give every rank rank 0's buffers before a checkpoint or validation, so all ranks hold the same model."""
    if world > 1:
        for buf in model.buffers():
            dist.broadcast(buf.data, src=0)


@dataclass(frozen=True)
class NotebookScale:
    """The training knobs a notebook's ``parameters`` cell resolves (see :func:`notebook_scale`)."""

    full: bool
    size: tuple[int, int]
    batch_size: int
    max_steps: int | None
    optimizer: str
    milestones: tuple[int, ...]


def notebook_scale(data_root: str | None, *, size: Sequence[int] | None = None, batch_size: int | None = None,
                   max_steps: int | str | None = "auto", optimizer: str = "auto", epochs: int = 200,
                   reduced_steps: int = 40) -> NotebookScale:
    """Resolve the notebooks' ``None``/``"auto"`` parameters for reduced or full scale.

    Full scale (``data_root`` given): 192×256, batch 12, no step limit, the paper's SGD (§4.2). Reduced scale
    (synthetic set): 32×64, batch 2, ``reduced_steps`` Adam steps (SGD from a random init does not move in
    40 steps). Milestones are the paper's 100/150/180 of 200 epochs scaled to ``epochs`` (none below 20).
    """
    full = data_root is not None
    return NotebookScale(
        full=full,
        size=tuple(size) if size is not None else ((192, 256) if full else (32, 64)),
        batch_size=batch_size if batch_size is not None else (12 if full else 2),
        max_steps=(None if full else reduced_steps) if max_steps == "auto" else max_steps,
        optimizer=("sgd" if full else "adam") if optimizer == "auto" else optimizer,
        milestones=tuple(round(m * epochs / 200) for m in (100, 150, 180)) if epochs >= 20 else (),
    )


def config_key(cfg: TrainConfig) -> str:
    """A short hash of everything in ``cfg`` that changes what a run computes (not ``RESUMABLE_CHANGES``).
    Notebooks name run folders with it, so two notebooks asking for the same run share it."""
    import hashlib

    values = {k: _norm(v) for k, v in sorted(asdict(cfg).items()) if k not in RESUMABLE_CHANGES}
    return hashlib.sha1(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()[:10]


def last_validation(result: TrainResult) -> dict[str, float]:
    """The final validation row of a run (val_loss, cc, nss, sim, kld)."""
    rows = [r for r in result.history if r.get("kind") == "val"]
    if not rows:
        raise UserError(f"{result.out_dir}: the run has no validation row yet")
    return {k: v for k, v in rows[-1].items() if k not in ("kind", "epoch")}


def _norm(v: Any) -> Any:
    return list(v) if isinstance(v, (tuple, list)) else v


# ----------------------------------------------------------------------------------------------------------
# 6. chains of stages (teacher assistant, Table 5)


def _resolve_refs(values: dict[str, Any], out_dir: Path) -> dict[str, Any]:
    """``@name`` in init_from / teacher means the ``best.pt`` (else ``last.pt``) of stage ``name``."""
    def ref(text: str) -> str:
        if text.startswith("@"):
            stage = out_dir / text[1:]
            return str(stage / "best.pt" if (stage / "best.pt").is_file() else stage / "last.pt")
        return text

    values = dict(values)
    if isinstance(values.get("init_from"), str):
        values["init_from"] = ref(values["init_from"])
    if isinstance(values.get("teacher"), str) and ":" in values["teacher"]:
        kind, _, arg = values["teacher"].partition(":")
        values["teacher"] = f"{kind}:{ref(arg)}"
    return values


def train_chain(base: Mapping[str, Any], stages: Sequence[Mapping[str, Any]], out_dir: str | os.PathLike,
                source: str = "config", overrides: Mapping[str, Any] | None = None) -> dict[str, TrainResult]:
    """Train the stages in order, each in ``out_dir/<name>``: a stage's keys override the shared ``base``.
    Finished stages are skipped (their runs resume as finished), so the chain resumes too."""
    out_dir = Path(out_dir)
    results: dict[str, TrainResult] = {}
    names = [s.get("name") for s in stages]
    if any(not n for n in names) or len(set(names)) != len(names):
        raise UserError(f"{source}: every stage needs a unique 'name' (got {names})")
    for stage in stages:
        values = {**base, **{k: v for k, v in stage.items() if k != "name"}, **(overrides or {})}
        cfg = config_from_dict(_resolve_refs(values, out_dir), source=f"{source} (stage {stage['name']})")
        results[stage["name"]] = train(cfg, out_dir / stage["name"])
    return results


def run_config_file(path: str | os.PathLike, out_dir: str | os.PathLike,
                    overrides: Mapping[str, Any] | None = None) -> dict[str, TrainResult] | TrainResult:
    """What ``tinyhd train CONFIG --out DIR`` does: one run, or a chain if the file has ``stages:``."""
    values = read_yaml(path)
    if "stages" in values:
        stages = values.pop("stages")
        if not isinstance(stages, list):
            raise UserError(f"{path}: 'stages' must be a list of mappings")
        return train_chain(values, stages, out_dir, source=str(path), overrides=overrides)
    return train(config_from_dict({**values, **(overrides or {})}, source=str(path)), out_dir)


# ----------------------------------------------------------------------------------------------------------
# 7. command line


def _parse_override(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise UserError(f"--set {text!r}: expected KEY=VALUE")
    key, value = text.split("=", 1)
    return key.strip(), yaml.safe_load(value)


def cli_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="tinyhd train", description=(
        "Train or distil TinyHD from a YAML config. Running the same command again resumes from DIR/last.pt. "
        "Multi-GPU: torchrun --nproc_per_node N -m tinyhd train CONFIG --out DIR"))
    parser.add_argument("config", help="YAML config (keys = TrainConfig fields; 'stages:' for a chain), "
                                       "or the name of a packaged one, e.g. smoke")
    parser.add_argument("--out", required=True, help="run folder (checkpoints, log.jsonl)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key (YAML value), e.g. --set epochs=2")
    args = parser.parse_args(argv)
    path = Path(args.config)
    if not path.is_file():
        if path.parent != Path(".") or not (Path(__file__).parent / "configs" / f"{path.stem}.yaml").is_file():
            raise UserError(f"{args.config}: config file not found (nor a packaged config of that name: "
                            f"{', '.join(sorted(p.stem for p in (Path(__file__).parent / 'configs').glob('*.yaml')))})")
        path = packaged_config(path.stem)
    overrides = dict(_parse_override(s) for s in args.set)
    result = run_config_file(path, args.out, overrides)
    results = result if isinstance(result, dict) else {"": result}
    for name, res in results.items():
        last_val = next((r for r in reversed(res.history) if r.get("kind") == "val"), {})
        print(f"{name or 'run'}: {res.last} (val: " +
              ", ".join(f"{k}={v:.4f}" for k, v in last_val.items() if isinstance(v, float)) + ")")
    if dist.is_initialized():
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(cli_main(sys.argv[1:]))
