"""bf16 image-encoding throughput on a GPU: perception_encoder against timm (and open_clip) on the same weights.

    python benchmarks/gpu_bench.py                      # B16 and L14, batch 1, 16 and 64, bf16
    python benchmarks/gpu_bench.py --compile            # also torch.compile (opt-in path) for ours
    python benchmarks/gpu_bench.py --device cpu --models PE-Core-B16-224 --batches 1 --rounds 2  # smoke test

Self-contained: random weights are made in memory (no files, no network) and handed to timm / open_clip
through this package's exact layout conversion. Timing: CUDA events around each call, contestants
interleaved (order rotated every round), median of ``--rounds``; the cosine similarity of each bf16
output to our float32 output (TF32 off) checks the numbers. Prints a markdown table (paste it into
``benchmarks/RESULTS.md``) and, with ``--json``, every figure. Runs in a few minutes on one GPU.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _checkpoints import random_model  # noqa: E402
from _flops import image_flops  # noqa: E402
from _peers import OPEN_CLIP_NAMES, TIMM_NAMES  # noqa: E402

from perception_encoder.configs import get_model_info  # noqa: E402
from perception_encoder.weights.formats import from_native  # noqa: E402


def build(name: str, with_open_clip: bool):
    """Ours (CLIP, float32 on the CPU, non-trivial random weights), timm's tower and optionally open_clip."""
    import timm

    ours = random_model(name, seed=0)
    native = ours.state_dict()
    vision = {k[len("visual.") :]: v for k, v in native.items() if k.startswith("visual.")}
    tm = timm.create_model(TIMM_NAMES[name], pretrained=False).eval()
    tm.load_state_dict(from_native(vision, "timm"), strict=True)
    oc = None
    if with_open_clip:
        import open_clip

        oc = open_clip.create_model(OPEN_CLIP_NAMES[name], pretrained=None).eval()
        missing, unexpected = oc.load_state_dict(from_native(native, "open_clip"), strict=False)
        if unexpected or any("attn_mask" not in k for k in missing):
            raise RuntimeError(
                f"open_clip layout mismatch: missing {missing[:3]}, unexpected {unexpected[:3]}"
            )
    return ours, tm, oc


def timed(fns: dict, device: torch.device, rounds: int) -> dict[str, float]:
    """Median seconds per call of each function, interleaved and rotated per round."""
    names = list(fns)
    times: dict[str, list[float]] = {n: [] for n in names}
    cuda = device.type == "cuda"
    for f in fns.values():  # warm-up (kernel selection, compilation, allocator)
        f()
        f()
    if cuda:
        torch.cuda.synchronize(device)
    for r in range(rounds):
        for n in names[r % len(names) :] + names[: r % len(names)]:
            if cuda:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fns[n]()
                end.record()
                end.synchronize()
                times[n].append(start.elapsed_time(end) / 1e3)
            else:
                t0 = time.perf_counter()
                fns[n]()
                times[n].append(time.perf_counter() - t0)
    return {n: statistics.median(v) for n, v in times.items()}


def peak_tflops(device: torch.device, dtype: torch.dtype, n: int = 8192) -> float:
    """A large matrix product's TFLOP/s on this device: the practical ceiling."""
    if device.type != "cuda":
        n = 1024
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    t = timed({"mm": lambda: a @ b}, device, 10)["mm"]
    return 2 * n**3 / t / 1e12


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="PE-Core-B16-224,PE-Core-L14-336")
    ap.add_argument("--batches", default="1,16,64")
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--no-open-clip", action="store_true", help="time ours against timm only")
    ap.add_argument("--compile", action="store_true", help="also time torch.compile(ours.visual)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            sys.exit("no CUDA device: use --device cpu for a smoke test")
        torch.backends.cuda.matmul.allow_tf32 = False  # float32 references stay float32
        torch.backends.cudnn.allow_tf32 = False
    bf16 = torch.bfloat16
    info = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "peak_bf16_tflops": round(peak_tflops(device, bf16), 1),
    }
    print(json.dumps(info), flush=True)
    rows = []
    for name in [m.strip() for m in args.models.split(",") if m.strip()]:
        ours, tm, oc = build(name, not args.no_open_clip)
        size = get_model_info(name).config.vision.image_size
        flops = image_flops(get_model_info(name).config.vision)
        ours32 = ours.visual.to(device)
        with torch.inference_mode():
            refs = {
                b: ours32(
                    torch.randn(b, 3, size, size, generator=torch.Generator().manual_seed(b)).to(device)
                )
                for b in [int(x) for x in args.batches.split(",")]
            }
        ours_v = ours.visual.to(bf16)
        tm = tm.to(device, bf16)
        contestants = {"ours": ours_v, "timm": tm}
        if oc is not None:
            contestants["open_clip"] = oc.visual.to(device, bf16)
        if args.compile:
            contestants["ours (compiled)"] = torch.compile(ours_v)
        for batch, ref in refs.items():
            x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(batch)).to(
                device, bf16
            )
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            with torch.inference_mode():
                secs = timed(
                    {k: (lambda m=m, x=x: m(x)) for k, m in contestants.items()}, device, args.rounds
                )
                cos = {
                    k: F.cosine_similarity(m(x).float(), ref.float(), dim=-1).min().item()
                    for k, m in contestants.items()
                }
            row = {
                "model": name,
                "batch": batch,
                "per_s": {k: batch / s for k, s in secs.items()},
                "cos": cos,
            }
            row["tflops_ours"] = flops * batch / secs["ours"] / 1e12
            rows.append(row)
            rates = ", ".join(f"{k} {v:.1f}/s" for k, v in row["per_s"].items())
            print(f"{name} b{batch}: {rates}; ours/timm {secs['timm'] / secs['ours']:.2f}x", flush=True)
        del ours, tm, oc, contestants, ours_v, ours32
        if device.type == "cuda":
            torch.cuda.empty_cache()
    names = list(rows[0]["per_s"]) if rows else []
    print(
        f"\n{info['device']}, torch {info['torch']}, bf16 matmul ceiling {info['peak_bf16_tflops']} TFLOP/s\n"
    )
    head = (
        "| model | batch | "
        + " | ".join(f"{n} img/s" for n in names)
        + " | ours/timm | ours TFLOP/s | min cos vs fp32 |"
    )
    print(head)
    print("|" + "---|" * (len(names) + 5))
    for r in rows:
        rates = " | ".join(f"{r['per_s'][n]:.1f}" for n in names)
        print(
            f"| {r['model']} | {r['batch']} | {rates} | {r['per_s']['ours'] / r['per_s']['timm']:.2f} "
            f"| {r['tflops_ours']:.0f} | {min(r['cos'].values()):.5f} |"
        )
    if args.json:
        args.json.write_text(json.dumps({"machine": info, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
