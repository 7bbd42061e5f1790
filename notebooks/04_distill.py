# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 04 · Hierarchical distillation with an auxiliary dataset (TinyHD §3.3, §4.2, Table 4)
#
# > "we carry out knowledge distillation by extracting intermediate and final outputs from a hierarchical
# > teacher to supervise intermediate of one student decoder and final student outputs" (§3.3)
#
# TinyHD is trained with three kinds of KL terms: student final map ↔ ground truth (labelled clips only),
# student final map ↔ HD2S final map, and D1 map *j* ↔ HD2S conspicuity map *j* (Eq. 2), the teacher terms also
# on unlabeled Kinetics-400 clips (Eq. 3). Table 4 ablates them: GT maps only, + KD on the target dataset (TD),
# + KD on the auxiliary dataset (AD).
#
# **Reduced scale (the defaults).** Synthetic DHF1K-layout and Kinetics-layout sets (`tinyhd.synth`), 32×64
# clips, batch 2, 40 optimizer steps for every row, and a *reduced* HD2S teacher trained on the synthetic set
# (`tinyhd.teacher_cache.ensure_reduced_teacher`: 150 Adam steps from scratch at 32×64, then its BatchNorm
# statistics recomputed on the training clips). At full scale the paper's SGD recipe; at reduced scale **Adam**
# (same lr 0.01, `optimizer="adam"`) so that a one-minute run from a random initialisation (no ImageNet weights
# offline) learns: SGD barely moves the maps in a few dozen steps from there, while 40 Adam steps beat the
# centre-bias baseline (asserted below). No cell here measures the SGD case; `-p optimizer sgd` shows it. Runs
# are cached under `out_dir` and keyed by their config (re-running the notebook reuses them; notebooks 05 and 06
# reuse the "+ AD" run through their `distill_dir`).
#
# **Full scale** (one command; knobs left at `None`/`"auto"` switch to the paper's values when `data_root` is set):
#
# ```
# papermill notebooks/04_distill.ipynb out.ipynb -p data_root /data/DHF1K -p aux_root /data/kinetics400 \
#     -p teacher hd2s:/weights/hd2s.pth -p device cuda
# ```
#
# That trains TinyHD-S at 192×256, batch 12 (the paper's §4.2; the authors' yaml says 2 — we follow the paper),
# 200 epochs, SGD lr 0.01 (encoder ×0.5, biases ×2 without weight decay; sheet (e)), lr steps at 100/150/180,
# from an ImageNet-initialised encoder, against the teacher given by `teacher`: `hd2s:/weights/hd2s.pth` (an
# HD2S checkpoint, ours or the HD2S authors', run on the fly) or `cache:/data/hd2s_cache` (its maps precomputed
# by `tinyhd cache-teacher`). At full scale a teacher must be given: the default `"auto"` is the small reduced
# HD2S on the synthetic set only, and refuses a real `data_root` (it would train a toy HD2S and cache its maps
# over all of DHF1K and Kinetics-400). See `docs/training.md`. For a partial copy or a quick dry run of the
# full-scale path add `-p max_videos 4 -p val_videos 1 -p max_aux_videos 4 -p max_steps 3` (a run shortened like
# this prints its centre-bias comparison instead of asserting it); offline without torchvision's ImageNet
# MobileNetV2 file, `-p pretrained_backbone False`; `-p size 96x128` for another resolution.

# %% tags=["parameters"]
epochs = None              # None → 10 on the synthetic set (max_steps stops the runs first), 200 (paper) with data_root
data_root = None           # None → synthetic DHF1K-layout set; a DHF1K copy for the paper's runs
aux_root = None            # None → synthetic Kinetics-layout set; Kinetics-400 (train_256/) for the paper's runs
teacher = "auto"           # "auto" → "reduced" on the synthetic set; with data_root give "hd2s:CKPT" or "cache:PATH"
batch_size = None          # None → 2 on the synthetic set, 12 (paper) with data_root
size = None                # None → (32, 64) on the synthetic set, (192, 256) (paper) with data_root
max_steps = "auto"         # "auto" → 40 optimizer steps per row on the synthetic set, no limit with data_root
optimizer = "auto"         # "auto" → "adam" on the synthetic set, the paper's "sgd" with data_root (both lr 0.01)
max_aux_videos = "auto"    # "auto" → 4 on the synthetic set, every auxiliary video with data_root; N: the first N
                           # (a Kinetics-400 subset cached by `tinyhd cache-teacher --max-videos N`)
max_videos = None          # None → every train video; N: the first N (a partial copy, or a quick full-scale dry run)
val_videos = "auto"        # "auto" → 2 on the synthetic set, every val video with data_root; N: the first N
pretrained_backbone = "auto"   # "auto" → ImageNet MobileNetV2 with data_root (the paper; torchvision's weights file
                           # downloaded or in the torch hub cache), none on the synthetic set; True / False to choose
device = "cpu"             # "cuda" for the full recipe
seed = 0
num_threads = 1            # CPU threads per process (the CI box has 2 cores shared by many jobs)
progress = False           # a tqdm bar per run: it refreshes every step, and each refresh is an output kept in the
                           # executed notebook (full scale: tens of thousands); off, each run prints one summary line
out_dir = None             # None → tinyhd.paths.runs_dir() / "04_distill" (notebooks 05/06: their distill_dir)

# %%
import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch

import tinyhd
from tinyhd.losses import distillation_loss, kl_maps
from tinyhd.paths import runs_dir
from tinyhd.training import TrainConfig, build_teacher, config_key, last_validation, notebook_scale, train

torch.set_num_threads(num_threads)
scale = notebook_scale(data_root, size=size, batch_size=batch_size, max_steps=max_steps, optimizer=optimizer,
                       epochs=epochs, teacher=teacher, max_aux_videos=max_aux_videos, val_videos=val_videos,
                       pretrained_backbone=pretrained_backbone)   # at full scale: refuses teacher "auto"/"reduced"
full, size, batch_size, max_steps = scale.full, scale.size, scale.batch_size, scale.max_steps
optimizer, milestones, epochs, teacher = scale.optimizer, scale.milestones, scale.epochs, scale.teacher
max_aux_videos, val_videos, pretrained_backbone = scale.max_aux_videos, scale.val_videos, scale.pretrained_backbone
# a full-scale run shortened by parameters (a dry run) is not expected to beat the centre bias: printed, not asserted
shortened = scale.shortened
out_dir = Path(out_dir) if out_dir is not None else runs_dir() / "04_distill"
out_dir.mkdir(parents=True, exist_ok=True)
print(f"scale: {'full' if full else 'reduced'}; size {size}, batch {batch_size}, epochs {epochs}, "
      f"max_steps {max_steps}, milestones {milestones}, optimizer {optimizer}, teacher {teacher}")

# %% [markdown]
# ## Eq. 1: KL divergence between sum-normalised maps
#
# $\mathcal{L}_{KL}(x, y) = \sum_i y_i \log \frac{y_i}{x_i}$, with both maps divided by their sum. The authors'
# `KLDLoss1vs1` sums over the pixels of each map and averages over maps (sheet (e)); ours is the same, plus an
# epsilon on the prediction so that an all-zero map cannot give NaN (`tinyhd.losses`).

# %%
p = torch.tensor([[[1.0, 3.0]]])          # → (1/4, 3/4)
q = torch.tensor([[[5.0, 5.0]]])          # → (1/2, 1/2)
expected = 0.5 * math.log(2) + 0.5 * math.log(2 / 3)
print(f"KL = {float(kl_maps(p, q)):.6f}, by hand {expected:.6f}")
assert abs(float(kl_maps(p, q)) - expected) < 1e-6
zero = torch.zeros(2, 8, 8, requires_grad=True)
loss = kl_maps(zero, torch.rand(2, 8, 8))
loss.backward()
assert torch.isfinite(loss) and torch.isfinite(zero.grad).all()   # no NaN on a blank prediction

# %% [markdown]
# ## The teacher
#
# The teacher is whatever `teacher` names, built as the trainer builds it (`tinyhd.training.build_teacher`): an
# HD2S run on the fly (`hd2s:CKPT`), its cached maps (`cache:PATH`) or, at reduced scale, a small HD2S trained
# from scratch on the synthetic set, whose maps (final + four conspicuity maps, shallowest first) are cached for
# the target videos and the auxiliary videos. For the reduced teacher two things
# make a few hundred steps enough for maps with contrast: the 1×1 output convolutions (fusion and conspicuity
# heads) get 30× the lr — the final map is a sigmoid of a 1×1 convolution of sigmoid maps and is otherwise nearly
# flat — and the BatchNorm running statistics are recomputed for the final weights (S3D's BatchNorm momentum
# is 0.001, so after 150 steps they still describe the initialisation and the eval-mode maps come out flat).

# %%
def distill_config(distill_on: str) -> TrainConfig:
    """The config of one Table 4 row (notebooks 05 and 06 build the "all" row the same way, hence share it)."""
    return TrainConfig(data_root=data_root, aux_root=aux_root, size=size, output="single", epochs=epochs,
                       batch_size=batch_size, max_steps=max_steps, milestones=milestones, optimizer=optimizer,
                       teacher=None if distill_on == "none" else teacher, distill_on=distill_on,
                       max_aux_videos=max_aux_videos, max_videos=max_videos, val_videos=val_videos,
                       val_clips_per_video=5 if full else 2, pretrained_backbone=pretrained_backbone, device=device,
                       num_threads=num_threads, seed=seed, checkpoint_every=200 if full else 20, progress=progress)


teacher_fn = build_teacher(distill_config("all"), device)   # the teacher the distilling rows train against
print(f"teacher {teacher!r}:", getattr(teacher_fn, "checkpoint", None) or type(teacher_fn).__name__)

# %% [markdown]
# ## Table 4 at our scale: the three loss settings, equal optimizer steps
#
# One epoch = one random clip per target video, plus as many auxiliary clips when the auxiliary set is used
# (sheet (e)). With `max_steps`, every row gets the same number of optimizer steps (the paper compares equal
# *epochs*, so its AD row saw twice as many clips).

# %%
rows = {"GT maps": "none", "+ K.D. on TD": "target", "+ K.D. on AD": "all"}
results, configs = {}, {}
for name, distill_on in rows.items():
    cfg = configs[name] = distill_config(distill_on)
    results[name] = train(cfg, out_dir / f"s_{distill_on}_{config_key(cfg)}")
    log = [r for r in results[name].history if r["kind"] == "train"]
    print(f"{name}: {len(log)} steps, loss {log[0]['total']:.3f} → {log[-1]['total']:.3f}, "
          f"val CC {last_validation(results[name])['cc']:.4f} ({results[name].out_dir})")

# %%
train_rows = {name: [r for r in res.history if r["kind"] == "train"] for name, res in results.items()}
for name, hist in train_rows.items():
    steps = [r["step"] for r in hist]
    assert steps == list(range(1, len(steps) + 1)), f"{name}: every step logged once"
    assert all(math.isfinite(r["total"]) for r in hist), f"{name}: finite losses"
    if max_steps is not None:
        assert len(steps) == max_steps, f"{name}: equal steps for every row"
    kd = [r["kd_final"] + r["kd_d1"] for r in hist]
    assert (max(kd) > 0) == (configs[name].distill_on != "none"), f"{name}: teacher terms on iff distilling"
    if configs[name].distill_on != "none":   # D1 learns the teacher's hierarchical maps: its KL term goes down
        assert hist[-1]["kd_d1"] < hist[0]["kd_d1"], f"{name}: KL(D1, teacher conspicuity) decreases"
print({name: len(h) for name, h in train_rows.items()}, "steps")

# %%
fig, ax = plt.subplots(1, 2, figsize=(10, 3.5))
for name, hist in train_rows.items():
    ax[0].plot([r["step"] for r in hist], [r["gt"] for r in hist], label=name)
    ax[1].plot([r["step"] for r in hist], [r["total"] for r in hist], label=name)
ax[0].set_title("KL(final, GT) on labelled clips"); ax[1].set_title("total loss (Eq. 2/3)")
for a in ax:
    a.set_xlabel("step"); a.legend(fontsize=8)
fig.tight_layout()
fig.savefig(out_dir / "losses.png", dpi=80)

# %% [markdown]
# ### What the maps look like
#
# One training clip: ground truth, the teacher's final and four conspicuity maps (the distillation targets), and
# the distilled student's final and D1 maps (eval mode). Each panel is colour-scaled to its own range.

# %%
from tinyhd.data import SaliencyClipDataset
from tinyhd.synth import ensure_synthetic
from tinyhd.training import collate

ds = SaliencyClipDataset(data_root or ensure_synthetic("dhf1k", progress=False), split="train", size=size,
                         sampling="uniform", clips_per_video=1, flip=False)
batch = collate([{**ds[0], "source": "target"}])      # clip 1×3×16×H×W, saliency 1×1×H×W
with torch.no_grad():
    t_maps = {k: v.cpu() for k, v in teacher_fn(batch).items()}   # final 1×1×H×W, conspicuity 1×4×1×H×W
    student = results["+ K.D. on AD"].model.eval()
    s_out = student(batch["clip"].to(device))
panels = [("GT", batch["saliency"][0, -1]), ("teacher final", t_maps["final"][0, -1])]
panels += [(f"teacher C{j + 1}", t_maps["conspicuity"][0, j, -1]) for j in range(4)]
panels += [("student final", s_out.saliency[0, -1].cpu())] + \
          [(f"student D1 map {j + 1}", s_out.d1[0, j].cpu()) for j in range(4)]
fig, axes = plt.subplots(2, 6, figsize=(14, 4))
for ax, (title, m) in zip(axes.ravel(), panels):
    ax.imshow(m.numpy(), cmap="magma")
    ax.set_title(title, fontsize=8)
for ax in axes.ravel():
    ax.axis("off")
fig.tight_layout()
fig.savefig(out_dir / "maps.png", dpi=80)
spread = {name: float(m.std() / m.mean().clamp_min(1e-8)) for name, m in panels}
print("relative spread (std/mean) of each map, 0 = flat:", {k: round(v, 3) for k, v in spread.items()})

# %%
assert tuple(t_maps["final"].shape) == (1, 1, *size) and tuple(t_maps["conspicuity"].shape) == (1, 4, 1, *size)
assert s_out.saliency.shape[-2:] == t_maps["final"].shape[-2:]
assert all(torch.isfinite(m).all() and m.min() >= 0 for _, m in panels[1:6])   # teacher maps: finite, ≥ 0

# %% [markdown]
# ### Ours beside the paper's Table 4 (DHF1K val, TinyHD-S)
#
# Our numbers are validation CC / NSS / SIM / KLD at the training resolution on the synthetic val videos
# (`tinyhd.training.validate`); AUC-J/AUC-B need the full protocol: `tinyhd evaluate --checkpoint
# <run>/best.pt --data <DHF1K> --split val` (see the README).

# %%
paper = pd.DataFrame({"AUC-J": [0.9033, 0.9058, 0.9075], "AUC-B": [0.8286, 0.8237, 0.8244],
                      "CC": [0.4864, 0.4875, 0.4945], "NSS": [2.7680, 2.8182, 2.8735],
                      "SIM": [0.3765, 0.3846, 0.3887]}, index=list(rows))
ours = pd.DataFrame({name: last_validation(res) for name, res in results.items()}).T[["cc", "nss", "sim", "kld"]]
ours.columns = ["CC (ours)", "NSS (ours)", "SIM (ours)", "KLD (ours)"]
table = pd.concat([paper.add_suffix(" (paper)"), ours], axis=1)
table.to_csv(out_dir / "table4.csv")
print(table.round(4).to_string())
assert table.shape == (3, 9) and np.isfinite(ours.to_numpy()).all()

# %% [markdown]
# ### Did the students and the teacher learn? The centre-bias baseline on the same val clips
#
# A fixed Gaussian at the frame centre (`tinyhd.synth.centre_bias`) scored by the same validation as the
# students, and the teacher itself, whatever `teacher` names (its final map for the last frame of each val clip:
# an HD2S checkpoint run in eval mode; a cache read, if it holds the val videos).

# %%
from tinyhd import metrics
from tinyhd.errors import DataError
from tinyhd.teacher import OnlineTeacher, load_hd2s
from tinyhd.training import build_datasets, centre_bias_validation

baseline = centre_bias_validation(configs["GT maps"])
_, _, val_ds = build_datasets(configs["GT maps"])
kind = teacher.partition(":")[0]
if kind == "reduced":   # its cache holds the training videos only: run its checkpoint on the val clips
    val_teacher = OnlineTeacher(load_hd2s(teacher_fn.checkpoint), device=device)
elif kind == "cache" and not all(v in teacher_fn.index for v in val_ds.video_ids):
    val_teacher = None
    print(f"{teacher}: the cache holds no maps for (some of) the val videos, so the teacher is not scored here; "
          f"`tinyhd cache-teacher --splits train,val` stores them too")
else:
    val_teacher = teacher_fn
teacher_scores = {}
if val_teacher is not None:
    cc, nss, spread = [], [], []
    with torch.no_grad():
        for i in range(len(val_ds)):
            item = val_ds[i]
            sal = val_teacher(collate([{**item, "source": "target"}]))["final"][0, -1].cpu().numpy()   # H×W
            gt_map = item["saliency"].reshape(-1, *size)[-1].numpy()
            fix = item["fixation"].reshape(-1, *size)[-1].numpy()
            cc.append(metrics.cc(sal, gt_map))
            if fix.sum() > 0:
                nss.append(metrics.nss(sal, fix))
            spread.append(float(sal.std() / max(float(sal.mean()), 1e-8)))
    teacher_scores = {"cc": float(np.mean(cc)), "nss": float(np.mean(nss)), "spread": float(np.mean(spread))}
check = pd.DataFrame({**{n: {"CC": ours.loc[n, "CC (ours)"], "NSS": ours.loc[n, "NSS (ours)"]} for n in rows},
                      **({f"teacher ({teacher})": {"CC": teacher_scores["cc"], "NSS": teacher_scores["nss"]}}
                         if teacher_scores else {}),
                      "centre bias": {"CC": baseline["cc"], "NSS": baseline["nss"]}}).T
print(check.round(4).to_string())

# %%
# every student has learned more than "look at the centre" ...
for name in rows:
    if shortened:
        print(f"{name}: CC {ours.loc[name, 'CC (ours)']:.4f} vs centre bias {baseline['cc']:.4f} (a shortened "
              f"full-scale run: not asserted)")
    else:
        assert ours.loc[name, "CC (ours)"] > baseline["cc"], (name, ours.loc[name, "CC (ours)"], baseline["cc"])
# ... and so has the teacher, whichever it is; the reduced one's maps must also have contrast (a 30-step teacher
# gave flat maps); a converged HD2S's spread is printed, not bounded
if teacher_scores:
    print(f"teacher relative spread (std/mean) on val: {teacher_scores['spread']:.3f} (flat map: 0)")
    assert shortened or (teacher_scores["cc"] > baseline["cc"] and teacher_scores["nss"] > baseline["nss"]), \
        teacher_scores
    if kind == "reduced":
        assert teacher_scores["spread"] > 0.5, teacher_scores

# %%
gt_cc, td_cc, ad_cc = (table.loc[n, "CC (ours)"] for n in rows)
gt_kl, ad_kl = table.loc["GT maps", "KLD (ours)"], table.loc["+ K.D. on AD", "KLD (ours)"]
beats = ad_cc > gt_cc and ad_kl < gt_kl
order_matches = gt_cc < td_cc < ad_cc
ranked = " > ".join(f"{n} {table.loc[n, 'CC (ours)']:.3f}" for n in table["CC (ours)"].sort_values(ascending=False).index)
print(f"paper (DHF1K val): CC GT maps {paper.CC.iloc[0]} < + K.D. on TD {paper.CC.iloc[1]} < + K.D. on AD {paper.CC.iloc[2]}")
print(f"ours ({'full' if full else 'reduced'} scale, this run): CC {ranked}; KLD GT maps {gt_kl:.4f} vs + AD {ad_kl:.4f}")
print(f"→ full distillation (+ AD) is {'ahead of' if beats else 'not ahead of'} GT-only on CC and KLD together at equal steps; "
      f"the CC order {'is' if order_matches else 'is not'} the paper's (GT < TD < AD).")
if teacher_scores:
    better = [n for n in rows if ours.loc[n, "CC (ours)"] > teacher_scores["cc"]]
    print(f"teacher ({teacher}) val CC {teacher_scores['cc']:.3f}: "
          f"{', '.join(better) if better else 'no student'} above it; the GT-only student is "
          f"{'above' if ours.loc['GT maps', 'CC (ours)'] > teacher_scores['cc'] else 'below'} it")
kd_d1 = [r["kd_d1"] for r in train_rows["+ K.D. on AD"]]
print(f"KL(D1, teacher conspicuity) over the + AD run: {kd_d1[0]:.3f} → {kd_d1[-1]:.3f}")
with open(out_dir / "summary.json", "w") as fh:
    json.dump({"beats_gt_only": bool(beats), "order_matches_paper": bool(order_matches),
               "scale": "full" if full else "reduced", "cc": {n: float(ours.loc[n, "CC (ours)"]) for n in rows},
               "centre_bias_cc": baseline["cc"], "teacher": teacher_scores}, fh)

# %% [markdown]
# **What this shows at reduced scale — and what it does not.** The check cells assert what is robust: every row
# trains for the same number of steps with finite losses, the teacher terms are active exactly when distilling,
# the D1 ↔ teacher-conspicuity KL goes down, every student beats the centre bias on val CC, and so does the
# teacher (whose reduced version must also produce maps with contrast).
#
# **The order of the three rows is printed above, not asserted, and at reduced scale it says nothing about
# Eq. 3.** It is not seed-stable: reruns at the defaults have put + TD and + AD in different orders, with gaps
# of the size that one seed, 40 steps and two synthetic val videos produce by chance, so no mechanism should be
# read into a particular order. What differs from the paper's setting, whatever the order, is the teacher: here
# a 150-step HD2S from scratch. Its val CC is printed above beside the students': where it is not above them,
# distilling from it has little to offer.
#
# **The paper's teacher**, assuming it is the full HD2S of the HD2S paper (TinyHD names it only as HD2S): on DHF1K
# val CC 0.489, NSS 2.806, SIM 0.403 (IJCV 2021, Tables 3 and 4; the 0.503 CC often quoted for HD2S is HD2S_DSL on
# the DHF1K *test* set, its Table 1, reused in TinyHD's Table 1a). Beside Table 4 above, it is about level with the
# GT-only student on CC (0.489 vs 0.4864) and ahead of it only on NSS (2.806 vs 2.768) and SIM (0.403 vs 0.3765),
# and the distilled TinyHD-S ends above its teacher on CC (0.4945) and NSS (2.8735). So even in the paper the
# teacher is not strictly better than a GT-only student. Testing the paper's Table 4 needs the full-scale command
# at the top, with that teacher.
