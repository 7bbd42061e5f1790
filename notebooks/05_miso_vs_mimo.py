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
# # 05 · Single output (MISO, TinyHD-S) vs multiple outputs (MIMO, TinyHD-M) — Table 1
#
# > "In the MISO configuration, our model is on par with state-of-the-art methods [...] but only employs a
# > fraction of their computational cost. In the MIMO configuration, our method sets a new state of the art"
# > (§4.3, Table 1a)
#
# TinyHD-S predicts the last frame of each 16-frame clip, so a 16-frame saliency sequence costs 16 forwards
# (5.57 × 16 GMACs); TinyHD-M predicts all 16 frames in one forward (7.95 GMACs). This notebook puts the two side
# by side: accuracy after the same training (reduced scale here), MACs per 16 output maps
# (`tinyhd.count_complexity`), and measured throughput on this machine.
#
# Both students use the recipe of notebook 04 (Eq. 3: GT + KD on target + KD on auxiliary data); the S run is
# *the same run* as 04's "+ K.D. on AD" row when the parameters match (runs are named by a hash of their config,
# `tinyhd.training.config_key`) and `distill_dir` is the `out_dir` notebook 04 ran with, so it is reused, not
# retrained.
#
# **Full scale** (`epochs`, `size`, batch, steps and optimizer switch to the paper's values with `data_root`; a
# teacher must be given — `hd2s:CKPT`, an HD2S checkpoint run on the fly, or `cache:PATH`, its maps stored by
# `tinyhd cache-teacher`; see `docs/training.md`):
#
# ```
# papermill notebooks/05_miso_vs_mimo.ipynb out.ipynb -p data_root /data/DHF1K -p aux_root /data/kinetics400 \
#     -p teacher hd2s:/weights/hd2s.pth -p device cuda -p distill_dir <notebook 04's out_dir>
# ```

# %% tags=["parameters"]
epochs = None              # None → 10 on the synthetic set (max_steps stops the runs first), 200 (paper) with data_root
data_root = None           # None → synthetic DHF1K-layout set
aux_root = None            # None → synthetic Kinetics-layout set
teacher = "auto"           # "auto" → "reduced" on the synthetic set; with data_root give "hd2s:CKPT" or "cache:PATH"
batch_size = None          # None → 2 on the synthetic set, 12 (paper) with data_root
size = None                # None → (32, 64) on the synthetic set, (192, 256) with data_root
max_steps = "auto"         # "auto" → 40 steps on the synthetic set (as notebook 04), no limit with data_root
optimizer = "auto"         # "auto" → "adam" on the synthetic set (as notebook 04), the paper's "sgd" with data_root
max_aux_videos = "auto"    # "auto" → 4 on the synthetic set, every auxiliary video with data_root; N: the first N
                           # (a Kinetics-400 subset cached by `tinyhd cache-teacher --max-videos N`)
max_videos = None          # None → every train video; N: the first N (a partial copy, or a quick full-scale dry run)
val_videos = "auto"        # "auto" → 2 on the synthetic set, every val video with data_root; N: the first N
pretrained_backbone = "auto"   # "auto" → ImageNet MobileNetV2 with data_root (the paper; torchvision's weights file
                           # downloaded or in the torch hub cache), none on the synthetic set; True / False to choose
device = "cpu"
seed = 0
num_threads = 1
timing_repeats = 3         # forwards timed per model (median reported)
progress = False           # a tqdm bar per run: it refreshes every step, each refresh an output kept in the notebook
out_dir = None             # None → tinyhd.paths.runs_dir() / "05_miso_vs_mimo": the M run, tables
distill_dir = None         # None → tinyhd.paths.runs_dir() / "04_distill": notebook 04's out_dir, where the S run is

# %%
import json
import math
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

import tinyhd
from tinyhd.complexity import complexity_table
from tinyhd.paths import runs_dir
from tinyhd.training import TrainConfig, config_key, last_validation, notebook_scale, train

torch.set_num_threads(num_threads)
scale = notebook_scale(data_root, size=size, batch_size=batch_size, max_steps=max_steps, optimizer=optimizer,
                       epochs=epochs, teacher=teacher, max_aux_videos=max_aux_videos, val_videos=val_videos,
                       pretrained_backbone=pretrained_backbone)   # at full scale: refuses teacher "auto"/"reduced"
full, size, batch_size, max_steps = scale.full, scale.size, scale.batch_size, scale.max_steps
optimizer, milestones, epochs, teacher = scale.optimizer, scale.milestones, scale.epochs, scale.teacher
max_aux_videos, val_videos, pretrained_backbone = scale.max_aux_videos, scale.val_videos, scale.pretrained_backbone
# a full-scale run shortened by parameters (a dry run) is not expected to beat the centre bias: printed, not asserted
shortened = scale.shortened
out_dir = Path(out_dir) if out_dir is not None else runs_dir() / "05_miso_vs_mimo"
out_dir.mkdir(parents=True, exist_ok=True)
distill_dir = Path(distill_dir) if distill_dir is not None else runs_dir() / "04_distill"
shared_runs = distill_dir   # notebook 04's runs
print(f"scale: {'full' if full else 'reduced'}; size {size}, batch {batch_size}, epochs {epochs}, max_steps "
      f"{max_steps}, optimizer {optimizer}, teacher {teacher}; the S run is looked up in {shared_runs}")

# %% [markdown]
# ## Cost: parameters and MACs per 16 output maps (Table 1a)
#
# Counted at 192×256 the way the paper counts (`tinyhd.complexity`, traced at 64×96 and scaled by the area,
# exact for these models). S needs 16 forwards for 16 maps, M one.

# %%
cost = complexity_table(["TinyHD-S ×1", "TinyHD-M ×1"], count_at=(64, 96))
print(cost.drop(columns=["source"]).round(3).to_string())
s_cost, m_cost = cost.loc["TinyHD-S ×1"], cost.loc["TinyHD-M ×1"]
assert abs(s_cost["params"] / 3.94e6 - 1) < 0.005 and abs(m_cost["params"] / 3.92e6 - 1) < 0.005
assert abs(s_cost["GMAC/16 maps"] / 89.12 - 1) < 0.02, "S: 5.57 × 16 GMACs"
assert abs(m_cost["GMAC/16 maps"] / 7.95 - 1) < 0.02, "M: 7.95 GMACs"
print(f"per 16 maps M is {s_cost['GMAC/16 maps'] / m_cost['GMAC/16 maps']:.1f}× cheaper than S (paper: "
      f"{89.12 / 7.95:.1f}×)")

# %% [markdown]
# ## Measured throughput on this machine
#
# Median wall time of one forward (eval mode, no gradients) on a 16-frame clip at the training resolution;
# maps per second = maps per forward / time. (Shared CPUs are noisy; the ratio is what matters.) On CUDA the
# kernels run asynchronously: the clock is read only after `torch.cuda.synchronize()`, so it measures the
# forward and not just its kernel launches.

# %%
def forward_time(model: torch.nn.Module, clip: torch.Tensor, repeats: int) -> float:
    """Median seconds of one no-grad forward of ``model`` on ``clip`` (B×3×T×H×W), after one warm-up."""
    sync = torch.cuda.synchronize if clip.is_cuda else (lambda: None)
    model.eval()
    with torch.no_grad():
        model(clip)  # warm-up
        times = []
        for _ in range(repeats):
            sync()                     # nothing queued before the clock starts ...
            t0 = time.perf_counter()
            model(clip)
            sync()                     # ... and the forward's kernels done before it stops
            times.append(time.perf_counter() - t0)
    return float(np.median(times))


torch.manual_seed(seed)
clip = torch.randn(1, 3, 16, *size, device=device)
throughput = {}
for name, output in (("TinyHD-S", "single"), ("TinyHD-M", "multi")):
    model = tinyhd.TinyHD(output=output).to(device)
    t = forward_time(model, clip, timing_repeats)
    maps = 1 if output == "single" else 16
    throughput[name] = {"ms / forward": 1000 * t, "maps / forward": maps, "maps / s": maps / t}
throughput = pd.DataFrame(throughput).T
print(f"device {device}, {num_threads} thread(s), input 1×3×16×{size[0]}×{size[1]}")
print(throughput.round(2).to_string())
assert throughput.loc["TinyHD-M", "maps / s"] > 2 * throughput.loc["TinyHD-S", "maps / s"]

# %% [markdown]
# ## Accuracy after the same training
#
# S and M trained with the same recipe, teacher and number of steps. MIMO targets are the 16 frames of the clip;
# the M student's D1 is single-output (as released), so its targets are the teacher's conspicuity maps averaged
# over the 16 windows (the authors' target mode 'M', sheet (f)).

# %%
results, configs = {}, {}
for name, output in (("TinyHD-S", "single"), ("TinyHD-M", "multi")):
    cfg = TrainConfig(data_root=data_root, aux_root=aux_root, size=size, output=output, epochs=epochs,
                      batch_size=batch_size, max_steps=max_steps, milestones=milestones, teacher=teacher,
                      optimizer=optimizer,
                      distill_on="all", max_aux_videos=max_aux_videos, max_videos=max_videos, val_videos=val_videos,
                      val_clips_per_video=5 if full else 2, pretrained_backbone=pretrained_backbone, device=device,
                      num_threads=num_threads, seed=seed, checkpoint_every=200 if full else 20, progress=progress)
    configs[name] = cfg
    # the S run is notebook 04's "+ K.D. on AD" row: same config, same folder name
    run_dir = shared_runs / f"s_all_{config_key(cfg)}" if output == "single" else out_dir / f"m_all_{config_key(cfg)}"
    reused = (run_dir / "last.pt").is_file()
    results[name] = train(cfg, run_dir)
    log = [r for r in results[name].history if r["kind"] == "train"]
    print(f"{name}: {'reused' if reused else 'trained'} {run_dir}; {len(log)} steps, loss {log[0]['total']:.3f} → "
          f"{log[-1]['total']:.3f}, val CC {last_validation(results[name])['cc']:.4f}")

# %%
for name, res in results.items():
    hist = [r for r in res.history if r["kind"] == "train"]
    assert hist and all(math.isfinite(r["total"]) for r in hist), name
    assert max_steps is None or len(hist) == max_steps, name
paper = pd.DataFrame({"AUC-J": [0.909, 0.905], "SIM": [0.396, 0.387], "s-AUC": [0.714, 0.707],
                      "CC": [0.505, 0.493], "NSS": [2.921, 2.819], "GMACs / 16 maps": [5.57 * 16, 7.95],
                      "params": ["3.94M", "3.92M"]}, index=["TinyHD-S", "TinyHD-M"])
ours = pd.DataFrame({n: last_validation(r) for n, r in results.items()}).T[["cc", "nss", "sim", "kld"]]
ours.columns = ["CC (ours)", "NSS (ours)", "SIM (ours)", "KLD (ours)"]
ours["GMACs / 16 maps (ours)"] = [s_cost["GMAC/16 maps"], m_cost["GMAC/16 maps"]]
ours["maps / s (ours, measured)"] = throughput["maps / s"].to_numpy()
table = pd.concat([paper.add_suffix(" (paper, DHF1K test)"), ours], axis=1)
table.to_csv(out_dir / "table1.csv")
print(table.round(3).T.to_string())
assert table.shape[0] == 2 and np.isfinite(ours.to_numpy(dtype=float)).all()

# %%
# did they learn? the centre bias scored by the same validation (S: last frame of each clip, M: all 16 frames)
from tinyhd.training import centre_bias_validation

baseline = {name: centre_bias_validation(cfg)["cc"] for name, cfg in configs.items()}
for name in results:
    print(f"{name}: val CC {ours.loc[name, 'CC (ours)']:.4f} vs centre bias {baseline[name]:.4f}")
    assert shortened or ours.loc[name, "CC (ours)"] > baseline[name], name   # both learned beyond the centre prior

# %%
s_cc, m_cc = ours.loc["TinyHD-S", "CC (ours)"], ours.loc["TinyHD-M", "CC (ours)"]
print(f"paper: S CC {paper.CC['TinyHD-S']} ≥ M CC {paper.CC['TinyHD-M']} (MISO slightly more accurate), "
      f"M ~{89.12 / 7.95:.0f}× cheaper per map")
print(f"ours ({'full' if full else 'reduced'} scale, this run): S CC {s_cc:.4f} vs M CC {m_cc:.4f} → "
      f"{'S ≥ M, as in the paper' if s_cc >= m_cc else 'M > S, the reverse of the paper'}")
with open(out_dir / "summary.json", "w") as fh:
    json.dump({"s_cc": float(s_cc), "m_cc": float(m_cc), "same_order_as_paper": bool(s_cc >= m_cc),
               "centre_bias_cc": baseline}, fh)

# %% [markdown]
# **Reading the table.** The cost columns are exact and match the paper (asserted above): per 16 output maps
# TinyHD-M needs about 11× fewer MACs than TinyHD-S, and the measured throughput shows the same kind of gap on
# this CPU. At reduced scale (32×64, 40 Adam steps each, distilled from the reduced HD2S on target + auxiliary
# clips, as notebook 04's last row) both students learn: each beats the centre bias on its own val targets
# (asserted). The accuracy ordering is printed above, not asserted: at reduced scale it is not seed-stable (one
# seed, 40 steps, two synthetic val videos; the paper's gap is 0.505 vs 0.493 CC), so it neither confirms nor
# contradicts the paper whichever way it falls. It is also not a like-for-like comparison here: S is validated
# on the last frame of each clip and M on all 16 (different targets, different centre-bias scores), and both
# are distilled from the reduced teacher of notebook 04. The paper's finding (S slightly more accurate, M far
# cheaper) needs the full-scale run.
