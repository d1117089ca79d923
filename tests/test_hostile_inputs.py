"""The command line against hostile but realistic input: every case is a one-line error naming the input,
or a reported skip where the command takes many inputs; nothing hangs, traces back or loses a good output.

Cases that could hang (FIFOs) or need process limits (a full disk) run ``pe`` in a subprocess with a
timeout; the rest use click's runner.
"""

from __future__ import annotations

import json
import os
import re
import resource
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from conftest import folder_chain_past_path_max, randomize, tiny_clip_config
from perception_encoder.cli.main import main
from perception_encoder.clip import CLIP
from perception_encoder.embedding import read_embeddings
from perception_encoder.factory import save
from perception_encoder.limits import MAX_BATCH_SIZE, MAX_FRAMES


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    model = randomize(CLIP(tiny_clip_config()), seed=3)
    path = tmp_path_factory.mktemp("model") / "tiny.safetensors"
    save(model, path)
    return path


def _image(path: Path, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(path, format="PNG")
    return path


def _run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def _pe(*args, timeout: float = 180, preexec=None) -> subprocess.CompletedProcess:
    """``pe`` in a fresh process (a hang is a test failure, not a stuck suite)."""
    return subprocess.run(
        [sys.executable, "-m", "perception_encoder.cli.main", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        preexec_fn=preexec,
        env={**os.environ, "PE_PACK_WEIGHTS": "off"},
    )


def _one_line_error(result) -> str:
    assert result.exit_code != 0, result.output
    assert "Traceback" not in result.output, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error")]
    assert len(errors) == 1, result.output
    return errors[0]


# --- inputs that are not regular files ------------------------------------------------------------------


def test_fifo_and_dev_zero_behind_image_names_are_skipped_not_read(model_file, tmp_path):
    good = _image(tmp_path / "good.png")
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    zero = tmp_path / "zero.png"
    zero.symlink_to("/dev/zero")
    huge = tmp_path / "huge.png"
    with open(huge, "wb") as f:
        f.truncate(3 << 30)  # sparse: 3 GiB on paper, nothing on disk
    out = tmp_path / "emb.npy"
    proc = _pe("embed", good, fifo, zero, huge, tmp_path / "missing.png", "-o", out, "-m", model_file)
    assert proc.returncode == 0, proc.stderr
    assert "embedded 1 of 5 files" in proc.stdout
    for name, reason in [
        ("pipe.png", "a FIFO (named pipe), not a regular file"),
        ("zero.png", "a character device, not a regular file"),
        ("huge.png", "too large"),
        ("missing.png", "no such file or folder"),
    ]:
        assert any(name in line and reason in line for line in proc.stderr.splitlines()), (name, proc.stderr)
    assert read_embeddings(out)[1] == [str(good)]


def test_unlistable_and_too_deep_folders_are_reported_and_the_rest_embedded(model_file, tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    _image(root / "a.png")
    folder_chain_past_path_max(root)
    out = tmp_path / "emb.npy"
    result = _run("embed", root, "-o", out, "-m", model_file)
    assert result.exit_code == 0, result.output
    assert "cannot list the folder" in result.stderr and "File name too long" in result.stderr
    assert [Path(n).name for n in read_embeddings(out)[1]] == ["a.png"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads folders whatever their permissions")
def test_a_folder_without_read_permission_is_reported(model_file, tmp_path):
    root = tmp_path / "root"
    (root / "locked").mkdir(parents=True)
    _image(root / "a.png")
    _image(root / "locked" / "b.png")
    (root / "locked").chmod(0)
    try:
        result = _run("embed", root, "-o", tmp_path / "e.npy", "-m", model_file)
    finally:
        (root / "locked").chmod(0o755)
    assert result.exit_code == 0, result.output
    assert "locked" in result.stderr and "Permission denied" in result.stderr


# --- names --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".npy", ".parquet"])
def test_odd_file_names_keep_their_rows(model_file, tmp_path, suffix):
    if suffix == ".parquet":
        pytest.importorskip("pyarrow")
    root = tmp_path / "odd"
    root.mkdir()
    names = [b"caf\xe9-latin1.png", b"two\nlines.png", b"back\\slash\\xff.png", "snow\u2603.png".encode()]
    for i, raw in enumerate(names):
        _image(Path(os.fsdecode(os.path.join(os.fsencode(root), raw))), seed=i)
    out = tmp_path / f"emb{suffix}"
    result = _run("embed", root, "-o", out, "-m", model_file)
    assert result.exit_code == 0, result.output
    array, got = read_embeddings(out)
    assert array.shape[0] == len(names) == len(got)
    assert sorted(os.fsencode(Path(n).name) for n in got) == sorted(names)
    for n in got:  # every name opens the file it came from
        assert Path(n).is_file()
    if suffix == ".npy":
        listing = out.with_suffix(".paths.txt").read_bytes().decode("utf-8")  # valid UTF-8, one line per row
        assert listing.count("\n") == len(names)
        assert "two\\nlines.png" in listing and "caf\\xe9-latin1.png" in listing


# --- outputs ----------------------------------------------------------------------------------------------


def test_outputs_that_cannot_be_written_fail_before_the_work(model_file, tmp_path):
    good = _image(tmp_path / "good.png")
    a_file = _image(tmp_path / "plain.png")
    cases = [
        (a_file / "emb.npy", "is a file, not a folder"),
        (tmp_path / ("n" * 300 + ".npy"), "file name is too long"),
        (Path("/sys/emb.npy"), "Permission denied"),  # a read-only place, even for root
    ]
    for out, message in cases:
        line = _one_line_error(_run("embed", good, "-o", out, "-m", model_file))
        assert message in line, line
    made = tmp_path / "new" / "deeper" / "emb.npy"  # a missing folder is made
    assert _run("embed", good, "-o", made, "-m", model_file).exit_code == 0 and made.is_file()


def _file_size_limit(limit: int):
    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def test_a_full_disk_keeps_the_previous_output(model_file, tmp_path):
    images = [_image(tmp_path / f"{i}.png", seed=i) for i in range(3)]
    out = tmp_path / "emb.npy"
    first = _pe("embed", images[0], "-o", out, "-m", model_file)
    assert first.returncode == 0, first.stderr
    before = (out.read_bytes(), out.with_suffix(".paths.txt").read_bytes())
    # a second run whose writes fail after 100 bytes, as on a full disk
    full = _pe("embed", *images, "-o", out, "-m", model_file, preexec=_file_size_limit(100))
    assert full.returncode == 1, full.stderr
    assert "no space left" in full.stderr and "Traceback" not in full.stderr
    assert (out.read_bytes(), out.with_suffix(".paths.txt").read_bytes()) == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no temporary files


# --- numbers ----------------------------------------------------------------------------------------------


def test_absurd_numbers_are_refused_with_the_bound(model_file, tmp_path):
    good = _image(tmp_path / "good.png")
    out = tmp_path / "e.npy"
    result = _run("embed", good, "-o", out, "-m", model_file, "--batch-size", 10**20)
    assert result.exit_code == 2 and f"1<=x<={MAX_BATCH_SIZE}" in result.output, result.output
    result = _run("classify", good, "-l", "a,b", "-m", model_file, "--frames", 1_000_000)
    assert result.exit_code == 2 and f"1<=x<={MAX_FRAMES}" in result.output, result.output
    result = _run("embed", good, "-o", out, "-m", model_file, "--workers", 10**6)
    assert result.exit_code == 2


def test_a_config_with_absurd_sizes_is_refused_before_building(tmp_path):
    ckpt = tmp_path / "m.safetensors"
    save(randomize(CLIP(tiny_clip_config())), ckpt)
    cfg = json.loads((tmp_path / "m.json").read_text())
    cfg["vision"]["depth"] = 1_000_000
    (tmp_path / "m.json").write_text(json.dumps(cfg))
    line = _one_line_error(_run("embed", _image(tmp_path / "a.png"), "-o", tmp_path / "e.npy", "-m", ckpt))
    assert "depth must be between 1 and 512, got 1,000,000" in line


# --- labels and templates ---------------------------------------------------------------------------------


def test_templates_with_other_braces_and_duplicate_labels_are_usage_errors(model_file, tmp_path):
    good = _image(tmp_path / "good.png")
    for template in ("a {x} {}", "a {} {}", "a {0}", "no placeholder"):
        result = _run("classify", good, "-l", "a,b", "-m", model_file, "-t", template)
        assert result.exit_code == 2 and "exactly one '{}'" in result.output, (template, result.output)
    result = _run("classify", good, "-l", "cat,dog,cat", "-m", model_file, "--json")
    assert result.exit_code == 2 and "'cat' given more than once" in result.output, result.output


# --- weights --------------------------------------------------------------------------------------------


def test_nan_weights_are_an_error_naming_them(tmp_path):
    model = randomize(CLIP(tiny_clip_config()))
    with torch.no_grad():
        model.visual.conv1.weight[0, 0, 0, 0] = float("nan")
        model.text.ln_final.weight[0] = float("inf")
    ckpt = save(model, tmp_path / "nan.safetensors")
    good = _image(tmp_path / "a.png")
    line = _one_line_error(_run("embed", good, "-o", tmp_path / "e.npy", "-m", ckpt))
    assert "NaN or infinite" in line and "visual.conv1.weight" in line and "a.png" in line
    assert not (tmp_path / "e.npy").exists()
    line = _one_line_error(_run("classify", good, "-l", "a,b", "-m", ckpt))
    assert "NaN or infinite" in line and "text.ln_final.weight" in line


# --- images of more than 8 bits -------------------------------------------------------------------------


def test_sixteen_bit_images_warn_once_and_can_be_scaled(model_file, tmp_path):
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 65535, (24, 24), dtype=np.uint16)).save(tmp_path / f"deep{i}.png")
    clipped = _run("embed", tmp_path, "-o", tmp_path / "c.npy", "-m", model_file)
    assert clipped.exit_code == 0, clipped.output
    # once per run, not per file (Pillow reads 16-bit PNGs as mode I;16, older releases as I)
    assert len(re.findall(r"16-bit or float images \(mode I(;16)?\)", clipped.stderr)) == 1, clipped.stderr
    scaled = _run("embed", tmp_path, "-o", tmp_path / "s.npy", "-m", model_file, "--high-bit-depth", "scale")
    assert scaled.exit_code == 0 and "16-bit" not in scaled.stderr
    assert not np.allclose(np.load(tmp_path / "c.npy"), np.load(tmp_path / "s.npy"))


# --- printing -------------------------------------------------------------------------------------------


def test_tables_to_a_pipe_are_one_row_per_line_with_whole_names(model_file, tmp_path):
    long = _image(tmp_path / ("a-very-long-file-name-" * 8 + ".png"))
    tabbed = _image(tmp_path / "tab\there.png", seed=1)
    result = _run("classify", long, tabbed, "-l", "red,green,blue", "-m", model_file)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == "file\t#1\t#2\t#3" and len(lines) == 3
    assert lines[1].split("\t")[0] == str(long) and lines[2].split("\t")[0] == str(
        tmp_path / "tab\\there.png"
    )
    models = _run("models").stdout.splitlines()
    assert models[0].startswith("name\tfamily") and any(
        line.startswith("PE-Core-G14-448\t") for line in models
    )


def test_device_auto_works_in_every_model_command(model_file, tmp_path):
    good = _image(tmp_path / "a.png")
    assert _run("embed", good, "-o", tmp_path / "e.npy", "-m", model_file, "--device", "auto").exit_code == 0
    assert _run("classify", good, "-l", "a,b", "-m", model_file, "--device", "auto").exit_code == 0
    result = _run("features", good, "-o", tmp_path / "f.npy", "-m", model_file, "--device", "auto")
    assert result.exit_code == 0, result.output


def test_help_and_version_exit_cleanly():
    """click's own exits (--help, --version) are not user errors (they subclass RuntimeError)."""
    for args in (
        ["--help"],
        ["--version"],
        ["classify", "--help"],
        ["embed", "--help"],
        ["eval", "zeroshot", "--help"],
    ):
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 0 and "Error" not in result.output, (args, result.output)
