"""Model ingredient: registry, import paths, freezing, BatchNorm freezing, summary."""

import pytest
import torch
from torch import nn

from ingredients.model import build_model, format_summary, freeze_parameters, summarize

OPTIONS = dict(
    hidden=[32, 16],
    dropout=0.0,
    batchnorm=True,
    channels=[8, 16],
    kwargs={},
    freeze=[],
    freeze_batchnorm=False,
)


def make(name="mlp", shape=(64,), **overrides):
    return build_model(shape, 10, **{**OPTIONS, "name": name, **overrides})


def step(net, shape):
    """One real optimisation step on random data."""
    opt = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=0.5)
    net.train()
    loss = nn.functional.cross_entropy(net(torch.randn(16, *shape)), torch.randint(0, 10, (16,)))
    loss.backward()
    opt.step()


def test_registry_builds_mlp_and_cnn_with_right_outputs():
    assert make("mlp")(torch.randn(4, 64)).shape == (4, 10)
    assert make("cnn", (1, 8, 8))(torch.randn(4, 1, 8, 8)).shape == (4, 10)


def test_user_model_by_import_path():
    net = make("torch.nn:Identity")  # any callable taking input_shape/num_outputs keywords
    assert isinstance(net, nn.Identity)


def test_unknown_model_names_the_key():
    with pytest.raises(ValueError, match="model.name: unknown model 'resnet9000'"):
        make("resnet9000")
    with pytest.raises(ValueError, match="model.name: cannot import 'nope.mod:f'"):
        make("nope.mod:f")


def test_frozen_parameters_stay_exactly_unchanged():
    torch.manual_seed(0)
    net = make(freeze=["1.*"])  # 0 is the Flatten: 1 is the first Linear
    frozen = {n: p.detach().clone() for n, p in net.named_parameters() if not p.requires_grad}
    assert set(frozen) == {"1.weight", "1.bias"}
    step(net, (64,))
    for name, param in net.named_parameters():
        if name in frozen:
            assert torch.equal(param, frozen[name])


def test_freeze_pattern_matching_nothing_is_refused():
    with pytest.raises(ValueError, match="model.freeze: pattern 'head.*' matches no parameter"):
        freeze_parameters(make(), ["head.*"])


def test_frozen_batchnorm_keeps_running_stats_and_eval_mode():
    torch.manual_seed(0)
    net = make("cnn", (1, 8, 8), freeze_batchnorm=True)
    bns = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    before = [(bn.running_mean.clone(), bn.running_var.clone(), bn.weight.clone()) for bn in bns]
    net.train()
    step(net, (1, 8, 8))
    for bn, (mean, var, weight) in zip(bns, before):
        assert not bn.training and not bn.weight.requires_grad
        assert torch.equal(bn.running_mean, mean) and torch.equal(bn.running_var, var)
        assert torch.equal(bn.weight, weight)
    assert net.features[0].training  # the rest of the model still trains


def test_summary_table_keeps_columns_apart():
    table = format_summary(summarize(make("cnn", (1, 8, 8)), (1, 8, 8)))
    assert "AdaptiveAvgPool2d  16x1x1" in table
    assert table.splitlines()[-1].startswith("total ")


def test_summary_counts_every_parameter_and_shapes():
    net = make(freeze=["1.*"])
    summary = summarize(net, (64,))
    assert summary["params"] == sum(p.numel() for p in net.parameters())
    assert summary["trainable_params"] == summary["params"] - (64 * 32 + 32)
    first = next(r for r in summary["layers"] if r["layer"] == "1")
    assert first == {
        "layer": "1",
        "type": "Linear",
        "output_shape": [32],
        "params": 64 * 32 + 32,
        "trainable": 0,
    }
