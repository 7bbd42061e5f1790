"""TinyHD model: exact parameter counts (sheet / paper Tables 1, 5), output shapes and ranges, multisets."""
from __future__ import annotations

import pytest
import torch

from tinyhd.decoders import D1, D2, D3, decoder_temporal
from tinyhd.model import TinyHD, TinyHDOutput


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# (output, reduction) -> total and split (encoder, D1, D2, D3, fusion) from the architecture sheet
PARAMS = {
    ("single", 1): (3_940_981, (2_354_048, 198_164, 1_214_548, 174_214, 7)),
    ("multi", 1): (3_922_405, (2_297_024, 205_724, 1_239_028, 180_622, 7)),
    ("single", 2): (1_370_291, (645_856, 105_860, 311_314, 307_254, 7)),
    ("multi", 2): (1_366_979, (617_344, 113_420, 323_554, 312_654, 7)),
    ("single", 4): (513_121, (190_136, 137_744, 81_316, 103_918, 7)),
    ("multi", 4): (515_281, (175_880, 145_304, 87_436, 106_654, 7)),
}


@pytest.mark.parametrize("output,reduction", sorted(PARAMS))
def test_parameter_counts_to_the_unit(output: str, reduction: int) -> None:
    model = TinyHD(output=output, reduction=reduction)
    total, split = PARAMS[(output, reduction)]
    got = (n_params(model.encoder), *(n_params(d) for d in model.decoders), n_params(model.fusion))
    assert got == split
    assert n_params(model) == total


def test_encoder_config_follows_decoder_outputs() -> None:
    assert TinyHD("single", reduction=4).encoder_config == "S"
    m = TinyHD("multi", reduction=4)
    assert m.encoder_config == "M"
    assert [d.single for d in m.decoders] == [True, False, False]  # released mixed mode
    assert TinyHD("multi", reduction=4, d1_output="multi").decoders[0].single is False
    # temporal kernel of encoder dw 14 is what the loader reads: 3 in S, 2 in M
    assert TinyHD("single", reduction=4).encoder.features[14].conv[1][0].kernel_size[0] == 3
    assert m.encoder.features[14].conv[1][0].kernel_size[0] == 2


@pytest.fixture(scope="module")
def clip() -> torch.Tensor:
    torch.manual_seed(0)
    return torch.randn(1, 3, 16, 64, 96)


CASES = [
    (dict(output="single"), (1, 1, 64, 96), [(1, 4, 64, 96), (1, 1, 64, 96), (1, 1, 64, 96)]),
    (dict(output="multi"), (1, 16, 64, 96), [(1, 4, 64, 96), (1, 16, 64, 96), (1, 16, 64, 96)]),
    (dict(output="multi", d1_output="multi"), (1, 16, 64, 96),
     [(1, 4, 16, 64, 96), (1, 16, 64, 96), (1, 16, 64, 96)]),
    (dict(output="single", decoders=("d2", "d2")), (1, 1, 64, 96), [(1, 1, 64, 96)] * 2),
    (dict(output="single", decoders=("d1", "d1", "d1")), (1, 1, 64, 96), [(1, 4, 64, 96)] * 3),
    (dict(output="multi", decoders=("d3",)), (1, 16, 64, 96), [(1, 16, 64, 96)]),
    (dict(output="multi", decoders=("d1", "d1")), (1, 16, 64, 96), [(1, 4, 16, 64, 96)] * 2),
]


@pytest.mark.parametrize("kwargs,sal_shape,map_shapes", CASES, ids=lambda v: str(v) if isinstance(v, dict) else "")
def test_output_shapes_and_ranges(clip: torch.Tensor, kwargs: dict, sal_shape: tuple, map_shapes: list) -> None:
    model = TinyHD(reduction=4, **kwargs).eval()
    with torch.no_grad():
        out = model(clip)
        if kwargs == dict(output="single"):  # batch of 2: each clip's maps are its own
            out2 = model(torch.cat([clip, clip.flip(-1)]))
            assert torch.allclose(out2.saliency[:1], out.saliency, atol=1e-5)
            assert torch.allclose(out2.saliency[1:], model(clip.flip(-1)).saliency, atol=1e-5)
    assert isinstance(out, TinyHDOutput)
    assert tuple(out.saliency.shape) == sal_shape
    assert [tuple(m.shape) for m in out.maps] == map_shapes
    for t in [out.saliency, *out.maps]:
        assert torch.isfinite(t).all() and (t > 0).all() and (t < 1).all()
    kinds = list(model.config["decoders"])
    for kind in ("d1", "d2", "d3"):
        got = getattr(out, kind)
        if kind in kinds:
            assert got is out.maps[kinds.index(kind)]
        else:
            assert got is None
    # the maps are not constant: the model actually looks at the clip
    assert out.saliency.std() > 0


def test_config_rebuilds_the_same_architecture() -> None:
    model = TinyHD(output="multi", decoders=("d2", "d3"), reduction=2)
    clone = TinyHD(**model.config)
    assert {k: v.shape for k, v in clone.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}
    assert clone.config == model.config


def test_fusion_order_d1_last(clip: torch.Tensor) -> None:
    torch.manual_seed(1)
    a = TinyHD("multi", reduction=4).train()  # train mode: batch-statistics BN gives varied maps
    b = TinyHD("multi", reduction=4, fusion_order="d1_last").train()
    b.load_state_dict(a.state_dict())
    with torch.no_grad():
        a.fusion.weight.normal_(0, 5.0)
        w = a.fusion.weight.clone()  # 1×6×1×1×1, order [d1 0..3, d2, d3]
        b.fusion.weight.copy_(torch.cat([w[:, 4:], w[:, :4]], dim=1))  # same meaning in order [d2, d3, d1 0..3]
        out_a, out_b = a(clip), b(clip)
        assert torch.allclose(out_a.saliency, out_b.saliency, atol=1e-5)
        b.fusion.weight.copy_(w)  # same weights read in the other order -> a different map
        assert (a(clip).saliency - b(clip).saliency).abs().max() > 1e-3


def test_single_fusion_init_and_multi_repeats_d1_in_time(clip: torch.Tensor) -> None:
    torch.manual_seed(2)
    s = TinyHD("single", reduction=4)
    assert isinstance(s.fusion, torch.nn.Conv2d) and torch.all(s.fusion.bias == 0)
    m = TinyHD("multi", reduction=4).eval()
    assert isinstance(m.fusion, torch.nn.Conv3d)
    with torch.no_grad():
        out = m(clip)
        # fusion by hand: D1 maps (T=1) repeated over the 16 frames, then the 1×1×1 conv and a sigmoid
        d1 = out.d1.unsqueeze(2).expand(-1, -1, 16, -1, -1)
        x = torch.cat([d1, out.d2.unsqueeze(1), out.d3.unsqueeze(1)], dim=1)
        expected = torch.sigmoid(m.fusion(x)).squeeze(1)
    assert torch.allclose(out.saliency, expected, atol=1e-6)


def test_decoder_temporal_codes_and_widths() -> None:
    # sheet (b): adapters that are T1 in the S model
    t1 = {1, 5, 7, 9, 10, 11, 13, 14, 15, 16, 17, 19, 26, 27, 28, 36}
    codes = decoder_temporal("d1", True, "S") + decoder_temporal("d2", True, "S") + decoder_temporal("d3", True, "S")
    assert {i for i, c in enumerate(codes) if c == (1, 1, 0)} == t1
    assert all(c in ((3, 2, 1), (1, 1, 0)) for c in codes)
    assert decoder_temporal("d1", True, "M")[12] == (3, 1, 1)
    with pytest.raises(ValueError):
        decoder_temporal("d2", True, "M")
    blocks = [28, 24, 136, 520]
    assert D1(blocks, 1).widths[12] == (130, 136)
    assert D1([7, 6, 34, 130], 4).widths[12] == (130, 136)  # Up_s instead of PS at ×¼
    assert D2(blocks, 1).widths[-1] == (7, 1) and D2([14, 12, 68, 260], 2).widths[-1] == (14, 1)
    assert D3([14, 12, 68, 260], 2).widths[:3] == [(14, 12), (12, 68), (68, 260)]
    assert D3(blocks, 1).widths[:3] == [(28, 6), (24, 34), (136, 130)]


@pytest.mark.parametrize("kwargs", [dict(output="both"), dict(decoders=("d4",)), dict(decoders=()), dict(reduction=3),
                                    dict(fusion_order="x"), dict(output="single", d1_output="multi")])
def test_bad_arguments_are_refused(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        TinyHD(**kwargs)


def test_bad_input_shape_is_refused() -> None:
    model = TinyHD("single", reduction=4)
    with pytest.raises(ValueError, match="divisible by 32"):
        model(torch.zeros(1, 3, 16, 60, 96))
    with pytest.raises(ValueError, match="B×3×T×H×W"):
        model(torch.zeros(3, 16, 64, 96))


def test_smallest_input_32x32_runs_for_s_and_m():
    """At 32×32 the deepest features are 1×1 (and T=1 in M): the frame-wise pixel shuffle must still work."""
    import torch

    from tinyhd import TinyHD

    for output in ("single", "multi"):
        model = TinyHD(output=output, reduction=4).eval()
        with torch.no_grad():
            out = model(torch.randn(1, 3, 16, 32, 32))
        assert out.saliency.shape == ((1, 1, 32, 32) if output == "single" else (1, 16, 32, 32))


@pytest.mark.parametrize("output,t,ok", [("multi", 16, True), ("multi", 15, False), ("multi", 1, False),
                                         ("multi", 8, False), ("multi", 17, False), ("multi", 32, False),
                                         ("single", 1, True), ("single", 9, True), ("single", 16, True),
                                         ("single", 17, False), ("single", 32, False)])
def test_clip_length_is_checked(output: str, t: int, ok: bool) -> None:
    """TinyHD-M maps exactly 16 frames (T=15 used to return 16 maps silently, others a bare RuntimeError);
    TinyHD-S takes 1..16 frames (one map each)."""
    model = TinyHD(output, reduction=4).eval()
    clip = torch.zeros(1, 3, t, 32, 32)
    if ok:
        with torch.no_grad():
            sal = model(clip).saliency
        assert sal.shape == ((1, 1, 32, 32) if output == "single" else (1, 16, 32, 32))
    else:
        match = "TinyHD-M needs clips of 16 frames" if output == "multi" else "TinyHD-S takes clips of 1 to 16"
        with pytest.raises(ValueError, match=f"{match}.*T={t}"):
            model(clip)


@pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::torch.jit.TracerWarning")  # tracing is the point
def test_clip_length_check_survives_tracing_and_the_fast_model() -> None:
    from tinyhd.fast import optimize_for_inference

    from tinyhd.complexity import _TraceableOutputs

    model = TinyHD("multi", decoders=("d3",), reduction=4).eval()
    with torch.no_grad():
        traced = torch.jit.trace(_TraceableOutputs(model), torch.zeros(1, 3, 16, 32, 32), check_trace=False)
        assert traced(torch.ones(1, 3, 16, 32, 32))[0].shape == (1, 16, 32, 32)
        with pytest.raises(ValueError, match="T=15"):
            optimize_for_inference(model, cpu_kernels=False)(torch.zeros(1, 3, 15, 32, 32))


def test_every_module_is_reachable_from_the_package() -> None:
    """``tinyhd.fast`` etc. resolve lazily after a bare ``import tinyhd`` (README points users to
    tinyhd.fast.optimize_for_inference); checked through the package's own lazy lookup for every module file."""
    from pathlib import Path

    import tinyhd

    names = sorted(p.stem for p in Path(tinyhd.__file__).parent.glob("*.py") if not p.stem.startswith("_"))
    for name in names:
        if name == "preprocess":  # the name is the function (the module is tinyhd.preprocess in sys.modules)
            assert callable(tinyhd.preprocess)
            continue
        mod = tinyhd.__getattr__(name)
        assert mod.__name__ == f"tinyhd.{name}", name
        assert name in dir(tinyhd)
    for name in ("fast", "kernels", "cpu_train", "similarity"):
        assert name in tinyhd._SUBMODULES


def test_pretrained_backbone_docstring_matches_the_encoder() -> None:
    """The encoder kernel-averages ImageNet weights at ×½ and ×¼ (encoder.py), so the doc must not say ×1 only."""
    import inspect

    from tinyhd.encoder import MobileNetV2Encoder3d

    assert "reduce_state_dict" in inspect.getsource(MobileNetV2Encoder3d.__init__)
    doc = " ".join(TinyHD.__doc__.split())
    assert "×1 only" not in doc and "averaged down to the reduced widths" in doc
