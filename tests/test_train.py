"""The training loop: each recipe part switched on and off, resume equivalence, losses, config, CLI."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from click.testing import CliRunner

from conftest import tiny_clip_config
from perception_encoder.clip import CLIP
from perception_encoder.configs import config_to_dict
from perception_encoder.train import TrainConfig, train
from perception_encoder.train.config import LN_100, parse_stages, stage_at
from perception_encoder.train.loss import clip_loss, mask_consistency_loss, scale_grad
from perception_encoder.train.metrics import read_metrics


def _config(tmp_path, **over) -> dict:
    cfg = {
        "model_config": config_to_dict(tiny_clip_config()),
        "data": {"source": "synthetic:40"},
        "steps": 2,
        "image_size": 32,
        "batch_size": 8,
        "out": str(tmp_path / "run"),
        "progress": False,
        "log_every": 1,
        "mask": {"fraction": 0.25},
    }
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(cfg.get(key), dict):
            cfg[key] = {**cfg[key], **value}
        else:
            cfg[key] = value
    return cfg


def _initial_state(tmp_path, **over) -> dict[str, torch.Tensor]:
    from perception_encoder.train.trainer import build_model

    return {
        k: v.clone()
        for k, v in build_model(TrainConfig.from_dict(_config(tmp_path, **over))).state_dict().items()
    }


def _changed(result, before: dict[str, torch.Tensor]) -> set[str]:
    after = result.model.state_dict()
    return {k for k in before if not torch.equal(before[k], after[k])}


# --- losses ---------------------------------------------------------------------------------------------


def test_clip_loss_matches_a_direct_computation():
    torch.manual_seed(0)
    img = torch.nn.functional.normalize(torch.randn(6, 8), dim=-1)
    txt = torch.nn.functional.normalize(torch.randn(6, 8), dim=-1)
    scale = torch.tensor(math.log(10.0))
    logits = 10.0 * img @ txt.T
    expected = 0.0
    for i in range(6):
        expected += -torch.log_softmax(logits[i], 0)[i] - torch.log_softmax(logits[:, i], 0)[i]
    assert float(clip_loss(img, txt, scale)) == pytest.approx(float(expected) / 12, rel=1e-5)
    # matching pairs give a lower loss than shuffled ones
    assert float(clip_loss(img, img, scale)) < float(clip_loss(img, img.roll(1, 0), scale))


def test_mask_loss_and_grad_scaling():
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]], requires_grad=True)
    target = torch.tensor([[1.0, 0.0], [1.0, 0.0]], requires_grad=True)
    loss = mask_consistency_loss(a, target, count=4)  # cos = 1 and 0 -> (0 + 1) / 4
    assert float(loss.detach()) == pytest.approx(0.25)
    loss.backward()
    assert target.grad is None  # stop-gradient on the target
    x = torch.tensor(2.0, requires_grad=True)
    (scale_grad(x, 0.5) * 3).backward()
    assert float(x.grad) == pytest.approx(1.5)


# --- each recipe part switches on and off -------------------------------------------------------------


def test_default_recipe_runs_and_learns(tmp_path):
    before = _initial_state(tmp_path)
    result = train(_config(tmp_path, steps=3))
    assert result.finished and len(result.losses) == 3 and all(math.isfinite(v) for v in result.losses)
    changed = _changed(result, before)
    assert "visual.conv1.weight" in changed and "text.text_projection" in changed and "logit_scale" in changed
    rows = read_metrics(result.metrics_path)
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert all(r["mask_loss"] > 0 for r in rows)  # mask regularisation is on by default
    assert rows[0]["lr"] == pytest.approx(2e-3)  # LAMB's default peak rate, no warm-up
    # the exported model loads with the core loader and gives the trained weights
    import perception_encoder as pe

    loaded = pe.load(str(result.model_path))
    assert isinstance(loaded, CLIP)
    for k, v in result.model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[k], v)


def test_mask_regularisation_off(tmp_path):
    result = train(_config(tmp_path, mask={"enabled": False}))
    assert all(r["mask_loss"] == 0 for r in read_metrics(result.metrics_path))


def test_fixed_temperature_and_clamp(tmp_path):
    before = _initial_state(tmp_path)
    result = train(_config(tmp_path, loss={"learn_logit_scale": False}))
    assert "logit_scale" not in _changed(result, before)
    # a temperature above the clamp is brought back to ln(100)
    cfg = _config(tmp_path / "b", steps=1)
    cfg["model_config"]["init_logit_scale"] = 6.0
    result = train(cfg)
    assert float(result.model.logit_scale.detach()) == pytest.approx(LN_100)


def test_freeze_leaves_parameters_untouched(tmp_path):
    before = _initial_state(tmp_path)
    result = train(_config(tmp_path, freeze=["text.token_embedding", "visual.conv1"]))
    changed = _changed(result, before)
    assert "text.token_embedding.weight" not in changed and "visual.conv1.weight" not in changed
    assert "text.text_projection" in changed
    with pytest.raises(ValueError, match="no parameter name starts with 'vision.'"):
        train(_config(tmp_path / "b", freeze=["vision."]))


def test_adamw_instead_of_lamb(tmp_path):
    result = train(_config(tmp_path, optim={"name": "adamw", "lr": 1e-3}))
    assert isinstance(result.losses[0], float) and result.finished


def test_progressive_resolution_stages(tmp_path):
    result = train(_config(tmp_path, steps=None, stages=[[16, 2], [24, 1], [32, 1]]))
    assert [r["image_size"] for r in read_metrics(result.metrics_path)] == [16, 16, 24, 32]


def test_gradient_accumulation_counts_micro_batches(tmp_path):
    result = train(_config(tmp_path, accum_steps=2, steps=2))
    rows = read_metrics(result.metrics_path)
    assert [r["samples"] for r in rows] == [16, 32]


def test_augmentation_off_and_warmup_cosine(tmp_path):
    result = train(_config(tmp_path, augment={"enabled": False}, steps=4, optim={"warmup_steps": 2}))
    lrs = [r["lr"] for r in read_metrics(result.metrics_path)]
    assert lrs[0] == pytest.approx(1e-3) and lrs[1] == pytest.approx(2e-3)
    assert lrs[2] > lrs[3] > 0


def test_loader_workers_give_the_same_run(tmp_path):
    # per-sample seeds: the batches do not depend on which process loads them
    plain = train(_config(tmp_path / "a"))
    workers = train(_config(tmp_path / "b", data={"num_workers": 2}))
    assert workers.losses == plain.losses


def test_activation_checkpointing_gives_the_same_run(tmp_path):
    plain = train(_config(tmp_path / "a"))
    ckpt = train(_config(tmp_path / "b", grad_checkpointing=True))
    assert ckpt.losses == pytest.approx(plain.losses, rel=1e-5)
    for k, v in plain.model.state_dict().items():
        torch.testing.assert_close(ckpt.model.state_dict()[k], v, rtol=1e-4, atol=1e-5)


def test_bf16_autocast_is_close_to_fp32(tmp_path):
    fp32 = train(_config(tmp_path / "a", steps=1))
    bf16 = train(_config(tmp_path / "b", steps=1, precision="bf16"))
    assert bf16.losses[0] == pytest.approx(fp32.losses[0], rel=0.05)
    assert bf16.model.visual.conv1.weight.dtype == torch.float32  # weights stay fp32


def test_video_training_on_frame_folders(tmp_path):
    from perception_encoder.train.synthetic import ShapesGenerator

    gen = ShapesGenerator(seed=2, image_size=32)
    rows = ["path,caption"]
    for c in range(8):
        clip = tmp_path / "clips" / f"clip{c}"
        clip.mkdir(parents=True)
        for f in range(3):
            gen.sample(c * 10 + f).image.save(clip / f"{f:03d}.png")
        rows.append(f"clips/clip{c},{gen.sample(c * 10).caption}")
    rows.append("clips/missing,a clip that is not there")
    (tmp_path / "clips.csv").write_text("\n".join(rows) + "\n")
    result = train(_config(tmp_path, data={"source": str(tmp_path / "clips.csv"), "frames": 2}, steps=2))
    assert result.finished and all(math.isfinite(v) for v in result.losses)
    assert result.bad_samples >= 1  # the missing clip was skipped, not fatal


def test_bad_samples_are_counted_not_fatal(tmp_path):
    from perception_encoder.train.synthetic import write_captions

    table = write_captions(tmp_path / "d", "train", 10, image_size=32)
    text = table.read_text() + "images/nothere.png,a missing image,\nimages/000001.png,,\n"
    table.write_text(text)
    result = train(_config(tmp_path, data={"source": str(table)}, batch_size=4, steps=6))
    assert result.finished
    # 12 rows = 3 batches of 4 per epoch; 6 steps = 2 epochs, so each of the 2 bad rows is met twice
    assert result.bad_samples == 4
    assert read_metrics(result.metrics_path)[-1]["bad_samples"] == 4


# --- resume ---------------------------------------------------------------------------------------------


def test_resume_mid_epoch_continues_the_same_loss_curve(tmp_path):
    # 40 samples / batch 8 = 5 batches per epoch: the stop at step 3 is mid-epoch, the run crosses an epoch
    over = dict(steps=None, stages=[[16, 4], [32, 4]], optim={"warmup_steps": 2})
    straight = train(_config(tmp_path / "straight", **over))
    first = train(_config(tmp_path / "resumed", stop_at_step=3, **over))
    assert first.step == 3 and not first.finished and first.model_path is None
    second = train(_config(tmp_path / "resumed", resume="auto", **over))
    assert second.start_step == 3 and second.finished
    assert first.losses + second.losses == pytest.approx(straight.losses, rel=1e-6, abs=1e-7)
    for k, v in straight.model.state_dict().items():
        torch.testing.assert_close(second.model.state_dict()[k], v, rtol=1e-5, atol=1e-6)
    rows = read_metrics(second.metrics_path)
    assert [int(r["step"]) for r in rows] == list(range(1, 9))
    ckpts = sorted((tmp_path / "resumed" / "run" / "checkpoints").glob("step_*.pt"))
    assert ckpts and ckpts[-1].name == "step_0000008.pt"


def test_resume_auto_without_checkpoint_starts_fresh(tmp_path):
    result = train(_config(tmp_path, resume="auto", steps=1))
    assert result.start_step == 0 and result.finished


# --- config -------------------------------------------------------------------------------------------


def test_config_round_trip_and_errors(tmp_path):
    cfg = TrainConfig.from_dict(_config(tmp_path, stages=[[16, 2], {"image_size": 32, "steps": 3}]))
    again = TrainConfig.from_dict(json.loads(cfg.to_json()))
    assert again == cfg and [s.steps for s in again.stages] == [2, 3]
    assert stage_at(cfg.stages, 0)[1].image_size == 16 and stage_at(cfg.stages, 2)[1].image_size == 32
    assert [s.image_size for s in parse_stages("98:10, 154:5")] == [98, 154]
    with pytest.raises(ValueError, match="unknown key.*optim.*lrr"):
        TrainConfig.from_dict({"optim": {"lrr": 1}})
    with pytest.raises(ValueError, match="SIZE:STEPS"):
        parse_stages("98")
    with pytest.raises(ValueError, match="no training data"):
        TrainConfig(model="PE-Core-T16-384").validate()
    with pytest.raises(ValueError, match="unknown config key 'optim.nope'"):
        cfg.with_overrides({"optim.nope": 1})
    assert cfg.with_overrides({"optim.lr": 0.5}).optim.lr == 0.5


def test_vision_only_model_is_refused(tmp_path):
    cfg = _config(tmp_path)
    del cfg["model_config"]
    cfg["model"] = "PE-Spatial-T16-512"
    with pytest.raises(ValueError, match="vision-only"):
        train(cfg)


def test_too_little_data_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="fewer than one batch"):
        train(_config(tmp_path, data={"source": "synthetic:4"}))


def test_fine_tune_from_a_saved_checkpoint(tmp_path):
    from perception_encoder.weights.files import save_safetensors

    model = CLIP(tiny_clip_config())
    path = save_safetensors(model, tmp_path / "start.safetensors")
    cfg = _config(tmp_path, init=str(path), steps=1)
    del cfg["model_config"]
    result = train(cfg)
    start = model.state_dict()
    assert result.finished
    assert not torch.equal(result.model.visual.conv1.weight, start["visual.conv1.weight"])
    assert result.model.config == model.config


# --- CLI ----------------------------------------------------------------------------------------------


def test_cli_flags_override_the_config_file(tmp_path):
    from perception_encoder.cli.main import main

    run = _config(tmp_path)
    (tmp_path / "run.json").write_text(json.dumps(run))
    runner = CliRunner()
    res = runner.invoke(
        main,
        [
            "train",
            "--config",
            str(tmp_path / "run.json"),
            "--lr",
            "0.01",
            "--stages",
            "16:1,32:1",
            "--no-mask",
            "--freeze",
            "visual.",
            "--print-config",
        ],
    )
    assert res.exit_code == 0, res.output
    printed = json.loads(res.output)
    assert printed["optim"]["lr"] == 0.01 and printed["mask"]["enabled"] is False
    assert printed["freeze"] == ["visual."]
    assert printed["stages"] == [{"image_size": 16, "steps": 1}, {"image_size": 32, "steps": 1}]
    res = runner.invoke(
        main,
        ["train", "--config", str(tmp_path / "run.json"), "--steps", "1", "--out", str(tmp_path / "cli")],
    )
    assert res.exit_code == 0, res.output
    summary = json.loads(res.output[res.output.index("{") :])
    assert summary["step"] == 1 and (tmp_path / "cli" / "model.safetensors").is_file()
    bad = runner.invoke(main, ["train", "--config", str(tmp_path / "run.json"), "--data", "nothing.xyz"])
    assert bad.exit_code != 0 and "cannot tell" in bad.output


def test_config_is_not_mutated_by_a_run(tmp_path):
    cfg = _config(tmp_path, steps=1)
    frozen = copy.deepcopy(cfg)
    train(cfg)
    assert cfg == frozen
