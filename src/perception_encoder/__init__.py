"""Perception Encoder: PE-Core CLIP models, PE-Lang and PE-Spatial vision towers, PE-AV and PE-A-Frame.

Public API (imported lazily so ``import perception_encoder`` and the ``pe`` command start fast)::

    import perception_encoder as pe
    model = pe.load("PE-Core-B16-224")           # CLIP; PE-Lang / PE-Spatial names give a vision tower
    tok = pe.tokenizer(model.text.context_length)
    tf = pe.image_transform(model.visual.config.image_size)
"""

from __future__ import annotations

from .lazy import lazy_exports

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS: dict[str, str] = {
    # models and configs
    "CLIP": "clip",
    "VisionTransformer": "vision",
    "TextTransformer": "text",
    "VisionConfig": "configs",
    "TextConfig": "configs",
    "CLIPConfig": "configs",
    "ModelInfo": "configs",
    "list_models": "configs",
    "get_model_info": "configs",
    "register": "configs",
    "UnknownModelError": "configs",
    "PEAudioVisual": "av.model",
    "PEAudioFrame": "av.model",
    "AVConfig": "av.configs",
    # loading and saving
    "load": "factory",
    "create_model": "factory",
    "save": "factory",
    "convert": "factory",
    "inspect_checkpoint": "factory",
    "count_parameters": "factory",
    "detect_format": "weights.formats",
    "convert_state_dict": "weights.formats",
    "infer_config": "weights.shapes",
    "read_state_dict": "weights.files",
    # data in
    "tokenizer": "tokenization",
    "Tokenizer": "tokenization",
    "image_transform": "transforms",
    "ImageTransform": "transforms",
    "load_image": "images",
    "iter_image_files": "images",
    "IMAGE_EXTENSIONS": "images",
    "denormalize": "transforms",
    "to_normalized_tensor": "transforms",
    "load_video": "video",
    "load_audio": "av.audio",
    "pad_waveforms": "av.audio",
    "is_audio_file": "av.audio",
    "sample_frame_indices": "video",
    "is_video_file": "video",
    "iter_video_chunks": "video",
    "embed_video_file": "embedding.video",
    "embed_paths": "embedding",
    "embed_texts": "embedding",
    "read_embeddings": "embedding",
    "embed_dataset": "datasets.embed",
    "open_dataset": "datasets",
    "EmbeddingDataset": "datasets",
    "build_index": "index",
    "open_index": "index",
    "dedup": "index",
    "VideoDataset": "video",
    "collate_videos": "video",
    "patch_features": "dense",
    "save_features": "dense",
    "pca_rgb": "dense",
    "point_similarity": "dense",
    "text_similarity": "dense",
    "match_images": "dense",
    "propagate_masks": "dense",
    "tile_image": "tiling",
    "tile_grid": "tiling",
    "stitch_tiles": "tiling",
    "native_resolution_image": "tiling",
    "VisionLanguageModel": "vlm",
    "PLMProjector": "vlm",
    "load_plm_projector": "vlm",
    "VLMProcessor": "vlm",
    "train_projector": "vlm",
    # tasks
    "zero_shot_classifier": "zeroshot",
    "zero_shot_probs": "zeroshot",
    "zero_shot_logits": "zeroshot",
    # evaluation
    "evaluate_zeroshot": "eval.zeroshot",
    "evaluate_retrieval": "eval.retrieval",
    "evaluate_linear_probe": "eval.probe",
    "evaluate_knn": "eval.probe",
    "evaluate_video_zeroshot": "eval.video",
    "evaluate_video_retrieval": "eval.video",
    # export
    "export_onnx": "export",
    "OnnxEncoder": "export",
    # training
    "TrainConfig": "train",
    "TrainResult": "train",
    "Lamb": "train",
    # errors
    "PEError": "errors",
    "ImageLoadError": "errors",
    "VideoLoadError": "errors",
    "AudioLoadError": "errors",
    "CheckpointError": "errors",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
