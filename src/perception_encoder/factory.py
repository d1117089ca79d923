"""Building, loading, saving and converting models: the one entry point for every checkpoint.

    import perception_encoder as pe
    model = pe.load("PE-Core-B16-224")                       # released weights from the hub cache
    model = pe.load("PE-Lang-L14-448", dtype=torch.bfloat16)  # a vision tower
    model = pe.load("PE-Core-L14-336", checkpoint="ft.safetensors", vision_only=True)
    model = pe.load("path/to/model.safetensors")             # config from the JSON beside it, or shapes
    pe.save(model, "model.safetensors")                      # + model.json
    pe.convert("PE-Core-B16-224.pt", "open_clip_model.safetensors", to="open_clip")

Checkpoints in any layout (reference ``.pt``, timm, open_clip, this package's) are recognised by their keys.
Loading builds the model on the meta device and assigns the checkpoint's tensors after a strict key and
shape check, so memory never holds a random-weight copy beside the loaded one.
"""

from __future__ import annotations

import os
import warnings
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .configs import CLIPConfig, ModelConfig, ModelInfo, VisionConfig, get_model_info
from .dtypes import as_dtype
from .errors import CheckpointError
from .weights import cast_cache
from .weights.adapt import drop_unused_head, fit_to_tower, tower_config
from .weights.files import (
    CHECKPOINT_SUFFIXES,
    SAFETENSORS_SUFFIX,
    check_checkpoint_path,
    read_state_dict,
    save_safetensors,
    write_checkpoint,
)
from .weights.formats import FORMATS, detect_format, from_native, is_clip, to_native, vision_part
from .weights.hub import is_hub_spec, resolve_hub_spec, resolve_released
from .weights.shapes import config_for_checkpoint, registered_matches
from .weights.strict import check_state_dict, load_into

ASSETS_DIR = Path(__file__).resolve().parent / "assets"
CONVERT_TARGETS = ("reference", "timm", "open_clip", "safetensors")

# --- configs and models --------------------------------------------------------------------------------


def _tower(config: ModelConfig, vision_only: bool) -> ModelConfig:
    """The config of the model to build: the vision tower alone when asked (or when there is no text)."""
    return config.vision if vision_only and isinstance(config, CLIPConfig) else config


def _builder(config: ModelConfig) -> Callable[[], nn.Module]:
    if isinstance(config, CLIPConfig):
        from .clip import CLIP

        return lambda: CLIP(config)
    if isinstance(config, VisionConfig):
        from .vision import VisionTransformer

        return lambda: VisionTransformer(config)
    raise TypeError(f"expected a VisionConfig or CLIPConfig, got {type(config).__name__}")


def _config_of(name_or_config: str | ModelConfig) -> ModelConfig:
    if isinstance(name_or_config, (VisionConfig, CLIPConfig)):
        return name_or_config
    if isinstance(name_or_config, str):
        return get_model_info(name_or_config).config
    raise TypeError(
        f"expected a registered model name or a VisionConfig / CLIPConfig, got {type(name_or_config).__name__}"
    )


def create_model(
    name_or_config: str | ModelConfig,
    *,
    vision_only: bool = False,
    device: str | torch.device | None = None,
    dtype: torch.dtype | str | None = None,
) -> nn.Module:
    """A randomly initialised model: ``clip.CLIP`` for a CLIP config, ``vision.VisionTransformer`` for a
    vision config (or any config with ``vision_only=True``). Built directly on ``device``; in train mode."""
    config = _tower(_config_of(name_or_config), vision_only)
    dtype = as_dtype(dtype)
    with torch.device(device if device is not None else "cpu"):
        model = _builder(config)()
    return model.to(dtype) if dtype is not None else model


def count_parameters(name_or_config: str | ModelConfig, *, vision_only: bool = False) -> int:
    """How many parameters the model has, counted on the meta device (nothing is allocated)."""
    config = _tower(_config_of(name_or_config), vision_only)
    with torch.device("meta"):
        model = _builder(config)()
    return sum(p.numel() for p in model.parameters())


# --- finding the checkpoint ----------------------------------------------------------------------------


def _is_path_like(value: Any) -> bool:
    """Whether ``load``'s ``name`` is a checkpoint file rather than a registered model name."""
    if isinstance(value, os.PathLike):
        return True
    if not isinstance(value, str) or is_hub_spec(value):
        return False
    if Path(value).suffix.lower() in CHECKPOINT_SUFFIXES:
        return True
    try:  # a registered name wins over a file or folder of the same name in the working directory
        get_model_info(value)
        return False
    except KeyError:
        return os.path.exists(value)


def _locate(checkpoint: str | os.PathLike | None, info: ModelInfo | None) -> Path:
    """The local file of a checkpoint: a path, an ``hf-hub:`` string, or (``None``) the model's own weights:
    the bundled file for entries with ``local_weights``, else the released file from the hub."""
    if checkpoint is not None:
        if is_hub_spec(checkpoint):
            return resolve_hub_spec(str(checkpoint))
        return check_checkpoint_path(checkpoint)
    if info is None:
        raise ValueError("no checkpoint given")
    if info.local_weights:
        path = ASSETS_DIR / info.local_weights
        if not path.is_file():
            raise CheckpointError(f"{info.name}: bundled weights file is missing from the package: {path}")
        return path
    return resolve_released(info)


def _config_for_file(path: Path, native: dict[str, torch.Tensor]) -> ModelConfig:
    """The config of a checkpoint loaded without a model name (``weights.shapes.config_for_checkpoint``:
    saved beside it, else the registered model its shapes match, else the shapes with a warning)."""
    config, source = config_for_checkpoint(path, native)
    if source == "shapes":
        warnings.warn(
            f"{path}: no config saved beside it and it matches no registered model; the config was read "
            "from tensor shapes, with guessed head counts (save with pe.save to keep the config)",
            stacklevel=3,
        )
    return config


def _read_native(path: Path) -> dict[str, torch.Tensor]:
    return to_native(read_state_dict(path), source=str(path))


def checkpoint_file(name: str | os.PathLike, checkpoint: str | os.PathLike | None = None) -> Path:
    """The local file ``load(name, checkpoint=checkpoint)`` reads (the hub's cached file for a released name)."""
    if _is_path_like(name) or is_hub_spec(name):
        return _locate(name, None)
    return _locate(checkpoint, get_model_info(str(name)))


def checkpoint_sha256(name: str | os.PathLike, checkpoint: str | os.PathLike | None = None) -> str:
    """SHA-256 of the weights ``load(name, checkpoint=checkpoint)`` reads: what identifies them in a
    dataset's manifest. A file in the Hugging Face cache is a blob named by its SHA-256 (LFS files): that
    name is used as is; any other file is read once."""
    import hashlib
    import re

    path = checkpoint_file(name, checkpoint).resolve()
    if path.parent.name == "blobs" and re.fullmatch(r"[0-9a-f]{64}", path.name):
        return path.name
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


# --- load ----------------------------------------------------------------------------------------------


def load(
    name: str | os.PathLike,
    *,
    checkpoint: str | os.PathLike | None = None,
    pretrained: bool = True,
    vision_only: bool = False,
    device: str | torch.device | None = None,
    dtype: torch.dtype | str | None = None,
    strict: bool = True,
    layers: int | None = None,
    image_size: int | None = None,
) -> nn.Module:
    """A model with weights, in eval mode.

    ``name``: a registered name (PE-Core names give a ``CLIP`` model, PE-Lang / PE-Spatial names a
    ``VisionTransformer``, PE-AV / PE-A-Frame names an ``av.PEAudioVisual`` / ``av.PEAudioFrame``, see
    ``av.loading``), or directly a checkpoint path / ``hf-hub:`` string (the config is read from
    ``<stem>.json`` beside it, the safetensors metadata, or the tensor shapes).
    ``checkpoint``: a local file in any supported layout (auto-detected), an ``hf-hub:<repo>[/<file>]``
    string, or ``None`` for the model's released weights (hub cache, honouring ``HF_HUB_OFFLINE``) or its
    bundled file. ``pretrained=False`` gives random weights. ``dtype`` defaults to float32, whatever the
    checkpoint stores. ``vision_only=True`` gives the vision tower
    (a CLIP checkpoint can feed it). ``device`` / ``dtype`` apply tensor by tensor while loading.
    Errors: ``UnknownModelError`` (unknown name, with suggestions), ``CheckpointError`` (missing, unreadable
    or mismatched checkpoint, with the likely cause).

    Loading is strict: every key must fit, except the parts of PE-Core's head (``ln_post``, ``attn_pool``,
    ``proj``) in a file loaded into a tower without them (a PE-Lang or PE-Spatial file that still carries
    them), which are dropped and logged. ``strict=False`` loads what fits, as the reference's ``load_ckpt``:
    unexpected keys are ignored, missing ones keep their initial values, and a warning names both.

    ``layers`` / ``image_size`` build a vision tower cut from the checkpoint's, as PerceptionLM's first
    stage does from a PE-Core file: its first ``layers`` blocks without the head (``ln_post``, pooling and
    projection), its position table resized bilinearly to ``image_size`` px. PE-Core-L at 448 with 23 blocks
    is ``load("PE-Core-L14-336", vision_only=True, layers=23, image_size=448)``; a tower for a PE-Lang-style
    config. Both need a vision tower (``vision_only=True`` for PE-Core names).
    """
    if _is_av(name, checkpoint):  # PE-AV / PE-A-Frame (their own layouts and config files): av.loading
        if vision_only or layers is not None or image_size is not None:
            raise ValueError("vision_only=, layers= and image_size= shape PE vision towers, not PE-AV models")
        from .av.loading import load_av

        return load_av(
            name, checkpoint=checkpoint, pretrained=pretrained, device=device, dtype=dtype, strict=strict
        )
    # float32 unless asked: a checkpoint stored in half precision (e.g. the bundled one) still computes in fp32
    dtype = as_dtype(dtype) or torch.float32
    info: ModelInfo | None = None
    config: ModelConfig | None = None
    if _is_path_like(name) or is_hub_spec(name):
        if checkpoint is not None:
            raise ValueError(f"name {str(name)!r} is already a checkpoint; do not pass checkpoint= as well")
        checkpoint = name
    elif isinstance(name, (VisionConfig, CLIPConfig)):
        config = name
    else:
        info = get_model_info(str(name))
        config = info.config

    if not pretrained:
        if checkpoint is not None and config is not None:
            raise ValueError("pretrained=False gives random weights; it cannot be combined with checkpoint=")
        if config is None:
            path = _locate(checkpoint, None)
            config = _config_for_file(path, _read_native(path))
        model = create_model(_cut(config, vision_only, layers, image_size), device=device, dtype=dtype)
        return model.eval()

    if checkpoint is None and info is None:
        raise ValueError("a config alone has no weights: pass checkpoint=PATH, or pretrained=False")
    path = _locate(checkpoint, info)
    native = _read_native(path)
    if config is None:
        config = _config_for_file(path, native)
    tensors = path  # the file the tensors are mapped from: the checkpoint, or its cast in the cache
    if cast_cache.worth_caching(native, dtype, device):
        cast = cast_cache.cached_cast(native, dtype, path)
        if cast is not None:
            native, tensors = _read_native(cast), cast
    want = _cut(config, vision_only, layers, image_size)
    if not isinstance(want, CLIPConfig) and is_clip(native):
        native = vision_part(native)  # a CLIP checkpoint feeding a vision tower
    target = info.name if info is not None else f"the model configured for {path.name}"
    source = str(checkpoint) if is_hub_spec(checkpoint) else str(path)
    if layers is not None or image_size is not None:
        native = fit_to_tower(native, want, source)
    elif isinstance(want, VisionConfig):
        with torch.device("meta"):
            expected = {k: tuple(v.shape) for k, v in _builder(want)().state_dict().items()}
        native = drop_unused_head(native, want, source, expected)
    return load_into(
        _builder(want),
        native,
        config=want,
        target=target,
        source=source,
        device=device,
        dtype=dtype,
        file=tensors,
        strict=strict,
    )


def _is_av(name: object, checkpoint: object) -> bool:
    """Whether ``load`` is asked for a PE-AV or PE-A-Frame model (a registered AV name or config, an AV
    folder, safetensors file or ``hf-hub:`` repository)."""
    from .av.loading import is_av_source

    return is_av_source(name, checkpoint)


def _cut(config: ModelConfig, vision_only: bool, layers: int | None, image_size: int | None) -> ModelConfig:
    """The config of the model ``load`` builds: the vision tower alone when asked, cut to ``layers`` blocks
    and built for ``image_size`` px when asked (``weights.adapt.tower_config``)."""
    want = _tower(config, vision_only)
    if layers is None and image_size is None:
        return want
    if isinstance(want, CLIPConfig):
        raise ValueError(
            "layers= and image_size= shape a vision tower: pass vision_only=True for a CLIP model"
        )
    return tower_config(want, layers, image_size)


# --- save / convert / inspect --------------------------------------------------------------------------


def save(model: nn.Module, path: str | os.PathLike) -> Path:
    """Save ``model`` (this package's layout) with its config as ``<stem>.json`` beside it.

    ``.safetensors`` (recommended; the config also goes into the file's metadata) or ``.pt`` / ``.pth`` /
    ``.bin`` (``torch.save`` of the state dict). ``pe.load(path)`` reads it back.
    """
    config = getattr(model, "config", None)
    if config is not None and _is_av(config, None):  # PE-AV / PE-A-Frame: weights, config and tokenizer
        from .av.loading import save_av

        return save_av(model, path)
    if not isinstance(config, (VisionConfig, CLIPConfig)):
        raise TypeError(f"expected a perception_encoder model with a .config, got {type(model).__name__}")
    p = Path(path)
    if p.suffix.lower() == SAFETENSORS_SUFFIX:
        return save_safetensors(model, p, config)
    if p.suffix.lower() not in CHECKPOINT_SUFFIXES:
        raise ValueError(f"{p}: unsupported extension {p.suffix or '(none)'!r}; use .safetensors or .pt")
    return write_checkpoint(model.state_dict(), p, config)


def _checked_config(
    native: dict[str, torch.Tensor], path: Path, model: str | None
) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """The config a checkpoint is converted under, after checking the checkpoint fits it; with the
    checkpoint itself, cut to its vision tower when ``model`` names a vision-only model."""
    if model is not None:
        config = get_model_info(model).config
    else:
        config = _config_for_file(path, native)
    if isinstance(config, CLIPConfig) and not is_clip(native):
        config = config.vision
    if not isinstance(config, CLIPConfig) and is_clip(native):
        native = vision_part(native)
    with torch.device("meta"):
        expected = {k: v.shape for k, v in _builder(config)().state_dict().items()}
    target = model or f"the model configured for {path.name}"
    check_state_dict(expected, native, target_config=config, target=target, source=str(path))
    return config, native


def convert(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    to: str = "safetensors",
    model: str | None = None,
    dtype: torch.dtype | str | None = None,
) -> Path:
    """Rewrite checkpoint ``src`` (any layout, local path or ``hf-hub:`` string) as ``dst`` in layout ``to``.

    ``to``: ``"reference"`` (released ``.pt`` layout), ``"timm"`` (vision tower only), ``"open_clip"``
    (CLIP only) or ``"safetensors"`` (this package's layout, ``.safetensors``). The file type follows
    ``dst``'s extension (``.safetensors`` or ``.pt`` / ``.pth`` / ``.bin``). ``model`` names the registered
    model the checkpoint must fit (else its config comes from beside it or from its shapes); the config
    is written beside ``dst`` as ``<stem>.json``. ``dtype`` (e.g. ``"bf16"``) casts the floating-point
    tensors: a bfloat16 file loads as bfloat16 straight from its memory map, half the memory of casting
    at every load, and its weights can be packed in place (see ``layers.linear``). Returns ``dst``.
    """
    if to not in CONVERT_TARGETS:
        raise ValueError(f"unknown target format {to!r}; expected one of {', '.join(CONVERT_TARGETS)}")
    cast = as_dtype(dtype)
    dst = Path(dst)
    if dst.suffix.lower() not in CHECKPOINT_SUFFIXES:
        raise ValueError(f"{dst}: unsupported extension {dst.suffix or '(none)'!r}; use .safetensors or .pt")
    if to == "safetensors" and dst.suffix.lower() != SAFETENSORS_SUFFIX:
        raise ValueError(f"{dst}: --to safetensors needs a .safetensors destination")
    path = _locate(src, None)
    native = _read_native(path)
    config, native = _checked_config(native, path, model)
    layout = "native" if to == "safetensors" else to
    if cast is not None:
        native = {k: v.to(cast) if v.is_floating_point() else v for k, v in native.items()}
    out = from_native(native, layout, source=str(path))
    if to == "timm":
        config = _tower(config, True)
    return write_checkpoint(out, dst, config, layout=layout)


def _format_params(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M" if n >= 1e5 else f"{n / 1e3:.1f}K"


def inspect_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Facts about a checkpoint file (or ``hf-hub:`` string) without building a model.

    Keys: ``path``, ``format``, ``kind`` ("clip" / "vision"), ``family``, ``name`` (the matching registered
    model or ``None``), ``matches``, ``image_size``, ``patch_size``, ``grid_size``, ``vision_width``,
    ``vision_depth``, ``vision_heads``, ``mlp_dim``, ``cls_token``, ``layer_scale``, ``pool``,
    ``output_dim``, ``text_width``, ``text_depth``, ``context_length`` (``None`` without a text tower),
    ``parameters``, ``parameters_str`` (e.g. "86.2M"), ``dtype``, ``file_size``, ``config_source``.
    """
    p = _locate(path, None)
    raw = read_state_dict(p)
    fmt = detect_format(raw)
    native = to_native(raw, fmt, source=str(p))
    config, source = config_for_checkpoint(p, native)  # the config pe.load would use
    matches = registered_matches(config)
    v = config.vision if isinstance(config, CLIPConfig) else config
    t = config.text if isinstance(config, CLIPConfig) else None
    n_params = sum(x.numel() for x in native.values())
    dtypes = Counter(str(x.dtype).removeprefix("torch.") for x in native.values())
    return {
        "path": str(p),
        "format": fmt,
        "kind": "clip" if t is not None else "vision",
        "family": get_model_info(matches[0]).family if matches else "custom",
        "name": matches[0] if matches else None,
        "matches": matches,
        "image_size": v.image_size,
        "patch_size": v.patch_size,
        "grid_size": v.grid_size,
        "vision_width": v.width,
        "vision_depth": v.depth,
        "vision_heads": v.heads,
        "mlp_dim": v.mlp_dim,
        "cls_token": v.use_cls_token,
        "layer_scale": v.ls_init_value is not None,
        "pool": v.pool_type,
        "output_dim": v.output_dim,
        "text_width": t.width if t else None,
        "text_depth": t.depth if t else None,
        "context_length": t.context_length if t else None,
        "parameters": n_params,
        "parameters_str": _format_params(n_params),
        "dtype": dtypes.most_common(1)[0][0],
        "file_size": p.stat().st_size,
        "config_source": source,
    }


__all__ = [
    "CONVERT_TARGETS",
    "checkpoint_file",
    "checkpoint_sha256",
    "FORMATS",
    "convert",
    "count_parameters",
    "create_model",
    "inspect_checkpoint",
    "load",
    "save",
]
