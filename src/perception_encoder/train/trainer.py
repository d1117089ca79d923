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

Code: ``train`` = ``_start`` (set-up: seeding, model, optimiser, resume, data, run folder; it builds a
``_Run``), then ``_Run.train_step`` per optimiser step, then ``_Run.finish``. ``_Run``'s methods are the
steps above, in the order they run (which fixes the RNG streams and the order of collectives over ranks).
"""

from __future__ import annotations

import contextlib
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
from ..input_files import parse_json, read_text
from ..weights.strict import check_state_dict
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
            # the library's one video rule (encode_video(normalize=True)), renormalised for the loss
            img = F.normalize(self.model.encode_video(pixels, normalize=True), dim=-1)
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
            data = parse_json(read_text(path, "model config"), f"model config {path}")
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


def _open_data(config: TrainConfig, model: CLIP, stages: list[Stage]) -> tuple[TrainingDataset, Collator]:
    """The training set (decoded at the largest stage size, augmented per sample) and the collator that
    tokenises its captions for ``model``. Raises ``ValueError`` when the source holds less than one batch."""
    source = open_source(config.data, image_size=max(s.image_size for s in stages))
    if len(source) < config.batch_size:
        raise ValueError(
            f"data source {config.data.source!r} has {len(source)} samples, fewer than one batch ({config.batch_size})"
        )
    dataset = TrainingDataset(source, TrainTransform(config.augment), video=config.data.frames is not None)
    from ..tokenization import tokenizer as make_tokenizer

    return dataset, Collator(make_tokenizer(model.text.context_length))


# --- setting a run up -------------------------------------------------------------------------------------


def _place_model(model: CLIP, config: TrainConfig, device: torch.device) -> None:
    """Move ``model`` to ``device`` and set what trains: activation checkpointing, the temperature, freezing."""
    model.to(device)
    model.set_grad_checkpointing(config.grad_checkpointing)
    model.logit_scale.requires_grad_(config.loss.learn_logit_scale)
    freeze(model, config.freeze)


def _resume(
    config: TrainConfig,
    out: Path,
    model: CLIP,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LambdaLR,
    scaler: torch.amp.GradScaler,
) -> Position:
    """Load the checkpoint ``config.resume`` names (if any) into the model, optimiser, schedule, scaler and
    RNGs; returns where it left off (``Position()`` for a fresh run). A file that is not a training
    checkpoint of ours raises ``CheckpointError``."""
    path = find_resume(config.resume, out)
    if path is None:
        return Position()
    state = load_training_state(path)
    expected = {k: v.shape for k, v in model.state_dict().items()}
    # a checkpoint of another model: one message naming the keys and the model it fits
    check_state_dict(
        expected, state["model"], target_config=model.config, target="the configured model", source=str(path)
    )
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    if state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    set_rng_state(state["rng"])
    position = Position(**state["position"])
    log.info(
        "resumed from %s at step %d (epoch %d, sample %d)",
        path,
        position.step,
        position.epoch,
        position.index,
    )
    return position


def _prepare_run_folder(config: TrainConfig, out: Path, position: Position) -> MetricsLog:
    """Main rank: make the run folder, remove the temporary files a run killed while checkpointing left,
    write ``train_config.json``, and open the metrics log (continuing after ``position.step``)."""
    out.mkdir(parents=True, exist_ok=True)
    removed = remove_stale_temp_files(out)
    if removed:
        log.info("removed %d temporary file(s) left by an interrupted checkpoint save in %s", removed, out)
    (out / "train_config.json").write_text(config.to_json() + "\n")
    return MetricsLog(out, resume_step=position.step, tensorboard=config.tensorboard)


def _contrastive_forward(model: CLIP, info: DistInfo, device: torch.device) -> nn.Module:
    """The module the loop calls: ``ContrastiveForward(model)``, in DDP over several processes."""
    forward: nn.Module = ContrastiveForward(model)
    if info.enabled:
        forward = nn.parallel.DistributedDataParallel(
            forward, device_ids=[device.index] if device.type == "cuda" else None
        )
    return forward


def _progress_bar(total: int, done: int) -> Any:
    """A tqdm bar over the run's ``total`` steps, ``done`` of them already."""
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=done, desc="train", unit="step", dynamic_ncols=True)


def _start(config: TrainConfig, started: float) -> _Run:
    """Set a run up, in this order (it fixes the RNG streams): join the process group, seed, build the model,
    optimiser, schedule and scaler, resume, open the data, wrap the model in DDP, prepare the run folder
    (main rank). Returns the run, in training mode, at its first step."""
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
    _place_model(model, config, device)
    optimizer = build_optimizer(model, config.optim)
    scheduler = build_scheduler(optimizer, config.optim, total)
    scaler = torch.amp.GradScaler(device.type, enabled=config.precision == "fp16")

    out = Path(config.out)
    position = _resume(config, out, model, optimizer, scheduler, scaler)
    dataset, collator = _open_data(config, model, stages)
    forward = _contrastive_forward(model, info, device)
    metrics = _prepare_run_folder(config, out, position) if info.is_main else None
    result = TrainResult(
        model, position.step, position.step, total, out_dir=out, bad_samples=position.bad_samples
    )
    result.metrics_path = metrics.path if metrics else None
    stream = _micro_batches(dataset, collator, config, info, position, stages, pin=device.type == "cuda")
    bar = _progress_bar(total, position.step) if info.is_main and config.progress else None
    run = _Run(
        config=config,
        info=info,
        device=device,
        model=model,
        forward=forward,
        optimizer=optimizer,
        scheduler=scheduler,
        scaler=scaler,
        stages=stages,
        stop=stop,
        out=out,
        position=position,
        stream=stream,
        result=result,
        metrics=metrics,
        bar=bar,
        started=started,
    )
    model.train()
    return run


# --- the loop ---------------------------------------------------------------------------------------------


def train(config: TrainConfig | dict[str, Any]) -> TrainResult:
    """Run (or resume) a training run described by ``config``; returns a ``TrainResult``.

    Writes under ``config.out``: ``train_config.json``, ``metrics.csv``, ``checkpoints/`` and, when the run
    reaches its last step, ``model.safetensors`` + ``model.json`` (load with ``perception_encoder.load``).
    """
    if isinstance(config, dict):
        config = TrainConfig.from_dict(config)
    config.validate()
    run = _start(config, started=time.time())
    for step in range(run.position.step, run.stop):
        run.train_step(step)
    return run.finish()


@dataclass
class _StepLoss:
    """One optimiser step's loss values, each the mean over the micro-batches that ran (``nan``: none ran)."""

    clip: float = 0.0
    mask: float = 0.0

    def total(self, mask_weight: float) -> float:
        return self.clip + mask_weight * self.mask


@dataclass
class _Run:
    """What one call of ``train`` works with (built by ``_start``) and the loop's parts, as methods.

    ``train_step`` runs one optimiser step: ``load_micro_batches``, ``runnable`` (agreed by all ranks),
    ``accumulate_gradients`` (``micro_step`` per micro-batch), ``apply_gradients``, ``advance_schedule``,
    ``record`` (result, progress bar, metrics) and ``checkpoint_if_due``; ``finish`` ends the run.
    """

    config: TrainConfig
    info: DistInfo
    device: torch.device
    model: CLIP
    forward: nn.Module  # ContrastiveForward, in DDP over several processes
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    stages: list[Stage]
    out: Path  # the run folder
    stop: int  # steps done when this invocation ends (``stop_at_step``, else the run's length)
    position: Position  # updated in place as data is consumed and steps are done
    stream: Iterator[tuple[int, int, Batch]]
    result: TrainResult
    metrics: MetricsLog | None  # main rank only
    bar: Any  # tqdm progress bar (main rank, ``progress`` on) or None
    started: float  # time.time() when train() was called
    bad_logged: int = 0
    window_start: float = field(default_factory=time.time)  # throughput window since the last metrics row
    window_samples: int = 0

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.config.precision)

    # --- one optimiser step ---------------------------------------------------------------------------

    def train_step(self, step: int) -> None:
        """Optimiser step ``step`` (0-based) from loading its data to its checkpoint."""
        batches = self.load_micro_batches()
        runnable = self.runnable(batches)
        loss = self.accumulate_gradients(step, batches, runnable)
        if runnable:
            self.apply_gradients()
        else:
            log.warning("step %d: every micro-batch was empty after dropping bad samples; no update", step)
            loss = _StepLoss(math.nan, math.nan)
        lr = self.advance_schedule()
        self.record(step, loss, lr)
        self.checkpoint_if_due()

    def load_micro_batches(self) -> list[Batch]:
        """This rank's part of the step's ``accum_steps`` micro-batches; advances the data position. The first
        ``_MAX_LOGGED_BAD`` bad samples of the run are logged."""
        batches = []
        for _ in range(self.config.accum_steps):
            epoch, index, batch = next(self.stream)
            self.position.epoch, self.position.index = epoch, index
            batches.append(batch)
            for b in batch.bad:
                if self.bad_logged < _MAX_LOGGED_BAD:
                    log.warning("skipping bad sample: %s", b.reason)
                    self.bad_logged += 1
        return batches

    def runnable(self, batches: list[Batch]) -> list[int]:
        """Indices of the micro-batches to run: those not empty on any rank, so every rank runs the same
        collectives. The same all-reduce adds the step's bad samples (all ranks) to the position."""
        empty_flags = [float(len(b) == 0) for b in batches]
        local_bad = float(sum(len(b.bad) for b in batches))
        reduced = sum_over_ranks([*empty_flags, local_bad], self.info, self.device)
        self.position.bad_samples += int(reduced[-1])
        return [i for i, e in enumerate(reduced[:-1]) if e == 0]

    def accumulate_gradients(self, step: int, batches: list[Batch], runnable: list[int]) -> _StepLoss:
        """Zero the gradients, then forward + backward each runnable micro-batch; returns the mean losses."""
        self.optimizer.zero_grad(set_to_none=True)
        loss = _StepLoss()
        for n, i in enumerate(runnable):
            last = n == len(runnable) - 1
            # DDP all-reduces the gradients in the last micro-batch's backward only
            sync = self.forward.no_sync() if self.info.enabled and not last else contextlib.nullcontext()
            with sync:
                c, m = self.micro_step(batches[i], step, i, len(runnable))
            loss.clip += c / len(runnable)
            loss.mask += m / len(runnable)
            self.window_samples += self.config.batch_size
        return loss

    def micro_step(self, batch: Batch, step: int, micro: int, runs: int) -> tuple[float, float]:
        """Forward + backward of micro-batch ``micro`` of ``step``, one of the ``runs`` that run this step;
        returns its (global) clip and mask loss values."""
        pixels = batch.pixels.to(self.device, non_blocking=True)
        tokens = batch.token_ids.to(self.device, non_blocking=True)
        b = pixels.shape[0]
        selected, masked_count = self.mask_selection(batch, step, micro)
        if selected:
            pixels = torch.cat([pixels, self.masked_copies(pixels, batch, selected, step, micro)])
        c_loss, m_loss = self.losses(pixels, tokens, b, selected, masked_count)
        loss = c_loss + self.config.mask.weight * m_loss
        # x world: DDP averages gradients, the global loss needs their sum (see loss.py); / runs: accumulation
        self.scaler.scale(loss * (self.info.world_size / runs)).backward()
        m_value = sum_over_ranks([float(m_loss.detach())], self.info, self.device)[0] if masked_count else 0.0
        c_value = float(c_loss.detach())
        if not math.isfinite(c_value):
            raise FloatingPointError(f"step {step}: the loss is {c_value}; lower the learning rate")
        return c_value, m_value

    def mask_selection(self, batch: Batch, step: int, micro: int) -> tuple[list[int], int]:
        """Rows of this rank's micro-batch that get a masked copy, and how many rows do over all ranks (the
        mask loss's denominator; one all-reduce). ``([], 0)`` with mask regularisation off."""
        mask = self.config.mask
        if not (mask.enabled and mask.fraction > 0):
            return [], 0
        chosen = masked_slots(self.config.batch_size, mask.fraction, self.config.seed, step, micro)
        selected = [i for i, s in enumerate(batch.slots.tolist()) if s in chosen]
        return selected, int(sum_over_ranks([float(len(selected))], self.info, self.device)[0])

    def masked_copies(
        self, pixels: torch.Tensor, batch: Batch, selected: list[int], step: int, micro: int
    ) -> torch.Tensor:
        """The ``selected`` rows of ``pixels`` with patches masked; seeded by global sample slot, so the
        masks do not depend on the number of ranks."""
        seeds = [f"{self.config.seed}/{step}/{micro}/{int(batch.slots[i])}" for i in selected]
        patch = self.model.visual.config.patch_size
        return mask_patches(pixels[selected], patch, self.config.mask.ratio, seeds)

    def losses(
        self, pixels: torch.Tensor, tokens: torch.Tensor, b: int, selected: list[int], masked_count: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode ``pixels`` (``b`` images, then the masked copies of rows ``selected``) and ``tokens`` in one
        forward pass; returns the CLIP loss over the global batch and the mask-consistency loss."""
        dtype = self.autocast_dtype
        with torch.autocast(self.device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            img_all, txt, logit_scale = self.forward(pixels, tokens)
        img_all, txt = img_all.float(), txt.float()
        img, masked = img_all[:b], img_all[b:]
        c_loss = clip_loss(img, txt, logit_scale.float(), self.info)
        if masked_count:
            m_loss = mask_consistency_loss(masked, img[selected], masked_count)
        else:
            m_loss = img.sum() * 0.0  # a zero tensor on img's device and dtype
        return c_loss, m_loss

    def apply_gradients(self) -> None:
        """Unscale (fp16), clip and take the optimiser step."""
        self.scaler.unscale_(self.optimizer)
        if self.config.optim.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.optim.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()

    def advance_schedule(self) -> float:
        """Step the learning-rate schedule and clamp the temperature (after a skipped update too, so the run
        keeps its length); returns the rate the step used."""
        lr = self.optimizer.param_groups[0]["lr"]
        self.scheduler.step()
        with torch.no_grad():
            self.model.logit_scale.clamp_(0.0, self.config.loss.max_logit_scale)
        return lr

    def record(self, step: int, loss: _StepLoss, lr: float) -> None:
        """Mark step ``step`` done: the position, the result, the progress bar and (when due) a metrics row."""
        position = self.position
        position.step = step + 1
        total = loss.total(self.config.mask.weight)
        self.result.losses.append(total)
        self.result.step = position.step
        self.result.bad_samples = position.bad_samples
        size = stage_at(self.stages, step)[1].image_size
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{total:.4f}", size=size, bad=position.bad_samples, refresh=False)
        if self.metrics is not None and (
            position.step % self.config.log_every == 0 or position.step == self.stop
        ):
            self.write_metrics(loss, total, lr, size)

    def write_metrics(self, loss: _StepLoss, total: float, lr: float, size: int) -> None:
        """One metrics row for the step just done; throughput is over the samples since the last row."""
        assert self.metrics is not None
        elapsed = max(1e-9, time.time() - self.window_start)
        p = self.position
        self.metrics.write(
            {
                "step": p.step,
                "epoch": p.epoch,
                "loss": total,
                "clip_loss": loss.clip,
                "mask_loss": loss.mask,
                "lr": lr,
                "logit_scale": float(self.model.logit_scale.detach().exp()),
                "image_size": size,
                "samples": p.step * self.config.accum_steps * self.config.batch_size,
                "bad_samples": p.bad_samples,
                "samples_per_s": self.window_samples / elapsed,
            }
        )
        self.window_start, self.window_samples = time.time(), 0

    def checkpoint_if_due(self) -> None:
        """Every ``checkpoint_every`` steps and at the stop step: the main rank saves, all ranks wait."""
        step = self.position.step
        if step % self.config.checkpoint_every != 0 and step != self.stop:
            return
        if self.info.is_main:
            self.result.checkpoint = save_training_state(
                self.out,
                model=self.model,
                optimizer=self.optimizer,
                scheduler=self.scheduler,
                scaler=self.scaler,
                position=self.position,
                run_config=self.config.to_dict(),
                keep=self.config.keep_checkpoints,
            )
        barrier(self.info)

    # --- end ------------------------------------------------------------------------------------------

    def finish(self) -> TrainResult:
        """Close the logs, export the model when the run reached its last step (main rank), leave the process
        group; returns the result with the model in eval mode."""
        if self.bar is not None:
            self.bar.close()
        if self.metrics is not None:
            self.metrics.close()
        if self.position.bad_samples:
            log.warning("%d bad samples were skipped in total", self.position.bad_samples)
        if self.result.finished and self.info.is_main:
            self.result.model_path = export_model(self.model, self.out / "model.safetensors")
        barrier(self.info)
        shutdown(self.info)
        self.model.eval()
        self.result.rank = self.info.rank
        self.result.seconds = time.time() - self.started
        return self.result
