"""Model configs from checkpoint shapes, matching them against the registry, and the one rule that
decides which config a checkpoint file is loaded under.

- ``infer_config``: a ``VisionConfig`` / ``CLIPConfig`` from tensor shapes (head counts do not show in
  shapes: they come from the released model of the same width);
- ``registered_matches``: the registered models whose tensors have a config's shapes;
- ``config_for_checkpoint``: the config saved beside a file when it fits the file's shapes, else the
  registered model the shapes match, else the shapes themselves. ``pe.load`` and ``pe info`` both use it.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from typing import Any

import torch

from ..configs import CLIPConfig, ModelConfig, TextConfig, VisionConfig, get_model_info, list_models
from ..errors import CheckpointError
from .files import config_path_for, read_config
from .formats import is_clip, to_native, vision_part

_BLOCK_INDEX = re.compile(r"^transformer\.resblocks\.(\d+)\.")


def _depth(sd: Mapping[str, torch.Tensor]) -> int:
    idx = [int(m.group(1)) for k in sd if (m := _BLOCK_INDEX.match(k))]
    return max(idx) + 1 if idx else 0


def _released_heads(width: int, text: bool) -> int | None:
    """Heads of a released tower of this width (shapes cannot tell the head count)."""
    for name in list_models():
        info = get_model_info(name)
        if info.is_av:  # audio-visual models have no tower of this kind
            continue
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


def vision_signature(c: VisionConfig) -> tuple:
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


def text_signature(c: TextConfig) -> tuple:
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
        return same_shapes(a.vision, b.vision) and text_signature(a.text) == text_signature(b.text)
    return vision_signature(a) == vision_signature(b)


def registered_matches(config: ModelConfig) -> list[str]:
    """Registered model names whose tensors have the shapes ``config`` describes.

    A CLIP config matches CLIP entries; a vision config matches vision entries first, then CLIP entries whose
    vision tower it is. Twins with one architecture (``PE-Lang-L14-448`` and its ``-Tiling``) both match.
    """
    vision = config.vision if isinstance(config, CLIPConfig) else config
    sig = vision_signature(vision)
    exact, towers = [], []
    for name in list_models():
        info = get_model_info(name)
        if info.is_av or vision_signature(info.vision) != sig:
            continue
        if isinstance(config, CLIPConfig):
            if info.is_clip and text_signature(info.config.text) == text_signature(config.text):
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


def config_for_checkpoint(
    path: str | os.PathLike, native: Mapping[str, torch.Tensor]
) -> tuple[ModelConfig, str]:
    """The config a checkpoint file is loaded (and described) under, and where it came from.

    1. ``"json"``: the config saved with the file (``<stem>.json`` beside it or the safetensors metadata),
       after checking it describes the file's shapes; a saved config that does not is an error naming
       both, since loading under it would fail and describing the file by it would mislead;
    2. ``"registry"``: else the registered model whose shapes the tensors have (its head counts, which
       shapes cannot tell);
    3. ``"shapes"``: else the config read from the shapes, with guessed head counts.

    ``native``: the checkpoint in this package's layout (``formats.to_native``).
    """
    inferred = infer_config(native)
    saved = read_config(path)
    if saved is not None:
        if isinstance(saved, CLIPConfig) and not isinstance(inferred, CLIPConfig):
            saved = saved.vision  # a CLIP config beside a vision tower's weights
        if same_shapes(saved, inferred):
            return saved, "json"
        raise CheckpointError(
            f"the model config saved with {path} does not fit its weights: it describes "
            f"{describe_config(saved)}; the weights have {describe_config(inferred)}. Fix or remove "
            f"{config_path_for(path).name}, or pass the model name."
        )
    matches = registered_matches(inferred)
    if matches:
        registered = get_model_info(matches[0]).config
        if not isinstance(inferred, CLIPConfig) and isinstance(registered, CLIPConfig):
            registered = registered.vision
        return registered, "registry"
    return inferred, "shapes"
