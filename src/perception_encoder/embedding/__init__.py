"""The embedding pipeline every command uses: encoders, file loading and batching, text, video files.

- ``encoders``: ``vision_tower``, ``model_device``, ``require_clip``, ``FeatureSpec`` and the ``Encoder``
  protocol that PyTorch models (through ``TorchEncoder``) and ``export.OnnxEncoder`` satisfy;
- ``files``: ``expand_inputs`` (files and folders, bad names skipped), the loaders, ``embed_files``;
- ``text``: ``embed_texts``;
- ``video``: ``VideoLoader``, ``video_encoder``, ``embed_video_file`` (frames pooled by ``clip.pool_frames``);
- ``pipeline``: ``embed_paths``, image and video files -> one embedding each;
- ``output``: ``save_embeddings`` / ``read_embeddings`` (.npy + names, .parquet), names that round-trip;
- ``av``: PE-AV's audio files and videos (sound, frames or both) -> one row each, and its text
  (``embed_av_paths``, ``embed_av_texts``); imported on use.
"""

from .encoders import (
    Encoder,
    FeatureSpec,
    TorchEncoder,
    as_encoder,
    feature_encoder,
    model_device,
    require_clip,
    vision_tower,
)
from .files import (
    MAX_BATCH_SIZE,
    Embedded,
    ImageLoader,
    Inputs,
    Skipped,
    embed_files,
    expand_inputs,
    stack_images,
)
from .output import check_output, escape_name, read_embeddings, save_embeddings, unescape_name
from .pipeline import EmbeddingResult, embed_paths
from .text import TEXT_BATCH_SIZE, embed_texts
from .video import VideoLoader, embed_video_file, video_encoder

__all__ = [
    "MAX_BATCH_SIZE",
    "TEXT_BATCH_SIZE",
    "Embedded",
    "EmbeddingResult",
    "Encoder",
    "FeatureSpec",
    "ImageLoader",
    "Inputs",
    "Skipped",
    "TorchEncoder",
    "VideoLoader",
    "as_encoder",
    "check_output",
    "embed_files",
    "embed_paths",
    "embed_texts",
    "embed_video_file",
    "escape_name",
    "expand_inputs",
    "feature_encoder",
    "model_device",
    "read_embeddings",
    "require_clip",
    "save_embeddings",
    "stack_images",
    "unescape_name",
    "video_encoder",
    "vision_tower",
]
