"""Checks on the notebooks' code that need no full execution: parameters papermill can see and override, where
runs are written, how full scale resolves, and notebook 01's released-predictions path (executed, ~10 s)."""
from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def _cells(path: Path) -> list[Any]:
    import nbformat

    return nbformat.read(path, as_version=4).cells


def _parameters_cell(path: Path) -> str:
    tagged = [c.source for c in _cells(path) if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1, f"{path.name}: expected one cell tagged 'parameters'"
    return tagged[0]


def _parameters(path: Path) -> dict[str, ast.expr]:
    """name -> default expression of every assignment in the parameters cell."""
    out = {}
    for node in ast.parse(_parameters_cell(path)).body:
        if isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    out[target.id] = node.value
    return out


def _code(path: Path) -> list[str]:
    """Sources of the code cells after the parameters cell."""
    cells = _cells(path)
    start = next(i for i, c in enumerate(cells) if "parameters" in c.get("metadata", {}).get("tags", []))
    return [c.source for c in cells[start + 1:] if c.cell_type == "code"]


def test_there_are_notebooks():
    assert len(NOTEBOOKS) == 7, [p.name for p in NOTEBOOKS]


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_parameter_is_seen_by_papermill(nb: Path):
    """papermill lists (and so can override) every assignment of the parameters cell: a line it cannot parse
    (e.g. a comment holding '=') is dropped from `papermill --help-notebook` with only a warning."""
    import papermill

    seen = set(papermill.inspect_notebook(str(nb)))
    assigned = set(_parameters(nb))
    assert assigned, f"{nb.name}: no parameters"
    assert assigned <= seen, f"{nb.name}: papermill does not see {sorted(assigned - seen)}"


def _runs_dir_calls(tree: ast.AST) -> list[ast.Call]:
    return [n for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)
            and n.func.id == "runs_dir"]


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.stem)
def test_runs_dir_is_only_a_parameter_default(nb: Path):
    """Every folder a notebook writes to is a parameter: `runs_dir()` may appear only as the fallback of
    `P = Path(P) if P is not None else runs_dir() / ...` for a parameter P (out_dir, distill_dir, ...), so that
    `-p out_dir X` (and the notebook's other *_dir parameters) move every write out of the repository."""
    params = set(_parameters(nb))
    for source in _code(nb):
        tree = ast.parse(source)
        allowed: set[int] = set()
        for node in ast.walk(tree):
            if (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)
                    and isinstance(node.value, ast.IfExp)):
                name = node.targets[0].id
                test = node.value.test
                guards_param = (isinstance(test, ast.Compare) and isinstance(test.left, ast.Name)
                                and test.left.id == name and name in params)
                if guards_param:
                    allowed |= {id(c) for c in _runs_dir_calls(node.value.orelse)}
        stray = [ast.unparse(c) for c in _runs_dir_calls(tree) if id(c) not in allowed]
        assert not stray, f"{nb.name}: runs_dir() used outside a parameter's default: {source[:200]!r}"


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.stem)
def test_tuple_parameters_are_not_compared_as_given(nb: Path):
    """papermill -y passes lists: a tuple-valued parameter compared with a tuple literal (`clip_size == (192,
    256)`) is silently False for `[192, 256]`, and the checks it guards are skipped. Compare tuple(P), or
    normalise P with tuple() first."""
    tuple_params = {k for k, v in _parameters(nb).items() if isinstance(v, ast.Tuple)}
    for source in _code(nb):
        tree = ast.parse(source)
        normalised = {t.id for n in ast.walk(tree) if isinstance(n, ast.Assign)
                      for t in ast.walk(n.targets[0]) if isinstance(t, ast.Name) and "tuple(" in ast.unparse(n.value)}
        for node in ast.walk(tree):
            if not isinstance(node, ast.Compare):
                continue
            operands = [node.left, *node.comparators]
            names = {o.id for o in operands if isinstance(o, ast.Name)} & tuple_params
            if names and any(isinstance(o, ast.Tuple) for o in operands):
                assert names <= normalised, f"{nb.name}: {ast.unparse(node)} compares a parameter as given"


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.stem)
def test_markdown_quotes_no_run_numbers(nb: Path):
    """Results of a particular execution belong in the outputs, not in the prose: a rerun gives other numbers
    and another order at reduced scale."""
    for cell in _cells(nb):
        if cell.cell_type == "markdown":
            hit = re.search(r"\b(in|from)\s+our\s+runs?\b", cell.source, flags=re.I)
            assert not hit, f"{nb.name}: markdown quotes a run: ...{cell.source[max(0, hit.start() - 80):hit.end() + 80]}..."


# -- full scale: what the parameters resolve to -------------------------------------------------------------

def _setup(nb: Path, tmp_path: Path, **overrides: Any) -> dict[str, Any]:
    """Run the parameters cell, papermill-style overrides, then the code cells up to the one that resolves the
    scale (imports and parameter resolution only: nothing is trained)."""
    ns: dict[str, Any] = {"__name__": "__notebook__"}
    exec(compile(_parameters_cell(nb), f"{nb.name}:parameters", "exec"), ns)
    ns.update(out_dir=str(tmp_path / "out"), **overrides)
    for i, source in enumerate(_code(nb)[:3]):
        exec(compile(source, f"{nb.name}:cell{i}", "exec"), ns)
        if "scale" in ns:
            return ns
    raise AssertionError(f"{nb.name}: no cell resolves `scale` (tinyhd.training.notebook_scale)")


DISTILL = [ROOT / "notebooks" / f"{n}.ipynb" for n in ("04_distill", "05_miso_vs_mimo", "06_channel_reduction")]


@pytest.mark.parametrize("nb", DISTILL, ids=lambda p: p.stem)
def test_distillation_notebooks_need_a_teacher_at_full_scale(nb: Path, tmp_path: Path):
    """With data_root and the default teacher the notebook stops at once, saying what to pass, instead of
    training a toy HD2S over DHF1K + Kinetics-400; with a teacher, epochs switch to the paper's 200."""
    from tinyhd.errors import UserError

    data = tmp_path / "DHF1K"
    with pytest.raises(UserError, match="hd2s:"):
        _setup(nb, tmp_path, data_root=str(data))
    ns = _setup(nb, tmp_path, data_root=str(data), teacher="hd2s:/w/hd2s.pth")
    assert (ns["epochs"], ns["teacher"], ns["full"]) == (200, "hd2s:/w/hd2s.pth", True)
    reduced = _setup(nb, tmp_path)
    assert (reduced["epochs"], reduced["teacher"], reduced["full"]) == (10, "reduced", False)


@pytest.mark.parametrize("nb", DISTILL, ids=lambda p: p.stem)
def test_distillation_notebooks_take_a_kinetics_subset(nb: Path, tmp_path: Path):
    """max_aux_videos: all auxiliary videos at full scale, 4 at reduced scale, N when given (a Kinetics-400
    subset cached with `tinyhd cache-teacher --max-videos N`, which the trainer would otherwise refuse)."""
    full = dict(data_root=str(tmp_path / "DHF1K"), teacher="cache:/c")
    assert _setup(nb, tmp_path, **full)["max_aux_videos"] is None
    assert _setup(nb, tmp_path, **full, max_aux_videos=500)["max_aux_videos"] == 500
    assert _setup(nb, tmp_path)["max_aux_videos"] == 4


@pytest.mark.parametrize("nb", DISTILL, ids=lambda p: p.stem)
def test_distillation_notebooks_run_at_full_scale_on_a_partial_copy_offline(nb: Path, tmp_path: Path):
    """max_videos / val_videos / pretrained_backbone reach the configs (a partial DHF1K copy, a dry run, no ImageNet
    weights offline); a full-scale run shortened by parameters does not assert the centre-bias claim."""
    full = dict(data_root=str(tmp_path / "DHF1K"), teacher="cache:/c")
    ns = _setup(nb, tmp_path, **full)
    assert (ns["max_videos"], ns["val_videos"], ns["pretrained_backbone"], ns["shortened"]) == (None, None, True, False)
    ns = _setup(nb, tmp_path, **full, max_videos=4, val_videos=1, pretrained_backbone=False, max_steps=3)
    assert (ns["max_videos"], ns["val_videos"], ns["pretrained_backbone"], ns["shortened"]) == (4, 1, False, True)
    reduced = _setup(nb, tmp_path)
    assert (reduced["val_videos"], reduced["pretrained_backbone"], reduced["shortened"]) == (2, False, False)
    source = "\n".join(_code(nb))
    for name in ("max_videos=max_videos", "val_videos=val_videos", "pretrained_backbone=pretrained_backbone"):
        assert name in source, (nb.name, name)


@pytest.mark.parametrize("nb", DISTILL[1:], ids=lambda p: p.stem)
def test_shared_distillation_runs_follow_distill_dir(nb: Path, tmp_path: Path):
    """05/06 reuse notebook 04's "+ AD" run from distill_dir (04's out_dir), not from the repository's runs/."""
    ns = _setup(nb, tmp_path, distill_dir=str(tmp_path / "nb04"))
    assert ns["shared_runs"] == tmp_path / "nb04" and ns["out_dir"] == tmp_path / "out"


def test_decoders_table3_setting_by_parameters(tmp_path: Path):
    """03 §5 reaches Table 3's setting by parameters: the paper's schedule with data_root, distillation on
    target + auxiliary clips with a teacher; the reduced defaults stay GT-only."""
    nb = ROOT / "notebooks" / "03_decoders.ipynb"
    reduced = _setup(nb, tmp_path)
    assert (reduced["train_size"], reduced["train_epochs"], reduced["train_steps"], reduced["train_optimizer"]) \
        == ((32, 64), 10, 40, "adam")
    assert (reduced["distill_on"], reduced["aux_per_target"], reduced["pretrained_backbone"]) == ("none", 0, False)
    full = _setup(nb, tmp_path, data_root=str(tmp_path / "DHF1K"), teacher="hd2s:/w/hd2s.pth",
                  aux_root=str(tmp_path / "k400"), device="cuda")
    assert (full["train_size"], full["train_epochs"], full["train_steps"], full["train_optimizer"],
            full["train_batch_size"]) == ((192, 256), 200, None, "sgd", 12)
    assert (full["distill_on"], full["aux_per_target"], full["pretrained_backbone"], full["teacher"]) \
        == ("all", 1.0, True, "hd2s:/w/hd2s.pth")


# -- 05: timing on CUDA ------------------------------------------------------------------------------------

def test_forward_time_synchronizes_cuda(monkeypatch):
    """05's forward_time reads the clock only after torch.cuda.synchronize() on a CUDA clip (kernels are
    asynchronous: without it the launch is timed, not the forward)."""
    import time

    import numpy as np
    import torch

    nb = ROOT / "notebooks" / "05_miso_vs_mimo.ipynb"
    source = next(s for s in _code(nb) if "def forward_time" in s)
    fn = next(n for n in ast.parse(source).body if isinstance(n, ast.FunctionDef) and n.name == "forward_time")
    ns: dict[str, Any] = {"torch": torch, "np": np, "time": time}
    exec(compile(ast.Module(body=[fn], type_ignores=[]), "forward_time", "exec"), ns)

    events: list[str] = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a, **k: events.append("sync"))

    class Clip:
        is_cuda = True

    class Model:
        def eval(self):
            return self

        def __call__(self, clip):
            events.append("forward")

    ns["forward_time"](Model(), Clip(), 2)
    timed = events[events.index("forward") + 1:]   # after the warm-up
    assert timed == ["sync", "forward", "sync"] * 2, events
    events.clear()
    Clip.is_cuda = False
    ns["forward_time"](Model(), Clip(), 2)
    assert events == ["forward"] * 3              # on CPU nothing to wait for


# -- 01 on given prediction folders (the full-scale path) ---------------------------------------------------

def test_similarity_notebook_on_prediction_dirs(tmp_path: Path):
    """Notebook 01 with prediction_dirs (the released-predictions path) runs to the end and prints its verdict on Fig. 1's
    claim. Two fake models from the synthetic set's GT: a blurred GT and a centre prior, as frame-numbered PNGs."""
    import cv2
    import numpy as np
    import papermill

    from tinyhd.data import SaliencyClipDataset
    from tinyhd.synth import centre_bias, ensure_synthetic

    root = ensure_synthetic("dhf1k", progress=False)
    ds = SaliencyClipDataset(root, split="val", size=None)
    dirs = {"blurred GT": tmp_path / "blurred", "centre prior": tmp_path / "centre"}
    for vid in ds.video_ids:
        maps = ds.ground_truth(vid).maps                                  # N×H×W in [0, 1]
        prior = centre_bias(maps.shape[1:])
        for d in dirs.values():
            (d / vid).mkdir(parents=True)
        for t, m in enumerate(maps, start=1):
            blurred = cv2.GaussianBlur(m.astype(np.float32), (0, 0), 3)
            cv2.imwrite(str(dirs["blurred GT"] / vid / f"{t:04d}.png"), np.uint8(255 * blurred / max(blurred.max(), 1e-8)))
            cv2.imwrite(str(dirs["centre prior"] / vid / f"{t:04d}.png"), np.uint8(255 * prior / prior.max()))
    out = tmp_path / "run01"
    papermill.execute_notebook(str(ROOT / "notebooks" / "01_teacher_similarity.ipynb"), str(tmp_path / "01.ipynb"),
                               parameters={"data_root": str(root), "prediction_dirs": {k: str(v) for k, v in dirs.items()},
                                           "every": 8, "out_dir": str(out), "decoders_dir": str(tmp_path / "unused")},
                               cwd=str(ROOT / "notebooks"), progress_bar=False, kernel_name="python3")
    summary = (out / "agreement_summary.csv").read_text()
    assert "model vs GT (paper: Table 1a, DHF1K test)" in summary
    n = sum(len(range(0, len(ds.ground_truth(v).maps), 8)) for v in ds.video_ids)   # the whole split, streamed
    assert f"val split, {n} frames" in (tmp_path / "01.ipynb").read_text()
    assert "models agree less with each other than with GT" in summary.splitlines()[0]
    assert not (tmp_path / "unused").exists()   # nothing trained on this path
