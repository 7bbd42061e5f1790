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
# offline) learns: measured on this set, 20 SGD steps leave the student at val CC ≈ 0.01 (a flat map), while 40
# Adam steps reach CC ≈ 0.7 against 0.10 for the centre-bias baseline. Runs are cached under `out_dir` and
# keyed by their config (re-running the notebook reuses them; notebooks 05 and 06 reuse the "+ AD" run).
#
# **Full scale** (one command; knobs left at `None`/`"auto"` switch to the paper's values when `data_root` is set):
#
# ```
# papermill notebooks/04_distill.ipynb out.ipynb -p epochs 200 -p data_root /data/DHF1K \
#     -p aux_root /data/kinetics400 -p device cuda
# ```
#
# That trains TinyHD-S at 192×256, batch 12 (the paper's §4.2; the authors' yaml says 2 — we follow the paper),
# 200 epochs, SGD lr 0.01 (encoder ×0.5, biases ×2 without weight decay; sheet (e)), lr steps at 100/150/180,
# from an ImageNet-initialised encoder, against a teacher given by
# `teacher`: the default `"reduced"` trains a small HD2S on `data_root` first (a working but weak stand-in);
# for the paper's teacher add `-p teacher hd2s:/weights/hd2s.pth` (the HD2S authors' checkpoint, run on the fly)
# or `-p teacher cache:/data/hd2s_cache` (maps precomputed by `tinyhd cache-teacher`). See `docs/training.md`.

# %% tags=["parameters"]
epochs = 10                # paper: 200 (at reduced scale max_steps stops the runs first)
data_root = None           # None → synthetic DHF1K-layout set; a DHF1K copy for the paper's runs
aux_root = None            # None → synthetic Kinetics-layout set; Kinetics-400 (train_256/) for the paper's runs
teacher = "reduced"        # "reduced" | "hd2s:CKPT" | "cache:PATH" (see tinyhd.training.TrainConfig.teacher)
batch_size = None          # None → 2 on the synthetic set, 12 (paper) with data_root
size = None                # None → (32, 64) on the synthetic set, (192, 256) (paper) with data_root
max_steps = "auto"         # "auto" → 40 optimizer steps per row on the synthetic set, no limit with data_root
optimizer = "auto"         # "auto" → "adam" on the synthetic set, the paper's "sgd" with data_root (both lr 0.01)
device = "cpu"             # "cuda" for the full recipe
seed = 0
num_threads = 1            # CPU threads per process (the CI box has 2 cores shared by many jobs)
out_dir = None             # None → tinyhd.paths.runs_dir() / "04_distill"

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
from tinyhd.training import TrainConfig, config_key, last_validation, notebook_scale, train

torch.set_num_threads(num_threads)
scale = notebook_scale(data_root, size=size, batch_size=batch_size, max_steps=max_steps, optimizer=optimizer,
                       epochs=epochs)
full, size, batch_size, max_steps = scale.full, scale.size, scale.batch_size, scale.max_steps
optimizer, milestones = scale.optimizer, scale.milestones
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
# At reduced scale the teacher is a small HD2S trained from scratch on the synthetic set, whose maps (final +
# four conspicuity maps, shallowest first) are cached for the target videos and the auxiliary videos. Two things
# make a few hundred steps enough for maps with contrast: the 1×1 output convolutions (fusion and conspicuity
# heads) get 30× the lr — the final map is a sigmoid of a 1×1 convolution of sigmoid maps and is otherwise nearly
# flat — and the BatchNorm running statistics are recomputed for the final weights (S3D's BatchNorm momentum
# is 0.001, so after 150 steps they still describe the initialisation and the eval-mode maps come out flat).

# %%
if teacher == "reduced":
    from tinyhd.teacher_cache import ensure_reduced_teacher

    reduced = ensure_reduced_teacher(data_root, aux_root, size=size, seed=seed, aux_videos=None if full else 4)
    print("reduced HD2S:", reduced.checkpoint)

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
    cfg = TrainConfig(data_root=data_root, aux_root=aux_root, size=size, output="single", epochs=epochs,
                      batch_size=batch_size, max_steps=max_steps, milestones=milestones, optimizer=optimizer,
                      teacher=None if distill_on == "none" else teacher, distill_on=distill_on,
                      max_aux_videos=None if full else 4, val_videos=None if full else 2,
                      val_clips_per_video=5 if full else 2, pretrained_backbone=full, device=device,
                      num_threads=num_threads, seed=seed, checkpoint_every=200 if full else 20, progress=True)
    configs[name] = cfg
    results[name] = train(cfg, out_dir / f"s_{distill_on}_{config_key(cfg)}")

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

if teacher == "reduced":
    ds = SaliencyClipDataset(data_root or ensure_synthetic("dhf1k", progress=False), split="train", size=size,
                             sampling="uniform", clips_per_video=1, flip=False)
    batch = collate([{**ds[0], "source": "target"}])
    t_maps = reduced(batch)
    student = results["+ K.D. on AD"].model.eval()
    with torch.no_grad():
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
    assert t_maps["final"].shape[-2:] == s_out.saliency.shape[-2:] == size

# %% [markdown]
# ### Ours beside the paper's Table 4 (DHF1K val, TinyHD-S)
#
# Our numbers are validation CC / NSS / SIM / KLD at the training resolution on the synthetic val videos
# (`tinyhd.training.validate`); AUC-J/AUC-B need the full protocol (`tinyhd evaluate`, notebook on metrics).

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
# students, and the reduced HD2S itself (its final map for the last frame of each val clip, in eval mode).

# %%
from tinyhd import metrics
from tinyhd.preprocess import student_to_teacher_input
from tinyhd.training import build_datasets, centre_bias_validation

baseline = centre_bias_validation(configs["GT maps"])
teacher_scores = {}
if teacher == "reduced":
    from tinyhd.teacher import load_hd2s

    hd2s_small = load_hd2s(reduced.checkpoint)
    _, _, val_ds = build_datasets(configs["GT maps"])
    cc, nss, spread = [], [], []
    with torch.no_grad():
        for i in range(len(val_ds)):
            item = val_ds[i]
            sal = hd2s_small(student_to_teacher_input(item["clip"][None])).saliency[0, 0].numpy()
            gt_map = item["saliency"].reshape(-1, *size)[-1].numpy()
            fix = item["fixation"].reshape(-1, *size)[-1].numpy()
            cc.append(metrics.cc(sal, gt_map))
            if fix.sum() > 0:
                nss.append(metrics.nss(sal, fix))
            spread.append(float(sal.std() / sal.mean()))
    teacher_scores = {"cc": float(np.mean(cc)), "nss": float(np.mean(nss)), "spread": float(np.mean(spread))}
check = pd.DataFrame({**{n: {"CC": ours.loc[n, "CC (ours)"], "NSS": ours.loc[n, "NSS (ours)"]} for n in rows},
                      **({"reduced HD2S (teacher)": {"CC": teacher_scores["cc"], "NSS": teacher_scores["nss"]}}
                         if teacher_scores else {}),
                      "centre bias": {"CC": baseline["cc"], "NSS": baseline["nss"]}}).T
print(check.round(4).to_string())
# robust at this scale: every student has learned more than "look at the centre" ...
for name in rows:
    assert ours.loc[name, "CC (ours)"] > baseline["cc"], (name, ours.loc[name, "CC (ours)"], baseline["cc"])
# ... and the reduced teacher's maps have contrast and beat the centre bias too (the old 30-step teacher: flat)
if teacher_scores:
    print(f"teacher relative spread (std/mean) on val: {teacher_scores['spread']:.3f} (flat map: 0)")
    assert teacher_scores["spread"] > 0.5 and teacher_scores["cc"] > baseline["cc"], teacher_scores

# %%
gt_cc, td_cc, ad_cc = (table.loc[n, "CC (ours)"] for n in rows)
gt_kl, ad_kl = table.loc["GT maps", "KLD (ours)"], table.loc["+ K.D. on AD", "KLD (ours)"]
beats = ad_cc > gt_cc and ad_kl < gt_kl
order_matches = gt_cc < td_cc < ad_cc
print(f"paper: CC rises GT {paper.CC.iloc[0]} → TD {paper.CC.iloc[1]} → AD {paper.CC.iloc[2]}")
print(f"ours : CC GT {gt_cc:.4f} → TD {td_cc:.4f} → AD {ad_cc:.4f}; KLD GT {gt_kl:.4f} vs AD {ad_kl:.4f}")
print("full distillation (+AD) beats GT-only at equal steps on CC and KLD:", bool(beats))
print("our CC ordering matches the paper's (GT < TD < AD):", bool(order_matches))
# diagnostics for the paragraph below: how far the students and the teacher are from uniform maps
kd_final = np.mean([r["kd_final"] for r in train_rows["+ K.D. on AD"]])
kd_d1 = [r["kd_d1"] for r in train_rows["+ K.D. on AD"]]
print(f"students' val CC: {ours['CC (ours)'].round(4).tolist()} (a uniform map scores 0)")
print(f"mean KL(student final, teacher final) = {kd_final:.4f}; KL(D1, teacher) {kd_d1[0]:.3f} → {kd_d1[-1]:.3f}")
with open(out_dir / "summary.json", "w") as fh:
    json.dump({"beats_gt_only": bool(beats), "order_matches_paper": bool(order_matches),
               "scale": "full" if full else "reduced", "cc": {n: float(ours.loc[n, "CC (ours)"]) for n in rows},
               "centre_bias_cc": baseline["cc"], "teacher": teacher_scores}, fh)

# %% [markdown]
# **What this shows at reduced scale — and what it does not.** The check cells assert what is robust: every row
# trains for the same number of steps with finite losses, the teacher terms are active exactly when distilling,
# the D1 ↔ teacher-conspicuity KL goes down, every student beats the centre bias on val CC, and the reduced
# teacher's maps have contrast and beat the centre bias as well.
#
# **At the default reduced scale, distillation does *not* help — the ordering is the reverse of the paper's.**
# In our run (the cells above print it): CC GT-only 0.70 > + KD on TD 0.50 > + KD on AD 0.40, centre bias 0.10,
# the reduced HD2S teacher itself 0.31 (relative spread of its val maps ≈ 1.9, ground truth ≈ 3.1). The reason is visible in
# those numbers: distillation pulls the student towards its teacher, and here the teacher (150 steps from
# scratch) is *worse* than what the student learns from the ground truth in 40 steps, so every KD term pulls the
# student away from the ground truth — and + AD, where half the clips carry only teacher targets, pulls the
# most. In the paper the teacher is the converged, Kinetics-initialised HD2S (DHF1K val CC ≈ 0.50 vs 0.49 for
# the distilled TinyHD-S), strictly better than a GT-only student, which is the setting in which Eq. 3 can help.
# So this is a real result at this scale (a weak teacher hurts), not noise around flat maps, and it does not test
# the paper's claim; the full-scale command at the top (with `-p teacher hd2s:/weights/hd2s.pth` for the
# authors' teacher) runs exactly that comparison. One seed and two synthetic val videos: the gaps here
# (0.1–0.3 CC) are large, but their exact sizes are not reliable.
