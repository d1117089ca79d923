"""The inputs side of dataset jobs: listing folders, files, globs, WebDataset tars and tables as InputItems
(streaming, deterministic), fetching URLs, and loading every kind of item into pixels."""

from __future__ import annotations

import csv
import http.server
import io
import itertools
import os
import pickle
import socket
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import tracemalloc
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import folder_chain_past_path_max
from perception_encoder.datasets import fetch as fetch_module
from perception_encoder.datasets import loading as loading_module
from perception_encoder.datasets import sources as sources_module
from perception_encoder.datasets.fetch import FetchError, fetch_url
from perception_encoder.datasets.items import InputItem
from perception_encoder.datasets.loading import ItemLoader, ItemLoadError
from perception_encoder.datasets.sources import iter_braces, iter_glob, iter_inputs, metadata_schema
from perception_encoder.errors import PEError
from perception_encoder.input_files import find_files
from perception_encoder.transforms import image_transform

SIZE = 16


def png_bytes(color=(255, 0, 0), size=(8, 6), fmt="PNG") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format=fmt)
    return buf.getvalue()


def write(path: Path, data: bytes = b"") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def write_tar(path: Path, members: list[tuple[str, bytes]]) -> Path:
    """A tar with these members in this order (WebDataset groups consecutive members by key)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def items_of(inputs, **kwargs) -> list[InputItem]:
    return list(iter_inputs([str(i) for i in inputs], **kwargs))


def summary(items: list[InputItem]) -> list[tuple]:
    return [(it.position, it.kind, it.id, it.source) for it in items]


# --- folders ------------------------------------------------------------------------------------------------


def test_folder_is_walked_depth_first_sorted_with_relative_ids_and_hidden_names_skipped(tmp_path):
    root = tmp_path / "imgs"
    for name in ["b.png", "a/z.jpg", "a/y/x.webp", "B.PNG", "c.txt", ".hidden.png", ".dot/d.png", "a.png"]:
        write(root / name, png_bytes())
    write(root / "clip.mp4")
    items = items_of([root])
    assert [it.id for it in items] == ["B.PNG", "a/y/x.webp", "a/z.jpg", "a.png", "b.png", "clip.mp4"]
    assert [it.position for it in items] == list(range(6))
    assert all(it.kind == "file" and it.source == str(root) for it in items)
    assert [Path(it.ref) for it in items] == [root / it.id for it in items]
    # the same order as the library's in-memory folder listing
    listed = find_files(root, {".png", ".jpg", ".webp", ".mp4"})
    assert [Path(it.ref) for it in items] == listed
    # videos only when asked for
    assert [it.id for it in items_of([root], videos=False)] == [it.id for it in items[:-1]]


def test_folder_symlink_loops_are_cut_and_linked_folders_walked_once(tmp_path):
    root = tmp_path / "root"
    write(root / "sub" / "a.png", png_bytes())
    os.symlink("..", root / "sub" / "up")  # a loop
    os.symlink(root / "sub", root / "zlink")  # the same folder a second time
    ids = [it.id for it in items_of([root])]
    assert ids == ["sub/a.png"]


def test_a_sub_folder_that_cannot_be_listed_is_one_bad_item_and_the_walk_goes_on(tmp_path):
    root = tmp_path / "root"
    write(root / "a.png", png_bytes())
    write(root / "z.png", png_bytes())
    folder_chain_past_path_max(root)
    items = items_of([root])
    assert [it.kind for it in items] == ["file", "bad", "file"]
    assert items[0].id == "a.png" and items[2].id == "z.png"
    bad = items[1]
    assert bad.id.startswith("d" * 200 + "/") and bad.source == str(root) and bad.position == 1
    assert "cannot list the folder" in bad.problem and "File name too long" in bad.problem


def test_a_folder_of_many_sub_folders_is_listed_lazily(tmp_path, monkeypatch):
    root = tmp_path / "root"
    for i in range(50):
        write(root / f"{i:02d}" / "a.png", png_bytes())
    calls = []
    real = os.scandir
    monkeypatch.setattr(sources_module.os, "scandir", lambda p: calls.append(p) or real(p))
    first = next(iter_inputs([str(root)]))
    assert first.id == "00/a.png"
    assert len(calls) == 2  # the root and its first sub-folder, not the 49 others


# --- files, names, globs, braces ----------------------------------------------------------------------------


def test_files_are_taken_whatever_their_extension_and_missing_names_are_bad_items(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "notes.txt", b"not an image")
    write(tmp_path / "img.png", png_bytes())
    items = items_of(["notes.txt", "missing.png", "img.png"])
    assert summary(items) == [
        (0, "file", "notes.txt", "notes.txt"),
        (1, "bad", "missing.png", "missing.png"),
        (2, "file", "img.png", "img.png"),
    ]
    assert items[0].ref == "notes.txt"
    assert "no such file, folder or table" in items[1].problem
    assert summary(list(iter_inputs("img.png"))) == [(0, "file", "img.png", "img.png")]  # one name alone


def test_globs_match_sorted_each_match_handled_as_if_named(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ["d/b.png", "d/a.png", "d/.h.png", "d/c.jpg", "d/sub/e.png"]:
        write(tmp_path / name, png_bytes())
    write_tar(tmp_path / "s" / "x-1.tar", [("k1.png", png_bytes())])
    write_tar(tmp_path / "s" / "x-0.tar", [("k0.png", png_bytes())])
    items = items_of(["d/*.png", "s/*.tar", "d/*", "nothing-*.png"])
    assert summary(items) == [
        (0, "file", "d/a.png", "d/a.png"),
        (1, "file", "d/b.png", "d/b.png"),
        (2, "member", "k0", "s/x-0.tar"),
        (3, "member", "k1", "s/x-1.tar"),
        (4, "file", "d/a.png", "d/a.png"),
        (5, "file", "d/b.png", "d/b.png"),
        (6, "file", "d/c.jpg", "d/c.jpg"),
        (7, "file", "e.png", "d/sub"),  # a folder matched is walked
        (8, "bad", "nothing-*.png", "nothing-*.png"),
    ]
    assert "no file matches" in items[8].problem
    assert list(iter_glob(str(tmp_path / "d" / "[ab].png"))) == [
        str(tmp_path / "d" / n) for n in ("a.png", "b.png")
    ]


def test_brace_patterns_expand_lazily_with_zero_padding():
    assert list(iter_braces("s-{0008..0011}.tar")) == [f"s-{i:04d}.tar" for i in range(8, 12)]
    assert list(iter_braces("s-{8..10}.tar")) == ["s-8.tar", "s-9.tar", "s-10.tar"]
    assert list(iter_braces("{2..0}")) == ["2", "1", "0"]
    assert list(iter_braces("a{0..1}/b{00..01}")) == ["a0/b00", "a0/b01", "a1/b00", "a1/b01"]
    assert next(iter_braces("x-{000000000..999999999}.tar")) == "x-000000000.tar"  # never a list
    assert list(iter_braces("plain.tar")) == ["plain.tar"]


# --- WebDataset tars ----------------------------------------------------------------------------------------


def test_tar_samples_are_grouped_by_key_with_text_members_as_metadata(tmp_path):
    img1, img2, img4 = png_bytes((1, 2, 3)), png_bytes((4, 5, 6)), png_bytes((7, 8, 9))
    tar = write_tar(
        tmp_path / "shard.tar",
        [
            ("set.v1/0001.jpg", img1),
            ("set.v1/0001.txt", "un chat noir \u00e9".encode()),
            ("set.v1/0001.json", b'{"w": 8}'),
            ("set.v1/0002.png", img2),
            ("set.v1/0002.cls", b"7"),
            ("set.v1/0002.caption", b"bad \xff byte"),
            ("0003.txt", b"no image here"),
            ("0004.webp", b"webp bytes"),
            ("0004.PNG", img4),
            ("0004.seg.png", b"a mask"),
            ("README", b"no extension: skipped"),
            ("._0005.png", b"hidden: skipped"),
        ],
    )
    items = items_of([tar])
    assert summary(items) == [
        (0, "member", "set.v1/0001", str(tar)),
        (1, "member", "set.v1/0002", str(tar)),
        (2, "bad", "0003", str(tar)),
        (3, "member", "0004", str(tar)),
    ]
    first, second, bad, fourth = items
    assert first.name == "set.v1/0001.jpg" and first.ref == str(tar)
    assert dict(first.metadata) == {
        "txt": "un chat noir \u00e9",
        "json": '{"w": 8}',
        "cls": None,
        "caption": None,
    }
    assert dict(second.metadata) == {"txt": None, "json": None, "cls": "7", "caption": "bad \ufffd byte"}
    assert [n for n, _ in first.metadata] == ["txt", "json", "cls", "caption"]
    assert "no image member" in bad.problem and "txt" in bad.problem
    assert fourth.name == "0004.PNG"  # png is preferred over webp; the extension's case is ignored
    with open(tar, "rb") as f:
        for item, data in [(first, img1), (second, img2), (fourth, img4)]:
            f.seek(item.offset)
            assert item.size == len(data) and f.read(item.size) == data


def test_tar_brace_patterns_and_separate_shards(tmp_path):
    for i in (0, 2, 3):
        write_tar(
            tmp_path / f"shards-{i:04d}.tar", [(f"s{i}-a.png", png_bytes()), (f"s{i}-b.png", png_bytes())]
        )
    items = items_of([f"{tmp_path}/shards-{{0000..0002}}.tar", tmp_path / "shards-0003.tar"])
    assert [(it.kind, it.id, Path(it.source).name) for it in items] == [
        ("member", "s0-a", "shards-0000.tar"),
        ("member", "s0-b", "shards-0000.tar"),
        ("bad", str(tmp_path / "shards-0001.tar"), "shards-0001.tar"),
        ("member", "s2-a", "shards-0002.tar"),
        ("member", "s2-b", "shards-0002.tar"),
        ("member", "s3-a", "shards-0003.tar"),
        ("member", "s3-b", "shards-0003.tar"),
    ]
    assert [it.position for it in items] == list(range(7))


def test_a_tar_that_cannot_be_read_is_one_bad_item_naming_it(tmp_path):
    garbage = write(tmp_path / "garbage.tar", os.urandom(3000))
    empty = write(tmp_path / "empty.tar", b"")
    items = items_of([garbage, empty, tmp_path / "folder.tar"])
    assert [it.kind for it in items] == ["bad", "bad", "bad"]
    assert str(garbage) in items[0].problem and items[0].id == str(garbage)
    assert str(empty) in items[1].problem


def test_a_damaged_tar_keeps_the_samples_before_the_damage_and_says_where(tmp_path):
    members = [(f"{i:03d}.png", png_bytes((i, i, i))) for i in range(4)]
    whole = write_tar(tmp_path / "whole.tar", members)
    data = whole.read_bytes()
    # a truncated shard: cut inside the third member's data
    with tarfile.open(whole) as tf:
        third = tf.getmember("002.png")
    cut = write(tmp_path / "cut.tar", data[: third.offset_data + 10])
    items = items_of([cut])
    assert [(it.kind, it.id) for it in items] == [
        ("member", "000"),
        ("member", "001"),
        ("bad", "002"),
        ("bad", str(cut)),
    ]
    assert "cut short" in items[2].problem
    assert "cannot read tar" in items[3].problem and str(cut) in items[3].problem
    # a header overwritten with garbage: tarfile stops quietly there; the listing says so
    broken = bytearray(data)
    broken[third.offset : third.offset + 512] = os.urandom(512)
    bad_header = write(tmp_path / "bad-header.tar", bytes(broken))
    items = items_of([bad_header])
    assert [(it.kind, it.id) for it in items] == [
        ("member", "000"),
        ("member", "001"),
        ("bad", str(bad_header)),
    ]
    assert "invalid member header" in items[2].problem


@pytest.mark.skipif(not Path("/proc/self/io").exists(), reason="needs Linux /proc/self/io read counters")
def test_tar_listing_reads_headers_not_member_data(tmp_path):
    big = np.random.default_rng(0).integers(0, 256, 32 << 20, dtype=np.uint8).tobytes()
    tar = write_tar(tmp_path / "big.tar", [("a.png", big), ("a.txt", b"caption"), ("b.png", big)])

    def read_bytes() -> int:
        return int(dict(line.split(": ") for line in Path("/proc/self/io").read_text().splitlines())["rchar"])

    before = read_bytes()
    items = items_of([tar])
    assert [it.id for it in items] == ["a", "b"] and items[0].metadata[0] == ("txt", "caption")
    assert read_bytes() - before < 4 << 20  # 64 MiB of member data, not read


# --- tables ----------------------------------------------------------------------------------------------


def write_csv(path: Path, rows: list[list[str]], delimiter: str = ",") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        csv.writer(f, delimiter=delimiter).writerows(rows)
    return path


def test_csv_rows_give_paths_urls_and_bad_cells_with_metadata(tmp_path):
    write(tmp_path / "data" / "img" / "a.png", png_bytes())
    table = write_csv(
        tmp_path / "data" / "t.csv",
        [
            ["caption", "Path", "score"],
            ["first", "img/a.png", "1"],
            ["second", str(tmp_path / "abs.png"), "2"],
            ["third", "https://example.com/x.jpg?sig=1", "3"],
            ["fourth", "", "4"],
            ["fifth", "ftp://example.com/y.png", "5"],
            ["short"],
        ],
    )
    items = items_of([table])
    assert [(it.kind, it.id) for it in items] == [
        ("file", "0"),
        ("file", "1"),
        ("url", "2"),
        ("bad", "3"),
        ("bad", "4"),
        ("bad", "5"),
    ]
    assert items[0].ref == str(tmp_path / "data" / "img" / "a.png")  # relative to the table's folder
    assert items[1].ref == str(tmp_path / "abs.png")
    assert items[2].ref == "https://example.com/x.jpg?sig=1"
    assert "empty" in items[3].problem and str(table) in items[3].problem and "row 3" in items[3].problem
    assert "only http and https" in items[4].problem
    assert all(it.source == str(table) for it in items)
    assert dict(items[0].metadata) == {"caption": "first", "score": "1"}
    assert dict(items[5].metadata) == {"caption": "short", "score": None}
    assert str(metadata_schema([table])) == "caption: string\nscore: string"


def test_tsv_and_id_columns(tmp_path):
    write(tmp_path / "a.png", png_bytes())
    tsv = write_csv(
        tmp_path / "t.tsv", [["KEY", "file", "note"], ["k1", "a.png", "x,y"], ["", "a.png", "z"]], "\t"
    )
    items = items_of([tsv])
    assert [(it.kind, it.id) for it in items] == [("file", "k1"), ("bad", "1")]
    assert "id cell is empty" in items[1].problem
    assert dict(items[0].metadata) == {"note": "x,y"}
    named = items_of([tsv], id_column="note", image_column="FILE")
    assert [it.id for it in named] == ["x,y", "z"] and dict(named[0].metadata) == {"KEY": "k1"}


def test_a_table_without_an_image_column_is_a_value_error_before_any_item(tmp_path):
    write(tmp_path / "imgs" / "a.png", png_bytes())
    table = write_csv(tmp_path / "t.csv", [["caption", "label"], ["x", "y"]])
    with pytest.raises(ValueError, match="t.csv.*no image column.*'caption', 'label'"):
        iter_inputs([str(tmp_path / "imgs"), str(table)])  # raised by the call, not at the table's turn
    with pytest.raises(ValueError, match="no image column 'picture'"):
        iter_inputs([str(table)], image_column="picture")
    with pytest.raises(ValueError, match="no id column 'uid'"):
        metadata_schema([str(write_csv(tmp_path / "u.csv", [["path"], ["a.png"]]))], id_column="uid")


def test_parquet_tables_bytes_hf_image_structs_ids_and_metadata_types(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    red, blue = png_bytes((255, 0, 0)), png_bytes((0, 0, 255))
    write(tmp_path / "pics" / "p.png", blue)
    hf = pa.table(
        {
            "image": pa.array(
                [
                    {"bytes": red, "path": "r.png"},
                    {"bytes": None, "path": "pics/p.png"},
                    {"bytes": None, "path": None},
                ],
                pa.struct([("bytes", pa.binary()), ("path", pa.string())]),
            ),
            "label": pa.array([3, 1, 4], pa.int64()),
            "tags": pa.array([["a"], [], None], pa.list_(pa.string())),
            "key": ["x", "y", "z"],
            "source": ["web", "cam", "web"],  # a row column's name: carried as meta_source
        }
    )
    pq.write_table(hf, tmp_path / "hf.parquet")
    raw = pa.table({"image.bytes": [blue], "label": ["seven"]})
    pq.write_table(raw, tmp_path / "raw.parquet")
    items = items_of([tmp_path / "hf.parquet", tmp_path / "raw.parquet"])
    assert [(it.kind, it.id) for it in items] == [("bytes", "x"), ("file", "y"), ("bad", "z"), ("bytes", "0")]
    assert items[0].data == red and items[3].data == blue
    assert items[1].ref == str(tmp_path / "pics" / "p.png")
    assert "empty" in items[2].problem
    schema = metadata_schema([str(tmp_path / "hf.parquet"), str(tmp_path / "raw.parquet")])
    assert schema.names == ["label", "tags", "meta_source"]
    assert schema.field("label").type == pa.string()  # int64 in one table, string in the other
    assert schema.field("tags").type == pa.list_(pa.string())
    assert dict(items[0].metadata) == {"label": "3", "tags": ["a"], "meta_source": "web"}
    assert dict(items[3].metadata) == {"label": "seven", "tags": None, "meta_source": None}
    # the items' metadata fit the schema as they are
    pa.table(
        {n: pa.array([dict(it.metadata)[n] for it in items], schema.field(n).type) for n in schema.names}
    )
    alone = metadata_schema([str(tmp_path / "hf.parquet")])
    assert alone.field("label").type == pa.int64()
    assert dict(items_of([tmp_path / "hf.parquet"])[0].metadata)["label"] == 3


def test_metadata_schema_merges_tables_and_tars_in_first_seen_order(tmp_path):
    pytest.importorskip("pyarrow")
    tar = write_tar(tmp_path / "s.tar", [("a.png", png_bytes()), ("a.txt", b"hello")])
    table = write_csv(tmp_path / "t.csv", [["url", "caption", "extra"], ["http://h/a.png", "c", "e"]])
    assert metadata_schema([str(tmp_path)]).names == []  # a folder has no metadata
    assert metadata_schema([str(table), str(tar)]).names == ["caption", "extra", "txt", "json", "cls"]
    items = items_of([tar, table])
    assert [n for n, _ in items[0].metadata] == ["txt", "json", "cls", "caption", "extra"]
    assert dict(items[0].metadata) == {
        "txt": "hello",
        "json": None,
        "cls": None,
        "caption": None,
        "extra": None,
    }
    assert dict(items[1].metadata) == {"txt": None, "json": None, "cls": None, "caption": "c", "extra": "e"}


def test_a_big_parquet_table_is_read_lazily(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    n = 200_000
    table = pa.table(
        {
            "path": [f"images/{i:07d}.jpg" for i in range(n)],
            "caption": [f"a photograph, number {i}, of something somewhere" for i in range(n)],
        }
    )
    path = tmp_path / "big.parquet"
    pq.write_table(table, path, row_group_size=10_000)
    size = table.nbytes
    del table
    arrow_before = pa.total_allocated_bytes()
    tracemalloc.start()
    try:
        start = time.perf_counter()
        it = iter_inputs([str(path)])
        first = list(itertools.islice(it, 5))
        elapsed = time.perf_counter() - start
        _, peak = tracemalloc.get_traced_memory()
        arrow_held = pa.total_allocated_bytes() - arrow_before
    finally:
        tracemalloc.stop()
    assert [i.ref for i in first] == [str(tmp_path / f"images/{i:07d}.jpg") for i in range(5)]
    assert elapsed < 2.0
    assert peak < size / 20, (peak, size)  # Python objects of a batch, not of the table
    assert arrow_held < size / 4, (arrow_held, size)  # about one row group, not the table
    it.close()


def test_the_same_inputs_give_the_same_items_every_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ["f/b.png", "f/a/c.png", "f/a.jpg", "g/x.png"]:
        write(tmp_path / name, png_bytes())
    write_tar(tmp_path / "s-0.tar", [("k.png", png_bytes()), ("k.txt", b"t")])
    write_csv(tmp_path / "t.csv", [["path", "caption"], ["f/b.png", "c"], ["", "d"]])
    inputs = ["f", "g/*.png", "s-{0..1}.tar", "t.csv", "nope"]
    one, two = items_of(inputs), items_of(inputs)
    assert one == two
    assert [it.position for it in one] == list(range(len(one))) and len(one) == 9


def test_folders_files_and_tars_need_no_pyarrow(tmp_path):
    write(tmp_path / "f" / "a.png", png_bytes())
    write_tar(tmp_path / "s.tar", [("k.png", png_bytes()), ("k.txt", b"t")])
    code = (
        "import sys; sys.modules['pyarrow'] = None\n"
        "from perception_encoder.datasets.sources import iter_inputs\n"
        f"items = list(iter_inputs([{str(tmp_path / 'f')!r}, {str(tmp_path / 's.tar')!r}]))\n"
        "print([(i.kind, i.id) for i in items])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[('file', 'a.png'), ('member', 'k')]"


# --- fetch_url ---------------------------------------------------------------------------------------------


IMAGE = png_bytes((10, 200, 30), (12, 10))


class _Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args) -> None:  # keep test output quiet
        pass

    def _send(self, code: int, body: bytes = b"", headers: dict | None = None) -> None:
        self.send_response(code)
        for k, v in (headers or {"Content-Length": str(len(body))}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        server = self.server
        path = self.path.split("?")[0]
        server.hits[path] = server.hits.get(path, 0) + 1
        hits = server.hits[path]
        if path == "/img.png" or unquote(path) == "/a photo \u00e9t\u00e9.png":
            self._send(200, IMAGE)
        elif path == "/clip.mp4":
            self._send(200, server.video)
        elif path == "/missing.png":
            self._send(404, b"not here")
        elif path == "/flaky.png":
            self._send(503 if hits == 1 else 200, b"busy" if hits == 1 else IMAGE)
        elif path == "/busy.png":
            self._send(429 if hits == 1 else 200, b"slow down" if hits == 1 else IMAGE)
        elif path == "/down.png":
            self._send(503, b"down")
        elif path == "/slow.png":
            time.sleep(1.5)
            self._send(200, IMAGE)
        elif path == "/big.png":
            self._send(200, b"x" * 5000)
        elif path == "/big-unsized.png":
            self.close_connection = True  # HTTP/1.0: the body ends when the connection closes
            self._send(200, b"x" * 5000, headers={"Content-Type": "image/png"})
        elif path == "/to-file":
            self._send(302, headers={"Location": "file:///etc/passwd", "Content-Length": "0"})
        elif path == "/to-ftp":
            self._send(302, headers={"Location": "ftp://127.0.0.1/x.png", "Content-Length": "0"})
        else:
            self._send(404)


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        pass  # a client that gave up (the timeout and size tests) breaks the pipe: expected here


@pytest.fixture
def server(monkeypatch):
    monkeypatch.setattr(fetch_module, "BACKOFF_SECONDS", 0.01)
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    httpd = _Server(("127.0.0.1", 0), _Handler)
    httpd.hits = {}
    httpd.video = b""
    httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def test_fetch_url_gets_the_body(server):
    assert fetch_url(server.url + "/img.png") == IMAGE
    assert server.hits["/img.png"] == 1
    # as typed in a table: a space and accents are sent percent-encoded, the fragment is not sent
    assert fetch_url(server.url + "/a photo \u00e9t\u00e9.png#top") == IMAGE


def test_fetch_url_does_not_retry_a_404(server):
    with pytest.raises(FetchError, match=r"/missing\.png: HTTP 404") as e:
        fetch_url(server.url + "/missing.png", retries=3)
    assert isinstance(e.value, PEError) and isinstance(e.value, OSError)
    assert server.hits["/missing.png"] == 1


def test_fetch_url_retries_5xx_and_429(server):
    assert fetch_url(server.url + "/flaky.png", retries=2) == IMAGE
    assert server.hits["/flaky.png"] == 2
    assert fetch_url(server.url + "/busy.png", retries=1) == IMAGE
    with pytest.raises(FetchError, match=r"/down\.png: HTTP 503 .*after 3 attempts"):
        fetch_url(server.url + "/down.png", retries=2)
    assert server.hits["/down.png"] == 3


def test_fetch_url_backs_off_exponentially(server, monkeypatch):
    waits = []
    monkeypatch.setattr(fetch_module, "BACKOFF_SECONDS", 0.5)
    monkeypatch.setattr(fetch_module.time, "sleep", waits.append)
    with pytest.raises(FetchError):
        fetch_url(server.url + "/down.png", retries=3)
    assert waits == [0.5, 1.0, 2.0]


def test_fetch_url_times_out_each_attempt(server):
    start = time.monotonic()
    with pytest.raises(FetchError, match=r"/slow\.png: timed out after 0.2 s \(after 2 attempts\)"):
        fetch_url(server.url + "/slow.png", timeout=0.2, retries=1)
    assert time.monotonic() - start < 1.4
    assert server.hits["/slow.png"] == 2


def test_fetch_url_refuses_bodies_over_the_limit(server):
    with pytest.raises(FetchError, match=r"/big\.png: it is too large \(5,000 bytes; the limit is 1,000\)"):
        fetch_url(server.url + "/big.png", max_bytes=1000)
    with pytest.raises(FetchError, match=r"big-unsized\.png: it is too large \(over 1,000 bytes\)"):
        fetch_url(server.url + "/big-unsized.png", max_bytes=1000)
    assert server.hits["/big.png"] == 1 and server.hits["/big-unsized.png"] == 1  # not retried
    assert fetch_url(server.url + "/big.png", max_bytes=5000) == b"x" * 5000


def test_fetch_url_refuses_other_schemes_and_redirects_to_them(server):
    for url in ["ftp://example.com/a.png", "file:///etc/passwd", "/etc/passwd", "data:,hello"]:
        with pytest.raises(FetchError, match="only http and https"):
            fetch_url(url)
    with pytest.raises(FetchError, match="/to-file: HTTP 302"):
        fetch_url(server.url + "/to-file")
    with pytest.raises(
        FetchError, match=r"/to-ftp: it redirects to ftp://127\.0\.0\.1/x\.png, which is not http"
    ):
        fetch_url(server.url + "/to-ftp")  # urllib itself would follow this one
    assert server.hits["/to-file"] == 1 and server.hits["/to-ftp"] == 1


def test_fetch_url_retries_refused_connections(monkeypatch):
    monkeypatch.setattr(fetch_module, "BACKOFF_SECONDS", 0.01)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    with pytest.raises(FetchError, match=rf"127\.0\.0\.1:{port}/a\.png: cannot connect.*after 2 attempts"):
        fetch_url(f"http://127.0.0.1:{port}/a.png", retries=1)


# --- ItemLoader --------------------------------------------------------------------------------------------


def roundtrip(loader: ItemLoader) -> ItemLoader:
    return pickle.loads(pickle.dumps(loader))


def expected(data: bytes) -> torch.Tensor:
    return image_transform(SIZE)(Image.open(io.BytesIO(data)))


def item(kind, **kw) -> InputItem:
    return InputItem(kw.pop("position", 0), kw.pop("id", "x"), kw.pop("source", "src"), kind, **kw)


def test_item_loader_loads_files_members_bytes_and_urls(tmp_path, server):
    loader = roundtrip(ItemLoader(image_transform(SIZE), num_frames=4, fetch_timeout=5, fetch_retries=1))
    red, green, blue = png_bytes((255, 0, 0)), png_bytes((0, 255, 0), fmt="JPEG"), png_bytes((0, 0, 255))
    write(tmp_path / "f" / "a.png", red)
    tar = write_tar(tmp_path / "s.tar", [("k.txt", b"caption"), ("k.jpg", green)])
    table = write_csv(tmp_path / "t.csv", [["path"], ["f/a.png"], [server.url + "/img.png"]])
    items = items_of([tmp_path / "f", tar, table])
    got = [loader(it) for it in items]
    assert all(g.shape == (3, SIZE, SIZE) and g.dtype == torch.float32 for g in got)
    for g, data in zip(got, [red, green, red, IMAGE], strict=True):
        torch.testing.assert_close(g, expected(data), rtol=0, atol=0)
    torch.testing.assert_close(loader(item("bytes", data=blue)), expected(blue), rtol=0, atol=0)


def test_item_loader_errors_name_the_item_and_the_reason(tmp_path, server, monkeypatch):
    loader = roundtrip(ItemLoader(image_transform(SIZE), fetch_retries=0))
    bad = item("bad", id="sub/dir", source="root", problem="cannot list the folder root/sub/dir: denied")
    with pytest.raises(ItemLoadError, match=r"cannot load 'sub/dir' from root: cannot list the folder"):
        loader(bad)
    with pytest.raises(ItemLoadError, match=r"'3' from t.csv: .*not a recognised image format"):
        loader(item("bytes", id="3", source="t.csv", data=b"not an image"))
    with pytest.raises(ItemLoadError, match=r"'7' from t.csv: cannot fetch .*/missing.png: HTTP 404"):
        loader(item("url", id="7", source="t.csv", ref=server.url + "/missing.png"))
    tar = write_tar(tmp_path / "s.tar", [("k.png", b"corrupt")])
    (member,) = items_of([tar])
    with pytest.raises(ItemLoadError, match=rf"sample 'k' of {tar}: .*not a recognised image format") as e:
        loader(member)
    assert isinstance(e.value, PEError) and isinstance(e.value, ValueError)
    # a member is never read past its size, nor when the tar no longer holds it
    short = item("member", id="k", source=str(tar), ref=str(tar), name="k.png", offset=512, size=10**6)
    with pytest.raises(ItemLoadError, match="cut short"):
        loader(short)
    monkeypatch.setattr(loading_module, "MAX_IMAGE_FILE_BYTES", 4)
    with pytest.raises(ItemLoadError, match=r"member k.png is too large \(7 bytes; the limit is 4\)"):
        loader(member)


def write_video(path: Path, frames: int = 6, size: int = 32) -> Path:
    av = pytest.importorskip("av")
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = size, size, "yuv420p"
        for i in range(frames):
            frame = np.zeros((size, size, 3), np.uint8)
            frame[:, : 2 + 4 * i] = 200
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def test_item_loader_loads_videos_from_files_members_and_urls(tmp_path, server, monkeypatch):
    video = write_video(tmp_path / "clip.mp4")
    from perception_encoder.embedding.video import VideoLoader

    want = VideoLoader(image_transform(SIZE), num_frames=4)(video)
    assert want.shape == (4, 3, SIZE, SIZE)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))  # where VideoLoader.load_bytes writes
    server.video = video.read_bytes()
    tar = write_tar(
        tmp_path / "v.tar", [("v1.mp4", video.read_bytes()), ("v1.txt", b"a clip"), ("v2.txt", b"")]
    )
    members = items_of([tar])
    assert [(m.kind, m.id, m.name) for m in members[:1]] == [("member", "v1", "v1.mp4")]
    assert items_of([tar], videos=False)[0].kind == "bad"  # no image member
    loader = roundtrip(ItemLoader(image_transform(SIZE), num_frames=4))
    for it in [
        item("file", ref=str(video)),
        members[0],
        item("url", ref=server.url + "/clip.mp4?token=1"),
    ]:
        torch.testing.assert_close(loader(it), want, rtol=0, atol=0)
    assert list(scratch.iterdir()) == []  # temporary files removed
    broken = write_tar(tmp_path / "b.tar", [("v.mp4", b"not a video at all")])
    with pytest.raises(ItemLoadError, match=r"sample 'v' of .*b\.tar: .*v\.mp4") as e:
        loader(items_of([broken])[0])
    assert "pe-video-" not in str(e.value)
    assert list(scratch.iterdir()) == []
