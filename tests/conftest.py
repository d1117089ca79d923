"""Shared test helpers: small configs and random weights. No test downloads anything."""

from __future__ import annotations

import atexit
import dataclasses
import os
import shutil
import tempfile

# Tests never touch the network nor the developer's Hugging Face cache: the hub is offline and every cache
# location points into a fresh folder for this session (set before anything imports huggingface_hub, which
# reads them once). A test that needs a hub cache builds one under it or its own tmp_path.
HF_TEST_HOME = tempfile.mkdtemp(prefix="pe-tests-hf-")
atexit.register(shutil.rmtree, HF_TEST_HOME, ignore_errors=True)
for _var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "TRANSFORMERS_CACHE", "HF_ASSETS_CACHE", "HF_TOKEN"):
    os.environ.pop(_var, None)
os.environ["HF_HOME"] = HF_TEST_HOME
os.environ["HF_HUB_OFFLINE"] = "1"
# the cache of weights cast at load (weights.cast_cache) lives in the session's folder too
os.environ["PE_CAST_CACHE"] = os.path.join(HF_TEST_HOME, "pe-cast")

import pytest  # noqa: E402
import torch  # noqa: E402

from perception_encoder.configs import CLIPConfig, TextConfig, VisionConfig, get_model_info  # noqa: E402

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def tiny_vision_config(**overrides) -> VisionConfig:
    base = dict(image_size=32, patch_size=8, width=32, depth=2, heads=2, mlp_dim=64, output_dim=16)
    base.update(overrides)
    return VisionConfig(**base)


def tiny_clip_config(**vision_overrides) -> CLIPConfig:
    vision = tiny_vision_config(**vision_overrides)
    text = TextConfig(
        context_length=16, vocab_size=49408, width=32, depth=2, heads=2, mlp_dim=64, output_dim=16
    )
    return CLIPConfig(vision=vision, text=text)


def released_config(name: str, depth: int | None = None, text_depth: int | None = None):
    """A released config, optionally cut to fewer blocks (big models in tests)."""
    cfg = get_model_info(name).config
    if isinstance(cfg, CLIPConfig):
        vision = dataclasses.replace(cfg.vision, depth=depth or cfg.vision.depth)
        text = dataclasses.replace(cfg.text, depth=text_depth or cfg.text.depth)
        return dataclasses.replace(cfg, vision=vision, text=text)
    return dataclasses.replace(cfg, depth=depth or cfg.depth)


@torch.no_grad()
def randomize(model: torch.nn.Module, seed: int = 0, std: float = 0.02) -> torch.nn.Module:
    """Random weights that exercise every parameter (norm gains and biases too, LayerScale included)."""
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        noise = torch.randn(p.shape, generator=g) * std
        if name.endswith("gamma") or (p.ndim == 1 and "ln" in name and name.endswith("weight")):
            p.copy_(1.0 + noise)
        elif name.endswith("logit_scale"):
            p.fill_(2.659260036932778)
        else:
            p.copy_(noise)
    return model.eval()


def token_ids(batch: int, context: int, lengths: list[int], seed: int = 0) -> torch.Tensor:
    """``(batch, context)`` token ids: start token, random word tokens, end-of-text at ``lengths[i] - 1``,
    zero padding after it."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.zeros(batch, context, dtype=torch.long)
    for i, n in enumerate(lengths):
        ids[i, 0] = 49406
        ids[i, 1 : n - 1] = torch.randint(1, 49000, (n - 2,), generator=g)
        ids[i, n - 1] = 49407
    return ids


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """Relative error ||a - b|| / ||b||."""
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


@pytest.fixture
def tiny_clip():
    from perception_encoder.clip import CLIP

    return randomize(CLIP(tiny_clip_config()))


@pytest.fixture
def tiny_vision():
    from perception_encoder.vision import VisionTransformer

    return randomize(VisionTransformer(tiny_vision_config()))


def folder_chain_past_path_max(root, levels: int = 24, name: str = "d" * 200) -> None:
    """Under ``root``, a chain of folders whose path passes PATH_MAX (4096) with ``deep.png`` at its end:
    made relative to open folders (a path that long cannot be named whole). As root a folder without
    permissions can still be listed; this one cannot be, by anyone."""
    fd = os.open(root, os.O_RDONLY)
    for _ in range(levels):
        os.mkdir(name, dir_fd=fd)
        nxt = os.open(name, os.O_RDONLY, dir_fd=fd)
        os.close(fd)
        fd = nxt
    os.close(os.open("deep.png", os.O_WRONLY | os.O_CREAT, dir_fd=fd))
    os.close(fd)
