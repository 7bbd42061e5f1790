"""Input normalisation exactly as the released TinyHD weights expect it.

From the authors' inference pipeline (fixture README, architecture sheet (e)): uint8 RGB frames are divided
by 255, normalised per channel with the ImageNet mean/std, laid out C×T×H×W and *then* resized to 192×256
with ``torchvision.transforms.functional.resize`` (bilinear, ``antialias=False``, the default of the
torchvision 0.14 the authors used). No crop, no flip. On the fixture clip this is bit-exact.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:  # torch is imported inside the functions so that `import tinyhd` stays light
    import numpy as np
    import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INPUT_SIZE = (192, 256)  # H×W the released weights were trained at


def preprocess(frames: np.ndarray | torch.Tensor, size: Sequence[int] | None = INPUT_SIZE) -> torch.Tensor:
    """T×H×W×3 uint8 RGB frames -> 3×T×h×w float32 student input (ImageNet-normalised, then resized).

    ``size=None`` skips the resize. Grayscale input (T×H×W or T×H×W×1) is replicated to three channels.
    """
    import numpy as np
    import torch
    x = torch.as_tensor(np.asarray(frames) if not isinstance(frames, torch.Tensor) else frames)
    if x.ndim == 3:  # T×H×W grayscale
        x = x.unsqueeze(-1)
    if x.ndim != 4 or x.shape[-1] not in (1, 3):
        raise ValueError(f"preprocess expects T×H×W×3 RGB frames, got shape {tuple(x.shape)}")
    if x.shape[-1] == 1:
        x = x.expand(*x.shape[:-1], 3)
    if x.dtype != torch.uint8:
        raise ValueError(f"preprocess expects uint8 frames (0..255), got {x.dtype}")
    x = x.permute(3, 0, 1, 2).float().div_(255.0)  # 3×T×H×W
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1, 1)
    x = (x - mean) / std
    if size is not None and tuple(x.shape[-2:]) != tuple(size):
        from torchvision.transforms.functional import InterpolationMode, resize

        x = resize(x, list(size), interpolation=InterpolationMode.BILINEAR, antialias=False)
    return x.contiguous()


def student_to_teacher_input(clip: torch.Tensor) -> torch.Tensor:
    """Convert an ImageNet-normalised student clip (…×3×T×H×W) to HD2S's [−1, 1] input, (2x − 255)/255.

    The map is affine per channel, so this equals normalising the resized uint8 frames for the teacher.
    """
    shape = [1] * clip.ndim
    shape[-4] = 3
    mean = clip.new_tensor(IMAGENET_MEAN).view(shape)
    std = clip.new_tensor(IMAGENET_STD).view(shape)
    return (clip * std + mean) * 2.0 - 1.0
