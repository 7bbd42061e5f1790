"""Loading the authors' released TinyHD weights, and our own checkpoint format.

The authors' files (``{"student_model": state_dict}``, key layout in ``shared/spec/tinyhd_architecture.md``
(h)) are ported with an explicit key map, shape asserts and ``strict=True``: a missing, unexpected or
mis-shaped tensor is a :class:`~tinyhd.errors.CheckpointError` naming the file and the key — never a silently
random model. Their variant is read off the tensors:

* single vs multi output: the fusion weight is 4D (Conv2d) in S, 5D (Conv3d) in M; the temporal kernel of
  encoder depthwise conv 14 is 3 in S and 2 in M;
* reduction: the stem width (32 / 16 / 8 channels at ×1 / ×½ / ×¼);
* fusion order: multi-output at ×1 → D1 last (``d1d2d3_M_lt.pth``); everything else default.

Our format is ``{"format": "tinyhd", "config": model.config, "model": state_dict, ...extra}``, written
atomically.
"""
from __future__ import annotations

import os
import pickle
import re
from pathlib import Path
from typing import Any, Mapping

import torch

from tinyhd.errors import CheckpointError, UserError
from tinyhd.model import TinyHD
from tinyhd.paths import atomic_torch_save

FORMAT = "tinyhd"
OFFICIAL_DECODERS = ("d1", "d2", "d3")
_OFFICIAL_BLOCKS = {"d1": 16, "d2": 8, "d3": 13}  # IRBs per decoder in the authors' aggregate_adapter list
_STEM_WIDTH_TO_REDUCTION = {32: 1, 16: 2, 8: 4}


# ---------------------------------------------------------------------------------------------- key map
def official_key_to_ours(key: str, decoders: tuple[str, ...] = OFFICIAL_DECODERS) -> str:
    """Map one of the authors' state-dict keys to ours (``encoder.encoder.`` → ``encoder.features.``,
    ``aggregator.aggregate_adapter.{j}.`` → ``decoders.{k}.blocks.{j - offset_k}.``,
    ``decoder.decoder.0.`` → ``fusion.``). Raises KeyError for a key outside that layout."""
    if key.startswith("encoder.encoder."):
        return "encoder.features." + key[len("encoder.encoder."):]
    if key.startswith("decoder.decoder.0."):
        return "fusion." + key[len("decoder.decoder.0."):]
    m = re.fullmatch(r"aggregator\.aggregate_adapter\.(\d+)\.(.+)", key)
    if m:
        j, rest = int(m.group(1)), m.group(2)
        for k, kind in enumerate(decoders):
            n = _OFFICIAL_BLOCKS[kind]
            if j < n:
                return f"decoders.{k}.blocks.{j}.{rest}"
            j -= n
    raise KeyError(key)


def our_key_to_official(key: str, decoders: tuple[str, ...] = OFFICIAL_DECODERS) -> str:
    """Inverse of :func:`official_key_to_ours`."""
    if key.startswith("encoder.features."):
        return "encoder.encoder." + key[len("encoder.features."):]
    if key.startswith("fusion."):
        return "decoder.decoder.0." + key[len("fusion."):]
    m = re.fullmatch(r"decoders\.(\d+)\.blocks\.(\d+)\.(.+)", key)
    if m:
        k, j, rest = int(m.group(1)), int(m.group(2)), m.group(3)
        offset = sum(_OFFICIAL_BLOCKS[d] for d in decoders[:k])
        return f"aggregator.aggregate_adapter.{offset + j}.{rest}"
    raise KeyError(key)


# ------------------------------------------------------------------------------------------ raw loading
def read_torch_file(path: str | Path, map_location: Any = "cpu") -> Any:
    """``torch.load(weights_only=True)`` with every failure turned into a CheckpointError naming ``path`` and what
    is wrong (missing, a folder, truncated or not a PyTorch file, pickled code). Every checkpoint reader uses it."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint file")
    if not path.is_file():
        raise CheckpointError(f"{path}: not a file (a checkpoint is one .pth/.pt file)")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: empty file (0 bytes; an interrupted download or copy?)")
    if _asks_for_cuda(map_location) and not torch.cuda.is_available():
        raise CheckpointError(f"{path}: map_location={str(map_location)!r} asks for CUDA, but CUDA is not available "
                              f"to this process; use map_location='cpu'")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # truncated zip, text file, wrong magic number, pickled code, ...
        text = str(exc)
        if "Attempting to deserialize object on a CUDA device" in text:  # saved on CUDA, or mapped there
            raise CheckpointError(f"{path}: its tensors are to be loaded onto CUDA (saved there, or mapped there "
                                  f"by map_location={map_location!r}), but CUDA is not available to this process; "
                                  f"use map_location='cpu'") from exc
        found = re.search(r"Unsupported global: GLOBAL (\S+)", text)
        if isinstance(exc, pickle.UnpicklingError) and found:
            raise CheckpointError(f"{path}: refused to load: the pickle holds objects other than tensors and plain "
                                  f"containers, which could run code (it references {found.group(1)})") from exc
        # not a file the weights-only reader understands at all (a text file, another format, garbage)
        why = re.search(r"WeightsUnpickler error:\s*(.+)", text)
        detail = why.group(1).strip() if why else (text.splitlines()[0] if text else "")
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint (truncated, corrupt or another format?): "
                              f"{type(exc).__name__}: {detail}") from exc


def _asks_for_cuda(map_location: Any) -> bool:
    """Whether ``map_location`` names a CUDA device (a string or torch.device; other forms are left to torch)."""
    if isinstance(map_location, (str, torch.device)):
        try:
            return torch.device(map_location).type == "cuda"
        except RuntimeError:
            return False
    return False


def check_finite(state: Mapping[str, Any], path: str | os.PathLike) -> None:
    """Refuse a state dict holding NaN or infinite values (a diverged training run saves exactly that), naming
    ``path`` and the keys: such weights give NaN maps, which fused inference kernels can clamp into plausible
    ones."""
    bad = [str(k) for k, v in state.items()
           if isinstance(v, torch.Tensor) and v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise CheckpointError(f"{path}: {len(bad)} tensor(s) hold NaN or infinite values ({', '.join(bad[:3])}"
                              f"{' …' if len(bad) > 3 else ''}); a diverged training run? Refusing to load them")


def _describe(obj: Any) -> str:
    """A short description of what an unexpected checkpoint looks like, for error messages."""
    if isinstance(obj, Mapping):
        keys = list(obj)
        tensor_keys = [k for k in keys if isinstance(obj[k], torch.Tensor)]
        if tensor_keys:
            prefixes = sorted({str(k).split(".")[0] for k in tensor_keys})
            hint = ""
            if any(str(k).startswith(("featureExtractor.", "module.featureExtractor.")) for k in tensor_keys):
                hint = " (looks like an HD2S teacher state dict: load it with tinyhd.load_official_hd2s)"
            elif any(str(k).startswith("encoder.features.") for k in tensor_keys):
                hint = " (looks like a bare TinyHD state dict from this package: save models with save_checkpoint)"
            return f"a state dict of {len(tensor_keys)} tensors with top-level prefixes {prefixes[:8]}{hint}"
        nested = [k for k in keys if isinstance(obj[k], Mapping) and any(isinstance(v, torch.Tensor) for v in obj[k].values())]
        if nested:  # e.g. {"state_dict": {...}} or {"model_state_dict": {...}}
            return f"a dict with keys {[str(k) for k in keys[:10]]} whose {nested[0]!r} is {_describe(obj[nested[0]])}"
        return f"a dict with keys {[str(k) for k in keys[:10]]}"
    return f"a {type(obj).__name__}"


def _state_dict_variant(sd: Mapping[str, torch.Tensor], path: Path) -> dict[str, Any]:
    """Infer TinyHD constructor kwargs from the authors' tensors."""
    def need(key: str) -> torch.Tensor:
        if key not in sd:
            raise CheckpointError(f"{path}: missing key {key!r}; this is not one of the authors' TinyHD "
                                  f"checkpoints ({_describe(sd)})")
        return sd[key]

    stem = need("encoder.encoder.0.0.weight")
    reduction = _STEM_WIDTH_TO_REDUCTION.get(stem.shape[0])
    if stem.ndim != 5 or reduction is None:
        raise CheckpointError(f"{path}: encoder.encoder.0.0.weight has shape {tuple(stem.shape)}; expected "
                              f"(32|16|8, 3, 3, 3, 3) for reduction ×1/×½/×¼")
    fusion = need("decoder.decoder.0.weight")
    dw14 = need("encoder.encoder.14.conv.1.0.weight")
    if fusion.ndim == 4:
        output = "single"
    elif fusion.ndim == 5:
        output = "multi"
    else:
        raise CheckpointError(f"{path}: decoder.decoder.0.weight has shape {tuple(fusion.shape)}; expected a "
                              f"Conv2d (S) or Conv3d (M) 1×1 fusion weight")
    expected_kt = 3 if output == "single" else 2
    if dw14.shape[2] != expected_kt:
        raise CheckpointError(f"{path}: encoder.encoder.14.conv.1.0.weight has temporal kernel {dw14.shape[2]} but "
                              f"the fusion weight says {output}-output (expected kt={expected_kt})")
    return dict(output=output, decoders=OFFICIAL_DECODERS, reduction=reduction,
                fusion_order="d1_last" if (output == "multi" and reduction == 1) else "default")


def port_official_state_dict(model: TinyHD, official: Mapping[str, torch.Tensor], path: str | os.PathLike = "<state dict>") -> None:
    """Copy the authors' tensors into ``model`` through the explicit key map: strict, shape-checked."""
    path = Path(path)
    decoders = model.config["decoders"]
    ours = model.state_dict()
    mapped: dict[str, torch.Tensor] = {}
    unexpected = []
    for key, value in official.items():
        try:
            new_key = official_key_to_ours(key, decoders)
        except KeyError:
            unexpected.append(key)
            continue
        if new_key not in ours:
            unexpected.append(key)
            continue
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{path}: {key} is a {type(value).__name__}, not a tensor")
        if tuple(value.shape) != tuple(ours[new_key].shape):
            raise CheckpointError(f"{path}: {key} has shape {tuple(value.shape)}, expected "
                                  f"{tuple(ours[new_key].shape)} for {model.config}")
        mapped[new_key] = value
    missing = [our_key_to_official(k, decoders) for k in ours if k not in mapped]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing key(s), e.g. {missing[:3]}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s), e.g. {unexpected[:3]}")
        raise CheckpointError(f"{path}: does not match TinyHD {model.config}: " + "; ".join(parts))
    check_finite(official, path)
    model.load_state_dict(mapped, strict=True)


def released_copy(path: str | os.PathLike) -> Path:
    """``path`` if it exists; else, when it is the bare name of a released checkpoint (``d123m_rc4_rc1T.pth``,
    see ``tinyhd weights list``), the verified copy that ``tinyhd weights download NAME`` left in
    ``tinyhd.weights.default_dest()``. Never downloads (CheckpointError saying how to, when there is no copy).

    So the Python API takes the names the command line takes (``tinyhd predict --checkpoint NAME``)."""
    path = Path(path)
    if path.exists() or str(path) != path.name:  # a file, or a path with folders: taken as it is
        return path
    from tinyhd import weights  # lazy: weights does not import this module, but keep loading light

    try:
        known = path.name in weights.registry()
    except UserError:
        known = False
    if not known:
        return path  # read_torch_file says "no such checkpoint file"
    local = weights.default_dest() / path.name
    if not local.is_file():
        raise CheckpointError(f"{path}: no such file, and the released checkpoint of that name is not downloaded "
                              f"(not in {weights.default_dest()}); get it with `tinyhd weights download {path.name}` "
                              f"(or tinyhd.weights.download({path.name!r})), or pass the path of a copy")
    weights.verify(local, path.name)  # CheckpointError naming the damaged copy
    return local


def load_official_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> TinyHD:
    """Build the TinyHD variant of one of the authors' 8 released files and load it strictly (eval mode).

    ``path`` may be a released file's bare name, once downloaded (:func:`released_copy`).

    >>> model = load_official_checkpoint("d123m_rc4_rc1T.pth")   # TinyHD-M ×¼, D1 single-output
    """
    path = released_copy(path)
    obj = read_torch_file(path, map_location)
    if not isinstance(obj, Mapping) or "student_model" not in obj:
        raise CheckpointError(f"{path}: expected the authors' format {{'student_model': state_dict}}, found "
                              f"{_describe(obj)}")
    sd = obj["student_model"]
    if not isinstance(sd, Mapping):
        raise CheckpointError(f"{path}: 'student_model' is a {type(sd).__name__}, not a state dict")
    model = TinyHD(**_state_dict_variant(sd, path))
    port_official_state_dict(model, sd, path)
    return _to_device(model, map_location).eval()


# ---------------------------------------------------------------------------------------------- our format
def save_checkpoint(model: TinyHD, path: str | os.PathLike, **extra: Any) -> None:
    """Write ``{"format": "tinyhd", "config": model.config, "model": state_dict, **extra}`` atomically."""
    if not isinstance(model, TinyHD):
        raise TypeError(f"save_checkpoint expects a TinyHD model, got {type(model).__name__}")
    reserved = {"format", "config", "model"} & set(extra)
    if reserved:
        raise ValueError(f"extra keys {sorted(reserved)} are reserved")
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    atomic_torch_save({"format": FORMAT, "config": dict(model.config), "model": state, **extra}, path)


def _from_config(config: Any, state: Any, path: Path) -> TinyHD:
    if not isinstance(config, Mapping) or not isinstance(state, Mapping):
        raise CheckpointError(f"{path}: 'config' must be a dict and 'model' a state dict")
    config = dict(config)
    config["pretrained_backbone"] = False  # the weights come from the file; never download for a load
    try:
        model = TinyHD(**config)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: its config {config} does not describe a TinyHD: {exc}") from exc
    ours = model.state_dict()
    missing = [k for k in ours if k not in state]
    unexpected = [k for k in state if k not in ours]
    if missing or unexpected:
        raise CheckpointError(f"{path}: state dict does not match TinyHD {config}: missing {missing[:3]} "
                              f"({len(missing)}), unexpected {unexpected[:3]} ({len(unexpected)})")
    for k, v in state.items():
        if tuple(v.shape) != tuple(ours[k].shape):
            raise CheckpointError(f"{path}: {k} has shape {tuple(v.shape)}, expected {tuple(ours[k].shape)}")
    check_finite(state, path)
    model.load_state_dict(state, strict=True)
    return model


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> TinyHD:
    """Load a TinyHD from our format, a training ``last.pt`` (``"model"`` + ``"config"``), or the authors'
    ``{"student_model": ...}`` files (also by a released file's bare name, once downloaded: :func:`released_copy`).
    The model is returned in eval mode."""
    path = released_copy(path)
    obj = read_torch_file(path, map_location)
    if _is_hd2s(obj):
        raise CheckpointError(f"{path}: an HD2S checkpoint (the teacher), not a TinyHD one: load it with "
                              f"tinyhd.load_hd2s, or use it as a teacher (teacher: hd2s:PATH)")
    if isinstance(obj, Mapping) and "student_model" in obj:
        return load_official_checkpoint(path, map_location)
    if isinstance(obj, Mapping) and "model" in obj and "config" in obj:
        config = obj["config"]
        if isinstance(config, Mapping) and "model" in config and isinstance(config["model"], Mapping):
            config = config["model"]  # a training config that nests the model kwargs
        if isinstance(config, Mapping):
            config = {k: v for k, v in config.items() if k in _TINYHD_KWARGS} if obj.get("format") != FORMAT else config
        model = _to_device(_from_config(config, obj["model"], path), map_location).eval()
        train_config = obj.get("train_config")
        if isinstance(train_config, Mapping) and isinstance(train_config.get("size"), (list, tuple)):
            model.trained_size = tuple(int(v) for v in train_config["size"])  # H, W of the clips it was trained on
        return model
    raise CheckpointError(f"{path}: not a TinyHD checkpoint: expected {{'format': 'tinyhd', 'config', 'model'}} "
                          f"or the authors' {{'student_model': ...}}, found {_describe(obj)}")


def _is_hd2s(obj: Any) -> bool:
    """An HD2S file: ours (``format: hd2s``, also a training ``last.pt``) or the authors' bare state dict."""
    if not isinstance(obj, Mapping):
        return False
    if obj.get("format") == "hd2s":
        return True
    return bool(obj) and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()) \
        and any(k.startswith(("featureExtractor.", "module.featureExtractor.")) for k in obj)


def _to_device(model: TinyHD, map_location: Any) -> TinyHD:
    """Put the model where ``map_location`` put the tensors (a device or its name; other forms: left on CPU)."""
    if isinstance(map_location, (str, torch.device)):
        return model.to(torch.device(map_location))
    return model


_TINYHD_KWARGS = ("output", "decoders", "reduction", "pretrained_backbone", "d1_output", "fusion_order")
