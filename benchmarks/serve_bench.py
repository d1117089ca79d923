"""`pe serve` under load: does dynamic batching keep the model busy, and does memory stay flat?

    python benchmarks/serve_bench.py                    # PE-Core-B16-224 random weights, 32 clients
    python benchmarks/serve_bench.py --image-requests 320 --text-requests 640 --memory-requests 2000

A real `pe serve` subprocess on 127.0.0.1 (its own process: the clients do not share its interpreter) and
``--clients`` client threads, each on one keep-alive connection, sending one item per request until a
fixed number of requests is answered:

1. Images: a 640x480 JPEG (base64 in JSON, decoded and squashed by the server) per request, against the
   library's batched ``encode_image`` on the same pixels already decoded (batch ``--max-batch-size``,
   this process, the same threads). ``--rounds`` rounds alternate library and server (the machine is
   shared: other jobs come and go) and the medians are compared. Goal: throughput >= 0.8x the library's,
   zero errors.
2. Short texts: the same clients, one caption per request.
3. Memory: ``--memory-requests`` requests (images and texts alternating) to a server of ``--memory-model``,
   its resident memory read from /proc every tenth of the run; goal: flat (growth after the first tenth
   under 5%). The default memory model is the bundled 64 px one, so 10,000 requests take a minute
   instead of half an hour on two CPUs; per-request memory does not depend on the model's size.

Prints one table (throughput, p50 / p99 latency, errors, batch sizes from /metrics) and the ratios.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _checkpoints import random_model  # noqa: E402

from perception_encoder.factory import save  # noqa: E402
from perception_encoder.transforms import image_transform  # noqa: E402

CAPTIONS = ["a photo of a dog", "a red car on a street", "two people on a beach", "a bowl of soup", "a cat"]


def photo(seed: int) -> bytes:
    """A 640x480 JPEG with smooth structure (what a photo costs to decode)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:480, 0:640].astype(np.float32)
    a, b, c = rng.uniform(0.005, 0.05, 3)
    img = np.stack([np.sin(a * x + seed), np.cos(b * y - seed), np.sin(c * (x + y))], -1)
    img = ((img + 1) * 110 + rng.normal(0, 8, img.shape)).clip(0, 255).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(img).save(out, format="JPEG", quality=90)
    return out.getvalue()


# --- the server -------------------------------------------------------------------------------------------


class Server:
    """``pe serve`` in a subprocess; its port is read from its start line."""

    def __init__(self, checkpoint: Path, max_batch_size: int, max_wait_ms: float, threads: int) -> None:
        command = [
            sys.executable, "-m", "perception_encoder.cli.main", "serve", "--checkpoint", str(checkpoint),
            "--port", "0", "--device", "cpu", "--max-batch-size", str(max_batch_size),
            "--max-wait-ms", str(max_wait_ms), "--decode-threads", str(threads),
        ]  # fmt: skip
        self.proc = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
        self.port = 0
        for line in self.proc.stderr:
            if line.startswith("pe serve: ") and " on http://127.0.0.1:" in line:
                self.port = int(line.rsplit(":", 1)[1])
                break
        if not self.port:
            raise RuntimeError(f"pe serve did not start (exit {self.proc.wait()})")
        threading.Thread(target=self.proc.stderr.read, daemon=True).start()
        while request(self.port, "GET", "/ready")[0] != 200:
            time.sleep(0.1)

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def batch_sizes(self, modality: str) -> tuple[int, float]:
        """Batches run and their mean size, from /metrics."""
        text = request(self.port, "GET", "/metrics")[1].decode()
        values = {}
        for line in text.splitlines():
            for key in ("count", "sum"):
                if line.startswith(f'pe_batch_size_{key}{{modality="{modality}"}}'):
                    values[key] = float(line.split()[-1])
        count = int(values.get("count", 0))
        return count, values.get("sum", 0.0) / max(count, 1)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=60)


def request(port: int, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    try:
        conn.request(method, path, body=body, headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


# --- the clients ------------------------------------------------------------------------------------------


@dataclass
class Load:
    seconds: float
    latencies: list[float]
    errors: int
    rss: list[float] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return len(self.latencies) / self.seconds

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies, q)) * 1000 if self.latencies else float("nan")


def load(server: Server, bodies: list[bytes], requests: int, clients: int, samples: int = 0) -> Load:
    """``requests`` POSTs of ``bodies`` (cycled) from ``clients`` threads, each on a keep-alive connection;
    with ``samples``, the server's RSS is read that many times, evenly over the run."""
    lock = threading.Lock()
    sent = 0
    latencies: list[float] = []
    errors = 0
    rss: list[float] = []
    every = max(1, requests // samples) if samples else 0

    def client() -> None:
        nonlocal sent, errors
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=300)
        while True:
            with lock:
                if sent >= requests:
                    break
                i = sent
                sent += 1
            start = time.perf_counter()
            try:
                conn.request("POST", "/v1/embeddings", body=bodies[i % len(bodies)],
                             headers={"Content-Type": "application/json"})  # fmt: skip
                response = conn.getresponse()
                response.read()
                ok = response.status == 200
            except (OSError, http.client.HTTPException):
                ok = False
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=300)
            elapsed = time.perf_counter() - start
            with lock:
                if ok:
                    latencies.append(elapsed)
                else:
                    errors += 1
                if every and (i + 1) % every == 0:
                    rss.append(server.rss_mb())
        conn.close()

    threads = [threading.Thread(target=client) for _ in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return Load(time.perf_counter() - start, latencies, errors, rss)


def image_bodies(n: int = 8) -> tuple[list[bytes], list[bytes]]:
    photos = [photo(i) for i in range(n)]
    bodies = [
        json.dumps({"input": base64.b64encode(p).decode(), "modality": "image"}).encode() for p in photos
    ]
    return photos, bodies


def text_bodies() -> list[bytes]:
    return [json.dumps({"input": c}).encode() for c in CAPTIONS]


# --- the library ------------------------------------------------------------------------------------------


def library_rate(model: torch.nn.Module, photos: list[bytes], images: int, batch_size: int) -> float:
    """Images per second of ``model.encode_image`` on batches of pixels already decoded and transformed."""
    tf = image_transform(model.visual.config.image_size)
    pixels = torch.stack([tf(p) for p in photos])
    batch = pixels.repeat((batch_size + len(pixels) - 1) // len(pixels), 1, 1, 1)[:batch_size]
    batches = max(1, images // batch_size)
    with torch.inference_mode():
        model.encode_image(batch[:2])
        start = time.perf_counter()
        for _ in range(batches):
            model.encode_image(batch)
        return batches * batch_size / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="PE-Core-B16-224")
    parser.add_argument("--memory-model", default="bundled", help="'bundled' (64 px) or a released name")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--image-requests", type=int, default=576, help="over all rounds")
    parser.add_argument("--rounds", type=int, default=3, help="alternating library / server rounds")
    parser.add_argument("--text-requests", type=int, default=1280)
    parser.add_argument("--memory-requests", type=int, default=10_000)
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    parser.add_argument("--threads", type=int, default=min(4, os.cpu_count() or 1), help="decode threads")
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)  # as the server's model thread has them

    with tempfile.TemporaryDirectory() as tmp:
        model = random_model(args.model)
        checkpoint = Path(save(model, Path(tmp) / f"{args.model}.safetensors"))
        photos, images = image_bodies()
        rows = []

        # contestants alternate (library, server, library, ...) and their medians are compared, so both see
        # the same machine (it is shared: other jobs come and go)
        server = Server(checkpoint, args.max_batch_size, args.max_wait_ms, args.threads)
        library: list[float] = []
        rounds: list[Load] = []
        try:
            load(server, images, args.clients * 2, args.clients)  # warm: connections, allocator
            per_round = args.image_requests // args.rounds
            for _ in range(args.rounds):
                library.append(library_rate(model, photos, per_round, args.max_batch_size))
                rounds.append(load(server, images, per_round, args.clients))
            image_batches = server.batch_sizes("image")
            texts = load(server, text_bodies(), args.text_requests, args.clients)
            text_batches = server.batch_sizes("text")
        finally:
            server.stop()
        served = Load(
            sum(r.seconds for r in rounds),
            [x for r in rounds for x in r.latencies],
            sum(r.errors for r in rounds),
        )
        server_rate = statistics.median(r.rate for r in rounds)
        reference = statistics.median(library)
        rows.append(("library encode_image (batched)", f"{reference:.2f}", "", "", "", ""))
        rows.append(
            (f"images, {args.clients} clients", f"{server_rate:.2f}", f"{served.percentile(50):.0f}",
             f"{served.percentile(99):.0f}", str(served.errors), f"{image_batches[1]:.1f}")
        )  # fmt: skip
        rows.append(
            (f"texts, {args.clients} clients", f"{texts.rate:.2f}", f"{texts.percentile(50):.0f}",
             f"{texts.percentile(99):.0f}", str(texts.errors), f"{text_batches[1]:.1f}")
        )  # fmt: skip
        del model

        if args.memory_model == "bundled":
            from perception_encoder.cli.options import default_model
            from perception_encoder.factory import checkpoint_file

            memory_checkpoint = checkpoint_file(default_model())
        else:
            memory_checkpoint = Path(save(random_model(args.memory_model), Path(tmp) / "memory.safetensors"))
        server = Server(memory_checkpoint, args.max_batch_size, args.max_wait_ms, args.threads)
        try:
            mixed = [b for pair in zip(images, text_bodies() * 2, strict=False) for b in pair]
            load(server, mixed, args.clients * 4, args.clients)  # warm
            memory = load(server, mixed, args.memory_requests, args.clients, samples=10)
        finally:
            server.stop()

    print(f"\nmodel {args.model} (random weights), {os.cpu_count()} CPUs, max batch {args.max_batch_size}, "
          f"max wait {args.max_wait_ms:g} ms, {args.threads} decode threads; load {os.getloadavg()[0]:.1f}\n")  # fmt: skip
    print("| contestant | items/s | p50 ms | p99 ms | errors | mean batch |")
    print("|---|---:|---:|---:|---:|---:|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print(f"\nserver / library (images, medians of {args.rounds} alternating rounds): {server_rate / reference:.2f}x "
          f"(goal >= 0.8x); library rounds: {', '.join(f'{r:.2f}' for r in library)}; server rounds: "
          f"{', '.join(f'{r.rate:.2f}' for r in rounds)} images/s")  # fmt: skip
    first, last, peak = memory.rss[0], memory.rss[-1], max(memory.rss)
    print(f"\nmemory ({args.memory_model} model): {args.memory_requests} requests (images and texts) in "
          f"{memory.seconds:.0f} s, {memory.errors} errors, p50 {memory.percentile(50):.0f} ms, "
          f"p99 {memory.percentile(99):.0f} ms")  # fmt: skip
    print(
        f"server RSS every {args.memory_requests // 10} requests (MB): {', '.join(f'{r:.0f}' for r in memory.rss)}"
    )
    print(
        f"growth after the first tenth: {100 * (last - first) / first:+.1f}% (peak {peak:.0f} MB; goal: under 5%)"
    )


if __name__ == "__main__":
    main()
