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
# # 02 · The encoder: a 2D MobileNetV2 inflated to 3D, its four feature blocks, its cost, and channel reduction
#
# TinyHD's encoder is ImageNet's MobileNetV2 turned into a video network by *inflation*. This notebook
#
# 1. states the inflation rule and checks what it does to a temporally constant clip (§3.2);
# 2. checks the shapes of the four multi-level feature blocks B0..B3 against the authors' code (spec sheet (a));
# 3. counts parameters and multiply-accumulates for TinyHD-S/M at ×1, ×½, ×¼ beside Tables 1a and 5a;
# 4. demonstrates the kernel-averaging initialisation of a reduced student (§3.3.2, sheet (d)).
#
# Everything runs on random weights: no download is needed.

# %% tags=["parameters"]
seed = 0
image_size = (96, 128)     # H×W of the image used for the inflation checks
clip_size = (192, 256)     # H×W of the clip whose block shapes are checked (the paper's input size)
count_at = (64, 64)         # trace MACs at this H×W and scale by area (exact for TinyHD); None: at clip_size
table3 = False             # also count Table 3's homogeneous-decoder variants (9 more models, ~1 min)
out_dir = None             # None: runs/02_encoder_inflation

# %%
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
import torchvision

import tinyhd
from tinyhd import complexity, encoder, reduction
from tinyhd.paths import runs_dir

torch.set_num_threads(2)
torch.manual_seed(seed)
# papermill -y "clip_size: [192, 256]" passes lists: as tuples, the checks below that compare sizes still run
image_size, clip_size = tuple(image_size), tuple(clip_size)
count_at = tuple(count_at) if count_at is not None else None
out_dir = Path(out_dir) if out_dir is not None else runs_dir() / "02_encoder_inflation"
out_dir.mkdir(parents=True, exist_ok=True)
pd.set_option("display.width", 160)

# %% [markdown]
# ## 1. Inflation
#
# > "A 2D convolutional kernel of size $C_{in} \times C_{out} \times H \times W$ can be inflated into a 3D kernel
# > of size $C_{in} \times C_{out} \times T \times H \times W$ by replicating its weights along the temporal
# > dimension T. This simple trick provides a convenient initialization that responds to common spatial
# > patterns and can be gradually adapted to temporal dynamics during training, eliminating the burden of
# > learning basic spatial structures from scratch." — TinyHD §3.2
#
# The authors' code (sheet (a)) adds the details the paper leaves out: every `Conv2d` becomes a `Conv3d` and
# every `BatchNorm2d` a `BatchNorm3d`; the kernel is copied into each of the $k_t$ temporal slices **without**
# the $1/k_t$ rescaling of I3D; BN γ/β are copied but the ImageNet running statistics are **not** (the inflated
# BNs start at mean 0, variance 1); only the stem and the depthwise 3×3 convs get a temporal extent
# (`tinyhd.encoder.ENCODER_TEMPORAL`), 1×1 convs become 1×1×1.
#
# We take torchvision's 2D MobileNetV2 with random weights (and random BN γ/β, so that BN is not the
# identity) and inflate it with `tinyhd.encoder.inflate_2d_to_3d`.

# %%
features2d = torchvision.models.mobilenet_v2(weights=None).features
with torch.no_grad():
    for m in features2d.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.weight.uniform_(0.5, 1.5)
            m.bias.normal_(0, 0.1)
features2d.eval()

T = 8
image = torch.randn(1, 3, *image_size)                                  # B×C×H×W
clip = image.unsqueeze(2).expand(-1, -1, T, -1, -1).contiguous()         # B×C×T×H×W, temporally constant


def layer_outputs(net, x):
    outs = []
    with torch.no_grad():
        for layer in net:
            x = layer(x)
            outs.append(x)
    return outs


out2d = layer_outputs(features2d, image)

# %% [markdown]
# **Check 1 — the mechanics.** With a temporal kernel of 1 everywhere (the config `(1, 1, 0)` for every
# stem/depthwise conv), the inflated network must reproduce the 2D network *exactly*, frame by frame, at every
# one of the 19 layers: this checks the Conv/BN conversion, the kept ReLU6s and residual connections.

# %%
names_t1 = {encoder.spatial_conv_name(features2d, i): (1, 1, 0) for i in range(18)}
net_t1 = encoder.inflate_2d_to_3d(features2d, names_t1).eval()
out_t1 = layer_outputs(net_t1, clip)
err_t1 = [max((o3[:, :, t] - o2).abs().max().item() for t in range(T)) / o2.abs().max().item()
          for o3, o2 in zip(out_t1, out2d)]
print("max relative error per layer:", np.array(err_t1).round(8))
assert len(out_t1) == 19 and all(o3.shape[2] == T for o3 in out_t1)
assert max(err_t1) < 1e-5

# %% [markdown]
# **Check 2 — the authors' config, no rescaling.** With the released temporal kernels the response to a
# constant clip is *not* the 2D response: a $k_t$-tap kernel whose taps are all the 2D kernel sums $k_t$ equal
# frames, so a linear layer answers with $k_t\times$ the 2D response in interior frames and $(k_t-1)\times$ in
# frames whose window reaches the zero padding. We check this layer by layer where it is exact (each conv fed
# the constant version of its 2D input): the stem (k 3, stride 2, pad 1: 16 → 8 frames, the first one touching
# the padding), the depthwise conv of feature 1, and a pointwise 1×1×1 conv (exactly 1×).

# %%
config = "S"
names_s = {encoder.spatial_conv_name(features2d, i): tkp for i, tkp in encoder.ENCODER_TEMPORAL[config].items()}
net_s = encoder.inflate_2d_to_3d(features2d, names_s).eval()


def conv_ratio(conv3d, conv2d, x2d, frames):
    """Per output frame: conv3d(constant clip of x2d) / conv2d(x2d), by least squares."""
    with torch.no_grad():
        y2 = conv2d(x2d)
        y3 = conv3d(x2d.unsqueeze(2).expand(-1, -1, frames, -1, -1).contiguous())
    ratios = [float((y3[:, :, t] * y2).sum() / (y2 * y2).sum()) for t in range(y3.shape[2])]
    resid = max(float((y3[:, :, t] - r * y2).abs().max() / y2.abs().max()) for t, r in enumerate(ratios))
    return np.array(ratios), resid


stem_ratio, stem_res = conv_ratio(net_s[0][0], features2d[0][0], image, 16)
dw_ratio, dw_res = conv_ratio(net_s[1].conv[0][0], features2d[1].conv[0][0], out2d[0], 8)
pw_ratio, pw_res = conv_ratio(net_s[2].conv[0][0], features2d[2].conv[0][0], out2d[1], 8)
print("stem      ", stem_ratio.round(6), f"residual {stem_res:.1e}")
print("dw feat 1 ", dw_ratio.round(6), f"residual {dw_res:.1e}")
print("pw feat 2 ", pw_ratio.round(6), f"residual {pw_res:.1e}")
assert np.allclose(stem_ratio, [2] + [3] * 7, atol=1e-5) and stem_res < 1e-5   # 16 → 8 frames
assert np.allclose(dw_ratio, [2] + [3] * 6 + [2], atol=1e-5) and dw_res < 1e-5
assert np.allclose(pw_ratio, 1, atol=1e-6) and pw_res < 1e-5
assert torch.equal(net_s[0][0].weight[:, :, 0], features2d[0][0].weight)      # each slice = the 2D kernel
assert torch.equal(net_s[0][0].weight[:, :, 2], features2d[0][0].weight)

# %% [markdown]
# Through BN and ReLU6 the scale no longer propagates linearly, so deeper layers of the inflated network are
# only *similar* to the 2D ones — "a convenient initialization that responds to common spatial patterns",
# as the paper says, not a copy. The figure shows, per layer, the cosine similarity between the 2D response
# and the 3D response (middle frame) for the released S config, and the exact 1.0 of the $k_t=1$ network.

# %%
out_s = layer_outputs(net_s, image.unsqueeze(2).expand(-1, -1, 16, -1, -1).contiguous())


def cosine(a, b):
    return float(torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0))


cos_s = [cosine(o3[:, :, o3.shape[2] // 2], o2) for o3, o2 in zip(out_s, out2d)]
cos_t1 = [cosine(o3[:, :, T // 2], o2) for o3, o2 in zip(out_t1, out2d)]
fig, ax = plt.subplots(figsize=(8, 3))
ax.plot(range(19), cos_t1, "o-", label="temporal kernel 1 everywhere (exact)")
ax.plot(range(19), cos_s, "s-", label="released S config (kt = 3, no 1/kt)")
ax.set(xlabel="feature layer", ylabel="cosine(3D middle frame, 2D)", ylim=(0, 1.05), xticks=range(19),
       title="Inflated MobileNetV2 on a temporally constant clip")
ax.legend()
fig.tight_layout()
fig.savefig(out_dir / "inflation_cosine.png", dpi=120)
print("cosine per layer (S config):", np.round(cos_s, 3))
assert np.allclose(cos_t1, 1, atol=1e-5)

# %% [markdown]
# ## 2. The four feature blocks
#
# > "Given the inflated MobileNetV2 encoder, we follow the approach in FastSal [14] to extract four blocks of
# > concatenated feature from the whole set of layers." — TinyHD §3.2
#
# The authors' code (sheet (a)) concatenates the outputs of features 1..18 into five groups, pixel-shuffles
# four of them (2×, frame by frame: C → C/4, H, W → 2H, 2W) and forms B0 = f1 ⊕ PS(f2⊕f3), B1 = PS(f4..f6),
# B2 = PS(f7..f13), B3 = PS(f14..f18). The S and M encoders differ only in the temporal kernels of features
# 14–17 (M: k 2 then 1, so B3 has one frame). The sheet's table, for a 16×192×256 clip:

# %%
SHEET_BLOCKS = {  # channels at ×1/×½/×¼, T×H×W for S and M (sheet (a), "Results")
    "B0": ([28, 14, 7], (8, 96, 128), (8, 96, 128)),
    "B1": ([24, 12, 6], (4, 48, 64), (4, 48, 64)),
    "B2": ([136, 68, 34], (2, 24, 32), (2, 24, 32)),
    "B3": ([520, 260, 130], (2, 12, 16), (1, 12, 16)),
}
rows = []
shapes = {}
for cfg in ("S", "M"):
    enc = encoder.MobileNetV2Encoder3d(reduction=1, config=cfg).eval()
    shapes[cfg] = encoder.block_shapes(enc, (3, 16, *clip_size))
for r in (1, 2, 4):
    for cfg in ("S", "M"):
        enc = encoder.MobileNetV2Encoder3d(reduction=r, config=cfg)
        for b, ch in enumerate(enc.block_channels):
            rows.append({"block": f"B{b}", "config": cfg, "reduction": f"×1/{r}" if r > 1 else "×1",
                         "channels": ch, "T×H×W (×1 run)": "×".join(map(str, shapes[cfg][b][1:]))})
blocks = pd.DataFrame(rows).pivot_table(index=["block", "config"], columns="reduction", values="channels")
print(blocks)
print({cfg: [s for s in shapes[cfg]] for cfg in shapes})

# %%
H, W = clip_size
scale = (192 / H, 256 / W)
for b, (chs, thw_s, thw_m) in SHEET_BLOCKS.items():
    i = int(b[1])
    for cfg, thw in (("S", thw_s), ("M", thw_m)):
        expect = (chs[0], thw[0], round(thw[1] / scale[0]), round(thw[2] / scale[1]))
        assert shapes[cfg][i] == expect, (b, cfg, shapes[cfg][i], expect)
        for r, ch in zip((1, 2, 4), chs):
            assert blocks.loc[(b, cfg), f"×1/{r}" if r > 1 else "×1"] == ch
# sheet (d): per-feature widths of the ×¼ encoder
rc4 = encoder.MobileNetV2Encoder3d(reduction=4, config="S")
assert rc4.feature_channels == [8, 4, 6, 6, 8, 8, 8, 16, 16, 16, 16, 24, 24, 24, 40, 40, 40, 80, 320]

# %% [markdown]
# ## 3. Parameters and multiply-accumulates (Tables 1a and 5a)
#
# > "We also report the number of multiply-accumulate operations (MAC) carried out by each method to generate a
# > 16-frame saliency sequence." — TinyHD §4.3; Table 1a: TinyHD-S 5.57×16 GMACs, 3.94M params; TinyHD-M 7.95×1,
# > 3.92M. Table 5a: GMAC for 16 maps 89.12 / 59.52 / 37.44 (S ×1, ×½, ×¼) and 7.95 / 6.92 / 4.06 (M).
#
# `tinyhd.count_complexity` traces the model with fvcore and counts what the authors' tool (ptflops 0.6.9,
# module hooks) counts: conv MACs (+ bias), BN at 2 per element, ReLU6 and Upsample at 1 per output element,
# and nothing for pixel shuffle, additions and sigmoids. A MISO model (S) needs one forward per map, so its
# per-16-map cost is 16 forwards; a MIMO model (M) makes 16 maps in one forward.

# %%
names = [n for n in complexity.VARIANTS if n.startswith("TinyHD")]
if table3:
    names += [n for n in complexity.VARIANTS if n.startswith("D")]
table = complexity.complexity_table(names, input_shape=(1, 3, 16, *clip_size), count_at=count_at,
                                   by_operator=True)
print(table[["params", "paper params", "GMAC/forward", "GMAC/16 maps", "paper GMAC/16 maps", "ratio"]].to_string())

# %%
if tuple(clip_size) == (192, 256):
    for name, sheet in complexity.SHEET_COMPLEXITY.items():
        row = table.loc[name]
        assert row["params"] == sheet["params"], name                                # to the unit
        assert abs(row["GMAC/forward"] / sheet["gmacs"] - 1) < 0.01, name             # sheet's ptflops
        assert abs(row["GMAC/16 maps"] - row["paper GMAC/16 maps"]) <= 0.03, name    # paper's printed figure
    print("S ×1 per map:", table.loc["TinyHD-S ×1", "GMAC/forward"], "GMAC (paper 5.57);",
          "M ×1 per 16 maps:", table.loc["TinyHD-M ×1", "GMAC/16 maps"], "(paper 7.95)")
else:
    print(f"clip_size {clip_size} is not the paper's 192×256: Tables 1a/5a are not compared (asserted) here")

# %% [markdown]
# Where the MACs go (GMAC per forward, by operator). The spec sheet measured the authors' model with ptflops
# 0.7.5 and got slightly more for the variants that upsample (e.g. M ×1: 7.975 vs our 7.952, paper 7.95): the
# difference is exactly one more count of the Upsample outputs — ptflops 0.7 also patches `F.interpolate`,
# which fires inside the `nn.Upsample` hook. The paper's ptflops 0.6.9 counted them once, as we do
# (`tests/test_complexity.py` checks this for all six variants).

# %%
ops = table[[c for c in table.columns if c.endswith("GMAC/fwd")]]
print(ops.to_string())
if tuple(clip_size) == (192, 256):
    m1 = table.loc["TinyHD-M ×1"]
    assert abs(m1["GMAC/forward"] + m1["upsample GMAC/fwd"] - 7.975) < 0.0006   # = the sheet's ptflops 0.7.5
    assert table.loc["TinyHD-S ×1", "upsample GMAC/fwd"] == 0                    # ×1 S: pixel shuffles only
    assert (ops.sum(axis=1) - table["GMAC/forward"]).abs().max() < 1e-3          # nothing else is counted

# %%
fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
six = table.loc[[n for n in table.index if n.startswith("TinyHD")]]
x = np.arange(len(six))
for ax, (ours, paper, label) in zip(axes, [("GMAC/16 maps", "paper GMAC/16 maps", "GMAC per 16 maps"),
                                           ("params", "paper params", "parameters")]):
    ax.bar(x - 0.2, six[ours], 0.4, label="ours (count_complexity)")
    ax.bar(x + 0.2, six[paper], 0.4, label="paper (Tables 1a, 5a)")
    ax.set_xticks(x, six.index, rotation=30)
    ax.set_ylabel(label)
    ax.set_yscale("log")
axes[0].legend()
fig.suptitle("TinyHD complexity: ours beside the paper")
fig.tight_layout()
fig.savefig(out_dir / "complexity.png", dpi=120)

# %% [markdown]
# ## 4. Channel reduction by kernel averaging (§3.3.2)
#
# > "at each of them, a new student is initialized by averaging the weights of each pair of consecutive
# > kernels into a new kernel. Although kernel ordering is essentially random, this approach has been shown to
# > provide a meaningful initialization to the new student." — TinyHD §3.3.2
#
# "Consecutive" in the authors' code (sheet (d)) means consecutive in the *row-major flattening* of the
# weight: a kernel $W[O, I, k_t, k_h, k_w]$ is reshaped to $[k, O', I', k_t, k_h, k_w]$ and averaged over $k$.
# For a depthwise kernel ($I=1$) or the stem ($I=3$) that averages channels $c'$ and $c' + O/r$ — strided, not
# adjacent; for a pointwise kernel ($k=r^2$) it mixes rows and columns of the weight matrix. BN γ/β follow the
# same rule, BN running statistics are not transferred, and decoders and fusion start fresh (their widths
# change with the reduction). `tinyhd.reduce_channels(model, factor)` does this for a whole TinyHD.

# %%
torch.manual_seed(seed)
full = tinyhd.TinyHD(output="single", reduction=1)
half = tinyhd.reduce_channels(full, 2)
quarter = tinyhd.reduce_channels(half, 2)   # the paper's successive students: ×1 → ×½ → ×¼
n_params = {name: sum(p.numel() for p in m.parameters()) for name, m in
            [("×1", full), ("×½", half), ("×¼", quarter)]}
print(n_params, quarter.config)
assert n_params == {"×1": 3_940_981, "×½": 1_370_291, "×¼": 513_121}   # Table 5a: 3.94M, 1.37M, 513.1k

# %%
sd_full, sd_half, sd_quarter = full.state_dict(), half.state_dict(), quarter.state_dict()
dw_key = "encoder.features.1.conv.0.0.weight"    # depthwise 3×3×3 of feature 1: 32 channels at ×1
pw_key = "encoder.features.1.conv.1.weight"      # its pointwise projection 32 → 16
print(dw_key, tuple(sd_full[dw_key].shape), "→", tuple(sd_half[dw_key].shape), "→", tuple(sd_quarter[dw_key].shape))
W = sd_full[dw_key]
assert torch.allclose(sd_half[dw_key][5], (W[5] + W[5 + 16]) / 2)                        # c' and c' + O/r
assert torch.allclose(sd_quarter[dw_key][5], (W[5] + W[13] + W[21] + W[29]) / 4, atol=1e-7)
P = sd_full[pw_key].flatten(1)                                                           # 16×32 matrix
flat = P.flatten()
expect = torch.stack([flat[q * 8 * 16 + 3 * 16 + 7] for q in range(4)]).mean()       # new[o'=3, i'=7]
assert torch.allclose(sd_half[pw_key].flatten(1)[3, 7], expect)
for key in sd_half:
    if key.startswith("encoder.") and key.endswith("running_var"):
        assert torch.all(sd_half[key] == 1)                                             # stats start fresh

# averaging acts on (O, I) only, so it commutes with inflation: reduce the 2D kernel, then replicate over T
w2d = features2d[1].conv[0][0].weight                                                   # 32×1×3×3
inflated_then_reduced = reduction.average_kernels(
    w2d.unsqueeze(2).expand(-1, -1, 3, -1, -1), (16, 1, 3, 3, 3))
reduced_then_inflated = reduction.average_kernels(w2d, (16, 1, 3, 3)).unsqueeze(2).expand(-1, -1, 3, -1, -1)
assert torch.allclose(inflated_then_reduced, reduced_then_inflated)

# %% [markdown]
# Which entries of the 16×32 pointwise matrix are averaged into each entry of the 8×16 ×½ matrix: the
# row-major flattening is cut into $r^2 = 4$ consecutive quarters, and entry $(o', i')$ averages the
# $(o', i')$-th element of each quarter. Written out (when $r^2$ divides $O$):
# $\mathrm{new}[o', i'] = \frac{1}{r^2}\sum_q W[q\,O/r^2 + \lfloor o'/r \rfloor,\ (o' \bmod r)\,I/r + i']$ —
# rows strided by $O/r^2$, and odd new rows draw on the *second half* of the old columns.

# %%
group = (torch.arange(16 * 32) // (8 * 16)).view(16, 32)            # which quarter each entry falls in
target = (torch.arange(16 * 32) % (8 * 16)).view(16, 32)            # which new entry it is averaged into
fig, axes = plt.subplots(1, 2, figsize=(11, 3.2))
axes[0].imshow(group, cmap="Pastel1")
axes[0].set_title("×1 pointwise weight (16×32): quarter q of the flattening")
sel = target == 3 * 16 + 7
axes[0].scatter(*np.nonzero(sel.numpy().T), c="k", marker="x", label="averaged into new[3, 7]")
axes[0].legend(loc="lower right", fontsize=8)
vmax = float(sd_half[pw_key].abs().max())
axes[1].imshow(sd_half[pw_key].flatten(1), cmap="coolwarm", vmin=-vmax, vmax=vmax)
axes[1].set_title("×½ weight (8×16) after averaging")
fig.tight_layout()
fig.savefig(out_dir / "kernel_averaging.png", dpi=120)
rows_hit, cols_hit = np.nonzero(sel.numpy())
assert sorted(rows_hit) == [1, 5, 9, 13] and set(cols_hit) == {7 + 16}   # q·O/r² + ⌊3/2⌋, (3 mod 2)·I/r + 7

# %%
with torch.no_grad():
    clip_small = torch.randn(1, 3, 16, 64, 96)
    maps = {name: m.eval()(clip_small).saliency for name, m in [("×1", full), ("×½", half), ("×¼", quarter)]}
print({k: tuple(v.shape) for k, v in maps.items()})
assert all(v.shape == (1, 1, 64, 96) and bool(((v > 0) & (v < 1)).all()) for v in maps.values())
print("figures in", out_dir)
