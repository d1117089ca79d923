"""`pe models`, `pe info` and `pe convert` through click's CliRunner."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from perception_encoder import configs
from perception_encoder.cli.main import main
from perception_encoder.configs import ModelInfo, get_model_info
from perception_encoder.factory import load, save
from perception_encoder.vision import VisionTransformer
from perception_encoder.weights import files as io
from perception_encoder.weights import formats as F


@pytest.fixture
def runner():
    return CliRunner()


def test_models_lists_every_model_with_sizes(runner, monkeypatch, tiny_vision):
    bundled = ModelInfo("Test-Bundled-Model", "custom", tiny_vision.config, local_weights="tiny.safetensors")
    monkeypatch.setitem(configs._REGISTRY, bundled.name, bundled)
    result = runner.invoke(main, ["models"])
    assert result.exit_code == 0, result.output
    out = result.output
    for name in configs.list_models():
        assert name in out
    row = next(line for line in out.splitlines() if "PE-Core-B16-224" in line)
    assert "447.7M" in row and "93.7M" in row and "768/12" in row and "1024/24" in row and "224" in row
    spatial = next(line for line in out.splitlines() if "PE-Spatial-T16-512" in line)
    assert "5.7M" in spatial and "tokens (192)" in spatial
    assert "bundled" in next(line for line in out.splitlines() if "Test-Bundled-Model" in line)

    only = runner.invoke(main, ["models", "--family", "lang"])
    assert only.exit_code == 0 and "PE-Lang-L14-448" in only.output and "PE-Core" not in only.output


def test_info_describes_a_checkpoint(runner, tmp_path):
    path = tmp_path / "spatial.pt"
    torch.save(VisionTransformer(get_model_info("PE-Spatial-T16-512").config).state_dict(), path)
    result = runner.invoke(main, ["info", str(path)])
    assert result.exit_code == 0, result.output
    assert "PE-Spatial-T16-512" in result.output and "reference" in result.output
    assert "512 px (32x32 patches)" in result.output and "192/12" in result.output and "5.7M" in result.output

    as_json = runner.invoke(main, ["info", str(path), "--json"])
    facts = json.loads(as_json.output)
    assert (
        facts["name"] == "PE-Spatial-T16-512"
        and facts["format"] == "reference"
        and facts["family"] == "spatial"
    )


def test_info_and_convert_errors_are_one_line(runner, tmp_path):
    for args in (
        ["info", str(tmp_path / "missing.pt")],
        ["convert", str(tmp_path / "missing.pt"), str(tmp_path / "out.pt"), "--to", "timm"],
    ):
        result = runner.invoke(main, args)
        assert result.exit_code == 1
        assert "checkpoint file not found" in result.output and "Traceback" not in result.output
        assert len(result.output.strip().splitlines()) == 1
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    result = runner.invoke(main, ["info", str(empty)])
    assert result.exit_code == 1 and "is empty" in result.output
    bad = runner.invoke(main, ["convert", str(empty), str(tmp_path / "o.pt"), "--to", "onnx"])
    assert bad.exit_code == 2 and "'onnx' is not one of" in bad.output


def test_convert_writes_each_layout(runner, tmp_path, tiny_clip):
    src = save(tiny_clip, tmp_path / "src.safetensors")
    outs = {
        "reference": tmp_path / "ref.pt",
        "open_clip": tmp_path / "open_clip_model.safetensors",
        "timm": tmp_path / "model.safetensors",
        "safetensors": tmp_path / "native.safetensors",
    }
    for to, dst in outs.items():
        result = runner.invoke(main, ["convert", str(src), str(dst), "--to", to])
        assert result.exit_code == 0, result.output
        assert f"wrote {dst} ({to} layout, from native)" in result.output
        assert dst.with_suffix(".json").is_file()
        expected = "native" if to == "safetensors" else to
        assert F.detect_format(io.read_state_dict(dst)) == expected
    assert (
        "text tower was left out"
        in runner.invoke(main, ["convert", str(src), str(outs["timm"]), "--to", "timm"]).output
    )
    back, ref = load(outs["open_clip"]).state_dict(), tiny_clip.state_dict()
    assert set(back) == set(ref) and all(torch.equal(back[k], ref[k]) for k in ref)

    wrong = runner.invoke(
        main, ["convert", str(src), str(tmp_path / "x.pt"), "--to", "reference", "--model", "PE-Core-B16-224"]
    )
    assert (
        wrong.exit_code == 1
        and "does not fit PE-Core-B16-224" in wrong.output
        and "Traceback" not in wrong.output
    )
    unknown = runner.invoke(
        main, ["convert", str(src), str(tmp_path / "x.pt"), "--to", "reference", "--model", "PE-Core-B16"]
    )
    assert unknown.exit_code == 1 and "Did you mean" in unknown.output


def test_convert_to_bf16_loads_without_a_cast(runner, tmp_path, tiny_clip):
    src = save(tiny_clip, tmp_path / "src.safetensors")
    dst = tmp_path / "bf16.pt"
    result = runner.invoke(main, ["convert", str(src), str(dst), "--to", "reference", "--dtype", "bf16"])
    assert result.exit_code == 0, result.output
    assert "reference layout, bf16" in result.output
    raw = io.read_state_dict(dst)
    assert {v.dtype for v in raw.values() if v.is_floating_point()} == {torch.bfloat16}
    model = load(dst, dtype="bf16")
    ref = tiny_clip.state_dict()
    for k, v in model.state_dict().items():
        assert torch.equal(v, ref[k].to(torch.bfloat16) if ref[k].is_floating_point() else ref[k]), k
    bad = runner.invoke(main, ["convert", str(src), str(dst), "--to", "reference", "--dtype", "int8"])
    assert bad.exit_code == 2 and "'int8' is not one of" in bad.output
