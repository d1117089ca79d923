"""PE-AV test helpers: released configs cut to a few blocks, tiny configs, transformers' models with random
weights, checkpoints written in the reference's and transformers' layouts, and a tiny tokenizer.

No test downloads anything: weights are random, in the real formats; the tokenizer is a small word-level
one saved in transformers' format (tokenizer.json + tokenizer_config.json), as the released snapshots ship
theirs. The reference layout is written here from transformers' by this module's own mapping (derived from
the reference's module tree in core/audio_visual_encoder/pe.py), independently of the library's.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch

from perception_encoder.av.config_files import transformers_config_dict
from perception_encoder.av.configs import AVConfig, AVTextConfig, DacConfig, TowerConfig
from perception_encoder.configs import ModelInfo, VisionConfig, get_model_info

TINY_FRAMES = "Test-AV-Frames-Tiny"  # a registered vision config the reference's config.json can name
WORDS = "a an the dog cat bird barking meowing singing music speech rain car engine train siren people talking".split()
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def tiny_frames() -> VisionConfig:
    """A PE-Core-L-shaped frame tower (patch 14, CLS, attention pooling), tiny: 28 px, 32 wide, 1 block."""
    return VisionConfig(
        image_size=28,
        patch_size=14,
        width=32,
        depth=1,
        heads=2,
        mlp_dim=64,
        attn_pooler_heads=8,
        output_dim=16,
    )


def register_tiny_frames(monkeypatch) -> None:
    from perception_encoder import configs

    info = ModelInfo(TINY_FRAMES, "custom", tiny_frames())
    monkeypatch.setitem(configs._REGISTRY, TINY_FRAMES, info)


def tiny_config(kind: str = "av", num_frames: int | None = None, text_layers: int = 2) -> AVConfig:
    """A tiny PE-AV / PE-A-Frame config: the real DAC hop (1920 samples) with few channels, 1-layer towers."""
    tower = TowerConfig(hidden_size=32, intermediate_size=48, num_layers=1, num_heads=2, head_dim=16)
    text = AVTextConfig(
        vocab_size=len(SPECIAL) + len(WORDS),
        hidden_size=32,
        intermediate_size=48,
        num_layers=text_layers,
        num_heads=2,
        pad_token_id=0,
        bos_token_id=2,
        cls_token_id=2,
        eos_token_id=3,
        sep_token_id=3,
    )
    dac = DacConfig(encoder_hidden_size=2, hidden_size=16, codebook_dim=8)
    if kind == "a-frame":
        return AVConfig(
            kind="a-frame", dac=dac, audio=tower, video=None, fusion=None, text=text, output_dim=32
        )
    return AVConfig(
        kind="av",
        dac=dac,
        audio=tower,
        video=tower,
        fusion=tower,
        frames=tiny_frames(),
        num_frames=num_frames,
        text=text,
        output_dim=32,
    )


def cut_config(name: str, layers: int = 1, text_layers: int = 2, image_size: int = 28) -> AVConfig:
    """A released config at its widths, cut: ``layers`` per tower, ``text_layers`` text layers, a one-block
    frame tower at ``image_size`` px."""
    c = get_model_info(name).config
    audio = dataclasses.replace(c.audio, num_layers=layers)
    text = dataclasses.replace(c.text, num_layers=text_layers)
    if c.kind == "a-frame":
        return dataclasses.replace(c, audio=audio, text=text)
    frames = dataclasses.replace(c.frames, depth=1, image_size=image_size)
    video = dataclasses.replace(c.video, num_layers=layers)
    fusion = dataclasses.replace(c.fusion, num_layers=layers)
    return dataclasses.replace(c, audio=audio, video=video, fusion=fusion, frames=frames, text=text)


# --- transformers' models -------------------------------------------------------------------------------------


def transformers_model(config: AVConfig, seed: int = 0):
    """transformers' ``PeAudioVideoModel`` / ``PeAudioFrameLevelModel`` for ``config``, with random weights
    that exercise every parameter (norm gains around 1, Snake alphas around 1, non-trivial logit scales),
    tied as transformers ties them. Its ModernBERT is configured with ``tie_last_hidden_states=False``, so
    its ``hidden_states[-1]`` is the last layer's output before the final norm: the reference's text
    embedding (see ``av.text``)."""
    import transformers
    from transformers.initialization import no_init_weights

    data = transformers_config_dict(config)
    kwargs = {k: v for k, v in data.items() if k not in ("model_type", "architectures")}
    with no_init_weights():  # random values come below; transformers' own init would take seconds
        if config.kind == "a-frame":
            model = transformers.PeAudioFrameLevelModel(transformers.PeAudioConfig(**kwargs))
        else:
            model = transformers.PeAudioVideoModel(transformers.PeAudioVideoConfig(**kwargs))
    model.tie_weights()
    randomize_transformers(model, seed)
    return model.eval()


@torch.no_grad()
def randomize_transformers(model: torch.nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if name.endswith("timm_model.head.bias"):
            p.zero_()  # a PE-Core projection has no bias
        elif name.endswith("logit_scale"):
            p.fill_(4.0)
        elif name.endswith("logit_bias"):
            p.fill_(-1.5)
        elif name.endswith(".alpha") or (p.ndim == 1 and "norm" in name and name.endswith("weight")):
            p.normal_(1.0, 0.1, generator=g)
        elif name.endswith(("class_embedding", "cls_token", "pos_embed", "latent")):
            p.normal_(0.0, 1.0, generator=g)
        else:
            p.normal_(0.0, 0.02, generator=g)


# --- the reference layout, written from transformers' ---------------------------------------------------------


def _tower_to_reference(key: str, tx_prefix: str, ref_prefix: str) -> str | None:
    if not key.startswith(tx_prefix):
        return None
    rest = key[len(tx_prefix) :]
    rest = rest.replace("patch_embedder.class_embedding", "embeddings.cls_token")
    rest = rest.replace("patch_embedder.resnet_block.", "embeddings.resnet_block.")
    return ref_prefix + rest


def reference_state_dict(tx_sd: dict[str, torch.Tensor], config: AVConfig, extra_text_layers: int = 1):
    """The reference release's ``model.safetensors`` keys for transformers' state dict: the bottleneck
    stored whole (mean half, a random log-variance half, the unused ``out_proj``), ``extra_text_layers``
    ModernBERT layers past the one read, no logit scales for PE-AV (the reference model has none)."""
    g = torch.Generator().manual_seed(7)
    out: dict[str, torch.Tensor] = {}
    frame = config.kind == "a-frame"
    audio_tx = "audio_encoder." if frame else "audio_model.audio_encoder."
    audio_ref = "audio_model." if frame else "audio_visual_model.audio_model."
    for key, t in tx_sd.items():
        t = t.clone()
        if key.startswith(
            (
                "audio_model.text_model.",
                "video_model.text_model.",
                "audio_video_encoder.embedder.audio_encoder.",
                "audio_video_encoder.embedder.video_encoder.",
            )
        ):
            continue  # tied copies
        if key.startswith("text_model."):
            out[key] = t
            continue
        if key.startswith(audio_tx + "embedder.dac_encoder."):
            out[audio_ref + "dac_vae_encoder.encoder." + key[len(audio_tx + "embedder.dac_encoder.") :]] = t
            continue
        if key.startswith(audio_tx + "embedder.bottleneck."):
            kind = key.rsplit(".", 1)[1]
            logvar = torch.randn(t.shape, generator=g)
            out[audio_ref + f"dac_vae_encoder.bottleneck.in_proj.{kind}"] = torch.cat([t, logvar])
            continue
        if key.startswith(audio_tx + "embedder.data_proj."):
            out[audio_ref + "data_proj." + key.rsplit(".", 1)[1]] = t
            continue
        name = _tower_to_reference(key, audio_tx, audio_ref + "audio_transformer.")
        if name is None and not frame:
            video = "video_model.video_encoder."
            timm = video + "embedder.vision_model.timm_model."
            if key.startswith(timm):
                continue  # the frame tower: converted below
            if key.startswith(video + "embedder."):
                name = "audio_visual_model.visual_model." + key[len(video + "embedder.") :]
            else:
                name = _tower_to_reference(key, video, "audio_visual_model.visual_model.visual_transformer.")
            fusion = "audio_visual_model.audio_visual_transformer."
            for tx, ref in (
                ("audio_video_encoder.embedder.video_proj.", fusion + "modality_aligner.conv."),
                ("audio_video_encoder.embedder.video_norm.", fusion + "modality_aligner.layer_norm."),
                ("audio_video_encoder.embedder.concat_modality_proj.", fusion + "concat_modality_proj."),
                ("audio_video_encoder.embedder.data_proj.", fusion + "data_proj."),
            ):
                if key.startswith(tx):
                    name = ref + key[len(tx) :]
            name = name or _tower_to_reference(key, "audio_video_encoder.", fusion)
        if name is None:
            heads = {
                "audio_model.audio_head.": "audio_head.",
                "video_model.video_head.": "visual_head.",
                "audio_video_head.": "audio_visual_head.",
                "audio_model.text_audio_head.": "audio_text_head.",
                "video_model.text_video_head.": "visual_text_head.",
                "text_audio_video_head.": "audio_visual_text_head.",
                "audio_plus_text_head.": "audio_plus_text_head.",
                "video_plus_text_head.": "visual_plus_text_head.",
                "audio_head.": "audio_head.",
                "text_audio_head.": "text_head.",
            }
            for tx, ref in heads.items():
                if key.startswith(tx):
                    name = ref + key[len(tx) :]
                    break
        if name is None and frame and key in ("text_audio_logit_scale", "text_audio_logit_bias"):
            name = key.replace("text_audio_", "")
        if name is None:
            if "logit" in key:
                continue  # PE-AV: the reference model has no logit scales
            raise AssertionError(f"test mapping misses {key}")
        out[name] = t
    codebook = config.dac.codebook_dim
    out[audio_ref + "dac_vae_encoder.bottleneck.out_proj.weight"] = torch.randn(
        config.dac.hidden_size, codebook, 1
    )
    out[audio_ref + "dac_vae_encoder.bottleneck.out_proj.bias"] = torch.randn(config.dac.hidden_size)
    if not frame:
        from timm.models.eva import checkpoint_filter_fn  # noqa: F401  (timm is a test dependency)

        from perception_encoder.weights.formats import vision_from_timm

        timm = "video_model.video_encoder.embedder.vision_model.timm_model."
        vision = vision_from_timm({k[len(timm) :]: v for k, v in tx_sd.items() if k.startswith(timm)})
        out.update({f"audio_visual_model.visual_model.pe_encoder.{k}": v.clone() for k, v in vision.items()})
    n = config.text.num_layers
    for extra in range(extra_text_layers):  # layers the reference's text tower holds but never reads
        for key in [k for k in tx_sd if k.startswith("text_model.layers.1.")]:
            out[key.replace("layers.1.", f"layers.{n + extra}.")] = torch.randn(tx_sd[key].shape, generator=g)
    return out


def reference_config_dict(
    config: AVConfig, frames_name: str = TINY_FRAMES, extra_text_layers: int = 1
) -> dict:
    """The reference release's ``config.json`` for ``config`` (``PEAudioVisualConfig`` keywords)."""

    def tower(t: TowerConfig) -> dict:
        return {
            "hidden_size": t.hidden_size,
            "intermediate_size": t.intermediate_size,
            "num_hidden_layers": t.num_layers,
            "num_attention_heads": t.num_heads,
            "max_position_embeddings": t.max_positions,
        }

    dac = {
        "encoder_hidden_size": config.dac.encoder_hidden_size,
        "downsampling_ratios": list(config.dac.downsampling_ratios),
        "codebook_size": config.dac.hidden_size,
        "codebook_dim": config.dac.codebook_dim,
        "sampling_rate": config.dac.sampling_rate,
    }
    text = {
        **config.text.modernbert_kwargs(),
        "num_hidden_layers": config.text.num_layers + extra_text_layers,
    }
    audio = {"dac_vae_encoder": dac, "audio_transformer": tower(config.audio)}
    if config.kind == "a-frame":
        return {
            "audio_model": audio,
            "text_model": text,
            "output_dim": config.output_dim,
            "nth_text_layer": config.text.num_layers,
        }
    return {
        "audio_visual_model": {
            "audio_model": audio,
            "visual_model": {
                "pe_encoder": frames_name,
                "visual_transformer": tower(config.video),
                "fixed_len_video": config.num_frames == 16,
            },
            "audio_visual_transformer": tower(config.fusion),
        },
        "text_model": text,
        "output_dim": config.output_dim,
        "nth_text_layer": config.text.num_layers,
    }


# --- files ------------------------------------------------------------------------------------------------------


def write_tokenizer(folder: Path) -> Path:
    """A word-level tokenizer ([CLS] words [SEP]) saved as transformers does (tokenizer.json and config)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(SPECIAL + WORDS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]"
    )
    folder.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(str(folder))
    return folder


def write_transformers_folder(config: AVConfig, folder: Path, seed: int = 0):
    """A ``save_pretrained`` folder of transformers' model for ``config`` plus the tokenizer; returns the
    transformers model."""
    model = transformers_model(config, seed)
    model.save_pretrained(str(folder))
    write_tokenizer(folder)
    return model


def write_reference_folder(config: AVConfig, folder: Path, tx_model, extra_text_layers: int = 1) -> Path:
    """The reference release's snapshot files (model.safetensors, config.json, tokenizer) for ``config``."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    sd = reference_state_dict(tx_model.state_dict(), config, extra_text_layers)
    save_file({k: v.contiguous() for k, v in sd.items()}, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(
        json.dumps(reference_config_dict(config, extra_text_layers=extra_text_layers))
    )
    write_tokenizer(folder)
    return folder


def load_tx_weights_into_ours(tx_model, config: AVConfig):
    """Our model with transformers' model's weights, through the library's transformers-layout converter."""
    from perception_encoder.av.loading import check_av_state_dict, model_class
    from perception_encoder.av.weights import to_native_av
    from perception_encoder.weights.strict import load_into

    native = to_native_av(tx_model.state_dict(), config, "transformers")
    cls = model_class(config)
    with torch.device("meta"):
        check_av_state_dict(cls(config), native, "test model", "transformers' state dict")
    return load_into(lambda: cls(config), native, config=config, target="test model", source="transformers")


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


def waves(lengths: list[int], seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, generator=g) * 0.1 for n in lengths]
