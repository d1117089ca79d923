"""Training checkpoints: read without running code, refused when not ours, RNG states that round-trip, and
the temporary files of an interrupted save cleaned up by the next run."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from conftest import tiny_clip_config
from perception_encoder.cli.main import main
from perception_encoder.configs import config_to_dict
from perception_encoder.errors import CheckpointError
from perception_encoder.train import checkpoint, train
from perception_encoder.train.checkpoint import (
    FORMAT,
    VERSION,
    check_plain,
    load_training_state,
    remove_stale_temp_files,
    rng_state,
    set_rng_state,
)

SRC = Path(__file__).resolve().parents[1] / "src" / "perception_encoder"


def _config(out: Path, **over) -> dict:
    return {
        "model_config": config_to_dict(tiny_clip_config()),
        "data": {"source": "synthetic:16"},
        "steps": 2,
        "image_size": 16,
        "batch_size": 8,
        "out": str(out),
        "progress": False,
        "device": "cpu",
        **over,
    }


class _CreatesFile:
    """Unpickling this object calls ``open(path, "w")``: a stand-in for any code a pickle can run."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


def _ours_looking(payload: object) -> dict:
    """A dict with our marker and keys, carrying ``payload``: only the pickle's contents give it away."""
    return {
        "format": FORMAT,
        "version": VERSION,
        "model": {},
        "model_config": {},
        "optimizer": {},
        "scheduler": {},
        "scaler": None,
        "rng": payload,
        "position": {"step": 1, "epoch": 0, "index": 8, "bad_samples": 0},
        "config": {},
    }


# --- a checkpoint never runs code ---------------------------------------------------------------------


def test_planted_checkpoint_with_code_is_refused_and_not_run(tmp_path):
    out = tmp_path / "run"
    last = out / "checkpoints" / "last.pt"
    last.parent.mkdir(parents=True)
    marker = tmp_path / "code-ran"
    torch.save(_ours_looking(_CreatesFile(marker)), last)

    with pytest.raises(CheckpointError, match=r"last\.pt.*refused.*carries code"):
        train(_config(out, resume="auto"))
    assert not marker.exists()
    with pytest.raises(CheckpointError, match=r"last\.pt.*refused"):
        train(_config(tmp_path / "other", resume=str(last)))
    assert not marker.exists()
    # the CLI turns it into a one-line error
    args = [
        "train",
        "--model-config",
        str(_model_config_file(tmp_path)),
        "--data",
        "synthetic:16",
        "--steps",
        "1",
    ]
    res = CliRunner().invoke(main, [*args, "--out", str(out), "--resume", str(last), "--no-progress"])
    assert res.exit_code == 1 and not marker.exists()
    assert res.output.startswith("Error: training checkpoint") and res.output.count("\n") == 1, res.output


def _model_config_file(tmp_path: Path) -> Path:
    import json

    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(config_to_dict(tiny_clip_config())))
    return path


def test_files_that_are_not_our_checkpoints_are_refused(tmp_path):
    plain = tmp_path / "plain.pt"
    torch.save({"model": {}, "optimizer": {}, "scheduler": {}, "position": {}}, plain)
    with pytest.raises(CheckpointError, match=r"plain\.pt.*not a training checkpoint of pe train"):
        load_training_state(plain)
    with pytest.raises(CheckpointError, match="not a training checkpoint"):
        train(_config(tmp_path / "run", resume=str(plain)))

    text = tmp_path / "notes.pt"
    text.write_text("not a checkpoint\n")
    with pytest.raises(CheckpointError, match=r"notes\.pt.*not a PyTorch checkpoint file"):
        load_training_state(text)
    numpy_state = tmp_path / "numpy.pt"  # objects other than tensors: refused even without code
    torch.save(_ours_looking({"numpy": np.zeros(3)}), numpy_state)
    with pytest.raises(CheckpointError, match=r"refused.*numpy"):
        load_training_state(numpy_state)

    newer = tmp_path / "newer.pt"
    torch.save({**_ours_looking({}), "version": VERSION + 1}, newer)
    with pytest.raises(CheckpointError, match="format version 2"):
        load_training_state(newer)
    incomplete = tmp_path / "incomplete.pt"
    state = _ours_looking({})
    del state["optimizer"]
    torch.save(state, incomplete)
    with pytest.raises(CheckpointError, match="missing optimizer"):
        load_training_state(incomplete)
    with pytest.raises(FileNotFoundError):
        load_training_state(tmp_path / "nothing.pt")


def test_no_weights_only_false_in_the_package():
    offenders = [
        f"{path.relative_to(SRC)}:{n}"
        for path in sorted(SRC.rglob("*.py"))
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if "weights_only=False" in line.replace(" ", "")
    ]
    assert offenders == []


def test_saved_checkpoint_is_plain_and_resumes_with_adamw(tmp_path):
    # AdamW keeps its step count as a tensor; the checkpoint still loads with weights_only=True
    cfg = _config(tmp_path / "run", steps=3, optim={"name": "adamw", "lr": 1e-3})
    straight = train({**cfg, "out": str(tmp_path / "straight")})
    first = train({**cfg, "stop_at_step": 2})
    state = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)
    assert state["format"] == FORMAT and state["version"] == VERSION and state["position"]["step"] == 2
    second = train({**cfg, "resume": "auto"})
    assert first.losses + second.losses == pytest.approx(straight.losses, rel=1e-6, abs=1e-7)


def test_rng_state_round_trips_through_a_weights_only_file(tmp_path):
    random.seed(3)
    np.random.seed(4)
    torch.manual_seed(5)
    np.random.standard_normal()  # leaves a cached gaussian in NumPy's state
    torch.save(rng_state(), tmp_path / "rng.pt")
    expected = (random.random(), np.random.standard_normal(), np.random.rand(), torch.rand(2))
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    got = (random.random(), np.random.standard_normal(), np.random.rand(), torch.rand(2))
    assert got[:3] == expected[:3] and torch.equal(got[3], expected[3])


def test_check_plain_names_what_is_not_plain():
    check_plain({"a": [1, 2.0, (True, None, "s")], 3: torch.zeros(1)})
    with pytest.raises(TypeError, match=r"state\['rng'\]\['numpy'\] is a numpy.ndarray"):
        check_plain({"rng": {"numpy": np.zeros(2)}})
    with pytest.raises(TypeError, match="numpy.float64"):
        check_plain([np.float64(1.0)])  # a float subclass: weights_only would refuse it


# --- temporary files of an interrupted save -----------------------------------------------------------


def _leftover_name(target: Path) -> str:
    """The name that the ``atomic_write`` checkpoints are saved with gives its temporary file for ``target``
    (a SIGKILL during the save would leave it behind)."""
    names: list[str] = []

    def record_and_fail(tmp: str) -> None:
        names.append(Path(tmp).name)
        raise RuntimeError("stop before the rename")

    with pytest.raises(RuntimeError):
        checkpoint.atomic_write(target, record_and_fail)
    return names[0]


def test_next_run_removes_temporary_files_of_an_interrupted_save(tmp_path):
    out = tmp_path / "run"
    folder = out / "checkpoints"
    train(_config(out, stop_at_step=1))
    leftovers = [_leftover_name(folder / "last.pt"), _leftover_name(folder / "step_0000002.pt")]
    keep = [".notes.tmp", ".last.pt.keep", ".other.pt.abcd1234.tmp", "last.pt.abcd1234.tmp", ".last.pt.tmp"]
    for name in leftovers + keep:
        (folder / name).write_bytes(b"partial")
    assert all(name.startswith(".") and name.endswith(".tmp") for name in leftovers)

    result = train(_config(out, resume="auto"))
    assert result.start_step == 1 and result.finished
    names = {p.name for p in folder.iterdir()}
    assert not names & set(leftovers)
    assert set(keep) <= names
    assert remove_stale_temp_files(tmp_path / "no-such-run") == 0


def test_resuming_a_checkpoint_of_another_model_is_one_clear_error(tmp_path):
    out = tmp_path / "run"
    train(_config(out))
    other = config_to_dict(tiny_clip_config(depth=3))
    result = CliRunner().invoke(
        main,
        [
            "train",
            "--model-config",
            _write_json(tmp_path / "m.json", other),
            "--data",
            "synthetic:16",
            "--steps",
            "3",
            "--image-size",
            "16",
            "--batch-size",
            "8",
            "--out",
            str(out),
            "--resume",
            "auto",
            "--no-progress",
            "--device",
            "cpu",
        ],
    )
    assert result.exit_code == 1, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error")]
    assert len(errors) == 1 and "does not fit the configured model" in errors[0], result.output
    assert "missing key" in errors[0] and "Traceback" not in result.output


def _write_json(path: Path, data: dict) -> str:
    import json

    path.write_text(json.dumps(data))
    return str(path)
