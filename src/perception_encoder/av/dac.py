"""The DAC audio encoder and its mean-only bottleneck: a 48 kHz waveform -> 128 features every 40 ms.

The encoder is DAC's (Descript Audio Codec): a 7-tap convolution, then one block per downsampling ratio
(three dilated residual units with Snake activations, then a strided convolution that doubles the
channels), a Snake and a 3-tap convolution. The reference wraps transformers' ``DacEncoder`` and adds a
variational bottleneck of which only the mean is used: a 1x1 convolution whose first ``codebook_dim``
output channels are the features. Only that half is kept here (the log-variance half and the decoder-side
projection are never used by the encoder).

Parameter names follow DAC's (``conv1``, ``block.N.res_unit1.snake1.alpha``, ...), as both released
layouts do.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .configs import DacConfig


class Snake1d(nn.Module):
    """``x + sin(alpha x)^2 / alpha`` per channel (``alpha`` ``(1, C, 1)``; 1e-9 keeps 1/alpha finite)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(1, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + (self.alpha + 1e-9).reciprocal() * torch.sin(self.alpha * x).pow(2)


class ResidualUnit(nn.Module):
    """Snake, dilated 7-tap convolution, Snake, 1x1 convolution, plus the input (lengths are kept)."""

    def __init__(self, channels: int, dilation: int) -> None:
        super().__init__()
        self.snake1 = Snake1d(channels)
        self.conv1 = nn.Conv1d(channels, channels, kernel_size=7, dilation=dilation, padding=3 * dilation)
        self.snake2 = Snake1d(channels)
        self.conv2 = nn.Conv1d(channels, channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(self.snake2(self.conv1(self.snake1(x))))


class EncoderBlock(nn.Module):
    """Three residual units (dilations 1, 3, 9) at ``channels // 2``, Snake, then a strided convolution
    (kernel ``2 * stride``) to ``channels``: the time axis shrinks by ``stride``."""

    def __init__(self, channels: int, stride: int) -> None:
        super().__init__()
        half = channels // 2
        self.res_unit1 = ResidualUnit(half, 1)
        self.res_unit2 = ResidualUnit(half, 3)
        self.res_unit3 = ResidualUnit(half, 9)
        self.snake1 = Snake1d(half)
        self.conv1 = nn.Conv1d(
            half, channels, kernel_size=2 * stride, stride=stride, padding=math.ceil(stride / 2)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv1(self.snake1(self.res_unit3(self.res_unit2(self.res_unit1(x)))))


class DacEncoder(nn.Module):
    """waveform ``(B, 1, L)`` with ``L`` a multiple of the hop -> ``(B, hidden_size, L / hop)``."""

    def __init__(self, config: DacConfig) -> None:
        super().__init__()
        width = config.encoder_hidden_size
        self.conv1 = nn.Conv1d(1, width, kernel_size=7, padding=3)
        self.block = nn.ModuleList(
            EncoderBlock(width * 2 ** (i + 1), stride) for i, stride in enumerate(config.downsampling_ratios)
        )
        top = width * 2 ** len(config.downsampling_ratios)
        self.snake1 = Snake1d(top)
        self.conv2 = nn.Conv1d(top, config.hidden_size, kernel_size=3, padding=1)

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        x = self.conv1(waveform)
        for block in self.block:
            x = block(x)
        return self.conv2(self.snake1(x))


def reflect_pad(waveform: torch.Tensor, hop: int) -> torch.Tensor:
    """``(..., L)`` -> ``(..., L')`` with ``L'`` the next multiple of ``hop``, the end padded by reflection
    (the reference pads so). A waveform shorter than the padding is reflected as often as needed (where
    the reference's single reflection would fail); one sample is repeated."""
    missing = -waveform.shape[-1] % hop
    if missing == 0:
        return waveform
    if waveform.shape[-1] == 0:
        raise ValueError("cannot pad an empty waveform (0 samples)")
    shape = waveform.shape
    x = waveform.reshape(-1, 1, shape[-1])
    while missing:
        step = min(missing, x.shape[-1] - 1)
        if step == 0:  # a single sample: nothing to reflect
            x = F.pad(x, (0, missing), mode="replicate")
            break
        x = F.pad(x, (0, step), mode="reflect")
        missing -= step
    return x.reshape(*shape[:-1], x.shape[-1])


class Codec(nn.Module):
    """The codec side of the audio encoder: waveform -> ``(B, T, codebook_dim)`` features, one per hop.

    ``waveform``: ``(B, L)`` or ``(B, 1, L)`` at the config's sampling rate (48 kHz), reflect-padded to a
    multiple of the hop first. The reference computes this without gradients (the codec is frozen); so is
    it here.
    """

    def __init__(self, config: DacConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = DacEncoder(config)
        self.bottleneck = nn.Conv1d(config.hidden_size, config.codebook_dim, kernel_size=1)

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        if waveform.ndim == 2:
            waveform = waveform[:, None]
        if waveform.ndim != 3 or waveform.shape[1] != 1:
            raise ValueError(f"waveform must be (B, L) or (B, 1, L) mono audio, got {tuple(waveform.shape)}")
        x = reflect_pad(waveform.to(self.bottleneck.weight.dtype), self.config.hop_length)
        # as the reference: no gradients, and cuDNN off for these long 1-D convolutions
        with torch.no_grad(), torch.backends.cudnn.flags(enabled=False):
            return self.bottleneck(self.encoder(x)).transpose(1, 2)
