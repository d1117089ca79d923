"""Config validation: every field is checked before anything is built, with bounds no real model reaches."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from conftest import tiny_clip_config, tiny_vision_config
from perception_encoder.cli.main import main
from perception_encoder.configs import (
    CLIPConfig,
    TextConfig,
    VisionConfig,
    config_from_dict,
    config_to_dict,
    get_model_info,
    list_models,
)


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("depth", 1_000_000, "depth must be between 1 and 512, got 1,000,000"),
        ("patch_size", 0, "patch_size must be between 1"),
        ("heads", 0, "heads must be between 1"),
        ("width", -8, "width must be between 1"),
        ("image_size", 10**9, "image_size must be between 1"),
        ("width", "wide", "width must be an integer"),
        ("depth", 2.0, "depth must be an integer"),
        ("use_cls_token", None, None),  # booleans are not bounded, only the sizes
        ("norm_eps", float("nan"), "norm_eps must be a positive finite number"),
        ("rope_theta", 0, "rope_theta must be a positive finite number"),
        ("output_dim", 0, "output_dim must be between 1"),
    ],
)
def test_vision_config_fields_are_validated(field, value, message):
    if message is None:
        tiny_vision_config(**{field: value})
        return
    with pytest.raises((TypeError, ValueError), match=message):
        tiny_vision_config(**{field: value})


def test_huge_models_are_refused_before_anything_is_allocated():
    with pytest.raises(ValueError, match="parameters, more than the"):
        VisionConfig(width=32768, depth=512, heads=256, mlp_dim=131072)
    with pytest.raises(ValueError, match="context_length must be between"):
        TextConfig(context_length=10**7)


def test_every_registered_model_passes_validation():
    for name in list_models():
        config = get_model_info(name).config
        assert config_from_dict(config_to_dict(config)) == config


def test_config_from_dict_names_unknown_keys_and_wrong_types():
    data = config_to_dict(tiny_clip_config())
    with pytest.raises(TypeError, match="text config has unknown key.*'layers'"):
        config_from_dict({**data, "text": {**data["text"], "layers": 3}})
    with pytest.raises(TypeError, match="must be a JSON object, got list"):
        config_from_dict([1, 2])
    with pytest.raises(TypeError, match="vision config must be a JSON object"):
        config_from_dict({**data, "vision": "big"})
    assert isinstance(config_from_dict(data), CLIPConfig)


def test_train_config_files_that_are_nested_too_deeply_or_not_files_are_refused(tmp_path):
    nested = tmp_path / "run.json"
    nested.write_text("[" * 200_000 + "]" * 200_000)
    result = CliRunner().invoke(main, ["train", "--config", str(nested), "--print-config"])
    assert result.exit_code == 2, result.output
    assert "nested too deeply" in result.output and "Traceback" not in result.output

    bad_model = tmp_path / "bad.json"
    run = {"steps": 1, "data": {"source": "synthetic:16"}, "out": str(tmp_path / "run")}
    bad_model.write_text(json.dumps({**run, "model_config": {"type": "vision", "depth": 10**6}}))
    result = CliRunner().invoke(main, ["train", "--config", str(bad_model)])
    assert result.exit_code != 0 and "depth must be between 1 and 512" in result.output, result.output
