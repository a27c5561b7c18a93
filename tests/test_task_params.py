"""Per-task gains and biases (network.task_params): the maths, what trains, what consolidation sees."""

import numpy as np
import torch
import torch.nn.functional as F

from agent.consolidation import Consolidator
from agent.dqn import DQNLearner
from agent.fisher import estimate_fisher, shared_parameters
from agent.networks import QNetwork, using_task
from agent.probe import RetentionProbe
from agent.replay import Batch


def randomised(tasks=3, seed=0):
    """A task network whose gains and biases are all different (they start at 1 and 0)."""
    torch.manual_seed(seed)
    net = QNetwork(18, num_tasks=tasks)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if ".gains." in name:
                p.uniform_(0.5, 1.5)
            elif ".biases." in name:
                p.normal_(0, 0.1)
    return net


def frames(n=6, seed=1):
    return torch.randint(0, 256, (n, 4, 84, 84), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def reference_q(net, x, task):
    """y = (W x + b_c) * g_c layer by layer, written out with the functional ops."""
    p = dict(net.named_parameters())
    h = x.float() / 255.0
    convs = [("net.0", "net.1", 4), ("net.3", "net.4", 2), ("net.6", "net.7", 1)]
    for conv, affine, stride in convs:
        h = F.conv2d(h, p[f"{conv}.weight"], stride=stride)
        h = F.relu((h + p[f"{affine}.biases.{task}"].view(1, -1, 1, 1)) * p[f"{affine}.gains.{task}"].view(1, -1, 1, 1))
    h = h.flatten(1)
    h = F.relu((h @ p["net.10.weight"].T + p[f"net.11.biases.{task}"]) * p[f"net.11.gains.{task}"])
    return (h @ p["net.13.weight"].T + p[f"net.14.biases.{task}"]) * p[f"net.14.gains.{task}"]


def test_every_layer_computes_w_x_plus_task_bias_times_task_gain():
    net, x = randomised(), frames()
    outputs = []
    for task in range(3):
        net.set_task(task)
        outputs.append(net(x))
        torch.testing.assert_close(outputs[-1], reference_q(net, x, task), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(outputs[0], outputs[1])  # the tasks differ
    fresh = QNetwork(18, num_tasks=2)
    assert all(float(p.detach().abs().max()) == 0 for n, p in fresh.named_parameters() if ".biases." in n)
    assert all(bool((p == 1).all()) for n, p in fresh.named_parameters() if ".gains." in n)
    assert all(m.bias is None for m in fresh.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)))


def test_set_task_is_checked_and_using_task_restores():
    net = QNetwork(18, num_tasks=2)
    try:
        net.set_task(2)
    except ValueError as exc:
        assert "out of range" in str(exc) and "2 tasks" in str(exc)
    else:
        raise AssertionError("task 2 of 2 was accepted")
    net.set_task(1)
    with using_task(net, 0):
        assert net.task == 0
    assert net.task == 1
    plain = QNetwork(18)
    assert plain.task is None
    with using_task(plain, 3):  # no task parameters: nothing to select
        pass


def batch(seed=0, n=8):
    rng = torch.Generator().manual_seed(seed)
    return Batch(obs=frames(n, seed), actions=torch.randint(0, 18, (n,), generator=rng),
                 rewards=torch.randn(n, generator=rng), dones=torch.zeros(n), next_obs=frames(n, seed + 100))


def test_training_one_task_leaves_the_other_tasks_parameters_bit_identical():
    torch.manual_seed(0)
    net = QNetwork(18, num_tasks=3)
    learner = DQNLearner(net, 1e-3, 1.5e-4, 0.99, True, 1.0, 10.0, True)
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    for task, seeds in ((0, range(3)), (1, range(3, 6)), (0, range(6, 8))):  # Adam has momentum for task 0
        learner.set_task(task)
        assert learner.target.task == task
        for seed in seeds:
            if task == 1 and seed == 3:  # task 0's moments are non-zero now: they must not leak into updates
                after_task0 = {n: p.detach().clone() for n, p in net.named_parameters()}
            loss, _ = learner.td_loss(batch(seed))
            learner.apply(loss)
        if task == 1:
            for n, p in net.named_parameters():
                if ".0" in n[-2:] and (".gains." in n or ".biases." in n):
                    assert torch.equal(p, after_task0[n]), f"{n} moved while task 1 was trained"
    for n, p in net.named_parameters():
        if n.endswith(".2") and (".gains." in n or ".biases." in n):
            assert torch.equal(p, before[n]), f"{n} of a task never trained moved"
        if n.endswith((".0", ".1")) and (".gains." in n or ".biases." in n):
            assert not torch.equal(p, before[n]), f"{n} was not trained"
        if n.endswith("weight"):
            assert not torch.equal(p, before[n]), f"shared {n} was not trained"


def test_the_fisher_covers_the_shared_weights_only_and_matches_a_per_sample_loop():
    net, x = randomised(), frames(5)
    net.set_task(1)
    shared = shared_parameters(net)
    assert sorted(shared) == ["net.0.weight", "net.10.weight", "net.13.weight", "net.3.weight", "net.6.weight"]
    fisher = estimate_fisher(net, x, "expected", batch_size=2)
    assert sorted(fisher) == sorted(shared)
    reference = {name: torch.zeros_like(p) for name, p in shared.items()}
    for i in range(len(x)):
        log_probs = torch.log_softmax(net(x[i:i + 1])[0], 0)
        for a in range(18):
            grads = torch.autograd.grad(log_probs[a] * log_probs[a].exp().detach().sqrt(), list(shared.values()),
                                        retain_graph=True)
            for name, g in zip(shared, grads):
                reference[name] += g.square() / len(x)
    for name in shared:
        scale = reference[name].abs().max()
        assert scale > 0 and (fisher[name] - reference[name]).abs().max() / scale < 1e-4, name
    # Under another task's gains and biases the Fisher differs: it is taken at the current task.
    net.set_task(0)
    assert not torch.allclose(estimate_fisher(net, x, "expected", batch_size=5)["net.13.weight"],
                              fisher["net.13.weight"])


def test_the_penalty_ignores_task_parameters_and_anchors_shared_weights():
    net = randomised(tasks=2)
    consolidator = Consolidator("l2", lambda_=1.0)
    consolidator.consolidate("A", net)
    assert sorted(consolidator.anchors["A"]["params"]) == sorted(shared_parameters(net))
    with torch.no_grad():
        for n, p in net.named_parameters():
            if ".gains." in n or ".biases." in n:
                p.add_(1.0)
    assert consolidator.penalty(net, current_game="B").item() == 0.0
    with torch.no_grad():
        net.net[0].weight.add_(0.5)
    expected = 0.5 * 0.25 * net.net[0].weight.numel()
    assert abs(consolidator.penalty(net, current_game="B").item() - expected) < 1e-3 * expected


def test_the_probe_measures_each_game_with_the_task_it_was_snapshotted_with():
    net, x = randomised(tasks=2).float(), frames(8)
    probe = RetentionProbe()
    net.set_task(0)
    probe.snapshot("A", net, x)
    net.set_task(1)  # training task 1 now; nothing shared changed
    result = probe.measure(net, current_game="B")["A"]
    assert result == {"agreement": 1.0, "q_drift": 0.0}
    assert net.task == 1
    restored = RetentionProbe()
    restored.load_state_dict(probe.state_dict())
    assert restored.measure(net, current_game="B")["A"]["q_drift"] == 0.0


def test_evaluation_plays_each_game_with_the_task_task_of_names():
    from agent.evaluation import evaluate_games
    from envs import AtariSettings

    net = QNetwork(18, num_tasks=2)
    seen = []

    def task_of(game, frames):
        seen.append((game, frames.shape))
        return {"Breakout": 1, "Pong": 0}[game]

    settings = AtariSettings(max_episode_frames=200)
    results = evaluate_games(net, ["Breakout", "Pong"], 1, 1.0, seed=0, settings=settings, num_envs=1,
                             task_of=task_of)
    assert seen[0] == ("Breakout", (1, 84, 84)) and ("Breakout", (4, 84, 84)) in seen  # then every 4 steps
    assert seen[-1][0] == "Pong"
    assert results["games"]["Breakout"]["task"] == 1 and results["games"]["Pong"]["task"] == 0
    assert net.task == 0  # restored
    assert np.isfinite(results["games"]["Breakout"]["mean"])
