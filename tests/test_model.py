import numpy as np
import pytest
import torch

from timnet.model import TIMNet, TIMNetConfig, count_parameters


def test_parameter_count_matches_spec():
    # SPEC.md §3: 104,496 trainable (Keras's 106,992 adds 2,496 BN running statistics).
    model = TIMNet(TIMNetConfig(n_features=39, n_filters=39, dilations=8, n_classes=7))
    assert count_parameters(model) == 104_496
    buffers = sum(b.numel() for n, b in model.named_buffers() if "running" in n)
    assert count_parameters(model) + buffers == 106_992


@pytest.mark.parametrize("levels,classes,frames", [(8, 7, 188), (10, 4, 64), (3, 6, 17)])
def test_shapes_and_finite(levels, classes, frames):
    torch.manual_seed(0)
    model = TIMNet(TIMNetConfig(dilations=levels, n_classes=classes)).eval()
    x = torch.randn(5, frames, 39)
    logits, z = model(x, return_features=True)
    assert logits.shape == (5, classes) and z.shape == (5, 39)
    assert torch.isfinite(logits).all() and torch.isfinite(z).all()
    assert torch.allclose(model.classifier(z), logits)


def test_blocks_are_causal():
    # Changing the future must not change the past of a causal stream.
    torch.manual_seed(0)
    model = TIMNet(TIMNetConfig()).eval()
    x = torch.randn(1, 39, 100)
    h1 = model.forward_blocks[3](model.forward_in(x))
    x2 = x.clone()
    x2[..., 60:] += 1.0
    h2 = model.forward_blocks[3](model.forward_in(x2))
    assert torch.allclose(h1[..., :60], h2[..., :60])
    assert not torch.allclose(h1[..., 60:], h2[..., 60:])


def test_backward_stream_reads_reversed_time():
    # Swapping the two input convs and reversing the input must give the same fused features,
    # since each stream then sees what the other saw (the time mean is order-free).
    torch.manual_seed(0)
    model = TIMNet(TIMNetConfig(dilations=4)).eval()
    twin = TIMNet(TIMNetConfig(dilations=4)).eval()
    sd = model.state_dict()
    swapped = {}
    for k, v in sd.items():
        k2 = k.replace("forward_", "@").replace("backward_", "forward_").replace("@", "backward_")
        swapped[k2] = v
    twin.load_state_dict(swapped)
    x = torch.randn(3, 50, 39)
    assert torch.allclose(model.fused(x), twin.fused(x.flip(1)), atol=1e-5)


def test_spatial_dropout_drops_whole_channels():
    torch.manual_seed(0)
    block = TIMNet(TIMNetConfig(dropout=0.5)).forward_blocks[0].dropout.train()
    out = block(torch.ones(4, 39, 30))
    per_channel = out.amax(-1) == out.amin(-1)
    assert per_channel.all() and (out == 0).any() and (out == 2).any()


def test_keras_initialisation():
    torch.manual_seed(0)
    model = TIMNet(TIMNetConfig())
    assert float(model.fusion.detach().abs().max()) <= 0.05
    assert all(float(m.bias.detach().abs().max()) == 0 for m in model.modules() if isinstance(m, (torch.nn.Conv1d, torch.nn.Linear)))
    bn = model.forward_blocks[0].bn1
    assert bn.momentum == pytest.approx(0.01) and bn.eps == pytest.approx(1e-3)
    # Glorot uniform: U(-b, b) with b = sqrt(6 / (fan_in + fan_out)), so its std is b / sqrt(3);
    # PyTorch's own default (b = 1 / sqrt(fan_in)) has 0.58 times that std and would fail here
    for w, fans in ((model.forward_blocks[0].conv1.weight, 78 + 78), (model.classifier.weight, 39 + 7)):
        b = np.sqrt(6 / fans)
        w = w.detach()
        assert float(w.abs().max()) <= b + 1e-7 and float(w.abs().max()) > 0.9 * b
        assert float(w.std()) == pytest.approx(b / np.sqrt(3), rel=0.1)
    assert float(model.fusion.detach().std()) > 0.01  # U(-0.05, 0.05), not zeros
