"""Manifests and ``tinyhd verify-data``: a good synthetic tree passes, every kind of breakage is listed."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from tinyhd import cli
from tinyhd.errors import DataError, UserError
from tinyhd.manifest import load_manifest, parse_manifest, verify
from tinyhd.synth import write_dhf1k


@pytest.fixture(scope="module")
def good_tree(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("good") / "ds"
    write_dhf1k(root, videos=4, frames=[12, 9, 10, 8], size=(32, 40), seed=3, progress=False)
    return root


@pytest.fixture()
def broken_copy(good_tree, tmp_path) -> Path:
    root = tmp_path / "broken"
    shutil.copytree(good_tree, root)
    return root


def _run(*argv: str, capsys) -> tuple[int, list[str], str]:
    code = cli.main(list(argv))
    out = capsys.readouterr()
    return code, out.out.strip().splitlines(), out.err


def test_shipped_manifests_state_the_papers_splits():
    dhf = load_manifest("dhf1k")
    assert {k: (s.range, s.count, s.annotated) for k, s in dhf.splits.items()} == {
        "train": ((1, 600), 600, True), "val": ((601, 700), 100, True), "test": ((701, 1000), 300, False)}
    entry = dhf.videos("/data", "val")[0]
    assert entry.id == "601" and entry.source == Path("/data/video/601.AVI")
    assert entry.maps == Path("/data/annotation/0601/maps") and entry.fixations == Path("/data/annotation/0601/fixation")
    assert dhf.videos("/data", "test")[0].maps is None  # no annotations for 701-1000
    assert dhf.layout_for("frames")["source"] == "annotation/{n:04d}/images"
    ucf = load_manifest("ucf")
    assert (ucf.splits["train"].count, ucf.splits["test"].count) == (103, 47)
    holly = load_manifest("hollywood2")
    assert 823 in holly.splits["train"].count and 884 in holly.splits["test"].count
    kin = load_manifest("kinetics")
    assert kin.kind == "unlabeled" and kin.splits["train"].classes == 400 and kin.splits["train"].dir == "train_256"


def test_bad_manifests_name_the_file(tmp_path):
    p = tmp_path / "m.yaml"
    p.write_text("schema_version: 99\nname: x\n")
    with pytest.raises(UserError, match=r"m\.yaml: schema_version is 99"):
        load_manifest(p)
    p.write_text("schema_version: 1\nname: x\nkind: labeled\nids: range\nlayout: {source: a}\nsplits: {}\n")
    with pytest.raises(UserError, match="needs 'maps' and 'fixations'"):
        load_manifest(p)
    p.write_text("a: [unclosed")
    with pytest.raises(UserError, match="not valid YAML"):
        load_manifest(p)
    with pytest.raises(UserError, match="no such manifest"):
        load_manifest(tmp_path / "nope.yaml")
    raw = yaml.safe_load((Path(load_manifest("dhf1k").path)).read_text())
    raw["splits"]["train"]["count"] = 599
    with pytest.raises(UserError, match="count 599 disagrees with range"):
        parse_manifest(raw, Path("dhf1k.yaml"))


def test_verify_good_tree_passes(good_tree, capsys):
    report = verify(load_manifest(good_tree / "manifest.yaml"), good_tree)
    assert report.ok, [str(p) for p in report.problems]
    assert report.checked == {"train": 2, "val": 1, "test": 1}
    # by manifest path, and by dataset folder (its manifest.yaml is found)
    for manifest in (str(good_tree / "manifest.yaml"), str(good_tree)):
        code, lines, _ = _run("verify-data", manifest, str(good_tree), capsys=capsys)
        assert code == 0 and lines[-1].startswith("OK:") and "no problems" in lines[-1]
    code, lines, _ = _run("verify-data", str(good_tree), capsys=capsys)  # ROOT defaults to the dataset folder
    assert code == 0 and lines[-1].startswith("OK:")
    code, _, err = _run("verify-data", "dhf1k", capsys=capsys)
    assert code == 2 and "give ROOT" in err


def test_verify_lists_every_problem(broken_copy, capsys):
    root = broken_copy
    (root / "annotation/0001/maps/0005.png").unlink()                     # missing map
    data = (root / "video/002.AVI").read_bytes()
    (root / "video/002.AVI").write_bytes(data[: len(data) // 3])          # truncated video
    (root / "annotation/0003").rename(root / "annotation/0003_renamed")   # renamed folder
    (root / "video/099.AVI").write_bytes(b"")                              # extra item
    (root / "annotation/0004/fixation/0002.png").write_bytes(b"garbage")  # unreadable PNG
    code, lines, _ = _run("verify-data", str(root / "manifest.yaml"), str(root), capsys=capsys)
    text = "\n".join(lines)
    assert code == 1
    assert lines[-1].startswith("FAILED:") and "problem(s)" in lines[-1]
    assert f"{root}/video/001.AVI: 12 frames but 11 maps in {root}/annotation/0001/maps" in text
    assert "1 fixation(s) without map, e.g. " + f"{root}/annotation/0001/fixation/0005.png" in text
    truncated = [line for line in lines if line.startswith(f"{root}/video/002.AVI: ")]
    assert truncated and any(w in truncated[0] for w in ("cannot open", "no frame decodes", "frame table says 9"))
    assert f"{root}/annotation/0003/maps: missing map folder" in text
    assert f"{root}/annotation/0003_renamed: unexpected item" in text
    assert f"{root}/video/099.AVI: unexpected item" in text
    assert f"{root}/annotation/0004/fixation/0002.png: unreadable fixation image" in text
    # the problems are the lines before the summary, one per line, each "path: problem"
    assert all(": " in line and line.startswith(str(root)) for line in lines[:-1])


def test_verify_missing_root_is_one_line(good_tree, tmp_path, capsys):
    code, lines, err = _run("verify-data", str(good_tree / "manifest.yaml"), str(tmp_path / "absent"), capsys=capsys)
    assert code == 2 and lines == []
    assert err.strip().count("\n") == 0 and "absent: dataset folder does not exist" in err
    with pytest.raises(DataError, match="does not exist"):
        verify(load_manifest("dhf1k"), tmp_path / "absent")
    code, _, err = _run("verify-data", "no-such-dataset", str(good_tree), capsys=capsys)
    assert code == 2 and "no such manifest" in err


def test_verify_real_manifest_on_a_partial_copy(good_tree, tmp_path):
    """The DHF1K manifest on a copy holding only a few videos: every absent video is listed by path."""
    report = verify(load_manifest("dhf1k"), good_tree, splits=["val"], deep=False)
    missing = [p for p in report.problems if p.message == "missing video"]
    assert len(missing) == 100 and missing[0].path == good_tree / "video/601.AVI"
    # videos 001-004 exist on disk but not in the val split, so they are reported as not listed by "val"
    assert report.checked == {"val": 100}


def test_folder_layout_counts(tmp_path):
    """UCF-Sports layout: split folders with one sub-folder per video; wrong counts are reported."""
    for split, n in (("training", 2), ("testing", 1)):
        for i in range(n):
            for sub in ("images", "maps", "fixation"):
                (tmp_path / split / f"Run-{i}" / sub).mkdir(parents=True)
    report = verify(load_manifest("ucf"), tmp_path, deep=False)
    text = "\n".join(map(str, report.problems))
    assert "split 'train' has 2 videos, the manifest expects 103" in text
    assert "split 'test' has 1 videos, the manifest expects 47" in text
    assert f"{tmp_path}/training/Run-0/images: frame folder has no images" in text
