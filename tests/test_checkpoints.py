"""Checkpoint I/O: the authors' layout (strict port, variant inference), our format, clear refusals."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

import tinyhd
from tinyhd.checkpoints import load_checkpoint, load_official_checkpoint, our_key_to_official, save_checkpoint
from tinyhd.errors import CheckpointError
from tinyhd.model import TinyHD


def official_dict(model: TinyHD) -> dict[str, torch.Tensor]:
    return {our_key_to_official(k): v.clone() for k, v in model.state_dict().items()}


def randomise(model: TinyHD, seed: int = 0) -> TinyHD:
    """Non-default values everywhere (including BN running stats), so a wrong mapping shows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for k, v in model.state_dict().items():
            if v.is_floating_point():
                v.copy_(torch.rand(v.shape, generator=g) + 0.5 if "running_var" in k else
                        torch.randn(v.shape, generator=g) * 0.1)
    return model.eval()


@pytest.fixture(scope="module")
def clip() -> torch.Tensor:
    return torch.randn(1, 3, 16, 64, 96, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("output", ["single", "multi"])
def test_official_layout_round_trip_infers_the_variant(tmp_path: Path, clip: torch.Tensor, output: str) -> None:
    model = randomise(TinyHD(output=output, reduction=4))
    path = tmp_path / "official.pth"
    torch.save({"student_model": official_dict(model)}, path)
    loaded = load_official_checkpoint(path)
    assert loaded.config["output"] == output and loaded.config["reduction"] == 4
    assert loaded.config["fusion_order"] == "default"
    with torch.no_grad():
        assert torch.equal(loaded(clip).saliency, model(clip).saliency)
    # load_checkpoint dispatches the authors' format too
    assert load_checkpoint(path).config == loaded.config


def test_multi_at_reduction_1_is_d1_last(tmp_path: Path) -> None:
    model = TinyHD(output="multi", reduction=1)
    path = tmp_path / "m1.pth"
    torch.save({"student_model": official_dict(model)}, path)
    loaded = load_official_checkpoint(path)
    assert loaded.config["reduction"] == 1 and loaded.config["fusion_order"] == "d1_last"


def test_missing_key_is_named(tmp_path: Path) -> None:
    sd = official_dict(TinyHD("single", reduction=4))
    del sd["aggregator.aggregate_adapter.20.conv.1.0.weight"]
    path = tmp_path / "missing.pth"
    torch.save({"student_model": sd}, path)
    with pytest.raises(CheckpointError, match=r"missing\.pth.*1 missing key.*aggregate_adapter\.20\.conv\.1\.0\.weight"):
        load_official_checkpoint(path)


def test_unexpected_key_is_named(tmp_path: Path) -> None:
    sd = official_dict(TinyHD("single", reduction=4))
    sd["aggregator.aggregate_adapter.37.conv.2.weight"] = torch.zeros(1)
    path = tmp_path / "extra.pth"
    torch.save({"student_model": sd}, path)
    with pytest.raises(CheckpointError, match=r"unexpected key.*aggregate_adapter\.37"):
        load_official_checkpoint(path)


def test_wrong_shape_is_named(tmp_path: Path) -> None:
    sd = official_dict(TinyHD("single", reduction=4))
    sd["aggregator.aggregate_adapter.5.conv.2.weight"] = torch.zeros(55, 28, 1, 1, 1)
    path = tmp_path / "shape.pth"
    torch.save({"student_model": sd}, path)
    with pytest.raises(CheckpointError, match=r"shape\.pth: aggregator\.aggregate_adapter\.5\.conv\.2\.weight has shape \(55, 28"):
        load_official_checkpoint(path)


def test_hd2s_like_dict_is_refused(tmp_path: Path) -> None:
    sd = {"featureExtractor.block1.0.conv_s.weight": torch.zeros(64, 3, 1, 7, 7),
          "decoder2.0.weight": torch.zeros(4), "last_conv.weight": torch.zeros(1, 4, 1, 1)}
    path = tmp_path / "hd2s.pth"
    torch.save(sd, path)
    with pytest.raises(CheckpointError, match=r"hd2s\.pth: an HD2S checkpoint \(the teacher\), not a TinyHD one"):
        load_checkpoint(path)
    torch.save({"student_model": sd}, path)
    with pytest.raises(CheckpointError, match=r"missing key 'encoder\.encoder\.0\.0\.weight'"):
        load_official_checkpoint(path)


@pytest.mark.parametrize("content,match", [
    (b"hello, not a checkpoint", "not a readable PyTorch checkpoint"),
    (None, "truncated"),
])
def test_unreadable_files_are_refused(tmp_path: Path, content: bytes | None, match: str) -> None:
    path = tmp_path / "bad.pth"
    if content is None:  # a real checkpoint cut short
        good = tmp_path / "good.pth"
        save_checkpoint(TinyHD("single", reduction=4), good)
        content = good.read_bytes()[:4000]
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=match):
        load_checkpoint(path)


def test_not_a_file_and_absent(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="not a file"):
        load_checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_official_checkpoint(tmp_path / "nope.pth")


class _Payload:
    def __reduce__(self):  # what a malicious pickle would do; never executed by weights_only loading
        return (print, ("this must not run",))


def test_code_carrying_pickle_is_refused(tmp_path: Path, capsys) -> None:
    path = tmp_path / "evil.pth"
    torch.save({"student_model": _Payload()}, path)
    with pytest.raises(CheckpointError, match=r"evil\.pth: refused to load.*could run code.*print"):
        load_official_checkpoint(path)
    assert "must not run" not in capsys.readouterr().out


def test_random_dict_is_described(tmp_path: Path) -> None:
    path = tmp_path / "dict.pth"
    torch.save({"epoch": 3, "lr": 0.1}, path)
    with pytest.raises(CheckpointError, match=r"dict\.pth: not a TinyHD checkpoint.*\['epoch', 'lr'\]"):
        load_checkpoint(path)


def test_save_load_round_trip(tmp_path: Path, clip: torch.Tensor) -> None:
    model = randomise(TinyHD("multi", decoders=("d2", "d3"), reduction=4), seed=3)
    path = tmp_path / "sub" / "ours.pt"
    save_checkpoint(model, path, epoch=7)
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == "tinyhd" and raw["epoch"] == 7 and raw["config"] == model.config
    assert [p.name for p in path.parent.iterdir()] == ["ours.pt"]  # no temporary left behind
    loaded = tinyhd.load_checkpoint(path)
    assert loaded.config == model.config and not loaded.training
    with torch.no_grad():
        assert torch.equal(loaded(clip).saliency, model(clip).saliency)


def test_training_style_checkpoint(tmp_path: Path) -> None:
    model = TinyHD("single", reduction=4)
    path = tmp_path / "last.pt"
    torch.save({"model": model.state_dict(), "config": {"model": dict(model.config), "lr": 0.01},
                "optimizer": {}, "epoch": 1}, path)
    assert load_checkpoint(path).config == model.config


def test_own_format_with_mismatched_weights(tmp_path: Path) -> None:
    model = TinyHD("single", reduction=4)
    path = tmp_path / "mismatch.pt"
    torch.save({"format": "tinyhd", "config": dict(model.config, reduction=2), "model": model.state_dict()}, path)
    with pytest.raises(CheckpointError, match=r"mismatch\.pt: .*shape"):
        load_checkpoint(path)


# ------------------------------------------------------------------------------ weights registry (no network)
from tinyhd import weights  # noqa: E402
from tinyhd.errors import UserError  # noqa: E402

FIXTURE_SHA256 = "53e8a306d3e260f6c236e99694bec5852ee208b21d816d93a2918c1828771958"
FIXTURE_GIT_BLOB = "e87c128c9f2116017e940b9bff3a7633f7add22b"


def test_registry_lists_the_eight_released_files() -> None:
    reg = weights.registry()
    assert len(reg) == 8
    assert reg["d1d2d3_M_lt.pth"].variant == {"output": "multi", "reduction": 1, "fusion_order": "d1_last"}
    assert reg["d123m_rc4_rc1T.pth"].url.endswith("/weights/d123m_rc4_rc1T.pth")
    assert all(len(e.git_blob) == 40 for e in reg.values())


def test_git_blob_id_is_what_git_hash_object_prints(tmp_path: Path) -> None:
    path = tmp_path / "hello.txt"
    path.write_bytes(b"hello\n")
    assert weights.file_hashes(path)["git_blob"] == "ce013625030ba8dba906f756967f9e9ca394464a"


def test_verify_the_fixture_checkpoint(official_dir: Path) -> None:
    path = official_dir / "d123m_rc4_rc1T.pth"
    assert weights.file_hashes(path) == {"sha256": FIXTURE_SHA256, "git_blob": FIXTURE_GIT_BLOB}
    assert weights.verify(path).name == "d123m_rc4_rc1T.pth"
    with pytest.raises(CheckpointError, match="does not match the released d123s_rc4_rc1T.pth"):
        weights.verify(path, "d123s_rc4_rc1T.pth")


def test_verify_refuses_other_files(tmp_path: Path) -> None:
    path = tmp_path / "other.pth"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=r"other\.pth: not one of the authors' released checkpoints"):
        weights.verify(path)


class _FakeResponse:
    def __init__(self, data: bytes) -> None:
        self.data, self.headers = data, {"Content-Length": str(len(data))}

    def read(self, n: int) -> bytes:
        chunk, self.data = self.data[:n], self.data[n:]
        return chunk

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        return None


def test_download_is_verified_and_atomic(official_dir: Path, tmp_path: Path, monkeypatch) -> None:
    good = (official_dir / "d123m_rc4_rc1T.pth").read_bytes()
    monkeypatch.setattr(weights.urllib.request, "urlopen", lambda url, timeout: _FakeResponse(good[:-1] + b"x"))
    with pytest.raises(CheckpointError, match="does not match the registry"):
        weights.download("d123m_rc4_rc1T.pth", tmp_path)
    assert list(tmp_path.iterdir()) == []  # nothing half-written or unverified is left
    monkeypatch.setattr(weights.urllib.request, "urlopen", lambda url, timeout: _FakeResponse(good))
    path = weights.download("d123m_rc4_rc1T.pth", tmp_path)
    assert path == tmp_path / "d123m_rc4_rc1T.pth" and path.read_bytes() == good


def test_download_offline_is_one_clear_line(tmp_path: Path, monkeypatch, capsys) -> None:
    def offline(url, timeout):
        raise weights.urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(weights.urllib.request, "urlopen", offline)
    from tinyhd.cli import main

    assert main(["weights", "download", "d123s_rc4_rc1T.pth", "--dest", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "could not download d123s_rc4_rc1T.pth" in err[0] and "offline" in err[0]
    with pytest.raises(UserError, match="not a released checkpoint"):
        weights.download("nope.pth", tmp_path)


def test_weights_cli_list(capsys) -> None:
    assert weights.cli_main(["list"]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 8 and "d123m_rc4_rc1T.pth" in out and "UCF-Sports" in out


def test_nested_foreign_state_dict_is_described(tmp_path: Path) -> None:
    path = tmp_path / "hd2s_wrapped.pth"
    torch.save({"state_dict": {"featureExtractor.block1.0.conv_s.weight": torch.zeros(2, 3, 1, 7, 7)}, "epoch": 9}, path)
    with pytest.raises(CheckpointError, match=r"whose 'state_dict' is a state dict of 1 tensors.*HD2S teacher"):
        load_checkpoint(path)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_weights_are_refused_in_both_formats(tmp_path: Path, value: float) -> None:
    """A diverged run's NaN/inf weights: refused at load, naming the file and the key (the fast path's fused
    hardtanh would otherwise clamp NaN into a plausible map)."""
    model = TinyHD("multi", decoders=("d1", "d2", "d3"), reduction=4)
    official = official_dict(model)
    official["encoder.encoder.0.0.weight"][0, 0, 0, 0, 0] = value
    path = tmp_path / "diverged.pth"
    torch.save({"student_model": official}, path)
    for load in (load_official_checkpoint, load_checkpoint):
        with pytest.raises(CheckpointError, match=r"diverged\.pth: 1 tensor\(s\) hold NaN or infinite values "
                                                  r"\(encoder\.encoder\.0\.0\.weight\)"):
            load(path)
    ours = tmp_path / "ours.pt"
    save_checkpoint(model, ours)
    obj = torch.load(ours, weights_only=True)
    obj["model"]["decoders.0.blocks.0.conv.0.1.running_var"].fill_(value)  # a buffer
    obj["model"]["fusion.bias"].fill_(value)
    torch.save(obj, ours)
    with pytest.raises(CheckpointError, match=r"ours\.pt: 2 tensor\(s\).*running_var.*fusion\.bias"):
        load_checkpoint(ours)


def test_cuda_map_location_without_cuda_is_named(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "fine.pt"
    save_checkpoint(TinyHD("single", reduction=4), path)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for loc in ("cuda", torch.device("cuda:0")):
        with pytest.raises(CheckpointError, match=r"fine\.pt: map_location='cuda(:0)?' asks for CUDA, but CUDA is "
                                                  r"not available.*map_location='cpu'"):
            load_checkpoint(path, map_location=loc)
        with pytest.raises(CheckpointError, match="not available"):
            load_official_checkpoint(path, map_location=loc)
    (tmp_path / "bad.pt").write_bytes(b"junk" * 10)
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):  # real corruption still says so
        load_checkpoint(tmp_path / "bad.pt")


def test_download_offline_messages_name_the_folder_and_a_damaged_copy(tmp_path: Path, monkeypatch, capsys) -> None:
    def offline(url, timeout):
        raise weights.urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(weights.urllib.request, "urlopen", offline)
    name = "d123s_rc4_rc1T.pth"
    dest = tmp_path / "dl dest"  # does not exist
    with pytest.raises(UserError, match=r"create the folder .*dl dest and place it at .*pass that path to --checkpoint"):
        weights.download(name, dest)
    dest.mkdir()
    (dest / name).write_bytes(b"half a download")
    with pytest.raises(UserError) as exc:
        weights.download(name, dest)
    msg = str(exc.value)
    assert "create the folder" not in msg and f"the file already at {dest / name} does not verify" in msg
    assert weights.file_hashes(dest / name)["git_blob"] in msg and weights.registry()[name].git_blob in msg
    assert (dest / name).read_bytes() == b"half a download"  # left for the user to inspect


def test_a_released_name_loads_its_downloaded_copy_and_never_downloads(tmp_path: Path, monkeypatch) -> None:
    """After `tinyhd weights download NAME`, load_official_checkpoint(NAME) / load_checkpoint(NAME) use the verified
    copy in the weights folder, as `tinyhd predict --checkpoint NAME` does; without one, the error says how."""
    model = randomise(TinyHD(output="multi", reduction=4), seed=5)
    made = tmp_path / "made.pth"
    torch.save({"student_model": official_dict(model)}, made)
    name = "my_release.pth"
    reg = tmp_path / "weights.yaml"  # a registry listing this file (the real one lists the authors' eight)
    reg.write_text(f"url_pattern: 'https://example.invalid/{{file}}'\nweights:\n  {name}:\n"
                   f"    variant: {{output: multi, reduction: 4}}\n    description: test\n    training_set: none\n"
                   f"    git_blob: {weights.file_hashes(made)['git_blob']}\n    sha256: null\n")
    real_registry = weights.registry
    monkeypatch.setattr(weights, "registry", lambda path=None: real_registry(reg if path is None else path))
    monkeypatch.setattr(weights, "download", lambda *a, **k: pytest.fail("must not download"))
    monkeypatch.setenv("TINYHD_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    for load in (load_official_checkpoint, load_checkpoint):
        with pytest.raises(CheckpointError, match=f"not downloaded .*`tinyhd weights download {name}`"):
            load(name)
    with pytest.raises(CheckpointError, match="no such checkpoint file"):
        load_official_checkpoint("not_released.pth")
    weights.default_dest().mkdir(parents=True)
    (weights.default_dest() / name).write_bytes(made.read_bytes())  # as `tinyhd weights download` leaves it
    for load in (load_official_checkpoint, load_checkpoint):
        loaded = load(name)
        assert all(torch.equal(v, model.state_dict()[k]) for k, v in loaded.state_dict().items())
    with pytest.raises(CheckpointError, match="no such checkpoint file"):
        load_official_checkpoint(Path("sub") / name)  # a path with folders is taken as it is
    (weights.default_dest() / name).write_bytes(b"damaged")
    with pytest.raises(CheckpointError, match="does not match the released"):
        load_official_checkpoint(name)


@pytest.mark.official
def test_the_authors_file_by_its_released_name(official_dir: Path, tmp_path: Path, monkeypatch) -> None:
    name = "d123m_rc4_rc1T.pth"
    monkeypatch.setenv("TINYHD_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CheckpointError, match=f"`tinyhd weights download {name}`"):
        tinyhd.load_official_checkpoint(name)
    weights.default_dest().mkdir(parents=True)
    (weights.default_dest() / name).write_bytes((official_dir / name).read_bytes())
    assert tinyhd.load_official_checkpoint(name).config == load_official_checkpoint(official_dir / name).config
