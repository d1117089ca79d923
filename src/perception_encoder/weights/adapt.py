"""Fitting a checkpoint to a vision tower that uses only part of it, as real files and workflows need:

- ``drop_unused_head``: a PE-Lang or PE-Spatial file that still carries PE-Core's head (``ln_post``,
  ``attn_pool.*``, ``proj``): the head keys the tower's config does not have are dropped;
- ``tower_config``: the config of a tower cut from a bigger one, as PerceptionLM's first stage builds it
  from a PE-Core file (the first ``layers`` blocks, no head, at ``image_size``);
- ``fit_to_tower``: a checkpoint cut to such a tower (trailing blocks and the head dropped, the position
  table resized bilinearly to the new grid, as the reference's ``interpolate_PE_pos_embed`` does).

Each returns or logs what it dropped (logger ``perception_encoder.weights``), so nothing goes silently.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Mapping

import torch

from ..configs import VisionConfig
from ..errors import CheckpointError
from ..vision import resize_position_table
from .formats import StateDict

log = logging.getLogger("perception_encoder.weights")

_BLOCK = re.compile(r"^transformer\.resblocks\.(\d+)\.")


def _head_keys(config: VisionConfig, keys: list[str]) -> list[str]:
    """Keys of the parts of PE-Core's head that ``config`` does not have."""
    unused = []
    for k in keys:
        if (
            (k.startswith("ln_post.") and not config.use_ln_post)
            or (k.startswith("attn_pool.") and config.pool_type != "attn")
            or (k == "proj" and config.output_dim is None)
        ):
            unused.append(k)
    return unused


def _summary(keys: list[str]) -> str:
    groups = dict.fromkeys(
        k.split(".")[0] if not _BLOCK.match(k) else f"block {_BLOCK.match(k).group(1)}" for k in keys
    )
    return ", ".join(groups)


def drop_unused_head(
    native: Mapping[str, torch.Tensor],
    config: VisionConfig,
    source: str,
    expected: Mapping[str, tuple[int, ...]] | None = None,
) -> StateDict:
    """``native`` (a vision tower's keys) without the head keys ``config`` has no place for, logged.

    With ``expected`` (the tower's key -> shape), the head is dropped only when the rest then fits exactly:
    a file for another model keeps its head, so the strict check describes it as it is."""
    dropped = _head_keys(config, list(native))
    if not dropped:
        return dict(native)
    rest = {k: v for k, v in native.items() if k not in dropped}
    if expected is not None and (
        set(rest) != set(expected) or any(tuple(rest[k].shape) != tuple(expected[k]) for k in rest)
    ):
        return dict(native)
    log.info(
        "%s: dropped %d key(s) of a head the tower does not have (%s)",
        source,
        len(dropped),
        _summary(dropped),
    )
    return rest


def tower_config(
    config: VisionConfig, layers: int | None = None, image_size: int | None = None
) -> VisionConfig:
    """``config`` cut to its first ``layers`` blocks and built for ``image_size`` px.

    Cut to fewer blocks, the tower has no head: a token tower without ``ln_post``, pooling or projection,
    as PerceptionLM's vision model (PE-Core-L kept 23 of 24 blocks at 448 px, PE-Core-G 47 of 50).
    """
    if layers is not None:
        if isinstance(layers, bool) or not isinstance(layers, int) or not 1 <= layers <= config.depth:
            raise ValueError(
                f"layers must be an integer from 1 to {config.depth} (the tower's depth), got {layers!r}"
            )
        config = dataclasses.replace(
            config, depth=layers, use_ln_post=False, pool_type="none", output_dim=None
        )
    if image_size is not None:
        config = dataclasses.replace(config, image_size=image_size)
    return config


def fit_to_tower(native: Mapping[str, torch.Tensor], config: VisionConfig, source: str) -> StateDict:
    """A vision checkpoint cut to ``config`` (from ``tower_config``): the blocks past ``config.depth`` and the
    head keys dropped, the position table resized to ``config``'s grid. Logs what changed."""
    out = drop_unused_head(native, config, source)
    extra = [k for k in out if (m := _BLOCK.match(k)) and int(m.group(1)) >= config.depth]
    if extra:
        log.info(
            "%s: kept the first %d blocks, dropped %d key(s) of the later ones",
            source,
            config.depth,
            len(extra),
        )
        out = {k: v for k, v in out.items() if k not in extra}
    table = out.get("positional_embedding")
    if table is not None and config.use_abs_posemb:
        prefix = int(config.use_cls_token)
        n = table.shape[0] - prefix
        side = int(round(n**0.5))
        if side * side != n:
            raise CheckpointError(
                f"{source}: positional_embedding has {table.shape[0]} rows, not a square grid"
            )
        new = (config.grid_size, config.grid_size)
        if (side, side) != new:
            out["positional_embedding"] = resize_position_table(table, (side, side), new, prefix)
            log.info("%s: position table resized from a %dx%d to a %dx%d grid", source, side, side, *new)
    return out
