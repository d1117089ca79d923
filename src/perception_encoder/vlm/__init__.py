"""PE-Lang inside a language model, PerceptionLM style (SPEC §6).

* ``PLMProjector`` / ``load_plm_projector``: the MLP + 2x2 pooling projector, and released checkpoints.
* ``VLMProcessor``: prompts with ``<image>`` / ``<video>`` placeholders -> ids, labels, pixels.
* ``VisionLanguageModel``: vision tower + projector + any ``transformers`` causal LM.
* ``train_projector``: projector alignment on image-caption pairs (encoder and LM frozen).

Needs the optional extra ``vlm`` (``transformers``) for the language model and tokenizer.
"""

from __future__ import annotations

from .align import train_projector
from .model import VisionLanguageModel
from .processor import ImageItem, VideoItem, VLMBatch, VLMProcessor, VLMSample
from .projector import PLMProjector, load_plm_projector, projector_state_dict

__all__ = [
    "PLMProjector",
    "load_plm_projector",
    "projector_state_dict",
    "VLMProcessor",
    "VLMBatch",
    "VLMSample",
    "ImageItem",
    "VideoItem",
    "VisionLanguageModel",
    "train_projector",
]
