"""LAMB against its formula, parameter groups, and the warm-up + cosine schedule."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from torch import nn

from perception_encoder.train.config import OptimConfig
from perception_encoder.train.optim import Lamb, build_optimizer, build_scheduler, lr_factor, no_decay


def _lamb_reference(p0, grads, lr, b1, b2, eps, wd, max_trust=None):
    """The LAMB update written out in numpy (float64), one tensor."""
    p = p0.astype(np.float64).copy()
    m = np.zeros_like(p)
    v = np.zeros_like(p)
    for t, g in enumerate(grads, start=1):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        u = (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + eps) + wd * p
        w_norm, u_norm = np.linalg.norm(p), np.linalg.norm(u)
        trust = w_norm / u_norm if w_norm > 0 and u_norm > 0 else 1.0
        if max_trust is not None:
            trust = min(trust, max_trust)
        p = p - lr * trust * u
    return p


@pytest.mark.parametrize("wd,max_trust", [(0.0, None), (0.1, None), (0.1, 0.5)])
def test_lamb_matches_formula(wd, max_trust):
    rng = np.random.default_rng(0)
    p0 = rng.normal(size=(4, 3))
    grads = [rng.normal(size=(4, 3)) for _ in range(5)]
    param = nn.Parameter(torch.tensor(p0, dtype=torch.float64))
    opt = Lamb([param], lr=0.01, betas=(0.9, 0.99), eps=1e-6, weight_decay=wd, max_trust=max_trust)
    for g in grads:
        param.grad = torch.tensor(g, dtype=torch.float64)
        opt.step()
    expected = _lamb_reference(p0, grads, 0.01, 0.9, 0.99, 1e-6, wd, max_trust)
    np.testing.assert_allclose(param.detach().numpy(), expected, rtol=1e-10, atol=1e-12)
    # the trust ratio matters: an Adam step of the same lr moves the weights by a different amount
    assert not np.allclose(expected, p0 - 0.01 * 5 * np.sign(grads[0]), atol=1e-3)


def test_lamb_zero_weight_takes_adam_step():
    param = nn.Parameter(torch.zeros(3))
    opt = Lamb([param], lr=0.1, betas=(0.9, 0.999), eps=1e-8)
    param.grad = torch.tensor([1.0, -2.0, 0.5])
    opt.step()
    # ||p|| = 0 -> trust 1; first bias-corrected Adam step is sign(g)
    torch.testing.assert_close(param.detach(), torch.tensor([-0.1, 0.1, -0.1]), rtol=1e-5, atol=1e-6)


def test_lamb_step_norm_is_lr_times_weight_norm():
    torch.manual_seed(0)
    param = nn.Parameter(torch.randn(10, 10))
    before = param.detach().clone()
    opt = Lamb([param], lr=1e-2, weight_decay=0.0)
    param.grad = torch.randn(10, 10)
    opt.step()
    ratio = (param.detach() - before).norm() / before.norm()
    assert abs(float(ratio) - 1e-2) < 1e-6


def test_lamb_state_dict_round_trip_continues_identically():
    torch.manual_seed(0)
    a = nn.Parameter(torch.randn(5))
    b = nn.Parameter(a.detach().clone())
    opt_a = Lamb([a], lr=0.05, weight_decay=0.01)
    grads = [torch.randn(5) for _ in range(4)]
    for g in grads[:2]:
        a.grad = g.clone()
        opt_a.step()
    b.data.copy_(a.detach())
    opt_b = Lamb([b], lr=0.05, weight_decay=0.01)
    opt_b.load_state_dict(copy.deepcopy(opt_a.state_dict()))  # as after torch.save / torch.load
    for g in grads[2:]:
        a.grad, b.grad = g.clone(), g.clone()
        opt_a.step()
        opt_b.step()
    assert torch.equal(a, b)


def test_lamb_rejects_bad_arguments():
    p = [nn.Parameter(torch.zeros(1))]
    with pytest.raises(ValueError, match="lr"):
        Lamb(p, lr=-1)
    with pytest.raises(ValueError, match="betas"):
        Lamb(p, betas=(1.0, 0.9))


def test_param_groups_exclude_norms_biases_embeddings(tiny_clip):
    opt = build_optimizer(tiny_clip, OptimConfig(weight_decay=0.1))
    assert isinstance(opt, Lamb)
    names = {id(p): n for n, p in tiny_clip.named_parameters()}
    decayed = {names[id(p)] for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    plain = {names[id(p)] for g in opt.param_groups if g["weight_decay"] == 0 for p in g["params"]}
    assert "logit_scale" in plain and "text.token_embedding.weight" in plain
    assert "visual.transformer.resblocks.0.ln_1.weight" in plain
    assert "visual.transformer.resblocks.0.attn.in_proj_weight" in decayed
    assert not decayed & plain
    assert len(decayed) + len(plain) == len(list(tiny_clip.parameters()))
    assert no_decay("x.bias", nn.Parameter(torch.zeros(3)))
    adamw = build_optimizer(tiny_clip, OptimConfig(name="adamw"))
    assert isinstance(adamw, torch.optim.AdamW)


def test_schedule_warmup_then_cosine():
    assert lr_factor(0, 100, 10, "cosine", 0.0) == pytest.approx(0.1)
    assert lr_factor(9, 100, 10, "cosine", 0.0) == pytest.approx(1.0)
    assert lr_factor(10, 100, 10, "cosine", 0.0) == pytest.approx(1.0)
    assert lr_factor(55, 100, 10, "cosine", 0.0) == pytest.approx(0.5)
    assert lr_factor(100, 100, 10, "cosine", 0.1) == pytest.approx(0.1)
    assert lr_factor(99, 100, 10, "cosine", 0.1) > 0.1
    assert lr_factor(50, 100, 0, "constant", 0.0) == 1.0
    # monotone after warm-up
    values = [lr_factor(s, 100, 10, "cosine", 0.0) for s in range(10, 100)]
    assert all(a >= b for a, b in zip(values, values[1:], strict=False))
    param = nn.Parameter(torch.zeros(1))
    opt = Lamb([param], lr=2.0)
    sched = build_scheduler(opt, OptimConfig(lr=2.0, warmup_steps=4), total_steps=20)
    seen = []
    for _ in range(6):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen[:4] == pytest.approx([0.5, 1.0, 1.5, 2.0])
    assert seen[5] == pytest.approx(2.0 * 0.5 * (1 + math.cos(math.pi * 1 / 16)))
