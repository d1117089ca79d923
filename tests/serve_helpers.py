"""Helpers for the server tests: a real uvicorn server on 127.0.0.1 in a thread, a small HTTP client on
``http.client`` (no mocks, no test client: requests go through sockets), images as PNG bytes."""

from __future__ import annotations

import base64
import http.client
import io
import json
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def error(self) -> dict[str, Any]:
        return self.json["error"]


class Running:
    """``with Running(app) as server:`` a uvicorn server for ``app`` on a free port of 127.0.0.1, ready
    (``/ready`` answers 200) when the block starts, stopped (as by SIGTERM: drained) when it ends."""

    def __init__(self, app: Any, *, ready: bool = True) -> None:
        from perception_encoder.serve import build_server, listening_socket

        self.app = app
        self.sock = listening_socket("127.0.0.1", 0)
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = build_server(app, log_level="warning", drain_timeout=10)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self.wait_ready = ready

    def __enter__(self) -> Running:
        self.thread.start()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                reply = self.get("/ready")
                if reply.status == 200 or (not self.wait_ready and self.server.started):
                    return self
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError("the server did not get ready in 60 s")

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(30)
        self.sock.close()

    # --- requests -----------------------------------------------------------------------------------------

    def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        raw: bytes | None = None,
        headers: dict[str, str] | None = None,
        timeout: float = 60,
    ) -> Reply:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            sent = {"Content-Type": "application/json"} if body is not None or raw is not None else {}
            sent.update(headers or {})
            data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
            conn.request(method, path, body=data, headers=sent)
            response = conn.getresponse()
            return Reply(response.status, {k.lower(): v for k, v in response.getheaders()}, response.read())
        finally:
            conn.close()

    def get(self, path: str, **kw: Any) -> Reply:
        return self.call("GET", path, **kw)

    def post(self, path: str, body: Any, **kw: Any) -> Reply:
        return self.call("POST", path, body, **kw)

    def metric(self, name: str, **labels: str) -> float:
        """The value of one sample of ``/metrics`` (0 when absent)."""
        text = self.get("/metrics", headers=self.auth_header()).body.decode()
        want = name + (
            "{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}" if labels else ""
        )
        for line in text.splitlines():
            if line.startswith(want + " "):
                return float(line.split()[-1])
        return 0.0

    def auth_header(self) -> dict[str, str]:
        key = self.app.state.service.config.api_key
        return {"Authorization": f"Bearer {key}"} if key else {}


def png_bytes(width: int = 40, height: int = 30, mode: str = "RGB", seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
    pixels = rng.integers(0, 256, (height, width, channels), dtype=np.uint8)
    image = Image.fromarray(pixels[..., 0] if channels == 1 else pixels, mode)
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def data_uri(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{b64(data)}"


def floats(text: str, dtype: str = "<f4") -> np.ndarray:
    return np.frombuffer(base64.b64decode(text), dtype=dtype)
