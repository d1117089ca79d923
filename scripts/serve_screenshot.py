"""The README's picture of the search page: the shipped example images embedded with the bundled model,
indexed, served by `pe serve --index`, and `/?q=red square` captured by headless Chromium.

    python scripts/serve_screenshot.py [--out docs/serve-search-page.png] [--query "red square"]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import quote

ROOT = Path(__file__).resolve().parent.parent


def pe(*args: str, **kw) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "perception_encoder.cli.main", *args]
    return subprocess.run(command, check=True, capture_output=True, text=True, **kw)


def ready(url: str) -> bool:
    """Whether the server's /ready answers 200 (it is 503 while the weights load and warm up)."""
    try:
        return urllib.request.urlopen(url + "/ready").status == 200
    except urllib.error.HTTPError:
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default=str(ROOT / "docs" / "serve-search-page.png"))
    parser.add_argument("--query", default="red square")
    args = parser.parse_args()
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        sys.exit("chromium is needed: apt-get install -y chromium")
    with tempfile.TemporaryDirectory() as tmp:
        images = Path(tmp) / "examples"
        shutil.copytree(ROOT / "examples" / "images", images)
        dataset = Path(tmp) / "ds"
        pe("embed", str(images), "--out", str(dataset), "--normalize", "--no-progress", cwd=tmp)
        pe("index", str(dataset), cwd=tmp)
        command = [
            sys.executable,
            "-m",
            "perception_encoder.cli.main",
            "serve",
            "--index",
            "ds",
            "--port",
            "0",
        ]
        server = subprocess.Popen(command, cwd=tmp, stderr=subprocess.PIPE, text=True)
        try:
            port = next(
                int(line.rsplit(":", 1)[1]) for line in server.stderr if line.startswith("pe serve: ")
            )
            threading.Thread(target=server.stderr.read, daemon=True).start()
            url = f"http://127.0.0.1:{port}"
            while not ready(url):
                time.sleep(0.1)
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            subprocess.run(
                [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp}/chrome",
                 "--virtual-time-budget=10000", "--window-size=1100,560", "--hide-scrollbars",
                 f"--screenshot={Path(args.out).resolve()}", f"{url}/?q={quote(args.query)}"],
                check=True, capture_output=True,
            )  # fmt: skip
        finally:
            server.terminate()
            server.wait(timeout=60)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
