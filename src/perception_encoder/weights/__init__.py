"""Checkpoint files: layouts and conversions (``formats``), hub look-up (``hub``), reading, writing and
strict low-memory loading (``io``). ``perception_encoder.factory`` puts them together as ``load``."""

from .formats import (
    FORMATS,
    convert_state_dict,
    detect_format,
    from_native,
    is_clip,
    to_native,
    unwrap_state_dict,
    vision_from_timm,
    vision_part,
    vision_to_timm,
)
from .hub import is_hub_spec, parse_hub_spec, resolve_hub_spec, resolve_released
from .io import (
    CHECKPOINT_SUFFIXES,
    check_state_dict,
    infer_config,
    load_into,
    read_config,
    read_state_dict,
    registered_matches,
    save_safetensors,
    write_checkpoint,
)

__all__ = [
    "CHECKPOINT_SUFFIXES",
    "FORMATS",
    "check_state_dict",
    "convert_state_dict",
    "detect_format",
    "from_native",
    "infer_config",
    "is_clip",
    "is_hub_spec",
    "load_into",
    "parse_hub_spec",
    "read_config",
    "read_state_dict",
    "registered_matches",
    "resolve_hub_spec",
    "resolve_released",
    "save_safetensors",
    "to_native",
    "unwrap_state_dict",
    "vision_from_timm",
    "vision_part",
    "vision_to_timm",
    "write_checkpoint",
]
