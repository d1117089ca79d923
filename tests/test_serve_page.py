"""The search page in a real browser: headless Chromium (the Debian package; `make test` installs it) loads
``/?q=...`` from a real uvicorn server with a small indexed dataset, the page's script runs the query, and
the results it puts in the DOM are the API's, with their thumbnails loaded. With an API key, the page asks
for it and does not show results without it."""

from __future__ import annotations

import html
import re
import shutil
import subprocess
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("prometheus_client")
pytest.importorskip("lancedb")

import perception_encoder as pe  # noqa: E402
from conftest import randomize, tiny_clip_config  # noqa: E402
from perception_encoder.serve import Backend, SearchIndex, ServeConfig, Service, create_app  # noqa: E402
from serve_helpers import Running, png_bytes  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="no chromium on this machine (make test installs the Debian package: apt-get install -y chromium)",
)


def browse(url: str, profile: Path, *extra: str) -> str:
    """The DOM of ``url`` after its scripts ran (virtual time lets the page's fetches finish)."""
    command = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={profile}",
        "--virtual-time-budget=15000",
        *extra,
        "--dump-dom",
        url,
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def hits(dom: str) -> list[dict[str, str]]:
    """The result items of the page: their data attributes."""
    out = []
    for tag in re.findall(r'<li class="hit"([^>]*)>', dom):
        out.append({k: html.unescape(v) for k, v in re.findall(r'data-(\w+)="([^"]*)"', tag)})
    return out


@pytest.fixture(scope="module")
def indexed_photos(tmp_path_factory):
    from perception_encoder.clip import CLIP
    from perception_encoder.datasets import open_dataset
    from perception_encoder.datasets.embed import embed_dataset
    from perception_encoder.factory import save
    from perception_encoder.index import build_index

    base = tmp_path_factory.mktemp("page")
    checkpoint = save(randomize(CLIP(tiny_clip_config()), seed=11), base / "tiny.safetensors")
    folder = base / "photos"
    folder.mkdir()
    for i in range(9):
        (folder / f"photo {i} <&>.png").write_bytes(png_bytes(40, 40, "RGB", 40 + i))  # names to escape
    root = base / "ds"
    embed_dataset([folder], root, model=str(checkpoint), normalize=True)
    ds = open_dataset(root)
    build_index(ds)
    model = pe.load(str(checkpoint))
    ds.check_weights(str(checkpoint))
    return ds, model


def page_app(indexed_photos, **config):
    ds, model = indexed_photos
    search = SearchIndex(ds.root, model, max_pixels=10**7, thumbnail_size=128)
    return create_app(Service(Backend.from_torch(model, "tiny"), ServeConfig(**config), search=search))


def test_the_page_runs_a_linked_query_and_shows_the_apis_results(indexed_photos, tmp_path):
    with Running(page_app(indexed_photos)) as server:
        dom = browse(f"{server.url}/?q=a%20photo%20of%20a%20cat", tmp_path / "profile")
        api = server.post("/v1/search", {"text": "a photo of a cat", "k": 24}).json["data"]
        shown = hits(dom)
        assert [h["id"] for h in shown] == [r["id"] for r in api] and len(shown) == 9
        assert [float(h["score"]) for h in shown] == pytest.approx([r["score"] for r in api], abs=1e-6)
        assert [int(h["rank"]) for h in shown] == list(range(1, 10))
        # every thumbnail was fetched and shown (as a blob), none fell back to the placeholder
        assert len(re.findall(r'<img class="thumb"[^>]*src="blob:', dom)) == 9, dom
        assert "no picture" not in dom
        assert "9 results for “a photo of a cat”" in dom
        assert 'value="a photo of a cat"' in dom or "a photo of a cat" in dom


def test_the_page_asks_for_the_api_key(indexed_photos, tmp_path):
    with Running(page_app(indexed_photos, api_key="k3y")) as server:
        dom = browse(f"{server.url}/?q=anything", tmp_path / "profile")
        assert hits(dom) == []
        assert re.search(r'<form id="key"(?![^>]*hidden)', dom), dom  # the key form is shown
        assert "needs an API key" in dom


def test_the_page_says_when_the_server_has_no_index(tmp_path):
    from perception_encoder.clip import CLIP

    model = randomize(CLIP(tiny_clip_config()))
    app = create_app(Service(Backend.from_torch(model, "tiny"), ServeConfig()))
    with Running(app) as server:
        dom = browse(f"{server.url}/?q=x", tmp_path / "profile")
        assert "this server has no index" in dom and hits(dom) == []
