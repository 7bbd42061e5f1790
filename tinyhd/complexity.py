"""Parameters and multiply-accumulates (MACs), counted the way the TinyHD paper counts them.

The paper reports GMACs "estimated for 16 frames" (Table 1a caption): a MISO model (TinyHD-S) needs one
forward per output map, hence "5.57×16", while a MIMO model (TinyHD-M) produces 16 maps in one forward,
hence "7.95×1". Table 5a repeats these per-16-map figures for the ×½ and ×¼ channel reductions.

The authors measured with ptflops' module-hook ("pytorch") backend (spec sheet, "Measured size and cost").
We trace with ``fvcore.nn.FlopCountAnalysis`` instead, and give it handlers so that it counts what the
ptflops hooks count:

============================  ==========================================  ===================
operator                      ptflops module hook                          fvcore default
============================  ==========================================  ===================
convolution                   k·(C_in/g)·C_out MACs per output position,   same, no bias
                              plus 1 per output element for the bias
batch norm (affine)           2 per *input* element                        2 per element (eval)
ReLU6 / ReLU (hardtanh/relu)  1 per output element                         not counted
Upsample (any mode)           1 per output element                         trilinear skipped,
                                                                           bilinear 4/element
pooling                       1 per input element                          mostly skipped
linear                        C_in·C_out per row, plus bias                no bias
pixel_shuffle, add, mul,      not counted (no module hook: functional      not counted
sigmoid, cat, permute         ops or parameter-free modules without one)
============================  ==========================================  ===================

With these handlers ``count_complexity`` gives the paper's figures for all six released variants (e.g.
7.952 GMAC per forward for TinyHD-M ×1, printed 7.95 in Table 1a), within 0.03 GMAC per 16 maps. For the M
variants it is *not* the spec sheet's ptflops column (7.975 for TinyHD-M ×1): the sheet was measured with
ptflops 0.7.5, whose functional ``F.interpolate`` patch fires inside the ``nn.Upsample`` hook and so counts
every Upsample twice; in every row the sheet minus our count equals our Upsample MACs, both checked in
``tests/test_complexity.py``. Those are zero only for TinyHD-S ×1 (its decoders upsample by pixel shuffle
alone); the reduced decoders use trilinear Upsample somewhere (architecture sheet (d)), so the difference is
0.008 and 0.004 GMAC for TinyHD-S ×½ and ×¼, and 0.02–0.05 GMAC for the M variants.
One further ptflops quirk is not copied: its Upsample hook counts only the first sample of the batch; we count
the whole batch (identical at batch 1, the paper's setting).
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import warnings
from collections import Counter
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch
from torch import nn

from tinyhd.cli import parse_size
from tinyhd.errors import UserError

__all__ = [
    "count_complexity",
    "macs_by_operator",
    "maps_per_forward",
    "PAPER_COMPLEXITY",
    "VARIANTS",
    "build_variant",
    "complexity_table",
    "cli_main",
]

DEFAULT_INPUT_SHAPE = (1, 3, 16, 192, 256)  # B×C×T×H×W, the paper's clip (§4.2: 16 frames, 192×256)


# --------------------------------------------------------------------------------------------------
# fvcore handlers: each takes the traced node's inputs/outputs (torch._C.Value) and returns a count
# --------------------------------------------------------------------------------------------------
def _shape(value: Any) -> list[int] | None:
    """Static shape of a traced value, or None when it is not a complete tensor (e.g. an absent bias)."""
    typ = value.type()
    if not isinstance(typ, torch._C.TensorType):
        return None
    sizes = typ.sizes()
    return list(sizes) if sizes is not None else None


def _numel(value: Any) -> int:
    shape = _shape(value)
    return int(math.prod(shape)) if shape is not None else 0


def _conv_macs(inputs: list, outputs: list) -> int:
    """MACs of ``aten::_convolution``: prod(weight shape)·(output positions)·B, plus one per output element
    for a bias (ptflops ``conv_flops_counter_hook``). Transposed convs are counted from the input side."""
    x_shape, w_shape, out_shape = _shape(inputs[0]), _shape(inputs[1]), _shape(outputs[0])
    transposed = bool(inputs[6].toIValue())
    batch = x_shape[0]
    spatial = x_shape[2:] if transposed else out_shape[2:]
    macs = batch * math.prod(w_shape) * math.prod(spatial)
    if _shape(inputs[2]) is not None:  # bias present
        macs += math.prod(out_shape)
    return int(macs)


def _batchnorm_macs(inputs: list, outputs: list) -> int:
    """ptflops ``bn_flops_counter_hook``: input elements, doubled when the BN is affine (scale + shift).

    Unlike fvcore's default this does not depend on train/eval mode."""
    affine = _shape(inputs[1]) is not None
    return _numel(inputs[0]) * (2 if affine else 1)


def _output_elements(inputs: list, outputs: list) -> int:
    """One op per output element: ptflops' activation (ReLU, ReLU6) and Upsample hooks."""
    return _numel(outputs[0])


def _input_elements(inputs: list, outputs: list) -> int:
    """One op per input element: ptflops' pooling hooks."""
    return _numel(inputs[0])


def _linear_macs(inputs: list, outputs: list) -> int:
    """``aten::linear``: input elements × output features, plus the bias (ptflops ``linear_flops_counter_hook``)."""
    w_shape = _shape(inputs[1])
    out_features = w_shape[0]
    macs = _numel(inputs[0]) * out_features
    if len(inputs) > 2 and _shape(inputs[2]) is not None:
        macs += out_features
    return int(macs)


_UPSAMPLE_OPS = [
    "aten::upsample_nearest1d", "aten::upsample_nearest2d", "aten::upsample_nearest3d",
    "aten::_upsample_nearest_exact1d", "aten::_upsample_nearest_exact2d", "aten::_upsample_nearest_exact3d",
    "aten::upsample_linear1d", "aten::upsample_bilinear2d", "aten::upsample_bicubic2d",
    "aten::upsample_trilinear3d",
]
_POOL_OPS = [f"aten::{kind}_pool{d}d" for kind in ("max", "avg", "adaptive_avg", "adaptive_max") for d in (1, 2, 3)]

#: op name -> handler; ``None`` means "counted as zero, as ptflops does" (and silences fvcore's warning).
PAPER_OP_HANDLES: dict[str, Callable | None] = {
    "aten::_convolution": _conv_macs,
    "aten::batch_norm": _batchnorm_macs,
    "aten::hardtanh": _output_elements,   # nn.ReLU6
    "aten::hardtanh_": _output_elements,  # nn.ReLU6(inplace=True), torchvision's MobileNetV2
    "aten::relu": _output_elements,
    "aten::relu_": _output_elements,
    "aten::linear": _linear_macs,
    **{op: _output_elements for op in _UPSAMPLE_OPS},
    **{op: _input_elements for op in _POOL_OPS},
    # no ptflops module hook exists for these: they cost nothing in the paper's accounting
    **{op: None for op in (
        "aten::pixel_shuffle", "aten::pixel_unshuffle", "aten::sigmoid", "aten::sigmoid_", "aten::add",
        "aten::add_", "aten::mul", "aten::mul_", "aten::sub", "aten::div", "aten::repeat", "aten::unsqueeze",
        "aten::squeeze", "aten::select", "aten::slice", "aten::view", "aten::to", "aten::stack",
        "aten::clone", "aten::expand_as", "aten::unbind", "aten::mean", "aten::sum", "aten::softmax",
        "aten::tanh", "aten::rsub", "aten::contiguous", "aten::transpose", "aten::split", "aten::flip",
    )},
}


# --------------------------------------------------------------------------------------------------
# counting
# --------------------------------------------------------------------------------------------------
def _flatten_tensors(obj: Any) -> list[torch.Tensor]:
    """Every tensor inside a model output (tensor, tuple/list, dict, dataclass, NamedTuple), in order."""
    if isinstance(obj, torch.Tensor):
        return [obj]
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return [t for f in dataclasses.fields(obj) for t in _flatten_tensors(getattr(obj, f.name))]
    if isinstance(obj, Mapping):
        return [t for v in obj.values() for t in _flatten_tensors(v)]
    if isinstance(obj, (list, tuple)):
        return [t for v in obj for t in _flatten_tensors(v)]
    return []


class _TraceableOutputs(nn.Module):
    """Wraps a model so that its output is a plain tuple of tensors (jit tracing refuses dataclasses)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(_flatten_tensors(self.model(x)))


def _check_input_shape(input_shape: Sequence[int]) -> tuple[int, ...]:
    try:
        shape = tuple(int(s) for s in input_shape)
    except (TypeError, ValueError):
        raise UserError(f"input_shape must be a sequence of positive ints, got {input_shape!r}") from None
    if not shape or any(s <= 0 for s in shape) or any(s != v for s, v in zip(shape, input_shape)):
        raise UserError(f"input_shape must be a sequence of positive ints, got {input_shape!r}")
    return shape


def _analysis(model: nn.Module, input_shape: Sequence[int]):
    with warnings.catch_warnings():  # fvcore's import scripts a helper; torch deprecates jit.script
        warnings.simplefilter("ignore", FutureWarning)
        from fvcore.nn import FlopCountAnalysis

    if not isinstance(model, nn.Module):
        raise UserError(f"count_complexity needs a torch.nn.Module, got {type(model).__name__}")
    shape = _check_input_shape(input_shape)
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    x = torch.zeros(shape, device=device, dtype=dtype)
    analysis = FlopCountAnalysis(_TraceableOutputs(model), (x,))
    analysis.set_op_handle(**PAPER_OP_HANDLES)
    analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    return analysis


def _in_eval_mode(model: nn.Module, fn: Callable[[], Any]) -> Any:
    """Run ``fn`` with the model in eval mode and without autograd, then restore every module's mode.

    Tracing in train mode would update the BN running statistics."""
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        with torch.no_grad():
            return fn()
    finally:
        for m, mode in modes.items():
            m.training = mode


def count_complexity(model: nn.Module, input_shape: Sequence[int] = DEFAULT_INPUT_SHAPE) -> dict[str, Any]:
    """Parameters and GMACs of one forward pass of ``model`` on a zero tensor of ``input_shape``.

    MACs are counted as the paper counts them (ptflops module hooks, Upsample once; see the module
    docstring): for the six released TinyHD variants this gives the paper's figures, e.g. 5.569 GMAC per
    forward for TinyHD-S ×1 (paper: 5.57, Table 1a) and 7.952 for TinyHD-M ×1 (paper: 7.95). The spec sheet's
    ptflops 0.7.5 column is higher by exactly our Upsample MACs, which that version counts twice: equal for
    TinyHD-S ×1 (no Upsample), 3.727 for TinyHD-S ×½ (ours 3.719), 7.975 for TinyHD-M ×1. Works for any
    ``nn.Module`` that takes one tensor.
    The model's train/eval flags are left as they were.

    Returns ``{"params": int, "gmacs": float}`` (GMACs per forward, not per 16 maps: see ``maps_per_forward``).
    """
    analysis = _analysis(model, input_shape)
    macs = _in_eval_mode(model, analysis.total)
    params = sum(p.numel() for p in model.parameters())
    return {"params": int(params), "gmacs": macs / 1e9}


def macs_by_operator(model: nn.Module, input_shape: Sequence[int] = DEFAULT_INPUT_SHAPE) -> dict[str, int]:
    """MACs of one forward split by operator (``conv``, ``batch_norm``, ``hardtanh_``, ``upsample_trilinear3d``…)."""
    analysis = _analysis(model, input_shape)
    counts: Counter = _in_eval_mode(model, analysis.by_operator)
    return {k: int(v) for k, v in sorted(counts.items(), key=lambda kv: -kv[1])}


def maps_per_forward(model: nn.Module, input_shape: Sequence[int] = DEFAULT_INPUT_SHAPE) -> int:
    """Saliency maps one forward produces: 1 for MISO (TinyHD-S, HD2S), T for MIMO (TinyHD-M).

    Read from the model's ``config["output"]`` when it has one, else 1 (MISO)."""
    config = getattr(model, "config", None)
    if isinstance(config, Mapping) and config.get("output") == "multi":
        return int(_check_input_shape(input_shape)[2])
    return 1


# --------------------------------------------------------------------------------------------------
# the paper's numbers, and a table of ours beside them
# --------------------------------------------------------------------------------------------------
#: Paper figures: params and GMACs *per 16 output maps* (the paper's unit), with where they are printed.
PAPER_COMPLEXITY: dict[str, dict[str, Any]] = {
    "TinyHD-S ×1": {"params": 3.94e6, "gmacs_16": 5.57 * 16, "source": "Table 1a (5.57×16, 3.94M); Table 5a (89.12)"},
    "TinyHD-S ×½": {"params": 1.37e6, "gmacs_16": 59.52, "source": "Table 5a"},
    "TinyHD-S ×¼": {"params": 513.1e3, "gmacs_16": 37.44, "source": "Table 5a"},
    "TinyHD-M ×1": {"params": 3.92e6, "gmacs_16": 7.95, "source": "Table 1a (7.95×1, 3.92M); Table 5a"},
    "TinyHD-M ×½": {"params": 1.37e6, "gmacs_16": 6.92, "source": "Table 5a"},
    "TinyHD-M ×¼": {"params": 515.3e3, "gmacs_16": 4.06, "source": "Table 5a"},
    "D1×1": {"params": 2.55e6, "gmacs_16": 3.55 * 16, "source": "Table 3"},
    "D2×1": {"params": 3.57e6, "gmacs_16": 2.88 * 16, "source": "Table 3"},
    "D3×1": {"params": 2.53e6, "gmacs_16": 2.45 * 16, "source": "Table 3"},
    "D1×2": {"params": 2.75e6, "gmacs_16": 5.45 * 16, "source": "Table 3"},
    "D2×2": {"params": 4.78e6, "gmacs_16": 4.11 * 16, "source": "Table 3"},
    "D3×2": {"params": 2.70e6, "gmacs_16": 3.24 * 16, "source": "Table 3"},
    "D1×3": {"params": 2.95e6, "gmacs_16": 7.35 * 16, "source": "Table 3"},
    "D2×3": {"params": 6.00e6, "gmacs_16": 5.33 * 16, "source": "Table 3"},
    "D3×3": {"params": 2.88e6, "gmacs_16": 4.03 * 16, "source": "Table 3"},
    # HD2S's 11.08 is for its own 128×192 input (spec sheet hd2s_architecture.md: 11.06 there, 22.12 at 192×256)
    "HD2S": {"params": 29.8e6, "gmacs_16": 11.08 * 16, "input_hw": (128, 192),
             "source": "Table 1a (11.08×16, 29.8M), at HD2S's 128×192 input"},
}

#: Spec-sheet measurements of the authors' code (ptflops "pytorch" backend, GMAC per forward; exact params).
SHEET_COMPLEXITY: dict[str, dict[str, Any]] = {
    "TinyHD-S ×1": {"params": 3_940_981, "gmacs": 5.569},
    "TinyHD-S ×½": {"params": 1_370_291, "gmacs": 3.727},
    "TinyHD-S ×¼": {"params": 513_121, "gmacs": 2.342},
    "TinyHD-M ×1": {"params": 3_922_405, "gmacs": 7.975},
    "TinyHD-M ×½": {"params": 1_366_979, "gmacs": 6.968},
    "TinyHD-M ×¼": {"params": 515_281, "gmacs": 4.086},
}

_FRACTION = {1: "×1", 2: "×½", 4: "×¼"}

#: Row name -> ``TinyHD`` constructor kwargs ("HD2S" builds the teacher).
VARIANTS: dict[str, dict[str, Any]] = {
    **{f"TinyHD-{o[0].upper()} {_FRACTION[r]}": {"output": o, "decoders": ("d1", "d2", "d3"), "reduction": r}
       for o in ("single", "multi") for r in (1, 2, 4)},
    **{f"D{d}×{n}": {"output": "single", "decoders": (f"d{d}",) * n, "reduction": 1}
       for n in (1, 2, 3) for d in (1, 2, 3)},
    "HD2S": {},
}


def build_variant(name: str) -> nn.Module:
    """The randomly initialised model behind a row of ``PAPER_COMPLEXITY`` (no weights are downloaded)."""
    if name not in VARIANTS:
        raise UserError(f"unknown variant {name!r}; choose one of {sorted(VARIANTS)}")
    if name == "HD2S":
        from tinyhd.teacher import HD2S

        return HD2S(pretrained_backbone=False)
    from tinyhd.model import TinyHD

    return TinyHD(pretrained_backbone=False, **VARIANTS[name])


def complexity_table(names: Iterable[str] | None = None,
                     input_shape: Sequence[int] = DEFAULT_INPUT_SHAPE,
                     count_at: tuple[int, int] | None = None, by_operator: bool = False):
    """A ``pandas.DataFrame`` with our params/GMACs beside the paper's (Tables 1a, 3, 5a), one row per variant.

    Columns: ``params`` and ``paper params``; ``GMAC/forward``; ``GMAC/16 maps`` (ours, in the paper's unit)
    and ``paper GMAC/16 maps``; ``ratio`` (ours / paper); ``source`` (where the paper prints it).
    Default rows: the six Table 5a variants.

    ``count_at=(h, w)`` traces at h×w instead of ``input_shape``'s H×W and scales by the area ratio. For
    TinyHD with H, W multiples of 32 every feature map shrinks by exactly that ratio and every counted
    op is proportional to a map's area, so the result is exact (checked in ``tests/test_complexity.py``);
    it saves time (tracing costs a few seconds a model on a busy 2-core CPU). ``by_operator=True`` adds
    the split of GMAC/forward into conv, BN, ReLU(6), upsample and pooling.
    """
    import pandas as pd

    shape = _check_input_shape(input_shape)
    scale = 1.0
    if count_at is not None:
        h, w = (int(v) for v in count_at)
        scale = shape[-2] * shape[-1] / (h * w)
        shape = (*shape[:-2], h, w)
    names = list(names) if names is not None else [n for n in VARIANTS if n.startswith("TinyHD")]
    rows = []
    for name in names:
        model = build_variant(name)
        paper = PAPER_COMPLEXITY.get(name, {})
        if "input_hw" in paper:  # a model the paper counts at its own input size (HD2S)
            row_shape, row_scale = (*shape[:-2], *paper["input_hw"]), 1.0
        else:
            row_shape, row_scale = shape, scale
        by_op = macs_by_operator(model, row_shape)  # one trace; count_complexity's total is its sum
        gmacs = sum(by_op.values()) * row_scale / 1e9
        per_16 = gmacs * 16 / maps_per_forward(model, row_shape)
        rows.append({
            "model": name,
            "params": sum(p.numel() for p in model.parameters()),
            "paper params": paper.get("params"),
            "GMAC/forward": round(gmacs, 4),
            "GMAC/16 maps": round(per_16, 3),
            "paper GMAC/16 maps": paper.get("gmacs_16"),
            "ratio": round(per_16 / paper["gmacs_16"], 4) if paper else None,
            "input": "×".join(map(str, paper.get("input_hw", input_shape[-2:]))),
            "source": paper.get("source", ""),
        })
        if by_operator:
            groups = {"conv": ("_convolution", "linear"), "BN": ("batch_norm",), "ReLU(6)": ("hardtanh", "relu"),
                      "upsample": ("upsample", "_upsample"), "pool": ("max_pool", "avg_pool", "adaptive_")}
            for col, keys in groups.items():
                rows[-1][f"{col} GMAC/fwd"] = round(sum(v for k, v in by_op.items()
                                                        if k.startswith(keys)) * row_scale / 1e9, 4)
    return pd.DataFrame(rows).set_index("model")


# --------------------------------------------------------------------------------------------------
# the command line
# --------------------------------------------------------------------------------------------------
def _parse_size(text: str) -> tuple[int, int]:
    h, w = parse_size(text)
    if h < 32 or w < 32 or h % 32 or w % 32:
        raise UserError(f"--size {text}: TinyHD needs H and W that are positive multiples of 32")
    return h, w


def cli_main(argv: list[str]) -> int:
    """``tinyhd complexity [--output single|multi] [--reduction 1 2 4] [--size 192x256] [--variant NAME ...]``."""
    parser = argparse.ArgumentParser(
        prog="tinyhd complexity",
        description=("Parameters and GMACs of randomly initialised TinyHD variants (nothing is downloaded), counted "
                     "as the paper counts them (ptflops module hooks), beside the paper's figures (Tables 1a, 3, "
                     "5a). GMACs are per forward pass of a 16-frame clip and per 16 output maps (the paper's "
                     "unit: ×16 for a MISO model). Default: the six Table 5a variants."))
    parser.add_argument("--output", choices=("single", "multi"), default=None,
                        help="only TinyHD-S (single) or TinyHD-M (multi)")
    parser.add_argument("--reduction", type=int, choices=(1, 2, 4), nargs="+", default=None,
                        help="only these channel reductions (1 = ×1, 2 = ×½, 4 = ×¼)")
    parser.add_argument("--size", default="192x256", metavar="HxW",
                        help="input frame size (default 192x256, the paper's; the paper's figures are shown "
                             "only at that size)")
    parser.add_argument("--variant", nargs="+", default=None, metavar="NAME",
                        help=f"rows by name instead: {', '.join(VARIANTS)}")
    parser.add_argument("--by-operator", action="store_true", help="split GMAC/forward into conv, BN, ReLU(6), …")
    args = parser.parse_args(argv)

    h, w = _parse_size(args.size)
    if args.variant is not None:
        names = list(args.variant)
        unknown = [n for n in names if n not in VARIANTS]
        if unknown:
            raise UserError(f"unknown variant(s) {unknown}; choose from {list(VARIANTS)}")
    else:
        names = [n for n, kw in VARIANTS.items() if n.startswith("TinyHD")
                 and (args.output is None or kw["output"] == args.output)
                 and (args.reduction is None or kw["reduction"] in args.reduction)]
    # traced at 64×64 and scaled by area: exact for TinyHD (see complexity_table), and several times faster
    table = complexity_table(names, (1, 3, 16, h, w), count_at=(64, 64), by_operator=args.by_operator)
    if (h, w) != (192, 256):  # the paper counts at 192×256 (HD2S: at its own input, which its row keeps)
        table.loc[table.index != "HD2S", ["paper GMAC/16 maps", "ratio"]] = None
    import pandas as pd

    with pd.option_context("display.width", 200, "display.max_columns", 30):
        print(table.to_string())
    return 0
