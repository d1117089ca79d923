"""Strict loading: a key-and-shape check that names the likely cause of a mismatch, and assigning a
checkpoint's tensors to a model built on the meta device (no random-weight copy is ever made)."""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Mapping

import torch
from torch import nn

from ..configs import CLIPConfig, ModelConfig, get_model_info
from ..errors import CheckpointError
from ..pages import file_mappings, release_file_pages
from .formats import StateDict
from .shapes import describe_config, infer_config, registered_matches, vision_signature


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
    if target_clip and not found_clip and vision_signature(found) == vision_signature(target_vision):
        return "The checkpoint holds a vision tower only, no text tower: load it with vision_only=True."
    matches = registered_matches(found)
    if matches and target not in matches:
        tower = ""
        if not found_clip and get_model_info(matches[0]).is_clip:
            tower = " (its vision tower only: load it with vision_only=True)"
        return f"This looks like a checkpoint for {' or '.join(matches[:3])}{tower}, not {target}."
    return f"The checkpoint has {describe_config(found)}; {target} expects {describe_config(target_config)}."


def key_problems(expected: Mapping[str, torch.Size | tuple[int, ...]], state_dict: StateDict) -> list[str]:
    """How ``state_dict`` differs from the keys and shapes in ``expected``, one phrase per kind (missing,
    unexpected, another shape) with counts, groups and a few names; empty when it fits exactly."""
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    misshaped = [
        f"{k} {tuple(state_dict[k].shape)} vs {tuple(expected[k])}"
        for k in expected
        if k in state_dict and tuple(state_dict[k].shape) != tuple(expected[k])
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing key(s){_groups(missing)}: {_few(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s){_groups(unexpected)}: {_few(unexpected)}")
    if misshaped:
        problems.append(
            f"{len(misshaped)} key(s) with another shape (checkpoint vs model): {_few(misshaped)}"
        )
    return problems


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
    problems = key_problems(expected, state_dict)
    if not problems:
        return
    cause = _likely_cause(state_dict, target_config, target)
    raise CheckpointError(
        f"{source} does not fit {target}: " + "; ".join(problems) + "." + (f" {cause}" if cause else "")
    )


def _cast(t: torch.Tensor, device: torch.device | None, dtype: torch.dtype | None) -> torch.Tensor:
    if dtype is not None and t.is_floating_point():
        return t.to(device=device, dtype=dtype)
    return t.to(device=device) if device is not None else t


def _lenient(
    expected: Mapping[str, torch.Size | tuple[int, ...]], state_dict: StateDict, *, target: str, source: str
) -> tuple[list[str], list[str]]:
    """``strict=False``: the keys to leave at their initial values and the keys to ignore. Tensors of another
    shape stay an error (they would not fit anywhere), as in ``torch``'s own non-strict loading."""
    misshaped = [
        f"{k} {tuple(state_dict[k].shape)} vs {tuple(expected[k])}"
        for k in expected
        if k in state_dict and tuple(state_dict[k].shape) != tuple(expected[k])
    ]
    if misshaped:
        raise CheckpointError(
            f"{source} does not fit {target}: {len(misshaped)} key(s) with another shape (checkpoint vs model): "
            f"{_few(misshaped)}"
        )
    return [k for k in expected if k not in state_dict], [k for k in state_dict if k not in expected]


def _initialise(model: nn.Module, build: Callable[[], nn.Module], names: list[str], device, dtype) -> None:
    """Give the tensors ``names`` of ``model`` (still on the meta device) the initial values a freshly built
    model has (built once, on ``device``, only when something is missing)."""
    with torch.device(device or "cpu"):
        fresh = build()
    values = fresh.state_dict()
    for name in names:
        owner, _, leaf = name.rpartition(".")
        module = model.get_submodule(owner)
        value = _cast(values[name], None, dtype)
        if leaf in module._parameters:
            module._parameters[leaf] = nn.Parameter(value)
        else:
            module._buffers[leaf] = value


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
    strict: bool = True,
) -> nn.Module:
    """Build a model with ``build()`` on the meta device and give it ``state_dict``'s tensors.

    The keys and shapes are checked first (``check_state_dict``). Each tensor is moved to ``device`` /
    cast to ``dtype`` (floating-point tensors only) one at a time and then assigned, not copied: the model's
    parameters are the checkpoint's tensors, and no random-weight model is ever materialised. The state
    dict's entries are replaced by the cast tensors. ``file``: the checkpoint the tensors were
    memory-mapped from, if any; the pages of each source tensor that was converted are released from
    memory right away (see ``pages.release_file_pages``), so loading with a cast never holds the whole file
    beside the converted copy. Returns the model in eval mode.

    ``strict=False`` loads what fits, as the reference's ``load_ckpt`` does: unexpected keys are ignored,
    missing ones keep the initial values of a freshly built model, and a ``UserWarning`` names both;
    tensors of another shape stay an error.
    """
    with torch.device("meta"):
        model = build()
    expected = {k: v.shape for k, v in model.state_dict().items()}
    missing: list[str] = []
    if strict:
        check_state_dict(expected, state_dict, target_config=config, target=target, source=source)
    else:
        missing, unexpected = _lenient(expected, state_dict, target=target, source=source)
        for k in unexpected:
            del state_dict[k]
        if missing or unexpected:
            warnings.warn(
                f"{source} loaded into {target} with strict=False: "
                + "; ".join(
                    part
                    for part in (
                        f"{len(unexpected)} unexpected key(s) ignored{_groups(unexpected)}: {_few(unexpected)}"
                        if unexpected
                        else "",
                        f"{len(missing)} key(s) left at their initial values{_groups(missing)}: {_few(missing)}"
                        if missing
                        else "",
                    )
                    if part
                ),
                stacklevel=3,
            )
    device = torch.device(device) if device is not None else None
    mappings = file_mappings(file) if file is not None else []
    for k in list(state_dict):
        source_tensor = state_dict[k]
        cast = _cast(source_tensor, device, dtype)  # one tensor at a time: no second full copy
        state_dict[k] = cast
        if cast.device != source_tensor.device or cast.data_ptr() != source_tensor.data_ptr():
            release_file_pages(source_tensor, mappings)
        del source_tensor, cast
    model.load_state_dict(state_dict, strict=strict, assign=True)
    if missing:
        _initialise(model, build, missing, device, dtype)
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:
        raise CheckpointError(
            f"{source}: {target} still has uninitialised tensors after loading: {_few(left)}"
        )
    return model.eval()
