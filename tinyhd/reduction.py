"""Channel reduction by kernel averaging (paper §3.3.2; spec sheet (d)).

Paper §3.3.2: "a new student is initialized by averaging the weights of each pair of consecutive kernels
into a new kernel. Although kernel ordering is essentially random, this approach has been shown to provide
a meaningful initialization to the new student."

The authors' code (sheet (d)) makes "consecutive" precise, and it is not "adjacent channels": a kernel
``W[O, I/g, kt, kh, kw]`` is read in row-major order as ``[k, O', I'/g', kt, kh, kw]`` — the new shape with
one extra leading axis of length ``k = numel(W) / numel(W')`` — and averaged over that axis:

* depthwise convs (``I/g = 1``) and the stem (3 input channels) have ``k = r``, and the new channel ``c'`` is
  the mean of the old channels ``c' + j·O/r``, ``j = 0..r-1`` — channels *strided* by ``O/r``;
* pointwise (1×1×1) convs have ``k = r²``, and
  ``new[o', i'] = mean_q W_flat[q·O'I' + o'·I' + i']`` with ``W_flat[n] = W[n // I, n % I]``, which mixes
  rows (output channels) and columns (input channels) of the weight matrix; when r² divides O this is
  ``mean_q W[q·O/r² + o' // r, (o' % r)·I/r + i']`` — rows strided by O/r², and odd new rows (at r = 2)
  reading the second half of the old columns;
* BN γ and β: ``view(r, -1).mean(0)`` — the same rule in one dimension. BN running statistics are not
  transferred (the reduced BNs start at 0/1), and the decoders and fusion are freshly initialised
  (the decoders' widths and upsampling modes change with the reduction, sheet (d)).

The authors apply the rule to the ImageNet MobileNetV2 before training a reduced student; the averaging
acts on the (O, I) axes only, so it commutes with the temporal replication of inflation, and applying it
to an inflated, untrained ×1 encoder gives the same result (``notebooks/02_encoder_inflation``).
"""
from __future__ import annotations

from fractions import Fraction
from typing import Mapping

import torch
from torch import nn

from tinyhd.errors import UserError

__all__ = ["average_kernels", "reduce_state_dict", "reduce_channels"]

_NOT_TRANSFERRED = ("running_mean", "running_var", "num_batches_tracked")


def average_kernels(weight: torch.Tensor, shape: tuple[int, ...] | torch.Size) -> torch.Tensor:
    """Average ``weight`` down to ``shape`` by the authors' rule: ``weight.reshape(k, *shape).mean(0)``.

    ``shape`` must have as many dimensions as ``weight``, the same trailing (kernel) sizes from dim 2 on,
    and no dimension larger than ``weight``'s; ``weight.numel()`` must be a multiple of ``prod(shape)``.
    For a BN vector (1-D) this is ``weight.view(r, -1).mean(0)``.
    """
    shape = tuple(int(s) for s in shape)
    if weight.ndim != len(shape):
        raise ValueError(f"cannot average a {tuple(weight.shape)} tensor into {shape}: different number of dims")
    if weight.ndim > 2 and tuple(weight.shape[2:]) != shape[2:]:
        raise ValueError(f"cannot average a {tuple(weight.shape)} kernel into {shape}: the kernel sizes differ "
                         "(kernel averaging changes channels only)")
    if any(s > w for s, w in zip(shape, weight.shape)):
        raise ValueError(f"cannot average a {tuple(weight.shape)} tensor into the larger {shape}")
    new_numel = 1
    for s in shape:
        new_numel *= s
    if new_numel == 0 or weight.numel() % new_numel:
        raise ValueError(f"cannot average a {tuple(weight.shape)} tensor into {shape}: "
                         f"{weight.numel()} elements are not a multiple of {new_numel}")
    k = weight.numel() // new_numel
    # row-major reinterpretation [k, O', I', kt, kh, kw], then the mean over the k groups (sheet (d))
    return weight.detach().reshape(k, *shape).mean(0)


def reduce_state_dict(source: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor],
                      prefix: str = "") -> dict[str, torch.Tensor]:
    """Kernel-averaged tensors for every parameter of ``target`` under ``prefix`` (e.g. ``"encoder."``).

    ``target`` gives the reduced shapes (a state dict of the reduced model). BN running statistics and
    ``num_batches_tracked`` are skipped (not transferred). Returns only the averaged entries, ready for
    ``load_state_dict(..., strict=False)``.
    """
    out: dict[str, torch.Tensor] = {}
    for key, tensor in target.items():
        if not key.startswith(prefix) or key.rsplit(".", 1)[-1] in _NOT_TRANSFERRED:
            continue
        if key not in source:
            raise KeyError(f"reduced model has {key!r} but the full model does not: architectures differ")
        try:
            out[key] = average_kernels(source[key], tensor.shape).to(tensor.dtype)
        except ValueError as exc:
            raise ValueError(f"{key}: {exc}") from None
    return out


def _factor(factor: float | int | Fraction) -> int:
    """2 or 4 (channels divided by), accepting the paper's ×½ / ×¼ as 0.5 / 0.25 too."""
    try:
        f = Fraction(factor).limit_denominator(64)
    except (TypeError, ValueError):
        raise UserError(f"reduction factor must be 2 or 4 (or 0.5 / 0.25, the paper's ×½ / ×¼), got {factor!r}") from None
    if f < 1 and f > 0:
        f = 1 / f
    if f.denominator != 1 or int(f) not in (2, 4):
        raise UserError(f"reduction factor must be 2 or 4 (or 0.5 / 0.25, the paper's ×½ / ×¼), got {factor!r}")
    return int(f)


def reduce_channels(model: nn.Module, factor: float | int = 2) -> nn.Module:
    """A new TinyHD with ``factor``× fewer channels whose encoder is the kernel average of ``model``'s.

    Paper §3.3.2 / sheet (d). ``factor`` is 2 or 4 (0.5 / 0.25 are read as ×½ / ×¼); the new model's
    reduction is ``model.config["reduction"] * factor`` (1 → 2 → 4, the paper's successive students), with
    the same output mode and decoders and the default fusion order. Encoder convs and BN γ/β are averaged (:func:`average_kernels`),
    BN running statistics start at 0/1, decoders and fusion are freshly initialised (PyTorch's default RNG:
    seed it for reproducibility). ``model`` is not modified; the result is in ``model``'s train/eval mode.
    """
    from tinyhd.model import TinyHD

    if not isinstance(model, TinyHD):
        raise UserError(f"reduce_channels needs a tinyhd.TinyHD, got {type(model).__name__}")
    r = _factor(factor)
    config = dict(model.config)
    new_reduction = int(config.get("reduction", 1)) * r
    if new_reduction not in (2, 4):
        raise UserError(f"cannot reduce a ×1/{config.get('reduction', 1)} model by {r}: TinyHD exists at "
                        f"reductions 1, 2 and 4 only (paper Table 5), asked for 1/{new_reduction}")
    # the fusion is fresh, so its input order is the default one, as in the authors' released rc2/rc4 M models
    # (only their ×1 M model has D1's maps last, sheet §"Released checkpoints")
    config.update(reduction=new_reduction, pretrained_backbone=False, fusion_order="default")
    student = TinyHD(**config)
    param = next(model.parameters())
    student = student.to(device=param.device, dtype=param.dtype)
    averaged = reduce_state_dict(model.state_dict(), student.state_dict(), prefix="encoder.")
    if not averaged:
        raise UserError("the model has no 'encoder.' parameters to average; is it a TinyHD?")
    missing_enc = [k for k in averaged if k not in student.state_dict()]
    assert not missing_enc, missing_enc
    student.load_state_dict(averaged, strict=False)
    student.train(model.training)
    return student
