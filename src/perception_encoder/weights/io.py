"""Reading and writing checkpoint files, inferring a config from shapes, and strict low-memory loading.

- ``read_state_dict``: ``.pt`` / ``.pth`` / ``.bin`` (``torch.load`` with ``weights_only=True``, memory-mapped)
  and ``.safetensors``; bad files raise ``CheckpointError`` naming the file and what is wrong.
- ``save_safetensors`` / ``write_checkpoint``: weights plus the model config (JSON beside the file as
  ``<stem>.json`` and, for safetensors, in the file's metadata); ``read_config`` reads it back.
- ``infer_config``: a ``VisionConfig`` / ``CLIPConfig`` from tensor shapes; ``registered_matches`` finds the
  registered models a config describes.
- ``load_into``: builds a model on the meta device and assigns the checkpoint's tensors to it after a
  key-and-shape check, so a full random-weight copy never exists beside the loaded one.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import re
import struct
import tempfile
import warnings
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..configs import (
    CLIPConfig,
    ModelConfig,
    TextConfig,
    VisionConfig,
    config_from_dict,
    config_to_json,
    get_model_info,
    list_models,
)
from ..errors import CheckpointError
from ..pages import file_mappings, release_file_pages
from .formats import StateDict, is_clip, to_native, unwrap_state_dict, vision_part

TORCH_SUFFIXES = (".pt", ".pth", ".bin")
SAFETENSORS_SUFFIX = ".safetensors"
CHECKPOINT_SUFFIXES = (*TORCH_SUFFIXES, SAFETENSORS_SUFFIX)
# Key of the model config (JSON) in a safetensors file's metadata.
CONFIG_METADATA_KEY = "pe_config"


# --- reading -------------------------------------------------------------------------------------------


def _sniff(path: Path) -> str:
    """What a file holds, from its first bytes: ``"zip"`` (torch.save), ``"pickle"`` (legacy torch.save or
    plain pickle), ``"safetensors"`` or ``"unknown"``."""
    with open(path, "rb") as f:
        head = f.read(9)
    if head[:4] == b"PK\x03\x04":
        return "zip"
    if len(head) == 9 and head[8:9] == b"{":
        (n,) = struct.unpack("<Q", head[:8])
        if 0 < n <= path.stat().st_size - 8:
            return "safetensors"
    if head[:1] == b"\x80":
        return "pickle"
    return "unknown"


def check_checkpoint_path(path: str | os.PathLike) -> Path:
    """``path`` as a ``Path`` after checking it is an existing, non-empty file with a checkpoint suffix."""
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"checkpoint file not found: {p}")
    if p.is_dir():
        raise CheckpointError(f"{p} is a folder; pass the checkpoint file inside it")
    if p.suffix.lower() not in CHECKPOINT_SUFFIXES:
        raise CheckpointError(
            f"{p}: unsupported checkpoint extension {p.suffix or '(none)'!r}; "
            f"expected one of {', '.join(CHECKPOINT_SUFFIXES)}"
        )
    if p.stat().st_size == 0:
        raise CheckpointError(f"{p} is empty (0 bytes): an interrupted download or copy?")
    return p


def read_state_dict(path: str | os.PathLike) -> StateDict:
    """The tensors of a checkpoint file, as ``{name: tensor}`` on the CPU, in the file's own layout.

    ``.pt`` / ``.pth`` / ``.bin`` files are read with ``torch.load(weights_only=True, mmap=True)``: a pickle
    that would run code is refused. ``state_dict`` / ``weights`` / ``model`` wrappers and ``module.``
    prefixes are removed. Missing, empty, truncated or corrupt files, and files whose contents do not
    match their extension, raise ``CheckpointError`` naming the file.
    """
    p = check_checkpoint_path(path)
    kind = _sniff(p)
    if p.suffix.lower() == SAFETENSORS_SUFFIX:
        if kind in ("zip", "pickle"):
            raise CheckpointError(f"{p} holds a PyTorch pickle, not safetensors: rename it to .pt")
        obj: Any = _read_safetensors(p)
    else:
        if kind == "safetensors":
            raise CheckpointError(
                f"{p} holds safetensors data, not a PyTorch pickle: rename it to .safetensors"
            )
        if kind == "unknown":
            raise CheckpointError(f"{p} is not a PyTorch checkpoint (unrecognised contents; corrupt?)")
        obj = _read_torch(p, mmap=kind == "zip")
    return unwrap_state_dict(obj, str(p))


def _read_torch(p: Path, mmap: bool) -> Any:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch warns about unusual pickle protocols before refusing
            return torch.load(p, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        msg = str(e)
        if "weights only" in msg.lower() or "weightsunpickler" in msg.lower():
            code = re.search(r"GLOBAL ([\w.]+)", msg) or re.search(r"[Gg]lobal:? ([\w.]+)", msg)
            what = f" (it refers to {code.group(1)!r})" if code else ""
            raise CheckpointError(
                f"{p} is a pickle that carries code or objects other than tensors{what}; refused: "
                "checkpoints are loaded with weights_only=True. If you trust the file, re-save its "
                "state dict with torch.save(model.state_dict(), path) or as safetensors."
            ) from e
        raise CheckpointError(f"{p} is corrupt (unpickling failed: {msg.splitlines()[0]})") from e
    except (RuntimeError, OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointError(f"{p} is truncated or corrupt and cannot be read ({reason})") from e


def _read_safetensors(p: Path) -> StateDict:
    from safetensors import safe_open

    try:
        with safe_open(str(p), framework="pt", device="cpu") as f:
            return {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # SafetensorError does not subclass a common base across versions
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointError(
            f"{p} is truncated or corrupt and cannot be read as safetensors ({reason})"
        ) from e


def config_path_for(path: str | os.PathLike) -> Path:
    """Where the config JSON of a checkpoint lives: ``<stem>.json`` beside it."""
    return Path(path).with_suffix(".json")


def _looks_like_config(data: Any) -> bool:
    return isinstance(data, dict) and (
        data.get("type") in ("clip", "vision") or "patch_size" in data or "vision" in data
    )


def read_config(path: str | os.PathLike) -> ModelConfig | None:
    """The model config saved with a checkpoint: ``<stem>.json`` beside it, else the safetensors metadata.

    ``None`` when there is none (other JSON files beside a checkpoint are ignored); a config that cannot be
    parsed raises ``CheckpointError`` naming the file.
    """
    p = Path(path)
    beside = config_path_for(p)
    sources: list[tuple[str, str]] = []
    if beside.is_file() and beside != p:
        sources.append((str(beside), beside.read_text(encoding="utf-8")))
    if p.suffix.lower() == SAFETENSORS_SUFFIX and p.is_file() and _sniff(p) == "safetensors":
        meta = _safetensors_metadata(p)
        if CONFIG_METADATA_KEY in meta:
            sources.append((f"{p} (metadata)", meta[CONFIG_METADATA_KEY]))
    for where, text in sources:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            if where.endswith("(metadata)"):
                raise CheckpointError(f"{where}: model config is not valid JSON ({e})") from e
            continue  # a JSON file that is not ours
        if not _looks_like_config(data):
            continue
        try:
            return config_from_dict(data)
        except (TypeError, ValueError, KeyError) as e:
            raise CheckpointError(f"{where}: not a valid model config ({e})") from e
    return None


def _safetensors_metadata(p: Path) -> dict[str, str]:
    from safetensors import safe_open

    try:
        with safe_open(str(p), framework="pt", device="cpu") as f:
            return dict(f.metadata() or {})
    except Exception:
        return {}


# --- writing -------------------------------------------------------------------------------------------


def _plain_tensors(state_dict: Mapping[str, torch.Tensor]) -> StateDict:
    """Detached, contiguous CPU tensors, none sharing storage (safetensors refuses shared tensors)."""
    out: StateDict = {}
    seen: set[tuple[int, int]] = set()
    for k, t in state_dict.items():
        t = t.detach().to("cpu").contiguous()
        key = (t.untyped_storage().data_ptr(), t.untyped_storage().nbytes())
        if key in seen or t.untyped_storage().nbytes() != t.numel() * t.element_size():
            t = t.clone()  # a view into a bigger buffer, or a buffer another tensor uses
        seen.add((t.untyped_storage().data_ptr(), t.untyped_storage().nbytes()))
        out[k] = t
    return out


def atomic_write(path: Path, write: Callable[[str], None]) -> None:
    """Write through a temporary file in the same folder so an interrupted save leaves no broken file.

    ``write(tmp_path)`` writes the content; the file then gets the usual permissions (``mkstemp`` makes
    owner-only files) and replaces ``path``.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_checkpoint(
    state_dict: Mapping[str, torch.Tensor],
    path: str | os.PathLike,
    config: ModelConfig | None = None,
    *,
    layout: str | None = None,
) -> Path:
    """Write ``state_dict`` as-is to ``path``: safetensors for ``.safetensors``, ``torch.save`` for
    ``.pt`` / ``.pth`` / ``.bin``. With a ``config``, ``<stem>.json`` is written beside it (and into the
    safetensors metadata). ``layout`` (a format name) is recorded in the safetensors metadata.
    """
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix not in CHECKPOINT_SUFFIXES:
        raise ValueError(
            f"{p}: unsupported extension {suffix or '(none)'!r}; use {', '.join(CHECKPOINT_SUFFIXES)}"
        )
    tensors = _plain_tensors(state_dict)
    if suffix == SAFETENSORS_SUFFIX:
        from safetensors.torch import save_file

        meta = {"format": "pt"}
        if layout:
            meta["pe_layout"] = layout
        if config is not None:
            meta[CONFIG_METADATA_KEY] = config_to_json(config)
        atomic_write(p, lambda tmp: save_file(tensors, tmp, metadata=meta))
    else:
        atomic_write(p, lambda tmp: torch.save(tensors, tmp))
    if config is not None:
        text = config_to_json(config) + "\n"
        atomic_write(config_path_for(p), lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    return p


def save_safetensors(
    model_or_state_dict: nn.Module | Mapping[str, torch.Tensor],
    path: str | os.PathLike,
    config: ModelConfig | None = None,
) -> Path:
    """Save a model (or a state dict) as ``path`` (``.safetensors``) with its config as ``<stem>.json``
    beside it and in the file's metadata. A model's own ``config`` is used when ``config`` is ``None``."""
    p = Path(path)
    if p.suffix.lower() != SAFETENSORS_SUFFIX:
        raise ValueError(f"{p}: a safetensors file must end with .safetensors")
    if isinstance(model_or_state_dict, nn.Module):
        config = config if config is not None else getattr(model_or_state_dict, "config", None)
        state_dict = model_or_state_dict.state_dict()
    else:
        state_dict = dict(model_or_state_dict)
    return write_checkpoint(state_dict, p, config, layout="native")


# --- configs from shapes -------------------------------------------------------------------------------

_BLOCK_INDEX = re.compile(r"^transformer\.resblocks\.(\d+)\.")


def _depth(sd: Mapping[str, torch.Tensor]) -> int:
    idx = [int(m.group(1)) for k in sd if (m := _BLOCK_INDEX.match(k))]
    return max(idx) + 1 if idx else 0


def _released_heads(width: int, text: bool) -> int | None:
    """Heads of a released tower of this width (shapes cannot tell the head count)."""
    for name in list_models():
        info = get_model_info(name)
        if text and isinstance(info.config, CLIPConfig) and info.config.text.width == width:
            return info.config.text.heads
        if not text and info.vision.width == width:
            return info.vision.heads
    return None


def _guess_heads(width: int, text: bool) -> int:
    heads = _released_heads(width, text)
    if heads:
        return heads
    for head_dim in (64, 32, 16, 8, 4):  # the usual 64-wide heads, else the widest that fits (RoPE: %4)
        if width % head_dim == 0:
            return width // head_dim
    return 1


def _need(sd: Mapping[str, torch.Tensor], key: str, what: str) -> torch.Tensor:
    if key not in sd:
        raise CheckpointError(f"cannot read the {what} from the checkpoint: it has no {key!r}")
    return sd[key]


def _infer_vision(v: Mapping[str, torch.Tensor]) -> VisionConfig:
    conv = _need(v, "conv1.weight", "vision tower")
    width, patch = int(conv.shape[0]), int(conv.shape[-1])
    depth = _depth(v)
    if depth == 0:
        raise CheckpointError(
            "cannot read the vision tower from the checkpoint: it has no transformer blocks"
        )
    mlp_dim = int(_need(v, "transformer.resblocks.0.mlp.c_fc.weight", "vision MLP width").shape[0])
    cls = "class_embedding" in v
    pos = v.get("positional_embedding")
    image_size = 224
    if pos is not None:
        n = int(pos.shape[0]) - int(cls)
        grid = math.isqrt(max(n, 0))
        if grid * grid != n or n == 0:
            raise CheckpointError(
                f"vision positional_embedding has {pos.shape[0]} rows: not a square grid"
                + (" plus a CLS token" if cls else "")
            )
        image_size = grid * patch
    pool = "attn" if "attn_pool.probe" in v else "none"
    heads = _guess_heads(width, text=False)
    return VisionConfig(
        image_size=image_size,
        patch_size=patch,
        width=width,
        depth=depth,
        heads=heads,
        mlp_dim=mlp_dim,
        use_cls_token=cls,
        use_abs_posemb=pos is not None,
        use_rope2d=(width // heads) % 4 == 0,
        ls_init_value=0.1 if "transformer.resblocks.0.ls_1.gamma" in v else None,
        use_ln_pre="ln_pre.weight" in v,
        use_ln_post="ln_post.weight" in v,
        pool_type=pool,
        attn_pooler_heads=8 if width % 8 == 0 else 1,
        output_dim=int(v["proj"].shape[1]) if "proj" in v else None,
    )


def _infer_text(t: Mapping[str, torch.Tensor]) -> TextConfig:
    emb = _need(t, "token_embedding.weight", "text tower")
    width = int(emb.shape[1])
    depth = _depth(t)
    if depth == 0:
        raise CheckpointError("cannot read the text tower from the checkpoint: it has no transformer blocks")
    return TextConfig(
        context_length=int(_need(t, "positional_embedding", "text context length").shape[0]),
        vocab_size=int(emb.shape[0]),
        width=width,
        depth=depth,
        heads=_guess_heads(width, text=True),
        mlp_dim=int(_need(t, "transformer.resblocks.0.mlp.c_fc.weight", "text MLP width").shape[0]),
        output_dim=int(_need(t, "text_projection", "text output width").shape[1]),
        ls_init_value=0.1 if "transformer.resblocks.0.ls_1.gamma" in t else None,
    )


def infer_config(state_dict: Mapping[str, Any]) -> ModelConfig:
    """A config read from the shapes of a checkpoint in any supported layout.

    Width, depth, patch, grid (hence image size), MLP width, CLS token, LayerScale, norms, pooling and
    output widths come from the tensors. Head counts do not show in shapes: they are taken from the released
    model of the same width, else chosen for 64-wide heads; ``attn_pooler_heads`` is 8 as in every release.
    """
    native = to_native(state_dict)
    vision = _infer_vision(vision_part(native))
    if not is_clip(native):
        return vision
    text = _infer_text({k[len("text.") :]: v for k, v in native.items() if k.startswith("text.")})
    try:
        return CLIPConfig(vision=vision, text=text)
    except ValueError as e:
        raise CheckpointError(f"inconsistent CLIP checkpoint: {e}") from e


def _vision_signature(c: VisionConfig) -> tuple:
    """The vision config fields that show in tensor shapes (what a checkpoint can be matched on)."""
    return (
        c.image_size // c.patch_size if c.use_abs_posemb else None,
        c.patch_size,
        c.width,
        c.depth,
        c.mlp_dim,
        c.use_cls_token,
        c.use_abs_posemb,
        c.ls_init_value is not None,
        c.use_ln_pre,
        c.use_ln_post,
        c.pool_type == "attn",
        c.output_dim,
    )


def _text_signature(c: TextConfig) -> tuple:
    return (
        c.context_length,
        c.vocab_size,
        c.width,
        c.depth,
        c.mlp_dim,
        c.output_dim,
        c.ls_init_value is not None,
    )


def same_shapes(a: ModelConfig, b: ModelConfig) -> bool:
    """Whether two configs describe tensors of the same names and shapes."""
    if isinstance(a, CLIPConfig) != isinstance(b, CLIPConfig):
        return False
    if isinstance(a, CLIPConfig):
        return same_shapes(a.vision, b.vision) and _text_signature(a.text) == _text_signature(b.text)
    return _vision_signature(a) == _vision_signature(b)


def registered_matches(config: ModelConfig) -> list[str]:
    """Registered model names whose tensors have the shapes ``config`` describes.

    A CLIP config matches CLIP entries; a vision config matches vision entries first, then CLIP entries whose
    vision tower it is. Twins with one architecture (``PE-Lang-L14-448`` and its ``-Tiling``) both match.
    """
    vision = config.vision if isinstance(config, CLIPConfig) else config
    sig = _vision_signature(vision)
    exact, towers = [], []
    for name in list_models():
        info = get_model_info(name)
        if _vision_signature(info.vision) != sig:
            continue
        if isinstance(config, CLIPConfig):
            if info.is_clip and _text_signature(info.config.text) == _text_signature(config.text):
                exact.append(name)
        elif info.is_clip:
            towers.append(name)
        else:
            exact.append(name)
    return exact + towers


def describe_config(config: ModelConfig) -> str:
    """A one-line summary of the shapes a config describes, for error messages."""
    v = config.vision if isinstance(config, CLIPConfig) else config
    parts = [
        f"vision width {v.width}",
        f"depth {v.depth}",
        f"patch {v.patch_size}",
        f"{v.image_size} px ({v.grid_size}x{v.grid_size} grid)" if v.use_abs_posemb else "no position table",
        "CLS token" if v.use_cls_token else "no CLS token",
        "LayerScale" if v.ls_init_value is not None else "no LayerScale",
        "attention pooling" if v.pool_type == "attn" else "token output",
        f"output {v.output_dim}" if v.output_dim else "no projection",
    ]
    if isinstance(config, CLIPConfig):
        t = config.text
        parts.append(f"text width {t.width}, depth {t.depth}, context {t.context_length}")
    else:
        parts.append("no text tower")
    return ", ".join(parts)


# --- strict loading ------------------------------------------------------------------------------------


def _few(items: list[str], n: int = 3) -> str:
    return ", ".join(items[:n]) + (", ..." if len(items) > n else "")


def _groups(keys: list[str]) -> str:
    """The distinct top-level groups of ``keys`` (``" (under proj, ln_post, attn_pool)"``)."""
    seen: dict[str, None] = {}
    for k in keys:
        parts = k.split(".")
        seen[".".join(parts[:2]) if parts[0] in ("visual", "text") and len(parts) > 2 else parts[0]] = None
    names = list(seen)
    return f" (under {', '.join(names[:6])}{', ...' if len(names) > 6 else ''})"


def _likely_cause(state_dict: StateDict, target_config: ModelConfig, target: str) -> str:
    """One sentence on why a checkpoint does not fit: the registered model it fits, or how it differs."""
    try:
        found = infer_config(state_dict)
    except CheckpointError:
        return "It does not look like a Perception Encoder checkpoint."
    target_clip = isinstance(target_config, CLIPConfig)
    found_clip = isinstance(found, CLIPConfig)
    target_vision = target_config.vision if target_clip else target_config
    if target_clip and not found_clip and _vision_signature(found) == _vision_signature(target_vision):
        return "The checkpoint holds a vision tower only, no text tower: load it with vision_only=True."
    matches = registered_matches(found)
    if matches and target not in matches:
        tower = ""
        if not found_clip and get_model_info(matches[0]).is_clip:
            tower = " (its vision tower only: load it with vision_only=True)"
        return f"This looks like a checkpoint for {' or '.join(matches[:3])}{tower}, not {target}."
    return f"The checkpoint has {describe_config(found)}; {target} expects {describe_config(target_config)}."


def check_state_dict(
    expected: Mapping[str, torch.Size | tuple[int, ...]],
    state_dict: StateDict,
    *,
    target_config: ModelConfig,
    target: str,
    source: str,
) -> None:
    """Raise ``CheckpointError`` unless ``state_dict`` has exactly the keys and shapes in ``expected``.

    The message names a few missing, unexpected and mis-shaped keys with their counts, and the likely
    cause: which registered model the checkpoint fits instead, or how its shapes differ.
    """
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    misshaped = [
        f"{k} {tuple(state_dict[k].shape)} vs {tuple(expected[k])}"
        for k in expected
        if k in state_dict and tuple(state_dict[k].shape) != tuple(expected[k])
    ]
    if not (missing or unexpected or misshaped):
        return
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing key(s){_groups(missing)}: {_few(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s){_groups(unexpected)}: {_few(unexpected)}")
    if misshaped:
        problems.append(
            f"{len(misshaped)} key(s) with another shape (checkpoint vs model): {_few(misshaped)}"
        )
    cause = _likely_cause(state_dict, target_config, target)
    raise CheckpointError(
        f"{source} does not fit {target}: " + "; ".join(problems) + "." + (f" {cause}" if cause else "")
    )


def _cast(t: torch.Tensor, device: torch.device | None, dtype: torch.dtype | None) -> torch.Tensor:
    if dtype is not None and t.is_floating_point():
        return t.to(device=device, dtype=dtype)
    return t.to(device=device) if device is not None else t


def load_into(
    build: Callable[[], nn.Module],
    state_dict: StateDict,
    *,
    config: ModelConfig,
    target: str,
    source: str,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    file: str | os.PathLike | None = None,
) -> nn.Module:
    """Build a model with ``build()`` on the meta device and give it ``state_dict``'s tensors.

    The keys and shapes are checked first (``check_state_dict``). Each tensor is moved to ``device`` /
    cast to ``dtype`` (floating-point tensors only) one at a time and then assigned, not copied: the model's
    parameters are the checkpoint's tensors, and no random-weight model is ever materialised. The state
    dict's entries are replaced by the cast tensors. ``file``: the checkpoint the tensors were
    memory-mapped from, if any; the pages of each source tensor that was converted are released from
    memory right away (see ``pages.release_file_pages``), so loading with a cast never holds the whole file
    beside the converted copy. Returns the model in eval mode.
    """
    with torch.device("meta"):
        model = build()
    expected = {k: v.shape for k, v in model.state_dict().items()}
    check_state_dict(expected, state_dict, target_config=config, target=target, source=source)
    device = torch.device(device) if device is not None else None
    mappings = file_mappings(file) if file is not None else []
    for k in list(state_dict):
        source_tensor = state_dict[k]
        cast = _cast(source_tensor, device, dtype)  # one tensor at a time: no second full copy
        state_dict[k] = cast
        if cast.device != source_tensor.device or cast.data_ptr() != source_tensor.data_ptr():
            release_file_pages(source_tensor, mappings)
        del source_tensor, cast
    model.load_state_dict(state_dict, strict=True, assign=True)
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:
        raise CheckpointError(
            f"{source}: {target} still has uninitialised tensors after loading: {_few(left)}"
        )
    return model.eval()
