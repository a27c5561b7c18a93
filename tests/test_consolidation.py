"""Anchors and penalties against the naive per-game sum."""

import pytest
import torch
from torch import nn

from agent.consolidation import Consolidator


def naive_penalty(model, anchors, lambda_):
    """sum over anchors of lambda/2 sum_i F_i (theta_i - theta*_i)^2, written plainly in float64."""
    total = torch.zeros((), dtype=torch.float64)
    for anchor in anchors:
        for name, param in model.named_parameters():
            diff = param.double() - anchor["params"][name].double()
            total = total + (anchor["importance"][name].double() * diff.square()).sum()
    return 0.5 * lambda_ * total


def net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 4))


def perturb(model, scale=0.1, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)


def states(n=40):
    return torch.randn(n, 6, generator=torch.Generator().manual_seed(2))


def build(method="ewc", games=("A", "B", "C", "D"), **kwargs):
    model, consolidator = net(), Consolidator(method, lambda_=3.0, **kwargs)
    for i, game in enumerate(games):
        perturb(model, seed=10 + i)
        consolidator.consolidate(game, model, states())
    perturb(model, seed=99)
    return model, consolidator


def test_penalty_equals_naive_sum_over_active_anchors():
    model, consolidator = build()
    for current in ("A", "C", "E", None):
        active = [consolidator.anchors[k] for k in consolidator.anchors if k != current]
        expected = naive_penalty(model, active, 3.0)
        assert torch.allclose(consolidator.penalty(model, current).double(), expected, rtol=1e-5)


def test_gradient_equals_naive_gradient():
    model, consolidator = build()
    active = [consolidator.anchors[k] for k in ("A", "B", "D")]
    fast = torch.autograd.grad(consolidator.penalty(model, "C"), list(model.parameters()))
    slow = torch.autograd.grad(naive_penalty(model, active, 3.0), list(model.parameters()))
    for a, b in zip(fast, slow):
        assert torch.allclose(a.double(), b.double(), rtol=1e-4, atol=1e-7)


def test_revisit_refreshes_instead_of_duplicating():
    model, consolidator = build()
    perturb(model, seed=5)
    consolidator.consolidate("B", model, states())
    assert list(consolidator.anchors) == ["A", "C", "D", "B"]
    for name, p in model.named_parameters():
        assert torch.equal(consolidator.anchors["B"]["params"][name], p.detach())


def test_current_game_anchor_is_inactive():
    model, consolidator = build(games=("A",))
    assert consolidator.penalty(model, "A").item() == 0.0
    assert consolidator.penalty(model, "B").item() > 0.0


def test_zero_at_the_anchor_and_gradient_pulls_toward_it():
    model, consolidator = net(), Consolidator("ewc", lambda_=10.0)
    consolidator.consolidate("A", model, states())
    assert consolidator.penalty(model, "B").item() == pytest.approx(0.0, abs=1e-12)
    anchor = {n: p.detach().clone() for n, p in model.named_parameters()}
    perturb(model, scale=0.5)
    distance = lambda: sum((p - anchor[n]).square().sum() for n, p in model.named_parameters())  # noqa: E731
    before = distance().item()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    for _ in range(20):
        optimizer.zero_grad()
        consolidator.penalty(model, "B").backward()
        optimizer.step()
    assert distance().item() < before


def test_l2_uses_uniform_importance_and_no_states():
    model, consolidator = net(), Consolidator("l2", lambda_=2.0)
    consolidator.consolidate("A", model)
    perturb(model)
    anchor = consolidator.anchors["A"]["params"]
    expected = sum((p - anchor[n]).square().sum() for n, p in model.named_parameters())
    assert consolidator.penalty(model, "B").item() == pytest.approx(expected.item(), rel=1e-5)


def test_online_ewc_keeps_one_running_anchor():
    model, consolidator = net(), Consolidator("online_ewc", lambda_=1.0, online_gamma=0.5)
    consolidator.consolidate("A", model, states())
    first = {n: f.clone() for n, f in consolidator.anchors["online"]["importance"].items()}
    perturb(model)
    consolidator.consolidate("B", model, states())
    single = Consolidator("ewc")  # the new Fisher alone, for the running sum
    single.consolidate("B", model, states())
    assert list(consolidator.anchors) == ["online"]
    for name, value in consolidator.anchors["online"]["importance"].items():
        assert torch.allclose(value, 0.5 * first[name] + single.anchors["B"]["importance"][name])
    assert consolidator.penalty(model, "B").item() == pytest.approx(0.0, abs=1e-10)


def test_normalisation_and_protection_gate():
    model = net()
    normalised = Consolidator("ewc", normalize="max")
    normalised.consolidate("A", model, states())
    assert max(f.max().item() for f in normalised.anchors["A"]["importance"].values()) == pytest.approx(1.0)
    gated = Consolidator("ewc", min_steps_to_protect=100)
    assert gated.consolidate("A", model, states(), steps_trained=50) == {}
    assert not gated.anchors



@pytest.mark.parametrize("method", ["ewc", "l2"])
def test_an_anchor_weighs_in_proportion_to_the_steps_its_task_was_trained(method):
    model = net()
    full = Consolidator(method, normalize="mean" if method == "ewc" else "none")
    full.consolidate("A", model, states(), steps_trained=1000)
    ramped = Consolidator(method, normalize="mean" if method == "ewc" else "none", full_strength_steps=4000)
    ramped.consolidate("A", model, states(), steps_trained=1000)
    ramped.consolidate("B", model, states(), steps_trained=9000)  # past full strength: unscaled
    for name, value in full.anchors["A"]["importance"].items():
        assert torch.allclose(ramped.anchors["A"]["importance"][name], value / 4)
        assert torch.allclose(ramped.anchors["B"]["importance"][name], value)


def test_state_dict_round_trip():
    model, consolidator = build()
    restored = Consolidator("ewc", lambda_=3.0)
    restored.load_state_dict(consolidator.state_dict())
    assert list(restored.anchors) == list(consolidator.anchors)
    assert torch.equal(restored.penalty(model, "B"), consolidator.penalty(model, "B"))
    with pytest.raises(ValueError, match="method"):
        Consolidator("l2").load_state_dict(consolidator.state_dict())
