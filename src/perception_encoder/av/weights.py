"""PE-AV and PE-A-Frame checkpoint layouts, and exact conversions into this package's (``"native"``).

- ``"reference"``: the reference release's ``model.safetensors`` (hub revision ``perception_models``):
  ``audio_visual_model.{audio_model,visual_model,audio_visual_transformer}.*``, ``text_model.*`` and the
  heads (``audio_head``, ``visual_head``, ``audio_visual_head``, ``audio_text_head``, ...); PE-A-Frame:
  ``audio_model.*``, ``text_model.*``, ``audio_head``, ``text_head``, ``logit_scale``, ``logit_bias``.
  The codec's variational bottleneck is stored whole (mean and log-variance halves, and a decoder-side
  ``out_proj``): only the mean half is used and kept. The ModernBERT text tower may hold more layers than
  are read (``nth_text_layer``): the rest are dropped. It has no logit scales for PE-AV (the reference
  model has none): they are set to scale 1, bias 0 (scores are then the raw dot products).
- ``"transformers"``: transformers' ``PeAudioVideoModel`` / ``PeAudioFrameLevelModel`` (hub ``main``, or a
  ``save_pretrained`` folder): ``audio_model.audio_encoder.*``, ``video_model.video_encoder.*`` (the frame
  tower is a timm model: ``embedder.vision_model.timm_model.<timm keys>``), ``audio_video_encoder.*``,
  ``text_model.*`` and the heads with their logit scales. Tied weights are stored once
  (``text_model``, ``audio_model.audio_encoder``, ``video_model.video_encoder``); their copies
  (``audio_model.text_model``, ``audio_video_encoder.embedder.audio_encoder``, ...) are used when the
  canonical ones are absent and dropped otherwise: this model holds each tensor once (re-tied).
- ``"native"``: ``model.state_dict()`` of ``PEAudioVisual`` / ``PEAudioFrame``.

Every conversion renames keys and slices tensors, never recomputes them.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping

import torch

from ..errors import CheckpointError
from ..weights.formats import vision_from_timm
from .configs import AVConfig

log = logging.getLogger("perception_encoder.weights")

StateDict = dict[str, torch.Tensor]
AV_LAYOUTS = ("reference", "transformers", "native")

# A tower's own keys are the same in every layout, except the patcher's prefix and CLS name in
# transformers: patch_embedder.{resnet_block, class_embedding} for embeddings.{resnet_block, cls_token}.
_TOWER_PARTS = ("embeddings.", "layers.", "norm.", "output.")


def detect_av_layout(keys: set[str] | Mapping[str, object]) -> str | None:
    """``"reference"``, ``"transformers"``, ``"native"`` or ``None`` when the keys are not PE-AV's."""
    keys = set(keys)

    def has(prefix: str) -> bool:
        return any(k.startswith(prefix) for k in keys)

    if (
        has("audio_visual_model.")
        or has("audio_model.dac_vae_encoder.")
        or has("audio_model.audio_transformer.")
    ):
        return "reference"
    if has("audio_video_encoder.") or has("audio_model.audio_encoder.") or has("audio_encoder.embedder."):
        return "transformers"
    if has("audio.codec.") or has("audio.transformer."):
        return "native"
    return None


def is_frame_checkpoint(keys: set[str], layout: str) -> bool:
    """Whether a checkpoint of ``layout`` holds a PE-A-Frame model (no video side)."""
    if layout == "reference":
        return not any(k.startswith("audio_visual_model.") for k in keys)
    if layout == "transformers":
        return not any(k.startswith(("audio_video_encoder.", "video_model.")) for k in keys)
    return not any(k.startswith("video.") for k in keys)


# --- renaming machinery ------------------------------------------------------------------------------------

Rule = tuple[str, str]  # (source prefix, native prefix): longest source prefix wins


def _rename(sd: Mapping[str, torch.Tensor], rules: list[Rule]) -> tuple[StateDict, list[str]]:
    """Keys renamed by the first matching prefix rule (rules sorted longest first); unmatched keys are
    returned as they are (a strict load reports them) with their names listed."""
    ordered = sorted(rules, key=lambda r: len(r[0]), reverse=True)
    out: StateDict = {}
    unmatched: list[str] = []
    for key, t in sd.items():
        for src, dst in ordered:
            if key.startswith(src):
                out[dst + key[len(src) :]] = t
                break
        else:
            out[key] = t
            unmatched.append(key)
    return out, unmatched


def _tower_rules(src: str, dst: str, transformers: bool) -> list[Rule]:
    """The rules for one tower: ``src`` (the layout's tower prefix) -> ``dst`` (native tower prefix)."""
    if not transformers:
        return [(src + part, dst + part) for part in _TOWER_PARTS]
    return [
        (src + "patch_embedder.class_embedding", dst + "embeddings.cls_token"),
        (src + "patch_embedder.resnet_block.", dst + "embeddings.resnet_block."),
        *((src + part, dst + part) for part in _TOWER_PARTS[1:]),
    ]


def _head_rules(pairs: list[tuple[str, str]]) -> list[Rule]:
    return [(f"{src}.", f"{dst}.") for src, dst in pairs]


def _keep_mean_half(sd: StateDict, key_prefix: str, codebook_dim: int) -> None:
    """The reference's bottleneck holds mean and log-variance stacked; keep the mean half."""
    for kind in ("weight", "bias"):
        key = f"{key_prefix}.{kind}"
        if key in sd and sd[key].shape[0] == 2 * codebook_dim:
            sd[key] = sd[key][:codebook_dim]


def _drop_unused_text_layers(sd: StateDict, config: AVConfig, source: str) -> None:
    """Text layers past the one read (``nth_text_layer``) are never used: drop them, and say so."""
    pattern = re.compile(r"^text\.bert\.layers\.(\d+)\.")
    extra = sorted(
        {int(m.group(1)) for k in sd if (m := pattern.match(k))} - set(range(config.text.num_layers))
    )
    if not extra or extra[0] != config.text.num_layers:
        return
    for k in [k for k in sd if (m := pattern.match(k)) and int(m.group(1)) >= config.text.num_layers]:
        del sd[k]
    log.info(
        "%s: text layers %d..%d are not read (the text embedding is layer %d's output); dropped",
        source,
        extra[0],
        extra[-1],
        config.text.num_layers,
    )


# --- the reference release -----------------------------------------------------------------------------------


def _reference_rules(config: AVConfig) -> list[Rule]:
    if config.kind == "a-frame":
        audio = "audio_model."
        rules = [("text_model.", "text.bert.")]
        rules += _head_rules([("audio_head", "audio_head"), ("text_head", "text_audio_head")])
        rules += [("logit_scale", "logit_scale"), ("logit_bias", "logit_bias")]
    else:
        audio = "audio_visual_model.audio_model."
        video = "audio_visual_model.visual_model."
        fusion = "audio_visual_model.audio_visual_transformer."
        rules = [("text_model.", "text.bert.")]
        rules += [
            (video + "pe_encoder.", "video.pe_encoder."),
            (video + "proj.", "video.proj."),
            (video + "data_proj.", "video.data_proj."),
            (fusion + "modality_aligner.", "fusion.aligner."),
            (fusion + "concat_modality_proj.", "fusion.concat_modality_proj."),
            (fusion + "data_proj.", "fusion.data_proj."),
        ]
        rules += _tower_rules(video + "visual_transformer.", "video.transformer.", False)
        rules += _tower_rules(fusion, "fusion.transformer.", False)
        rules += _head_rules(
            [
                ("audio_head", "audio_head"),
                ("visual_head", "video_head"),
                ("audio_visual_head", "audio_video_head"),
                ("audio_text_head", "text_audio_head"),
                ("visual_text_head", "text_video_head"),
                ("audio_visual_text_head", "text_audio_video_head"),
                ("audio_plus_text_head", "audio_plus_text_head"),
                ("visual_plus_text_head", "video_plus_text_head"),
            ]
        )
    rules += [
        (audio + "dac_vae_encoder.encoder.", "audio.codec.encoder."),
        (audio + "dac_vae_encoder.bottleneck.in_proj.", "audio.codec.bottleneck."),
        (audio + "data_proj.", "audio.data_proj."),
    ]
    rules += _tower_rules(audio + "audio_transformer.", "audio.transformer.", False)
    return rules


def _from_reference(sd: Mapping[str, torch.Tensor], config: AVConfig, source: str) -> StateDict:
    prefix = "audio_model." if config.kind == "a-frame" else "audio_visual_model.audio_model."
    unused = prefix + "dac_vae_encoder.bottleneck.out_proj."  # the decoder side of the bottleneck
    out, _ = _rename({k: v for k, v in sd.items() if not k.startswith(unused)}, _reference_rules(config))
    _keep_mean_half(out, "audio.codec.bottleneck", config.dac.codebook_dim)
    if config.kind == "av":
        # the reference model has no logit scales: dot products are the scores
        for pair in _AV_PAIRS:
            out.setdefault(f"{pair}_logit.scale", torch.ones(1))
            out.setdefault(f"{pair}_logit.bias", torch.zeros(1))
    return out


_AV_PAIRS = (
    "audio_text",
    "video_text",
    "audio_video",
    "audio_video_text",
    "audio_plus_text",
    "video_plus_text",
)


# --- transformers ---------------------------------------------------------------------------------------------

# tied copies -> the canonical prefix transformers saves (used when the canonical one is missing)
_TIED = (
    ("audio_model.text_model.", "text_model."),
    ("video_model.text_model.", "text_model."),
    ("audio_video_encoder.embedder.audio_encoder.", "audio_model.audio_encoder."),
    ("audio_video_encoder.embedder.video_encoder.", "video_model.video_encoder."),
)


def _retie(sd: Mapping[str, torch.Tensor]) -> StateDict:
    """One copy of every tied tensor, under its canonical name."""
    out: StateDict = {}
    for key, t in sd.items():
        for copy, canonical in _TIED:
            if key.startswith(copy):
                out.setdefault(canonical + key[len(copy) :], t)
                break
        else:
            out[key] = t
    return out


def _audio_encoder_rules(src: str) -> list[Rule]:
    return [
        (src + "embedder.dac_encoder.", "audio.codec.encoder."),
        (src + "embedder.bottleneck.", "audio.codec.bottleneck."),
        (src + "embedder.data_proj.", "audio.data_proj."),
        *_tower_rules(src, "audio.transformer.", True),
    ]


def _transformers_rules(config: AVConfig) -> list[Rule]:
    rules = [("text_model.", "text.bert.")]
    if config.kind == "a-frame":
        rules += _audio_encoder_rules("audio_encoder.")
        rules += _head_rules([("audio_head", "audio_head"), ("text_audio_head", "text_audio_head")])
        rules += [("text_audio_logit_scale", "logit_scale"), ("text_audio_logit_bias", "logit_bias")]
        return rules
    video = "video_model.video_encoder."
    rules += _audio_encoder_rules("audio_model.audio_encoder.")
    rules += [
        (video + "embedder.proj.", "video.proj."),
        (video + "embedder.data_proj.", "video.data_proj."),
        *_tower_rules(video, "video.transformer.", True),
        ("audio_video_encoder.embedder.video_proj.", "fusion.aligner.conv."),
        ("audio_video_encoder.embedder.video_norm.", "fusion.aligner.layer_norm."),
        ("audio_video_encoder.embedder.concat_modality_proj.", "fusion.concat_modality_proj."),
        ("audio_video_encoder.embedder.data_proj.", "fusion.data_proj."),
        *_tower_rules("audio_video_encoder.", "fusion.transformer.", True),
    ]
    rules += _head_rules(
        [
            ("audio_model.audio_head", "audio_head"),
            ("video_model.video_head", "video_head"),
            ("audio_video_head", "audio_video_head"),
            ("audio_model.text_audio_head", "text_audio_head"),
            ("video_model.text_video_head", "text_video_head"),
            ("text_audio_video_head", "text_audio_video_head"),
            ("audio_plus_text_head", "audio_plus_text_head"),
            ("video_plus_text_head", "video_plus_text_head"),
        ]
    )
    names = {
        "audio_text": "audio_model.text_audio_logit",
        "video_text": "video_model.text_video_logit",
        "audio_video": "audio_video_logit",
        "audio_video_text": "text_audio_video_logit",
        "audio_plus_text": "audio_plus_text_logit",
        "video_plus_text": "video_plus_text_logit",
    }
    for pair, name in names.items():
        rules += [(f"{name}_scale", f"{pair}_logit.scale"), (f"{name}_bias", f"{pair}_logit.bias")]
    return rules


_TIMM = "video_model.video_encoder.embedder.vision_model.timm_model."


def _from_transformers(sd: Mapping[str, torch.Tensor], config: AVConfig, source: str) -> StateDict:
    sd = _retie(sd)
    timm = {k[len(_TIMM) :]: v for k, v in sd.items() if k.startswith(_TIMM)}
    rest = {k: v for k, v in sd.items() if not k.startswith(_TIMM)}
    out, _ = _rename(rest, _transformers_rules(config))
    if timm:
        # the frame tower is timm's; its head bias is zero in a PE-Core tower (raises otherwise)
        out.update({f"video.pe_encoder.{k}": v for k, v in vision_from_timm(timm, source).items()})
    return out


# --- entry point -----------------------------------------------------------------------------------------------

_CONVERTERS: dict[str, Callable[[Mapping[str, torch.Tensor], AVConfig, str], StateDict]] = {
    "reference": _from_reference,
    "transformers": _from_transformers,
    "native": lambda sd, config, source: dict(sd),
}


def to_native_av(
    sd: Mapping[str, torch.Tensor], config: AVConfig, layout: str | None = None, source: str = "checkpoint"
) -> StateDict:
    """A PE-AV / PE-A-Frame state dict in any layout -> this package's, for ``config`` (which says how
    many text layers are read and how wide the bottleneck's mean is)."""
    layout = layout or detect_av_layout(sd)
    if layout not in _CONVERTERS:
        raise CheckpointError(
            f"{source}: not a PE-AV or PE-A-Frame checkpoint (expected the reference, transformers or this "
            "package's layout)"
        )
    # RoPE tables some libraries persist are derived from the config, never loaded
    sd = {k: v for k, v in sd.items() if not re.search(r"(rotary_emb|rope)\.[\w.]*(inv_freq|freqs)", k)}
    out = _CONVERTERS[layout](sd, config, source)
    _drop_unused_text_layers(out, config, source)
    return out
