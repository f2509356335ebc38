"""The fast path (timnet.fast) computes the reference network's mathematics.

Ground truth is the reference nn.Module in float64: the float32 reference itself is off by up to
5e-3 (relative) in some gradients on MFCC-scaled inputs (oneDNN's convolution backward), so it
cannot referee a 1e-5 comparison. The fast path's PyTorch implementation in float64 must agree
with it to rounding (1e-10); the float32 native kernels within 1e-5.
"""
import copy
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from timnet import fast, native
from timnet.model import TIMNet, TIMNetConfig

from conftest import DATA, need

CONFIG = TIMNetConfig(dilations=6)  # d = 1..32 on 40 frames: shifts below and near T


def needs_native():
    """Skip where the kernels cannot be built (no compiler, or TIMNET_NATIVE=0); where a compiler
    exists, a build that fails, or kernels that fail their start-up check, is a failure, not a skip."""
    if native.load() is None:
        if native._compiler() is None or os.environ.get("TIMNET_NATIVE", "1") == "0":
            pytest.skip(f"native kernels unavailable here: {native.reason()}")
        pytest.fail(f"a C compiler is here but the kernels did not build: {native.reason()}")
    assert isinstance(fast.ops_for(torch.zeros(1), 40), fast.NativeOps), "the kernels built but failed their start-up check"


def batch(seed=0, b=12, t=40, scale=30.0):
    """MFCC-scaled random features and labels."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, t, 39, generator=g) * scale, torch.randint(0, 7, (b,), generator=g)


def run(model, x, y, f, *, seed=1):
    """Logits, parameter gradients and BN buffers after one training-mode forward/backward."""
    model.zero_grad()
    torch.manual_seed(seed)  # the dropout masks
    logits = f(model, x)
    F.cross_entropy(logits, y, label_smoothing=0.1).backward()
    grads = {n: p.grad.double().clone() for n, p in model.named_parameters()}
    buffers = {n: b.double().clone() for n, b in model.named_buffers() if b.dtype.is_floating_point}
    return logits.detach().double(), grads, buffers


def reference(model, x):
    return model(x)


def max_rel(a: dict, b: dict, *, skip=()) -> float:
    """Largest per-tensor difference, relative to the tensor's largest magnitude (floor 1e-3)."""
    return max(float((a[k] - b[k]).abs().max() / b[k].abs().max().clamp_min(1e-3)) for k in b if k not in skip)


def bn_fed_biases(model) -> set:
    """Conv biases followed by training-mode batch norm, which subtracts them again: their true
    gradient is exactly zero, so in float32 it is rounding noise (about 1e-11), and Adam, which
    divides by the gradient's own scale, turns that noise into steps of up to ~1e-4 in either path."""
    return {n for n, _ in model.named_parameters() if "blocks" in n and n.endswith(".bias") and ".conv" in n}


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    model = TIMNet(CONFIG).train()
    # Keras's initialisation leaves every bias 0 and every BN gamma 1, under which a path that
    # dropped or misplaced any of them would still agree: random ones make it differ.
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (torch.nn.Conv1d, torch.nn.Linear)):
                m.bias.copy_(0.2 * torch.randn(m.bias.shape, generator=g))
            elif isinstance(m, torch.nn.BatchNorm1d):
                m.weight.copy_(1 + 0.3 * torch.randn(m.num_features, generator=g))
                m.bias.copy_(0.2 * torch.randn(m.num_features, generator=g))
    return model


def test_torch_ops_float64_equal_reference(model, monkeypatch):
    """The algorithm itself: channels-last, padded, fused, hand-written backward = the nn.Module."""
    monkeypatch.setattr(fast, "ops_for", lambda x, c: fast.TorchOps())
    x, y = batch()
    ref = run(copy.deepcopy(model).double(), x.double(), y, reference)
    got = run(copy.deepcopy(model).double(), x.double(), y, fast.forward)
    assert float((got[0] - ref[0]).abs().max()) < 1e-10
    assert max_rel(got[1], ref[1]) < 1e-10
    assert max_rel(got[2], ref[2]) < 1e-10


def test_native_float32_matches_reference(model):
    needs_native()
    x, y = batch()
    ref = run(copy.deepcopy(model).double(), x.double(), y, reference)
    got = run(copy.deepcopy(model), x, y, fast.forward)
    assert float((got[0] - ref[0]).abs().max()) < 1e-5
    assert max_rel(got[1], ref[1]) < 1e-5
    assert max_rel(got[2], ref[2]) < 1e-5
    # and the masks really were drawn: another seed gives other logits
    other = run(copy.deepcopy(model), x, y, fast.forward, seed=2)
    assert float((other[0] - got[0]).abs().max()) > 1e-3


def test_eval_mode_and_features_match_reference(model):
    """Eval mode normalises with the running statistics and the affine parameters (random here, so a
    path that ignored either, or used the batch's statistics, would differ)."""
    x, _ = batch(seed=3)
    model = copy.deepcopy(model)
    g = torch.Generator().manual_seed(5)
    for bn in (m for m in model.modules() if isinstance(m, torch.nn.BatchNorm1d)):
        n = bn.num_features
        bn.running_mean.copy_(0.3 * torch.randn(n, generator=g))
        bn.running_var.copy_(0.5 + torch.rand(n, generator=g))
        bn.weight.data.copy_(1 + 0.3 * torch.randn(n, generator=g))
        bn.bias.data.copy_(0.2 * torch.randn(n, generator=g))
    m64 = copy.deepcopy(model).double().eval()
    with torch.no_grad():
        ref_logits, ref_z = m64(x.double(), return_features=True)
        logits, z = fast.forward(copy.deepcopy(model).eval(), x, return_features=True)
        batch_stats, _ = fast.forward(copy.deepcopy(model).train(), x, return_features=True)
    assert float((batch_stats.double() - ref_logits).abs().max() / ref_logits.abs().max()) > 1e-2
    assert float((logits.double() - ref_logits).abs().max() / ref_logits.abs().max()) < 1e-5
    assert float((z.double() - ref_z).abs().max() / ref_z.abs().max()) < 1e-5


def test_optimiser_steps_agree(model):
    """Three Adam steps of the paper's recipe from the same weights and batches: same weights."""
    def train(m, f, dtype):
        opt = torch.optim.Adam(m.parameters(), lr=1e-3, betas=(0.93, 0.98), eps=1e-8)
        for step in range(3):
            x, y = batch(seed=10 + step)
            torch.manual_seed(step)
            loss = F.cross_entropy(f(m, x.to(dtype)), y, label_smoothing=0.1)
            opt.zero_grad()
            loss.backward()
            opt.step()
        return {n: t.double() for n, t in m.state_dict().items() if t.dtype.is_floating_point}

    ref_model, fast_model = copy.deepcopy(model).double(), copy.deepcopy(model)
    ref = train(ref_model, reference, torch.float64)
    got = train(fast_model, fast.forward, torch.float32)
    noise = bn_fed_biases(model)
    assert max(float((got[k] - ref[k]).abs().max()) for k in ref if k not in noise) < 1e-4
    assert max(float((got[k] - ref[k]).abs().max()) for k in noise) < 1e-3
    start = {n: t.double() for n, t in model.state_dict().items() if t.dtype.is_floating_point}
    assert max(float((ref[k] - start[k]).abs().max()) for k in ref) > 1e-3  # the steps did move the weights
    # the noisy biases change nothing that matters: both models predict alike afterwards
    x, _ = batch(seed=20)
    with torch.no_grad():
        a = ref_model.eval()(x.double())
        b = fast.forward(fast_model.eval(), x).double()
    assert float((a - b).abs().max() / a.abs().max()) < 1e-4


def test_streams_in_threads_equal_sequential(model):
    """Two threads run the streams at once; each stream's arithmetic is unchanged."""
    x, y = batch(seed=4)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = run(copy.deepcopy(model), x, y, fast.forward)
        torch.set_num_threads(2)
        two = run(copy.deepcopy(model), x, y, fast.forward)
    finally:
        torch.set_num_threads(threads)
    # (MKL's input-conv products may split differently with two threads: last bits only)
    assert float((one[0] - two[0]).abs().max()) < 1e-6
    assert max_rel(one[1], two[1]) < 1e-6


@pytest.mark.parametrize("b,t,c,kin,d", [(3, 11, 16, 16, 2), (2, 9, 40, 39, 1), (4, 7, 40, 40, 8), (2, 5, 24, 20, 4),
                                         (1, 1, 8, 8, 1), (2, 13, 40, 37, 3), (1, 606, 40, 39, 512)])
def test_native_steps_equal_torch_steps(b, t, c, kin, d):
    """Each kernel against its PyTorch twin, on odd shapes: odd T, shifts near and beyond T, zero
    padded input channels (from kin on) that the kernels skip; IEMOCAP's 606 frames with d = 512."""
    needs_native()
    nat, ref = fast.NativeOps(native.load()), fast.TorchOps()
    g = torch.Generator().manual_seed(b * 100 + t)

    def r(*shape):
        return torch.randn(*shape, generator=g)

    x, ws, wr, bias = r(b, t, c), r(c, c), r(c, c), r(c)
    x[..., kin:] = 0
    close = dict(rtol=1e-5, atol=1e-4)
    for shift in (d, -d):
        y1, s1, q1 = nat.conv(x, ws, wr, bias, shift, kin=kin, stats=True)
        y2, s2, q2 = ref.conv(x, ws, wr, bias, shift, stats=True)
        torch.testing.assert_close(y1, y2, **close)
        torch.testing.assert_close(s1, s2, rtol=1e-6, atol=1e-4)
        torch.testing.assert_close(q1, q2, rtol=1e-6, atol=1e-3)
        acc = r(b, t, c)
        torch.testing.assert_close(nat.conv(x, ws, wr, None, shift, kin=kin, out=acc.clone())[0],
                                   ref.conv(x, ws, wr, None, shift, out=acc.clone())[0], **close)
        gr = r(b, t, c)
        for u, v in zip(nat.wgrad(x, gr, shift, kin=kin), ref.wgrad(x, gr, shift)):
            torch.testing.assert_close(u, v, **close)
    a, mean, scale, shift = r(b, t, c), r(c), r(b, c), r(b, c)
    mscale = (torch.rand(b, c, generator=g) > 0.3).float() / 0.7
    norm = (mean, scale, shift)  # conv and weight gradient reading relu(batch norm(a)) instead of x
    for sh in (d, -d):
        for u, v in zip(nat.conv(a, ws, wr, bias, sh, stats=True, norm=norm), ref.conv(a, ws, wr, bias, sh, stats=True, norm=norm)):
            torch.testing.assert_close(u, v, rtol=1e-5, atol=1e-3)
        gr = r(b, t, c)
        for u, v in zip(nat.wgrad(a, gr, sh, norm=norm), ref.wgrad(a, gr, sh, norm=norm)):
            torch.testing.assert_close(u, v, **close)
    for u, v in zip(nat.gate_fwd(x, a, mean, scale, shift), ref.gate_fwd(x, a, mean, scale, shift)):
        torch.testing.assert_close(u, v, **close)
    dy, dlev = r(b, t, c), r(b, c)
    for with_dy in (dy, None):
        got = nat.gate_bwd(None if with_dy is None else with_dy.clone(), dlev, x, a, mean, scale, shift, mscale)
        want = ref.gate_bwd(with_dy, dlev, x, a, mean, scale, shift, mscale)
        for u, v in zip(got, want):
            torch.testing.assert_close(u, v.to(u.dtype), **close)
    for u, v in zip(nat.relu_bwd(dy.clone(), a, mean, scale, shift, mscale),
                    ref.relu_bwd(dy.clone(), a, mean, scale, shift, mscale)):
        torch.testing.assert_close(u, v.to(u.dtype), **close)
    k, ca, c0 = r(c), r(c), r(c)
    for u, v in zip(nat.bn_bwd(dy.clone(), a, mean, k, ca, c0), ref.bn_bwd(dy.clone(), a, mean, k, ca, c0)):
        torch.testing.assert_close(u, v.to(u.dtype), **close)


def test_without_kernels_the_torch_ops_run(model, monkeypatch):
    """No compiler (or TIMNET_NATIVE=0): the same path on PyTorch operations, same numbers."""
    monkeypatch.setattr(fast, "_CHECKED", {})
    monkeypatch.setattr(native, "load", lambda: None)
    assert isinstance(fast.ops_for(torch.zeros(1), 40), fast.TorchOps)
    x, y = batch()
    ref = run(copy.deepcopy(model).double(), x.double(), y, reference)
    got = run(copy.deepcopy(model), x, y, fast.forward)
    assert max_rel(got[1], ref[1]) < 1e-5


def test_native_disabled_by_environment(monkeypatch):
    monkeypatch.setattr(native, "_state", {})
    monkeypatch.setenv("TIMNET_NATIVE", "0")
    assert native.load() is None and "TIMNET_NATIVE=0" in native.reason()


@pytest.mark.realdata
def test_native_on_real_emodb_batch():
    """A batch of real EMODB features (the paper's 8 levels, 188 frames).

    On real MFCCs (c0 near -360 +- 180, silent padding) float32 itself is off from float64 by
    up to 1.5e-3 in the first blocks' gradients, identically in both paths: the comparison that
    holds to 1e-5 is with the float32 reference, and the fast path is no further from float64."""
    needs_native()
    from timnet.audio import load_audio
    from timnet.features import FeatureConfig, waveform_features

    root = need(DATA / "EMODB")
    files = sorted((root / "wav").glob("*.wav"))[::40][:12]
    cfg = FeatureConfig(signal_length=96000)
    x = torch.from_numpy(np.stack([waveform_features(load_audio(f, sr=cfg.sample_rate), cfg) for f in files]))
    y = torch.arange(len(files)) % 7
    torch.manual_seed(0)
    m = TIMNet(TIMNetConfig()).train()
    ref = run(copy.deepcopy(m), x, y, reference)
    ref64 = run(copy.deepcopy(m).double(), x.double(), y, reference)
    got = run(copy.deepcopy(m), x, y, fast.forward)
    noise = bn_fed_biases(m)
    assert float((got[0] - ref[0]).abs().max()) < 1e-5
    assert max_rel(got[1], ref[1], skip=noise) < 1e-5
    assert max(float(got[1][k].abs().max()) for k in noise) < 1e-6
    assert max_rel(got[1], ref64[1], skip=noise) <= max_rel(ref[1], ref64[1], skip=noise) + 1e-5


def test_ten_levels_on_short_utterances():
    """IEMOCAP's 10 levels (d up to 512) on 20 frames: every tap from d = 32 on is padding."""
    torch.manual_seed(5)
    m = TIMNet(TIMNetConfig(dilations=10, n_classes=4)).train()
    x, y = batch(seed=6, t=20)
    y = y % 4
    ref = run(copy.deepcopy(m).double(), x.double(), y, reference)
    got = run(copy.deepcopy(m), x, y, fast.forward)
    assert float((got[0] - ref[0]).abs().max()) < 1e-5
    assert max_rel(got[1], ref[1], skip=bn_fed_biases(m)) < 1e-5


def test_kernels_that_disagree_are_not_used(monkeypatch):
    """A miscompiled library (here: a gate kernel off by 1%) is caught before it trains anything."""
    needs_native()
    monkeypatch.setattr(fast, "_CHECKED", {})
    real = fast.NativeOps.gate_fwd

    def wrong(self, *args):
        y, level = real(self, *args)
        return y * 1.01, level

    monkeypatch.setattr(fast.NativeOps, "gate_fwd", wrong)
    with pytest.warns(RuntimeWarning, match="disagree with PyTorch \\(gate\\)"):
        assert fast.checked_native_ops() is None
    assert isinstance(fast.ops_for(torch.zeros(1), 40), fast.TorchOps)
