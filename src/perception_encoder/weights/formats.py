"""Checkpoint layouts met in the wild, and exact conversions between them.

Four layouts (SPEC §7):

- ``"native"``: this package's own ``state_dict()``. A vision tower has the reference vision keys
  (``conv1.weight``, ``class_embedding``, ``positional_embedding``, ``ln_pre.*``,
  ``transformer.resblocks.N.*``, ``ln_post.*``, ``attn_pool.*``, ``proj``); a CLIP model has
  ``visual.<vision keys>``, ``text.<text keys>`` and ``logit_scale``.
- ``"reference"``: the released ``.pt`` files. Vision towers as native; CLIP checkpoints keep the text keys
  at the top level (``token_embedding.weight``, ``positional_embedding``, ``transformer.*``, ``ln_final.*``,
  ``text_projection``) beside ``visual.*`` and ``logit_scale``.
- ``"timm"``: timm's ``vit_pe_*`` towers (``patch_embed.proj``, ``cls_token``, ``pos_embed``, ``blocks.N.*``,
  ``attn_pool.{latent,q,kv,...}``, ``head.weight = proj.T`` with a zero ``head.bias``). Vision only.
- ``"open_clip"``: open_clip's PE-Core models: ``visual.trunk.<timm keys>``, ``text.<text keys>``,
  ``logit_scale``. CLIP only.

Every conversion goes through the native layout: ``to_native`` then ``from_native``. Both are exact
(tensors are renamed, reshaped, split or concatenated, never recomputed), so round trips give equal tensors.
Keys a layout does not know are kept under their own name, so a strict load reports them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Literal

import torch

from ..errors import CheckpointError

StateDict = dict[str, torch.Tensor]
Format = Literal["reference", "timm", "open_clip", "native"]
FORMATS: tuple[str, ...] = ("reference", "timm", "open_clip", "native")

# Containers that wrap a state dict in training checkpoints, tried in this order.
_WRAPPERS = ("state_dict", "weights", "model", "module")
# Prefixes added by DistributedDataParallel and torch.compile.
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")
# Buffers some libraries persist that are recomputed here from the config (RoPE tables, causal masks).
_DERIVED = re.compile(r"(^|\.)(attn_mask|rope\.(pos_embed|bands|freqs)|rope\.rope\.freqs)$")
# Top-level keys of the reference CLIP checkpoint that belong to the text tower.
_TEXT_EXACT = ("positional_embedding", "text_projection")
_TEXT_PREFIXES = ("token_embedding.", "transformer.", "ln_final.")


# --- unwrapping ----------------------------------------------------------------------------------------


def unwrap_state_dict(obj: Any, source: str = "checkpoint") -> StateDict:
    """The flat ``{name: tensor}`` inside a loaded checkpoint.

    Descends into ``state_dict`` / ``weights`` / ``model`` / ``module`` wrappers, strips ``module.`` and
    ``_orig_mod.`` prefixes and drops non-tensor entries (epoch counters, optimiser metadata).
    ``source`` names the input in error messages.
    """
    for _ in range(4):  # wrappers nest at most a few levels deep
        if not isinstance(obj, Mapping):
            break
        inner = next((obj[k] for k in _WRAPPERS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{source}: expected a dict of tensors, found {type(obj).__name__}")
    out: StateDict = {}
    for key, value in obj.items():
        if not isinstance(value, torch.Tensor):
            continue
        key = str(key)
        stripped = True
        while stripped:
            stripped = False
            for prefix in _WRAPPER_PREFIXES:
                if key.startswith(prefix):
                    key, stripped = key[len(prefix) :], True
        out[key] = value
    if not out:
        raise CheckpointError(f"{source}: holds no tensors (keys: {_few(list(obj))})")
    return out


# --- detection -----------------------------------------------------------------------------------------


def detect_format(state_dict: Mapping[str, Any]) -> Format:
    """Which layout a state dict uses: ``"reference"``, ``"timm"``, ``"open_clip"`` or ``"native"``.

    A vision-only dict in our layout is reported as ``"reference"`` (the two are the same for vision
    towers); ``"native"`` means a CLIP dict with ``text.*`` keys beside ``visual.*``.
    Raises ``CheckpointError`` for a dict in none of them.
    """
    sd = unwrap_state_dict(state_dict)
    keys = set(sd)
    if any(k.startswith("visual.trunk.") for k in keys):
        return "open_clip"
    if "patch_embed.proj.weight" in keys or any(k.startswith("blocks.") for k in keys):
        return "timm"
    if "visual.conv1.weight" in keys:
        return "native" if any(k.startswith("text.") for k in keys) else "reference"
    if "conv1.weight" in keys:
        return "reference"
    raise CheckpointError(
        f"unrecognised checkpoint layout (keys: {_few(sorted(keys))}); expected a Perception Encoder "
        "checkpoint in the reference, timm, open_clip or this package's layout"
    )


def is_clip(native: Mapping[str, torch.Tensor]) -> bool:
    """Whether a native-layout dict holds a CLIP model (a text tower beside ``visual.*``)."""
    return any(k.startswith("text.") for k in native)


# --- vision tower: reference <-> timm ------------------------------------------------------------------

# (reference prefix, timm prefix) for keys renamed without changing the tensor
_VISION_RENAMES = (
    ("conv1.", "patch_embed.proj."),
    ("ln_pre.", "norm_pre."),
    ("ln_post.", "norm."),
    ("attn_pool.attn.out_proj.", "attn_pool.proj."),
    ("attn_pool.layernorm.", "attn_pool.norm."),
    ("attn_pool.mlp.c_fc.", "attn_pool.mlp.fc1."),
    ("attn_pool.mlp.c_proj.", "attn_pool.mlp.fc2."),
)
_BLOCK_RENAMES = (
    ("ln_1.", "norm1."),
    ("attn.in_proj_weight", "attn.qkv.weight"),
    ("attn.in_proj_bias", "attn.qkv.bias"),
    ("attn.out_proj.", "attn.proj."),
    ("ln_2.", "norm2."),
    ("mlp.c_fc.", "mlp.fc1."),
    ("mlp.c_proj.", "mlp.fc2."),
    ("ls_1.gamma", "gamma_1"),
    ("ls_2.gamma", "gamma_2"),
)
_REF_BLOCK = re.compile(r"^transformer\.resblocks\.(\d+)\.(.+)$")
_TIMM_BLOCK = re.compile(r"^blocks\.(\d+)\.(.+)$")


def _rename(key: str, table: tuple[tuple[str, str], ...], forward: bool) -> str | None:
    for a, b in table:
        src, dst = (a, b) if forward else (b, a)
        if key == src or (src.endswith(".") and key.startswith(src)):
            return dst + key[len(src) :]
    return None


def vision_to_timm(vision: Mapping[str, torch.Tensor]) -> StateDict:
    """Reference/native vision keys -> timm ``vit_pe_*`` keys (exact; ``head.bias`` is added as zeros)."""
    out: StateDict = {}
    for key, t in vision.items():
        m = _REF_BLOCK.match(key)
        if m:
            sub = _rename(m.group(2), _BLOCK_RENAMES, forward=True)
            out[f"blocks.{m.group(1)}.{sub}" if sub else key] = t
        elif key == "class_embedding":
            out["cls_token"] = t.reshape(1, 1, -1)
        elif key == "positional_embedding":
            out["pos_embed"] = t.unsqueeze(0)
        elif key == "attn_pool.probe":
            out["attn_pool.latent"] = t
        elif key in ("attn_pool.attn.in_proj_weight", "attn_pool.attn.in_proj_bias"):
            kind = key.rsplit("_", 1)[1]  # "weight" / "bias"
            width = t.shape[0] // 3
            # clones: the two halves must not share storage (safetensors refuses shared tensors)
            out[f"attn_pool.q.{kind}"] = t[:width].clone()
            out[f"attn_pool.kv.{kind}"] = t[width:].clone()
        elif key == "proj":
            out["head.weight"] = t.t().contiguous()
            out["head.bias"] = torch.zeros(t.shape[1], dtype=t.dtype, device=t.device)
        else:
            out[_rename(key, _VISION_RENAMES, forward=True) or key] = t
    return out


def vision_from_timm(timm_sd: Mapping[str, torch.Tensor], source: str = "checkpoint") -> StateDict:
    """timm ``vit_pe_*`` keys -> reference/native vision keys (exact inverse of ``vision_to_timm``).

    A non-zero ``head.bias`` cannot be represented (PE's projection has no bias) and raises
    ``CheckpointError``.
    """
    out: StateDict = {}
    for key, t in timm_sd.items():
        m = _TIMM_BLOCK.match(key)
        if m:
            sub = _rename(m.group(2), _BLOCK_RENAMES, forward=False)
            out[f"transformer.resblocks.{m.group(1)}.{sub}" if sub else key] = t
        elif key == "cls_token":
            out["class_embedding"] = t.reshape(-1)
        elif key == "pos_embed":
            out["positional_embedding"] = t.squeeze(0) if t.ndim == 3 else t
        elif key == "attn_pool.latent":
            out["attn_pool.probe"] = t
        elif key in ("attn_pool.q.weight", "attn_pool.q.bias", "attn_pool.kv.weight", "attn_pool.kv.bias"):
            kind = key.rsplit(".", 1)[1]
            q, kv = timm_sd.get(f"attn_pool.q.{kind}"), timm_sd.get(f"attn_pool.kv.{kind}")
            if q is None or kv is None:
                out[key] = t  # half of a pair: left for the strict loader to report
            elif key.startswith("attn_pool.q."):
                out[f"attn_pool.attn.in_proj_{kind}"] = torch.cat([q, kv], dim=0)
        elif key == "head.weight":
            out["proj"] = t.t().contiguous()
        elif key == "head.bias":
            if not t.is_meta and torch.count_nonzero(t):
                raise CheckpointError(
                    f"{source}: timm checkpoint has a non-zero head.bias; PE's projection has no bias, "
                    "so this head (a fine-tuned classifier?) cannot be loaded into a PE model"
                )
        else:
            out[_rename(key, _VISION_RENAMES, forward=False) or key] = t
    return out


# --- whole checkpoints ---------------------------------------------------------------------------------


def _strip(sd: Mapping[str, torch.Tensor], prefix: str) -> StateDict:
    return {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}


def _is_reference_text_key(key: str) -> bool:
    return key in _TEXT_EXACT or key.startswith(_TEXT_PREFIXES)


def to_native(state_dict: Mapping[str, Any], fmt: str | None = None, source: str = "checkpoint") -> StateDict:
    """Any supported layout -> this package's layout (detected when ``fmt`` is ``None``).

    CLIP checkpoints give ``visual.*``, ``text.*`` and ``logit_scale``; vision-only checkpoints (and CLIP
    files that carry no text tower) give bare vision keys.
    """
    sd = unwrap_state_dict(state_dict, source)
    fmt = fmt or detect_format(sd)
    if fmt not in FORMATS:
        raise ValueError(f"unknown checkpoint format {fmt!r}; expected one of {', '.join(FORMATS)}")
    sd = {k: v for k, v in sd.items() if not _DERIVED.search(k)}
    if fmt == "timm":
        return vision_from_timm(sd, source)
    if fmt == "open_clip":
        vision = vision_from_timm(_strip(sd, "visual.trunk."), source)
        text = _strip(sd, "text.")
        rest = {k: v for k, v in sd.items() if not k.startswith(("visual.trunk.", "text."))}
        return _assemble(vision, text, rest)
    if not any(k.startswith("visual.") for k in sd):
        return dict(sd)  # vision-only, reference == native
    vision = _strip(sd, "visual.")
    if fmt == "native":
        text = _strip(sd, "text.")
        rest = {k: v for k, v in sd.items() if not k.startswith(("visual.", "text."))}
    else:
        text = {k: v for k, v in sd.items() if _is_reference_text_key(k)}
        rest = {k: v for k, v in sd.items() if not k.startswith("visual.") and not _is_reference_text_key(k)}
    return _assemble(vision, text, rest)


def _assemble(vision: StateDict, text: StateDict, rest: StateDict) -> StateDict:
    """Native layout from parts; ``rest`` holds ``logit_scale`` and any unknown top-level keys."""
    if not text:  # a CLIP file without its text tower is a vision checkpoint
        rest = {k: v for k, v in rest.items() if k != "logit_scale"}
        return {**vision, **rest}
    out = {f"visual.{k}": v for k, v in vision.items()}
    out.update({f"text.{k}": v for k, v in text.items()})
    out.update(rest)
    return out


def vision_part(native: Mapping[str, torch.Tensor]) -> StateDict:
    """The vision tower of a native dict (a CLIP dict's ``visual.*``, or the whole vision-only dict)."""
    return _strip(native, "visual.") if is_clip(native) else dict(native)


def from_native(native: Mapping[str, torch.Tensor], to: str, source: str = "checkpoint") -> StateDict:
    """This package's layout -> ``to`` (``"reference"``, ``"timm"``, ``"open_clip"`` or ``"native"``).

    ``"timm"`` holds a vision tower only: for a CLIP dict it keeps ``visual.*`` and drops the text tower.
    ``"open_clip"`` holds CLIP models only: a vision-only dict raises ``CheckpointError``.
    """
    if to not in FORMATS:
        raise ValueError(f"unknown checkpoint format {to!r}; expected one of {', '.join(FORMATS)}")
    if to == "native":
        return dict(native)
    clip = is_clip(native)
    if to == "timm":
        return vision_to_timm(vision_part(native))
    if to == "open_clip":
        if not clip:
            raise CheckpointError(
                f"{source}: holds a vision tower only; the open_clip layout is for CLIP models "
                "(convert a vision tower to 'timm' or 'reference' instead)"
            )
        out = {f"visual.trunk.{k}": v for k, v in vision_to_timm(_strip(native, "visual.")).items()}
        out.update({k: v for k, v in native.items() if not k.startswith("visual.")})
        return out
    # reference
    if not clip:
        return dict(native)
    return {(k[len("text.") :] if k.startswith("text.") else k): v for k, v in native.items()}


def convert_state_dict(
    state_dict: Mapping[str, Any], to: str, *, src: str | None = None, source: str = "checkpoint"
) -> StateDict:
    """Convert between layouts: ``from_native(to_native(state_dict, src), to)``."""
    return from_native(to_native(state_dict, src, source), to, source)


def _few(keys: list[str], n: int = 5) -> str:
    shown = ", ".join(keys[:n])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > n else "")
