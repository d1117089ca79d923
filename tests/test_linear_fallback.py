"""oneDNN's private ops are probed before use and dropped when they fail: an op missing, raising or giving
wrong results at the probe is never used, and one failing at run time sends the process to the F.linear
path with one warning. A fake ``torch.ops.mkldnn`` computing the F.linear form stands in for the real ops,
so these tests run on every machine."""

from __future__ import annotations

import subprocess
import sys
import types
import warnings

import pytest
import torch
import torch.nn.functional as F

from perception_encoder.layers import linear as linear_mod
from perception_encoder.layers.linear import linear, onednn_linear_enabled

ALL = linear_mod._Support(fused=True, binary=True, packing=True, bf16=True, fp16=True)


def _pointwise(x, w, b, attr, scalars, algorithm):
    y = F.linear(x, w, b)
    return F.gelu(y) if attr == "gelu" else y


IMPLS = {
    "_linear_pointwise": _pointwise,
    "_linear_pointwise.binary": lambda x, other, w, b, attr: other + F.linear(x, w, b),
    "_reorder_linear_weight": lambda w, rows: w.clone(),
    "_is_mkldnn_bf16_supported": lambda: True,
    "_is_mkldnn_fp16_supported": lambda: True,
}


class FakeMkldnn:
    """Stands in for ``torch.ops.mkldnn``. Ops named in ``missing`` are absent (AttributeError at lookup),
    those in ``raising`` raise that error when called, those in ``wrong`` return a result off by one; a test
    changes them after the probe to break an op at run time. ``calls`` lists the ops called."""

    def __init__(self) -> None:
        self.missing: set[str] = set()
        self.raising: dict[str, Exception] = {}
        self.wrong: set[str] = set()
        self.calls: list[str] = []

    def __getattr__(self, name: str) -> FakeOp:
        return FakeOp(self, name)


class FakeOp:
    def __init__(self, fake: FakeMkldnn, name: str) -> None:
        if name in fake.missing or name not in IMPLS:
            raise AttributeError(f"no op {name}")
        self.fake, self.name = fake, name

    def __getattr__(self, overload: str) -> FakeOp:  # _linear_pointwise.binary
        return FakeOp(self.fake, f"{self.name}.{overload}")

    def __call__(self, *args):
        self.fake.calls.append(self.name)
        if self.name in self.fake.raising:
            raise self.fake.raising[self.name]
        out = IMPLS[self.name](*args)
        return out + 1 if self.name in self.fake.wrong else out


@pytest.fixture
def fake(monkeypatch):
    """The fake ops in place of the real ones, probed afresh at first use, every weight packed; the module's
    switches, probe result and packed copies are restored afterwards."""
    ops = FakeMkldnn()
    monkeypatch.setattr(linear_mod, "_mkldnn", lambda: ops)
    monkeypatch.setattr(linear_mod, "_SUPPORT", None)
    monkeypatch.setattr(linear_mod, "_ENABLED", True)
    monkeypatch.setattr(linear_mod, "_PACK", "all")
    linear_mod.clear_packed_weights()
    yield ops
    linear_mod.clear_packed_weights()


def _layers(dtype=torch.float32):
    """``(x, up weight, up bias, down weight, residual)`` of an MLP."""
    g = torch.Generator().manual_seed(0)
    shapes = ((2, 5, 16), (24, 16), (24,), (16, 24), (2, 5, 16))
    return [torch.randn(s, generator=g).to(dtype) for s in shapes]


def _mlp(x, w, b, w2, r):
    """The three forms: plain, GELU, residual add."""
    with torch.inference_mode():
        h = linear(x, w, b, gelu=True)
        return linear(x, w, b), h, linear(h, w2, None, residual=r)


def _plain_mlp(x, w, b, w2, r):
    h = F.gelu(F.linear(x, w, b))
    return F.linear(x, w, b), h, r + F.linear(h, w2)


def _assert_plain_results(dtype=torch.float32) -> list[torch.Tensor]:
    """``linear`` gives the plain path's results; returns the layers (packed copies die with them)."""
    layers = _layers(dtype)
    for got, want in zip(_mlp(*layers), _plain_mlp(*layers), strict=True):
        assert torch.equal(got, want)
    return layers


def test_the_probe_waits_for_the_first_use():
    code = "import perception_encoder, perception_encoder.layers.linear as m; assert m._SUPPORT is None"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_switched_off_the_ops_are_never_touched(fake, monkeypatch):
    monkeypatch.setattr(linear_mod, "_ENABLED", False)
    _assert_plain_results()
    assert linear_mod._SUPPORT is None and fake.calls == []


def test_every_op_that_passes_its_probe_is_used(fake):
    assert linear_mod._supported() == ALL
    fake.calls.clear()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _, w, _, w2, _ = _assert_plain_results()  # the fake ops compute the F.linear form exactly
    assert set(fake.calls) == {"_linear_pointwise", "_linear_pointwise.binary", "_reorder_linear_weight"}
    assert linear_mod.packed_weight_bytes() == (w.numel() + w2.numel()) * w.element_size()


@pytest.mark.parametrize(
    "how, name, support",
    [
        ("missing", "_linear_pointwise", linear_mod._NONE),
        ("raising", "_linear_pointwise", linear_mod._NONE),
        ("wrong", "_linear_pointwise", linear_mod._NONE),
        ("missing", "_linear_pointwise.binary", ALL._replace(binary=False)),
        ("wrong", "_linear_pointwise.binary", ALL._replace(binary=False)),
        ("missing", "_reorder_linear_weight", ALL._replace(packing=False)),
        ("raising", "_reorder_linear_weight", ALL._replace(packing=False)),
        ("wrong", "_reorder_linear_weight", ALL._replace(packing=False)),
        ("missing", "_is_mkldnn_bf16_supported", ALL._replace(bf16=False)),
        ("missing", "_is_mkldnn_fp16_supported", ALL._replace(fp16=False)),
    ],
)
def test_an_op_that_fails_its_probe_is_left_out(fake, how, name, support):
    if how == "missing":
        fake.missing.add(name)
    elif how == "raising":
        fake.raising[name] = RuntimeError("changed in this release")
    else:
        fake.wrong.add(name)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # silently
        assert linear_mod._supported() == support
        assert onednn_linear_enabled() == support.fused
        assert linear_mod.weight_packing_mode() == ("all" if support.packing else "off")
        for dtype in (torch.float32, torch.bfloat16, torch.float16):
            fake.calls.clear()
            layers = _assert_plain_results(dtype)
            assert (linear_mod.packed_weight_bytes() > 0) == (support.packing and fake.calls != [])
            half = {torch.bfloat16: support.bf16, torch.float16: support.fp16}
            if not support.fused or not half.get(dtype, True):
                assert fake.calls == []
            else:  # what passed is still used, and only that
                want = {"_linear_pointwise", "_linear_pointwise.binary", "_reorder_linear_weight"}
                want -= {"_linear_pointwise.binary"} if not support.binary else set()
                want -= {"_reorder_linear_weight"} if not support.packing else set()
                assert set(fake.calls) == want
            del layers  # and with them their packed copies


@pytest.mark.parametrize(
    "name, error",
    [
        ("_linear_pointwise", RuntimeError("could not create a primitive")),
        ("_linear_pointwise", AttributeError("_linear_pointwise")),  # gone at lookup
        ("_linear_pointwise.binary", NotImplementedError("no binary post-op")),
        ("_reorder_linear_weight", RuntimeError("could not reorder")),
    ],
)
def test_an_op_failing_at_run_time_sends_the_process_to_the_plain_path(fake, name, error):
    assert linear_mod._supported() == ALL
    if isinstance(error, AttributeError):
        fake.missing.add(name)
    else:
        fake.raising[name] = error
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        layers = _assert_plain_results()  # the failing call returns the plain result too
    assert len(caught) == 1, [str(w.message) for w in caught]
    warning = caught[0]
    assert warning.category is RuntimeWarning
    assert str(error) in str(warning.message) and "PE_ONEDNN_LINEAR=0" in str(warning.message)
    assert "plain F.linear path from now on" in str(warning.message)
    assert warning.filename == __file__  # points at the caller of linear()
    assert not onednn_linear_enabled() and linear_mod.weight_packing_mode() == "off"
    assert linear_mod.packed_weight_bytes() == 0  # copies made before the failure are freed
    del layers

    fake.missing.clear()
    fake.raising.clear()  # even working again, the ops stay unused: no flip-flopping between paths
    fake.calls.clear()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for dtype in (torch.float32, torch.bfloat16):
            _assert_plain_results(dtype)
    assert fake.calls == []


def _bad_input(*args):
    raise ValueError("bad input")


def test_a_users_error_is_not_blamed_on_onednn(fake, monkeypatch):
    x, w, b, *_ = _layers()
    assert linear_mod._supported() == ALL
    fake.calls.clear()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with torch.inference_mode():
            with pytest.raises(RuntimeError, match="cannot be multiplied"):
                linear(x, w[:, :12].contiguous(), b)
            # a bias F.linear broadcasts (oneDNN would reject it) takes the plain path
            assert torch.equal(linear(x, w, b[:1]), F.linear(x, w, b[:1]))
        assert fake.calls == []
        # where the oneDNN op fails and F.linear fails too, the input is wrong: F.linear's error comes out
        fake.raising["_linear_pointwise"] = RuntimeError("could not create a primitive")
        monkeypatch.setattr(linear_mod, "F", types.SimpleNamespace(linear=_bad_input))
        with torch.inference_mode(), pytest.raises(ValueError, match="bad input"):
            linear(x, w, b)
    assert fake.calls == ["_reorder_linear_weight", "_linear_pointwise"]
    assert onednn_linear_enabled()


@pytest.mark.skipif(
    not (linear_mod._X86 and torch.backends.mkldnn.is_available()), reason="oneDNN's linear is not used here"
)
def test_the_real_ops_pass_their_probe():
    bf16 = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    assert linear_mod._probe() == ALL._replace(bf16=bf16)
