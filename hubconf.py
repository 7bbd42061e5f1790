"""``torch.hub`` entry points for TinyHD (WACV 2023).

    model = torch.hub.load("OWNER/tinyhd", "tinyhd_m", pretrained=True, reduction=4)
    maps = tinyhd.predict_video(model, "clip.mp4")      # or run the model on tinyhd.preprocess(frames)

``pretrained=False`` (default) returns a randomly initialised model and never touches the network.
``pretrained=True`` loads the authors' released checkpoint for that variant from the weights registry
(``data_manifests/weights.yaml``): ``tinyhd.weights.download`` fetches it once (verified by hash) into
``<tinyhd cache>/weights`` and reuses the verified copy afterwards. Released files (TinyHD-S = single output,
TinyHD-M = multi output):

=========  ======================  ======================
reduction  DHF1K, S                DHF1K, M
=========  ======================  ======================
1          d1d2d3_S_lt.pth         d1d2d3_M_lt.pth
2          d123s_rc2_rc1T.pth      d123m_rc2_rc1T.pth
4          d123s_rc4_rc1T.pth      d123m_rc4_rc1T.pth
=========  ======================  ======================

``dataset="UCF-Sports"`` selects the UCF-Sports files (×1 only). The released files have no stated licence:
they are downloaded on request and never shipped.
"""
from __future__ import annotations

dependencies = ["torch", "torchvision", "numpy", "cv2", "yaml", "tqdm"]


def _released_name(output: str, reduction: int, dataset: str) -> str:
    from tinyhd.weights import registry

    matches = [e.name for e in registry().values()
               if e.variant.get("output") == output and int(e.variant.get("reduction", 0)) == reduction
               and e.training_set.lower() == dataset.lower()]
    if not matches:
        from tinyhd.errors import UserError

        raise UserError(f"no released TinyHD-{'S' if output == 'single' else 'M'} ×1/{reduction} checkpoint trained "
                        f"on {dataset} (see `tinyhd weights list`)")
    return matches[0]


def _build(output: str, pretrained: bool, reduction: int, dataset: str, kwargs: dict):
    import tinyhd

    # the entry point fixes the output mode: an ``output`` keyword (a dict here, not **kwargs, whose clash with
    # the positional ``output`` would be a bare TypeError) may only repeat it
    kwargs = dict(kwargs)
    asked = kwargs.pop("output", output)
    if asked != output:
        mine, other = ("tinyhd_s", "tinyhd_m") if output == "single" else ("tinyhd_m", "tinyhd_s")
        raise ValueError(f"{mine} builds TinyHD-{'S' if output == 'single' else 'M'} (output={output!r}); for "
                         f"output={asked!r} use the {other!r} entry point instead")
    if reduction not in (1, 2, 4):
        raise ValueError(f"reduction must be 1, 2 or 4, got {reduction!r}")
    if not pretrained:
        return tinyhd.TinyHD(output=output, reduction=reduction, **kwargs)
    if kwargs:
        raise ValueError(f"pretrained=True builds the released architecture; unexpected arguments {sorted(kwargs)}")
    from tinyhd.weights import download

    path = download(_released_name(output, reduction, dataset))
    return tinyhd.load_official_checkpoint(path)


def tinyhd_s(pretrained: bool = False, reduction: int = 1, dataset: str = "DHF1K", **kwargs):
    """TinyHD-S (single output / MISO: the map of a 16-frame clip's last frame). Channel ``reduction`` 1, 2 or 4.

    ``pretrained=True`` downloads (once, verified) and loads the authors' released weights; other keyword
    arguments go to ``tinyhd.TinyHD`` when ``pretrained=False`` (``output`` is fixed: use ``tinyhd_m`` for MIMO).
    """
    return _build("single", pretrained, reduction, dataset, kwargs)


def tinyhd_m(pretrained: bool = False, reduction: int = 1, dataset: str = "DHF1K", **kwargs):
    """TinyHD-M (multi output / MIMO: 16 maps for a 16-frame clip). Channel ``reduction`` 1, 2 or 4.

    ``pretrained=True`` downloads (once, verified) and loads the authors' released weights; other keyword
    arguments go to ``tinyhd.TinyHD`` when ``pretrained=False`` (``output`` is fixed: use ``tinyhd_s`` for MISO).
    """
    return _build("multi", pretrained, reduction, dataset, kwargs)
