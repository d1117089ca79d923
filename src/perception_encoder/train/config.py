"""Training configuration: one dataclass per recipe part, read from JSON and overridden by flags.

Every part of PE's recipe (SPEC §9) is a switch here:

- ``loss``: CLIP softmax loss, learnable temperature (``logit_scale``) clamped to ``ln(100)``.
- ``optim``: LAMB (or AdamW), linear warm-up then cosine decay, weight decay, gradient clipping.
- ``stages``: progressive resolution, a list of ``{"image_size": S, "steps": N}`` run in order.
- ``augment``: random resized crop, colour jitter, horizontal flip (with left/right caption swapping).
- ``mask``: mask regularisation, a fraction of each batch re-encoded with patches masked and pulled toward
  the unmasked embedding by a cosine loss.
- ``data.frames``: video fine-tuning on frame-averaged embeddings.
- ``accum_steps``, ``precision`` (bf16 autocast), ``grad_checkpointing``.

``TrainConfig.from_dict`` rejects unknown keys with a message naming them, so a typo in ``run.json`` fails
at once instead of silently training with a default.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

LN_100 = math.log(100.0)


@dataclass
class Stage:
    """One progressive-resolution stage: ``steps`` optimiser steps at ``image_size`` pixels (square)."""

    image_size: int
    steps: int

    def __post_init__(self) -> None:
        if int(self.image_size) <= 0:
            raise ValueError(f"stage image_size must be positive, got {self.image_size}")
        if int(self.steps) <= 0:
            raise ValueError(f"stage steps must be positive, got {self.steps}")


@dataclass
class DataConfig:
    """Where the image-caption pairs come from.

    ``source``: a folder of images with ``.txt`` captions beside them; a ``.csv``/``.tsv``/``.parquet``
    table with a path and a caption column (relative paths are relative to the table's folder); one or more
    WebDataset-style ``.tar`` shards (a path, a glob, or a ``{000..009}`` brace range; several separated by
    ``::``); or ``synthetic`` / ``synthetic:N`` for the built-in generator of N shapes pairs.
    ``kind`` forces the reader (``auto`` guesses from ``source``).
    ``frames``: when set, every sample is a video clip (a video file or a folder of frames) and the model is
    trained on the mean of ``frames`` frame embeddings.
    """

    source: str = ""
    kind: Literal["auto", "folder", "csv", "parquet", "tar", "synthetic"] = "auto"
    path_column: str | None = None  # None: the first of path, image, filepath, file, filename, video
    caption_column: str | None = None  # None: the first of caption, text, title, label
    frames: int | None = None
    num_workers: int = 0
    synthetic_seed: int = 0


@dataclass
class AugmentConfig:
    """Training augmentation. With ``enabled=False`` images are squash-resized as at inference (SPEC §5)."""

    enabled: bool = True
    crop_scale: tuple[float, float] = (0.8, 1.0)  # area fraction of the random resized crop
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    color_jitter: float = 0.8  # probability of jittering an image's colours
    brightness: float = 0.3
    contrast: float = 0.3
    saturation: float = 0.3
    hue: float = 0.0  # in turns of the hue circle (0.5 = opposite colour): off by default, it changes names
    flip: float = 0.5  # probability of a horizontal flip
    # A flip turns "a dog on the left" into a false caption; swap the words left <-> right when flipping.
    flip_swap_left_right: bool = True
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)


@dataclass
class MaskConfig:
    """Mask regularisation: ``fraction`` of each batch is encoded a second time with ``ratio`` of its
    patches masked (their pixels set to the normalised value 0, the dataset mean); ``weight`` scales the
    cosine loss pulling each masked embedding toward the stop-gradient unmasked one."""

    enabled: bool = True
    fraction: float = 1 / 16
    ratio: float = 0.5
    weight: float = 1.0


@dataclass
class LossConfig:
    learn_logit_scale: bool = True
    max_logit_scale: float = LN_100  # the temperature's clamp, as ln(max 1/T)


@dataclass
class OptimConfig:
    name: Literal["lamb", "adamw"] = "lamb"
    lr: float = 2e-3
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-6
    warmup_steps: int = 0
    schedule: Literal["cosine", "constant"] = "cosine"
    min_lr_ratio: float = 0.0  # the cosine ends at lr * min_lr_ratio
    grad_clip: float | None = 1.0  # global gradient norm; None disables clipping


@dataclass
class TrainConfig:
    """A whole run. ``model``: a registered name, a JSON config file, or ``None`` with ``model_config``
    (an inline config dict, ``configs.config_to_dict`` format) or with ``init`` (the model is whatever that
    checkpoint holds). ``init``: weights to fine-tune from (a checkpoint path or a registered name), loaded
    through ``perception_encoder.load``; ``None`` trains from scratch.

    ``batch_size`` is the **global** micro-batch (all processes together), split evenly over the ranks;
    ``accum_steps`` micro-batches make one optimiser step.
    """

    model: str | None = None
    model_config: dict[str, Any] | None = None
    init: str | None = None
    data: DataConfig = field(default_factory=DataConfig)
    stages: list[Stage] = field(default_factory=list)
    steps: int | None = None  # shorthand for one stage at image_size (or the model's native size)
    image_size: int | None = None
    batch_size: int = 32
    accum_steps: int = 1
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    mask: MaskConfig = field(default_factory=MaskConfig)
    # Parameters left untrained: name prefixes such as "visual." (locked-image tuning) or
    # "text.token_embedding" (a fixed random embedding; skips the 49,408-row gradient, much faster on CPU)
    freeze: list[str] = field(default_factory=list)
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    grad_checkpointing: bool = False
    device: str = "auto"  # auto: cuda when available (cuda:LOCAL_RANK under torchrun), else cpu
    seed: int = 0
    out: str = "runs/pe-train"
    resume: str | None = None  # a checkpoint path, or "auto" for <out>/checkpoints/last.pt when it exists
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    log_every: int = 10
    progress: bool = True
    tensorboard: bool = False
    stop_at_step: int | None = None  # end this run early at that step (a checkpoint is written there)

    # --- derived ----------------------------------------------------------------------------------------

    def resolved_stages(self, native_size: int) -> list[Stage]:
        """The stage list: ``stages`` if given, else one stage of ``steps`` at ``image_size`` / native size."""
        if self.stages:
            return list(self.stages)
        if self.steps is None:
            raise ValueError("the run has no length: give `steps` or a list of `stages`")
        return [Stage(self.image_size or native_size, self.steps)]

    def validate(self) -> None:
        if self.model is None and self.model_config is None and self.init is None:
            raise ValueError("no model: give `model` (a name or a config JSON), `model_config` or `init`")
        if self.stages and self.steps is not None:
            raise ValueError("give either `steps` (one stage) or `stages`, not both")
        if not self.data.source:
            raise ValueError(
                "no training data: give `data.source` (a folder, table, tar shards or 'synthetic')"
            )
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")
        if self.accum_steps < 1:
            raise ValueError(f"accum_steps must be at least 1, got {self.accum_steps}")
        if self.precision not in ("fp32", "bf16", "fp16"):
            raise ValueError(f"precision must be fp32, bf16 or fp16, got {self.precision!r}")
        if self.optim.name not in ("lamb", "adamw"):
            raise ValueError(f"optim.name must be 'lamb' or 'adamw', got {self.optim.name!r}")
        if self.optim.schedule not in ("cosine", "constant"):
            raise ValueError(f"optim.schedule must be 'cosine' or 'constant', got {self.optim.schedule!r}")
        if not 0.0 <= self.mask.fraction <= 1.0:
            raise ValueError(f"mask.fraction must be in [0, 1], got {self.mask.fraction}")
        if not 0.0 < self.mask.ratio < 1.0:
            raise ValueError(f"mask.ratio must be in (0, 1), got {self.mask.ratio}")
        if self.data.frames is not None and self.data.frames < 1:
            raise ValueError(f"data.frames must be at least 1, got {self.data.frames}")
        lo, hi = self.augment.crop_scale
        if not 0.0 < lo <= hi <= 1.0:
            raise ValueError(
                f"augment.crop_scale must satisfy 0 < lo <= hi <= 1, got {self.augment.crop_scale}"
            )
        if self.checkpoint_every < 1:
            raise ValueError(f"checkpoint_every must be at least 1, got {self.checkpoint_every}")

    # --- (de)serialisation ------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Build from nested dicts (``run.json``); unknown keys raise ``ValueError`` naming them."""
        return _build(cls, data, "config")

    @classmethod
    def from_json(cls, path: str | Path) -> TrainConfig:
        from ..input_files import file_problem, parse_json, read_text

        path = Path(path)
        if file_problem(path) == "no such file":
            raise FileNotFoundError(f"training config {str(path)!r} does not exist")
        data = parse_json(read_text(path, "training config"), f"training config {str(path)!r}")
        if not isinstance(data, dict):
            raise ValueError(f"training config {str(path)!r} must hold a JSON object")
        return cls.from_dict(data)

    def with_overrides(self, overrides: dict[str, Any]) -> TrainConfig:
        """A copy with dotted keys replaced, e.g. ``{"optim.lr": 1e-3, "data.source": "x.csv"}``."""
        data = self.to_dict()
        for key, value in overrides.items():
            node = data
            *parents, leaf = key.split(".")
            for p in parents:
                if not isinstance(node.get(p), dict):
                    raise ValueError(f"unknown config key {key!r}")
                node = node[p]
            if leaf not in node:
                raise ValueError(f"unknown config key {key!r}")
            node[leaf] = value
        return TrainConfig.from_dict(data)


_NESTED = {
    "data": DataConfig,
    "augment": AugmentConfig,
    "mask": MaskConfig,
    "loss": LossConfig,
    "optim": OptimConfig,
}
_TUPLES = {"crop_scale", "crop_ratio", "mean", "std", "betas"}


def _build(cls: type, data: dict[str, Any], where: str) -> Any:
    if not isinstance(data, dict):
        raise ValueError(f"{where} must be a JSON object, got {type(data).__name__}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(
            f"unknown key(s) in {where}: {', '.join(unknown)} (known: {', '.join(sorted(names))})"
        )
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if cls is TrainConfig and key in _NESTED and value is not None:
            value = _build(_NESTED[key], value, f"{where}.{key}")
        elif cls is TrainConfig and key == "stages":
            value = [_stage(s, f"{where}.stages[{i}]") for i, s in enumerate(value or [])]
        elif key in _TUPLES and value is not None:
            value = tuple(value)
        kwargs[key] = value
    return cls(**kwargs)


def _stage(value: Any, where: str) -> Stage:
    if isinstance(value, Stage):
        return value
    if isinstance(value, (list, tuple)) and len(value) == 2:
        return Stage(int(value[0]), int(value[1]))
    if isinstance(value, dict):
        return _build(Stage, value, where)
    raise ValueError(f"{where} must be {{'image_size': S, 'steps': N}} or [S, N], got {value!r}")


def parse_stages(text: str) -> list[Stage]:
    """``"32:200,48:200,64:400"`` -> three stages (image size : steps)."""
    stages = []
    for part in text.split(","):
        size, sep, steps = part.strip().partition(":")
        if not sep:
            raise ValueError(f"stage {part!r} must be SIZE:STEPS (e.g. 64:500)")
        try:
            stages.append(Stage(int(size), int(steps)))
        except ValueError:
            raise ValueError(f"stage {part!r} must be SIZE:STEPS with two positive integers") from None
    return stages


def stage_at(stages: list[Stage], step: int) -> tuple[int, Stage]:
    """The ``(index, stage)`` that optimiser step ``step`` (0-based) belongs to."""
    end = 0
    for i, s in enumerate(stages):
        end += s.steps
        if step < end:
            return i, s
    return len(stages) - 1, stages[-1]
