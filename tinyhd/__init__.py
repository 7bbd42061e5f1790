"""TinyHD (WACV 2023) and its distillation teacher HD2S (IJCV 2021): a literate reference implementation.

The public names are listed in ``__all__``; they are imported lazily so that ``import tinyhd`` stays cheap
(no torch import until a model is asked for) and a command such as ``tinyhd verify-data`` starts quickly.
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it
_LAZY = {
    # model (issue 3)
    "TinyHD": "tinyhd.model",
    "TinyHDOutput": "tinyhd.model",
    "reduce_channels": "tinyhd.reduction",
    "load_official_checkpoint": "tinyhd.checkpoints",
    "save_checkpoint": "tinyhd.checkpoints",
    "load_checkpoint": "tinyhd.checkpoints",
    "count_complexity": "tinyhd.complexity",
    # teacher (issue 5)
    "HD2S": "tinyhd.teacher",
    "HD2SOutput": "tinyhd.teacher",
    "load_official_hd2s": "tinyhd.teacher",
    # inference (issue 4)
    "predict_video": "tinyhd.inference",
    "postprocess": "tinyhd.inference",
}

# every module of the package (``tests/test_model.py`` checks that none is missing); ``preprocess`` is bound
# to the function below, the module stays reachable as ``importlib.import_module("tinyhd.preprocess")``
_SUBMODULES = {
    "data", "video", "manifest", "synth", "paths", "errors", "encoder", "decoders", "model", "reduction",
    "checkpoints", "weights", "preprocess", "complexity", "teacher", "teacher_cache", "s3d", "similarity",
    "losses", "metrics", "inference", "evaluate", "training", "cpu_train", "fast", "kernels", "cli",
}

# `tinyhd.preprocess` is both a module and the function it defines; bind the function eagerly (the module
# imports torch lazily, so this stays cheap) so that the name never resolves to the module.
from tinyhd.preprocess import preprocess  # noqa: E402

__all__ = sorted(_LAZY) + ["preprocess", "__version__"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    if name in _SUBMODULES:
        return importlib.import_module(f"tinyhd.{name}")
    raise AttributeError(f"module 'tinyhd' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY) | _SUBMODULES)
