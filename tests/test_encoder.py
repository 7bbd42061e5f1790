"""Inflated MobileNetV2 encoder: the inflation rule, the temporal config, and the blocks B0..B3."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from tinyhd.encoder import (ENCODER_TEMPORAL, MobileNetV2Encoder3d, inflate_2d_to_3d, mobilenet_v2_features_2d,
                            pixel_shuffle_frames, spatial_conv_name)
from tinyhd.errors import UserError


def test_inflate_replicates_kernels_and_copies_bn_affine_only() -> None:
    torch.manual_seed(0)
    net2d = nn.Sequential(nn.Conv2d(3, 5, 3, stride=2, padding=1, bias=True), nn.BatchNorm2d(5), nn.ReLU6(),
                          nn.Conv2d(5, 5, 3, padding=1, groups=5, bias=False), nn.Conv2d(5, 4, 1, bias=False))
    with torch.no_grad():
        net2d[1].weight.uniform_(0.5, 2)
        net2d[1].bias.normal_()
        net2d[1].running_mean.normal_()
        net2d[1].running_var.uniform_(2, 3)
    net3d = inflate_2d_to_3d(net2d, {"3": (5, 1, 2)})
    c0, bn, c3, c4 = net3d[0], net3d[1], net3d[3], net3d[4]
    assert isinstance(c0, nn.Conv3d) and isinstance(bn, nn.BatchNorm3d) and isinstance(net3d[2], nn.ReLU6)
    # un-configured: temporal = first spatial value (3×3 stride-2 -> 3×3×3 stride 2×2×2; 1×1 -> 1×1×1)
    assert (c0.kernel_size, c0.stride, c0.padding) == ((3, 3, 3), (2, 2, 2), (1, 1, 1))
    assert (c3.kernel_size, c3.stride, c3.padding, c3.groups) == ((5, 3, 3), (1, 1, 1), (2, 1, 1), 5)
    assert c4.kernel_size == (1, 1, 1)
    for t in range(3):  # every temporal slice is the 2D kernel, unscaled
        assert torch.equal(c0.weight[:, :, t], net2d[0].weight)
    assert torch.equal(c3.weight[:, :, 4], net2d[3].weight) and torch.equal(c0.bias, net2d[0].bias)
    assert torch.equal(bn.weight, net2d[1].weight) and torch.equal(bn.bias, net2d[1].bias)
    assert torch.equal(bn.running_mean, torch.zeros(5)) and torch.equal(bn.running_var, torch.ones(5))
    assert isinstance(net2d[0], nn.Conv2d)  # the 2D network is left untouched
    with pytest.raises(KeyError):
        inflate_2d_to_3d(net2d, {"7": (3, 1, 1)})


def test_encoder_temporal_config_matches_the_sheet() -> None:
    net2d = mobilenet_v2_features_2d(4)
    for config in "SM":
        enc = MobileNetV2Encoder3d(4, config)
        for i, (kt, st, pt) in ENCODER_TEMPORAL[config].items():
            conv = enc.features.get_submodule(spatial_conv_name(net2d, i))
            assert (conv.kernel_size[0], conv.stride[0], conv.padding[0]) == (kt, st, pt)
            assert conv.kernel_size[1:] == (3, 3)
        # every other conv is 1×1×1
        spatial = {spatial_conv_name(net2d, i) for i in range(18)}
        for name, m in enc.features.named_modules():
            if isinstance(m, nn.Conv3d) and name not in spatial:
                assert m.kernel_size == (1, 1, 1), name
    assert ENCODER_TEMPORAL["S"][2] == (3, 1, 1)  # dw 2: spatial stride 2, temporal stride 1
    assert ENCODER_TEMPORAL["M"][14] == (2, 1, 0) and ENCODER_TEMPORAL["M"][17] == (1, 1, 0)


@pytest.mark.parametrize("reduction,config,channels,b3_t", [
    (1, "S", [28, 24, 136, 520], 2), (2, "M", [14, 12, 68, 260], 1), (4, "S", [7, 6, 34, 130], 2),
    (4, "M", [7, 6, 34, 130], 1)])
def test_blocks_channels_and_shapes(reduction: int, config: str, channels: list, b3_t: int) -> None:
    enc = MobileNetV2Encoder3d(reduction, config).eval()
    assert enc.block_channels == channels
    with torch.no_grad():
        blocks = enc(torch.randn(1, 3, 16, 64, 96))
    assert [tuple(b.shape[1:]) for b in blocks] == [
        (channels[0], 8, 32, 48), (channels[1], 4, 16, 24), (channels[2], 2, 8, 12), (channels[3], b3_t, 4, 6)]


def test_pixel_shuffle_is_framewise_in_pixelshuffle_order() -> None:
    x = torch.arange(2 * 8 * 3 * 2 * 2, dtype=torch.float32).reshape(2, 8, 3, 2, 2)  # B×C×T×H×W
    y = pixel_shuffle_frames(x)
    assert y.shape == (2, 2, 3, 4, 4)
    for c in range(2):
        for i in range(2):
            for j in range(2):  # output channel c at sub-pixel (i, j) <- input channel 4c+2i+j
                assert torch.equal(y[:, c, :, i::2, j::2], x[:, 4 * c + 2 * i + j])


def _clean_frames(lo: int, hi: int, n: int, k: int, s: int, p: int) -> tuple[int, int, int]:
    """Output frames of a temporal conv whose whole window lies in the clean input range [lo, hi] (no padding)."""
    n_out = (n + 2 * p - k) // s + 1
    clean = [t for t in range(n_out) if s * t - p >= lo and s * t - p + k - 1 <= hi]
    return (min(clean), max(clean), n_out) if clean else (1, 0, n_out)


@pytest.mark.parametrize("config", ["S", "M"])
def test_constant_clip_reproduces_the_2d_network_away_from_the_clip_borders(config: str) -> None:
    """Kernels replicated without 1/kt: on a temporally constant clip every frame whose temporal receptive field
    avoids the zero padding equals the 2D network whose spatial kernels are scaled by kt (BN in eval mode)."""
    torch.manual_seed(0)
    net2d = mobilenet_v2_features_2d(4).eval()
    with torch.no_grad():
        for m in net2d.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.1)
    temporal = ENCODER_TEMPORAL[config]
    names = {spatial_conv_name(net2d, i): t for i, t in temporal.items()}
    net3d = inflate_2d_to_3d(net2d, names).eval()
    scaled2d = copy.deepcopy(net2d)
    with torch.no_grad():
        for name, (kt, _, _) in names.items():
            scaled2d.get_submodule(name).weight.mul_(kt)
    image = torch.randn(1, 3, 32, 32) * 0.5
    clip = image.unsqueeze(2).expand(-1, -1, 224, -1, -1).contiguous()  # T=224 identical frames
    lo, hi, n = 0, 223, 224
    x2, x3 = image, clip
    checked = 0
    with torch.no_grad():
        for i, (l2, l3) in enumerate(zip(scaled2d, net3d)):
            x2, x3 = l2(x2), l3(x3)
            kt, st, pt = temporal.get(i, (1, 1, 0))
            lo, hi, n = _clean_frames(lo, hi, n, kt, st, pt)
            assert x3.shape[2] == n
            if lo <= hi:
                interior = x3[:, :, lo:hi + 1]
                assert torch.allclose(interior, x2.unsqueeze(2).expand_as(interior), atol=1e-4, rtol=1e-4), i
                checked += 1
            # a border frame really differs (zero padding), so the interior check is not vacuous
            if i == 0:
                assert not torch.allclose(x3[:, :, 0], x2, atol=1e-3)
    assert checked == 19  # every layer, the 1×1 to 1280 included, has frames free of border effects


def test_pretrained_backbone_offline_gives_a_clear_error(monkeypatch, tmp_path) -> None:
    import torchvision.models._api as api

    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(api, "load_state_dict_from_url", offline)
    with pytest.raises(UserError, match=r"mobilenet_v2-.*\.pth.*Offline, copy that file to .*checkpoints"):
        MobileNetV2Encoder3d(1, "S", pretrained=True)


@pytest.fixture()
def fake_imagenet(monkeypatch):
    """A stand-in for torchvision's ImageNet MobileNetV2 (random, non-trivial BN), never downloaded."""
    import tinyhd.encoder as enc

    torch.manual_seed(5)
    net = mobilenet_v2_features_2d(1)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_()
                m.running_mean.normal_()
    monkeypatch.setattr(enc, "imagenet_mobilenet_v2_features", lambda: copy.deepcopy(net))
    return net


def test_pretrained_backbone_is_the_inflated_imagenet_network(fake_imagenet) -> None:
    from tinyhd.model import TinyHD

    model = TinyHD("single", reduction=1, pretrained_backbone=True)
    features = model.encoder.features
    w2d = fake_imagenet[4].conv[1][0].weight                       # dw conv of feature 4: 144×1×3×3
    w3d = features[4].conv[1][0].weight                            # 144×1×3×3×3
    assert all(torch.equal(w3d[:, :, t], w2d) for t in range(3))
    assert torch.equal(features[18][1].weight, fake_imagenet[18][1].weight)
    assert torch.equal(features[18][1].running_mean, torch.zeros(1280))  # stats not copied


def test_pretrained_backbone_at_quarter_width_is_kernel_averaged(fake_imagenet) -> None:
    from tinyhd.model import TinyHD

    model = TinyHD("multi", reduction=4, pretrained_backbone=True)
    stem2d = fake_imagenet[0][0].weight                            # 32×3×3×3
    stem3d = model.encoder.features[0][0].weight                   # 8×3×3×3×3
    # stem/depthwise rule (sheet (d)): new channel c' = mean of old channels c' + j·O/r, j = 0..3
    expected = stem2d.reshape(4, 8, 3, 3, 3).mean(0)
    assert torch.allclose(stem3d[:, :, 1], expected) and torch.allclose(stem3d[:, :, 0], expected)
    bn = fake_imagenet[0][1].weight
    assert torch.allclose(model.encoder.features[0][1].weight, bn.view(4, -1).mean(0))
    # M config: dw 14 has a 2-frame temporal kernel, both slices the averaged 2D kernel
    assert model.encoder.features[14].conv[1][0].weight.shape[2] == 2
