"""Projector alignment: train only the projector on image-caption pairs, encoder and LM frozen.

This is PerceptionLM's first stage ("warm-up"): the prompt is the image alone (``"<image>"``), the target is
the caption, images are single squashed tiles (``max_tiles=1``), AdamW (betas 0.9 / 0.95, weight decay 0.01,
lr 1e-4), gradient clipping at 1.0, linear warm-up then cosine decay to 1% of the learning rate.

Data: a list of ``(image, caption)`` pairs or any indexable dataset (``__len__`` / ``__getitem__``) whose items
are such pairs or dicts with ``image`` and ``caption`` (or ``text``). Items that fail to load or tokenise are
skipped with a warning; the others in their batch still train. The order is a fixed function of the seed
and the step, so a run resumed from a checkpoint sees the same batches as an uninterrupted one.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from .model import VisionLanguageModel
from .processor import ImageItem, VLMSample

__all__ = ["train_projector", "lr_factor", "CHECKPOINT_NAME"]

log = logging.getLogger(__name__)

#: the file (inside ``checkpoint_dir``) holding projector, optimizer, step and loss history
CHECKPOINT_NAME = "projector_align.pt"


def lr_factor(step: int, steps: int, warmup_steps: int, min_lr_ratio: float) -> float:
    """Multiplier of the base learning rate at ``step`` (0-based): linear warm-up over ``warmup_steps``
    (reaching 1 at the end of warm-up), then cosine decay to ``min_lr_ratio`` at the last step."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    s = (step - warmup_steps) / max(1, steps - 1 - warmup_steps)
    return min_lr_ratio + 0.5 * (1 - min_lr_ratio) * (1 + math.cos(math.pi * min(1.0, s)))


def _pair(item: Any) -> tuple[Any, str]:
    if isinstance(item, dict):
        caption = item.get("caption", item.get("text"))
        if "image" not in item or caption is None:
            raise KeyError(f"a dict item needs 'image' and 'caption' (or 'text') keys, got {sorted(item)}")
        return item["image"], caption
    if isinstance(item, (tuple, list)) and len(item) == 2:
        return item[0], item[1]
    raise TypeError(f"an item must be (image, caption) or a dict, got {type(item).__name__}")


class _Order:
    """Position ``k`` of an endless stream of dataset indices: epoch ``k // N`` is a permutation seeded by
    ``seed + epoch``."""

    def __init__(self, size: int, seed: int, shuffle: bool) -> None:
        self.size, self.seed, self.shuffle = size, seed, shuffle
        self._cache: dict[int, list[int]] = {}

    def __getitem__(self, k: int) -> int:
        epoch, i = divmod(k, self.size)
        if not self.shuffle:
            return i
        if epoch not in self._cache:
            self._cache = {
                epoch: torch.randperm(
                    self.size, generator=torch.Generator().manual_seed(self.seed + epoch)
                ).tolist()
            }
        return self._cache[epoch][i]


def _save(path: Path, state: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)  # never leave a half-written checkpoint behind


def train_projector(
    model: VisionLanguageModel,
    data: Any,
    *,
    steps: int = 1000,
    batch_size: int = 8,
    lr: float = 1e-4,
    weight_decay: float = 0.01,
    betas: tuple[float, float] = (0.9, 0.95),
    warmup_steps: int = 20,
    min_lr_ratio: float = 0.01,
    grad_clip: float | None = 1.0,
    prompt: str = "<image>",
    max_tiles: int = 1,
    shuffle: bool = True,
    seed: int = 0,
    checkpoint_dir: str | os.PathLike | None = None,
    checkpoint_every: int = 100,
    resume: bool = True,
    log_every: int = 10,
    callback: Callable[[int, float], None] | None = None,
) -> list[float]:
    """Train ``model.projector`` to caption images through the frozen vision tower and language model.

    Args:
        model: the ``VisionLanguageModel``; only its projector changes (the other parts are frozen for
            the run and their ``requires_grad`` restored afterwards).
        data: ``(image, caption)`` pairs (list or indexable dataset; dict items with ``image`` /
            ``caption`` work too). Images: anything ``tile_image`` accepts.
        steps: total optimizer steps (counting steps done before a resume).
        batch_size, lr, weight_decay, betas, warmup_steps, min_lr_ratio, grad_clip: the optimisation.
        prompt: the text around the image; must contain the image placeholder once.
        max_tiles: tiles per image (1: one squashed image, as PerceptionLM's stage 1).
        shuffle, seed: data order (a permutation per epoch, seeded by ``seed + epoch``).
        checkpoint_dir: where ``projector_align.pt`` (projector, optimizer, step, losses) is written every
            ``checkpoint_every`` steps and at the end, and ``projector.safetensors`` at the end; with
            ``resume=True`` an existing checkpoint there is continued from.
        log_every: log the mean loss every so many steps (0: never).
        callback: called as ``callback(step, loss)`` after each step (1-based step).

    Returns:
        The loss per step, from step 1 (including steps restored from a checkpoint). A step whose items
        all failed records ``nan`` and does not update.
    """
    if steps < 1 or batch_size < 1:
        raise ValueError(f"steps and batch_size must be >= 1, got steps={steps}, batch_size={batch_size}")
    try:
        size = len(data)
    except TypeError:
        raise TypeError("data must be a list or an indexable dataset with __len__") from None
    if size == 0:
        raise ValueError("data is empty")
    processor = model.processor
    if prompt.count(processor.image_token) != 1 or processor.video_token in prompt:
        raise ValueError(
            f"prompt must contain {processor.image_token!r} exactly once (and no video), got {prompt!r}"
        )

    projector = model.projector
    optimizer = torch.optim.AdamW(projector.parameters(), lr=lr, betas=betas, weight_decay=weight_decay)
    losses: list[float] = []
    start = 0
    ckpt_path = None
    if checkpoint_dir is not None:
        Path(checkpoint_dir).mkdir(parents=True, exist_ok=True)
        ckpt_path = Path(checkpoint_dir) / CHECKPOINT_NAME
        if resume and ckpt_path.is_file():
            state = torch.load(ckpt_path, map_location="cpu", weights_only=True)
            projector.load_state_dict(state["projector"])
            optimizer.load_state_dict(state["optimizer"])
            start, losses = int(state["step"]), [float(x) for x in state["losses"]]
            log.info("resumed projector alignment from %s at step %d", ckpt_path, start)

    def checkpoint(step: int) -> None:
        if ckpt_path is not None:
            _save(
                ckpt_path,
                {
                    "projector": projector.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "step": step,
                    "losses": losses,
                    "settings": {"batch_size": batch_size, "seed": seed, "lr": lr, "steps": steps},
                },
            )

    order = _Order(size, seed, shuffle)
    requires_grad = {id(p): p.requires_grad for p in model.parameters()}
    was_training = model.training
    model.freeze(vision=True, language_model=True, projector=False)
    model.train()
    dtype = projector.linear_1.weight.dtype
    try:
        for step in range(start, steps):
            samples: list[VLMSample] = []
            for k in range(step * batch_size, (step + 1) * batch_size):
                index = order[k]
                try:
                    image, caption = _pair(data[index])
                    item = ImageItem(image, max_tiles=max_tiles)
                    samples.append(processor.prepare_sample(prompt, caption, images=[item]))
                except (ValueError, TypeError, KeyError, OSError) as exc:
                    log.warning("skipping item %d: %s", index, exc)
            if not samples:
                log.warning("step %d: every item of the batch failed; no update", step + 1)
                losses.append(float("nan"))
                continue
            batch = processor.collate(samples, "right").to(model.device, dtype)
            for group in optimizer.param_groups:
                group["lr"] = lr * lr_factor(step, steps, warmup_steps, min_lr_ratio)
            loss = model(**batch).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(projector.parameters(), grad_clip)
            optimizer.step()
            losses.append(float(loss.detach()))
            if callback is not None:
                callback(step + 1, losses[-1])
            if log_every and (step + 1) % log_every == 0:
                recent = [x for x in losses[-log_every:] if not math.isnan(x)]
                log.info("step %d/%d loss %.4f", step + 1, steps, sum(recent) / max(1, len(recent)))
            if checkpoint_every and (step + 1) % checkpoint_every == 0:
                checkpoint(step + 1)
        checkpoint(max(start, steps))
        if checkpoint_dir is not None:
            model.save_projector(Path(checkpoint_dir) / "projector.safetensors")
    finally:
        for p in model.parameters():
            p.requires_grad_(requires_grad[id(p)])
        model.train(was_training)
    return losses
