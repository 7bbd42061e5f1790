"""The eval-time optimised model computes the same maps as the plain one (within 1e-5)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from tinyhd.errors import UserError
from tinyhd.fast import FusedConv3d, fold_batchnorm, optimize_for_inference, pixel_shuffle_frames_cl


def _randomise_bn(model: nn.Module) -> nn.Module:
    """Non-trivial BN statistics and affine terms, so that folding them is really exercised."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm3d, nn.BatchNorm2d)):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.2)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return model


def _assert_same_outputs(a, b, atol=1e-5):
    torch.testing.assert_close(a.saliency, b.saliency, atol=atol, rtol=0)
    assert len(a.maps) == len(b.maps)
    for x, y in zip(a.maps, b.maps):
        torch.testing.assert_close(x, y, atol=atol, rtol=0)
    for name in ("d1", "d2", "d3"):
        x, y = getattr(a, name), getattr(b, name)
        assert (x is None) == (y is None)
        if x is not None:
            torch.testing.assert_close(x, y, atol=atol, rtol=0)


@pytest.mark.parametrize("output, reduction", [("single", 1), ("multi", 1), ("single", 4)])
def test_optimised_model_matches_plain(output, reduction):
    from tinyhd.model import TinyHD

    torch.manual_seed(0)
    model = _randomise_bn(TinyHD(output=output, reduction=reduction)).eval()
    clip = torch.randn(1, 3, 16, 64, 96)
    fast = optimize_for_inference(model)
    with torch.inference_mode():
        ref, out = model(clip), fast(clip)
    _assert_same_outputs(out, ref)
    assert out.saliency.is_contiguous()
    # the pre-sigmoid logits agree too (a saturated sigmoid could hide a difference)
    logit = lambda p: torch.log(p) - torch.log1p(-p)
    torch.testing.assert_close(logit(out.saliency.double()), logit(ref.saliency.double()), atol=1e-4, rtol=0)
    # no BatchNorm or separate ReLU6 pass is left; the original is untouched
    assert not any(isinstance(m, (nn.BatchNorm3d, nn.BatchNorm2d, nn.ReLU6, nn.Upsample)) for m in fast.modules())
    assert any(isinstance(m, nn.BatchNorm3d) for m in model.modules())


def test_fold_only_path_matches_and_batch_of_two():
    from tinyhd.model import TinyHD

    torch.manual_seed(0)
    model = _randomise_bn(TinyHD(output="multi", reduction=4)).eval()
    clip = torch.randn(2, 3, 16, 64, 64)
    with torch.inference_mode():
        ref = model(clip)
        _assert_same_outputs(optimize_for_inference(model, channels_last=False)(clip), ref)
        _assert_same_outputs(optimize_for_inference(model)(clip), ref)


def test_fold_batchnorm_by_hand():
    torch.manual_seed(0)
    seq = _randomise_bn(nn.Sequential(nn.Conv3d(4, 6, 3, padding=1, bias=True), nn.BatchNorm3d(6), nn.ReLU6()))
    seq.eval()
    x = torch.randn(2, 4, 5, 6, 7)
    with torch.no_grad():
        ref = seq(x)
        bn = seq[1]
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        w_expected = seq[0].weight * scale.view(-1, 1, 1, 1, 1)
        b_expected = (seq[0].bias - bn.running_mean) * scale + bn.bias
        fold_batchnorm(seq)
    assert isinstance(seq[1], nn.Identity)
    torch.testing.assert_close(seq[0].weight, w_expected)
    torch.testing.assert_close(seq[0].bias, b_expected)
    torch.testing.assert_close(seq(x), ref, atol=1e-5, rtol=0)


def test_fold_batchnorm_refuses_train_mode():
    seq = nn.Sequential(nn.Conv3d(2, 2, 1), nn.BatchNorm3d(2)).train()
    with pytest.raises(UserError, match="eval mode"):
        fold_batchnorm(seq)


@pytest.mark.parametrize("relu6", [True, False])
@pytest.mark.parametrize("groups, kernel, stride", [(1, 1, 1), (8, 3, (2, 1, 1)), (8, (1, 3, 3), 1), (1, 3, 2)])
def test_fused_conv_matches_conv_and_clamp(relu6, groups, kernel, stride):
    torch.manual_seed(0)
    conv = nn.Conv3d(8, 8, kernel, stride=stride, padding=tuple(k // 2 for k in nn.modules.utils._triple(kernel)),
                     groups=groups, bias=True)
    x = torch.randn(1, 8, 6, 10, 12) * 3
    with torch.no_grad():
        ref = conv(x)
        ref = ref.clamp(0, 6) if relu6 else ref
        out = FusedConv3d(conv, relu6)(x)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)


def test_channels_last_pixel_shuffle_matches_frame_wise_pixel_shuffle():
    from tinyhd.encoder import pixel_shuffle_frames

    x = torch.randn(2, 12, 3, 4, 5)
    expected = pixel_shuffle_frames(x)
    for inp in (x, x.contiguous(memory_format=torch.channels_last_3d)):
        torch.testing.assert_close(pixel_shuffle_frames_cl(inp), expected, atol=0, rtol=0)
    with pytest.raises(ValueError, match="divisible"):
        pixel_shuffle_frames_cl(torch.randn(1, 6, 1, 2, 2))


@pytest.mark.parametrize("t", [1, 2, 5, 8])
def test_upsampling_replacements_match_nn_upsample(t):
    from tinyhd.fast import SpatialUpsample2x, TemporalUpsample2x

    x = torch.randn(2, 7, t, 6, 5)
    for scale, ours in [((2, 1, 1), TemporalUpsample2x()), ((1, 2, 2), SpatialUpsample2x())]:
        ref = nn.Upsample(scale_factor=scale, mode="trilinear", align_corners=True)(x)
        for inp in (x, x.contiguous(memory_format=torch.channels_last_3d)):
            torch.testing.assert_close(ours(inp), ref, atol=1e-6, rtol=0)


def test_optimize_rejects_other_modules():
    with pytest.raises(UserError, match="TinyHD"):
        optimize_for_inference(nn.Linear(2, 2))


def test_keep_freed_memory_keeps_a_large_freed_block():
    """After keep_freed_memory, a freed 1.5 GiB block stays in the process (glibc does not trim it), so the next
    step reuses its pages instead of re-faulting them. With the old 1 GiB trim threshold it was returned: HD2S on
    the fly re-faulted ~1.4 M pages per 192×256 distillation step that way."""
    import os
    import subprocess
    import sys

    script = (
        "import ctypes, sys\n"
        "from tinyhd.fast import keep_freed_memory\n"
        "if not keep_freed_memory(): sys.exit(3)\n"
        "libc = ctypes.CDLL(None)\n"
        "libc.malloc.restype = ctypes.c_void_p\n"
        "libc.free.argtypes = [ctypes.c_void_p]\n"
        "rss = lambda: int(open('/proc/self/statm').read().split()[1]) * 4096\n"
        "n = 3 << 29\n"
        "r0 = rss()\n"
        "p = libc.malloc(n)\n"
        "ctypes.memset(p, 1, n)\n"
        "libc.free(p)\n"
        "print((rss() - r0) >> 20)\n"
    )
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    if r.returncode == 3 or not os.path.exists("/proc/self/statm"):
        pytest.skip("glibc malloc (mallopt) or /proc not available here")
    assert r.returncode == 0, r.stderr[-2000:]
    assert int(r.stdout.split()[-1]) > 1400, f"only {r.stdout.strip()} MiB of the freed 1536 MiB block were kept"
