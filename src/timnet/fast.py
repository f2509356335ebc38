"""The fast path: the same network and parameters as `model.TIMNet`, computed another way.

What makes it fast on a CPU, none of which changes the mathematics:
- Channels-last activations (B, T, C), so each causal k=2 convolution is two products with a
  (C, C) matrix per frame, x(t) Wr + x(t-d) Wl, the second skipped where t < d (zero padding).
- Channels padded from 39 to 40 inside: vector units work on 8 floats, and 40 columns run about
  1.5x faster than 39. The extra channel has zero weights and stays exactly zero; parameters and
  gradients keep their shapes, so checkpoints, import and export never see the padding.
- A hand-written backward for the whole trunk (input convs, blocks, level means), with batch
  norm, ReLU, spatial dropout and the sigmoid gate fused into a few passes over memory.
- Per block only the input and the two conv outputs are kept for the backward. The normalised
  first output is computed one utterance at a time inside the second conv (and again inside its
  weight gradient), and the gate inside its backward pass, by the same expressions, so the
  values are the very same and two of the five tensors a block used to keep are never stored.
- The two streams (forward and time-reversed) are independent until their level means, so with
  two or more threads they run at the same time.

The arithmetic runs in `kernels.c` (see native.py) when it can be built, else in PyTorch
operations implementing the very same steps (`TorchOps`: float64, CUDA and any CPU). Dropout
masks are drawn in the reference's order and shapes, so with the same seed both paths see the
same masks; tests/test_fast.py checks logits, gradients, BN statistics and optimiser steps
against `model.TIMNet`.
"""
from __future__ import annotations

import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from . import native
from .model import BN_EPS, BN_MOMENTUM, TIMNet

LANES = 8


def padded(c: int) -> int:
    """Channels after padding to a multiple of 8."""
    return -(-c // LANES) * LANES


# -- the primitive steps, in two implementations ---------------------------------------------------
# All activations are (B, T, C) contiguous; per-(utterance, channel) arrays are (B, C); sums are
# float64 vectors of length C.

class TorchOps:
    """The fast path's steps as PyTorch operations: any device, any float dtype."""

    name = "torch"

    @staticmethod
    def conv(x, ws, wr, bias, shift, *, kin=None, out=None, stats=False, norm=None):
        """out (+)= [bias] + x(t) wr + x(t - shift) ws where 0 <= t - shift < T; optional column sums.

        `kin`: x's channels from kin on are zero padding (the native kernels skip them).
        `norm`: (mean, scale, shift) to read relu((x - mean) * scale[b] + shift[b]) instead of x."""
        if norm is not None:
            x = TorchOps.bn_relu(x, *norm)
        t = x.shape[1]
        y = x @ wr
        if bias is not None:
            y += bias
        d = abs(shift)
        if d < t:
            if shift > 0:
                y[:, d:] += x[:, : t - d] @ ws
            else:
                y[:, : t - d] += x[:, d:] @ ws
        if out is not None:
            out += y
            y = out
        if not stats:
            return y, None, None
        yd = y.double()
        return y, yd.sum((0, 1)), (yd * yd).sum((0, 1))

    @staticmethod
    def wgrad(x, g, shift, *, kin=None, norm=None):
        """(sum of x(t - shift)^T g(t) over valid rows, sum of x(t)^T g(t)): (C_in, C_out) each.
        `norm` as in conv."""
        if norm is not None:
            x = TorchOps.bn_relu(x, *norm)
        c, t = x.shape[2], x.shape[1]
        dwr = x.reshape(-1, c).t() @ g.reshape(-1, c)
        d = abs(shift)
        if d >= t:
            return torch.zeros_like(dwr), dwr
        xs, gs = (x[:, : t - d], g[:, d:]) if shift > 0 else (x[:, d:], g[:, : t - d])
        return xs.reshape(-1, c).t() @ gs.reshape(-1, c), dwr

    @staticmethod
    def bn_relu(a, mean, scale, shift):
        return torch.relu((a - mean) * scale[:, None] + shift[:, None])

    @staticmethod
    def gate_fwd(x, a, mean, scale, shift):
        """(x * sigmoid(bn_relu(a)), its sum over time)."""
        y = x * torch.sigmoid(TorchOps.bn_relu(a, mean, scale, shift))
        return y, y.sum(1)

    @staticmethod
    def gate_bwd(dy, dlevel, x, a, mean, scale, shift, mscale):
        dyt = dlevel[:, None] if dy is None else dy + dlevel[:, None]
        dev = a - mean
        pre = dev * scale[:, None] + shift[:, None]
        s = torch.sigmoid(torch.relu(pre))
        g = dyt * x * s * (1 - s) * mscale[:, None] * (pre > 0)
        return dyt * s, g, g.double().sum((0, 1)), (g.double() * dev.double()).sum((0, 1))

    @staticmethod
    def relu_bwd(dh, a, mean, scale, shift, mscale):
        dev = a - mean
        g = dh * mscale[:, None] * (dev * scale[:, None] + shift[:, None] > 0)
        return g, g.double().sum((0, 1)), (g.double() * dev.double()).sum((0, 1))

    @staticmethod
    def bn_bwd(g, a, mean, k, ca, c0):
        da = g * k + (a - mean) * ca + c0
        return da, da.double().sum((0, 1))


def _ptr(t: torch.Tensor | None):
    return None if t is None else t.data_ptr()


def _norm_args(norm, t: int, c: int) -> tuple:
    """(mean, scale, shift, per-utterance scratch) of an input normalisation, or four Nones. The
    caller holds the tuple until the kernel returns: the scratch lives only as long as it."""
    return (None,) * 4 if norm is None else (*norm, torch.empty(t, c))


class NativeOps:
    """The same steps in kernels.c: float32, CPU, contiguous tensors."""

    name = "native"

    def __init__(self, lib):
        self.lib = lib

    def conv(self, x, ws, wr, bias, shift, *, kin=None, out=None, stats=False, norm=None):
        b, t, c = x.shape
        acc = out is not None
        y = out if acc else torch.empty_like(x)
        s = torch.zeros(c, dtype=torch.float64) if stats else None
        q = torch.zeros(c, dtype=torch.float64) if stats else None
        n = _norm_args(norm, t, c)
        self.lib.conv(_ptr(x), _ptr(ws), _ptr(wr), _ptr(bias), _ptr(y), b, t, c, kin or c, shift, int(acc),
                      _ptr(s), _ptr(q), *map(_ptr, n))
        return y, s, q

    def wgrad(self, x, g, shift, *, kin=None, norm=None):
        b, t, c = x.shape
        dws, dwr = torch.empty(c, c), torch.empty(c, c)
        n = _norm_args(norm, t, c)
        self.lib.wgrad(_ptr(x), _ptr(g), _ptr(dws), _ptr(dwr), b, t, c, kin or c, shift, *map(_ptr, n))
        return dws, dwr

    def gate_fwd(self, x, a, mean, scale, shift):
        y = torch.empty_like(x)
        level = torch.empty(x.shape[0], x.shape[2])
        self.lib.gate_fwd(_ptr(x), _ptr(a), _ptr(mean), _ptr(scale), _ptr(shift), _ptr(y), _ptr(level), *x.shape)
        return y, level

    def gate_bwd(self, dy, dlevel, x, a, mean, scale, shift, mscale):
        c = x.shape[2]
        dx = torch.empty_like(x)
        g = torch.empty_like(x) if dy is None else dy  # each element of dy is read before g overwrites it
        sg, sga = torch.zeros(c, dtype=torch.float64), torch.zeros(c, dtype=torch.float64)
        self.lib.gate_bwd(_ptr(dy), _ptr(dlevel), _ptr(x), _ptr(g), _ptr(a), _ptr(mean), _ptr(scale), _ptr(shift),
                          _ptr(mscale), _ptr(dx), _ptr(sg), _ptr(sga), *x.shape)
        return dx, g, sg, sga

    def relu_bwd(self, dh, a, mean, scale, shift, mscale):
        c = a.shape[2]
        sg, sga = torch.zeros(c, dtype=torch.float64), torch.zeros(c, dtype=torch.float64)
        self.lib.relu_bwd(_ptr(dh), _ptr(a), _ptr(mean), _ptr(scale), _ptr(shift), _ptr(mscale), _ptr(dh), _ptr(sg),
                          _ptr(sga), *a.shape)
        return dh, sg, sga

    def bn_bwd(self, g, a, mean, k, ca, c0):
        s = torch.zeros(a.shape[2], dtype=torch.float64)
        self.lib.bn_bwd(_ptr(g), _ptr(a), _ptr(mean), _ptr(k), _ptr(ca), _ptr(c0), _ptr(s), *a.shape)
        return g, s


def ops_for(x: torch.Tensor, channels: int):
    """The native kernels where they apply (float32 on a CPU, C <= 128), else PyTorch operations."""
    if x.device.type == "cpu" and x.dtype == torch.float32 and channels <= native.MAX_CHANNELS:
        ops = checked_native_ops()
        if ops is not None:
            return ops
    return TorchOps()


_CHECKED: dict = {}


def checked_native_ops() -> NativeOps | None:
    """The native kernels, once each step has matched its PyTorch twin on a small problem in this
    process (a miscompiled library must never train); None where they cannot run."""
    if "ops" not in _CHECKED:
        lib = native.load()
        ops = NativeOps(lib) if lib is not None else None
        if ops is not None and (problem := _disagreement(ops, TorchOps())):
            warnings.warn(f"timnet: native kernels disagree with PyTorch ({problem}); the fast path uses PyTorch "
                          "operations", RuntimeWarning, stacklevel=2)
            ops = None
        _CHECKED["ops"] = ops
    return _CHECKED["ops"]


def _disagreement(a, b) -> str | None:
    """The first step on which two implementations differ, on the paper's 40 channels, or None."""
    g = torch.Generator().manual_seed(0)

    def r(*shape):
        return torch.randn(*shape, generator=g)

    bsz, t, c, d = 2, 9, 40, 3
    x, ws, wr, bias, dy, a2 = r(bsz, t, c), r(c, c), r(c, c), r(c), r(bsz, t, c), r(bsz, t, c)
    x[..., 39:] = 0
    mean, scale, shift, mscale, dlev = r(c), r(bsz, c), r(bsz, c), (r(bsz, c) > 0).float(), r(bsz, c)
    norm = (mean, scale, shift)
    checks = {
        "conv": lambda o: o.conv(x, ws, wr, bias, d, kin=39, stats=True),
        "conv of a normalised input": lambda o: o.conv(a2, ws, wr, bias, d, stats=True, norm=norm),
        "conv input gradient": lambda o: o.conv(x, ws, wr, None, -d, kin=39, out=dy.clone()),
        "weight gradient": lambda o: o.wgrad(x, dy, d, kin=39),
        "weight gradient of a normalised input": lambda o: o.wgrad(a2, dy, d, norm=norm),
        "gate": lambda o: o.gate_fwd(x, a2, mean, scale, shift),
        "gate backward": lambda o: o.gate_bwd(dy.clone(), dlev, x, a2, mean, scale, shift, mscale),
        "ReLU backward": lambda o: o.relu_bwd(dy.clone(), a2, mean, scale, shift, mscale),
        "batch norm backward": lambda o: o.bn_bwd(dy.clone(), a2, mean, wr[0], wr[1], wr[2]),
    }
    for name, step in checks.items():
        for u, v in zip(step(a), step(b)):
            if u is not None and not torch.allclose(u.double(), v.double(), rtol=1e-4, atol=1e-3):
                return name
    return None


# -- parameters in the fast layout --------------------------------------------------------------------

def _vec(v: torch.Tensor, cp: int, value: float = 0.0) -> torch.Tensor:
    return F.pad(v.detach(), (0, cp - v.numel()), value=value).contiguous()


def _mat(w: torch.Tensor, cp: int) -> torch.Tensor:
    """A (out, in) matrix as the padded (in, out) operand of x @ W."""
    out_c, in_c = w.shape
    return F.pad(w.detach().t(), (0, cp - out_c, 0, cp - in_c)).contiguous()


def _unmat(dw: torch.Tensor, out_c: int, in_c: int) -> torch.Tensor:
    """Gradient of a padded (in, out) operand back to the (out, in) parameter layout."""
    return dw[:in_c, :out_c].t()


@dataclass
class _Layer:
    """One conv + batch norm of a block, with what its backward needs."""

    ws: torch.Tensor  # (cp, cp) tap on x(t - d)
    wr: torch.Tensor  # (cp, cp) tap on x(t)
    bias: torch.Tensor
    gamma: torch.Tensor
    beta: torch.Tensor
    running: tuple  # the module's (running_mean, running_var, num_batches_tracked), updated in place
    mscale: torch.Tensor  # (B, cp) dropout scale per utterance and channel (ones without dropout)
    a: torch.Tensor | None = None  # conv output
    mean: torch.Tensor | None = None
    invstd: torch.Tensor | None = None
    k: torch.Tensor | None = None  # gamma * invstd
    scale: torch.Tensor | None = None  # k * mscale, (B, cp)
    shift: torch.Tensor | None = None  # beta * mscale, (B, cp)

    def normalise(self, a, s, q, *, training: bool, n: int) -> None:
        """Batch statistics (training, with the running update) or running statistics (inference)."""
        cp = a.shape[2]
        c = self.running[0].numel()
        if training:
            mean64 = s / n
            var64 = (q / n - mean64 * mean64).clamp_min(0)
            with torch.no_grad():
                self.running[0].lerp_(mean64[:c].to(self.running[0]), BN_MOMENTUM)
                self.running[1].lerp_((var64[:c] * (n / max(n - 1, 1))).to(self.running[1]), BN_MOMENTUM)
                self.running[2].add_(1)  # as nn.BatchNorm1d counts, so checkpoints agree
            mean, var = mean64.to(a.dtype), var64.to(a.dtype)
        else:
            mean, var = _vec(self.running[0], cp).to(a.dtype), _vec(self.running[1], cp, 1.0).to(a.dtype)
        self.a, self.mean = a, mean
        self.invstd = torch.rsqrt(var + BN_EPS)
        self.k = self.gamma * self.invstd
        self.scale = (self.k * self.mscale).contiguous()
        self.shift = (self.beta * self.mscale).contiguous()

    @property
    def norm(self) -> tuple:
        """(mean, scale, shift): how the next conv reads this layer's output, relu(batch norm) x dropout."""
        return self.mean, self.scale, self.shift


def _layers(blk, cp: int, masks) -> list[_Layer]:
    out = []
    for conv, bn, m in ((blk.conv1, blk.bn1, masks[0]), (blk.conv2, blk.bn2, masks[1])):
        w = conv.weight
        out.append(_Layer(ws=_mat(w[:, :, 0], cp), wr=_mat(w[:, :, 1], cp), bias=_vec(conv.bias, cp),
                          gamma=_vec(bn.weight, cp), beta=_vec(bn.bias, cp),
                          running=(bn.running_mean, bn.running_var, bn.num_batches_tracked), mscale=m))
    return out


# -- one stream ----------------------------------------------------------------------------------------

class _Stream:
    """The input conv and the blocks of one direction, forward and hand-written backward."""

    def __init__(self, ops, in_conv, blocks, masks, cp: int):
        self.ops, self.cp, self.c = ops, cp, in_conv.weight.shape[0]
        w = in_conv.weight[:, :, 0].detach()  # (C, F): the input keeps its F columns, unpadded
        self.w_in = F.pad(w.t(), (0, cp - w.shape[0])).contiguous()  # (F, cp)
        self.b_in = _vec(in_conv.bias, cp)
        self.layers = [_layers(blk, cp, masks[2 * j: 2 * j + 2]) for j, blk in enumerate(blocks)]
        # block inputs, kept for the backward; the batch norm outputs and gates are recomputed
        # from the conv outputs the layers keep (never stored: less memory traffic, same values)
        self.inputs: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor, *, training: bool, keep: bool) -> list[torch.Tensor]:
        """Level sums over time (B, cp) of every block, for x (B, T, F)."""
        ops = self.ops
        bsz, t, nf = x.shape
        self.x = x
        h = torch.addmm(self.b_in, x.reshape(-1, nf), self.w_in).view(bsz, t, self.cp)
        levels = []
        for j, (l1, l2) in enumerate(self.layers):
            d = 2**j
            a, s, q = ops.conv(h, l1.ws, l1.wr, l1.bias, d, kin=self.c, stats=training)
            l1.normalise(a, s, q, training=training, n=bsz * t)
            a, s, q = ops.conv(a, l2.ws, l2.wr, l2.bias, d, kin=self.c, stats=training, norm=l1.norm)
            l2.normalise(a, s, q, training=training, n=bsz * t)
            y, level = ops.gate_fwd(h, a, l2.mean, l2.scale, l2.shift)
            if keep:
                self.inputs.append(h)
            levels.append(level)
            h = y
        return levels

    def backward(self, dlevels: list[torch.Tensor]) -> dict:
        """Parameter gradients from the gradients of the level sums (B, cp) of every block."""
        ops, n = self.ops, None
        grads = {}
        dh = None
        for j in reversed(range(len(self.layers))):
            d = 2**j
            l1, l2 = self.layers[j]
            x = self.inputs[j]
            n = x.shape[0] * x.shape[1]
            dx, g, sg, sga = ops.gate_bwd(dh, dlevels[j], x, l2.a, l2.mean, l2.scale, l2.shift, l2.mscale)
            da, db2 = self._bn_backward(l2, g, sg, sga, n, grads, (j, 2))
            grads[(j, 2, "w")] = ops.wgrad(l1.a, da, d, kin=self.c, norm=l1.norm)
            grads[(j, 2, "b")] = db2
            dh1, _, _ = ops.conv(da, l2.ws.t().contiguous(), l2.wr.t().contiguous(), None, -d, kin=self.c)
            g, sg, sga = ops.relu_bwd(dh1, l1.a, l1.mean, l1.scale, l1.shift, l1.mscale)
            da, db1 = self._bn_backward(l1, g, sg, sga, n, grads, (j, 1))
            grads[(j, 1, "w")] = ops.wgrad(x, da, d, kin=self.c)
            grads[(j, 1, "b")] = db1
            ops.conv(da, l1.ws.t().contiguous(), l1.wr.t().contiguous(), None, -d, kin=self.c, out=dx)
            dh = dx
        nf = self.x.shape[2]
        dh2 = dh.reshape(-1, self.cp)
        grads["in_w"] = self.x.reshape(-1, nf).t() @ dh2  # (F, cp)
        grads["in_b"] = dh2.sum(0)
        return grads

    def _bn_backward(self, layer: _Layer, g, sg, sga, n: int, grads: dict, key) -> tuple:
        """dA from g (gradient at the batch norm output); records gamma/beta gradients."""
        invstd = layer.invstd.double()
        sgx = sga * invstd  # sum of g * xhat
        grads[(*key, "gamma")] = sgx
        grads[(*key, "beta")] = sg
        k = layer.k.double()
        ca = (-k * invstd * sgx / n).to(g.dtype)
        c0 = (-k * sg / n).to(g.dtype)
        return self.ops.bn_bwd(g, layer.a, layer.mean, layer.k, ca, c0)


def _draw_masks(model: TIMNet, bsz: int, cp: int, like: torch.Tensor, training: bool) -> list[list[torch.Tensor]]:
    """Dropout scales per (utterance, channel) for [forward, backward] streams, drawn in the
    reference's order (level by level: forward conv1, conv2, then backward conv1, conv2) and as
    nn.Dropout1d draws them (bernoulli_ on a (B, C, 1) tensor), so the RNG streams agree."""
    cfg = model.config
    c, p = cfg.n_filters, cfg.dropout
    ones = torch.ones(bsz, cp, dtype=like.dtype, device=like.device)
    masks: list[list[torch.Tensor]] = [[], []]
    for _ in range(cfg.dilations):
        for stream in masks:
            for _ in range(2):
                if training and p > 0:
                    m = like.new_empty(bsz, c, 1).bernoulli_(1 - p).div_(1 - p)
                    stream.append(F.pad(m.view(bsz, c), (0, cp - c)).contiguous())
                else:
                    stream.append(ones)
    return masks


_POOL: list = []


def _parallel(fns) -> list:
    """Run the two streams at once where there are threads to spare (the kernels release the GIL)."""
    if torch.get_num_threads() < 2:
        return [f() for f in fns]
    if not _POOL:
        _POOL.append(ThreadPoolExecutor(2, thread_name_prefix="timnet-stream"))
    futures = [_POOL[0].submit(fn) for fn in fns]
    return [f.result() for f in futures]


def _params(model: TIMNet) -> list[torch.nn.Parameter]:
    """The trunk's parameters in a fixed order (the inputs of _Trunk and its gradients)."""
    out = [model.forward_in.weight, model.forward_in.bias, model.backward_in.weight, model.backward_in.bias]
    for blocks in (model.forward_blocks, model.backward_blocks):
        for blk in blocks:
            out += [blk.conv1.weight, blk.conv1.bias, blk.bn1.weight, blk.bn1.bias,
                    blk.conv2.weight, blk.conv2.bias, blk.bn2.weight, blk.bn2.bias]
    return out


class _Trunk(torch.autograd.Function):
    """(B, T, F) -> level means (B, n, C) with batch statistics and dropout; hand-written backward."""

    @staticmethod
    def forward(ctx, x, model, *params):
        streams, levels = _run_streams(model, x, training=True, keep=True)
        cfg = model.config
        ctx.streams, ctx.shape = streams, (x.shape[1], cfg.n_filters, cfg.dilations)
        return levels

    @staticmethod
    def backward(ctx, dlevels):
        t, c, n_levels = ctx.shape
        streams = ctx.streams
        cp = streams[0].cp
        dl = F.pad(dlevels / t, (0, cp - c)).contiguous()
        per_level = [dl[:, j].contiguous() for j in range(n_levels)]
        gf, gb = _parallel([lambda: streams[0].backward(per_level), lambda: streams[1].backward(per_level)])
        ctx.streams = None
        out = []
        for g, st in ((gf, streams[0]), (gb, streams[1])):
            nf = st.x.shape[2]
            out += [g["in_w"][:nf, :c].t().unsqueeze(-1), g["in_b"][:c]]
        for g, st in ((gf, streams[0]), (gb, streams[1])):
            for j in range(n_levels):
                for layer in (1, 2):
                    dws, dwr = g[(j, layer, "w")]
                    w = torch.stack([_unmat(dws, c, c), _unmat(dwr, c, c)], dim=-1)
                    out += [w, g[(j, layer, "b")][:c], g[(j, layer, "gamma")][:c], g[(j, layer, "beta")][:c]]
        dtype = dlevels.dtype
        return (None, None, *[o.to(dtype) for o in out])


def _run_streams(model: TIMNet, x: torch.Tensor, *, training: bool, keep: bool) -> tuple[list[_Stream], torch.Tensor]:
    """Both streams on x (B, T, F): (the streams, holding what their backward needs when training;
    level means (B, n, C)). Batch statistics and dropout when training, running statistics else."""
    bsz, t, _ = x.shape
    cfg = model.config
    cp = padded(cfg.n_filters)
    ops = ops_for(x, cp)
    masks = _draw_masks(model, bsz, cp, x, training=training)
    streams = [_Stream(ops, model.forward_in, model.forward_blocks, masks[0], cp),
               _Stream(ops, model.backward_in, model.backward_blocks, masks[1], cp)]
    xr = x.flip(1).contiguous()  # the backward stream reads the utterance reversed
    lf, lb = _parallel([lambda: streams[0].forward(x.contiguous(), training=training, keep=keep),
                        lambda: streams[1].forward(xr, training=training, keep=keep)])
    return streams, (torch.stack(lf, 1) + torch.stack(lb, 1))[:, :, : cfg.n_filters] / t


def supports(model: TIMNet) -> bool:
    """The fast path covers the paper's block: kernel size 2, no 1x1 projection inside blocks."""
    return model.config.kernel_size == 2


def fused_features(model: TIMNet, x: torch.Tensor) -> torch.Tensor:
    """`model.fused(x)` on the fast path: (B, T, F) -> (B, C), in the model's train or eval mode.
    Gradients reach the trunk in train mode alone (training's use); in eval mode it keeps no graph,
    so a gradient through an eval-mode model (a saliency map, say) needs the model itself."""
    if not supports(model):
        raise ValueError(f"the fast path needs kernel_size 2; this model has {model.config.kernel_size}")
    if model.training and torch.is_grad_enabled():
        levels = _Trunk.apply(x, model, *_params(model))
    else:  # inference, or batch statistics and dropout with no graph to keep
        with torch.no_grad():
            levels = _run_streams(model, x, training=model.training, keep=False)[1]
    return torch.einsum("bnc,n->bc", levels, model.fusion)


def forward(model: TIMNet, x: torch.Tensor, *, return_features: bool = False):
    """`model(x)` on the fast path: logits, and the fused features when asked."""
    z = fused_features(model, x)
    logits = model.classifier(z)
    return (logits, z) if return_features else logits
