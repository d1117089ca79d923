"""Linear layers for inference, with the activation or the residual add fused in on CPUs.

On the CPU, ``F.linear`` runs float32 products through the BLAS PyTorch was built with; oneDNN's kernels
were faster at this model's shapes on the machines measured (an AVX-512 AMD EPYC: float32 products 20-40 %
faster, bfloat16 a few percent; an Intel Xeon with AMX: bfloat16 and float16 faster, float32 faster at most
row counts but not all, see ``benchmarks/RESULTS.md``), and oneDNN also takes the bias, an exact GELU
or a residual add as "post-ops" of the same kernel, which saves a pass over memory and a parallel region
per fusion. The fused kernel is used only where it is safe:

- x86-64 CPUs with PyTorch built with oneDNN (on ARM, PyTorch's oneDNN build goes through other libraries
  whose speed was not checked);
- CPU tensors of the same dtype, float32, or bfloat16 / float16 where the CPU supports them;
- no gradient is needed (``torch.no_grad`` / ``torch.inference_mode``, or nothing requires grad): the
  oneDNN op has no backward, training takes the ``F.linear`` path;
- not while tracing (``torch.compile`` fuses on its own; ONNX export needs standard operators);
- a contiguous weight (the op reads the weight's memory as row-major), and a bias of the weight's rows.

Everywhere else the same arithmetic runs as ``F.linear`` then ``F.gelu`` / ``+``. Results agree with the
unfused form to float rounding (float32: about 1e-7 relative). Set ``PE_ONEDNN_LINEAR=0`` in the
environment, or call ``set_onednn_linear(False)``, to always take the ``F.linear`` path.

The oneDNN ops are private to PyTorch (``torch.ops.mkldnn``) and may change between releases. At the first
use, each one (the fused linear, its residual-add form, weight packing, bfloat16, float16) runs once on tiny tensors
and is compared with the ``F.linear`` form; one that is missing, raises or disagrees is not used (logged at
debug level). If an op still fails at run time where ``F.linear`` works, the whole process switches to the
``F.linear`` path with one ``RuntimeWarning``; that call returns the plain result.

Packed weights: oneDNN reorders each weight into its blocked layout on every call; a packed weight is
that reordered copy, made once and kept. That saves 5-20 % on image batches and up to half the time where
the weights stream from memory (one short prompt through the text tower). ``PE_PACK_WEIGHTS`` (or
``set_weight_packing``) picks where:

- ``mapped`` (the default): only weights read from a memory-mapped checkpoint that nobody has modified.
  Once a weight is packed, its file pages are released (``pages.release_file_pages``), so memory holds
  the packed copy alone; the plain weight reads back from the file if anything touches it again (saving,
  exporting, training). That covers ``pe.load`` of a checkpoint in the dtype it is stored in (float32
  files as float32; ``dtype=torch.bfloat16`` / ``float16`` from a float32 file goes through the cast cache,
  ``weights/cast_cache.py``, a 16-bit file written once).
- ``all`` (or ``1``): every weight, at the price of a second copy of every linear weight in memory for as
  long as the model lives (weights cast while loading, built in memory or trained live in anonymous memory,
  which cannot be given back).
- ``off`` (or ``0``): never.

Packed copies follow the weights: a weight changed in place or replaced is packed again (or, in ``mapped``
mode, used unpacked, since its modified pages cannot be released). Results equal the unpacked path's.
"""

from __future__ import annotations

import contextlib
import logging
import os
import platform
import threading
import warnings
import weakref
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F

from ..pages import file_mappings, is_file_backed, release_file_pages

_FALSE = ("0", "false", "no", "off", "")


def _env_flag(name: str, default: str) -> bool:
    return os.environ.get(name, default).strip().lower() not in _FALSE


_ENABLED = _env_flag("PE_ONEDNN_LINEAR", "1")
_PACK_MODES = {
    "mapped": "mapped",
    "auto": "mapped",
    **dict.fromkeys(("all", "1", "true", "on", "yes"), "all"),
    **dict.fromkeys(_FALSE, "off"),
}


def _pack_mode(value: bool | str) -> str:
    if isinstance(value, bool):
        return "all" if value else "off"
    mode = _PACK_MODES.get(str(value).strip().lower())
    if mode is None:
        raise ValueError(f"weight packing: unknown mode {value!r}; use mapped, all or off")
    return mode


try:
    _PACK = _pack_mode(os.environ.get("PE_PACK_WEIGHTS", "mapped"))
except ValueError as e:
    raise ValueError(f"PE_PACK_WEIGHTS: {e}") from None


_log = logging.getLogger(__name__)
_X86 = platform.machine().lower() in ("x86_64", "amd64")


def _mkldnn() -> Any:
    """The namespace of oneDNN's private ops, ``torch.ops.mkldnn``, or ``None`` where they are not used
    (see the module docstring). Every use looks the ops up through here, so tests can stand in a namespace
    with an op missing or broken."""
    return torch.ops.mkldnn if _X86 and torch.backends.mkldnn.is_available() else None


class _Support(NamedTuple):
    """What passed the probe: the fused linear (no post-op and exact GELU), its residual-add form, packed
    weights, and all of those in bfloat16 and in float16."""

    fused: bool
    binary: bool
    packing: bool
    bf16: bool
    fp16: bool = False


_NONE = _Support(False, False, False, False, False)
_SUPPORT: _Support | None = None  # probed at first use, not at import
_PROBE_LOCK = threading.Lock()


def _check_ops(ops: Any, dtype: torch.dtype, *, binary: bool, packing: bool) -> None:
    """Run the ops asked for once on tiny tensors; raise unless they give the ``F.linear`` form's results
    to ``dtype``'s rounding."""
    g = torch.Generator().manual_seed(0)
    x, r, w, b = (
        torch.randn(shape, generator=g, dtype=torch.float32, device="cpu").to(dtype)
        for shape in ((2, 3, 16), (2, 3, 8), (8, 16), (8,))
    )
    y = F.linear(x.float(), w.float(), b.float())
    tol = 1e-5 if dtype == torch.float32 else 3e-2
    weight = ops._reorder_linear_weight(w, 16) if packing else w
    op = ops._linear_pointwise
    got = [(op(x, weight, b, "none", [], ""), y), (op(x, weight, b, "gelu", [], "none"), F.gelu(y))]
    if binary:
        got.append((op.binary(x, r, weight, b, "add"), r.float() + y))
    for out, want in got:
        if (
            out.shape != want.shape
            or out.dtype != dtype
            or not torch.allclose(out.float(), want, rtol=tol, atol=tol)
        ):
            raise ValueError("results differ from F.linear's")


def _passes(what: str, check: Callable[[], None]) -> bool:
    try:
        with torch.no_grad():
            check()
    except Exception as e:  # whatever a changed op does, it only means the op is not used
        _log.debug("oneDNN linear: %s not used (%s: %s)", what, type(e).__name__, e)
        return False
    return True


def _half_check(ops: Any, dtype: torch.dtype, binary: bool, packing: bool) -> None:
    supported = ops._is_mkldnn_bf16_supported if dtype == torch.bfloat16 else ops._is_mkldnn_fp16_supported
    if not supported():
        raise RuntimeError(f"this CPU has no {dtype} support in oneDNN")
    _check_ops(ops, dtype, binary=binary, packing=packing)


def _probe() -> _Support:
    """Which of oneDNN's ops work here (each feature is tried with those that passed before it)."""
    ops = _mkldnn()
    f32 = torch.float32
    if ops is None or not _passes("fused linear", lambda: _check_ops(ops, f32, binary=False, packing=False)):
        return _NONE
    binary = _passes("residual add", lambda: _check_ops(ops, f32, binary=True, packing=False))
    packing = _passes("packed weights", lambda: _check_ops(ops, f32, binary=binary, packing=True))
    bf16 = _passes("bfloat16", lambda: _half_check(ops, torch.bfloat16, binary, packing))
    fp16 = _passes("float16", lambda: _half_check(ops, torch.float16, binary, packing))
    return _Support(True, binary, packing, bf16, fp16)


def _probed() -> _Support:
    global _SUPPORT
    with _PROBE_LOCK:
        if _SUPPORT is None:
            _SUPPORT = _probe()
        return _SUPPORT


def _supported() -> _Support:
    return _SUPPORT or _probed()


def _give_up(error: BaseException) -> None:
    """A oneDNN op failed where ``F.linear`` worked: the plain path from now on, said once."""
    global _SUPPORT
    with _PROBE_LOCK:
        if _SUPPORT is None or not _SUPPORT.fused:
            return  # another thread got here first
        _SUPPORT = _NONE
    clear_packed_weights()  # never used again
    warnings.warn(
        f"oneDNN's fused linear failed ({type(error).__name__}: {error}); perception_encoder uses the plain "
        "F.linear path from now on in this process. Set PE_ONEDNN_LINEAR=0 to skip oneDNN from the start.",
        RuntimeWarning,
        stacklevel=3,
    )


def set_onednn_linear(enabled: bool) -> None:
    """Turn the fused oneDNN path on or off for the whole process (for comparisons and debugging)."""
    global _ENABLED
    _ENABLED = bool(enabled)


def onednn_linear_enabled() -> bool:
    """Whether the fused oneDNN path is available and switched on."""
    return _ENABLED and _supported().fused


def set_weight_packing(mode: bool | str) -> None:
    """Which weights to pack, for the whole process: ``"mapped"`` (the default), ``"all"`` (or ``True``)
    or ``"off"`` (or ``False``); see the module docstring for the trade. Packed copies already made stay
    until their weight dies or ``clear_packed_weights()``."""
    global _PACK
    _PACK = _pack_mode(mode)


def weight_packing_mode() -> str:
    """The packing mode in force: ``"mapped"``, ``"all"`` or ``"off"`` (``"off"`` where oneDNN's fused
    linear or its packed weights are not used)."""
    return _PACK if _ENABLED and _supported().packing else "off"


def packs_mapped_weights(dtype: torch.dtype) -> bool:
    """Whether the linear weights of a memory-mapped checkpoint stored in ``dtype`` get packed here (and
    their file pages given back): the packing mode is ``mapped`` or ``all``, and the CPU runs oneDNN's
    fused linear in ``dtype`` (float32, or bfloat16 / float16 where supported)."""
    if weight_packing_mode() not in ("mapped", "all"):
        return False
    return _runs(dtype, _supported())


def _runs(dtype: torch.dtype, support: _Support) -> bool:
    """Whether the fused linear takes tensors of ``dtype`` here."""
    if dtype == torch.float32:
        return support.fused
    return (dtype == torch.bfloat16 and support.bf16) or (dtype == torch.float16 and support.fp16)


@contextlib.contextmanager
def weight_packing(mode: bool | str = True) -> Iterator[None]:
    """``with weight_packing("all"): ...`` runs the block in that mode (process-wide, not per thread)."""
    before = _PACK
    set_weight_packing(mode)
    try:
        yield
    finally:
        set_weight_packing(before)


# (id of the weight's owner, address, shape) -> (weak reference to the owner, the weight's version and
# address when packed, the mode it was packed under, the packed copy or None where that mode leaves the
# weight unpacked). The owner is the tensor a view was taken of (``conv.weight.reshape(...)`` makes a new
# view object per call), else the weight itself.
_PACKED: dict[tuple[int, int, tuple[int, ...]], tuple[weakref.ref, int, int, str, torch.Tensor | None]] = {}
_PACK_LOCK = threading.Lock()


def clear_packed_weights() -> None:
    """Free every packed copy."""
    with _PACK_LOCK:
        _PACKED.clear()


def packed_weight_bytes() -> int:
    """Memory held by packed copies (their logical size)."""
    return sum(p.numel() * p.element_size() for *_, p in list(_PACKED.values()) if p is not None)


def _forget(key: tuple[int, int, tuple[int, ...]]) -> None:
    _PACKED.pop(key, None)


def _stamp(weight: torch.Tensor) -> tuple[int, int]:
    """(version, address): changes when the weight is modified in place or given new memory. Tensors made
    under ``torch.inference_mode`` keep no version; for them only a new address is noticed."""
    version = -1 if weight.is_inference() else weight._version
    return version, weight.data_ptr()


def _pack(weight: torch.Tensor, rows: int, mode: str) -> torch.Tensor | None:
    """The packed copy of ``weight`` under ``mode``, or ``None`` where the mode leaves it unpacked."""
    mappings = file_mappings() if mode == "mapped" else []  # read /proc/self/maps once per weight
    if mode == "mapped" and not is_file_backed(weight, mappings):
        return None
    # the layout is chosen for a row count; below ~9 rows oneDNN picks one that is 2x slower for any
    # larger batch (measured), so never hint fewer than 16
    packed = _mkldnn()._reorder_linear_weight(weight.detach(), max(16, rows))
    if mode == "mapped" and release_file_pages(weight, mappings) == 0:
        return None  # modified pages (or too small to release): a packed copy would be a second one
    return packed


def _packed(weight: torch.Tensor, rows: int) -> torch.Tensor:
    """The weight to hand to oneDNN: its packed copy (made on first use, remade when the weight changed),
    or the weight itself where the packing mode leaves it unpacked."""
    owner = weight if weight._base is None else weight._base
    key, stamp, mode = (id(owner), weight.data_ptr(), tuple(weight.shape)), _stamp(weight), _PACK
    entry = _PACKED.get(key)
    if entry is None or entry[0]() is not owner or entry[1:4] != (*stamp, mode):
        with _PACK_LOCK:
            entry = _PACKED.get(key)
            if entry is None or entry[0]() is not owner or entry[1:4] != (*stamp, mode):
                _PACKED.pop(key, None)  # free a stale copy before making the new one
                ref = weakref.ref(owner, lambda _, key=key: _forget(key))
                entry = (ref, *stamp, mode, _pack(weight, rows, mode))
                _PACKED[key] = entry
    return weight if entry[4] is None else entry[4]


def _tracing() -> bool:
    return torch.compiler.is_compiling() or torch.onnx.is_in_onnx_export() or torch.jit.is_tracing()


def _use_onednn(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> _Support | None:
    """What oneDNN may do for this call, or ``None`` where it takes the ``F.linear`` path."""
    if not _ENABLED or _tracing():
        return None
    support = _SUPPORT or _probed()
    if not support.fused:
        return None
    if x.device.type != "cpu" or weight.device.type != "cpu" or x.dtype != weight.dtype:
        return None
    if not _runs(x.dtype, support):
        return None
    if not weight.is_contiguous() or weight.ndim != 2 or x.ndim == 0 or x.numel() == 0:
        return None
    # F.linear broadcasts a bias that oneDNN rejects, and raises its own error on mismatched shapes
    if x.shape[-1] != weight.shape[1] or (bias is not None and bias.shape != weight.shape[:1]):
        return None
    if bias is not None and bias.dtype != weight.dtype:
        return None
    if torch.is_grad_enabled() and (
        x.requires_grad or weight.requires_grad or (bias is not None and bias.requires_grad)
    ):
        return None
    return support


def _onednn(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    gelu: bool,
    residual: torch.Tensor | None,
    packing: bool,
) -> torch.Tensor:
    op = _mkldnn()._linear_pointwise
    if packing and _PACK != "off":
        weight = _packed(weight, x.numel() // x.shape[-1])
    if residual is not None:
        return op.binary(x, residual, weight, bias, "add")
    if gelu:
        return op(x, weight, bias, "gelu", [], "none")  # "none": the exact (erf) GELU
    return op(x, weight, bias, "none", [], "")


def _plain(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    gelu: bool,
    residual: torch.Tensor | None,
) -> torch.Tensor:
    y = F.linear(x, weight, bias)
    if gelu:
        y = F.gelu(y)
    if residual is not None:
        y = residual + y
    return y


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
    support = _use_onednn(x, weight, bias)
    if support is not None and (
        residual is None
        or (
            support.binary
            and residual.dtype == x.dtype
            and residual.is_contiguous()
            and residual.shape == (*x.shape[:-1], weight.shape[0])
        )
    ):
        try:
            return _onednn(x, weight, bias, gelu, residual, support.packing)
        except (RuntimeError, NotImplementedError, AttributeError, TypeError) as e:
            failure = e
        y = _plain(x, weight, bias, gelu, residual)  # wrong inputs raise F.linear's error, oneDNN stays on
        _give_up(failure)
        return y
    return _plain(x, weight, bias, gelu, residual)
