"""Repository-level checks: notebook pairing, environment pins, the command line's basic behaviour."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK_SOURCES = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.py"))


def _cells(nb) -> list[tuple[str, str]]:
    return [(c.cell_type, c.source.strip()) for c in nb.cells]


def test_there_are_notebooks():
    assert NOTEBOOK_SOURCES, "no notebooks/NN_*.py found"


@pytest.mark.parametrize("py", NOTEBOOK_SOURCES, ids=lambda p: p.name)
def test_notebook_is_paired_without_outputs(py: Path):
    """Each jupytext py:percent source has a committed .ipynb with the same cells, no outputs, one parameters cell."""
    import jupytext
    import nbformat

    text = py.read_text()
    assert text.lstrip().startswith("# ---") and "format_name: percent" in text, f"{py.name}: not jupytext py:percent"
    ipynb = py.with_suffix(".ipynb")
    assert ipynb.exists(), f"{py.name} has no paired {ipynb.name}: run `jupytext --to notebook {py}`"
    committed = nbformat.read(ipynb, as_version=4)
    expected = jupytext.read(py)
    assert _cells(committed) == _cells(expected), (
        f"{ipynb.name} differs from {py.name}: run `jupytext --to notebook {py}`"
    )
    for cell in committed.cells:
        if cell.cell_type == "code":
            assert not cell.get("outputs"), f"{ipynb.name}: a code cell has outputs (strip them)"
            assert cell.get("execution_count") is None, f"{ipynb.name}: a code cell has an execution count"
    tagged = [c for c in committed.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1, f"{ipynb.name}: expected exactly one cell tagged 'parameters', found {len(tagged)}"


def _pins(lines: list[str]) -> dict[str, str]:
    pins = {}
    for line in lines:
        m = re.match(r"^\s*-?\s*([A-Za-z0-9_.\-]+)==([^\s#]+)", line)
        if m:
            pins[m.group(1).lower()] = m.group(2)
    return pins


def test_environment_yml_matches_requirements():
    req = _pins((ROOT / "requirements.txt").read_text().splitlines())
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    assert _pins(pip_section) == req
    assert req["torch"] == "2.14.1" and req["torchvision"] == "0.29.1"


def _run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tinyhd", *args], capture_output=True, text=True, timeout=120)


def test_cli_lists_commands_and_rejects_unknown():
    out = _run_cli("--help")
    assert out.returncode == 0
    for name in ("predict", "verify-data", "evaluate", "train", "synth"):
        assert name in out.stdout
    bad = _run_cli("no-such-command")
    assert bad.returncode == 2 and "unknown command" in bad.stderr


def test_atomic_open_leaves_old_file_on_failure(tmp_path: Path):
    from tinyhd.paths import atomic_open, atomic_write_text

    target = tmp_path / "state.txt"
    atomic_write_text(target, "complete")
    with pytest.raises(RuntimeError):
        with atomic_open(target, "w") as fh:
            fh.write("half-")
            raise RuntimeError("killed mid-write")
    assert target.read_text() == "complete"
    assert [p.name for p in tmp_path.iterdir()] == ["state.txt"], "a temporary file was left behind"


@pytest.mark.parametrize("free_mib", [10, 10_000])
def test_checkpoint_write_on_a_full_disk_names_the_file(tmp_path: Path, monkeypatch, free_mib: int):
    """torch.save's "PytorchStreamWriter failed writing file" on a full disk becomes ENOSPC naming the
    checkpoint and the space left; the previous checkpoint stays. With space left the error passes unchanged."""
    import errno
    import shutil
    from collections import namedtuple

    import torch

    import tinyhd.paths as paths

    target = tmp_path / "last.pt"
    paths.atomic_torch_save({"w": torch.ones(3)}, target)

    def failing_save(obj, fh):
        fh.write(b"x" * 2**20)
        raise RuntimeError("[enforce fail at inline_container.cc:664] . PytorchStreamWriter failed writing file")

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(torch, "save", failing_save)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**12, 10**12, free_mib * 2**20))
    if free_mib * 2**20 < paths.LOW_DISK_BYTES:
        with pytest.raises(OSError, match=r"last\.pt: could not write the checkpoint: the disk is full \(10 MiB free "
                                          r"after 1 MiB") as info:
            paths.atomic_torch_save({"w": torch.zeros(3)}, target)
        assert info.value.errno == errno.ENOSPC
    else:
        with pytest.raises(RuntimeError, match="PytorchStreamWriter"):
            paths.atomic_torch_save({"w": torch.zeros(3)}, target)
    monkeypatch.undo()
    assert torch.equal(torch.load(target, weights_only=True)["w"], torch.ones(3))  # the previous one is kept
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"], "a temporary file was left behind"


def test_atomic_directory_is_all_or_nothing(tmp_path: Path):
    from tinyhd.paths import atomic_directory

    with pytest.raises(RuntimeError):
        with atomic_directory(tmp_path / "ds") as tmp:
            (tmp / "a.txt").write_text("x")
            raise RuntimeError("interrupted")
    assert not (tmp_path / "ds").exists() and not list(tmp_path.iterdir())
    with atomic_directory(tmp_path / "ds") as tmp:
        (tmp / "a.txt").write_text("x")
    assert (tmp_path / "ds" / "a.txt").read_text() == "x"


def test_preprocess_matches_released_input(official_dir: Path):
    """tinyhd.preprocess on the fixture video's first 16 frames is bit-exact with the authors' model input."""
    import cv2
    import numpy as np

    import tinyhd

    cap = cv2.VideoCapture(str(official_dir / "0068.AVI"))
    frames = []
    for _ in range(16):
        ok, bgr = cap.read()
        assert ok
        frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    clip = tinyhd.preprocess(np.stack(frames))  # 3×16×192×256
    expected = np.load(official_dir / "clip0_model_input_f32.npy")
    assert clip.shape == (3, 16, 192, 256)
    assert np.array_equal(clip.numpy(), expected)


def test_preprocess_rejects_float_and_wrong_layout():
    import numpy as np

    import tinyhd

    with pytest.raises(ValueError, match="uint8"):
        tinyhd.preprocess(np.zeros((16, 64, 64, 3), np.float32))
    with pytest.raises(ValueError, match="T×H×W×3"):
        tinyhd.preprocess(np.zeros((3, 16, 64, 64), np.uint8))
    gray = tinyhd.preprocess(np.zeros((4, 64, 80), np.uint8), size=None)
    assert gray.shape == (3, 4, 64, 80)


def test_plain_pytest_nbval_lax_collects_the_notebooks():
    """The design card's `pytest --nbval-lax`, run from the repository root with no path, checks every notebook
    as well as the tests (pyproject's testpaths); plain `pytest` collects no notebook."""
    def collected(*args: str) -> list[str]:
        out = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *args],
                             cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
        return [line for line in out.stdout.splitlines() if "::" in line]

    notebooks = {p.name for p in (ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")}
    with_nbval = {line.split("::")[0].rsplit("/", 1)[-1] for line in collected("--nbval-lax")
                  if line.split("::")[0].endswith(".ipynb")}
    assert with_nbval == notebooks
    assert not [line for line in collected() if ".ipynb" in line]


def test_env_script_refuses_python_older_than_the_pins_need(tmp_path: Path):
    """scripts/env.sh (both README commands) stops with a clear message, before creating the venv, when the
    interpreter is older than 3.11 (the pinned numpy 2.4 / pandas 3.1 / matplotlib 3.11 have no 3.10 wheels)."""
    fake = tmp_path / "python3.10"
    fake.write_text('#!/bin/sh\nif [ "$1" = "--version" ]; then echo "Python 3.10.12"; exit 0; fi\n'
                    'exec python3 -c "import sys; sys.exit(1)"\n')
    fake.chmod(0o755)
    venv = tmp_path / "venv"
    for py, says in ((str(fake), "is Python 3.10.12"), (str(tmp_path / "nope"), "no ")):
        r = subprocess.run(["bash", str(ROOT / "scripts" / "env.sh")], capture_output=True, text=True,
                           env={"PATH": "/usr/bin:/bin", "PYTHON": py, "TINYHD_VENV": str(venv)})
        assert r.returncode == 1 and says in r.stderr and "Python >= 3.11" in r.stderr, r.stderr
        assert not venv.exists()
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert 'requires-python = ">=3.11"' in pyproject
