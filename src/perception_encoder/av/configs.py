"""PE-AV and PE-A-Frame configurations as data, the released names, and the config files met in the wild.

A PE-AV model is a DAC audio codec (48 kHz, hop 1920 = 25 frames/s) feeding an audio tower, PE-Core-L14-336
frame embeddings feeding a video tower, a fusion tower over both, a ModernBERT text tower and contrastive
heads. PE-A-Frame is the audio tower and the text tower with per-frame heads. Every tower is the same
block stack (``TowerConfig``). Nothing here imports torch: configs are plain frozen dataclasses.

This package saves them as ``{"type": "av", ...}`` (``av_config_to_dict``); ``config_files`` reads the
reference release's and transformers' ``config.json``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from ..configs import VisionConfig

# ``perception_encoder.configs`` registers the released names from this module when it is imported, so
# this module reads the core configs only inside functions (no import cycle, whichever is imported first).


def _check_int(owner: str, name: str, value: Any, low: int, high: int) -> None:
    from ..configs import _check_int as check

    check(owner, name, value, low, high)


def _check_float(owner: str, name: str, value: Any) -> None:
    from ..configs import _check_float as check

    check(owner, name, value)


AVKind = Literal["av", "a-frame"]

#: The hub revision holding the reference release's files (the reference's ``from_config`` downloads it).
REFERENCE_REVISION = "perception_models"
#: Files of a released snapshot: the weights, the config, and the text tokenizer.
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


@dataclass(frozen=True)
class DacConfig:
    """The DAC audio encoder: ``encoder_hidden_size`` channels doubled at each of the strided stages
    (``downsampling_ratios``; their product is the hop), ``hidden_size`` channels out, then the bottleneck
    keeps the mean half: ``codebook_dim`` features per frame."""

    encoder_hidden_size: int = 64
    downsampling_ratios: tuple[int, ...] = (2, 8, 10, 12)
    hidden_size: int = 1024
    codebook_dim: int = 128
    sampling_rate: int = 48000

    @property
    def hop_length(self) -> int:
        """Samples per codec frame (1920 at 48 kHz: one frame every 40 ms)."""
        return math.prod(self.downsampling_ratios)

    @property
    def frame_seconds(self) -> float:
        return self.hop_length / self.sampling_rate

    def __post_init__(self) -> None:
        owner = "DacConfig"
        object.__setattr__(self, "downsampling_ratios", tuple(self.downsampling_ratios))
        _check_int(owner, "encoder_hidden_size", self.encoder_hidden_size, 1, 4096)
        _check_int(owner, "hidden_size", self.hidden_size, 1, 32768)
        _check_int(owner, "codebook_dim", self.codebook_dim, 1, 32768)
        _check_int(owner, "sampling_rate", self.sampling_rate, 1000, 768000)
        if not 1 <= len(self.downsampling_ratios) <= 8:
            raise ValueError(f"DacConfig: 1 to 8 downsampling ratios, got {self.downsampling_ratios}")
        for r in self.downsampling_ratios:
            _check_int(owner, "downsampling ratio", r, 1, 64)


@dataclass(frozen=True)
class TowerConfig:
    """One transformer tower (audio, video or fusion): a CLS token after a 1-D ResNet patcher, pre-norm
    layers with RMSNorm, q/k RMSNorm over each head, 1-D RoPE and a SwiGLU MLP; a final RMSNorm and a
    linear map. The output at the CLS position is the pooled output."""

    hidden_size: int = 1792
    intermediate_size: int = 4800
    num_layers: int = 6
    num_heads: int = 14
    head_dim: int = 128
    max_positions: int = 10000
    rope_theta: float = 20000.0  # the reference: max(10000, 2 * max_positions)
    norm_eps: float = 1e-5
    attention_bias: bool = False

    def __post_init__(self) -> None:
        owner = "TowerConfig"
        _check_int(owner, "hidden_size", self.hidden_size, 1, 32768)
        _check_int(owner, "intermediate_size", self.intermediate_size, 1, 262144)
        _check_int(owner, "num_layers", self.num_layers, 1, 512)
        _check_int(owner, "num_heads", self.num_heads, 1, 1024)
        _check_int(owner, "head_dim", self.head_dim, 2, 4096)
        _check_int(owner, "max_positions", self.max_positions, 1, 10_000_000)
        _check_float(owner, "rope_theta", self.rope_theta)
        _check_float(owner, "norm_eps", self.norm_eps)
        if self.head_dim % 2:
            raise ValueError(f"TowerConfig: RoPE needs an even head_dim, got {self.head_dim}")


@dataclass(frozen=True)
class AVTextConfig:
    """The ModernBERT text tower (transformers' ``ModernBertModel``). ``num_layers`` layers are built; the
    text embedding is the first token of the last one's output **before** the final norm (the reference
    takes ``hidden_states[nth_text_layer]``; 22 of 28 for the released models). ``final_norm=True`` takes
    the normed output instead (the reference with ``nth_text_layer=None``)."""

    vocab_size: int = 50368
    hidden_size: int = 1024
    intermediate_size: int = 2624
    num_layers: int = 22
    num_heads: int = 16
    global_attn_every_n_layers: int = 3
    local_attention: int = 128
    global_rope_theta: float = 160000.0
    local_rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    max_position_embeddings: int = 8192
    hidden_activation: str = "gelu"
    norm_bias: bool = False
    attention_bias: bool = False
    mlp_bias: bool = False
    pad_token_id: int = 50283
    bos_token_id: int = 50281
    eos_token_id: int = 50282
    cls_token_id: int = 50281
    sep_token_id: int = 50282
    final_norm: bool = False

    def __post_init__(self) -> None:
        owner = "AVTextConfig"
        _check_int(owner, "vocab_size", self.vocab_size, 1, 10_000_000)
        _check_int(owner, "hidden_size", self.hidden_size, 1, 32768)
        _check_int(owner, "intermediate_size", self.intermediate_size, 1, 262144)
        _check_int(owner, "num_layers", self.num_layers, 1, 512)
        _check_int(owner, "num_heads", self.num_heads, 1, self.hidden_size)
        _check_int(owner, "global_attn_every_n_layers", self.global_attn_every_n_layers, 1, 512)
        _check_int(owner, "local_attention", self.local_attention, 2, 1_000_000)
        _check_int(owner, "max_position_embeddings", self.max_position_embeddings, 1, 10_000_000)
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"AVTextConfig: hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}"
            )

    def modernbert_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of transformers' ``ModernBertConfig`` for this tower."""
        return {
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "global_attn_every_n_layers": self.global_attn_every_n_layers,
            "local_attention": self.local_attention,
            "global_rope_theta": self.global_rope_theta,
            "local_rope_theta": self.local_rope_theta,
            "norm_eps": self.norm_eps,
            "max_position_embeddings": self.max_position_embeddings,
            "hidden_activation": self.hidden_activation,
            "norm_bias": self.norm_bias,
            "attention_bias": self.attention_bias,
            "mlp_bias": self.mlp_bias,
            "pad_token_id": self.pad_token_id,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_id,
            "cls_token_id": self.cls_token_id,
            "sep_token_id": self.sep_token_id,
        }


@dataclass(frozen=True)
class AVConfig:
    """A PE-AV (``kind="av"``) or PE-A-Frame (``kind="a-frame"``) model.

    ``frames``: the frame tower (PE-Core-L14-336's vision tower, pooled and projected); ``num_frames``: the
    fixed number of frames the model samples from a video (16 for the ``-16-frame`` models), ``None`` for
    every frame. PE-A-Frame has no video, fusion or frame tower.
    """

    kind: AVKind = "av"
    dac: DacConfig = field(default_factory=DacConfig)
    audio: TowerConfig = field(default_factory=TowerConfig)
    video: TowerConfig | None = field(default_factory=TowerConfig)
    fusion: TowerConfig | None = field(default_factory=TowerConfig)
    frames: VisionConfig | None = None
    num_frames: int | None = None
    text: AVTextConfig = field(default_factory=AVTextConfig)
    output_dim: int = 1024

    def __post_init__(self) -> None:
        owner = "AVConfig"
        if self.kind not in ("av", "a-frame"):
            raise ValueError(f"{owner}: kind must be 'av' or 'a-frame', got {self.kind!r}")
        _check_int(owner, "output_dim", self.output_dim, 1, 32768)
        if self.num_frames is not None:
            _check_int(owner, "num_frames", self.num_frames, 1, 100_000)
        if self.kind == "a-frame":
            if self.video is not None or self.fusion is not None or self.frames is not None:
                raise ValueError(f"{owner}: a PE-A-Frame config has no video, fusion or frame tower")
            return
        if self.video is None or self.fusion is None or self.frames is None:
            raise ValueError(f"{owner}: a PE-AV config needs video, fusion and frames towers")
        if self.frames.output_dim is None or self.frames.pool_type == "none":
            raise ValueError(f"{owner}: the frame tower must pool and project (a PE-Core vision tower)")
        widths = {self.audio.hidden_size, self.video.hidden_size, self.fusion.hidden_size}
        if len(widths) != 1:
            # the fusion concatenates the audio sequence with the aligned video sequence of the same width
            raise ValueError(
                f"{owner}: the audio, video and fusion towers must have one width, got "
                f"{self.audio.hidden_size}, {self.video.hidden_size} and {self.fusion.hidden_size}"
            )

    @property
    def is_frame_model(self) -> bool:
        return self.kind == "a-frame"

    @property
    def image_size(self) -> int | None:
        """Pixels per side of each video frame (squashed to this size), ``None`` without video."""
        return self.frames.image_size if self.frames is not None else None


# --- the released family --------------------------------------------------------------------------------


def swiglu_width(hidden: int, multiple: int = 64) -> int:
    """The SwiGLU hidden width of the released towers: 8/3 of ``hidden`` rounded up to a multiple of
    ``multiple`` (1792 -> 4800, 1024 -> 2752)."""
    return math.ceil(hidden * 8 / 3 / multiple) * multiple


def _tower(hidden: int, heads: int, layers: int) -> TowerConfig:
    return TowerConfig(
        hidden_size=hidden,
        intermediate_size=swiglu_width(hidden),
        num_layers=layers,
        num_heads=heads,
        head_dim=hidden // heads,
    )


def tower_sizes() -> dict[str, TowerConfig]:
    """The tower of each released size. Large is the released one (SPEC §11, transformers' defaults: 1792
    wide, 6 layers, 14 x 128, MLP 4800). The small and base sizes are this package's estimates: loading a
    released snapshot reads its own config.json, so the weights always load under the release's sizes."""
    return {
        "small": _tower(1024, 8, 6),
        "base": _tower(1536, 12, 6),
        "large": _tower(1792, 14, 6),
    }


def frame_tower_config() -> VisionConfig:
    """PE-Core-L14-336's vision tower: what every PE-AV model embeds its frames with."""
    from ..configs import get_model_info

    return get_model_info("PE-Core-L14-336").vision


def released_av_configs() -> list[tuple[str, str, AVConfig, str]]:
    """``(name, family, config, description)`` of every released PE-AV and PE-A-Frame model."""
    out = []
    for size, tower in tower_sizes().items():
        for suffix, frames in (("", None), ("-16-frame", 16)):
            config = AVConfig(
                kind="av",
                audio=tower,
                video=tower,
                fusion=tower,
                frames=frame_tower_config(),
                num_frames=frames,
            )
            what = "16 frames" if frames else "every frame"
            out.append((f"pe-av-{size}{suffix}", "av", config, f"audio-video-text, {size}, {what}"))
    for size, tower in tower_sizes().items():
        config = AVConfig(kind="a-frame", audio=tower, video=None, fusion=None)
        out.append((f"pe-a-frame-{size}", "a-frame", config, f"sound event localisation, {size}"))
    return out


# --- (de)serialisation: this package's own dict ----------------------------------------------------------


def av_config_to_dict(config: AVConfig) -> dict[str, Any]:
    """A JSON-able dict tagged ``"type": "av"`` (``av_config_from_dict`` reads it back)."""
    data = dataclasses.asdict(config)
    data["dac"]["downsampling_ratios"] = list(config.dac.downsampling_ratios)
    return {"type": "av", **data}


def _only(cls: type, data: Any, where: str) -> dict[str, Any]:
    """``data`` checked to be a dict of ``cls``'s fields, as the vision configs are checked."""
    from ..configs import _fields

    return _fields(cls, data, where)


def av_config_from_dict(data: dict[str, Any]) -> AVConfig:
    """Inverse of ``av_config_to_dict``; every field validated."""
    data = dict(_only(AVConfig, {k: v for k, v in data.items() if k != "type"}, "AV config"))

    def tower(key: str) -> TowerConfig | None:
        value = data.get(key)
        return None if value is None else TowerConfig(**_only(TowerConfig, value, f"AV config '{key}'"))

    from ..configs import VisionConfig

    frames = data.get("frames")
    return AVConfig(
        kind=data.get("kind", "av"),
        dac=DacConfig(**_only(DacConfig, data.get("dac", {}), "AV config 'dac'")),
        audio=tower("audio") or TowerConfig(),
        video=tower("video"),
        fusion=tower("fusion"),
        frames=None if frames is None else VisionConfig(**_only(VisionConfig, frames, "AV config 'frames'")),
        num_frames=data.get("num_frames"),
        text=AVTextConfig(**_only(AVTextConfig, data.get("text", {}), "AV config 'text'")),
        output_dim=data.get("output_dim", 1024),
    )
