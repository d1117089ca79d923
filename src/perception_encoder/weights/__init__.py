"""Checkpoint files, one module per job, which ``perception_encoder.factory`` puts together as ``load``:

- ``formats``: the layouts met in the wild (reference, timm, open_clip, native) and exact conversions;
- ``hub``: registered names and ``hf-hub:`` strings -> local files through ``huggingface_hub``;
- ``files``: reading and writing checkpoint files and the config saved with them;
- ``shapes``: configs from tensor shapes, matching them to registered models, and the one rule for which
  config a file is loaded under (``config_for_checkpoint``);
- ``strict``: the key-and-shape check and low-memory loading into a model built on the meta device.
"""

from .files import CHECKPOINT_SUFFIXES, read_config, read_state_dict, save_safetensors, write_checkpoint
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
from .shapes import config_for_checkpoint, infer_config, registered_matches
from .strict import check_state_dict, load_into

__all__ = [
    "CHECKPOINT_SUFFIXES",
    "FORMATS",
    "check_state_dict",
    "config_for_checkpoint",
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
