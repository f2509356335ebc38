"""TIM-Net: the temporal-aware bi-directional network of Ye et al. (ICASSP 2023), SPEC.md §3.

Tensors are (B, T, F) at the boundary, as the MFCC features are stored; inside, convolutions
run on (B, C, T). The module never touches files.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .errors import TimnetError

# Keras BatchNormalization defaults, which the authors' weights were trained with:
# moving = 0.99 * moving + 0.01 * batch, and epsilon 1e-3 inside the square root.
BN_MOMENTUM = 0.01
BN_EPS = 1e-3


@dataclass(frozen=True)
class TIMNetConfig:
    """Shape of a TIM-Net; saved inside every checkpoint so a checkpoint alone rebuilds its model."""

    n_features: int = 39  # MFCCs per frame
    n_filters: int = 39  # channels C of every temporal-aware block
    kernel_size: int = 2
    dilations: int = 8  # temporal-aware blocks per direction; block j has dilation 2**j
    dropout: float = 0.1  # spatial dropout: whole channels
    n_classes: int = 7

    def __post_init__(self):
        for name in ("n_features", "n_filters", "kernel_size", "dilations", "n_classes"):
            if getattr(self, name) < 1:
                raise TimnetError(f"model {name} {getattr(self, name)} invalid; expected a positive number")
        if not 0 <= self.dropout < 1:
            raise TimnetError(f"dropout (--dropout) {self.dropout} invalid; expected 0 <= p < 1")


class CausalConv1d(nn.Conv1d):
    """Conv1d that sees only the present and the past: left zero padding of (k-1)*d."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, dilation: int = 1):
        super().__init__(in_channels, out_channels, kernel_size, dilation=dilation)
        self.left_pad = (kernel_size - 1) * dilation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(F.pad(x, (self.left_pad, 0)))


class TemporalAwareBlock(nn.Module):
    """Two dilated causal convs (BN, ReLU, spatial dropout each) whose sigmoid gates the input."""

    def __init__(self, in_channels: int, config: TIMNetConfig, dilation: int):
        super().__init__()
        c = config.n_filters
        self.conv1 = CausalConv1d(in_channels, c, config.kernel_size, dilation)
        self.bn1 = nn.BatchNorm1d(c, eps=BN_EPS, momentum=BN_MOMENTUM)
        self.conv2 = CausalConv1d(c, c, config.kernel_size, dilation)
        self.bn2 = nn.BatchNorm1d(c, eps=BN_EPS, momentum=BN_MOMENTUM)
        self.dropout = nn.Dropout1d(config.dropout)  # on (B, C, T) it zeroes whole channels
        # The authors only project x when its width differs; with n_features == n_filters after
        # the 1x1 input conv this never happens, so their weight files hold no such layer.
        self.skip = nn.Conv1d(in_channels, c, 1) if in_channels != c else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.dropout(F.relu(self.bn1(self.conv1(x))))
        h = self.dropout(F.relu(self.bn2(self.conv2(h))))
        gate = torch.sigmoid(h)  # a multiplicative gate: there is no additive residual
        return (x if self.skip is None else self.skip(x)) * gate


class TIMNet(nn.Module):
    """TIM-Net: logits (B, n_classes) from MFCCs (B, T, F); `return_features` adds the fused (B, C)."""

    def __init__(self, config: TIMNetConfig):
        super().__init__()
        self.config = config
        c = config.n_filters
        self.forward_in = nn.Conv1d(config.n_features, c, 1)
        self.backward_in = nn.Conv1d(config.n_features, c, 1)
        self.forward_blocks = nn.ModuleList(TemporalAwareBlock(c, config, 2**j) for j in range(config.dilations))
        self.backward_blocks = nn.ModuleList(TemporalAwareBlock(c, config, 2**j) for j in range(config.dilations))
        # Dynamic fusion: one free weight per level, no bias, no softmax (the authors' WeightLayer).
        self.fusion = nn.Parameter(torch.empty(config.dilations))
        self.classifier = nn.Linear(c, config.n_classes)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Keras's defaults, so training from scratch starts where the authors' did."""
        for m in self.modules():
            if isinstance(m, (nn.Conv1d, nn.Linear)):
                nn.init.xavier_uniform_(m.weight)  # Glorot uniform; fans match Keras's for (out, in, k)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm1d):
                m.reset_parameters()
        nn.init.uniform_(self.fusion, -0.05, 0.05)

    def fused(self, x: torch.Tensor) -> torch.Tensor:
        """The fused penultimate features (B, C): the input of the classifier, used for t-SNE."""
        x = x.transpose(1, 2)  # (B, F, T)
        fwd = self.forward_in(x)
        bwd = self.backward_in(x.flip(-1))  # the backward stream reads the utterance reversed
        levels = []
        for fblock, bblock in zip(self.forward_blocks, self.backward_blocks):
            fwd, bwd = fblock(fwd), bblock(bwd)
            # Averaging over time makes the time direction of `bwd` irrelevant here.
            levels.append((fwd + bwd).mean(dim=-1))
        return torch.einsum("bnc,n->bc", torch.stack(levels, dim=1), self.fusion)

    def forward(self, x: torch.Tensor, *, return_features: bool = False):
        z = self.fused(x)
        logits = self.classifier(z)
        return (logits, z) if return_features else logits


class TIMNetEnsemble(nn.Module):
    """Several TIM-Nets of one shape (one fold's members, trained alike from other initialisations)
    used as one model: their softmax probabilities are averaged.

    It returns the log of the mean probability as its logits, so that softmax, argmax and the
    cross-entropy of its output are those of the averaged probabilities, and every caller of a
    TIMNet (evaluation, prediction, ONNX export) uses it unchanged. Its fused features are the
    members' fused features side by side (B, members * C): each member has a feature space of
    its own, and a mean of them would mean nothing.
    """

    def __init__(self, members: list[TIMNet]):
        super().__init__()
        if len(members) < 2 or any(m.config != members[0].config for m in members):
            raise TimnetError("an ensemble needs two or more members of the same configuration")
        self.members = nn.ModuleList(members)
        self.config = members[0].config

    def forward(self, x: torch.Tensor, *, return_features: bool = False):
        outs = [m(x, return_features=True) for m in self.members]
        probs = torch.stack([logits.softmax(-1) for logits, _ in outs]).mean(0)
        logits = probs.clamp_min(torch.finfo(probs.dtype).tiny).log()
        return (logits, torch.cat([z for _, z in outs], dim=-1)) if return_features else logits


def ensemble(models: list[TIMNet]) -> TIMNet | TIMNetEnsemble:
    """One model of `models`: the model itself when there is one, else their ensemble (in eval mode)."""
    return models[0] if len(models) == 1 else TIMNetEnsemble(models).eval()


def count_parameters(model: nn.Module) -> int:
    """Trainable parameters (BN running statistics excluded, unlike Keras's count)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def has_nonfinite_weights(model: nn.Module) -> bool:
    """Whether a weight or BN statistic is NaN or infinite: a damaged file, or a training that diverged,
    which would predict one class for every input rather than fail."""
    return any(not torch.isfinite(t).all() for t in model.state_dict().values() if t.is_floating_point())
