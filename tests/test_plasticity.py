"""Plasticity diagnostics against slow, obvious references: a per-unit loop, singular values chosen by
hand, a network built with known dormant units."""

import math

import numpy as np
import pytest
import torch

from agent.networks import QNetwork
from agent.plasticity import (
    churn,
    diagnose,
    dormant_fraction,
    effective_rank,
    hidden_activations,
    initial_weights,
    stable_rank,
    unit_scores,
)


def scores_by_loop(activation):
    """ReDo's score, one unit at a time: mean |h_i| over the batch and positions, over the layer's mean."""
    a = activation.numpy()
    means = []
    for unit in range(a.shape[1]):
        values = [abs(v) for sample in a for v in np.ravel(sample[unit])]
        means.append(sum(values) / len(values))
    layer = sum(means) / len(means)
    return [m / layer for m in means]


def test_unit_scores_match_a_per_unit_loop_for_conv_and_linear_layers():
    torch.manual_seed(0)
    for activation in (torch.relu(torch.randn(6, 5, 3, 4)), torch.relu(torch.randn(7, 9))):
        activation[:, 1] = 0.0  # a unit that never fires
        activation[:, 2] *= 0.05  # a weak one
        assert unit_scores(activation).tolist() == pytest.approx(scores_by_loop(activation), rel=1e-5)
        by_loop = scores_by_loop(activation)
        for tau in (0.0, 0.1, 0.5):
            expected = sum(s <= tau for s in by_loop) / len(by_loop)
            assert dormant_fraction(activation, tau) == pytest.approx(expected)
    with pytest.raises(ValueError, match="tau must be >= 0"):
        dormant_fraction(torch.ones(2, 3), -0.1)


def test_a_network_with_known_dormant_units():
    """conv1 filters 0-3 and hidden units 0-99 are switched off (zero weights, negative bias): dormant at
    tau = 0; everything else fires on real-looking frames."""
    torch.manual_seed(0)
    net = QNetwork(18)
    conv1, fc = net.net[0], net.net[7]
    with torch.no_grad():
        conv1.weight[:4] = 0.0
        conv1.bias[:4] = -1.0
        fc.weight[:100] = 0.0
        fc.bias[:100] = -1.0
    states = torch.randint(0, 256, (64, 4, 84, 84), dtype=torch.uint8)
    activations, q_values = hidden_activations(net, states)
    assert list(activations) == ["conv1", "conv2", "conv3", "fc"] and q_values.shape == (64, 18)
    assert activations["conv1"].shape == (64, 32, 20, 20) and activations["fc"].shape == (64, 512)
    dead_conv = (activations["conv1"].abs().sum(dim=(0, 2, 3)) == 0).nonzero().ravel().tolist()
    assert {0, 1, 2, 3} <= set(dead_conv)  # (a random filter may never fire on these frames either)
    values, _ = diagnose(net, states, initial_weights(net))
    assert values["dormant_tau0/conv1"] == pytest.approx(len(dead_conv) / 32)
    assert values["dormant_tau0/fc"] >= 100 / 512  # (randomly initialised units may be dead too)
    dead_fc = int((activations["fc"].abs().sum(0) == 0).sum())
    assert values["dormant_tau0/fc"] == pytest.approx(dead_fc / 512)
    assert values["dormant_tau0.1/fc"] >= values["dormant_tau0/fc"]
    units = 32 + 64 + 64 + 512
    assert values["dormant_tau0/all"] == pytest.approx(
        sum(values[f"dormant_tau0/{n}"] * k for n, k in (("conv1", 32), ("conv2", 64), ("conv3", 64), ("fc", 512)))
        / units)
    assert math.isnan(values["churn/greedy_changed"])  # no earlier measurement


def with_singular_values(singular, rows=40, seed=0):
    rng = np.random.default_rng(seed)
    u, _ = np.linalg.qr(rng.normal(size=(rows, len(singular))))
    v, _ = np.linalg.qr(rng.normal(size=(len(singular), len(singular))))
    return torch.tensor(u @ np.diag(singular) @ v.T)


def test_ranks_from_singular_values_chosen_by_hand():
    singular = [5.0, 3.0, 1.0, 0.5, 0.0]
    features = with_singular_values(singular)
    p = np.array(singular[:4]) / sum(singular)
    assert effective_rank(features) == pytest.approx(math.exp(-(p * np.log(p)).sum()), rel=1e-9)
    assert stable_rank(features) == pytest.approx(sum(s * s for s in singular) / 25.0, rel=1e-9)
    assert effective_rank(with_singular_values([2.0] * 6)) == pytest.approx(6.0)  # flat spectrum: full rank
    assert stable_rank(with_singular_values([2.0] * 6)) == pytest.approx(6.0)
    assert effective_rank(with_singular_values([7.0, 0.0, 0.0])) == pytest.approx(1.0)
    assert effective_rank(torch.zeros(5, 3)) == 0.0 and stable_rank(torch.zeros(5, 3)) == 0.0


def test_weight_distance_and_churn_by_hand():
    torch.manual_seed(0)
    net = QNetwork(6)
    initial = initial_weights(net)
    states = torch.randint(0, 256, (16, 4, 84, 84), dtype=torch.uint8)
    before, q_before = diagnose(net, states, initial)
    assert before["weight_distance/conv2"] == 0.0
    assert before["weight_norm/fc2"] == pytest.approx(float(np.linalg.norm(net.net[9].weight.detach().numpy())))
    with torch.no_grad():
        net.net[2].weight.add_(0.5)  # conv2 moves by 0.5 in every entry
    after, q_after = diagnose(net, states, initial, previous_q=q_before)
    assert after["weight_distance/conv2"] == pytest.approx(0.5 * math.sqrt(net.net[2].weight.numel()), rel=1e-5)
    assert after["weight_distance/conv1"] == 0.0
    changed = sum(int(q_before[i].argmax() != q_after[i].argmax()) for i in range(16)) / 16
    dq = float(np.mean([abs(float(q_after[i, a] - q_before[i, a])) for i in range(16) for a in range(6)]))
    assert after["churn/greedy_changed"] == pytest.approx(changed)
    assert after["churn/mean_abs_dq"] == pytest.approx(dq, rel=1e-5)
    assert churn(q_before, q_before) == {"greedy_changed": 0.0, "mean_abs_dq": 0.0}


def recycled_inputs(name, dormant):
    """The input indices of layer `name` fed by units recycled in the layer before it."""
    previous = {"conv2": ("conv1", None), "conv3": ("conv2", None), "fc": ("conv3", 49)}.get(name)
    if previous is None:
        return set()
    units, block = dormant[previous[0]], previous[1]
    return {u * block + j for u in units for j in range(block)} if block else set(units)


def trained_network_and_adam(task_params=False):
    """A network and its Adam after three steps (every moment non-zero), and the states it trained on."""
    torch.manual_seed(0)
    net = QNetwork(6, num_tasks=2 if task_params else 0)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    states = torch.randint(0, 256, (8, 4, 84, 84), dtype=torch.uint8)
    for _ in range(3):
        optimizer.zero_grad()
        net(states).square().mean().backward()
        optimizer.step()
    return net, optimizer, states


def test_redo_recycles_exactly_the_dormant_units_and_nothing_else():
    """Units switched off by hand (conv2 channels 3 and 7, hidden units 10-19) after a few Adam steps: their
    incoming weights are re-drawn and biases zeroed, their outgoing weights (for conv3's channels: the
    flattened block of 49 positions) and Adam's moments there are zero; every other entry is as it was, and
    the Q-values do not move (the recycled units feed nothing yet)."""
    from agent.plasticity_methods import recycle_dormant

    net, optimizer, states = trained_network_and_adam()
    conv2, fc1 = net.net[2], net.net[7]
    with torch.no_grad():
        conv2.weight[[3, 7]] = 0.0
        conv2.bias[[3, 7]] = -1.0
        fc1.weight[10:20] = 0.0
        fc1.bias[10:20] = -1.0
    activations, q_before = hidden_activations(net, states)
    dormant = {name: [u for u, score in enumerate(scores_by_loop(a)) if score <= 0.0]
               for name, a in activations.items()}
    assert {3, 7} <= set(dormant["conv2"]) and set(range(10, 20)) <= set(dormant["fc"])
    before = {name: p.detach().clone() for name, p in net.named_parameters()}
    moments = {name: {k: v.clone() for k, v in optimizer.state[p].items()} for name, p in net.named_parameters()}
    recycled = recycle_dormant(net, optimizer, states, tau=0.0, generator=torch.Generator().manual_seed(1))
    assert recycled == {name: len(units) for name, units in dormant.items()}
    with torch.no_grad():
        assert torch.equal(net(states), q_before)
    layers = {"conv1": ("net.0", "net.2", None, "conv2"), "conv2": ("net.2", "net.4", None, "conv3"),
              "conv3": ("net.4", "net.7", 49, "fc"), "fc": ("net.7", "net.9", None, None)}
    params = dict(net.named_parameters())
    for name, (incoming, outgoing, block, following) in layers.items():
        units = dormant[name]
        columns = {u * block + j for u in units for j in range(block)} if block else set(units)
        w_in, b_in, w_out = f"{incoming}.weight", f"{incoming}.bias", f"{outgoing}.weight"
        fed = recycled_inputs(name, dormant)
        kept = [c for c in range(params[w_in].shape[1]) if c not in fed]
        for unit in range(params[w_in].shape[0]):
            if unit in units:
                assert not torch.equal(params[w_in][unit], before[w_in][unit]) and params[b_in][unit] == 0.0
                fan_in = params[w_in][unit].numel()
                assert params[w_in][unit].abs().max() <= 1 / math.sqrt(fan_in) + 1e-6  # PyTorch's default bound
                for key in ("exp_avg", "exp_avg_sq"):
                    assert optimizer.state[params[w_in]][key][unit].abs().sum() == 0
                    assert optimizer.state[params[b_in]][key][unit] == 0
            else:  # (its inputs from units recycled in the previous layer are zeroed: checked there)
                assert torch.equal(params[w_in][unit][kept], before[w_in][unit][kept])
                assert params[b_in][unit] == before[b_in][unit]
                for key in ("exp_avg", "exp_avg_sq"):
                    assert torch.equal(optimizer.state[params[w_in]][key][unit][kept], moments[w_in][key][unit][kept])
                    assert optimizer.state[params[b_in]][key][unit] == moments[b_in][key][unit]
        redrawn = set(dormant[following]) if following else set()  # rows of the next layer drawn afresh
        rows = [r for r in range(params[w_out].shape[0]) if r not in redrawn]
        zeroed = sorted(columns)
        others = [c for c in range(params[w_out].shape[1]) if c not in columns]
        assert params[w_out][:, zeroed].abs().sum() == 0
        assert all(optimizer.state[params[w_out]][k][:, zeroed].abs().sum() == 0 for k in ("exp_avg", "exp_avg_sq"))
        assert torch.equal(params[w_out][rows][:, others], before[w_out][rows][:, others])
    assert torch.equal(params["net.9.bias"], before["net.9.bias"])  # the head's own units are never recycled
    with pytest.raises(ValueError, match="tau must be >= 0"):
        recycle_dormant(net, optimizer, states, tau=-1.0)


# ------------------------------------------------------------------ shrink-and-perturb and resets


def default_init_draws(layers, seed):
    """What PyTorch's default initialisation draws for each layer, in order (weight then bias), by hand."""
    generator = torch.Generator().manual_seed(seed)
    draws = []
    for layer in layers:
        weight = torch.empty_like(layer.weight)
        torch.nn.init.kaiming_uniform_(weight, a=math.sqrt(5), generator=generator)
        bias = None
        if layer.bias is not None:
            fan_in = layer.weight[0].numel()
            bias = torch.empty_like(layer.bias).uniform_(-1 / math.sqrt(fan_in), 1 / math.sqrt(fan_in),
                                                         generator=generator)
        draws.append((weight, bias))
    return draws


@pytest.mark.parametrize("task_params", [False, True])
def test_shrink_and_perturb_mixes_every_weight_with_a_fresh_draw_and_touches_nothing_else(task_params):
    from agent.plasticity_methods import shrink_and_perturb

    net, optimizer, _ = trained_network_and_adam(task_params)
    layers = [m for m in net.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    before = {name: p.detach().clone() for name, p in net.named_parameters()}
    moments = {name: {k: v.clone() for k, v in optimizer.state[p].items()} for name, p in net.named_parameters()}
    shrink_and_perturb(net, 0.8, 0.2, generator=torch.Generator().manual_seed(5))
    expected = {}
    for layer, (weight, bias) in zip(layers, default_init_draws(layers, 5)):
        expected[id(layer.weight)] = 0.8 * before_of(net, before, layer.weight) + 0.2 * weight
        if bias is not None:
            expected[id(layer.bias)] = 0.8 * before_of(net, before, layer.bias) + 0.2 * bias
    for name, p in net.named_parameters():
        if id(p) in expected:
            assert torch.allclose(p, expected[id(p)], atol=1e-6), name
        else:  # per-task gains and biases: as they were
            assert torch.equal(p, before[name]), name
        for key, value in optimizer.state[p].items():  # Adam's state is kept
            assert torch.equal(value, moments[name][key])
    if task_params:
        assert any(id(p) not in expected for p in net.parameters())


def before_of(net, before, parameter):
    return next(before[name] for name, p in net.named_parameters() if p is parameter)


@pytest.mark.parametrize("count", [1, 2])
def test_reset_redraws_exactly_the_last_layers_and_zeroes_their_adam_moments(count):
    from agent.plasticity_methods import reset_last_layers

    net, optimizer, _ = trained_network_and_adam()
    layers = [m for m in net.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    before = {name: p.detach().clone() for name, p in net.named_parameters()}
    moments = {name: {k: v.clone() for k, v in optimizer.state[p].items()} for name, p in net.named_parameters()}
    names = reset_last_layers(net, optimizer, count, generator=torch.Generator().manual_seed(3))
    assert names == ["fc1", "fc2"][-count:]
    reset = layers[-count:]
    fresh = dict(zip((id(layer) for layer in reset), default_init_draws(reset, 3)))
    for layer in layers:
        for kind, p in (("weight", layer.weight), ("bias", layer.bias)):
            name = next(n for n, q in net.named_parameters() if q is p)
            if id(layer) in fresh:
                assert torch.equal(p, fresh[id(layer)][0 if kind == "weight" else 1]), name
                assert all(optimizer.state[p][k].abs().sum() == 0 for k in ("exp_avg", "exp_avg_sq")), name
            else:
                assert torch.equal(p, before[name]), name
                assert all(torch.equal(optimizer.state[p][k], moments[name][k]) for k in ("exp_avg", "exp_avg_sq"))


# ------------------------------------------------------------------ wired into training


def _train(run, extra):
    from test_train import SMOKE, TINY

    from agent.cli import train_main

    return train_main(["--config", SMOKE, "--run-dir", str(run), *TINY, "eval.episodes=0",
                       "plasticity.every=160", "plasticity.states=32", *extra])


@pytest.mark.parametrize("method", ["none", "redo", "shrink_perturb", "reset"])
def test_diagnostics_and_methods_survive_a_stop_and_resume_bit_for_bit(tmp_path, monkeypatch, method):
    """A run stopped by SIGTERM right after its second measurement and resumed writes the same plasticity.csv,
    TensorBoard points and final weights as the same run straight through; the diagnostics leave training
    unchanged (the final weights of `none` match a run with them turned off)."""
    import csv
    import signal

    from agent.checkpoint import load_latest
    from agent.cli import train_main
    from agent.plasticity_monitor import PlasticityMonitor

    extra = [f"plasticity.method={method}", "plasticity.redo_every=20"]
    assert _train(tmp_path / "straight", extra) == 0
    original, calls = PlasticityMonitor.measure, []

    def stop_after_the_second(self, *args, **kwargs):
        result = original(self, *args, **kwargs)
        calls.append(args[0])
        if len(calls) == 2:
            signal.raise_signal(signal.SIGTERM)
        return result

    monkeypatch.setattr(PlasticityMonitor, "measure", stop_after_the_second)
    assert _train(tmp_path / "stopped", extra) == 3
    monkeypatch.setattr(PlasticityMonitor, "measure", original)
    assert train_main(["--resume", str(tmp_path / "stopped")]) == 0
    straight, stopped = ((tmp_path / name / "plasticity.csv").read_bytes() for name in ("straight", "stopped"))
    assert straight == stopped
    rows = list(csv.DictReader(open(tmp_path / "straight" / "plasticity.csv")))
    # Every 160 agent steps and at the 2 switches (every 240), once where both fall on one step.
    assert [(int(r["step"]), r["event"]) for r in rows] == [(160, "every"), (240, "switch"), (320, "every"),
                                                           (480, "every")]
    assert [r["task"] for r in rows][:3] == ["Breakout", "Breakout", "Pong"]
    assert all(0 <= float(r["dormant_tau0.1/all"]) <= 1 and float(r["effective_rank"]) >= 1 for r in rows)
    assert rows[0]["churn/greedy_changed"] == "" and 0 <= float(rows[-1]["churn/greedy_changed"]) <= 1
    weights = [load_latest(tmp_path / name / "checkpoints")[1]["learner"]["online"] for name in ("straight", "stopped")]
    assert all(torch.equal(weights[0][key], weights[1][key]) for key in weights[0])
    # Nothing acts after the run's last task: the last milestone holds the final network (and every
    # milestone the network as it left its task, before a reset or shrink for the next one).
    from agent.checkpoint import list_checkpoints, load_checkpoint

    last = load_checkpoint(list_checkpoints(tmp_path / "straight" / "milestones")[-1])["learner"]["online"]
    assert all(torch.equal(last[key], weights[0][key]) for key in last)
    if method == "none":
        assert _train(tmp_path / "off", ["plasticity.every=null"]) == 0
        assert not (tmp_path / "off" / "plasticity.csv").exists()
        off = load_latest(tmp_path / "off" / "checkpoints")[1]["learner"]["online"]
        assert all(torch.equal(weights[0][key], off[key]) for key in off)
