"""Linear layers for inference, with the activation or the residual add fused in on CPUs.

On the CPU, ``F.linear`` runs float32 products through the BLAS PyTorch was built with; oneDNN's kernels
were faster at this model's shapes on the machine measured (an AVX-512 AMD EPYC: float32 products 20-40 %
faster, bfloat16 a few percent, see ``benchmarks/RESULTS.md``), and oneDNN also takes the bias, an exact GELU
or a residual add as "post-ops" of the same kernel, which saves a pass over memory and a parallel region
per fusion. The fused kernel is used only where it is safe:

- CPU tensors of the same dtype, float32 or bfloat16 (the latter only where the CPU supports it);
- no gradient is needed (``torch.no_grad`` / ``torch.inference_mode``, or nothing requires grad): the
  oneDNN op has no backward, training takes the ``F.linear`` path;
- not while tracing (``torch.compile`` fuses on its own; ONNX export needs standard operators);
- a contiguous weight (the op reads the weight's memory as row-major).

Everywhere else the same arithmetic runs as ``F.linear`` then ``F.gelu`` / ``+``. Results agree with the
unfused form to float rounding (float32: about 1e-7 relative). Set ``PE_ONEDNN_LINEAR=0`` in the
environment, or call ``set_onednn_linear(False)``, to always take the ``F.linear`` path.

Opt-in, packed weights (``PE_PACK_WEIGHTS=1`` or ``set_weight_packing(True)``): oneDNN reorders each weight
into its blocked layout on every call; with packing on, the reordered copy is made once per weight and
kept. That saves 5-20 % on image batches and up to half the time where the weights stream from memory
(one short prompt through the text tower), at the price of a second copy of every linear weight in memory
for as long as the model lives. Packed copies follow the weights: a weight changed in place or replaced
is packed again.
"""

from __future__ import annotations

import contextlib
import os
import platform
import threading
import weakref
from collections.abc import Iterator

import torch
import torch.nn.functional as F


def _env_flag(name: str, default: str) -> bool:
    return os.environ.get(name, default).strip().lower() not in ("0", "false", "no", "off", "")


_ENABLED = _env_flag("PE_ONEDNN_LINEAR", "1")
_PACK = _env_flag("PE_PACK_WEIGHTS", "0")


def _probe() -> tuple[bool, bool]:
    """Whether oneDNN's fused linear exists here, and whether it supports bfloat16 on this CPU.

    x86-64 only: that is where it was measured (on ARM, PyTorch's oneDNN build goes through other
    libraries whose speed was not checked)."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False, False
    try:
        op = torch.ops.mkldnn._linear_pointwise
        ok = torch.backends.mkldnn.is_available() and op is not None
    except (AttributeError, RuntimeError):
        return False, False
    try:
        bf16 = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        bf16 = False
    return ok, bf16


_AVAILABLE, _BF16 = _probe()


def set_onednn_linear(enabled: bool) -> None:
    """Turn the fused oneDNN path on or off for the whole process (for comparisons and debugging)."""
    global _ENABLED
    _ENABLED = bool(enabled)


def onednn_linear_enabled() -> bool:
    """Whether the fused oneDNN path is available and switched on."""
    return _ENABLED and _AVAILABLE


def set_weight_packing(enabled: bool) -> None:
    """Opt in (or out) of packed weights for the whole process; see the module docstring for the trade.
    Turning it off keeps the packed copies already made until ``clear_packed_weights()``."""
    global _PACK
    _PACK = bool(enabled)


def weight_packing_enabled() -> bool:
    return _PACK and _ENABLED and _AVAILABLE


@contextlib.contextmanager
def weight_packing(enabled: bool = True) -> Iterator[None]:
    """``with weight_packing(): ...`` runs the block with packing on (process-wide, not per thread)."""
    before = _PACK
    set_weight_packing(enabled)
    try:
        yield
    finally:
        set_weight_packing(before)


# id(weight) -> (weak reference to the weight, its version and address when packed, the packed copy)
_PACKED: dict[int, tuple[weakref.ref, int, int, torch.Tensor]] = {}
_PACK_LOCK = threading.Lock()


def clear_packed_weights() -> None:
    """Free every packed copy."""
    with _PACK_LOCK:
        _PACKED.clear()


def packed_weight_bytes() -> int:
    """Memory held by packed copies (their logical size)."""
    return sum(p.numel() * p.element_size() for _, _, _, p in list(_PACKED.values()))


def _forget(key: int) -> None:
    _PACKED.pop(key, None)


def _stamp(weight: torch.Tensor) -> tuple[int, int]:
    """(version, address): changes when the weight is modified in place or given new memory. Tensors made
    under ``torch.inference_mode`` keep no version; for them only a new address is noticed."""
    version = -1 if weight.is_inference() else weight._version
    return version, weight.data_ptr()


def _packed(weight: torch.Tensor, rows: int) -> torch.Tensor:
    """The packed copy of ``weight`` (made on first use, remade when the weight changed)."""
    key, stamp = id(weight), _stamp(weight)
    entry = _PACKED.get(key)
    if entry is not None and entry[0]() is weight and entry[1:3] == stamp:
        return entry[3]
    with _PACK_LOCK:
        entry = _PACKED.get(key)
        if entry is not None and entry[0]() is weight and entry[1:3] == stamp:
            return entry[3]
        packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach(), max(1, rows))
        ref = weakref.ref(weight, lambda _, key=key: _forget(key))
        _PACKED[key] = (ref, *stamp, packed)
        return packed


def _tracing() -> bool:
    return torch.compiler.is_compiling() or torch.onnx.is_in_onnx_export() or torch.jit.is_tracing()


def _use_onednn(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> bool:
    if not (_ENABLED and _AVAILABLE) or _tracing():
        return False
    if x.device.type != "cpu" or weight.device.type != "cpu" or x.dtype != weight.dtype:
        return False
    if x.dtype != torch.float32 and not (x.dtype == torch.bfloat16 and _BF16):
        return False
    if bias is not None and bias.dtype != weight.dtype:
        return False
    if not weight.is_contiguous() or weight.ndim != 2 or x.numel() == 0:
        return False
    if torch.is_grad_enabled() and (
        x.requires_grad or weight.requires_grad or (bias is not None and bias.requires_grad)
    ):
        return False
    return True


def linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    gelu: bool = False,
    residual: torch.Tensor | None = None,
) -> torch.Tensor:
    """``F.linear(x, weight, bias)``, then exact GELU if ``gelu``, then ``+ residual`` if given.

    ``x``: ``(..., in)``; ``weight``: ``(out, in)``; ``residual``: same shape as the output ``(..., out)``.
    ``gelu`` and ``residual`` cannot be combined (no caller needs it). Fused into one oneDNN kernel on the
    CPU in inference (see the module docstring), else computed op by op.
    """
    if gelu and residual is not None:
        raise ValueError("linear: gelu and residual cannot be combined")
    fast = _use_onednn(x, weight, bias) and (
        residual is None
        or (
            residual.dtype == x.dtype
            and residual.is_contiguous()
            and residual.shape == (*x.shape[:-1], weight.shape[0])
        )
    )
    if fast:
        op = torch.ops.mkldnn._linear_pointwise
        if _PACK:
            weight = _packed(weight, x.numel() // max(1, x.shape[-1]))
        if residual is not None:
            return op.binary(x, residual, weight, bias, "add")
        if gelu:
            return op(x, weight, bias, "gelu", [], "none")  # "none": the exact (erf) GELU
        return op(x, weight, bias, "none", [], "")
    y = F.linear(x, weight, bias)
    if gelu:
        y = F.gelu(y)
    if residual is not None:
        y = residual + y
    return y
