"""FLOP counts of a forward pass, and the practical ceiling: a large matrix product's FLOP/s.

Counts are multiply-adds x 2 of the matrix products (projections, MLPs, attention scores and values);
element-wise work (norms, GELU, RoPE, softmax) is not counted, as is usual.
"""

from __future__ import annotations

import statistics
import time

import torch

from perception_encoder.configs import TextConfig, VisionConfig


def _block_flops(tokens: int, width: int, mlp: int, attn_keys: float) -> float:
    proj = 2 * tokens * width * (3 * width + width + 2 * mlp)
    attention = 2 * 2 * tokens * attn_keys * width  # q k^T and p v, all heads together
    return proj + attention


def image_flops(config: VisionConfig, image_size: int | None = None) -> float:
    """FLOPs of one image through the vision tower (patch embedding to projection)."""
    size = image_size or config.image_size
    grid = size // config.patch_size
    patches = grid * grid
    tokens = patches + int(config.use_cls_token)
    w = config.width
    total = 2 * patches * 3 * config.patch_size**2 * w
    total += config.depth * _block_flops(tokens, w, config.mlp_dim, tokens)
    if config.pool_type == "attn":
        total += 2 * w * w + 2 * tokens * w * 2 * w + 2 * 2 * tokens * w + 2 * w * w + 2 * 2 * w * 4 * w
    if config.output_dim:
        total += 2 * w * config.output_dim
    return float(total)


def text_flops(config: TextConfig, length: int) -> float:
    """FLOPs of one sequence of ``length`` tokens through the text tower (causal: half the scores)."""
    w = config.width
    total = config.depth * _block_flops(length, w, config.mlp_dim, (length + 1) / 2)
    return float(total + 2 * w * config.output_dim)


def matmul_ceiling(dtype: torch.dtype, *, n: int = 2048, rounds: int = 7) -> dict[str, float]:
    """FLOP/s of an ``n x n`` by ``n x n`` product, by PyTorch's default kernel (``torch.mm``) and by
    oneDNN (the kernel our CPU linear layers use), interleaved, median of ``rounds``. Keys: ``mm``,
    ``onednn`` (absent where oneDNN is unavailable) and ``best``."""
    a = torch.randn(n, n).to(dtype)
    b = torch.randn(n, n).to(dtype)
    fns = {"mm": lambda: torch.mm(a, b)}
    try:
        op = torch.ops.mkldnn._linear_pointwise
        op(a, b, None, "none", [], "")
        fns["onednn"] = lambda: op(a, b, None, "none", [], "")
    except (AttributeError, RuntimeError):
        pass
    times: dict[str, list[float]] = {k: [] for k in fns}
    with torch.inference_mode():
        for f in fns.values():
            f()
        for _ in range(rounds):
            for k, f in fns.items():
                t0 = time.perf_counter()
                f()
                times[k].append(time.perf_counter() - t0)
    flops = 2.0 * n**3
    out = {k: flops / statistics.median(v) for k, v in times.items()}
    out["best"] = max(out.values())
    return out


def linear_is_onednn() -> bool:
    """Whether this package's CPU linear layers run on oneDNN here (else on PyTorch's default BLAS)."""
    from perception_encoder.layers.linear import onednn_linear_enabled

    return onednn_linear_enabled()
