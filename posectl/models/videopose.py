"""Temporal dilated-convolution lifting model (VideoPose3D, Pavllo et al., CVPR 2019)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class _TemporalBase(nn.Module):
    """Shared layers and parameter layout for the temporal models.

    Both subclasses register identical parameter names and shapes, so a state dict
    trained with one can be loaded into the other.
    """

    def __init__(
        self,
        num_joints_in: int,
        num_joints_out: int,
        filter_widths: Sequence[int],
        channels: int,
        dropout: float,
        causal: bool,
        in_features: int,
    ) -> None:
        super().__init__()
        widths = tuple(int(w) for w in filter_widths)
        if not widths or any(w < 1 or w % 2 == 0 for w in widths):
            raise ValueError(f"filter widths must be odd positive integers, got {filter_widths}")
        self.num_joints_in = num_joints_in
        self.num_joints_out = num_joints_out
        self.in_features = in_features
        self.filter_widths = widths
        self.causal = causal
        # Dilation of each block = product of all preceding widths.
        self.dilations = [1]
        for w in widths[:-1]:
            self.dilations.append(self.dilations[-1] * w)
        self.receptive_field = 1 + sum((w - 1) * d for w, d in zip(widths, self.dilations))

        self.drop = nn.Dropout(dropout)
        self.relu = nn.ReLU(inplace=True)
        self.expand_bn = nn.BatchNorm1d(channels, momentum=0.1)
        self.layers_conv = nn.ModuleList()
        self.layers_bn = nn.ModuleList()
        self.shrink = nn.Conv1d(channels, num_joints_out * 3, 1)

    def set_bn_momentum(self, momentum: float) -> None:
        """Set the momentum of every BatchNorm layer (VideoPose3D decays it over training)."""
        for m in self.modules():
            if isinstance(m, nn.BatchNorm1d):
                m.momentum = momentum

    def _residual(self, x: torch.Tensor, i: int) -> torch.Tensor:
        x = self.drop(self.relu(self.layers_bn[2 * i](_conv(self.layers_conv[2 * i], x))))
        return self.drop(self.relu(self.layers_bn[2 * i + 1](_conv(self.layers_conv[2 * i + 1], x))))

    def _crop_residual(self, x: torch.Tensor, i: int) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, J_in, C) -> (B, T_out, J_out, 3)."""
        if x.dim() != 4 or x.shape[2:] != (self.num_joints_in, self.in_features):
            raise ValueError(
                f"expected (B, T, {self.num_joints_in}, {self.in_features}) input, got {tuple(x.shape)}"
            )
        if x.shape[1] < self.receptive_field:
            raise ValueError(f"need at least {self.receptive_field} frames, got {x.shape[1]}")
        b = x.shape[0]
        x = x.flatten(2).transpose(1, 2)  # (B, J*C, T)
        x = self.drop(self.relu(self.expand_bn(_conv(self.expand_conv, x))))
        for i in range(len(self.filter_widths) - 1):
            x = self._crop_residual(x, i) + self._residual(x, i)
        x = _conv(self.shrink, x)  # (B, J_out*3, T_out)
        return x.transpose(1, 2).reshape(b, -1, self.num_joints_out, 3)


def _conv(conv: nn.Conv1d, x: torch.Tensor) -> torch.Tensor:
    """conv(x), as one matrix product when the windows do not overlap (kernel 1, or stride = kernel, as
    in the strided single-frame model): the same result, about 2.5x faster than Conv1d on a CPU."""
    k = conv.kernel_size[0]
    if conv.padding != (0,) or conv.dilation != (1,) or conv.stride[0] != k or x.shape[-1] % k:
        return conv(x)
    B, C, L = x.shape
    cols = x.view(B, C, L // k, k).permute(0, 2, 1, 3).reshape(B, L // k, C * k)
    y = nn.functional.linear(cols, conv.weight.reshape(conv.out_channels, C * k), conv.bias)
    return y.transpose(1, 2)


class TemporalModel(_TemporalBase):
    """Dilated temporal convolutions over a 2D keypoint sequence.

    Output frame t depends on input frames [t, t + receptive_field); it is aligned with the
    centre frame of that window, or with its last frame when ``causal``. With ``dense`` the
    dilated convolutions are replaced by dense ones covering the same span.
    """

    def __init__(
        self,
        num_joints_in: int,
        num_joints_out: int,
        filter_widths: Sequence[int] = (3, 3, 3),
        channels: int = 1024,
        dropout: float = 0.25,
        causal: bool = False,
        dense: bool = False,
        in_features: int = 2,
    ) -> None:
        super().__init__(num_joints_in, num_joints_out, filter_widths, channels, dropout, causal, in_features)
        self.dense = dense
        w = self.filter_widths
        self.expand_conv = nn.Conv1d(num_joints_in * in_features, channels, w[0], bias=False)
        for width, dil in zip(w[1:], self.dilations[1:]):
            span = (width - 1) * dil + 1
            if dense:
                self.layers_conv.append(nn.Conv1d(channels, channels, span, bias=False))
            else:
                self.layers_conv.append(nn.Conv1d(channels, channels, width, dilation=dil, bias=False))
            self.layers_bn.append(nn.BatchNorm1d(channels, momentum=0.1))
            self.layers_conv.append(nn.Conv1d(channels, channels, 1, bias=False))
            self.layers_bn.append(nn.BatchNorm1d(channels, momentum=0.1))

    def _crop_residual(self, x: torch.Tensor, i: int) -> torch.Tensor:
        trim = (self.filter_widths[i + 1] - 1) * self.dilations[i + 1]
        if self.causal:
            return x[:, :, trim:]
        return x[:, :, trim // 2 : x.shape[2] - trim // 2]


class TemporalModelOptimized1f(_TemporalBase):
    """Strided equivalent of :class:`TemporalModel` for single-frame training.

    Input (B, receptive_field, J_in, C) -> (B, 1, J_out, 3). Parameters have the same names and
    shapes as a non-dense :class:`TemporalModel`, so state dicts transfer both ways.
    """

    def __init__(
        self,
        num_joints_in: int,
        num_joints_out: int,
        filter_widths: Sequence[int] = (3, 3, 3),
        channels: int = 1024,
        dropout: float = 0.25,
        causal: bool = False,
        in_features: int = 2,
    ) -> None:
        super().__init__(num_joints_in, num_joints_out, filter_widths, channels, dropout, causal, in_features)
        w = self.filter_widths
        self.expand_conv = nn.Conv1d(num_joints_in * in_features, channels, w[0], stride=w[0], bias=False)
        for width in w[1:]:
            self.layers_conv.append(nn.Conv1d(channels, channels, width, stride=width, bias=False))
            self.layers_bn.append(nn.BatchNorm1d(channels, momentum=0.1))
            self.layers_conv.append(nn.Conv1d(channels, channels, 1, bias=False))
            self.layers_bn.append(nn.BatchNorm1d(channels, momentum=0.1))

    def _crop_residual(self, x: torch.Tensor, i: int) -> torch.Tensor:
        w = self.filter_widths[i + 1]
        start = w - 1 if self.causal else w // 2
        return x[:, :, start::w]
