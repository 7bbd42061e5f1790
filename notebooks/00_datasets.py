# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.16.0
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 00 · Datasets: manifests, the synthetic stand-in, and the clip loaders
#
# TinyHD (WACV 2023) is trained and evaluated on **DHF1K**, **UCF-Sports** and **Hollywood2**, and
# distilled on **Kinetics-400** clips that carry no saliency labels. None of these can ship with this
# repository, so this notebook tours
#
# 1. the dataset *manifests* (`data_manifests/*.yaml`): splits and layouts as the papers state them, and
#    `tinyhd verify-data`, which checks a user's copy;
# 2. the *synthetic* DHF1K-layout set that every other notebook uses by default: textured objects moving
#    over cluttered backgrounds, watched by simulated observers;
# 3. the *clip loaders* (`tinyhd.data`) that turn either into the batches the model and trainer consume.
#
# Full scale is a matter of parameters: point `data_root` at a real DHF1K copy (and `aux_root` at a
# Kinetics-400 `train_256` copy).

# %% tags=["parameters"]
data_root = None      # None: the synthetic DHF1K-layout set (created on first use, then cached)
aux_root = None       # None: the synthetic Kinetics-400-layout set
dataset = "dhf1k"     # manifest for data_root when it has no manifest.yaml of its own
size = (192, 256)     # loader output H×W (the paper's input size)
synth_videos = 12     # synthetic set: 12 videos, i.e. train 001–008, val 009–010, test 011–012
synth_frames = 48
synth_size = (96, 128)
seed = 0
out_dir = None        # None: runs/00_datasets

# %%
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch

import tinyhd
from tinyhd import data, manifest, synth, video
from tinyhd.paths import official_fixtures_dir, runs_dir

torch.set_num_threads(2)
out_dir = Path(out_dir) if out_dir is not None else runs_dir() / "00_datasets"
out_dir.mkdir(parents=True, exist_ok=True)

# %% [markdown]
# ## 1. The datasets as the papers describe them
#
# > "DHF1K contains 1000 videos split into 600/100/300 for training, validation, and test (unreleased).
# > [...] UCF-Sports [...] includes 150 videos (103 for training, 47 for test) [...]. Hollywood2 includes
# > 1707 videos [...]. 823 videos are used for training and 884 for test. We also employ the Kinetic-400
# > action recognition benchmark as auxiliary dataset." — TinyHD §4.1
#
# The manifests encode these splits. Where the sources disagree we say so: the HD2S paper counts
# Hollywood2 in *shots* (3,100 / 3,559) and the HD2S repository lists 1,904 training clips, and we have no
# copy of the frame-folder release to settle it, so the Hollywood2 manifest lists every count, marks them
# uncertain, and `verify-data` only warns (naming the alternatives) on a copy whose count lies between them;
# fewer videos than the smallest count (a partial copy) is a failure.

# %%
paper = {("dhf1k", "train"): 600, ("dhf1k", "val"): 100, ("dhf1k", "test"): 300,
         ("ucf", "train"): 103, ("ucf", "test"): 47, ("hollywood2", "train"): 823, ("hollywood2", "test"): 884}
rows = []
for name in ("dhf1k", "ucf", "hollywood2", "kinetics"):
    m = manifest.load_manifest(name)
    for split, spec in m.splits.items():
        rows.append({"manifest": m.name, "split": split, "ours": spec.count, "paper": paper.get((name, split), "–"),
                     "videos": f"{spec.range[0]:03d}–{spec.range[1]:03d}" if spec.range else f"{spec.dir}/",
                     "annotated": spec.annotated, "layout": m.layout["source"] or "<class>/<file>"})
table = pd.DataFrame(rows)
print(table.to_string(index=False))

# %%
for (name, split), n in paper.items():
    count = manifest.load_manifest(name).splits[split].count
    assert n == count or (isinstance(count, list) and n in count), (name, split, count)
dhf1k = manifest.load_manifest("dhf1k")
first_val = dhf1k.videos("/DHF1K", "val")[0]
assert (first_val.id, str(first_val.source), str(first_val.maps)) == ("601", "/DHF1K/video/601.AVI",
                                                                     "/DHF1K/annotation/0601/maps")
assert dhf1k.splits["test"].annotated is False  # DHF1K's test annotations are withheld

# %% [markdown]
# ## 2. The synthetic stand-in
#
# The issue asks for "textured objects moving over cluttered, moving backgrounds; fixations follow the
# salient objects with a centre bias and per-observer noise, so that a model must use appearance and
# motion to score well". `tinyhd.synth.ensure_synthetic` writes such a set in the DHF1K layout (MJPG AVIs,
# map and fixation PNGs, and its own `manifest.yaml` with its split ranges and frame counts), once, into
# the cache; a second call returns the cached copy.

# %%
root = Path(data_root) if data_root is not None else synth.ensure_synthetic(
    "dhf1k", videos=synth_videos, frames=synth_frames, size=synth_size, seed=seed, progress=False)
aux = Path(aux_root) if aux_root is not None else synth.ensure_synthetic(
    "kinetics", frames=synth_frames, size=synth_size, seed=seed, progress=False)
print(root, aux, sep="\n")
m = manifest.manifest_for_root(root, dataset)
report = manifest.verify(m, root)
print(f"verify-data: {len(report.problems)} problem(s); videos checked per split: {report.checked}")

# %%
assert report.ok, [str(p) for p in report.problems[:10]]
if data_root is None:
    assert report.checked == {"train": 8, "val": 2, "test": 2} or synth_videos != 12

# %% [markdown]
# A few frames of one training video with its GT map (blurred fixations, max 1) and the fixated pixels.

# %%
train = data.SaliencyClipDataset(root, split="train", dataset=dataset, size=size, output="multi",
                                 sampling="random", flip=True, seed=seed)
vid = train.video_ids[0]
gt = train.ground_truth(vid)
frames = train.frames(vid)
show = np.linspace(0, len(frames) - 1, 4).round().astype(int)
fig, axes = plt.subplots(3, len(show), figsize=(3 * len(show), 6.6))
for j, t in enumerate(show):
    axes[0, j].imshow(frames[t]); axes[0, j].set_title(f"video {vid}, frame {t}")
    axes[1, j].imshow(gt.maps[t], cmap="magma", vmin=0, vmax=1)
    axes[2, j].imshow(frames[t]); ys, xs = np.nonzero(gt.fixations[t])
    axes[2, j].scatter(xs, ys, s=14, c="cyan", marker="x")
for ax in axes.ravel():
    ax.set_xticks([]); ax.set_yticks([])
axes[1, 0].set_ylabel("GT map"); axes[2, 0].set_ylabel("fixations")
fig.tight_layout(); fig.savefig(out_dir / "synthetic_frames.png", dpi=80); plt.show()

# %%
assert frames.dtype == np.uint8 and frames.shape[-1] == 3
assert gt.maps.shape == gt.fixations.shape == frames.shape[:3]
assert np.allclose(gt.maps.reshape(len(gt.maps), -1).max(1), 1.0)  # maps normalised to max 1, like DHF1K
assert (gt.maps[gt.fixations] > 0).all()                                # every fixation lies under its map

# %% [markdown]
# **Is the synthetic saliency learnable, and not just a centre prior?** The generator knows the density
# its observers sample from. Scored with the benchmark metrics (`tinyhd.metrics`), that density is the
# best a model can hope for on average; a centre-bias Gaussian, which ignores the content, must score
# clearly below it. (Real DHF1K for scale: the paper's best models reach CC ≈ 0.5, NSS ≈ 2.9 on the test
# set; those numbers are not comparable with this toy set.)

# %%
scores = synth.baseline_scores(seed=seed, videos=(1, 2, 3, 4), frames=24, size=tuple(synth_size), every=4)
print(pd.DataFrame(scores).T.round(3).to_string())

# %%
assert scores["density"]["CC"] > scores["centre bias"]["CC"] + 0.3
assert scores["density"]["NSS"] > scores["centre bias"]["NSS"] + 1.0

# %% [markdown]
# ## 3. Clips as the trainer sees them
#
# > "Input sequence length is 16 frames, spatially resized to 192 × 256. We carry out data augmentation by
# > means of random horizontal flips" — TinyHD §4.1
#
# One item is a dict (the data contract in `docs/design.md`): `clip` 3×16×H×W (ImageNet-normalised, as
# the released weights expect), `saliency` and `fixation` T′×H×W with T′ = 1 for MISO (the clip's last
# frame) and 16 for MIMO, `has_sal`, `video`, `frame_index` (0-based) and `flip`. Random clips and flips
# are a pure function of (seed, epoch, index), so a resumed run replays the same epoch.

# %%
item = train[0]
for key, value in item.items():
    print(f"{key:12s} {tuple(value.shape) if hasattr(value, 'shape') else value!r:>22}  "
          f"{getattr(value, 'dtype', type(value).__name__)}")

# %%
assert item["clip"].shape == (3, 16, *size) and item["saliency"].shape == (16, *size)
assert item["fixation"].shape == (16, *size) and set(item["fixation"].unique().tolist()) <= {0.0, 1.0}
assert bool(item["has_sal"]) and item["frame_index"].dtype == torch.int64
fi = item["frame_index"]
assert torch.equal(fi, torch.arange(int(fi[0]), int(fi[0]) + 16))  # 16 consecutive frames
single = data.SaliencyClipDataset(root, split="train", dataset=dataset, size=size, output="single", seed=seed)
assert single[0]["saliency"].shape == (1, *size) and int(single[0]["frame_index"]) == int(fi[-1])

# %% [markdown]
# **The flip is shared** by the clip, the maps and the fixations: the flipped item is exactly the mirror
# image of the unflipped one.

# %%
plain = data.SaliencyClipDataset(root, split="train", dataset=dataset, size=size, output="multi", flip=False, seed=seed)
for epoch in range(50):  # the first epoch in which item 0 is mirrored
    train.set_epoch(epoch)
    if bool(train[0]["flip"]):
        break
plain.set_epoch(epoch)
a, b = train[0], plain[0]
print(f"epoch {epoch}: item 0 is flipped; frames {a['frame_index'][0].item()}..{a['frame_index'][-1].item()}")
assert all(torch.equal(a[k], b[k].flip(-1)) for k in ("clip", "saliency", "fixation"))
train.set_epoch(0)

# %% [markdown]
# **Short videos.** UCF-Sports videos are 20–140 frames long and clips can outrun them; a video shorter
# than 16 frames is padded *at the start* by repeating its first frame, as the authors' inference does for
# the first 15 frames of every video. We build a tiny 6-frame video to show it.

# %%
tiny = synth.build(out_dir / "tiny_dhf1k", "dhf1k", videos=3, frames=[6, 20, 20], size=(48, 64), seed=1,
                   progress=False)
short = data.SaliencyClipDataset(tiny, split="train", size=(48, 64), output="multi", flip=False)
print("frame_index of the padded clip:", short[0]["frame_index"].tolist())

# %%
assert short[0]["frame_index"].tolist() == [0] * 10 + list(range(6))

# %% [markdown]
# ## 4. The auxiliary, unlabeled set
#
# The authors' sampler draws one random clip from each DHF1K training video plus as many Kinetics-400
# clips per epoch (1 : 1; 1 : 10 for UCF-Sports). Unlabeled items have the same keys, `has_sal=False` and
# zero targets, so they batch together; the HD2S teacher supplies their targets during distillation.

# %%
aux_ds = data.UnlabeledClipDataset(aux, size=size, output="single", seed=seed)
single.set_epoch(0)
mixed = data.MixedClipDataset(single, aux_ds, ratio=1.0, seed=seed)
# one batch of the first few target clips and the first few auxiliary ones (not the whole epoch: at full scale
# that is 600 + 600 clips, ~11 GB of float tensors)
n_show = min(4, len(single), mixed.n_aux)
shown = list(range(n_show)) + list(range(len(single), len(single) + n_show))   # target items, then auxiliary
batch = next(iter(torch.utils.data.DataLoader(torch.utils.data.Subset(mixed, shown), batch_size=len(shown),
                                              shuffle=False)))
print(f"{len(single)} target + {mixed.n_aux} auxiliary clips per epoch; a batch of {n_show} + {n_show}: "
      f"has_sal = {batch['has_sal'].tolist()}")
print("auxiliary video ids:", sorted(set(batch["video"][n_show:]))[:3], "...")

# %%
assert len(mixed) == 2 * len(single) and batch["clip"].shape == (2 * n_show, 3, 16, *size)   # B×3×16×H×W
assert batch["has_sal"].bool().tolist() == [True] * n_show + [False] * n_show
assert not batch["saliency"][n_show:].any() and batch["saliency"][:n_show].any()   # zero targets when unlabeled

# %% [markdown]
# ## 5. `verify-data` on a damaged copy
#
# A user's copy can be incomplete in many ways. We break a copy of the tiny set on purpose (delete a map,
# truncate a video, rename an annotation folder) and let `verify-data` list what is wrong — one line per
# problem, then a summary and exit status 1.

# %%
import shutil

broken = out_dir / "tiny_dhf1k_broken"
shutil.rmtree(broken, ignore_errors=True)
shutil.copytree(tiny, broken)
(broken / "annotation/0002/maps/0003.png").unlink()
avi = broken / "video/003.AVI"
avi.write_bytes(avi.read_bytes()[: avi.stat().st_size // 2])
(broken / "annotation/0001").rename(broken / "annotation/0001_old")
status = tinyhd.cli.main(["verify-data", str(broken / "manifest.yaml"), str(broken)])

# %%
problems = manifest.verify(manifest.load_manifest(broken), broken).problems
text = "\n".join(map(str, problems))
assert status == 1
assert "20 frames but 19 maps" in text and "0001_old: unexpected item" in text and "video/003.AVI" in text

# %% [markdown]
# ## 6. Decoding: bit-exact with the authors' pipeline
#
# The authors decode with OpenCV and convert BGR→RGB. On their example video `0068.AVI`
# (`../shared/fixtures/official`, when present) every decoded frame must have the md5 they recorded.

# %%
import hashlib
import json

fixtures = official_fixtures_dir()
if fixtures is None:
    print("../shared/fixtures/official is absent: skipping the decode check")
    matched = None
else:
    expected = json.loads((fixtures / "decoded_frame_md5.json").read_text())
    decoded = video.read_video(fixtures / "0068.AVI")
    matched = sum(hashlib.md5(f.tobytes()).hexdigest() == expected[str(i)] for i, f in enumerate(decoded))
    print(f"0068.AVI: {decoded.shape[0]} frames of {decoded.shape[1]}×{decoded.shape[2]}; "
          f"{matched}/{len(expected)} frame md5s match the authors'")

# %%
if matched is not None:
    assert matched == len(expected) == 540

# %% [markdown]
# ## What this notebook does and does not show
#
# * It shows that the manifests state the papers' splits, that `verify-data` catches missing, truncated and
#   renamed items, that the loaders honour the data contract (shapes, MISO/MIMO targets, shared flip,
#   start padding of short videos, mixing with unlabeled clips), and that decoding matches the authors'.
# * The synthetic set is a stand-in: its scores say nothing about DHF1K. It is built so that the centre
#   prior is not enough (above), which makes training curves on it meaningful as *sanity* checks only.
# * The real-data manifests were written from the papers and the spec sheets; no real copy was available
#   to us, so the exact frame-folder file names of the UCF-Sports/Hollywood2 releases are unverified.
