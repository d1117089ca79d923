"""The ``config.json`` files PE-AV and PE-A-Frame checkpoints come with -> ``AVConfig``, and back.

- the reference release's (hub revision ``perception_models``): ``PEAudioVisualConfig`` /
  ``PEAudioFrameConfig`` keyword arguments; missing keys take the reference's own defaults
  (``core/audio_visual_encoder/config.py``), and ``pe_encoder`` names the frame tower's model;
- transformers' (hub ``main``, or ``save_pretrained``): ``PeAudioVideoConfig`` / ``PeAudioConfig``; the
  frame tower is a timm architecture name with ``model_args``;
- this package's (``pe.save``): ``{"type": "av", ...}`` (``configs.av_config_to_dict``).

``config_from_file_dict`` reads any of them; ``transformers_config_dict`` writes transformers' for a config.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from ..configs import VisionConfig
from .configs import AVConfig, AVTextConfig, DacConfig, TowerConfig, av_config_from_dict

# --- the reference release's config.json -----------------------------------------------------------------

# The reference's defaults where its config.json leaves a key out (core/audio_visual_encoder/config.py).
_REF_TOWER_DEFAULTS = {
    "hidden_size": 1024,
    "intermediate_size": 2752,
    "num_hidden_layers": 16,
    "num_attention_heads": 8,
    "max_position_embeddings": 10_000,
    "rms_norm_eps": 1e-5,
    "attention_bias": False,
}
_REF_DAC_DEFAULTS = {
    "encoder_hidden_size": 64,
    "downsampling_ratios": [2, 8, 10, 12],
    "codebook_size": 1024,
    "codebook_dim": 128,
    "sampling_rate": 48000,
}
_REF_TEXT_DEFAULTS = {
    "hidden_size": 1024,
    "intermediate_size": 2624,
    "num_attention_heads": 16,
    "num_hidden_layers": 28,
    "global_attn_every_n_layers": 3,
    "global_rope_theta": 160000.0,
    "local_rope_theta": 10000.0,
    "layer_norm_eps": 1e-5,
}


def _ref_tower(data: dict[str, Any] | None, where: str) -> TowerConfig:
    d = {**_REF_TOWER_DEFAULTS, **(data or {})}
    heads = int(d["num_attention_heads"])
    kv = d.get("num_key_value_heads")
    if kv is not None and int(kv) != heads:
        raise ValueError(f"{where}: grouped key/value heads ({kv} for {heads} heads) are not supported")
    max_pos = int(d["max_position_embeddings"])
    return TowerConfig(
        hidden_size=int(d["hidden_size"]),
        intermediate_size=int(d["intermediate_size"]),
        num_layers=int(d["num_hidden_layers"]),
        num_heads=heads,
        head_dim=int(d["hidden_size"]) // heads,  # the reference derives it
        max_positions=max_pos,
        rope_theta=float(max(10_000, 2 * max_pos)),
        norm_eps=float(d["rms_norm_eps"]),
        attention_bias=bool(d["attention_bias"]),
    )


def _ref_dac(data: dict[str, Any] | None) -> DacConfig:
    d = {**_REF_DAC_DEFAULTS, **(data or {})}
    # the reference's bottleneck reads codebook_size channels; DAC's encoder writes hidden_size (both 1024)
    return DacConfig(
        encoder_hidden_size=int(d["encoder_hidden_size"]),
        downsampling_ratios=tuple(int(r) for r in d["downsampling_ratios"]),
        hidden_size=int(d.get("hidden_size", d["codebook_size"])),
        codebook_dim=int(d["codebook_dim"]),
        sampling_rate=int(d["sampling_rate"]),
    )


def _text(d: dict[str, Any], layers: int | None) -> AVTextConfig:
    """A ModernBERT config dict (either release) -> ``AVTextConfig`` with ``layers`` layers used (``None``:
    all of them, taking the normed output)."""
    total = int(d.get("num_hidden_layers", 28))
    if layers is not None and not 1 <= layers <= total:
        raise ValueError(f"text layer {layers} is out of range for a text tower of {total} layers")
    rope = d.get("rope_parameters") or {}
    base = AVTextConfig()
    return AVTextConfig(
        vocab_size=int(d.get("vocab_size", base.vocab_size)),
        hidden_size=int(d.get("hidden_size", base.hidden_size)),
        intermediate_size=int(d.get("intermediate_size", base.intermediate_size)),
        num_layers=total if layers is None else layers,
        num_heads=int(d.get("num_attention_heads", base.num_heads)),
        global_attn_every_n_layers=int(d.get("global_attn_every_n_layers", 3)),
        local_attention=int(d.get("local_attention", base.local_attention)),
        global_rope_theta=float(
            (rope.get("full_attention") or {}).get("rope_theta", d.get("global_rope_theta", 160000.0))
        ),
        local_rope_theta=float(
            (rope.get("sliding_attention") or {}).get("rope_theta", d.get("local_rope_theta", 10000.0))
        ),
        norm_eps=float(d.get("norm_eps", d.get("layer_norm_eps", base.norm_eps))),
        max_position_embeddings=int(d.get("max_position_embeddings", base.max_position_embeddings)),
        hidden_activation=str(d.get("hidden_activation", base.hidden_activation)),
        norm_bias=bool(d.get("norm_bias", False)),
        attention_bias=bool(d.get("attention_bias", False)),
        mlp_bias=bool(d.get("mlp_bias", False)),
        pad_token_id=int(d.get("pad_token_id", base.pad_token_id)),
        bos_token_id=int(d.get("bos_token_id", base.bos_token_id)),
        eos_token_id=int(d.get("eos_token_id", base.eos_token_id)),
        cls_token_id=int(d.get("cls_token_id", base.cls_token_id)),
        sep_token_id=int(d.get("sep_token_id", base.sep_token_id)),
        final_norm=layers is None,
    )


def _frame_tower_by_name(name: str) -> VisionConfig:
    from ..configs import get_model_info

    info = get_model_info(name)
    if getattr(info, "is_av", False):
        raise ValueError(f"pe_encoder {name!r} is not a vision model")
    return info.vision


def _from_reference(data: dict[str, Any], frame_model: bool) -> AVConfig:
    text_layer = data.get("nth_text_layer", 22)
    text = _text({**_REF_TEXT_DEFAULTS, **(data.get("text_model") or {})}, text_layer)
    output_dim = int(data.get("output_dim", 1024))
    if frame_model:
        audio = data.get("audio_model") or {}
        return AVConfig(
            kind="a-frame",
            dac=_ref_dac(audio.get("dac_vae_encoder")),
            audio=_ref_tower(audio.get("audio_transformer"), "audio_transformer"),
            video=None,
            fusion=None,
            text=text,
            output_dim=output_dim,
        )
    av = data.get("audio_visual_model") or {}
    audio = av.get("audio_model") or {}
    visual = av.get("visual_model") or {}
    return AVConfig(
        kind="av",
        dac=_ref_dac(audio.get("dac_vae_encoder")),
        audio=_ref_tower(audio.get("audio_transformer"), "audio_transformer"),
        video=_ref_tower(visual.get("visual_transformer"), "visual_transformer"),
        fusion=_ref_tower(av.get("audio_visual_transformer"), "audio_visual_transformer"),
        frames=_frame_tower_by_name(str(visual.get("pe_encoder", "PE-Core-L14-336"))),
        num_frames=16 if visual.get("fixed_len_video") else None,
        text=text,
        output_dim=output_dim,
    )


# --- transformers' config.json ---------------------------------------------------------------------------

# timm's architecture names of PE-Core towers (transformers' frame tower is a timm model)
TIMM_CORE_ARCHITECTURES = {
    "vit_pe_core_tiny_patch16_384": "PE-Core-T16-384",
    "vit_pe_core_small_patch16_384": "PE-Core-S16-384",
    "vit_pe_core_base_patch16_224": "PE-Core-B16-224",
    "vit_pe_core_large_patch14_336": "PE-Core-L14-336",
    "vit_pe_core_gigantic_patch14_448": "PE-Core-G14-448",
}


def _tx_tower(d: dict[str, Any], where: str) -> TowerConfig:
    heads = int(d.get("num_attention_heads", 14))
    kv = d.get("num_key_value_heads")
    if kv is not None and int(kv) != heads:
        raise ValueError(f"{where}: grouped key/value heads ({kv} for {heads} heads) are not supported")
    rope = d.get("rope_parameters") or {}
    theta = rope.get("rope_theta", d.get("rope_theta", 20000.0))
    return TowerConfig(
        hidden_size=int(d.get("hidden_size", 1792)),
        intermediate_size=int(d.get("intermediate_size", 4800)),
        num_layers=int(d.get("num_hidden_layers", 6)),
        num_heads=heads,
        head_dim=int(d.get("head_dim") or 128),
        max_positions=int(d.get("max_position_embeddings", 10000)),
        rope_theta=float(theta),
        norm_eps=float(d.get("rms_norm_eps", 1e-5)),
        attention_bias=bool(d.get("attention_bias", False)),
    )


def _tx_dac(d: dict[str, Any] | None) -> DacConfig:
    d = {"encoder_hidden_size": 64, "downsampling_ratios": [2, 8, 10, 12], "codebook_dim": 128, **(d or {})}
    return DacConfig(
        encoder_hidden_size=int(d["encoder_hidden_size"]),
        downsampling_ratios=tuple(int(r) for r in d["downsampling_ratios"]),
        hidden_size=int(d.get("hidden_size", 1024)),
        codebook_dim=int(d["codebook_dim"]),
        sampling_rate=int(d.get("sampling_rate", 48000)),
    )


def _tx_frames(d: dict[str, Any] | None) -> VisionConfig:
    """transformers' frame tower (a timm architecture name and ``model_args``) -> our ``VisionConfig``."""
    d = d or {}
    arch = str(d.get("architecture", "vit_pe_core_large_patch14_336"))
    if arch not in TIMM_CORE_ARCHITECTURES:
        raise ValueError(f"frame tower: unsupported timm architecture {arch!r} (a PE-Core tower is expected)")
    base = _frame_tower_by_name(TIMM_CORE_ARCHITECTURES[arch])
    args = dict(d.get("model_args") or {})
    changes: dict[str, Any] = {}
    if "depth" in args:
        changes["depth"] = int(args.pop("depth"))
    if "embed_dim" in args:
        changes["width"] = int(args.pop("embed_dim"))
    if "num_heads" in args:
        changes["heads"] = int(args.pop("num_heads"))
    if "img_size" in args:
        size = args.pop("img_size")
        size = size if isinstance(size, int) else int(size[0])
        changes["image_size"] = size
    if "mlp_ratio" in args:
        changes["mlp_dim"] = int(float(args.pop("mlp_ratio")) * changes.get("width", base.width))
    elif "width" in changes:
        changes["mlp_dim"] = base.mlp_dim * changes["width"] // base.width
    if "width" in changes and "heads" not in changes:
        changes["heads"] = max(1, changes["width"] // base.head_dim)
    args.pop("ref_feat_shape", None)  # RoPE positions: ours are the reference's integer grid positions
    if args:
        raise ValueError(f"frame tower: unsupported timm model_args {sorted(args)}")
    # the head's width: transformers sizes it by the labels (``label_names`` / ``id2label``), else
    # ``num_labels``; ``num_classes`` is timm's own default
    labels = (
        len(d.get("label_names") or [])
        or len(d.get("id2label") or {})
        or d.get("num_labels")
        or d.get("num_classes")
        or base.output_dim
    )
    changes["output_dim"] = int(labels)
    return dataclasses.replace(base, **changes)


def _from_transformers(data: dict[str, Any], processor: dict[str, Any] | None) -> AVConfig:
    text_cfg = dict(data.get("text_config") or {})
    # transformers cuts ModernBERT to the layers used; the reference reads that last layer before the norm
    text = _text(text_cfg, int(text_cfg.get("num_hidden_layers", 22)))
    output_dim = text.hidden_size  # every transformers head projects to the text width
    if data.get("model_type") == "pe_audio":
        audio = data.get("audio_config") or {}
        return AVConfig(
            kind="a-frame",
            dac=_tx_dac(audio.get("dac_config")),
            audio=_tx_tower(audio, "audio_config"),
            video=None,
            fusion=None,
            text=text,
            output_dim=output_dim,
        )
    av = data.get("audio_video_config") or {}
    audio = av.get("audio_config") or {}
    video = av.get("video_config") or {}
    return AVConfig(
        kind="av",
        dac=_tx_dac(audio.get("dac_config")),
        audio=_tx_tower(audio, "audio_config"),
        video=_tx_tower(video, "video_config"),
        fusion=_tx_tower(av, "audio_video_config"),
        frames=_tx_frames(video.get("vision_config")),
        num_frames=_processor_frames(processor),
        text=text,
        output_dim=output_dim,
    )


def _processor_frames(processor: dict[str, Any] | None) -> int | None:
    """The fixed frame count a transformers processor config asks for (``num_frames``), if any."""
    if not isinstance(processor, dict):
        return None
    for section in (processor, processor.get("video_processor") or {}):
        value = section.get("num_frames") if isinstance(section, dict) else None
        if isinstance(value, int) and value > 0:
            return value
    return None


def config_from_file_dict(
    data: dict[str, Any], *, frame_model: bool | None = None, processor: dict[str, Any] | None = None
) -> AVConfig:
    """The ``AVConfig`` a ``config.json`` describes: the reference release's, transformers' or ours.

    ``frame_model``: for a reference config, whether it is PE-A-Frame's (its keys tell when ``None``).
    ``processor``: transformers' processor config beside it, for the fixed frame count.
    """
    if not isinstance(data, dict):
        raise TypeError(f"a model config must be a JSON object, got {type(data).__name__}")
    if data.get("type") == "av":
        return av_config_from_dict(data)
    model_type = data.get("model_type")
    if model_type in ("pe_audio", "pe_audio_video"):
        return _from_transformers(data, processor)
    if model_type is not None:
        raise ValueError(f"config.json describes a {model_type!r} model, not PE-AV or PE-A-Frame")
    if frame_model is None:
        frame_model = "audio_visual_model" not in data and "audio_model" in data
    return _from_reference(data, frame_model)


def _timm_architecture(frames: VisionConfig) -> str:
    """The timm PE-Core architecture whose layout ``frames`` shares (patch size, CLS token); its sizes are
    then set through ``model_args``."""
    for arch, name in TIMM_CORE_ARCHITECTURES.items():
        base = _frame_tower_by_name(name)
        if (base.patch_size, base.use_cls_token) == (frames.patch_size, frames.use_cls_token):
            return arch
    raise ValueError(
        f"no timm PE-Core architecture has patch {frames.patch_size} and CLS {frames.use_cls_token}"
    )


def transformers_config_dict(config: AVConfig) -> dict[str, Any]:
    """transformers' config dict for ``config`` (``PeAudioVideoConfig`` / ``PeAudioConfig``): what a
    transformers-layout file of this model is saved with. The text tower is cut to the layers used and,
    as the reference reads the last one before the final norm, ``tie_last_hidden_states`` is off."""
    text = {
        **config.text.modernbert_kwargs(),
        "tie_last_hidden_states": config.text.final_norm,
    }
    dac = {
        "encoder_hidden_size": config.dac.encoder_hidden_size,
        "downsampling_ratios": list(config.dac.downsampling_ratios),
        "hidden_size": config.dac.hidden_size,
        "codebook_dim": config.dac.codebook_dim,
        "sampling_rate": config.dac.sampling_rate,
    }

    def tower(t: TowerConfig) -> dict[str, Any]:
        return {
            "hidden_size": t.hidden_size,
            "intermediate_size": t.intermediate_size,
            "num_hidden_layers": t.num_layers,
            "num_attention_heads": t.num_heads,
            "num_key_value_heads": t.num_heads,
            "head_dim": t.head_dim,
            "max_position_embeddings": t.max_positions,
            "rope_parameters": {"rope_type": "default", "rope_theta": t.rope_theta},
            "rms_norm_eps": t.norm_eps,
            "attention_bias": t.attention_bias,
        }

    if config.kind == "a-frame":
        return {
            "model_type": "pe_audio",
            "architectures": ["PeAudioFrameLevelModel"],
            "text_config": text,
            "audio_config": {**tower(config.audio), "dac_config": dac},
        }
    assert config.video is not None and config.fusion is not None and config.frames is not None
    frames = config.frames
    vision = {
        "architecture": _timm_architecture(frames),
        "model_args": {
            "depth": frames.depth,
            "embed_dim": frames.width,
            "num_heads": frames.heads,
            "img_size": frames.image_size,
            "mlp_ratio": frames.mlp_dim / frames.width,
            "ref_feat_shape": (frames.grid_size, frames.grid_size),
        },
        "num_labels": frames.output_dim,
        "global_pool": "map",
        "do_pooling": True,
    }
    return {
        "model_type": "pe_audio_video",
        "architectures": ["PeAudioVideoModel"],
        "text_config": text,
        "audio_video_config": {
            **tower(config.fusion),
            "audio_config": {**tower(config.audio), "dac_config": dac},
            "video_config": {**tower(config.video), "vision_config": vision},
        },
    }
