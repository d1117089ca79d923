"""Peak resident memory and time while loading, each library in a fresh process.

The child imports its library and runs a tiny forward pass first, so the code pages and allocator pools
every library needs anyway are in the baseline; then it resets the kernel's peak-RSS counter
(``/proc/self/clear_refs``), loads the model and reads ``VmHWM`` from ``/proc/self/status`` after the load,
after a first batch-1 pass (lazily mapped weights are all read by then) and after a pass at each larger
batch size. Every figure is the increase over the baseline, in MiB.

Run as a script it is the child: ``python _memory.py --lib ours --model NAME --file PATH``; it prints
one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

LIBS = ("ours", "ours-vision", "timm", "open_clip")


def _status(field: str) -> float:
    with open("/proc/self/status") as f:
        m = re.search(rf"^{field}:\s+(\d+) kB", f.read(), re.MULTILINE)
    return int(m.group(1)) / 1024 if m else float("nan")


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
        return True
    except OSError:
        return False


def _warm_up(lib: str, dtype) -> None:
    import torch
    import torch.nn.functional as F

    x = torch.randn(2, 3, 32, 32).to(dtype)
    F.layer_norm(F.conv2d(x, torch.randn(8, 3, 4, 4).to(dtype), stride=4).flatten(2), (64,))
    q = torch.randn(1, 2, 8, 16).to(dtype)
    F.scaled_dot_product_attention(q, q, q)
    if lib.startswith("ours"):
        from perception_encoder.configs import VisionConfig
        from perception_encoder.factory import create_model, load  # noqa: F401 (import its modules)
        from perception_encoder.layers.linear import linear

        linear(torch.randn(4, 16).to(dtype), torch.randn(8, 16).to(dtype), gelu=True)
        tiny = VisionConfig(image_size=32, patch_size=8, width=32, depth=1, heads=2, mlp_dim=64, output_dim=8)
        with torch.inference_mode():
            create_model(tiny, dtype=dtype).eval()(torch.randn(1, 3, 32, 32).to(dtype))
        create_model(tiny, device="meta")  # the loader builds on the meta device: import its kernels now
    else:
        import open_clip  # noqa: F401
        import timm  # noqa: F401


def _child(args: argparse.Namespace) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    _warm_up(args.lib, dtype)
    base = _status("VmRSS")
    reset = _reset_peak()
    t0 = time.perf_counter()
    if args.lib.startswith("ours"):
        from perception_encoder.factory import load

        model = load(args.model, checkpoint=args.file, vision_only=args.lib == "ours-vision", dtype=dtype)
    elif args.lib == "timm":
        sys.path.insert(0, str(Path(__file__).parent))
        from _peers import load_timm

        model = load_timm(args.model, Path(args.file), dtype)
    else:
        sys.path.insert(0, str(Path(__file__).parent))
        from _peers import load_open_clip

        model = load_open_clip(args.model, Path(args.file), dtype)
    load_s = time.perf_counter() - t0
    after_load = _status("VmHWM") - base
    weights = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()]) / 2**20
    visual = getattr(model, "visual", model)
    if args.lib.startswith("ours"):
        size = visual.config.image_size
    else:
        size = (visual.trunk if hasattr(visual, "trunk") else visual).patch_embed.img_size[0]
    encode = getattr(model, "encode_image", model)
    run: dict[str, float] = {}
    first_s = None
    # a short prompt, padded to the context: "a photo of a dog." (CLIP models read every weight)
    ids = torch.zeros(1, 32, dtype=torch.long)
    ids[0, :7] = torch.tensor([49406, 320, 1125, 539, 320, 1929, 49407])
    with torch.inference_mode():
        for bs in args.batches:
            t1 = time.perf_counter()
            encode(torch.randn(bs, 3, size, size).to(dtype))
            if hasattr(model, "encode_text") and first_s is None:
                model.encode_text(ids)
            if first_s is None:
                first_s = time.perf_counter() - t1
            run[str(bs)] = _status("VmHWM") - base
    return {
        "lib": args.lib,
        "model": args.model,
        "dtype": args.dtype,
        "baseline_mib": base,
        "peak_reset": reset,
        "load_s": load_s,
        "first_pass_s": first_s,
        "weights_mib": weights,
        "load_peak_mib": after_load,
        "run_peak_mib": run,
    }


def probe(
    lib: str,
    model: str,
    file: Path,
    *,
    dtype: str = "fp32",
    batches: tuple[int, ...] = (1,),
    threads: int = 2,
) -> dict:
    """Run the child for one library and return its figures (or ``{"error": ...}``)."""
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--lib",
        lib,
        "--model",
        model,
        "--file",
        str(file),
        "--dtype",
        dtype,
        "--threads",
        str(threads),
        "--batches",
        ",".join(map(str, batches)),
    ]
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith("{")]
    if res.returncode or not lines:
        tail = (res.stderr or res.stdout).strip().splitlines()[-3:]
        return {"lib": lib, "model": model, "dtype": dtype, "error": " | ".join(tail)}
    return json.loads(lines[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--lib", choices=LIBS, required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--file", required=True)
    ap.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--batches", type=lambda s: [int(x) for x in s.split(",")], default=[1])
    print(json.dumps(_child(ap.parse_args())))


if __name__ == "__main__":
    main()
