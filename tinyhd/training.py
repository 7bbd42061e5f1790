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
   ``checkpoint_every`` steps and at every epoch end, ``best.pt`` (no optimizer state) on the best validation
   KL. Running it again on the same folder resumes exactly where the last checkpoint left off.
6. :func:`train_chain` — several stages in one config (the ×1 → ×½ → ×¼ teacher-assistant chain, Table 5).
7. DDP: under ``torchrun`` each rank takes its share of every global batch; rank 0 logs and checkpoints.

The same loop trains the teacher, HD2S (``model: hd2s | hd2s_da | hd2s_dsl``; HD2S paper §3–4, HD2S sheet
§7–8, §10–11): the kind's defaults are the HD2S recipe (Adam lr 1e-3, weight decay 2e-7, no schedule,
mini-batch 8 at 128×192; ``KIND_DEFAULTS``), ``accumulation`` sums the losses of several mini-batches per
optimiser step (25 in the recipe), the loss is the multi-level KL on the last frame's GT (:func:`step_loss`),
clips come from endless streams of shuffled passes over the videos (:func:`hd2s_epoch`; DA pairs every source
mini-batch with a target-domain one, DSL cycles the sources), ``val_every`` validates every N steps, and the
checkpoints are in :func:`tinyhd.teacher.save_hd2s`'s layout so that ``load_hd2s`` reads them. The kind-specific
parts are small helpers (:func:`build_data`, :func:`build_model`, :func:`step_loss`, :func:`make_optimizer`,
:func:`validate`, :func:`_checkpoint_payload`); the loop itself is shared.

Where the paper and the authors' code disagree we follow the paper and say so: batch 12 (paper) instead of
the yaml's 2. The authors' code also reloads the best checkpoint at each lr milestone
(``reload_best_at_milestones``, off by default: the paper does not mention it).
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import numbers
import os
import random
import sys
import warnings
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
MODELS = ("tinyhd", "hd2s", "hd2s_da", "hd2s_dsl")
HD2S_MODELS = MODELS[1:]
DA_TARGET_LAYOUTS = ("kinetics", "dhf1k", "ucf", "hollywood2")
# the defaults that depend on the model kind (a field left at None takes its kind's value, see TrainConfig)
KIND_DEFAULTS: dict[str, dict[str, Any]] = {
    # TinyHD, paper §4.2 / sheet (e)
    "tinyhd": dict(optimizer="sgd", lr=0.01, weight_decay=5e-4, milestones=(100, 150, 180), batch_size=12,
                   size=(192, 256), distill_on="all"),
    # HD2S, HD2S paper §4 / HD2S sheet §8: Adam 1e-3, weight decay 2e-7, no lr schedule, mini-batch 8, 128×192
    "hd2s": dict(optimizer="adam", lr=1e-3, weight_decay=2e-7, milestones=(), batch_size=8, size=(128, 192),
                 distill_on="none"),
}
# fields that may change between a run and its resumption (they do not change what is computed per step)
_KEY_EXCLUDED = {"epochs", "max_steps", "checkpoint_every", "num_workers", "log_every", "progress",
                 "device", "num_threads", "val_videos", "cpu_fast_path"}  # cpu_fast_path: float rounding only
RESUMABLE_CHANGES = _KEY_EXCLUDED | {"val_every", "val_clips_per_video"}  # validation only, not the weights
# fields added with HD2S training: left out of config_key() at these defaults, so older run folders keep their names
_ADDED_DEFAULTS: dict[str, Any] = {"model": "tinyhd", "accumulation": 1, "head_lr_mult": 1.0, "val_every": None,
                                   "da_target_root": None, "da_target_dataset": "kinetics", "da_multilevel": False,
                                   "dsl_sources": None, "teacher_domain": None}
# fields that only one model kind reads (a value other than the default is refused for the others, not ignored)
_KIND_ONLY: dict[str, tuple[str, ...]] = {"head_lr_mult": HD2S_MODELS, "da_target_root": ("hd2s_da",),
                                          "da_target_dataset": ("hd2s_da",), "da_multilevel": ("hd2s_da",),
                                          "dsl_sources": ("hd2s_dsl",)}


# ----------------------------------------------------------------------------------------------------------
# 1. configuration


@dataclass
class TrainConfig:
    """Every training knob. Defaults are the paper's recipe (§4.2) for TinyHD-S on DHF1K with Kinetics-400.

    ``model`` picks what is trained: ``tinyhd`` (the default) or the teacher HD2S — ``hd2s`` (HD2S paper §3,
    multi-level KL of Eq. 1), ``hd2s_da`` (+ domain adaptation, §3.5) or ``hd2s_dsl`` (domain-specific learning
    on several sources, §3.6). The fields ``optimizer``, ``lr``, ``weight_decay``, ``milestones``,
    ``batch_size``, ``size`` and ``distill_on`` default to ``None`` and are filled *per model kind* when the
    config is built (:data:`KIND_DEFAULTS`): TinyHD's SGD recipe for ``tinyhd``, the HD2S recipe (Adam lr 1e-3,
    weight decay 2e-7, no schedule, mini-batch 8, 128×192, no distillation; HD2S sheet §8) for the others.
    Set ``model`` when constructing: :func:`dataclasses.replace` of a built config keeps the filled values.
    """

    # data
    data_root: str | None = None          # DHF1K-layout root; None → tinyhd.synth.ensure_synthetic("dhf1k")
    aux_root: str | None = None           # Kinetics-400-layout root; None → ensure_synthetic("kinetics")
    dataset: str = "dhf1k"                # layout of data_root: dhf1k, ucf, hollywood2
    size: tuple[int, int] | None = None   # training resolution H×W (divisible by 32); None → 192×256 (HD2S 128×192)
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
    distill_on: str | None = None         # "none" (GT only) | "target" (+KD on TD) | "all" (+KD on AD); None → "all"
                                          # (HD2S kinds: "none", the only choice)
    teacher_domain: str | None = None     # teacher hd2s:CKPT of an HD2S_DSL: the domain whose maps are distilled
                                          # (required for such a checkpoint, refused for any other teacher)
    # optimisation (paper §4.2; sheet (e))
    optimizer: str | None = None          # "sgd" (the paper) | "adam" (reduced-scale runs; HD2S); None → per kind
    epochs: int = 200
    batch_size: int | None = None         # None → 12 (paper; the authors' yaml says 2); HD2S kinds: 8 (sheet §8)
    lr: float | None = None               # None → the paper's SGD lr 0.01 (HD2S kinds: Adam 1e-3); adam: use ~1e-3
    momentum: float = 0.9
    weight_decay: float | None = None     # None → 5e-4 (HD2S kinds: 2e-7, on every parameter)
    encoder_lr_mult: float = 0.5
    bias_lr_mult: float = 2.0
    milestones: tuple[int, ...] | None = None  # epochs of lr × gamma; None → (100, 150, 180) (HD2S kinds: none)
    gamma: float = 0.1
    reload_best_at_milestones: bool = False
    amp: bool = True                      # mixed precision (only on CUDA)
    max_steps: int | None = None          # stop after this many optimizer steps (in total)
    # model kind and the HD2S knobs (HD2S paper §3.5–3.6, §4; HD2S sheet §8, §10, §11)
    model: str = "tinyhd"                 # "tinyhd" | "hd2s" | "hd2s_da" | "hd2s_dsl"
    accumulation: int = 1                 # mini-batches per optimiser step, losses summed (HD2S recipe: 25)
    head_lr_mult: float = 1.0             # HD2S kinds: lr × this for the 1×1 output convs (last_conv*); 1 = authors
    val_every: int | None = None          # validate every N optimiser steps; None: at each epoch end; 0: never
    da_target_root: str | None = None     # hd2s_da: unlabelled target-domain root; None → synthetic Kinetics layout
    da_target_dataset: str = "kinetics"   # its layout: kinetics | dhf1k | ucf | hollywood2 (labels are not used)
    da_multilevel: bool = False           # hd2s_da saliency loss: False = final map only (authors' train_DA.py,
                                          # sheet §10); True = the paper's multi-level loss
    dsl_sources: tuple[dict, ...] | None = None  # hd2s_dsl: [{name, root, dataset, synthetic_seed}], cycled in order
                                          # (root null: a synthetic set of that dataset layout and seed)
    # bookkeeping
    seed: int = 0
    device: str = "auto"                  # "auto" → cuda if available, else cpu
    num_workers: int = 0
    num_threads: int | None = None        # torch.set_num_threads on CPU
    cpu_fast_path: bool = True            # CPU, TinyHD: train in channels-last memory with the C++ backward kernels
                                          # (tinyhd.cpu_train) and glibc keeping freed pages (fast.keep_freed_memory):
                                          # the same gradients up to float rounding, ~7× faster steps
    checkpoint_every: int = 200           # steps between mid-epoch checkpoints
    log_every: int = 1
    progress: bool = True

    def __post_init__(self) -> None:
        for name, value in KIND_DEFAULTS["tinyhd" if self.model == "tinyhd" else "hd2s"].items():
            if getattr(self, name) is None:
                setattr(self, name, value)

    def validate(self, source: str = "TrainConfig") -> "TrainConfig":
        """Raise :class:`UserError` naming ``source`` and the field for any invalid value; return self."""
        def bad(name: str, why: str) -> UserError:
            return UserError(f"{source}: {name}: {why} (got {getattr(self, name)!r})")

        if self.model not in MODELS:
            raise bad("model", f"must be one of {MODELS}")
        self.__post_init__()  # fields set to None after construction
        self._validate_types(bad)
        if self.model in HD2S_MODELS:  # first: its rules name the field to change (e.g. no teacher at all)
            self._validate_hd2s(bad)
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
        for name, kinds in _KIND_ONLY.items():
            if self.model not in kinds and getattr(self, name) != _ADDED_DEFAULTS[name]:
                raise bad(name, f"only used with model: {' | '.join(kinds)} (this config trains {self.model!r}); "
                                f"leave it out")
        if self.teacher_domain is not None and not str(self.teacher).startswith("hd2s:"):
            raise bad("teacher_domain", "only used with teacher: hd2s:CKPT (an HD2S_DSL checkpoint: the domain "
                                        "to distil from)")
        self._validate_device(bad)
        decoders = self.decoders
        if (not isinstance(decoders, (tuple, list)) or not decoders
                or any(not isinstance(d, str) or d not in ("d1", "d2", "d3") for d in decoders)):
            raise bad("decoders", "must be a non-empty list of d1, d2, d3, e.g. [d1, d2, d3] or [d1]")
        self.decoders = tuple(decoders)
        if self.model == "tinyhd" and self.output == "multi" and self.clip_len != 16:
            raise bad("clip_len", "TinyHD-M (output: multi) maps 16 frames to 16: it must be 16")
        if self.model == "tinyhd" and self.clip_len > 16:
            raise bad("clip_len", "TinyHD-S takes at most 16 frames (its temporal strides reduce 16 to 1)")
        if self.max_steps is not None and self.max_steps < 1:
            raise bad("max_steps", "must be at least 1 (or null)")
        if self.optimizer not in OPTIMIZERS:
            raise bad("optimizer", f"must be one of {OPTIMIZERS}")
        if self.lr <= 0:
            raise bad("lr", "must be positive")
        if not 0 <= self.momentum < 1:
            raise bad("momentum", "must be in [0, 1)")
        if self.gamma <= 0:
            raise bad("gamma", "must be positive (the lr is multiplied by it at each milestone)")
        for name in ("weight_decay", "encoder_lr_mult", "bias_lr_mult"):
            if getattr(self, name) < 0:
                raise bad(name, "must be >= 0")
        if self.aux_per_target < 0:
            raise bad("aux_per_target", "must be >= 0")
        if self.teacher and not (self.teacher == "reduced" or self.teacher.split(":", 1)[0] in ("cache", "hd2s", "student")):
            raise bad("teacher", "must be cache:PATH, hd2s:CKPT, student:CKPT or reduced")
        if int(self.accumulation) < 1:
            raise bad("accumulation", "must be at least 1")
        if self.head_lr_mult <= 0:
            raise bad("head_lr_mult", "must be positive")
        if self.val_every is not None and int(self.val_every) < 0:
            raise bad("val_every", "must be >= 0 (0: never validate) or null (every epoch)")
        return self

    def _validate_types(self, bad: Callable[[str, str], UserError]) -> None:
        """Scalar fields hold their annotated type: YAML reads ``maybe`` or ``yes please`` as a string, which
        would otherwise pass for true. A float field also takes a number written as a string (PyYAML reads
        ``1e-3`` as one) and stores it as a float."""
        words = {"bool": "true or false", "int": "an integer", "float": "a number", "str": "a string"}
        not_bool = (bool, np.bool_)  # numpy scalars (a notebook's computed values) pass as their Python kinds
        holds = {"bool": lambda v: isinstance(v, not_bool),
                 "int": lambda v: isinstance(v, numbers.Integral) and not isinstance(v, not_bool),
                 "float": lambda v: isinstance(v, numbers.Real) and not isinstance(v, not_bool),
                 "str": lambda v: isinstance(v, (str, os.PathLike))}
        for f in fields(self):
            parts = [p.strip() for p in str(f.type).split("|")]
            kinds = [p for p in parts if p != "None"]
            if len(kinds) != 1 or kinds[0] not in words:
                continue
            kind, value = kinds[0], getattr(self, f.name)
            if value is None and "None" in parts:
                continue
            if kind == "float" and isinstance(value, str):
                try:
                    value = float(value)
                except ValueError:
                    pass
                else:
                    setattr(self, f.name, value)
            if not holds[kind](value):
                raise bad(f.name, f"must be {words[kind]}{' or null' if 'None' in parts else ''}")

    def _validate_device(self, bad: Callable[[str, str], UserError]) -> None:
        """``device`` names a device of this machine ("auto", "cpu", "cuda", "cuda:N"), so a typo or a missing GPU
        is named here rather than by a traceback at the first tensor moved there."""
        if self.device == "auto":
            return
        try:
            device = torch.device(self.device)
        except (RuntimeError, TypeError, ValueError):
            raise bad("device", "not a device: use auto, cpu, cuda or cuda:N") from None
        if device.type == "cuda":
            if not torch.cuda.is_available():
                raise bad("device", "no CUDA device is available on this machine (use cpu or auto)")
            if device.index is not None and device.index >= torch.cuda.device_count():
                raise bad("device", f"this machine has {torch.cuda.device_count()} CUDA device(s)")

    def _validate_hd2s(self, bad: Callable[[str, str], UserError]) -> None:
        """The extra rules of the HD2S kinds (HD2S sheet §1 "Constraints", §10, §11)."""
        if self.teacher:
            raise bad("teacher", f"model {self.model!r} is trained on ground truth only: leave teacher unset "
                                 f"(null)")
        if self.distill_on != "none":
            raise bad("distill_on", f"model {self.model!r} is trained on ground truth only: use distill_on: none")
        if self.output != "single":
            raise bad("output", f"model {self.model!r} predicts the clip's last frame: use output: single")
        if self.clip_len not in (8, 12, 16):
            raise bad("clip_len", "HD2S needs 8, 12 or 16 frames (16 by design)")
        if self.optimizer != "adam":
            raise bad("optimizer", f"model {self.model!r} is trained with Adam (HD2S sheet §8)")
        if self.reduce_factor != 1:
            raise bad("reduce_factor", "only TinyHD students are channel-reduced")
        if self.reload_best_at_milestones:
            raise bad("reload_best_at_milestones", "is a TinyHD option (the HD2S recipe has no lr milestones)")
        if self.model == "hd2s_da":
            if self.batch_size < 2:
                raise bad("batch_size", "hd2s_da needs at least 2 clips per mini-batch (BatchNorm1d in the "
                                        "domain classifiers)")
            if self.da_target_dataset not in DA_TARGET_LAYOUTS:
                raise bad("da_target_dataset", f"must be one of {DA_TARGET_LAYOUTS}")
        if self.model == "hd2s_dsl":
            sources = self.dsl_sources
            if not sources or not isinstance(sources, (list, tuple)):
                raise bad("dsl_sources", "hd2s_dsl needs a list of sources {name, root, dataset}")
            names = []
            for i, src in enumerate(sources):
                if not isinstance(src, Mapping) or not isinstance(src.get("name"), str) or not src["name"].isalnum():
                    raise bad("dsl_sources", f"entry {i} needs an alphanumeric 'name' (e.g. DHF1K)")
                extra = set(src) - {"name", "root", "dataset", "synthetic_seed"}
                if extra:
                    raise bad("dsl_sources", f"entry {i}: unknown key(s) {sorted(extra)} (known: name, root, "
                                             f"dataset, synthetic_seed)")
                if src.get("dataset", "dhf1k") not in ("dhf1k", "ucf", "hollywood2"):
                    raise bad("dsl_sources", f"entry {i}: dataset must be dhf1k, ucf or hollywood2")
                names.append(src["name"].lower())
            if len(set(names)) != len(names):
                raise bad("dsl_sources", "source names must differ (case-insensitively)")


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
    try:
        cfg.size = tuple(int(s) for s in cfg.size)  # type: ignore[assignment, union-attr]
        cfg.milestones = tuple(int(m) for m in cfg.milestones)  # type: ignore[assignment, union-attr]
    except (TypeError, ValueError) as exc:
        raise UserError(f"{source}: size / milestones must be lists of integers ({exc})") from None
    if cfg.dsl_sources is not None:
        cfg.dsl_sources = tuple(dict(s) if isinstance(s, Mapping) else s for s in cfg.dsl_sources)  # type: ignore
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
    # validation clips as the authors' loader makes them (sheet (e)): resized to 200×355 (scaled with size), then
    # centre-cropped to size; it is what picks best.pt
    val_ds: Dataset = tdata.SaliencyClipDataset(root, split="val", dataset=cfg.dataset, sampling="uniform",
                                                flip=False, max_videos=cfg.val_videos,
                                                clips_per_video=cfg.val_clips_per_video,
                                                val_resize=tdata.val_resize_for(common["size"]), **common)
    aux_ds = None
    if cfg.distill_on == "all" and cfg.aux_per_target > 0:
        aux_root = Path(cfg.aux_root) if cfg.aux_root else ensure_synthetic("kinetics", progress=False)
        if not aux_root.is_dir():
            raise UserError(f"aux_root {aux_root}: no such folder")
        aux_ds = tdata.UnlabeledClipDataset(aux_root, flip=cfg.flip, max_videos=cfg.max_aux_videos, **common)
    return train_ds, aux_ds, val_ds


def stream_item(k: int, n: int, seed: int) -> tuple[int, int]:
    """The k-th item of an endless stream of shuffled passes over ``n`` items: ``(pass, index)``. A pure function
    of its arguments (the HD2S kinds draw their clips from such streams, so a resumed run sees the same clips)."""
    epoch = k // n
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
    return epoch, int(perm[k % n])


class _StreamClips(Dataset):
    """The HD2S kinds' epoch as a dataset: position → ``(dataset id, index, data pass)`` → the clip item, drawn
    after ``set_epoch(pass)`` so that its random clip and flip are a pure function of (seed, pass, index).
    ``source`` is set to the dataset's name (DA: "source"/"target"; DSL: the source's name)."""

    def __init__(self, datasets: Sequence[tuple[str, Dataset]], plan: list[tuple[int, int, int]]) -> None:
        self.datasets, self.plan = list(datasets), plan

    def __len__(self) -> int:
        return len(self.plan)

    def __getitem__(self, pos: int) -> dict[str, Any]:
        ds_id, index, data_pass = self.plan[pos]
        name, ds = self.datasets[ds_id]
        _set_epoch(ds, data_pass)
        item = dict(ds[index])
        item["source"] = name
        return item


@dataclass
class _Data:
    """What the loop trains and validates on. ``train`` holds the labelled sets in order (TinyHD: the target
    set; HD2S/HD2S_DA: the source set; HD2S_DSL: one per source, in ``dsl_sources`` order); ``aux`` the
    auxiliary (TinyHD) or target-domain (HD2S_DA) set; ``val`` one (name, set) per validated domain."""

    train: list[tuple[str, Dataset]]
    aux: Dataset | None
    val: list[tuple[str | None, Dataset]]


def build_data(cfg: TrainConfig) -> _Data:
    """The datasets of any model kind (TinyHD: :func:`build_datasets`)."""
    if cfg.model == "tinyhd":
        train_ds, aux_ds, val_ds = build_datasets(cfg)
        return _Data([("target", train_ds)], aux_ds, [(None, val_ds)])
    from tinyhd import data as tdata
    from tinyhd.synth import ensure_synthetic

    common = dict(clip_len=cfg.clip_len, size=tuple(cfg.size), output="single", seed=cfg.seed)

    def labelled(root: str | None, dataset: str, field: str, synthetic_seed: int = 0) -> tuple[Dataset, Dataset]:
        """Train and val sets of a labelled source. Layouts without a val split (UCF-Sports, Hollywood2) hold out
        their last 10 % of training videos (at least one) for validation — the authors' UCF split is 93 / 10 of
        the 103 training videos (HD2S sheet §6); which ten is not recorded, so ours is the last ten by name."""
        path = Path(root) if root else ensure_synthetic(dataset, seed=synthetic_seed, progress=False)
        if not path.is_dir():
            raise UserError(f"{field} {path}: no such folder")
        train_videos, val_split, val_videos = None, "val", None
        if "val" not in tdata.manifest_for_root(path, dataset).splits:
            ids = tdata.list_videos(path, "train", dataset)
            if len(ids) < 2:
                raise UserError(f"{field} {path}: needs at least 2 training videos (one is held out for validation)")
            k = max(1, round(len(ids) / 10))
            train_videos, val_split, val_videos = ids[:-k], "train", ids[-k:]
        train_ds = tdata.SaliencyClipDataset(path, split="train", dataset=dataset, sampling="random", flip=cfg.flip,
                                             videos=train_videos, max_videos=cfg.max_videos, **common)
        if not train_ds.annotated or len(train_ds) == 0:
            raise UserError(f"{field} {path}: the train split has no saliency maps to train HD2S on")
        val_ds = tdata.SaliencyClipDataset(path, split=val_split, dataset=dataset, sampling="uniform", flip=False,
                                           videos=val_videos, max_videos=cfg.val_videos,
                                           clips_per_video=cfg.val_clips_per_video, **common)
        return train_ds, val_ds

    if cfg.model == "hd2s_dsl":
        data = _Data([], None, [])
        for i, src in enumerate(cfg.dsl_sources or ()):
            train_ds, val_ds = labelled(src.get("root"), src.get("dataset", "dhf1k"), f"dsl_sources[{i}].root",
                                        int(src.get("synthetic_seed", i)))
            data.train.append((src["name"], train_ds))
            data.val.append((src["name"], val_ds))
        return data
    train_ds, val_ds = labelled(cfg.data_root, cfg.dataset, "data_root")
    aux = None
    if cfg.model == "hd2s_da":  # the unlabelled target domain (its labels, if any, are never read)
        root = (Path(cfg.da_target_root) if cfg.da_target_root
                else ensure_synthetic(cfg.da_target_dataset, progress=False))  # null: a synthetic set of that layout
        if not root.is_dir():
            raise UserError(f"da_target_root {root}: no such folder")
        if cfg.da_target_dataset == "kinetics":
            aux = tdata.UnlabeledClipDataset(root, flip=cfg.flip, max_videos=cfg.max_aux_videos, **common)
        else:
            aux = tdata.SaliencyClipDataset(root, split="train", dataset=cfg.da_target_dataset, sampling="random",
                                            flip=cfg.flip, max_videos=cfg.max_aux_videos, **common)
        if len(aux) == 0:  # type: ignore[arg-type]
            raise UserError(f"da_target_root {root}: no training videos")
    return _Data([("source" if cfg.model == "hd2s_da" else "train", train_ds)], aux, [(None, val_ds)])


def minibatches_per_epoch(cfg: TrainConfig, data: _Data) -> int:
    """Mini-batches in one epoch. TinyHD: the epoch plan in batches (:func:`shard_batches`). HD2S kinds: enough
    rounds for every training video of every source to be drawn once (DSL: one mini-batch per source per
    round), rounded up to a multiple of ``accumulation`` so that optimiser steps never straddle epochs."""
    if cfg.model == "tinyhd":
        raise ValueError("TinyHD's epoch comes from epoch_plan")
    B = cfg.batch_size
    rounds = max(math.ceil(len(ds) / B) for _, ds in data.train) * len(data.train)  # type: ignore[arg-type]
    return math.ceil(rounds / cfg.accumulation) * cfg.accumulation


def hd2s_epoch(cfg: TrainConfig, data: _Data, epoch: int, rank: int = 0, world: int = 1
               ) -> tuple[Dataset, list[list[int]]]:
    """The HD2S kinds' epoch: a dataset of clips and its mini-batches (lists of positions, this rank's share).

    Global mini-batch g (counted over the whole run) takes ``batch_size`` consecutive items of an endless
    stream of shuffled passes over a source's videos (:func:`stream_item`): ``hd2s`` the source's items
    g·B … g·B+B−1; ``hd2s_da`` the same plus as many items of the target-domain stream; ``hd2s_dsl`` cycles the
    sources in order (HD2S sheet §11: DHF1K → Hollywood → UCF-Sports) — source g mod S, its (g div S)-th batch.
    Each source has its own stream (seed + source number). A pure function of (cfg, epoch): resumable.
    """
    B, M = cfg.batch_size, minibatches_per_epoch(cfg, data)
    plan: list[tuple[int, int, int]] = []
    batches: list[list[int]] = []

    def take(ds_id: int, n: int, start: int) -> list[int]:
        first = len(plan)
        for k in range(start, start + B):
            data_pass, index = stream_item(k, n, cfg.seed + ds_id)
            plan.append((ds_id, index, data_pass))
        return list(range(first, len(plan)))[rank::world]

    datasets = list(data.train) + ([("target", data.aux)] if data.aux is not None else [])
    for g in range(epoch * M, (epoch + 1) * M):
        if cfg.model == "hd2s_dsl":
            s = g % len(data.train)
            batches.append(take(s, len(data.train[s][1]), (g // len(data.train)) * B))  # type: ignore[arg-type]
        else:
            positions = take(0, len(data.train[0][1]), g * B)  # type: ignore[arg-type]
            if cfg.model == "hd2s_da":
                positions += take(1, len(data.aux), g * B)  # type: ignore[arg-type]
            batches.append(positions)
    return _StreamClips(datasets, plan), batches


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
    """A fresh TinyHD from the config, or ``init_from`` (then ``reduce_channels`` by ``reduce_factor``).
    HD2S kinds: :func:`build_hd2s`."""
    from tinyhd.model import TinyHD

    if cfg.model in HD2S_MODELS:
        return build_hd2s(cfg)
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
    # with init_from the model's width and decoders come from the checkpoint (× reduce_factor): a reduction or a
    # decoders list set in the config that says otherwise would be ignored, and the run's config would misstate it
    built = model.config
    if cfg.reduction != 1 and cfg.reduction != built["reduction"]:
        start = built["reduction"] // max(cfg.reduce_factor, 1)
        raise UserError(f"reduction {cfg.reduction}: the model from init_from {cfg.init_from} is ×1/{start}"
                        f"{f', reduced by reduce_factor {cfg.reduce_factor}' if cfg.reduce_factor > 1 else ''} to "
                        f"×1/{built['reduction']}; with init_from the width comes from the checkpoint: set "
                        f"reduce_factor: {cfg.reduction // start if cfg.reduction % start == 0 else '?'} instead, "
                        f"or leave reduction out")
    default_decoders = tuple(TrainConfig.__dataclass_fields__["decoders"].default)
    if tuple(cfg.decoders) != default_decoders and tuple(cfg.decoders) != tuple(built["decoders"]):
        raise UserError(f"decoders {list(cfg.decoders)}: the model from init_from {cfg.init_from} has decoders "
                        f"{list(built['decoders'])}; with init_from they come from the checkpoint: leave decoders out")
    return model


def build_hd2s(cfg: TrainConfig) -> nn.Module:
    """A fresh HD2S / HD2S_DA / HD2S_DSL (``dsl_sources`` names its domains), or ``init_from`` (an HD2S
    checkpoint of the same variant, ours or the authors', :func:`tinyhd.teacher.load_hd2s`).

    HD2S_DA's domain classifiers are sized for ``cfg.size``: at 128×192 that is the authors' layout; at any
    other size it is not (``domain_input_size``, HD2S sheet §10: their input widths are fixed by the size)."""
    from tinyhd import teacher as tteacher

    torch.manual_seed(cfg.seed)
    if cfg.model == "hd2s":
        model: nn.Module = tteacher.HD2S(pretrained_backbone=cfg.pretrained_backbone)
    elif cfg.model == "hd2s_da":
        model = tteacher.HD2S_DA(pretrained_backbone=cfg.pretrained_backbone, domain_input_size=tuple(cfg.size))
    else:
        model = tteacher.HD2S_DSL(domains=[s["name"] for s in cfg.dsl_sources or ()],
                                  pretrained_backbone=cfg.pretrained_backbone)
    if cfg.init_from:
        start = tteacher.load_hd2s(cfg.init_from)
        if type(start) is not type(model) or start.state_dict().keys() != model.state_dict().keys():
            raise UserError(f"init_from {cfg.init_from}: a {type(start).__name__} checkpoint that does not match "
                            f"model {cfg.model!r} ({type(model).__name__}, size, domains)")
        model = start
    return model


def _hd2s_input(clip: torch.Tensor) -> torch.Tensor:
    """HD2S's input: the student clip (ImageNet-normalised) mapped to [−1, 1] (HD2S sheet §6)."""
    from tinyhd.preprocess import student_to_teacher_input

    return student_to_teacher_input(clip)


def predict_saliency(model: nn.Module, cfg: TrainConfig, clip: torch.Tensor, domain: str | None = None) -> torch.Tensor:
    """The final map B×T'×H×W of any model kind (HD2S kinds: T' = 1, the clip's last frame; DSL: ``domain``)."""
    if cfg.model == "tinyhd":
        return model(clip).saliency
    x = _hd2s_input(clip)
    out = model(x, domain=domain) if cfg.model == "hd2s_dsl" else model(x)
    return out.saliency


def _module_of(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def step_loss(cfg: TrainConfig, model: nn.Module, batch: Mapping[str, Any], device: torch.device, use_amp: bool,
              teacher: Callable | None, progress: float) -> dict[str, torch.Tensor]:
    """The loss terms of one mini-batch (``"total"`` is backpropagated), per model kind:

    * ``tinyhd`` — :func:`tinyhd.losses.distillation_loss` (TinyHD Eq. 2/3);
    * ``hd2s`` — the multi-level KL of the final and the four conspicuity maps against the clip's last-frame
      GT (HD2S Eq. 1, sheet §7), ``"final"`` = the final map's KL alone (logged);
    * ``hd2s_da`` — :func:`tinyhd.teacher.da_loss` on the batch's source and target clips with
      λ = grl_lambda(``progress``) (HD2S §3.5, sheet §10);
    * ``hd2s_dsl`` — the multi-level KL through the batch's source domain (every clip of a mini-batch comes from
      one source, HD2S sheet §11).
    """
    from tinyhd.losses import hd2s_kl, hd2s_multilevel_loss

    clip = batch["clip"].to(device, non_blocking=True)                  # B×3×T×H×W
    if cfg.model == "tinyhd":
        if _uses_cpu_fast_path(cfg, device):
            clip = clip.contiguous(memory_format=torch.channels_last_3d)
        with torch.autocast(device.type, enabled=use_amp):
            out = model(clip)                                           # saliency B×T'×H×W, d1 B×4×H×W
        teacher_maps, mask = None, None
        if teacher is not None and cfg.distill_on != "none":
            with torch.no_grad():
                teacher_maps = teacher(batch)                           # final B×T'×H×W, conspicuity B×4×T'×H×W
            is_target = torch.tensor([s == "target" for s in batch["source"]])
            mask = is_target if cfg.distill_on == "target" else torch.ones_like(is_target)
        return distillation_loss(out, batch, teacher_maps, mask)       # Eq. 2 / Eq. 3
    gt = batch["saliency"][:, -1].to(device)                            # B×H×W: the last frame's GT
    if cfg.model == "hd2s_da":
        from tinyhd.teacher import da_loss

        is_src = torch.tensor([s == "source" for s in batch["source"]])
        with torch.autocast(device.type, enabled=use_amp):
            return da_loss(model, _hd2s_input(clip[is_src]), gt[is_src], _hd2s_input(clip[~is_src]), progress,
                           multilevel=cfg.da_multilevel)
    sources = set(batch["source"])
    if len(sources) != 1:
        raise ValueError(f"an HD2S mini-batch mixes sources {sorted(sources)}")
    with torch.autocast(device.type, enabled=use_amp):
        x = _hd2s_input(clip)
        out = model(x, domain=sources.pop()) if cfg.model == "hd2s_dsl" else model(x)
    total = hd2s_multilevel_loss(out.saliency.float(), out.conspicuity.float(), gt)
    return {"total": total, "final": hd2s_kl(out.saliency.detach().float()[:, 0], gt)}


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


class _FramesOnDemand:
    """A video's frames decoded when indexed: ``video[indices]`` (an integer array) is len(indices)×H×W×3 uint8
    RGB, only the span asked for decoded (:func:`tinyhd.video.read_video`, as the datasets read clips)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __getitem__(self, indices: Any) -> np.ndarray:
        from tinyhd.video import read_video

        return read_video(self.path, indices=np.asarray(indices, dtype=np.int64).reshape(-1))


class _VideoFrames:
    """``video id -> its frames`` (N×H×W×3 uint8 RGB, decoded when indexed) for the run's training videos (target
    and auxiliary sets): what :class:`tinyhd.teacher.OnlineTeacher` needs to give a MIMO target frame the 15 real
    frames before it when they precede the clip (padding them with the clip's first frame gives other maps than the
    cache's). The datasets are those of ``data``, or of ``cfg`` built on the first call (MISO never calls). Only the
    windows' frames are decoded: a whole DHF1K video is ~500 MB of frames, per clip."""

    def __init__(self, cfg: TrainConfig, data: "_Data | None" = None) -> None:
        self.cfg, self.data = cfg, data
        self._sources: dict[str, set[Path]] | None = None

    def __call__(self, video: str) -> _FramesOnDemand:
        from tinyhd.errors import DataError

        if self._sources is None:
            data = self.data if self.data is not None else build_data(self.cfg)
            self._sources = {}
            for ds in [ds for _, ds in data.train] + ([data.aux] if data.aux is not None else []):
                for e in ds.entries:
                    self._sources.setdefault(e.id, set()).add(Path(e.source))
        found = self._sources.get(video, set())
        if not found:
            raise DataError(f"teacher {self.cfg.teacher}: video {video!r} is in none of this run's training sets")
        if len(found) > 1:  # the batch names videos by id only (as the caches do)
            raise DataError(f"teacher {self.cfg.teacher}: video id {video!r} names {len(found)} videos "
                            f"({', '.join(sorted(map(str, found)))}): the teacher cannot tell whose frames to use")
        return _FramesOnDemand(next(iter(found)))


class _DomainHD2S(nn.Module):
    """An HD2S_DSL seen through one of its domains: ``forward(x)`` is ``hd2s(x, domain=domain)`` (what
    :class:`tinyhd.teacher.OnlineTeacher` calls)."""

    def __init__(self, hd2s: nn.Module, domain: str) -> None:
        super().__init__()
        self.hd2s, self.domain = hd2s, domain

    def forward(self, x: torch.Tensor) -> Any:
        return self.hd2s(x, domain=self.domain)


def _teacher_hd2s(cfg: TrainConfig, path: str) -> nn.Module:
    """The HD2S of ``teacher: hd2s:PATH`` (ours or the authors' layout); an HD2S_DSL through ``teacher_domain``,
    which such a checkpoint needs (its domains give different maps) and any other refuses."""
    from tinyhd import teacher as tteacher

    model = tteacher.load_hd2s(path)
    if isinstance(model, tteacher.HD2S_DSL):
        names = {d.lower(): d for d in model.domains}
        if cfg.teacher_domain is None or cfg.teacher_domain.lower() not in names:
            why = "set teacher_domain" if cfg.teacher_domain is None else f"teacher_domain {cfg.teacher_domain!r}"
            raise UserError(f"teacher {cfg.teacher}: an HD2S_DSL checkpoint with domains {model.domains}: {why} "
                            f"to the one whose maps are distilled (one of {', '.join(model.domains)})")
        return _DomainHD2S(model, names[cfg.teacher_domain.lower()])
    if cfg.teacher_domain is not None:
        raise UserError(f"teacher {cfg.teacher}: a {type(model).__name__} checkpoint has no domains: leave "
                        f"teacher_domain ({cfg.teacher_domain!r}) unset")
    return model


def build_teacher(cfg: TrainConfig, device: torch.device | str = "cpu", data: "_Data | None" = None
                  ) -> Callable | None:
    """The teacher named by ``cfg.teacher`` (None when ``distill_on`` is "none"). ``data``: the run's datasets
    (:func:`build_data`), where ``hd2s:CKPT`` finds the frames before a MIMO clip (built from ``cfg`` when
    needed if not given)."""
    if cfg.distill_on == "none" or not cfg.teacher:
        return None
    kind, _, arg = cfg.teacher.partition(":")
    if kind == "cache":
        from tinyhd.teacher_cache import CachedTeacher

        return CachedTeacher(arg)
    if kind == "hd2s":
        from tinyhd import teacher as tteacher

        return tteacher.OnlineTeacher(_teacher_hd2s(cfg, arg), device=device, frames=_VideoFrames(cfg, data))
    if kind == "student":
        return StudentTeacher(load_model(arg), device)
    if kind == "reduced":
        from tinyhd.teacher_cache import ensure_reduced_teacher

        _refuse_reduced_teacher_on_real_data(cfg)
        # the reduced-scale HD2S and its cached maps (train split + the auxiliary videos this run uses)
        return ensure_reduced_teacher(cfg.data_root, cfg.aux_root, size=tuple(cfg.size), seed=cfg.seed,
                                      aux_videos=cfg.max_aux_videos, progress=cfg.progress)
    raise UserError(f"teacher {cfg.teacher!r}: unknown kind {kind!r}")


def _is_synthetic_root(root: str | os.PathLike) -> bool:
    """Whether ``root`` is a synthetic set (:mod:`tinyhd.synth` writes its own ``manifest.yaml`` named
    ``synthetic-*``); real datasets carry no manifest of their own."""
    from tinyhd.manifest import load_manifest

    own = Path(root) / "manifest.yaml"
    return own.is_file() and load_manifest(own).name.startswith("synthetic")


def _refuse_reduced_teacher_on_real_data(cfg: TrainConfig) -> None:
    """``teacher: reduced`` is the reduced-scale stand-in: a few hundred Adam steps of HD2S from scratch, then its
    maps cached on the CPU for every train frame and every auxiliary video. On DHF1K + Kinetics-400 that cache
    alone would be terabytes and weeks of CPU time, so it is refused there with what to use instead."""
    real = [(name, root) for name, root in (("data_root", cfg.data_root), ("aux_root", cfg.aux_root))
            if root is not None and not _is_synthetic_root(root)]
    if real:
        name, root = real[0]
        raise UserError(
            f"teacher 'reduced' is the synthetic set's small-budget HD2S and cannot be used with a real dataset "
            f"({name} = {root}): give the paper's teacher as teacher: hd2s:CKPT (an HD2S checkpoint, ours or the "
            f"authors', run on the fly) or teacher: cache:PATH (its maps stored once by `tinyhd cache-teacher`); "
            f"train one with `tinyhd train hd2s_dhf1k` (docs/training.md)")


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


def hd2s_param_groups(model: nn.Module, cfg: TrainConfig) -> list[dict[str, Any]]:
    """HD2S kinds: every parameter at ``lr`` with weight decay (the authors' ``Adam(model.parameters(), …)``,
    sheet §8), except that with ``head_lr_mult`` ≠ 1 the 1×1 output convolutions (``last_conv*``) get their own
    group at ``head_lr_mult`` × lr (reduced-scale runs from scratch; the fused sigmoid is flat otherwise)."""
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if cfg.head_lr_mult == 1.0:
        return [{"params": [p for _, p in params], "name": "all"}]
    head = [p for n, p in params if n.split(".")[-2].startswith("last_conv")]
    rest = [p for n, p in params if not n.split(".")[-2].startswith("last_conv")]
    return [{"params": rest, "name": "all"}, {"params": head, "lr": cfg.lr * cfg.head_lr_mult, "name": "heads"}]


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """SGD with momentum (the paper, §4.2) or Adam (``optimizer: adam``: the reduced-scale notebooks, where a
    randomly initialised student gets a few dozen steps), both over :func:`param_groups`. HD2S kinds: Adam with
    ``weight_decay`` over :func:`hd2s_param_groups` (HD2S sheet §8)."""
    # PyTorch's fused implementations: one kernel for all parameters instead of a dozen ops per parameter
    # (TinyHD-M's 491 tensors on one CPU thread: Adam 24 → 4.8 ms, SGD 8.2 → 2.4 ms per step; the same update
    # up to float32 rounding, and the same state dict)
    fused = all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in model.parameters())
    if cfg.model in HD2S_MODELS:
        return torch.optim.Adam(hd2s_param_groups(model, cfg), lr=cfg.lr, weight_decay=cfg.weight_decay,
                                fused=fused)
    groups = param_groups(model, cfg)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr, fused=fused)
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, fused=fused)


# ----------------------------------------------------------------------------------------------------------
# 4. validation


@torch.no_grad()
def validate(model: nn.Module, val_ds: Dataset, cfg: TrainConfig, device: torch.device,
             domain: str | None = None) -> dict[str, float]:
    """KL to the GT (the loss) and CC / NSS / SIM / KLD (``tinyhd.metrics``) on the val clips, at the
    training resolution (cheap; ``tinyhd evaluate`` is the benchmark protocol). HD2S kinds: ``val_loss`` is the
    mean KL of the final map (the authors' ``KLD`` of sheet §7, :func:`tinyhd.losses.hd2s_kl`; the checkpoint
    with the lowest one is kept, sheet §8); DSL validates through ``domain``."""
    from tinyhd import metrics
    from tinyhd.losses import hd2s_kl

    was_training = model.training
    model.eval()
    loader = DataLoader(val_ds, batch_size=max(1, min(cfg.batch_size, 8)), collate_fn=collate,
                        num_workers=cfg.num_workers)
    losses, scores = [], {"cc": [], "nss": [], "sim": [], "kld": []}
    for batch in loader:
        with torch.autocast(device.type, enabled=cfg.amp and device.type == "cuda"):
            sal = predict_saliency(model, cfg, batch["clip"].to(device), domain).float()   # B×T'×H×W
        gt = batch["saliency"].to(device).reshape(sal.shape)
        if cfg.model == "tinyhd":
            losses.append(float(kl_maps(sal, gt, mask=batch["has_sal"])))
        else:
            losses.append(float(hd2s_kl(sal[:, 0], gt[:, 0])))
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
    # a metric can be NaN on every frame (e.g. CC of a constant map from a fresh model): NaN, without numpy's
    # "Mean of empty slice" warning
    result.update({k: float(np.nanmean(v)) if np.isfinite(v).any() else float("nan") for k, v in scores.items()})
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


def _checkpoint_payload(model: nn.Module, cfg: TrainConfig, state: Mapping[str, Any]) -> dict[str, Any]:
    """The model part of a checkpoint. TinyHD: ``{"format": "tinyhd", "config", "model"}``
    (:func:`tinyhd.load_checkpoint`). HD2S kinds: :func:`tinyhd.teacher.save_hd2s`'s layout — ``format: hd2s``,
    ``variant``, ``config``, the weights in the authors' key layout — plus ``step`` and ``val_kl`` (the best
    validation KL so far), so ``last.pt``/``best.pt`` load with :func:`tinyhd.teacher.load_hd2s` and hence
    with ``tinyhd cache-teacher`` and ``teacher: hd2s:CKPT``."""
    if cfg.model == "tinyhd":
        return {"format": "tinyhd", "config": dict(model.config), "model": model.state_dict()}
    from tinyhd.teacher import official_state_dict

    config = {k: v for k, v in getattr(model, "config", {}).items() if k != "pretrained_backbone"}
    return {"format": "hd2s", "variant": type(model).__name__, "config": config,
            "model": official_state_dict(model), "step": int(state["step"]), "val_kl": float(state["best"])}


def _resume_model(cfg: TrainConfig, ckpt: Mapping[str, Any], path: Path, model: nn.Module | None) -> nn.Module:
    """The model of ``last.pt`` (weights loaded strictly into ``model`` when one is given)."""
    if cfg.model == "tinyhd" and model is None:
        return load_model(path)
    model = model if model is not None else build_model(cfg)
    sd = ckpt["model"]
    if cfg.model in HD2S_MODELS:
        from tinyhd.teacher import official_key_to_ours

        sd = {official_key_to_ours(k): v for k, v in sd.items()}
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: does not fit the model being trained ({exc})") from exc
    return model


def _uses_cpu_fast_path(cfg: TrainConfig, device: torch.device) -> bool:
    return cfg.cpu_fast_path and cfg.model == "tinyhd" and device.type == "cpu"


LOCK = ".lock"  # held (flock) by the trainer running in a run folder
# present from a fresh run's start until its first last.pt: the folder's best.pt / log.jsonl are then that run's
# own (killed before its first checkpoint) and are redone; without it and without last.pt they belong to a run that
# cannot be resumed, and are not overwritten
STARTED = ".started-no-checkpoint-yet"


def _remove_if_unused(created: Sequence[Path]) -> None:
    """Remove the run folder (and the parents) this trainer created when the run stopped before writing anything
    into it; ``created`` innermost first."""
    try:
        if {p.name for p in created[0].iterdir()} <= {LOCK}:
            (created[0] / LOCK).unlink(missing_ok=True)
            for folder in created:
                folder.rmdir()
    except OSError:
        pass


def _claim_run_folder(out_dir: Path, stack: contextlib.ExitStack) -> str | None:
    """Create ``out_dir`` and lock it for this run (an exclusive ``flock`` on ``out_dir/.lock``, released when
    ``stack`` closes: at the end of the run, also on an error or a kill). Two trainers on one folder would
    interleave ``log.jsonl`` and delete each other's temporary files. Returns why the run cannot start here (another
    trainer holds the folder; ``best.pt`` or a non-empty ``log.jsonl`` without the ``last.pt`` to resume them, which a
    new run would overwrite), or None. A folder created here is removed again if the run writes nothing into it."""
    import fcntl

    created = [p for p in (out_dir, *out_dir.parents) if not p.exists()]  # innermost first
    out_dir.mkdir(parents=True, exist_ok=True)
    fh = open(out_dir / LOCK, "a")
    stack.callback(fh.close)  # closing the file releases the lock
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return (f"{out_dir}: another trainer is running in this folder (it holds {out_dir / LOCK}); wait for it to "
                f"end, or use a new --out folder")
    if created:
        stack.callback(_remove_if_unused, created)  # runs before the lock is released
    if not (out_dir / "last.pt").is_file() and not (out_dir / STARTED).is_file():
        log = out_dir / "log.jsonl"
        kept = [p.name for p in (out_dir / "best.pt", log) if p.is_file() and (p != log or p.stat().st_size > 0)]
        if kept:
            return (f"{out_dir}: has {' and '.join(kept)} but no last.pt to resume from; a new run here would "
                    f"overwrite {'them' if len(kept) > 1 else 'it'}: use a new --out folder (or move this whole "
                    f"folder away), or put the run's last.pt back to resume it")
    return None


def _verify_teacher_sources(teacher: Any, data: _Data, cfg: TrainConfig) -> None:
    """A cache-like teacher (``verify_sources``) checks that it holds maps of every video the run distils on. When
    only auxiliary videos lack maps (a cache of a Kinetics subset, ``cache-teacher --max-videos N``), the error
    says how many of the first auxiliary videos are cached: ``max_aux_videos`` takes exactly those."""
    from tinyhd.errors import DataError

    target = [e for _, ds in data.train for e in ds.entries]
    aux = list(data.aux.entries) if data.aux is not None else []
    try:
        teacher.verify_sources(target + aux)
    except DataError as exc:
        index = getattr(teacher, "index", None)
        if not aux or not isinstance(index, Mapping) or any(e.id not in index for e in target) \
                or all(e.id in index for e in aux):
            raise
        cached = next((i for i, e in enumerate(aux) if e.id not in index), len(aux))
        hint = (f"set max_aux_videos: {cached} (--set max_aux_videos={cached}) to distil on the first {cached} "
                f"auxiliary videos, which it has" if cached else
                "it has none of the first auxiliary videos: cache them with `tinyhd cache-teacher` (on aux_root)")
        raise DataError(f"{exc}. Only auxiliary videos lack maps ({sum(e.id not in index for e in aux)} of the "
                        f"{len(aux)} this run uses, max_aux_videos: {cfg.max_aux_videos}): {hint}") from exc


def train(cfg: TrainConfig, out_dir: str | os.PathLike, teacher: Callable | None = None,
          model: nn.Module | None = None) -> TrainResult:
    """Train (or distil) TinyHD — or train HD2S (``cfg.model``) — per ``cfg`` into ``out_dir``; resume from
    ``out_dir/last.pt`` if present.

    ``teacher`` overrides ``cfg.teacher`` with any callable of the teacher contract. ``model`` trains that module
    (in place) instead of a fresh :func:`build_model` (on resume, the checkpoint's weights are loaded into it).
    Returns the trained model (final weights), the history (the JSON-lines log) and the checkpoint paths.
    On a CPU, TinyHD trains through :func:`tinyhd.cpu_train.cpu_training` (``cpu_fast_path``); the returned model
    is a plain TinyHD again, also when training stops with an error.

    One trainer per folder: the run holds an exclusive lock on ``out_dir/.lock`` and a second one is refused. A
    folder with ``best.pt`` or a non-empty ``log.jsonl`` but no ``last.pt`` (other than a run killed before its
    first checkpoint) is refused rather than overwritten. Raising ``epochs`` or ``max_steps`` continues a run; for
    ``hd2s_da`` the gradient-reversal λ keeps the horizon of the run's first start (stored in its state), so an
    extended run goes on along the schedule it started with.
    """
    with contextlib.ExitStack() as stack:
        return _train(cfg, out_dir, teacher, model, stack)


def _train(cfg: TrainConfig, out_dir: str | os.PathLike, teacher: Callable | None, model: nn.Module | None,
           stack: contextlib.ExitStack) -> TrainResult:
    cfg = dataclasses.replace(cfg).validate()
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"{out_dir}: exists and is not a folder (--out names the run folder)")
    last_path, best_path, log_path = out_dir / "last.pt", out_dir / "best.pt", out_dir / "log.jsonl"

    # -- processes: plain, or one of WORLD_SIZE ranks under torchrun ------------------------------------
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if cfg.device != "cpu" and torch.cuda.is_available() else "gloo")
    rank = dist.get_rank() if dist.is_initialized() else 0
    world = dist.get_world_size() if dist.is_initialized() else 1
    is_main = rank == 0
    if cfg.model in HD2S_MODELS and cfg.batch_size < world * (2 if cfg.model == "hd2s_da" else 1):
        raise UserError(f"batch_size: {cfg.batch_size} is split across {world} ranks — each needs at least "
                        f"{2 if cfg.model == 'hd2s_da' else 1} clip(s) per mini-batch")
    device = _resolve_device(cfg.device, int(os.environ.get("LOCAL_RANK", "0")))
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    use_amp = cfg.amp and device.type == "cuda"

    data = build_data(cfg)  # first: a wrong path or a bad dataset fails before the run folder is created

    # -- the run folder: one trainer at a time (rank 0 holds the lock), nothing of a run it cannot resume lost ----
    problem = _claim_run_folder(out_dir, stack) if is_main else None
    if world > 1:  # every rank stops with rank 0's reason (the others would wait for it at the first collective)
        box = [problem]
        dist.broadcast_object_list(box, src=0)
        problem = box[0]
    if problem:
        raise UserError(problem)
    if is_main:
        for stale in out_dir.glob(".*.pt.*.tmp"):  # a temp file left by a kill mid-write (never a checkpoint)
            stale.unlink(missing_ok=True)

    # -- resume state, model, optimizer ------------------------------------------------------------------
    ckpt = None
    if last_path.is_file():
        from tinyhd.checkpoints import read_torch_file

        try:
            ckpt = read_torch_file(last_path)
        except CheckpointError as exc:
            raise CheckpointError(f"{exc}; cannot resume from it: use a new --out folder to start over (or move "
                                  f"this whole folder away)") from exc
        lacking = sorted({"state", "optimizer", "scheduler", "scaler", "rng"} - set(ckpt)) if isinstance(ckpt, dict) \
            else ["everything"]
        if lacking:  # e.g. a best.pt (weights only) copied over last.pt
            raise CheckpointError(f"{last_path}: not a resumable checkpoint of this trainer (no {', '.join(lacking)}); "
                                  f"cannot resume from it: use a new --out folder to start over (or move this "
                                  f"whole folder away)")
        saved = ckpt.get("train_config", {})
        changed = sorted(k for k, v in asdict(cfg).items()
                         if k not in RESUMABLE_CHANGES and k in saved and _norm(saved[k], k) != _norm(v, k))
        if saved.get("model", "tinyhd") != cfg.model and "model" not in changed:
            changed.append("model")
        if changed:
            raise UserError(f"{last_path}: was trained with a different config ({', '.join(changed)} differ); "
                            f"use a new --out folder or the same config")
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    if ckpt is not None:
        model = _resume_model(cfg, ckpt, last_path, model)  # weights (strict); the training state is restored below
    elif model is None:
        model = build_model(cfg)
    model.to(device).train()
    if device.type == "cpu" and (cfg.model in HD2S_MODELS or _uses_cpu_fast_path(cfg, device)):
        from tinyhd.fast import keep_freed_memory

        # reuse activation pages across steps (process-wide): TinyHD-M 4.0 → 2.4 s per step; HD2S at 128×192
        # 2.9 → 2.7 s (1 thread). Not with cpu_fast_path: false, which is PyTorch's defaults for comparison.
        keep_freed_memory()
    if _uses_cpu_fast_path(cfg, device):  # before the optimizer and DDP see the parameters (restrided in place)
        from tinyhd.cpu_train import cpu_training

        stack.enter_context(cpu_training(model))
    teacher = teacher if teacher is not None else build_teacher(cfg, device, data)
    if cfg.distill_on != "none" and teacher is None:
        raise UserError("distill_on is not 'none' but there is no teacher")
    if hasattr(teacher, "verify_sources"):  # a cache: built from the videos this run distils on?
        _verify_teacher_sources(teacher, data, cfg)
    optimizer = make_optimizer(model, cfg)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(cfg.milestones), gamma=cfg.gamma)
    scaler = torch.amp.GradScaler(device.type, enabled=use_amp)
    # log_rows: lines of log.jsonl written when the state was saved; val_step: the step of the last validation
    state = {"epoch": 0, "step_in_epoch": 0, "step": 0, "best": math.inf, "finished": False, "log_rows": 0,
             "val_step": -1}
    if ckpt is not None:
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        scaler.load_state_dict(ckpt["scaler"])
        state.update(ckpt["state"])
        _set_rng_state(ckpt["rng"])
    # drop the log lines written after the checkpoint we resume from (they will be redone): the first log_rows
    # lines (a validation logged after a mid-epoch checkpoint at the same step is among the dropped ones);
    # checkpoints from before log_rows: the lines up to its step
    if ckpt is not None and "log_rows" in ckpt["state"]:
        rows = _read_log(log_path)[:state["log_rows"]]
    else:
        rows = _read_log(log_path, max_step=state["step"])
    state["log_rows"] = len(rows)
    if is_main:  # until the first last.pt, the folder's files are this run's own (see STARTED)
        if ckpt is None:
            (out_dir / STARTED).touch()
        else:
            (out_dir / STARTED).unlink(missing_ok=True)
    text = "".join(json.dumps(r) + "\n" for r in rows)
    # rewritten only when lines are dropped (a finished run called again leaves its log as it is, mtime included)
    if is_main and (not log_path.is_file() or log_path.read_text() != text):
        with atomic_open(log_path, "w") as fh:
            fh.write(text)
    ddp_model: nn.Module = model
    if world > 1:  # DSL: the other sources' parameters take no part in a mini-batch
        ddp_model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                                        find_unused_parameters=cfg.model == "hd2s_dsl")

    def save(path: Path, resumable: bool = True) -> None:
        """``last.pt``: everything a resume needs. ``best.pt`` (``resumable=False``): the weights, the configs and
        the position, without the optimizer/scheduler/scaler/RNG states (Adam's moments are twice the weights:
        an HD2S ``best.pt`` is 120 MB instead of 360 MB); nothing resumes from it."""
        if not is_main:
            return
        payload = {**_checkpoint_payload(model, cfg, state), "train_config": asdict(cfg), "state": dict(state)}
        if resumable:
            payload.update(optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(),
                           scaler=scaler.state_dict(), rng=_rng_state())
        atomic_torch_save(payload, path)
        if resumable:
            (out_dir / STARTED).unlink(missing_ok=True)

    def log(row: dict[str, Any]) -> None:
        if is_main:
            with open(log_path, "a") as fh:
                fh.write(json.dumps(row) + "\n")
                fh.flush()
        state["log_rows"] += 1

    def run_validation(epoch: int, done: bool) -> None:
        """Validate (rank 0), log the row, keep ``best.pt`` on the lowest ``val_loss``. DSL: every source with
        its own domain; ``val_loss`` is their mean and ``<source>/<metric>`` the per-source values."""
        _sync_buffers(model, world)
        metrics_row: dict[str, float] = {}
        if is_main:
            per = [(name, validate(model, ds, cfg, device, domain=name)) for name, ds in data.val]
            if len(per) == 1:
                metrics_row = per[0][1]
            else:
                metrics_row = {"val_loss": float(np.mean([m["val_loss"] for _, m in per]))}
                metrics_row.update({f"{name}/{k}": v for name, m in per for k, v in m.items()})
        log({"kind": "val", "epoch": epoch, "step": state["step"], **metrics_row})
        state["val_step"] = state["step"]
        state["finished"] = done
        if is_main and metrics_row.get("val_loss", math.inf) < state["best"]:
            state["best"] = metrics_row["val_loss"]
            save(best_path, resumable=False)

    # -- data (first: a wrong path fails before anything is built or downloaded) -----------------------------
    A = cfg.accumulation
    lr_group = -1 if cfg.model == "tinyhd" else 0  # the logged lr: TinyHD's decoder weights, HD2S's main group
    if cfg.model == "tinyhd":
        n_target = len(data.train[0][1])  # type: ignore[arg-type]
        n_aux = len(data.aux) if data.aux is not None else 0  # type: ignore[arg-type]
        aux_per_epoch = round(cfg.aux_per_target * n_target) if n_aux else 0
        n_batches = len(shard_batches(n_target + aux_per_epoch, cfg.batch_size, rank, world))
    else:
        n_batches = minibatches_per_epoch(cfg, data)
    steps_per_epoch = math.ceil(n_batches / A)
    total = cfg.epochs * steps_per_epoch if cfg.max_steps is None else min(cfg.max_steps, cfg.epochs * steps_per_epoch)
    # DA: λ's progress p = mini-batch counter / (horizon × accumulation), the horizon fixed at the run's first start
    # (kept in the state): a run extended by a larger max_steps / epochs goes on along the schedule it started
    # (λ never steps back; past the horizon λ → 1) instead of re-timing it mid-run
    horizon = int(state.get("lambda_steps") or total)
    if cfg.model == "hd2s_da":
        if horizon != total and is_main:
            warnings.warn(f"{out_dir}: the gradient-reversal λ keeps the schedule of this run's first start "
                          f"({horizon} steps), not the {total} steps of max_steps / epochs now; for a schedule over "
                          f"{total} steps start a new --out folder", stacklevel=3)
        state["lambda_steps"] = horizon

    from tqdm import tqdm

    # redrawn at most every second on a terminal, every 30 s elsewhere (a notebook or a log file would otherwise
    # keep one line per step: >100k outputs for a full-scale run)
    bar = tqdm(total=total, initial=min(state["step"], total), disable=not (is_main and cfg.progress),
               desc=f"train {out_dir.name}", unit="step", mininterval=1.0 if sys.stderr.isatty() else 30.0)
    while True:
        epoch = state["epoch"]
        if epoch >= cfg.epochs or (cfg.max_steps and state["step"] >= cfg.max_steps):
            break  # done (also when resuming a finished run: nothing to redo)
        # the epoch's mini-batches: a pure function of (seed, epoch); skip the steps done before a resume
        if cfg.model == "tinyhd":
            _set_epoch(data.train[0][1], epoch)
            _set_epoch(data.aux, epoch)
            plan = epoch_plan(n_target, n_aux, aux_per_epoch, cfg.seed, epoch)
            epoch_ds: Dataset = _EpochClips(data.train[0][1], data.aux, plan)
            batches = shard_batches(len(plan), cfg.batch_size, rank, world)
        else:
            epoch_ds, batches = hd2s_epoch(cfg, data, epoch, rank, world)
        batches = batches[state["step_in_epoch"] * A:]
        loader = DataLoader(epoch_ds, batch_sampler=batches, collate_fn=collate,
                            num_workers=cfg.num_workers,  # own generator: the global RNG is left untouched
                            generator=torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch))
        stopped = False
        sums: dict[str, float] = {}
        for i, batch in enumerate(loader):
            # an optimiser step sums the losses of `accumulation` mini-batches (HD2S sheet §8: "pile")
            if i % A == 0:
                optimizer.zero_grad(set_to_none=True)  # None, not 0: Adam leaves such parameters untouched (DSL)
                sums = {}
            progress = (state["step"] * A + i % A) / (horizon * A)  # DA: p = mini-batch counter / (steps × pile)
            terms = step_loss(cfg, ddp_model, batch, device, use_amp, teacher, progress)
            scaler.scale(terms["total"]).backward()
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach())
            if (i + 1) % A and i + 1 < len(batches):
                continue
            scaler.step(optimizer)
            scaler.update()
            state["step"] += 1
            state["step_in_epoch"] += 1
            bar.update(1)
            if state["step"] % cfg.log_every == 0:
                if world > 1:  # the global batch's losses, not rank 0's share (every rank reaches this line)
                    names = sorted(sums)
                    t = torch.tensor([sums[k] for k in names], dtype=torch.float64, device=device)
                    dist.all_reduce(t)
                    sums = dict(zip(names, (t / world).tolist()))
                n = i % A + 1  # losses are summed over the step's mini-batches; λ and accuracy are averaged
                row = {"kind": "train", "epoch": epoch, "step": state["step"], "lr": optimizer.param_groups[lr_group]["lr"],
                       **{k: v / n if k in ("lambda", "domain_acc") else v for k, v in sums.items()}}
                if cfg.model == "hd2s_dsl":
                    row["source"] = batch["source"][0] if A == 1 else "mixed"
                log(row)
                bar.set_postfix(loss=f"{row['total']:.3f}", refresh=False)  # shown at the next redraw
            validated = bool(cfg.val_every) and state["step"] % cfg.val_every == 0
            if validated:  # every val_every steps (HD2S sheet §8: every 100)
                run_validation(epoch, done=False)
            if cfg.max_steps and state["step"] >= cfg.max_steps:
                stopped = True
                break
            if validated or state["step"] % cfg.checkpoint_every == 0:
                _sync_buffers(model, world)
                save(last_path)
        if not stopped:  # end of epoch: next epoch, lr schedule
            state["epoch"] += 1
            state["step_in_epoch"] = 0
            with warnings.catch_warnings():  # a run resumed at the very end of an epoch has not stepped yet here
                warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step")
                scheduler.step()
        done = stopped or state["epoch"] >= cfg.epochs
        # validation: every epoch (val_every null), and where the run ends when val_every is set; not twice at
        # one step (a run stopped by max_steps at an epoch's end validated there; extended, it ends that epoch now)
        if (cfg.val_every is None or (cfg.val_every and done)) and state["val_step"] != state["step"]:
            run_validation(epoch, done)
        state["finished"] = done
        _sync_buffers(model, world)
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
    epochs: int = 200
    teacher: str | None = None
    max_aux_videos: int | None = None
    val_videos: int | None = None
    pretrained_backbone: bool = False
    shortened: bool = False   # a full-scale run cut short by parameters (a dry run): its claims are not asserted


def notebook_scale(data_root: str | None, *, size: Sequence[int] | None = None, batch_size: int | None = None,
                   max_steps: int | str | None = "auto", optimizer: str = "auto", epochs: int | None = None,
                   reduced_steps: int = 40, reduced_epochs: int = 10,
                   teacher: str | None = "auto", max_aux_videos: int | str | None = "auto",
                   val_videos: int | str | None = "auto", pretrained_backbone: bool | str = "auto") -> NotebookScale:
    """Resolve the notebooks' ``None``/``"auto"`` parameters for reduced or full scale.

    Full scale (``data_root`` given): 192×256, batch 12, 200 epochs, no step limit, the paper's SGD (§4.2).
    ``size`` may be a string, as ``papermill -p size 192x256`` gives it (``"192x256"`` or ``"[192, 256]"``).
    Reduced scale (synthetic set): 32×64, batch 2, ``reduced_epochs`` epochs cut at ``reduced_steps`` Adam steps
    (SGD from a random init does not move in 40 steps). Milestones are the paper's 100/150/180 of 200 epochs
    scaled to ``epochs`` (none below 20). ``teacher="auto"`` is ``"reduced"`` on the synthetic set; at full
    scale a teacher must be given (``hd2s:CKPT`` or ``cache:PATH``), and ``"reduced"`` is refused there, as
    the trainer refuses it (it would train a toy HD2S and cache its maps over all of DHF1K and Kinetics-400).
    ``"auto"`` video counts: every video at full scale; 4 auxiliary and 2 val videos on the synthetic set.
    ``pretrained_backbone="auto"``: the ImageNet encoder at full scale only. ``shortened``: a full-scale run
    whose ``max_steps`` or ``epochs`` cut the paper's schedule short.
    """
    full = data_root is not None
    if isinstance(size, str):   # papermill -p size 192x256 / -p size "[192, 256]" give a string
        from tinyhd.cli import parse_size

        text = size.strip()
        parsed = yaml.safe_load(text) if text.startswith("[") else parse_size(text)
        if not (isinstance(parsed, (list, tuple)) and len(parsed) == 2 and all(isinstance(v, int) for v in parsed)):
            raise UserError(f"size {size!r}: give H×W, e.g. -p size 192x256 (or -y 'size: [192, 256]')")
        size = tuple(parsed)
    epochs = int(epochs) if epochs is not None else (200 if full else reduced_epochs)
    if teacher == "auto":
        if full:
            raise UserError("teacher: at full scale (data_root set) give the distillation teacher, e.g. "
                            "-p teacher hd2s:/weights/hd2s.pth (run on the fly) or -p teacher cache:/data/hd2s_cache "
                            "(maps stored by `tinyhd cache-teacher`); train HD2S with `tinyhd train hd2s_dhf1k`")
        teacher = "reduced"
    elif teacher == "reduced" and full:
        raise UserError("teacher 'reduced' is the synthetic set's small-budget HD2S: at full scale (data_root set) "
                        "give -p teacher hd2s:CKPT or -p teacher cache:PATH (see docs/training.md)")
    steps = (None if full else reduced_steps) if max_steps == "auto" else max_steps
    return NotebookScale(
        full=full,
        size=tuple(size) if size is not None else ((192, 256) if full else (32, 64)),
        batch_size=batch_size if batch_size is not None else (12 if full else 2),
        max_steps=steps,
        optimizer=("sgd" if full else "adam") if optimizer == "auto" else optimizer,
        milestones=tuple(round(m * epochs / 200) for m in (100, 150, 180)) if epochs >= 20 else (),
        epochs=epochs,
        teacher=teacher,
        max_aux_videos=(None if full else 4) if max_aux_videos == "auto" else max_aux_videos,
        val_videos=(None if full else 2) if val_videos == "auto" else val_videos,
        pretrained_backbone=full if pretrained_backbone == "auto" else bool(pretrained_backbone),
        shortened=full and (steps is not None or epochs < 200),
    )


def config_key(cfg: TrainConfig) -> str:
    """A short hash of everything in ``cfg`` that changes what a run computes (not ``RESUMABLE_CHANGES``).
    Notebooks name run folders with it, so two notebooks asking for the same run share it. Fields added after
    the first notebooks (the HD2S knobs) count only when they differ from their defaults, so TinyHD configs keep
    the keys they had (and their run folders)."""
    import hashlib

    values = {k: _norm(v) for k, v in sorted(asdict(cfg).items())
              if k not in _KEY_EXCLUDED and not (k in _ADDED_DEFAULTS and v == _ADDED_DEFAULTS[k])}
    return hashlib.sha1(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()[:10]


def last_validation(result: TrainResult) -> dict[str, float]:
    """The final validation row of a run (val_loss, cc, nss, sim, kld)."""
    rows = [r for r in result.history if r.get("kind") == "val"]
    if not rows:
        raise UserError(f"{result.out_dir}: the run has no validation row yet")
    return {k: v for k, v in rows[-1].items() if k not in ("kind", "epoch")}


_PATH_FIELDS = ("data_root", "aux_root", "da_target_root", "init_from")


def _norm(v: Any, key: str = "") -> Any:
    """A config value as compared on resume: sequences as lists, paths spelled one way (``/data/x/`` = ``/data/x``)."""
    if key in _PATH_FIELDS and isinstance(v, (str, os.PathLike)):
        return os.path.normpath(os.path.expanduser(os.fspath(v)))
    return list(v) if isinstance(v, (tuple, list)) else v


# ----------------------------------------------------------------------------------------------------------
# 6. chains of stages (teacher assistant, Table 5)


def _stage_refs(values: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(key, stage name) of every ``@name`` reference in ``init_from`` / ``teacher``."""
    refs = []
    if isinstance(values.get("init_from"), str) and values["init_from"].startswith("@"):
        refs.append(("init_from", values["init_from"][1:]))
    if isinstance(values.get("teacher"), str) and ":" in values["teacher"]:
        arg = values["teacher"].partition(":")[2]
        if arg.startswith("@"):
            refs.append(("teacher", arg[1:]))
    return refs


def _resolve_refs(values: dict[str, Any], out_dir: Path) -> dict[str, Any]:
    """``@name`` in init_from / teacher means the ``best.pt`` (else ``last.pt``) of stage ``name``."""
    values = dict(values)
    for key, name in _stage_refs(values):
        stage = out_dir / name
        path = str(stage / "best.pt" if (stage / "best.pt").is_file() else stage / "last.pt")
        values[key] = path if key == "init_from" else f"{values[key].partition(':')[0]}:{path}"
    return values


def train_chain(base: Mapping[str, Any], stages: Sequence[Mapping[str, Any]], out_dir: str | os.PathLike,
                source: str = "config", overrides: Mapping[str, Any] | None = None) -> dict[str, TrainResult]:
    """Train the stages in order, each in ``out_dir/<name>``: a stage's keys override the shared ``base``.
    Finished stages are skipped (their runs resume as finished), so the chain resumes too.

    ``overrides`` (``--set``) change the shared keys: a stage that sets a key itself keeps its own value (a note on
    stderr names such stages), so e.g. ``--set teacher=cache:…`` changes the HD2S teacher of
    ``reduce_ta.yaml`` and leaves the teacher-assistant stages' ``student:@x1``. Every stage's config, and every
    ``@name`` (which must name an earlier stage), is checked before the first stage trains."""
    out_dir = Path(out_dir)
    if not isinstance(stages, Sequence) or isinstance(stages, (str, bytes)) or not stages:
        raise UserError(f"{source}: 'stages' must be a non-empty list of mappings, each with a 'name'")
    for i, stage in enumerate(stages):
        if not isinstance(stage, Mapping):
            raise UserError(f"{source}: stage {i + 1} is {stage!r}, expected a mapping such as "
                            f"{{name: x1, teacher: ...}}")
        name = stage.get("name")
        if not isinstance(name, str) or not name or "/" in name or name.startswith("."):
            raise UserError(f"{source}: stage {i + 1} needs a 'name' that is a folder name (text, no '/'), "
                            f"got {name!r}")
    names = [s["name"] for s in stages]
    if len(set(names)) != len(names):
        raise UserError(f"{source}: every stage needs a unique 'name' (got {names})")
    overrides = dict(overrides or {})
    kept = {k: [s["name"] for s in stages if k in s] for k in overrides}
    for key, where in kept.items():
        if where:
            print(f"{source}: --set {key} applies to the shared config; stage(s) {', '.join(where)} set their own "
                  f"{key} and keep it", file=sys.stderr)
    configs = []
    for i, stage in enumerate(stages):
        what = f"{source} (stage {stage['name']})"
        values = {**base, **overrides, **{k: v for k, v in stage.items() if k != "name"}}
        for key, ref in _stage_refs(values):
            if ref not in names[:i]:
                raise UserError(f"{what}: {key} refers to '@{ref}', which is "
                                f"{'a later stage' if ref in names else 'not a stage'}; '@name' means the "
                                f"best.pt of an earlier stage ({', '.join(names[:i]) or 'none before this one'})")
        configs.append((stage["name"], what, values))
        config_from_dict(_resolve_refs(values, out_dir), source=what)   # every stage checked before any trains
    results: dict[str, TrainResult] = {}
    for name, what, values in configs:
        cfg = config_from_dict(_resolve_refs(values, out_dir), source=what)   # refs now name finished stages
        results[name] = train(cfg, out_dir / name)
    return results


def run_config_file(path: str | os.PathLike, out_dir: str | os.PathLike,
                    overrides: Mapping[str, Any] | None = None) -> dict[str, TrainResult] | TrainResult:
    """What ``tinyhd train CONFIG --out DIR`` does: one run, or a chain if the file has ``stages:``. Errors name
    the file and, when ``overrides`` (``--set``) are given, those too."""
    values = read_yaml(path)
    overrides = dict(overrides or {})
    known = {f.name for f in fields(TrainConfig)}
    unknown = [k for k in overrides if k not in known]
    if unknown:
        raise UserError(f"--set {unknown[0]}: unknown key (known keys: {', '.join(sorted(known))})")
    source = f"{path} with --set {', '.join(overrides)}" if overrides else str(path)
    if "stages" in values:
        stages = values.pop("stages")
        if not isinstance(stages, list):
            raise UserError(f"{path}: 'stages' must be a list of mappings")
        return train_chain(values, stages, out_dir, source=source, overrides=overrides)
    return train(config_from_dict({**values, **overrides}, source=source), out_dir)


# ----------------------------------------------------------------------------------------------------------
# 7. command line


def _parse_override(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise UserError(f"--set {text!r}: expected KEY=VALUE")
    key, value = text.split("=", 1)
    return key.strip(), yaml.safe_load(value)


def cli_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="tinyhd train", description=(
        "Train or distil TinyHD, or train the teacher HD2S (model: hd2s | hd2s_da | hd2s_dsl), from a YAML "
        "config. Running the same command again resumes from DIR/last.pt. "
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
