"""Optimizer ingredient: parameter groups, trainable-only, clipping, schedules."""

import math

import pytest
import torch
from torch import nn

from ingredients.optimizer import build_optimizer, build_scheduler, gradient_clipper

DEFAULTS = dict(
    name="sgd", momentum=0.9, nesterov=True, betas=[0.9, 0.999], weight_decay=1e-4, param_groups=[]
)
SCHEDULE = dict(schedule="none", step_size=2, gamma=0.5, warmup_epochs=0)


def net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))


def test_param_groups_get_their_own_lr_and_weight_decay():
    opt = build_optimizer(
        net(),
        0.01,
        **{**DEFAULTS, "param_groups": [{"pattern": "2.*", "lr_scale": 10, "weight_decay": 0.0}]},
    )
    rest, head = opt.param_groups  # the default group comes first: its lr is the run's lr
    assert head["names"] == ["2.weight", "2.bias"] and head["lr"] == pytest.approx(0.1)
    assert head["weight_decay"] == 0.0
    assert rest["names"] == ["0.weight", "0.bias"] and rest["lr"] == 0.01
    assert rest["weight_decay"] == 1e-4 and rest["nesterov"] is True


def test_only_trainable_parameters_reach_the_optimizer():
    model = net()
    model[0].requires_grad_(False)
    opt = build_optimizer(model, 0.01, **{**DEFAULTS, "name": "adamw"})
    handed = {id(p) for g in opt.param_groups for p in g["params"]}
    assert handed == {id(model[2].weight), id(model[2].bias)}
    assert isinstance(opt, torch.optim.AdamW)


def test_group_pattern_matching_nothing_is_refused():
    with pytest.raises(ValueError, match="pattern 'head.*' matches no trainable parameter"):
        build_optimizer(net(), 0.01, **{**DEFAULTS, "param_groups": [{"pattern": "head.*"}]})


def test_clipping_bounds_the_gradient_norm():
    model = net()
    (model(torch.randn(5, 4)) * 1000).sum().backward()
    before = gradient_clipper(0.5)(model)
    after = torch.nn.utils.get_total_norm([p.grad for p in model.parameters()])
    assert before > 0.5 and float(after) == pytest.approx(0.5, rel=1e-4)
    assert gradient_clipper(None)(model) is None


def lrs(schedule, epochs=4, steps=3, **kw):
    opt = build_optimizer(net(), 0.1, **DEFAULTS)
    sched = build_scheduler(opt, epochs, steps, **{**SCHEDULE, "schedule": schedule, **kw})
    seen = []
    for _ in range(epochs * steps):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return seen


def test_schedules_follow_their_shapes():
    assert lrs("none") == [0.1] * 12
    assert lrs("step") == pytest.approx([0.1] * 6 + [0.05] * 6)
    cosine = lrs("cosine")
    assert cosine[0] == pytest.approx(0.1) and cosine[6] == pytest.approx(0.05)
    assert all(a >= b for a, b in zip(cosine, cosine[1:]))
    warm = lrs("cosine", warmup_epochs=1)
    assert warm[:3] == pytest.approx([0.1 / 3, 0.2 / 3, 0.1])
    onecycle = lrs("onecycle", warmup_epochs=2)
    assert max(onecycle) == pytest.approx(0.1, rel=1e-3) and onecycle.index(max(onecycle)) in (5, 6)
    assert onecycle[-1] < onecycle[0] and not any(math.isnan(v) for v in onecycle)
