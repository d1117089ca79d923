"""Embedding datasets end to end: folders, tars, tables and URLs into sharded Parquet; resume after SIGKILL
with nothing lost, repeated or recomputed; settings and inputs checked; flat memory; the Ray engine."""

from __future__ import annotations

import csv
import http.server
import io
import os
import signal
import subprocess
import sys
import tarfile
import threading
import time
import tracemalloc
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from conftest import randomize, tiny_clip_config
from perception_encoder.cli.main import main
from perception_encoder.clip import CLIP
from perception_encoder.datasets import DatasetError, open_dataset
from perception_encoder.datasets.embed import embed_dataset
from perception_encoder.embedding import embed_paths
from perception_encoder.factory import load, save

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "tiny.safetensors"
    save(randomize(CLIP(tiny_clip_config()), seed=7), path)
    return path


def _png(path: Path, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 255, (20, 28, 3), dtype=np.uint8)).save(path)
    return path


def _folder(root: Path, n: int, bad: int = 1) -> Path:
    for i in range(n):
        _png(root / ("sub" if i % 4 == 0 else "") / f"img{i:04d}.png", seed=i)
    for j in range(bad):
        (root / f"bad{j}.png").write_text("not an image")
    return root


# --- folders ----------------------------------------------------------------------------------------------


def test_a_folder_becomes_shards_whose_rows_equal_the_pipeline(model_file, tmp_path):
    root = _folder(tmp_path / "imgs", 23, bad=2)
    out = tmp_path / "ds"
    summary = embed_dataset([root], out, model=model_file, shard_size=7, batch_size=4)
    assert (summary.rows, summary.skipped, summary.shards_written) == (23, 2, 4)
    ds = open_dataset(out)
    assert len(ds) == 23 and ds.manifest.complete and ds.dim == 16
    files = sorted(
        (p for p in root.rglob("*.png") if not p.name.startswith("bad")),
        key=lambda p: (p.parent != root, p.name),
    )
    assert ds.ids() == [p.relative_to(root).as_posix() for p in files]
    table = ds.table()
    assert table.column_names[:3] == ["id", "source", "embedding"]
    assert set(table.column("source").to_pylist()) == {str(root)}
    reference = embed_paths(load(model_file), files, batch_size=4)
    np.testing.assert_allclose(ds.embeddings(), reference.embeddings.numpy(), rtol=1e-5, atol=1e-6)
    skipped = ds.skipped().to_pylist()
    assert [s["id"] for s in skipped] == ["bad0.png", "bad1.png"]
    assert all("not a recognised image format" in s["reason"] for s in skipped)
    assert [s.inputs for s in ds.manifest.shards] == [7, 7, 7, 4]
    for shard in ds.shard_files():
        assert pq.read_table(shard).num_rows <= 7


def _snapshot(folder: Path) -> dict[str, tuple[int, bytes]]:
    return {
        p.name: (p.stat().st_ino, p.read_bytes())
        for p in sorted(folder.iterdir())
        if not p.name.startswith(".")
    }


def test_a_job_killed_with_sigkill_resumes_with_nothing_lost_repeated_or_rewritten(model_file, tmp_path):
    root = _folder(tmp_path / "imgs", 240, bad=3)
    args = [sys.executable, "-m", "perception_encoder.cli.main", "embed", str(root), "-m", str(model_file)]
    args += ["--shard-size", "8", "-b", "2", "--no-progress"]
    killed = tmp_path / "killed"
    proc = subprocess.Popen([*args, "--out", str(killed)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while not (killed / "shards" / "part-00003.parquet").exists():
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline, "the job wrote no shard in time"
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = _snapshot(killed / "shards")
    assert 4 <= len(before) < 31, "killed mid-job"
    for shard in before:  # every shard visible under its final name is complete
        assert pq.read_table(killed / "shards" / shard).num_rows > 0

    again = subprocess.run([*args, "--out", str(killed)], capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert f"{len(before)} kept from before" in again.stdout
    after = _snapshot(killed / "shards")
    for name, (inode, data) in before.items():  # neither recomputed nor rewritten
        assert after[name] == (inode, data), name
    assert not [p for p in killed.rglob(".*.tmp")], "temporary files of the killed job were cleaned"

    clean = tmp_path / "clean"
    assert subprocess.run([*args, "--out", str(clean)], capture_output=True, timeout=300).returncode == 0
    a, b = open_dataset(killed), open_dataset(clean)
    assert a.ids() == b.ids() and len(set(a.ids())) == 240
    assert np.array_equal(a.embeddings(), b.embeddings())  # same batches: the very same numbers
    assert a.skipped().to_pylist() == b.skipped().to_pylist()


def test_other_settings_are_refused_by_name_and_overwrite_starts_afresh(model_file, tmp_path):
    root = _folder(tmp_path / "imgs", 6, bad=0)
    out = tmp_path / "ds"
    embed_dataset([root], out, model=model_file, shard_size=4)
    with pytest.raises(DatasetError, match=r"normalize: True here, False in the dataset.*--overwrite"):
        embed_dataset([root], out, model=model_file, shard_size=4, normalize=True)
    with pytest.raises(DatasetError, match=r"storage: 'float16' here, 'float32' in the dataset"):
        embed_dataset([root], out, model=model_file, shard_size=4, half=True)
    summary = embed_dataset([root], out, model=model_file, shard_size=4, half=True, overwrite=True)
    assert summary.shards_written == 2
    half = open_dataset(out)
    assert half.table().schema.field("embedding").type.value_type == pa.float16()
    full = embed_paths(
        load(model_file), sorted(root.rglob("*.png"), key=lambda p: (p.parent != root, p.name))
    )
    np.testing.assert_allclose(half.embeddings(), full.embeddings.numpy(), rtol=2e-3, atol=2e-3)
    # a folder that is not a dataset is never written into
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(DatasetError, match="not empty and not an embedding dataset"):
        embed_dataset([root], tmp_path / "other", model=model_file)


def test_inputs_that_changed_since_a_shard_was_written_are_refused(model_file, tmp_path):
    root = _folder(tmp_path / "imgs", 6, bad=0)
    out = tmp_path / "ds"
    embed_dataset([root], out, model=model_file, shard_size=4)
    _png(root / "aaa-new.png", seed=99)  # sorts first: every shard's inputs move
    with pytest.raises(DatasetError, match="inputs of shard 0 changed"):
        embed_dataset([root], out, model=model_file, shard_size=4)


# --- tars, tables, URLs -----------------------------------------------------------------------------------


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def served(tmp_path):
    folder = tmp_path / "www"
    folder.mkdir()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(_Quiet, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield folder, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_tars_tables_and_urls_carry_their_ids_and_metadata(model_file, tmp_path, served):
    www, base = served
    images = [_png(tmp_path / "src" / f"p{i}.png", seed=10 + i) for i in range(6)]
    tar_path = tmp_path / "shard-0000.tar"
    with tarfile.open(tar_path, "w") as tar:
        for i in (0, 1):
            tar.add(images[i], arcname=f"sample{i}.png")
            caption = f"caption {i}".encode()
            info = tarfile.TarInfo(f"sample{i}.txt")
            info.size = len(caption)
            tar.addfile(info, io.BytesIO(caption))
    (www / "p2.png").write_bytes(images[2].read_bytes())
    table = tmp_path / "urls.csv"
    with open(table, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "url", "caption"])
        w.writerow(["u2", f"{base}/p2.png", "served"])
        w.writerow(["u404", f"{base}/missing.png", "not there"])
        w.writerow(["local3", str(images[3]), "a path"])
    parquet = tmp_path / "bytes.parquet"
    pq.write_table(
        pa.table(
            {"image": [{"bytes": images[i].read_bytes(), "path": None} for i in (4, 5)], "width": [28, 28]}
        ),
        parquet,
    )
    out = tmp_path / "ds"
    summary = embed_dataset(
        [str(tmp_path / "shard-{0000..0000}.tar"), table, parquet], out, model=model_file, shard_size=3
    )
    assert (summary.rows, summary.skipped) == (6, 1)
    ds = open_dataset(out)
    rows = ds.table().to_pylist()
    assert [r["id"] for r in rows] == ["sample0", "sample1", "u2", "local3", "0", "1"]
    assert [r["txt"] for r in rows][:2] == ["caption 0", "caption 1"]
    assert [r["caption"] for r in rows][2:4] == ["served", "a path"] and rows[4]["caption"] is None
    assert [r["width"] for r in rows][4:] == [28, 28]
    (skip,) = ds.skipped().to_pylist()
    assert skip["id"] == "u404" and "404" in skip["reason"]
    # every row is the embedding of the very image it names
    want = embed_paths(load(model_file), images).embeddings.numpy()
    np.testing.assert_allclose(ds.embeddings(), want, rtol=1e-5, atol=1e-6)


# --- memory -----------------------------------------------------------------------------------------------


def test_memory_does_not_grow_with_the_number_of_inputs(model_file, tmp_path):
    peaks = []
    for n in (60, 240):
        root = _folder(tmp_path / f"imgs{n}", n, bad=0)
        tracemalloc.start()
        embed_dataset([root], tmp_path / f"ds{n}", model=model_file, shard_size=20, batch_size=4)
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    assert peaks[1] < 1.5 * peaks[0], peaks  # 4x the inputs, not 4x the memory


# --- the command line -------------------------------------------------------------------------------------


def test_pe_embed_into_a_folder_prints_a_summary(model_file, tmp_path):
    root = _folder(tmp_path / "imgs", 5, bad=1)
    result = CliRunner().invoke(main, ["embed", str(root), "-o", str(tmp_path / "ds"), "-m", str(model_file)])
    assert result.exit_code == 0, result.output
    assert "5 rows, 1 skipped, 1 shard(s) written" in result.stdout
    assert "skipped inputs and their reasons" in result.stderr
    bad = CliRunner().invoke(main, ["embed", str(root), "-o", str(tmp_path / "e.npy"), "--half"])
    assert bad.exit_code == 2 and "--half apply to a dataset folder" in bad.output


# --- Ray ------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_the_ray_engine_writes_the_same_dataset_and_resumes(model_file, tmp_path):
    pytest.importorskip("ray")
    import ray

    root = _folder(tmp_path / "imgs", 14, bad=1)
    local, remote = tmp_path / "local", tmp_path / "ray"
    embed_dataset([root], local, model=model_file, shard_size=4, batch_size=3)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        summary = embed_dataset([root], remote, model=model_file, shard_size=4, batch_size=3, engine="ray")
        assert summary.shards_written == 4
        a, b = open_dataset(local), open_dataset(remote)
        assert a.ids() == b.ids() and a.skipped().to_pylist() == b.skipped().to_pylist()
        np.testing.assert_allclose(a.embeddings(), b.embeddings(), rtol=1e-5, atol=1e-6)
        assert [s.__dict__ for s in a.manifest.shards] == [s.__dict__ for s in b.manifest.shards]
        # resume: a shard lost is written again, the others kept
        (remote / "shards" / "part-00002.parquet").unlink()
        summary = embed_dataset([root], remote, model=model_file, shard_size=4, batch_size=3, engine="ray")
        assert (summary.shards_written, summary.shards_kept) == (1, 3)
        assert open_dataset(remote).ids() == a.ids()
    finally:
        ray.shutdown()


def test_queries_are_embedded_like_the_rows(model_file, tmp_path):
    root = _folder(tmp_path / "imgs", 4, bad=0)
    out = tmp_path / "ds"
    embed_dataset([root], out, model=model_file, normalize=True)
    ds = open_dataset(out)
    first = sorted(root.glob("*.png"))[0]
    q = ds.embed_queries(images=[first])
    assert torch.allclose(q[0], torch.from_numpy(ds.embeddings()[ds.ids().index(first.name)]), atol=1e-6)
    assert ds.embed_queries(texts=["a red square"]).shape == (1, 16)
    os.utime(model_file, None)  # touching the weights does not change their hash
    assert ds.embed_queries(texts=["x"]).shape == (1, 16)


def test_loader_processes_do_not_hang_after_the_parent_used_its_thread_pool(tmp_path):
    """A process forked while torch's thread pool is warm hangs in its first parallel op unless it runs one
    thread; big images make the transform parallel. In a subprocess, so a hang fails instead of blocking."""
    script = f"""
import numpy as np, torch
from PIL import Image
from perception_encoder.embedding import ImageLoader, embed_files, stack_images
from perception_encoder.transforms import image_transform
torch.set_num_threads(2)
torch.ones(2000, 2000) @ torch.ones(2000, 2000)  # the parent's pool has run
paths = []
for i in range(6):
    paths.append("{tmp_path}/big%d.png" % i)
    Image.fromarray(np.full((900, 1200, 3), i * 20, np.uint8)).save(paths[-1])
out = embed_files(paths, ImageLoader(image_transform(448)), stack_images(lambda x: x.mean(dim=(2, 3))),
                  batch_size=2, num_workers=2)
assert out.values.shape == (6, 3), out
print("ok")
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "ok" in done.stdout, done.stderr


def test_inputs_removed_from_the_end_are_refused(model_file, tmp_path):
    root = _folder(tmp_path / "imgs", 9, bad=0)
    out = tmp_path / "ds"
    embed_dataset([root], out, model=model_file, shard_size=4)  # shards of 4, 4, 1 inputs
    assert open_dataset(out).ids()[-1] == "sub/img0008.png"
    (root / "sub" / "img0008.png").unlink()  # the last shard's only input: shards 0 and 1 still match
    with pytest.raises(DatasetError, match=r"shard\(s\) 2 hold inputs that are gone"):
        embed_dataset([root], out, model=model_file, shard_size=4)
