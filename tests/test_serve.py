"""pe serve: a real uvicorn server on 127.0.0.1 (in a thread, or a subprocess for SIGTERM), requests through
sockets. Outputs equal the library's for the same input; concurrent requests share a batch; a full queue
answers 429; every bad request is a 4xx naming what is wrong and the server stays ready; API keys; the
URL policy; SIGTERM drains; search and thumbnails over an indexed dataset; the onnxruntime backend."""

from __future__ import annotations

import http.client
import http.server
import io
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("prometheus_client")

from PIL import Image  # noqa: E402

import perception_encoder as pe  # noqa: E402
from conftest import randomize, tiny_clip_config  # noqa: E402
from perception_encoder.embedding import FeatureSpec, embed_paths, embed_texts  # noqa: E402
from perception_encoder.serve import Backend, ServeConfig, Service, create_app  # noqa: E402
from perception_encoder.transforms import image_transform  # noqa: E402
from serve_helpers import Running, b64, data_uri, floats, png_bytes  # noqa: E402

SIZE = 32  # the tiny model's input size
LIMITS = dict(max_items=8, max_body_bytes=1 << 20, max_image_pixels=100_000, max_text_chars=1000)


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    from perception_encoder.clip import CLIP
    from perception_encoder.factory import save

    folder = tmp_path_factory.mktemp("serve-model")
    return Path(save(randomize(CLIP(tiny_clip_config()), seed=5), folder / "tiny.safetensors"))


@pytest.fixture(scope="module")
def model(model_file):
    return pe.load(str(model_file))


def make_app(model, search=None, **config):
    return create_app(Service(Backend.from_torch(model, "tiny"), ServeConfig(**config), search=search))


@pytest.fixture(scope="module")
def server(model):
    with Running(make_app(model, **LIMITS)) as running:
        yield running


def library_image_embeddings(model, images: list[bytes]) -> torch.Tensor:
    tf = image_transform(SIZE)
    with torch.no_grad():
        return F.normalize(model.encode_image(torch.stack([tf(b) for b in images])), dim=-1)


def close(a, b, tol: float = 1e-5) -> None:
    np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(b, np.float64), rtol=tol, atol=tol)


# --- outputs equal the library's --------------------------------------------------------------------------


def test_text_embeddings_equal_the_library_and_say_what_was_truncated(server, model):
    texts = ["a photo of a cat", "word " * 40]
    reply = server.post("/v1/embeddings", {"input": texts, "model": "tiny"})
    assert reply.status == 200, reply.body
    out = reply.json
    assert out["object"] == "list" and out["model"] == "tiny" and out["modality"] == "text"
    assert [d["index"] for d in out["data"]] == [0, 1] and all(
        d["object"] == "embedding" for d in out["data"]
    )
    want = embed_texts(model, texts, normalize=True)
    close([d["embedding"] for d in out["data"]], want)
    assert [d["truncated"] for d in out["data"]] == [False, True]
    assert "input[1]" in out["warnings"][0] and "16 tokens" in out["warnings"][0]
    tok = pe.tokenizer(16)
    tokens = len(tok.encode(texts[0])) + 2 + 16  # SOT + words + EOT, and a full context for the cut one
    assert out["usage"] == {"prompt_tokens": tokens, "total_tokens": tokens}
    # one string; OpenAI's base64: little-endian float32
    one = server.post("/v1/embeddings", {"input": texts[0], "encoding_format": "base64"}).json
    close(floats(one["data"][0]["embedding"]), want[0])
    assert "warnings" not in one


def test_image_embeddings_equal_the_library(server, model, tmp_path):
    images = [png_bytes(40, 30, "RGB"), png_bytes(20, 50, "RGBA", 1), png_bytes(33, 33, "L", 2)]
    wrapped = "\n".join(
        b64(images[1])[i : i + 76] for i in range(0, len(b64(images[1])), 76)
    )  # as `base64` wraps
    items = [data_uri(images[0]), wrapped, data_uri(images[2], "image/x-anything")]
    reply = server.post("/v1/embeddings", {"input": items, "modality": "image"})
    assert reply.status == 200, reply.body
    got = [d["embedding"] for d in reply.json["data"]]
    close(got, library_image_embeddings(model, images))
    files = []
    for i, data in enumerate(images):
        files.append(tmp_path / f"img{i}.png")
        files[-1].write_bytes(data)
    close(got, embed_paths(model, files, normalize=True).embeddings)  # pe embed --normalize
    assert reply.json["usage"]["prompt_tokens"] == 0 and "truncated" not in reply.json["data"][0]


def write_video(path: Path, frames: int = 12, size: int = 48) -> Path:
    av = pytest.importorskip("av")
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = size, size, "yuv420p"
        for i in range(frames):
            frame = np.zeros((size, size, 3), np.uint8)
            frame[:, : 2 + 3 * i] = (200, 40 + 10 * i, 90)
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def test_video_embeddings_equal_the_library(server, model, tmp_path):
    video = write_video(tmp_path / "clip.mp4")
    reply = server.post(
        "/v1/embeddings", {"input": [data_uri(video.read_bytes(), "video/mp4")], "modality": "video"}
    )
    assert reply.status == 200, reply.body
    want = embed_paths(model, [video], normalize=True, num_frames=8).embeddings  # pe embed V --normalize
    close([reply.json["data"][0]["embedding"]], want)


def test_classify_equals_the_library(server, model):
    images = [png_bytes(32, 32, "RGB", 3), png_bytes(64, 48, "RGB", 4)]
    labels, templates = ["cat", "dog", "car"], ["a photo of a {}.", "a drawing of a {}."]
    reply = server.post(
        "/v1/classify", {"input": [b64(x) for x in images], "labels": labels, "templates": templates}
    )
    assert reply.status == 200, reply.body
    classifier = pe.zero_shot_classifier(model, labels, templates)
    want = pe.zero_shot_probs(library_image_embeddings(model, images), classifier)
    got = [[d["probs"][name] for name in labels] for d in reply.json["data"]]
    close(got, want)
    assert [d["label"] for d in reply.json["data"]] == [labels[i] for i in want.argmax(-1).tolist()]
    # no templates: the label itself, as `pe classify --labels`
    bare = server.post("/v1/classify", {"input": b64(images[0]), "labels": labels}).json
    want = pe.zero_shot_probs(
        library_image_embeddings(model, images[:1]), pe.zero_shot_classifier(model, labels)
    )
    close([[bare["data"][0]["probs"][n] for n in labels]], want)


def test_features_equal_the_library(server, model, tmp_path):
    from perception_encoder.dense import patch_features

    image = png_bytes(50, 40, "RGBA", 6)
    reply = server.post("/v1/features", {"input": [b64(image)], "layer": 0})
    assert reply.status == 200, reply.body
    (row,) = reply.json["data"]
    assert row["shape"] == [4, 4, 32] and row["dtype"] == "float16"
    got = floats(row["features"], "<f2").reshape(row["shape"])
    want = patch_features(model, image, layer=0)
    close(got, want.half().float(), 2e-3)
    path = tmp_path / "x.png"
    path.write_bytes(image)
    pooled = server.post("/v1/features", {"input": b64(image), "layer": -1, "output": "pooled"}).json
    (row,) = pooled["data"]
    assert row["shape"] == [32]
    want = embed_paths(
        model, [path], features=FeatureSpec(pool="mean", layer=-1)
    ).embeddings  # pe embed --layer -1
    close([floats(row["features"], "<f2")], want.half().float(), 2e-3)


def test_models_health_ready_metrics(server):
    (described,) = server.get("/v1/models").json["data"]
    assert described["id"] == "tiny" and described["embedding_dimensions"] == 16
    assert described["modalities"] == ["image", "text", "video"] and described["context_length"] == 16
    assert server.get("/health").json == {"status": "ok"}
    assert server.get("/ready").json["status"] == "ready"
    metrics = server.get("/metrics")
    assert metrics.status == 200 and metrics.headers["content-type"].startswith("text/plain")
    for name in ("pe_requests_total", "pe_request_seconds_bucket", "pe_batch_size_bucket", "pe_queue_depth"):
        assert name in metrics.body.decode()


# --- batching and backpressure ---------------------------------------------------------------------------


def test_concurrent_requests_land_in_one_batch(model):
    texts = [f"a photo of thing {i}" for i in range(8)]
    with Running(make_app(model, max_batch_size=8, max_wait_ms=5000)) as server:
        start = time.monotonic()
        with ThreadPoolExecutor(8) as pool:
            replies = list(pool.map(lambda t: server.post("/v1/embeddings", {"input": t}), texts))
        elapsed = time.monotonic() - start
        assert [r.status for r in replies] == [200] * 8
        # the batch ran when its 8th item arrived, not after the 5 s wait
        assert elapsed < 4
        assert server.metric("pe_batch_size_count", modality="text") == 1
        assert server.metric("pe_batch_size_sum", modality="text") == 8
        close([r.json["data"][0]["embedding"] for r in replies], embed_texts(model, texts, normalize=True))


def test_a_full_queue_answers_429_with_retry_after(model):
    with Running(make_app(model, max_batch_size=64, max_wait_ms=3000, max_queue=4, max_items=4)) as server:
        with ThreadPoolExecutor(4) as pool:
            waiting = [pool.submit(server.post, "/v1/embeddings", {"input": f"text {i}"}) for i in range(4)]
            deadline = time.monotonic() + 10
            while server.metric("pe_queue_depth", modality="text") < 4 and time.monotonic() < deadline:
                time.sleep(0.02)
            assert server.metric("pe_queue_depth", modality="text") == 4
            refused = server.post("/v1/embeddings", {"input": "one more"})
            assert refused.status == 429, refused.body
            assert int(refused.headers["retry-after"]) >= 1
            assert refused.error["code"] == "overloaded" and "text queue is full" in refused.error["message"]
            assert server.post("/v1/embeddings", {"input": ["a", "b"]}).status == 429
            # another modality has its own queue
            assert (
                server.post("/v1/embeddings", {"input": b64(png_bytes()), "modality": "image"}).status == 200
            )
            assert [f.result().status for f in waiting] == [200] * 4
        assert server.get("/ready").status == 200
        assert server.post("/v1/embeddings", {"input": "after"}).status == 200
        assert server.metric("pe_rejected_total", reason="overloaded") == 2


def test_a_bad_item_fails_only_its_own_request(model):
    good = {"input": [b64(png_bytes(seed=i)) for i in range(2)], "modality": "image"}
    bad = {"input": [b64(png_bytes()), b64(b"not an image")], "modality": "image"}
    with Running(make_app(model, max_batch_size=16, max_wait_ms=200)) as server:
        with ThreadPoolExecutor(5) as pool:
            replies = list(
                pool.map(lambda body: server.post("/v1/embeddings", body), [good, good, bad, good, good])
            )
        assert [r.status for r in replies] == [200, 200, 400, 200, 200]
        assert replies[2].error["param"] == "input[1]" and "input[1]" in replies[2].error["message"]
        assert server.get("/ready").status == 200


# --- bad requests -------------------------------------------------------------------------------------------

IMAGE = b64(png_bytes())
BOMB = io.BytesIO()
Image.new("L", (2000, 2000)).save(BOMB, format="PNG")  # 4M pixels in a few kB; the limit is 100k

BAD_REQUESTS = [
    # (name, method, path, json body or raw bytes, extra headers, status, what the message says)
    ("unknown route", "GET", "/v1/nothing", None, {}, 404, "no route GET /v1/nothing"),
    ("wrong method", "GET", "/v1/embeddings", None, {}, 405, "GET is not allowed"),
    ("no body", "POST", "/v1/embeddings", None, {}, 400, "body is missing"),
    ("not JSON", "POST", "/v1/embeddings", b"{not json", {}, 400, "not valid JSON"),
    ("not UTF-8", "POST", "/v1/embeddings", b'{"input": "\xff\xfe"}', {}, 400, ""),
    ("nested too deep", "POST", "/v1/embeddings", b"[" * 100_000, {}, 400, ""),
    (
        "a form",
        "POST",
        "/v1/embeddings",
        b"input=x",
        {"Content-Type": "application/x-www-form-urlencoded"},
        400,
        "Content-Type: application/json",
    ),
    (
        "body over the limit",
        "POST",
        "/v1/embeddings",
        b'{"input": "' + b"a" * (1 << 20) + b'"}',
        {},
        413,
        "body is too large",
    ),
    ("too many items", "POST", "/v1/embeddings", {"input": ["a"] * 9}, {}, 413, "9 items; the limit is 8"),
    ("an empty list", "POST", "/v1/embeddings", {"input": []}, {}, 400, "input is empty"),
    ("an empty string", "POST", "/v1/embeddings", {"input": ["ok", " "]}, {}, 400, "input[1]: is an empty"),
    ("text over the limit", "POST", "/v1/embeddings", {"input": "a" * 1001}, {}, 413, "1,001 characters"),
    ("token arrays", "POST", "/v1/embeddings", {"input": [[1, 2]]}, {}, 400, "input"),
    ("unknown modality", "POST", "/v1/embeddings", {"input": "x", "modality": "audio"}, {}, 400, "modality:"),
    (
        "bad base64",
        "POST",
        "/v1/embeddings",
        {"input": [IMAGE, "!!notbase64"], "modality": "image"},
        {},
        400,
        "input[1]: is not valid base64",
    ),
    (
        "not an image",
        "POST",
        "/v1/embeddings",
        {"input": b64(b"hello there"), "modality": "image"},
        {},
        400,
        "input: cannot read image",
    ),
    (
        "a cut image",
        "POST",
        "/v1/embeddings",
        {"input": b64(png_bytes()[:80]), "modality": "image"},
        {},
        400,
        "input: cannot read image",
    ),
    (
        "a decompression bomb",
        "POST",
        "/v1/embeddings",
        {"input": b64(BOMB.getvalue()), "modality": "image"},
        {},
        400,
        "too many pixels (2000x2000",
    ),
    (
        "a data URI not in base64",
        "POST",
        "/v1/embeddings",
        {"input": "data:image/png,abc", "modality": "image"},
        {},
        400,
        "must be base64",
    ),
    ("a data URI as text", "POST", "/v1/embeddings", {"input": data_uri(b"x")}, {}, 400, 'set "modality"'),
    (
        "not a video",
        "POST",
        "/v1/embeddings",
        {"input": b64(b"not a video at all"), "modality": "video"},
        {},
        400,
        "input: ",
    ),
    ("dimensions", "POST", "/v1/embeddings", {"input": "x", "dimensions": 8}, {}, 400, "dimensions is not"),
    ("an unknown field", "POST", "/v1/embeddings", {"input": "x", "colour": 1}, {}, 400, "colour:"),
    ("another model", "POST", "/v1/embeddings", {"input": "x", "model": "gpt"}, {}, 404, "serves 'tiny'"),
    (
        "an encoding",
        "POST",
        "/v1/embeddings",
        {"input": "x", "encoding_format": "int8"},
        {},
        400,
        "encoding_format",
    ),
    (
        "a URL",
        "POST",
        "/v1/embeddings",
        {"input": "http://127.0.0.1:9/x.png", "modality": "image"},
        {},
        403,
        "does not fetch URLs",
    ),
    ("no labels", "POST", "/v1/classify", {"input": IMAGE, "labels": []}, {}, 400, "labels is empty"),
    ("a label twice", "POST", "/v1/classify", {"input": IMAGE, "labels": ["a", "a"]}, {}, 400, "labels[1]"),
    (
        "a bad template",
        "POST",
        "/v1/classify",
        {"input": IMAGE, "labels": ["a"], "templates": ["{} {}"]},
        {},
        400,
        "templates[0]",
    ),
    ("a layer out of range", "POST", "/v1/features", {"input": IMAGE, "layer": 2}, {}, 400, "layer: layer 2"),
    ("a layer as text", "POST", "/v1/features", {"input": IMAGE, "layer": "1"}, {}, 400, "layer:"),
    ("an unknown output", "POST", "/v1/features", {"input": IMAGE, "output": "cls"}, {}, 400, "output:"),
    ("search without an index", "POST", "/v1/search", {"text": "x"}, {}, 404, "--index DATASET"),
    ("a thumbnail without an index", "GET", "/v1/thumbnails/0", None, {}, 404, "no index"),
    ("a row that is not a number", "GET", "/v1/thumbnails/abc", None, {}, 400, "row:"),
    ("a page file", "GET", "/static/../../etc/passwd", None, {}, 404, ""),
]


@pytest.mark.parametrize(
    "method, path, body, headers, status, says",
    [case[1:] for case in BAD_REQUESTS],
    ids=[c[0] for c in BAD_REQUESTS],
)
def test_bad_requests_are_4xx_and_the_server_stays_ready(server, method, path, body, headers, status, says):
    raw = body if isinstance(body, bytes) else None
    reply = server.call(method, path, None if raw is not None else body, raw=raw, headers=headers)
    assert reply.status == status, reply.body
    assert reply.headers["content-type"] == "application/json"
    error = reply.error
    assert says in error["message"] and error["type"] and error["code"]
    assert server.get("/ready").status == 200


def test_no_bad_request_was_a_500(server):
    text = server.get("/metrics").body.decode()
    assert 'status="500"' not in text and 'status="200"' in text


def test_a_chunked_body_over_the_limit_is_413(server):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    chunks = (b"x" * 65536 for _ in range(40))  # 2.5 MB, no Content-Length
    conn.request(
        "POST",
        "/v1/embeddings",
        body=chunks,
        headers={"Content-Type": "application/json"},
        encode_chunked=True,
    )
    response = conn.getresponse()
    assert response.status == 413 and b"too large" in response.read()
    conn.close()
    assert server.get("/ready").status == 200


# --- authentication ---------------------------------------------------------------------------------------


def test_an_api_key_is_required_where_it_is_set(model):
    with Running(make_app(model, api_key="s3cret")) as server:
        missing = server.post("/v1/embeddings", {"input": "x"})
        assert missing.status == 401 and missing.headers["www-authenticate"] == "Bearer"
        assert missing.error["code"] == "missing_api_key"
        wrong = server.post("/v1/embeddings", {"input": "x"}, headers={"Authorization": "Bearer nope"})
        assert wrong.status == 401 and wrong.error["code"] == "invalid_api_key"
        good = server.post("/v1/embeddings", {"input": "x"}, headers={"Authorization": "Bearer s3cret"})
        assert good.status == 200
        assert server.get("/v1/models").status == 401 and server.get("/metrics").status == 401
        for public in ("/health", "/ready", "/", "/static/app.js"):
            assert server.get(public).status == 200, public
        # a body is not read before the key is checked
        assert server.call("POST", "/v1/embeddings", raw=b"x" * (2 << 20)).status == 401


# --- URLs ---------------------------------------------------------------------------------------------------


@pytest.fixture
def image_site():
    """An http.server on 127.0.0.1 serving one PNG (a private address, as any local service is)."""
    image = png_bytes(24, 24, "RGB", 9)

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(image)))
            self.end_headers()
            self.wfile.write(image)

        def log_message(self, *args):
            pass

    site = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=site.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{site.server_address[1]}/cat.png", image
    site.shutdown()
    site.server_close()


def test_urls_are_fetched_only_when_allowed(model, image_site):
    url, image = image_site
    body = {"input": [url], "modality": "image"}
    with Running(make_app(model)) as server:
        reply = server.post("/v1/embeddings", body)
        assert (
            reply.status == 403
            and reply.error["code"] == "url_not_allowed"
            and "--allow-urls" in reply.error["message"]
        )
    with Running(make_app(model, allow_urls=True)) as server:
        reply = server.post("/v1/embeddings", body)
        assert reply.status == 403 and reply.error["code"] == "private_url", reply.body
        assert "127.0.0.1" in reply.error["message"] and reply.error["param"] == "input[0]"
    with Running(make_app(model, allow_urls=True, allow_private_urls=True)) as server:
        reply = server.post("/v1/embeddings", body)
        assert reply.status == 200, reply.body
        close([reply.json["data"][0]["embedding"]], library_image_embeddings(model, [image]))
        gone = server.post(
            "/v1/embeddings", {"input": url.rsplit(":", 1)[0] + ":9/x.png", "modality": "image"}
        )
        assert gone.status == 400 and gone.error["code"] == "fetch_failed"


def test_public_address_rule():
    from perception_encoder.datasets.fetch import is_public_address

    for address in (
        "127.0.0.1",
        "10.1.2.3",
        "192.168.0.1",
        "169.254.169.254",
        "::1",
        "fe80::1%eth0",
        "0.0.0.0",
        "::ffff:127.0.0.1",
        "224.0.0.1",
        "100.64.0.1",
    ):
        assert not is_public_address(address), address
    for address in ("8.8.8.8", "2606:4700:4700::1111", "::ffff:8.8.8.8"):
        assert is_public_address(address), address


# --- SIGTERM ----------------------------------------------------------------------------------------------


def test_sigterm_drains_the_request_in_flight_then_exits(model_file):
    """A subprocess `pe serve`: a request waits in its batch (2 s), SIGTERM arrives meanwhile; the request
    is answered, new connections are refused, and the process exits 0."""
    command = [
        sys.executable,
        "-m",
        "perception_encoder.cli.main",
        "serve",
        "--checkpoint",
        str(model_file),
        "--port",
        "0",
        "--max-wait-ms",
        "2000",
        "--max-batch-size",
        "64",
        "--device",
        "cpu",
    ]
    proc = subprocess.Popen(
        command, stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"}
    )
    try:
        port = None
        lines = []
        deadline = time.monotonic() + 120
        while port is None and time.monotonic() < deadline:
            line = proc.stderr.readline()
            if not line:
                break
            lines.append(line)
            if line.startswith("pe serve: tiny on http://127.0.0.1:"):
                port = int(line.rsplit(":", 1)[1])
        assert port is not None, "".join(lines)
        threading.Thread(target=proc.stderr.read, daemon=True).start()  # keep the pipe drained

        def call(method, path, body=None):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            conn.request(method, path, body=body, headers={"Content-Type": "application/json"})
            response = conn.getresponse()
            return response.status, response.read()

        while call("GET", "/ready")[0] != 200:
            time.sleep(0.05)
        with ThreadPoolExecutor(1) as pool:
            start = time.monotonic()
            pending = pool.submit(call, "POST", "/v1/embeddings", b'{"input": "still answered"}')
            time.sleep(0.5)
            proc.send_signal(signal.SIGTERM)
            status, body = pending.result(timeout=30)
        assert status == 200, body
        assert time.monotonic() - start >= 1.5  # it waited for its batch: it was in flight at SIGTERM
        assert proc.wait(timeout=30) == 0
        with pytest.raises(ConnectionRefusedError):
            call("GET", "/health")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# --- search and thumbnails ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def indexed(tmp_path_factory, model_file):
    """A folder of 10 images (and a symbolic link to one outside it) embedded by the dataset writer with the
    saved tiny model, and its index."""
    pytest.importorskip("lancedb")
    from perception_encoder.datasets import open_dataset
    from perception_encoder.datasets.embed import embed_dataset
    from perception_encoder.index import build_index

    base = tmp_path_factory.mktemp("serve-search")
    folder, outside = base / "photos", base / "outside"
    folder.mkdir()
    outside.mkdir()
    for i in range(10):
        (folder / f"img{i:02d}.png").write_bytes(png_bytes(32 + i, 32, "RGB", 20 + i))
    (outside / "secret.png").write_bytes(png_bytes(32, 32, "RGB", 99))
    (folder / "zz_link.png").symlink_to(outside / "secret.png")
    root = base / "ds"
    embed_dataset([folder], root, model=str(model_file), normalize=True)
    ds = open_dataset(root)
    build_index(ds)
    return ds, folder


@pytest.fixture(scope="module")
def search_server(indexed, model, model_file):
    from perception_encoder.serve import SearchIndex

    ds, _ = indexed
    ds.check_weights(str(model_file))
    search = SearchIndex(ds.root, model, max_pixels=LIMITS["max_image_pixels"], thumbnail_size=256)
    with Running(make_app(model, search=search, **LIMITS)) as running:
        yield running


def test_search_equals_the_library(search_server, indexed, model):
    from perception_encoder.index import open_index

    ds, folder = indexed
    index = open_index(ds)
    reply = search_server.post("/v1/search", {"text": "a red square", "k": 4})
    assert reply.status == 200, reply.body
    (want,) = index.search(ds.embed_queries(texts=["a red square"], model=model), k=4)
    got = reply.json["data"]
    assert [r["id"] for r in got] == want.ids and [r["rank"] for r in got] == [1, 2, 3, 4]
    close([r["score"] for r in got], want.scores)
    assert all(r["thumbnail"] == f"/v1/thumbnails/{r['row']}" for r in got)

    query = folder / "img03.png"
    reply = search_server.post("/v1/search", {"image": data_uri(query.read_bytes()), "k": 3})
    (want,) = index.search(ds.embed_queries(images=[query], model=model), k=3)
    assert [r["id"] for r in reply.json["data"]] == want.ids and reply.json["data"][0]["id"] == "img03.png"
    close([r["score"] for r in reply.json["data"]], want.scores)

    filtered = search_server.post(
        "/v1/search", {"text": "a red square", "k": 20, "where": "id != 'img03.png'"}
    )
    assert len(filtered.json["data"]) == 10 and "img03.png" not in [r["id"] for r in filtered.json["data"]]
    info = search_server.get("/v1/index").json
    assert info["rows"] == 11 and info["text_queries"] is True


@pytest.mark.parametrize(
    "body, status, says",
    [
        ({"text": "x", "image": IMAGE}, 400, "exactly one query"),
        ({}, 400, "exactly one query"),
        ({"text": "x", "k": 0}, 400, "k must be from 1"),
        ({"text": "x", "k": 10**6}, 400, "k must be from 1"),
        ({"text": "x", "where": "nope > 1"}, 400, "where: filter"),
        ({"text": "x", "where": "1; DROP TABLE x"}, 400, "not one SQL condition"),
        ({"text": ""}, 400, "text: is an empty string"),
        ({"image": "!!"}, 400, "image: is not valid base64"),
    ],
)
def test_bad_searches_are_4xx(search_server, body, status, says):
    reply = search_server.post("/v1/search", body)
    assert reply.status == status and says in reply.error["message"], reply.body
    assert search_server.get("/ready").status == 200


def test_thumbnails_come_only_from_the_dataset_inputs(search_server, indexed):
    ds, folder = indexed
    rows = {r["id"]: r["row"] for r in search_server.post("/v1/search", {"text": "x", "k": 11}).json["data"]}
    reply = search_server.get(f"/v1/thumbnails/{rows['img05.png']}")
    assert reply.status == 200 and reply.headers["content-type"] == "image/jpeg"
    thumb = Image.open(io.BytesIO(reply.body))
    assert thumb.format == "JPEG" and thumb.size == (37, 32)
    # a symbolic link in the folder that points outside it: its row exists, its file is not served
    escaped = search_server.get(f"/v1/thumbnails/{rows['zz_link.png']}")
    assert escaped.status == 404 and escaped.error["code"] == "outside_inputs"
    for row in (11, 10**12):
        assert search_server.get(f"/v1/thumbnails/{row}").status == 404
    assert search_server.get("/v1/thumbnails/-1").status == 404


def test_thumbnail_paths_cannot_leave_the_roots(tmp_path):
    from perception_encoder.serve.errors import APIError
    from perception_encoder.serve.thumbnails import Thumbnails, input_roots

    (tmp_path / "in" / "sub").mkdir(parents=True)
    (tmp_path / "in" / "sub" / "a.png").write_bytes(png_bytes())
    (tmp_path / "secret.png").write_bytes(png_bytes())
    (tmp_path / "one.png").write_bytes(png_bytes())
    inputs = (
        str(tmp_path / "in"),
        str(tmp_path / "one.png"),
        str(tmp_path / "g" / "*" / "x.jpg"),
        str(tmp_path / "shards-{00..09}.tar"),
        str(tmp_path / "t.csv"),
    )
    folders, files = input_roots(inputs)
    assert folders == (str(tmp_path / "in"), str(tmp_path / "g")) and files == {str(tmp_path / "one.png")}
    thumbs = Thumbnails(inputs)
    assert thumbs.locate(0, "sub/a.png", str(tmp_path / "in")) == str(tmp_path / "in" / "sub" / "a.png")
    assert thumbs.locate(1, str(tmp_path / "one.png"), str(tmp_path / "one.png")).endswith("one.png")
    for id, source, code in [
        ("../secret.png", str(tmp_path / "in"), "outside_inputs"),
        ("sub/../../secret.png", str(tmp_path / "in"), "outside_inputs"),
        (str(tmp_path / "secret.png"), str(tmp_path / "secret.png"), "outside_inputs"),
        ("k1", str(tmp_path / "shards-00.tar"), "no_thumbnail"),
        ("3", str(tmp_path / "t.csv"), "no_thumbnail"),
    ]:
        with pytest.raises(APIError) as e:
            thumbs.locate(7, id, source)
        assert e.value.status == 404 and e.value.code == code, (id, source)


# --- the onnxruntime backend ------------------------------------------------------------------------------


def test_the_onnxruntime_backend_equals_torch(model, tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from perception_encoder.export import export_onnx

    graphs = [export_onnx(model, tmp_path / f"tiny-{w}.onnx", what=w, name="tiny") for w in ("image", "text")]
    app = create_app(Service(Backend.from_onnx(graphs), ServeConfig()))
    images = [png_bytes(seed=30), png_bytes(50, 20, "RGBA", 31)]
    with Running(app) as server:
        assert server.get("/v1/models").json["data"][0]["backend"] == "onnxruntime"
        got = server.post("/v1/embeddings", {"input": [b64(x) for x in images], "modality": "image"}).json
        close([d["embedding"] for d in got["data"]], library_image_embeddings(model, images), 1e-4)
        texts = ["a cat", "a dog on a sofa"]
        got = server.post("/v1/embeddings", {"input": texts}).json
        close([d["embedding"] for d in got["data"]], embed_texts(model, texts), 1e-4)
        reply = server.post("/v1/features", {"input": b64(images[0])})
        assert reply.status == 400 and "torch backend" in reply.error["message"]


# --- the command line ---------------------------------------------------------------------------------------


def test_cli_refuses_what_cannot_work(indexed, tmp_path):
    from click.testing import CliRunner

    from perception_encoder.cli.main import main
    from perception_encoder.clip import CLIP
    from perception_encoder.factory import save

    runner = CliRunner()
    ds, _ = indexed
    other = save(randomize(CLIP(tiny_clip_config()), seed=6), tmp_path / "other.safetensors")
    cases = [
        (["--allow-private-urls"], "--allow-private-urls needs --allow-urls"),
        (["--backend", "onnxruntime"], "needs --onnx"),
        (["--backend", "onnxruntime", "--index", str(ds.root)], "--index needs --backend torch"),
        (["--index", str(ds.root), "--checkpoint", str(other)], "hash to"),
        (["--max-queue", "4", "--max-items", "8"], "max_queue (4) must be at least max_items (8)"),
    ]
    for args, says in cases:
        result = runner.invoke(main, ["serve", "--port", "0", *args])
        assert result.exit_code != 0 and says in result.output, (args, result.output)
        assert "Traceback" not in result.output
