"""Embedding a collection into a dataset: does decoding hide behind encoding, and what does Ray cost?

    python benchmarks/dataset_bench.py                   # both measurements, PE-Core-B16-224 random weights
    python benchmarks/dataset_bench.py --images 512 --ray-images 2000 --model PE-Core-B16-224

1. Pipeline vs model: ``embed_dataset`` of a folder of JPEG photos (640x480, decoded, squashed to 224 and
   normalised in ``--workers`` loader processes) against the model alone on the same images already
   decoded into tensors, same batch size. The goal is at least 0.9x: decoding must hide behind encoding.
2. Ray vs local: the same job through ``--engine ray`` (a local Ray with this machine's CPUs, started
   before the timing: what a cluster user pays is the per-job overhead, not the cluster's start) against
   the local engine, on ``--ray-images`` images. The goal is an overhead of at most 20%.

Contestants alternate (local, the other, local, ...) and the medians are compared, so both see the same
machine. Prints a table of images/s and the ratios; weights are random (speed does not depend on them).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _checkpoints import random_model  # noqa: E402

from perception_encoder.datasets.embed import embed_dataset  # noqa: E402
from perception_encoder.factory import load, save  # noqa: E402
from perception_encoder.transforms import image_transform  # noqa: E402


def make_photos(folder: Path, n: int, seed: int = 0) -> list[Path]:
    """``n`` 640x480 JPEGs with smooth structure (quality 90): what a photo folder costs to decode."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    y, x = np.mgrid[0:480, 0:640].astype(np.float32)
    paths = []
    for i in range(n):
        path = folder / f"photo{i:05d}.jpg"
        if not path.exists():
            a, b, c = rng.uniform(0.005, 0.05, 3)
            img = np.stack([np.sin(a * x + i), np.cos(b * y - i), np.sin(c * (x + y))], -1)
            img = ((img + 1) * 110 + rng.normal(0, 8, img.shape)).clip(0, 255).astype(np.uint8)
            Image.fromarray(img).save(path, quality=90)
        paths.append(path)
    return paths


def time_model_alone(model, pixels: torch.Tensor, batch_size: int) -> float:
    start = time.perf_counter()
    with torch.inference_mode():
        for i in range(0, len(pixels), batch_size):
            model.encode_image(pixels[i : i + batch_size])
    return time.perf_counter() - start


def time_job(folder: Path, checkpoint: Path, out: Path, **options) -> float:
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    embed_dataset([folder], out, model=checkpoint, **options)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="PE-Core-B16-224")
    parser.add_argument("--images", type=int, default=256, help="images for pipeline vs model (0: skip)")
    parser.add_argument("--ray-images", type=int, default=2000, help="images for ray vs local (0: skip)")
    parser.add_argument("--ray-model", default="PE-Core-T16-384", help="model of the ray vs local job")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=1, help="loader processes of the local engine")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cache", default=os.path.join(tempfile.gettempdir(), "pe-dataset-bench"))
    args = parser.parse_args()

    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    checkpoint = cache / f"{args.model}.safetensors"
    if not checkpoint.exists():
        save(random_model(args.model), checkpoint)
    model = load(checkpoint)  # as the job loads it (memory-mapped, so its linear weights get packed)
    threads = torch.get_num_threads()
    print(f"# {args.model}, batch {args.batch_size}, {threads} torch threads, {os.cpu_count()} CPUs")

    photos = make_photos(cache / "photos", max(args.images, args.ray_images))
    options = {"batch_size": args.batch_size, "num_workers": args.workers, "shard_size": 4096}
    if args.images:
        small = cache / f"photos{args.images}"
        if not small.exists():
            small.mkdir()
            for p in photos[: args.images]:
                os.link(p, small / p.name)
        tf = image_transform(model.visual.config.image_size)
        pixels = torch.stack([tf(p) for p in photos[: args.images]])

        alone, job = [], []
        time_model_alone(model, pixels[: args.batch_size], args.batch_size)  # warm-up
        for _ in range(args.rounds):
            alone.append(time_model_alone(model, pixels, args.batch_size))
            job.append(time_job(small, checkpoint, cache / "out-local", **options))
        rate_alone, rate_job = args.images / statistics.median(alone), args.images / statistics.median(job)
        print(f"\n| {args.images} images | images/s |\n|---|---|")
        print(f"| model alone, pre-decoded tensors | {rate_alone:.1f} |")
        print(f"| pe embed into a dataset ({args.workers} loader process) | {rate_job:.1f} |")
        print(f"| ratio (goal >= 0.9) | {rate_job / rate_alone:.2f}x |")

    if args.ray_images:
        import ray

        big = cache / f"photos{args.ray_images}"
        if not big.exists():
            big.mkdir()
            for p in photos[: args.ray_images]:
                os.link(p, big / p.name)
        ray_checkpoint = cache / f"{args.ray_model}.safetensors"
        if not ray_checkpoint.exists():
            save(random_model(args.ray_model), ray_checkpoint)
        ray.init(
            num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False, configure_logging=False
        )
        local, remote = [], []
        for _ in range(max(1, args.rounds - 1)):
            local.append(time_job(big, ray_checkpoint, cache / "out-local", **options))
            remote.append(time_job(big, ray_checkpoint, cache / "out-ray", engine="ray", **options))
        ray.shutdown()
        rate_local = args.ray_images / statistics.median(local)
        rate_ray = args.ray_images / statistics.median(remote)
        print(f"\n| {args.ray_images} images, {args.ray_model} | images/s |\n|---|---|")
        print(f"| local engine | {rate_local:.1f} |")
        print(f"| ray engine (local Ray, {os.cpu_count()} CPUs) | {rate_ray:.1f} |")
        print(f"| ray overhead (goal <= 20%) | {100 * (rate_local / rate_ray - 1):.0f}% |")


if __name__ == "__main__":
    main()
