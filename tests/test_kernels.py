"""The fused C++ CPU kernels (tinyhd/csrc/cpu_kernels.cpp) compute what the modules they replace compute."""
from __future__ import annotations

import shutil

import pytest
import torch
import torch.nn.functional as F

from tinyhd.fast import TemporalUpsample2x, _time_map, optimize_for_inference, pixel_shuffle_frames_cl

CL = torch.channels_last_3d


@pytest.fixture(scope="module")
def kernels():
    from tinyhd.kernels import cpu_kernels, unavailable_reason

    if shutil.which("c++") is None and shutil.which("g++") is None:
        pytest.skip("no C++ compiler on this machine: tinyhd.fast keeps the oneDNN path")
    module = cpu_kernels()
    assert module is not None, f"a C++ compiler is present but the kernels did not build: {unavailable_reason()}"
    return module


def _irb_reference(x, we, be, wd, bd, wp, bp, st=1):
    kt = wd.shape[2]
    h = F.conv3d(x, we, be).clamp(0, 6)
    g = F.conv3d(h, wd, bd, stride=(st, 1, 1), padding=(kt // 2, 1, 1), groups=wd.shape[0]).clamp(0, 6)
    return F.conv3d(g, wp, bp)


@pytest.mark.parametrize("cin, hidden, cout, t, h, w, kt, st, batch", [
    (7, 14, 1, 16, 24, 40, 3, 1, 1),     # W not a multiple of the 64-pixel block
    (2, 4, 2, 5, 33, 70, 3, 1, 2),       # odd sizes, batch of two, rows not a multiple of the band
    (28, 56, 6, 3, 8, 130, 3, 1, 1),     # a band taller than the image, W just above two blocks
    (5, 10, 3, 1, 6, 9, 3, 1, 1),        # T=1: both temporal neighbours are padding
    (6, 12, 4, 4, 10, 20, 1, 1, 1),      # kt=1 (the S model's T1 code)
    (9, 18, 5, 8, 12, 70, 3, 2, 1),      # T↓: temporal stride 2, even T
    (4, 8, 2, 5, 7, 9, 3, 2, 2),         # T↓ with odd T (⌈T/2⌉ output frames)
    (3, 6, 1, 2, 66, 20, 3, 2, 1),       # T↓ 2 → 1, several bands
    (20, 40, 28, 3, 5, 37, 3, 1, 1),     # vectorised 16×16 transposes in and out, partial last tiles
    (33, 60, 17, 2, 4, 48, 3, 1, 1),     # three channel tiles in, two out
])
def test_fused_irb_matches_three_convolutions(kernels, cin, hidden, cout, t, h, w, kt, st, batch):
    g = torch.Generator().manual_seed(cin * 100 + t)
    x = (4 * torch.randn(batch, cin, t, h, w, generator=g)).contiguous(memory_format=CL)
    we, be = torch.randn(hidden, cin, 1, 1, 1, generator=g) * 0.5, torch.randn(hidden, generator=g)
    wd, bd = torch.randn(hidden, 1, kt, 3, 3, generator=g) * 0.5, torch.randn(hidden, generator=g)
    wp, bp = torch.randn(cout, hidden, 1, 1, 1, generator=g) * 0.5, torch.randn(cout, generator=g)
    out = kernels.fused_irb(x, we, be, wd, bd, wp, bp, st)
    ref = _irb_reference(x.contiguous(), we, be, wd, bd, wp, bp, st)
    assert out.shape == ref.shape and out.is_contiguous(memory_format=CL)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    # both clamps are active on this data (so the ReLU6 of each stage is exercised)
    assert (F.conv3d(x, we, be) > 6).any() and (F.conv3d(x, we, be) < 0).any()


def test_fused_irb_rejects_bad_input(kernels):
    x = torch.randn(1, 4, 3, 8, 8)  # contiguous, not channels-last
    args = (torch.randn(8, 4, 1, 1, 1), torch.randn(8), torch.randn(8, 1, 3, 3, 3), torch.randn(8),
            torch.randn(2, 8, 1, 1, 1), torch.randn(2))
    with pytest.raises(RuntimeError, match="channels-last"):
        kernels.fused_irb(x, *args, 1)
    with pytest.raises(RuntimeError, match="IRB"):
        kernels.fused_irb(x.contiguous(memory_format=CL), args[0], args[1], torch.randn(8, 1, 2, 3, 3), *args[3:], 1)
    with pytest.raises(RuntimeError, match="stride"):
        kernels.fused_irb(x.contiguous(memory_format=CL), *args, 3)


@pytest.mark.parametrize("temporal, with_add, t", [(True, True, 8), (True, False, 3), (False, True, 4), (False, False, 1)])
def test_shuffle_up_add_matches_shuffle_upsample_add(kernels, temporal, with_add, t):
    g = torch.Generator().manual_seed(t)
    a = torch.randn(2, 12, t, 5, 7, generator=g).contiguous(memory_format=CL)
    y = pixel_shuffle_frames_cl(a)
    if temporal:
        y = TemporalUpsample2x()(y)
    add = torch.randn(y.shape, generator=g).contiguous(memory_format=CL) if with_add else None
    ref = y + add if with_add else y
    i0, i1, lam = _time_map(t, temporal)
    out = kernels.shuffle_up_add(a, i0, i1, lam, add)
    assert out.shape == ref.shape and out.is_contiguous(memory_format=CL)
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=1e-6)


def test_time_map_is_nn_upsample():
    x = torch.arange(5.0).view(1, 1, 5, 1, 1)
    up = F.interpolate(x, scale_factor=(2, 1, 1), mode="trilinear", align_corners=True).flatten()
    i0, i1, lam = _time_map(5, True)
    torch.testing.assert_close((1 - lam) * i0.float() + lam * i1.float(), up)


class _Counting:
    """Wraps the kernel module and counts calls (to check that the model really runs the kernels)."""

    def __init__(self, module) -> None:
        self.module, self.calls = module, {"fused_irb": 0, "shuffle_up_add": 0}

    def __getattr__(self, name):
        fn = getattr(self.module, name)

        def counted(*args):
            self.calls[name] += 1
            return fn(*args)
        return counted


@pytest.mark.parametrize("output, reduction, decoders, size, fused_irbs", [
    ("multi", 1, ("d1", "d2", "d3"), (192, 256), True),   # the paper's resolution: the IRB kernel runs
    ("single", 1, ("d1", "d2", "d3"), (96, 128), None),
    ("multi", 2, ("d1", "d2", "d3"), (96, 128), None),
    ("multi", 1, ("d3", "d3"), (96, 128), None)])
def test_model_with_kernels_matches_plain(kernels, output, reduction, decoders, size, fused_irbs):
    from test_fast import _assert_same_outputs, _randomise_bn  # tests/ is on sys.path (rootdir conftest)
    from tinyhd.fast import ChannelsLastPixelShuffle3d, FusedIRB, _FastD2, _FastD3
    from tinyhd.model import TinyHD

    torch.manual_seed(0)
    model = _randomise_bn(TinyHD(output=output, reduction=reduction, decoders=decoders)).eval()
    fast = optimize_for_inference(model, cpu_kernels=True)
    counting = _Counting(kernels)
    for m in fast.modules():
        if isinstance(m, (FusedIRB, ChannelsLastPixelShuffle3d)):
            m.kernels = counting
    assert any(isinstance(m, (_FastD2, _FastD3)) for m in fast.modules())
    clip = torch.randn(1, 3, 16, *size)
    with torch.inference_mode():
        _assert_same_outputs(fast(clip), model(clip))
    assert counting.calls["shuffle_up_add"] > 0
    if fused_irbs is not None:
        assert (counting.calls["fused_irb"] > 0) == fused_irbs


def test_fused_irb_rule():
    from tinyhd.fast import fused_irb_pays

    assert fused_irb_pays(4, 16, 192, 256) and fused_irb_pays(56, 8, 96, 128) and fused_irb_pays(14, 16, 192, 256)
    assert not fused_irb_pays(1040, 1, 12, 16)      # wide: oneDNN's GEMMs
    assert not fused_irb_pays(56, 1, 192, 256)      # a single frame
    assert not fused_irb_pays(48, 4, 48, 64)        # small frames: in cache for oneDNN
    assert not fused_irb_pays(12, 8, 96, 128) and not fused_irb_pays(28, 2, 96, 128)  # narrow at 96×128


def test_kernels_can_be_turned_off(monkeypatch):
    from tinyhd import kernels as k
    from tinyhd.fast import FusedIRB
    from tinyhd.model import TinyHD

    monkeypatch.setenv("TINYHD_CPU_KERNELS", "0")
    monkeypatch.setattr(k, "_state", {})
    assert k.cpu_kernels() is None and "TINYHD_CPU_KERNELS" in k.unavailable_reason()
    model = TinyHD(output="multi").eval()
    assert not any(isinstance(m, FusedIRB) for m in optimize_for_inference(model).modules())
    from tinyhd.errors import UserError

    with pytest.raises(UserError, match="TINYHD_CPU_KERNELS"):
        optimize_for_inference(model, cpu_kernels=True)


def test_optimised_model_can_be_copied_and_saved(kernels, tmp_path):
    import copy

    from tinyhd.model import TinyHD

    torch.manual_seed(0)
    fast = optimize_for_inference(TinyHD(output="multi").eval(), cpu_kernels=True)
    clip = torch.randn(1, 3, 16, 64, 96)
    with torch.inference_mode():
        ref = fast(clip).saliency
        twin = copy.deepcopy(fast)
        torch.testing.assert_close(twin(clip).saliency, ref, atol=0, rtol=0)
        torch.save(fast, tmp_path / "fast.pt")
        loaded = torch.load(tmp_path / "fast.pt", weights_only=False)
        torch.testing.assert_close(loaded(clip).saliency, ref, atol=0, rtol=0)


def _dw_reference(x, w, go, stride, padding):
    """Input and weight gradients of a depthwise F.conv3d by autograd, in float64."""
    xd = x.detach().double().requires_grad_(True)
    wd = w.detach().double().requires_grad_(True)
    F.conv3d(xd, wd, stride=stride, padding=padding, groups=x.shape[1]).backward(go.double())
    return xd.grad, wd.grad


def _close(out, ref):
    scale = ref.abs().max().item() + 1.0
    torch.testing.assert_close(out, ref.float(), rtol=1e-4, atol=2e-5 * scale)


@pytest.mark.parametrize("c, batch, size, kernel, stride, padding", [
    (1, 1, (5, 7, 9), (3, 3, 3), (1, 1, 1), (1, 1, 1)),      # 16 pixels per vector (packed lanes)
    (4, 2, (5, 7, 9), (3, 3, 3), (1, 1, 1), (1, 1, 1)),      # 4 pixels × 4 channels per vector
    (5, 1, (4, 6, 21), (3, 3, 3), (1, 1, 1), (0, 1, 1)),     # 3 pixels × 5 channels, partial last vectors
    (4, 1, (5, 7, 9), (3, 3, 3), (1, 2, 2), (1, 1, 1)),      # W stride 2: no packing
    (14, 1, (5, 7, 9), (2, 3, 3), (2, 1, 1), (0, 1, 1)),     # one masked group of 14 lanes, T↓
    (17, 2, (5, 7, 9), (1, 3, 3), (1, 2, 2), (0, 1, 1)),     # 16 + 1 channels
    (56, 1, (4, 6, 150), (3, 3, 3), (2, 2, 2), (1, 1, 1)),   # W·C large: several column chunks
    (56, 2, (3, 5, 40), (3, 3, 3), (1, 1, 1), (1, 1, 1)),
    (68, 1, (5, 7, 9), (3, 3, 3), (2, 1, 1), (1, 1, 1)),     # 4 × 16 + 4 channels
    (14, 1, (1, 3, 3), (3, 3, 3), (1, 1, 1), (1, 1, 1)),     # T = 1: both temporal taps are padding
    (3, 2, (4, 5, 6), (3, 2, 4), (3, 1, 3), (2, 1, 2)),      # any kernel (kw ≠ 3), stride and padding
    (20, 1, (3, 4, 11), (2, 2, 2), (1, 1, 2), (0, 0, 1)),
])
def test_dw_conv3d_backward_matches_autograd(kernels, c, batch, size, kernel, stride, padding):
    g = torch.Generator().manual_seed(c * 10 + batch)
    x = torch.randn(batch, c, *size, generator=g).contiguous(memory_format=CL)
    w = torch.randn(c, 1, *kernel, generator=g)
    out_shape = F.conv3d(x, w, stride=stride, padding=padding, groups=c).shape
    go = torch.randn(out_shape, generator=g).contiguous(memory_format=CL)
    gi, gw = kernels.dw_conv3d_backward(x, go, w, list(stride), list(padding), True, True)
    ref_gi, ref_gw = _dw_reference(x, w, go, stride, padding)
    assert gi.shape == x.shape and gi.is_contiguous(memory_format=CL)
    assert gw.shape == w.shape and gw.is_contiguous()
    _close(gi, ref_gi)
    _close(gw, ref_gw)


def test_dw_conv3d_backward_only_what_is_needed_and_any_layout(kernels):
    g = torch.Generator().manual_seed(1)
    x, w = torch.randn(2, 6, 4, 5, 7, generator=g), torch.randn(6, 1, 3, 3, 3, generator=g)
    go = torch.randn(2, 6, 2, 5, 7, generator=g)
    stride, padding = [2, 1, 1], [1, 1, 1]
    ref_gi, ref_gw = _dw_reference(x, w, go, stride, padding)
    gi, gw = kernels.dw_conv3d_backward(x, go, w, stride, padding, True, False)  # contiguous, not channels-last
    assert gw is None and gi.is_contiguous(memory_format=CL)
    _close(gi, ref_gi)
    gi, gw = kernels.dw_conv3d_backward(x.contiguous(memory_format=CL), go.transpose(3, 4).contiguous().transpose(3, 4),
                                        w, stride, padding, False, True)
    assert gi is None
    _close(gw, ref_gw)


def test_dw_conv3d_backward_same_bits_for_any_thread_count(kernels):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 20, 4, 16, 24, generator=g).contiguous(memory_format=CL)
    w, go = torch.randn(20, 1, 3, 3, 3, generator=g), torch.randn(2, 20, 4, 16, 24, generator=g).contiguous(memory_format=CL)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = kernels.dw_conv3d_backward(x, go, w, [1, 1, 1], [1, 1, 1], True, True)
        torch.set_num_threads(2)
        two = kernels.dw_conv3d_backward(x, go, w, [1, 1, 1], [1, 1, 1], True, True)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one[0], two[0]) and torch.equal(one[1], two[1])


def test_dw_conv3d_backward_rejects_bad_input(kernels):
    x = torch.randn(1, 4, 3, 5, 5).contiguous(memory_format=CL)
    w = torch.randn(4, 1, 3, 3, 3)
    s, p = [1, 1, 1], [1, 1, 1]
    with pytest.raises(RuntimeError, match="x must be float32"):
        kernels.dw_conv3d_backward(x.double(), x, w, s, p, True, True)
    with pytest.raises(RuntimeError, match="weight must be C×1×kt×kh×kw"):
        kernels.dw_conv3d_backward(x, x, torch.randn(5, 1, 3, 3, 3), s, p, True, True)
    with pytest.raises(RuntimeError, match="grad_out has batch × channels"):
        kernels.dw_conv3d_backward(x, torch.randn(1, 3, 3, 5, 5), w, s, p, True, True)
    with pytest.raises(RuntimeError, match=r"grad_out size \[1, 4, 3, 4, 5\] does not match the output size \[1, 4, 3, 5, 5\]"):
        kernels.dw_conv3d_backward(x, torch.randn(1, 4, 3, 4, 5), w, s, p, True, True)
    with pytest.raises(RuntimeError, match="grad_out size"):  # right for stride 1, wrong for stride 2
        kernels.dw_conv3d_backward(x, x, w, [1, 2, 2], p, True, True)
    with pytest.raises(RuntimeError, match="stride and padding need 3 entries"):
        kernels.dw_conv3d_backward(x, x, w, [1, 1], p, True, True)
    with pytest.raises(RuntimeError, match="larger than the padded input"):
        kernels.dw_conv3d_backward(x, x, torch.randn(4, 1, 3, 9, 3), s, p, True, True)


def test_kernels_build_and_match_without_avx512(monkeypatch):
    """CPUs without AVX-512 (most desktop Intel CPUs, AMD before Zen 4) must get the same kernels: built for
    plain AVX2 (``-march=x86-64-v3``) in a subprocess, they pass this file's tests and the training kernels'
    unit tests. (One AVX-512 intrinsic in the source is enough to fail that build, and then every kernel is
    lost on such CPUs.)"""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from tinyhd import kernels as k

    if os.environ.get("TINYHD_KERNEL_ARCH"):
        pytest.skip("already running under TINYHD_KERNEL_ARCH (this test's own subprocess)")
    if shutil.which("c++") is None and shutil.which("g++") is None:
        pytest.skip("no C++ compiler on this machine")
    flags = set(k._cpu_flags().split())
    if not {"avx2", "fma", "bmi2", "movbe"} <= flags:
        pytest.skip("this CPU cannot run x86-64-v3 code")
    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "TINYHD_KERNEL_ARCH": "x86-64-v3"}
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "tests/test_kernels.py",
                        "tests/test_cpu_train.py", "-k", "kernels or batch_norm or depthwise or pixel_shuffle"],
                       cwd=repo, env=env, capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, f"with TINYHD_KERNEL_ARCH=x86-64-v3:\n{r.stdout[-4000:]}\n{r.stderr[-2000:]}"
    assert " passed" in r.stdout and " failed" not in r.stdout, r.stdout[-2000:]
    monkeypatch.setenv("TINYHD_KERNEL_ARCH", "x86-64-v3")
    key = k.build_key()
    built = list((k.cache_dir() / "kernels" / key).glob("*.so"))
    assert built, f"the subprocess did not build the x86-64-v3 kernels (no library under kernels/{key})"


def test_a_second_checkout_reuses_the_built_kernels(kernels, tmp_path):
    """Two checkouts of the same source (a clone, a git worktree) sharing the cache load one build: the library
    is not rebuilt (~30 s) each time the other checkout was used last, as it was when ninja built from the
    checkout's own source path."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from tinyhd import kernels as k

    built = list((k.cache_dir() / "kernels" / k.build_key()).glob("*.so"))
    assert built, "the kernels fixture built no library"
    before = built[0].stat().st_mtime_ns
    other = tmp_path / "other checkout"
    shutil.copytree(Path(k.__file__).resolve().parent, other / "tinyhd",
                    ignore=shutil.ignore_patterns("__pycache__"))
    code = ("import tinyhd.kernels as k, pathlib, sys; "
            f"assert pathlib.Path(k.__file__).resolve().is_relative_to({str(other)!r}), k.__file__; "
            "sys.exit(0 if k.cpu_kernels() is not None else 3)")
    r = subprocess.run([sys.executable, "-c", code], cwd=other, env={**os.environ, "PYTHONPATH": str(other)},
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    assert built[0].stat().st_mtime_ns == before, "the other checkout rebuilt the kernels"
