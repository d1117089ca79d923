"""The training loop: ``train(config) -> TrainResult``, used by ``pe train`` and ``scripts/train_bundled.py``.

One optimiser step = ``accum_steps`` micro-batches of ``batch_size`` samples (global, over all ranks):

1. each micro-batch is loaded at the image size of its progressive-resolution stage;
2. the mask-regularisation copies (``mask.fraction`` of the global batch) are appended to the images and
   encoded in the same forward pass;
3. loss = CLIP loss over the global batch + ``mask.weight`` x cosine loss; its gradient is accumulated;
4. gradients are unscaled (fp16), clipped, and LAMB steps; the schedule advances; ``logit_scale`` is
   clamped to ``[0, loss.max_logit_scale]``.

Bad samples are dropped from their batch and counted. A micro-batch left empty on any rank is skipped by
every rank (collectives stay matched); a step whose micro-batches were all skipped does not update the
weights but still advances the schedule, so the run keeps its length.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from ..clip import CLIP
from ..configs import CLIPConfig, config_from_dict, get_model_info
from .augment import TrainTransform
from .checkpoint import (
    Position,
    export_model,
    find_resume,
    load_training_state,
    remove_stale_temp_files,
    save_training_state,
    set_rng_state,
)
from .config import Stage, TrainConfig, stage_at
from .data import Batch, Collator, EpochBatches, TrainingDataset, open_source
from .distributed import DistInfo, barrier, init_distributed, shutdown, sum_over_ranks
from .init import init_clip_weights
from .loss import clip_loss, mask_consistency_loss
from .masking import mask_patches, masked_slots
from .metrics import MetricsLog
from .optim import build_optimizer, build_scheduler

log = logging.getLogger("perception_encoder.train")
_MAX_LOGGED_BAD = 5


@dataclass
class TrainResult:
    """What a run did. ``losses[i]`` is the loss of optimiser step ``start_step + i`` (``nan`` for a step
    whose micro-batches were all skipped)."""

    model: CLIP
    start_step: int
    step: int
    total_steps: int
    losses: list[float] = field(default_factory=list)
    bad_samples: int = 0
    out_dir: Path = Path(".")
    checkpoint: Path | None = None
    model_path: Path | None = None
    metrics_path: Path | None = None
    seconds: float = 0.0
    rank: int = 0  # the process that returned this result (0 writes the run folder)

    @property
    def finished(self) -> bool:
        return self.step >= self.total_steps


class ContrastiveForward(nn.Module):
    """The module DDP wraps: pixels + token ids -> normalised image and text embeddings and ``logit_scale``.

    ``pixels``: images ``(B, 3, H, W)`` or clips ``(B, N, 3, H, W)``; a clip's embedding is the mean of its
    normalised frame embeddings, renormalised (frame averaging, SPEC §9)."""

    def __init__(self, model: CLIP) -> None:
        super().__init__()
        self.model = model

    def forward(
        self, pixels: torch.Tensor, token_ids: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if pixels.ndim == 5:
            b, n = pixels.shape[:2]
            frames = self.model.encode_image(pixels.flatten(0, 1), normalize=True)
            img = F.normalize(frames.view(b, n, -1).mean(dim=1), dim=-1)
        else:
            img = self.model.encode_image(pixels, normalize=True)
        txt = self.model.encode_text(token_ids, normalize=True)
        return img, txt, self.model.logit_scale


# --- model --------------------------------------------------------------------------------------------------


def resolve_model_config(config: TrainConfig) -> CLIPConfig | None:
    """The CLIP config the run trains: ``model_config``, a registered ``model`` name, or a JSON file."""
    if config.model_config is not None:
        cfg = config_from_dict(config.model_config)
    elif config.model is not None:
        path = Path(config.model)
        if path.suffix.lower() == ".json" and path.is_file():
            data = json.loads(path.read_text())
            cfg = config_from_dict(data.get("model_config", data) if isinstance(data, dict) else data)
        else:
            cfg = get_model_info(config.model).config
    else:
        return None
    if not isinstance(cfg, CLIPConfig):
        raise ValueError(
            f"model {config.model or 'model_config'!r} is a vision-only config: contrastive training needs a "
            "CLIP config with a text tower (a PE-Core name or a custom CLIPConfig)"
        )
    return cfg


def build_model(config: TrainConfig) -> CLIP:
    """A fresh CLIP (CLIP-style init, seeded by ``config.seed``) or the ``init`` weights to fine-tune."""
    cfg = resolve_model_config(config)
    if config.init is not None:
        from ..factory import load

        model = load(config.init)
        if not isinstance(model, CLIP):
            raise ValueError(f"init {config.init!r} is not a CLIP model (it has no text tower)")
        if cfg is not None and cfg != model.config:
            fresh = CLIP(cfg)
            try:
                fresh.load_state_dict(model.state_dict())
            except RuntimeError as e:
                raise ValueError(f"init {config.init!r} does not fit the configured model: {e}") from None
            model = fresh
        return model.float()
    assert cfg is not None
    torch.manual_seed(config.seed)
    return init_clip_weights(CLIP(cfg))


def freeze(model: nn.Module, prefixes: list[str]) -> None:
    """Stop training every parameter whose name starts with one of ``prefixes``."""
    names = [n for n, _ in model.named_parameters()]
    for prefix in prefixes:
        if not any(n.startswith(prefix) for n in names):
            raise ValueError(f"freeze: no parameter name starts with {prefix!r} (e.g. 'visual.', 'text.')")
    for name, p in model.named_parameters():
        if any(name.startswith(prefix) for prefix in prefixes):
            p.requires_grad_(False)


# --- data stream ------------------------------------------------------------------------------------------


def _micro_batches(
    dataset: TrainingDataset,
    collator: Collator,
    config: TrainConfig,
    info: DistInfo,
    position: Position,
    stages: list[Stage],
    pin: bool,
) -> Iterator[tuple[int, int, Batch]]:
    """Yield ``(epoch, index after this batch, batch)`` forever, from ``position`` on."""
    epoch, index = position.epoch, position.index
    micro = position.step * config.accum_steps

    def size_of(m: int) -> int:
        return stage_at(stages, m // config.accum_steps)[1].image_size

    while True:
        sampler = EpochBatches(
            len(dataset),
            config.batch_size,
            seed=config.seed,
            epoch=epoch,
            start=index,
            first_micro=micro,
            size_of=size_of,
            rank=info.rank,
            world_size=info.world_size,
        )
        loader = DataLoader(
            dataset,
            batch_sampler=sampler,
            collate_fn=collator,
            num_workers=config.data.num_workers,
            pin_memory=pin,
        )
        for batch in loader:
            index += config.batch_size
            micro += 1
            yield epoch, index, batch
        epoch, index = epoch + 1, 0


# --- the loop ---------------------------------------------------------------------------------------------


def train(config: TrainConfig | dict[str, Any]) -> TrainResult:
    """Run (or resume) a training run described by ``config``; returns a ``TrainResult``.

    Writes under ``config.out``: ``train_config.json``, ``metrics.csv``, ``checkpoints/`` and, when the run
    reaches its last step, ``model.safetensors`` + ``model.json`` (load with ``perception_encoder.load``).
    """
    if isinstance(config, dict):
        config = TrainConfig.from_dict(config)
    config.validate()
    started = time.time()
    info, device = init_distributed(config.device)
    if config.batch_size % info.world_size:
        raise ValueError(
            f"batch_size {config.batch_size} must be divisible by the {info.world_size} processes"
        )
    random.seed(config.seed)
    np.random.seed(config.seed % 2**32)

    model = build_model(config)
    stages = config.resolved_stages(model.visual.config.image_size)
    total = sum(s.steps for s in stages)
    stop = total if config.stop_at_step is None else min(total, config.stop_at_step)
    model.to(device)
    model.set_grad_checkpointing(config.grad_checkpointing)
    model.logit_scale.requires_grad_(config.loss.learn_logit_scale)
    freeze(model, config.freeze)
    optimizer = build_optimizer(model, config.optim)
    scheduler = build_scheduler(optimizer, config.optim, total)
    scaler = torch.amp.GradScaler(device.type, enabled=config.precision == "fp16")

    out = Path(config.out)
    position = Position()
    resume_path = find_resume(config.resume, out)
    if resume_path is not None:
        state = load_training_state(resume_path)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"])
        position = Position(**state["position"])
        log.info(
            "resumed from %s at step %d (epoch %d, sample %d)",
            resume_path,
            position.step,
            position.epoch,
            position.index,
        )

    source = open_source(config.data, image_size=max(s.image_size for s in stages))
    if len(source) < config.batch_size:
        raise ValueError(
            f"data source {config.data.source!r} has {len(source)} samples, fewer than one batch ({config.batch_size})"
        )
    dataset = TrainingDataset(source, TrainTransform(config.augment), video=config.data.frames is not None)
    from ..tokenization import tokenizer as make_tokenizer

    collator = Collator(make_tokenizer(model.text.context_length))

    forward: nn.Module = ContrastiveForward(model)
    if info.enabled:
        forward = nn.parallel.DistributedDataParallel(
            forward, device_ids=[device.index] if device.type == "cuda" else None
        )

    metrics = None
    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
        removed = remove_stale_temp_files(out)
        if removed:
            log.info(
                "removed %d temporary file(s) left by an interrupted checkpoint save in %s", removed, out
            )
        (out / "train_config.json").write_text(config.to_json() + "\n")
        metrics = MetricsLog(out, resume_step=position.step, tensorboard=config.tensorboard)
    result = TrainResult(
        model, position.step, position.step, total, out_dir=out, bad_samples=position.bad_samples
    )
    result.metrics_path = metrics.path if metrics else None

    stream = _micro_batches(dataset, collator, config, info, position, stages, pin=device.type == "cuda")
    autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(config.precision)
    patch = model.visual.config.patch_size
    bad_logged = 0
    bar = None
    if info.is_main and config.progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, initial=position.step, desc="train", unit="step", dynamic_ncols=True)
    window_start, window_samples = time.time(), 0
    model.train()

    for step in range(position.step, stop):
        # load the step's micro-batches first: which ones are empty on some rank decides what runs
        micro_batches = []
        for _ in range(config.accum_steps):
            epoch, index, batch = next(stream)
            position.epoch, position.index = epoch, index
            micro_batches.append(batch)
            for b in batch.bad:
                if bad_logged < _MAX_LOGGED_BAD:
                    log.warning("skipping bad sample: %s", b.reason)
                    bad_logged += 1
        empty_flags = [float(len(b) == 0) for b in micro_batches]
        local_bad = float(sum(len(b.bad) for b in micro_batches))
        reduced = sum_over_ranks([*empty_flags, local_bad], info, device)
        run = [i for i, e in enumerate(reduced[:-1]) if e == 0]
        position.bad_samples += int(reduced[-1])

        optimizer.zero_grad(set_to_none=True)
        step_clip, step_mask = 0.0, 0.0
        for n, i in enumerate(run):
            batch = micro_batches[i]
            sync = n == len(run) - 1
            ctx = forward.no_sync() if info.enabled and not sync else contextlib.nullcontext()
            with ctx:
                c, m = _micro_step(
                    forward,
                    model,
                    batch,
                    config,
                    info,
                    device,
                    step,
                    i,
                    patch,
                    autocast_dtype,
                    scaler,
                    len(run),
                )
            step_clip += c / len(run)
            step_mask += m / len(run)
            window_samples += config.batch_size

        if run:
            scaler.unscale_(optimizer)
            if config.optim.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.optim.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            loss_value = step_clip + config.mask.weight * step_mask
        else:
            log.warning("step %d: every micro-batch was empty after dropping bad samples; no update", step)
            loss_value = step_clip = step_mask = float("nan")
        lr = optimizer.param_groups[0]["lr"]  # the rate this step used
        scheduler.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0.0, config.loss.max_logit_scale)
        position.step = step + 1
        result.losses.append(loss_value)
        result.step = position.step
        result.bad_samples = position.bad_samples

        size = stage_at(stages, step)[1].image_size
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{loss_value:.4f}", size=size, bad=position.bad_samples, refresh=False)
        if metrics is not None and (position.step % config.log_every == 0 or position.step == stop):
            elapsed = max(1e-9, time.time() - window_start)
            metrics.write(
                {
                    "step": position.step,
                    "epoch": position.epoch,
                    "loss": loss_value,
                    "clip_loss": step_clip,
                    "mask_loss": step_mask,
                    "lr": lr,
                    "logit_scale": float(model.logit_scale.detach().exp()),
                    "image_size": size,
                    "samples": position.step * config.accum_steps * config.batch_size,
                    "bad_samples": position.bad_samples,
                    "samples_per_s": window_samples / elapsed,
                }
            )
            window_start, window_samples = time.time(), 0
        if position.step % config.checkpoint_every == 0 or position.step == stop:
            if info.is_main:
                result.checkpoint = save_training_state(
                    out,
                    model=model,
                    optimizer=optimizer,
                    scheduler=scheduler,
                    scaler=scaler,
                    position=position,
                    run_config=config.to_dict(),
                    keep=config.keep_checkpoints,
                )
            barrier(info)

    if bar is not None:
        bar.close()
    if metrics is not None:
        metrics.close()
    if position.bad_samples:
        log.warning("%d bad samples were skipped in total", position.bad_samples)
    if result.finished and info.is_main:
        result.model_path = export_model(model, out / "model.safetensors")
    barrier(info)
    shutdown(info)
    model.eval()
    result.rank = info.rank
    result.seconds = time.time() - started
    return result


def _micro_step(
    forward: nn.Module,
    model: CLIP,
    batch: Batch,
    config: TrainConfig,
    info: DistInfo,
    device: torch.device,
    step: int,
    micro: int,
    patch: int,
    autocast_dtype: torch.dtype | None,
    scaler: torch.amp.GradScaler,
    runs: int,
) -> tuple[float, float]:
    """Forward + backward of one micro-batch; returns its (global) clip and mask loss values."""
    pixels = batch.pixels.to(device, non_blocking=True)
    tokens = batch.token_ids.to(device, non_blocking=True)
    b = pixels.shape[0]
    selected: list[int] = []
    if config.mask.enabled and config.mask.fraction > 0:
        chosen = masked_slots(config.batch_size, config.mask.fraction, config.seed, step, micro)
        selected = [i for i, s in enumerate(batch.slots.tolist()) if s in chosen]
    masked_count = 0
    if config.mask.enabled and config.mask.fraction > 0:
        masked_count = int(sum_over_ranks([float(len(selected))], info, device)[0])
    if selected:
        seeds = [f"{config.seed}/{step}/{micro}/{int(batch.slots[i])}" for i in selected]
        pixels = torch.cat([pixels, mask_patches(pixels[selected], patch, config.mask.ratio, seeds)])

    with torch.autocast(
        device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None
    ):
        img_all, txt, logit_scale = forward(pixels, tokens)
    img_all, txt = img_all.float(), txt.float()
    img, masked = img_all[:b], img_all[b:]
    c_loss = clip_loss(img, txt, logit_scale.float(), info)
    m_loss = mask_consistency_loss(masked, img[selected], masked_count) if masked_count else img.sum() * 0.0
    loss = c_loss + config.mask.weight * m_loss
    # x world: DDP averages gradients, the global loss needs their sum (see loss.py); / runs: accumulation
    scaler.scale(loss * (info.world_size / runs)).backward()
    m_value = sum_over_ranks([float(m_loss.detach())], info, device)[0] if masked_count else 0.0
    c_value = float(c_loss.detach())
    if not math.isfinite(c_value):
        raise FloatingPointError(f"step {step}: the loss is {c_value}; lower the learning rate")
    return c_value, m_value
