"""Model configurations as data, and the registry of every released Perception Encoder.

A config is a plain frozen dataclass; a model is built from it by ``vision.VisionTransformer``,
``text.TextTransformer`` or ``clip.CLIP``. The registry maps each released name to its config so the
factory (``perception_encoder.load``) needs no per-model code. Custom configs for training are just
new instances (``VisionConfig(width=256, depth=6, ...)``) and may be registered with ``register``.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
from dataclasses import dataclass, field
from typing import Any, Literal

PoolType = Literal["attn", "none", "cls", "avg"]

# Bounds on config fields, far above any real model (the largest release, PE-Core-G, is 1536 wide and 50
# deep at 448 px), so a typo or a hostile file fails here instead of allocating terabytes.
MAX_DEPTH = 512
MAX_WIDTH = 32768
MAX_MLP_DIM = 262144
MAX_IMAGE_SIZE = 16384
MAX_PATCH_SIZE = 1024
MAX_CONTEXT_LENGTH = 65536
MAX_VOCAB_SIZE = 10_000_000
MAX_PARAMETERS = 200_000_000_000


def _check_int(owner: str, name: str, value: Any, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{owner}: {name} must be an integer, got {value!r}")
    if not low <= value <= high:
        raise ValueError(f"{owner}: {name} must be between {low} and {high:,}, got {value:,}")


def _check_float(owner: str, name: str, value: Any, positive: bool = True) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{owner}: {name} must be a number, got {value!r}")
    if value != value or value in (float("inf"), float("-inf")) or (positive and value <= 0):
        raise ValueError(
            f"{owner}: {name} must be a {'positive ' if positive else ''}finite number, got {value!r}"
        )


def _check_size(owner: str, width: int, depth: int, mlp_dim: int, extra: int = 0) -> None:
    """Refuse configs whose blocks alone would exceed ``MAX_PARAMETERS`` (estimated, no allocation)."""
    params = depth * (4 * width * width + 2 * width * mlp_dim) + extra
    if params > MAX_PARAMETERS:
        raise ValueError(
            f"{owner}: about {params:,} parameters, more than the {MAX_PARAMETERS:,} allowed "
            "(check width, depth and mlp_dim)"
        )


@dataclass(frozen=True)
class VisionConfig:
    """The vision tower. ``mlp_dim`` is the hidden width of every block's MLP."""

    image_size: int = 224
    patch_size: int = 16
    width: int = 768
    depth: int = 12
    heads: int = 12
    mlp_dim: int = 3072
    use_cls_token: bool = True
    use_abs_posemb: bool = True
    use_rope2d: bool = True
    ls_init_value: float | None = None
    use_ln_pre: bool = True
    use_ln_post: bool = True
    pool_type: PoolType = "attn"
    attn_pooler_heads: int = 8
    output_dim: int | None = 1024
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0

    @property
    def grid_size(self) -> int:
        """Native patch grid side: ``image_size // patch_size``."""
        return self.image_size // self.patch_size

    @property
    def head_dim(self) -> int:
        return self.width // self.heads

    def __post_init__(self) -> None:
        owner = "VisionConfig"
        _check_int(owner, "image_size", self.image_size, 1, MAX_IMAGE_SIZE)
        _check_int(owner, "patch_size", self.patch_size, 1, min(MAX_PATCH_SIZE, self.image_size))
        _check_int(owner, "width", self.width, 1, MAX_WIDTH)
        _check_int(owner, "depth", self.depth, 1, MAX_DEPTH)
        _check_int(owner, "heads", self.heads, 1, self.width)
        _check_int(owner, "mlp_dim", self.mlp_dim, 1, MAX_MLP_DIM)
        _check_int(owner, "attn_pooler_heads", self.attn_pooler_heads, 1, self.width)
        if self.output_dim is not None:
            _check_int(owner, "output_dim", self.output_dim, 1, MAX_WIDTH)
        _check_float(owner, "norm_eps", self.norm_eps)
        _check_float(owner, "rope_theta", self.rope_theta)
        if self.ls_init_value is not None:
            _check_float(owner, "ls_init_value", self.ls_init_value, positive=False)
        _check_size(owner, self.width, self.depth, self.mlp_dim, (self.image_size // self.patch_size) ** 2)
        if self.width % self.heads:
            raise ValueError(f"VisionConfig: width {self.width} is not divisible by heads {self.heads}")
        if self.use_rope2d and self.head_dim % 4:
            raise ValueError(f"VisionConfig: 2D RoPE needs head_dim divisible by 4, got {self.head_dim}")
        if self.pool_type == "attn" and self.width % self.attn_pooler_heads:
            raise ValueError(
                f"VisionConfig: width {self.width} is not divisible by attn_pooler_heads {self.attn_pooler_heads}"
            )
        if self.pool_type not in ("attn", "none", "cls", "avg"):
            raise ValueError(f"VisionConfig: unknown pool_type {self.pool_type!r}")
        if self.pool_type == "cls" and not self.use_cls_token:
            raise ValueError("VisionConfig: pool_type 'cls' needs use_cls_token=True")


@dataclass(frozen=True)
class TextConfig:
    """The causal text tower, pooled at the end-of-text token."""

    context_length: int = 32
    vocab_size: int = 49408
    width: int = 1024
    depth: int = 24
    heads: int = 16
    mlp_dim: int = 4096
    output_dim: int = 1024
    ls_init_value: float | None = None
    norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        owner = "TextConfig"
        _check_int(owner, "context_length", self.context_length, 1, MAX_CONTEXT_LENGTH)
        _check_int(owner, "vocab_size", self.vocab_size, 1, MAX_VOCAB_SIZE)
        _check_int(owner, "width", self.width, 1, MAX_WIDTH)
        _check_int(owner, "depth", self.depth, 1, MAX_DEPTH)
        _check_int(owner, "heads", self.heads, 1, self.width)
        _check_int(owner, "mlp_dim", self.mlp_dim, 1, MAX_MLP_DIM)
        _check_int(owner, "output_dim", self.output_dim, 1, MAX_WIDTH)
        _check_float(owner, "norm_eps", self.norm_eps)
        if self.ls_init_value is not None:
            _check_float(owner, "ls_init_value", self.ls_init_value, positive=False)
        _check_size(owner, self.width, self.depth, self.mlp_dim, self.vocab_size * self.width)
        if self.width % self.heads:
            raise ValueError(f"TextConfig: width {self.width} is not divisible by heads {self.heads}")


@dataclass(frozen=True)
class CLIPConfig:
    """A vision tower and a text tower side by side, with a learnable logit scale."""

    vision: VisionConfig = field(default_factory=VisionConfig)
    text: TextConfig = field(default_factory=TextConfig)
    init_logit_scale: float = 2.659260036932778  # log(1 / 0.07)

    def __post_init__(self) -> None:
        if not isinstance(self.vision, VisionConfig) or not isinstance(self.text, TextConfig):
            raise TypeError("CLIPConfig: vision must be a VisionConfig and text a TextConfig")
        _check_float("CLIPConfig", "init_logit_scale", self.init_logit_scale, positive=False)
        if self.vision.output_dim != self.text.output_dim:
            raise ValueError(
                f"CLIPConfig: vision output_dim {self.vision.output_dim} != text output_dim {self.text.output_dim}"
            )


ModelConfig = VisionConfig | CLIPConfig


@dataclass(frozen=True)
class ModelInfo:
    """A registry entry: the config plus facts used by the loader and the ``pe models`` table."""

    name: str
    family: str  # "core", "lang", "spatial", "av", "a-frame", "bundled" or "custom"
    config: ModelConfig  # or an ``av.configs.AVConfig`` (families "av" and "a-frame")
    hub_repo: str | None = None  # where the reference ``<name>.pt`` lives
    hub_filename: str | None = None
    local_weights: str | None = None  # a path relative to the package's assets (bundled models)
    description: str = ""
    hub_revision: str | None = None  # the hub revision of the reference files (None: main)

    @property
    def is_clip(self) -> bool:
        return isinstance(self.config, CLIPConfig)

    @property
    def is_av(self) -> bool:
        """A PE-AV or PE-A-Frame model (``perception_encoder.av``), not a vision or CLIP model."""
        return not isinstance(self.config, (VisionConfig, CLIPConfig))

    @property
    def vision(self) -> VisionConfig:
        if self.is_av:
            raise TypeError(f"{self.name} is an audio-visual model: its config is not a vision tower's")
        return self.config.vision if isinstance(self.config, CLIPConfig) else self.config


# --- the released family (facts from the reference release) ---------------------------------------------

_TEXT_SMALL = TextConfig(context_length=32, width=512, depth=12, heads=8, mlp_dim=2048, output_dim=512)
_TEXT_BASE = TextConfig(context_length=32, width=1024, depth=24, heads=16, mlp_dim=4096, output_dim=1024)
_TEXT_G = TextConfig(context_length=72, width=1280, depth=24, heads=20, mlp_dim=5120, output_dim=1280)


def _core(image_size, patch, width, depth, heads, mlp, out, cls=True) -> VisionConfig:
    return VisionConfig(
        image_size=image_size,
        patch_size=patch,
        width=width,
        depth=depth,
        heads=heads,
        mlp_dim=mlp,
        use_cls_token=cls,
        pool_type="attn",
        output_dim=out,
    )


def _tokens(image_size, patch, width, depth, heads, mlp, cls, ls) -> VisionConfig:
    """A token-output tower (PE-Lang, PE-Spatial): no pooling, no projection, no ln_post."""
    return VisionConfig(
        image_size=image_size,
        patch_size=patch,
        width=width,
        depth=depth,
        heads=heads,
        mlp_dim=mlp,
        use_cls_token=cls,
        ls_init_value=ls,
        use_ln_post=False,
        pool_type="none",
        output_dim=None,
    )


_REGISTRY: dict[str, ModelInfo] = {}


def register(info: ModelInfo, *, overwrite: bool = False) -> ModelInfo:
    """Add a model to the registry (custom configs, bundled models)."""
    if info.name in _REGISTRY and not overwrite:
        raise ValueError(f"model name {info.name!r} is already registered")
    _REGISTRY[info.name] = info
    return info


def _released(name: str, family: str, config: ModelConfig, description: str) -> None:
    register(
        ModelInfo(
            name=name,
            family=family,
            config=config,
            hub_repo=f"facebook/{name}",
            hub_filename=f"{name}.pt",
            description=description,
        )
    )


_released(
    "PE-Core-T16-384",
    "core",
    CLIPConfig(_core(384, 16, 192, 12, 3, 768, 512), _TEXT_SMALL),
    "CLIP, tiny",
)
_released(
    "PE-Core-S16-384",
    "core",
    CLIPConfig(_core(384, 16, 384, 12, 6, 1536, 512), _TEXT_SMALL),
    "CLIP, small",
)
_released(
    "PE-Core-B16-224",
    "core",
    CLIPConfig(_core(224, 16, 768, 12, 12, 3072, 1024), _TEXT_BASE),
    "CLIP, base",
)
_released(
    "PE-Core-L14-336",
    "core",
    CLIPConfig(_core(336, 14, 1024, 24, 16, 4096, 1024), _TEXT_BASE),
    "CLIP, large",
)
_released(
    "PE-Core-G14-448",
    "core",
    CLIPConfig(_core(448, 14, 1536, 50, 16, 8960, 1280, cls=False), _TEXT_G),
    "CLIP, giant",
)
for _suffix in ("", "-Tiling"):
    _released(
        f"PE-Lang-L14-448{_suffix}",
        "lang",
        _tokens(448, 14, 1024, 23, 16, 4096, cls=True, ls=0.1),
        "LLM-aligned tokens" + (", tiling-tuned" if _suffix else ""),
    )
    _released(
        f"PE-Lang-G14-448{_suffix}",
        "lang",
        _tokens(448, 14, 1536, 47, 16, 8960, cls=False, ls=0.1),
        "LLM-aligned tokens" + (", tiling-tuned" if _suffix else ""),
    )
_released(
    "PE-Spatial-G14-448", "spatial", _tokens(448, 14, 1536, 50, 16, 8960, cls=False, ls=0.1), "dense tokens"
)
_released(
    "PE-Spatial-L14-448", "spatial", _tokens(448, 14, 1024, 24, 16, 4096, cls=True, ls=None), "dense tokens"
)
_released(
    "PE-Spatial-B16-512", "spatial", _tokens(512, 16, 768, 12, 12, 3072, cls=True, ls=None), "dense tokens"
)
_released(
    "PE-Spatial-S16-512", "spatial", _tokens(512, 16, 384, 12, 6, 1536, cls=True, ls=None), "dense tokens"
)
_released(
    "PE-Spatial-T16-512", "spatial", _tokens(512, 16, 192, 12, 3, 768, cls=True, ls=None), "dense tokens"
)


# --- lookup ---------------------------------------------------------------------------------------------


class UnknownModelError(KeyError):
    """An unknown model name; the message suggests the closest registered names."""

    def __str__(self) -> str:  # KeyError quotes its message; show it plainly
        return str(self.args[0])


def list_models(family: str | None = None) -> list[str]:
    """Registered model names, in registration order; optionally only one family ("core", ...)."""
    return [n for n, i in _REGISTRY.items() if family is None or i.family == family]


def get_model_info(name: str) -> ModelInfo:
    """The registry entry for ``name``; an unknown name raises ``UnknownModelError`` with suggestions."""
    if name in _REGISTRY:
        return _REGISTRY[name]
    lowered = {n.lower(): n for n in _REGISTRY}
    if name.lower() in lowered:
        return _REGISTRY[lowered[name.lower()]]
    close = difflib.get_close_matches(name, list(_REGISTRY), n=3, cutoff=0.4)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise UnknownModelError(f"unknown model name {name!r}.{hint} `pe models` lists every name.")


# --- (de)serialisation, for the config saved beside weights ---------------------------------------------


def config_to_dict(config: ModelConfig) -> dict[str, Any]:
    """A JSON-able dict with a ``type`` tag, inverse of ``config_from_dict``."""
    if not isinstance(config, (VisionConfig, CLIPConfig)):
        from .av.configs import av_config_to_dict

        return av_config_to_dict(config)
    kind = "clip" if isinstance(config, CLIPConfig) else "vision"
    return {"type": kind, **dataclasses.asdict(config)}


def _fields(cls: type, data: Any, where: str) -> dict[str, Any]:
    """``data`` checked to be a dict of ``cls``'s fields (unknown keys are named, not silently dropped)."""
    if not isinstance(data, dict):
        raise TypeError(f"{where} must be a JSON object, got {type(data).__name__}")
    unknown = sorted(set(data) - {f.name for f in dataclasses.fields(cls)})
    if unknown:
        raise TypeError(f"{where} has unknown key(s): {', '.join(map(repr, unknown))}")
    return data


def config_from_dict(data: dict[str, Any]) -> ModelConfig:
    """Inverse of ``config_to_dict``; every field is validated (types, and bounds far above real models)."""
    if not isinstance(data, dict):
        raise TypeError(f"a model config must be a JSON object, got {type(data).__name__}")
    data = dict(data)
    kind = data.pop("type", "clip" if "text" in data else "vision")
    if kind == "clip":
        _fields(CLIPConfig, data, "CLIP config")
        if "vision" not in data or "text" not in data:
            raise TypeError("a CLIP config needs 'vision' and 'text'")
        return CLIPConfig(
            vision=VisionConfig(**_fields(VisionConfig, data["vision"], "vision config")),
            text=TextConfig(**_fields(TextConfig, data["text"], "text config")),
            init_logit_scale=data.get("init_logit_scale", CLIPConfig.init_logit_scale),
        )
    if kind == "vision":
        return VisionConfig(**_fields(VisionConfig, data, "vision config"))
    if kind == "av":
        from .av.configs import av_config_from_dict

        return av_config_from_dict(data)
    raise ValueError(f"unknown config type {kind!r}")


def config_to_json(config: ModelConfig) -> str:
    return json.dumps(config_to_dict(config), indent=2)


# --- the bundled offline model (trained by scripts/train_bundled.py on synthetic shapes) ------------------

register(
    ModelInfo(
        name="PE-Core-Shapes-T8-64",
        family="bundled",
        config=CLIPConfig(
            vision=VisionConfig(
                image_size=64,
                patch_size=8,
                width=128,
                depth=4,
                heads=2,
                mlp_dim=512,
                attn_pooler_heads=8,
                output_dim=128,
            ),
            text=TextConfig(context_length=32, width=128, depth=3, heads=2, mlp_dim=512, output_dim=128),
        ),
        local_weights="bundled/PE-Core-Shapes-T8-64.safetensors",
        description="CLIP, tiny, trained on synthetic coloured shapes (offline demo)",
    )
)


# --- PE-AV and PE-A-Frame (configs in av/configs.py; weights in the hub's reference revision) --------------

from .av import configs as _av_configs  # noqa: E402  (needs VisionConfig and the PE-Core entries above)

for _name, _family, _config, _description in _av_configs.released_av_configs():
    register(
        ModelInfo(
            name=_name,
            family=_family,
            config=_config,
            hub_repo=f"facebook/{_name}",
            hub_filename=_av_configs.WEIGHTS_FILE,
            description=_description,
            hub_revision=_av_configs.REFERENCE_REVISION,
        )
    )
