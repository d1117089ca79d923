"""The PerceptionLM projector: PE-Lang patch tokens -> language-model input embeddings (SPEC §6).

Per token ``Linear(W -> D)``, exact GELU, ``Linear(D -> D)`` (both with bias), then average pooling of the
token grid by ``pooling_ratio`` in each direction (adaptive average pooling to ``h // r x w // r``), tokens
row-major. With 448 px tiles and patch 14 that is 32 x 32 = 1024 tokens -> 256 per tile.

Parameter names are those of transformers' ``PerceptionLMMultiModalProjector`` (``linear_1``, ``linear_2``),
so ``load_plm_projector`` reads released PerceptionLM checkpoints directly.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import CheckpointError

__all__ = ["PLMProjector", "load_plm_projector", "projector_state_dict"]


class PLMProjector(nn.Module):
    """Two-layer MLP then ``pooling_ratio x pooling_ratio`` average pooling over the token grid.

    Args:
        vision_width: ``W``, the vision tower's token width (1024 for PE-Lang-L, 1536 for G).
        lm_width: ``D``, the language model's hidden size.
        pooling_ratio: pooling factor per grid side (2 in PerceptionLM's tiled stages; 1 disables pooling).
    """

    def __init__(self, vision_width: int, lm_width: int, pooling_ratio: int = 2) -> None:
        super().__init__()
        if pooling_ratio < 1:
            raise ValueError(f"pooling_ratio must be >= 1, got {pooling_ratio}")
        self.vision_width = vision_width
        self.lm_width = lm_width
        self.pooling_ratio = pooling_ratio
        self.linear_1 = nn.Linear(vision_width, lm_width, bias=True)
        self.gelu = nn.GELU()  # exact (erf) GELU, as the reference
        self.linear_2 = nn.Linear(lm_width, lm_width, bias=True)

    def pooled_grid(self, grid_h: int, grid_w: int) -> tuple[int, int]:
        """The token grid ``(rows, cols)`` after pooling a ``grid_h x grid_w`` patch grid."""
        r = self.pooling_ratio
        if grid_h < r or grid_w < r:
            raise ValueError(f"a {grid_h}x{grid_w} token grid is smaller than the {r}x{r} pooling window")
        return grid_h // r, grid_w // r

    def num_tokens(self, grid_h: int, grid_w: int) -> int:
        """How many output tokens a ``grid_h x grid_w`` patch grid gives."""
        h, w = self.pooled_grid(grid_h, grid_w)
        return h * w

    def forward(self, tokens: torch.Tensor, grid: tuple[int, int] | None = None) -> torch.Tensor:
        """Project and pool patch tokens.

        Args:
            tokens: ``(B, N, W)`` patch tokens in row-major order, CLS already dropped.
            grid: ``(grid_h, grid_w)`` with ``grid_h * grid_w == N``; default: the square grid ``sqrt(N)``.

        Returns:
            ``(B, N', D)`` with ``N' = (grid_h // r) * (grid_w // r)``, row-major.
        """
        if tokens.ndim != 3 or tokens.shape[-1] != self.vision_width:
            raise ValueError(
                f"tokens must be (B, N, {self.vision_width}) (CLS dropped), got {tuple(tokens.shape)}"
            )
        b, n, _ = tokens.shape
        if grid is None:
            side = math.isqrt(n)
            if side * side != n:
                raise ValueError(f"{n} tokens are not a square grid; pass grid=(grid_h, grid_w)")
            grid = (side, side)
        gh, gw = int(grid[0]), int(grid[1])
        if gh * gw != n:
            raise ValueError(f"grid {gh}x{gw} does not hold the {n} tokens given")
        x = self.linear_2(self.gelu(self.linear_1(tokens)))
        if self.pooling_ratio == 1:
            return x
        out_h, out_w = self.pooled_grid(gh, gw)
        x = x.transpose(1, 2).reshape(b, self.lm_width, gh, gw)
        x = F.adaptive_avg_pool2d(x, (out_h, out_w))
        return x.flatten(2).transpose(1, 2)

    def extra_repr(self) -> str:
        return (
            f"vision_width={self.vision_width}, lm_width={self.lm_width}, pooling_ratio={self.pooling_ratio}"
        )


# --- checkpoints -----------------------------------------------------------------------------------------

# prefix -> (name of the first Linear, name of the second) in the formats met in the wild
_LAYOUTS: tuple[tuple[str, str, str], ...] = (
    ("model.multi_modal_projector.", "linear_1", "linear_2"),  # transformers PerceptionLM (current)
    ("multi_modal_projector.", "linear_1", "linear_2"),  # transformers, older layout
    ("vision_projector.projector.", "0", "2"),  # the reference release (nn.Sequential)
    ("projector.", "0", "2"),
    ("", "linear_1", "linear_2"),  # this class's own state dict
)


def projector_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Pick the projector's four tensors out of a full checkpoint's state dict.

    Accepts transformers' keys (``model.multi_modal_projector.linear_{1,2}.{weight,bias}``, with or without
    ``model.``), the reference release's ``vision_projector.projector.{0,2}.*``, and bare ``linear_1.*``;
    a leading ``module.`` is ignored. Returns ``{linear_1.weight, linear_1.bias, linear_2.weight,
    linear_2.bias}``. Raises ``CheckpointError`` naming the keys looked for when none match.
    """
    keys = {k.removeprefix("module."): k for k in state_dict}
    for prefix, first, second in _LAYOUTS:
        wanted = {
            f"linear_{i}.{p}": f"{prefix}{name}.{p}"
            for i, name in ((1, first), (2, second))
            for p in ("weight", "bias")
        }
        if all(k in keys for k in wanted.values()):
            return {ours: state_dict[keys[theirs]] for ours, theirs in wanted.items()}
    sample = ", ".join(sorted(keys)[:8]) or "(empty)"
    raise CheckpointError(
        "no PerceptionLM projector found: expected model.multi_modal_projector.linear_1/linear_2 "
        f"(or multi_modal_projector.*, vision_projector.projector.0/2, linear_1/linear_2) .weight/.bias; "
        f"the checkpoint has {len(keys)} keys, e.g. {sample}"
    )


def _read_file(path: Path, names: set[str] | None = None) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors (optionally only ``names``) and safetensors metadata of one checkpoint file."""
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                keys = [k for k in f.keys() if names is None or k in names]  # noqa: SIM118
                return {k: f.get_tensor(k) for k in keys}, dict(f.metadata() or {})
        except Exception as exc:
            raise CheckpointError(f"cannot read {path}: {type(exc).__name__}: {exc}") from exc
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"cannot read {path}: {type(exc).__name__}: {exc}") from exc
    for wrapper in ("state_dict", "model", "weights", "projector"):
        if isinstance(obj, Mapping) and isinstance(obj.get(wrapper), Mapping):
            try:
                return projector_state_dict(obj[wrapper]), {}
            except CheckpointError:
                continue
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path} does not hold a state dict (found {type(obj).__name__})")
    return dict(obj), {}


def _projector_names() -> set[str]:
    return {
        f"{prefix}{name}.{p}"
        for prefix, first, second in _LAYOUTS
        for name in (first, second)
        for p in ("weight", "bias")
    }


def _load_path(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str], int | None]:
    """Projector tensors, metadata and the pooling ratio from config.json (if any) at ``path``."""
    ratio = None
    if path.is_dir():
        config = path / "config.json"
        if config.is_file():
            ratio = json.loads(config.read_text()).get("projector_pooling_ratio")
        index = path / "model.safetensors.index.json"
        if index.is_file():
            path = index
        else:
            for name in ("model.safetensors", "pytorch_model.bin", "projector.safetensors", "projector.pt"):
                if (path / name).is_file():
                    path = path / name
                    break
            else:
                raise CheckpointError(f"no checkpoint file found in folder {path}")
    if not path.is_file():
        raise CheckpointError(f"no such checkpoint file: {path}")
    wanted = _projector_names() | {f"module.{n}" for n in _projector_names()}
    if path.name.endswith(".index.json"):
        # a sharded checkpoint: open only the shard(s) that hold the projector
        weight_map: dict[str, str] = json.loads(path.read_text()).get("weight_map", {})
        shards = sorted({weight_map[k] for k in wanted if k in weight_map})
        if not shards:
            raise CheckpointError(f"the index {path} lists no PerceptionLM projector tensors")
        tensors: dict[str, torch.Tensor] = {}
        for shard in shards:
            tensors.update(_read_file(path.parent / shard, wanted)[0])
        return tensors, {}, ratio
    tensors, metadata = _read_file(path, wanted if path.suffix == ".safetensors" else None)
    return tensors, metadata, ratio


def load_plm_projector(
    source: Mapping[str, torch.Tensor] | str | os.PathLike, pooling_ratio: int | None = None
) -> PLMProjector:
    """Build a ``PLMProjector`` from a released PerceptionLM checkpoint (or any state dict holding one).

    Args:
        source: a state dict, or a path: a ``.safetensors`` / ``.pt`` / ``.bin`` file, a sharded
            ``model.safetensors.index.json`` (only the shard holding the projector is read), or a model
            folder (``config.json`` + weights, as on the hub).
        pooling_ratio: pooling per grid side. Default: ``projector_pooling_ratio`` from the folder's
            ``config.json``, else the ``pooling_ratio`` metadata of a file saved by this library, else 2
            (PerceptionLM's tiled stages).

    Returns:
        The projector, widths taken from the weights, in eval mode.
    """
    metadata: dict[str, str] = {}
    config_ratio = None
    if isinstance(source, (str, os.PathLike)):
        tensors, metadata, config_ratio = _load_path(Path(source))
    elif isinstance(source, Mapping):
        tensors = dict(source)
    else:
        raise TypeError(f"source must be a state dict or a path, got {type(source).__name__}")
    sd = projector_state_dict(tensors)
    w1, w2 = sd["linear_1.weight"], sd["linear_2.weight"]
    if w1.ndim != 2 or w2.shape != (w1.shape[0], w1.shape[0]):
        raise CheckpointError(
            f"projector weights have inconsistent shapes: linear_1 {tuple(w1.shape)}, linear_2 {tuple(w2.shape)}"
        )
    if pooling_ratio is None:
        pooling_ratio = int(config_ratio or metadata.get("pooling_ratio") or 2)
    projector = PLMProjector(w1.shape[1], w1.shape[0], pooling_ratio)
    projector.load_state_dict({k: v.float() for k, v in sd.items()})
    return projector.eval()
