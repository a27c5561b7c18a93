"""The CUDA-graphed update against the eager one (runs where CUDA is available)."""

import copy

import numpy as np
import pytest
import torch

from agent.consolidation import Consolidator
from agent.dqn import DQNLearner
from agent.graphed import GraphedUpdate, eager_update
from agent.networks import QNetwork
from agent.replay import Batch

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def _batches(n, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    for _ in range(n):
        frames = lambda: torch.randint(0, 256, (32, 4, 84, 84), dtype=torch.uint8, generator=g)  # noqa: E731
        yield Batch(frames().to(device), torch.randint(0, 18, (32,), generator=g).to(device),
                    torch.randn(32, generator=g).to(device), (torch.rand(32, generator=g) < 0.1).float().to(device),
                    frames().to(device))


def _learner(device, capturable, precision="fp32"):
    torch.manual_seed(0)
    return DQNLearner(QNetwork(18).to(device), 1e-3, 1.5e-4, 0.99, True, 1.0, 10.0, True, precision,
                      capturable=capturable)


def test_graphed_update_needs_a_capturable_learner():
    with pytest.raises(ValueError, match="capturable"):
        GraphedUpdate(_learner("cpu", False), Consolidator("none"))


@cuda
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_graphed_updates_follow_the_eager_ones_through_a_new_anchor(precision):
    device = torch.device("cuda")
    eager, graphed = _learner(device, False, precision), _learner(device, True, precision)
    cons_eager, cons_graphed = Consolidator("l2", lambda_=5.0), Consolidator("l2", lambda_=5.0)
    update = GraphedUpdate(graphed, cons_graphed)
    losses = []
    for i, batch in enumerate(_batches(40, device)):
        if i == 20:  # a game switch: a new anchor, a recapture
            cons_eager.consolidate("a", eager.online)
            cons_graphed.consolidate("a", graphed.online)
        if i % 10 == 9:
            eager.sync_target()
            graphed.sync_target()
        game = "b" if i >= 20 else "a"
        a = eager_update(eager, cons_eager, batch, game)
        b = update(batch, game)
        losses.append((float(a[0]), float(b[0]), float(a[2]), float(b[2])))
    assert update.captures == 2
    losses = np.array(losses)
    tol = 1e-4 if precision == "fp32" else 2e-2
    np.testing.assert_allclose(losses[:, 1], losses[:, 0], rtol=tol, atol=tol)
    np.testing.assert_allclose(losses[:, 3], losses[:, 2], rtol=tol, atol=tol)
    assert losses[20:, 2].max() > 0  # the penalty was on after the switch
    for p, q in zip(eager.online.parameters(), graphed.online.parameters()):
        torch.testing.assert_close(q, p, rtol=tol * 10, atol=tol)


@cuda
def test_graphed_state_survives_a_checkpoint_round_trip():
    device = torch.device("cuda")
    learner = _learner(device, True)
    update = GraphedUpdate(learner, Consolidator("none"))
    batches = list(_batches(6, device))
    for batch in batches[:3]:
        update(batch, "a")
    state = copy.deepcopy({k: v for k, v in learner.state_dict().items()})
    restored = _learner(device, True)
    restored.load_state_dict(state)  # in place: a captured graph keeps reading the same tensors
    update2 = GraphedUpdate(restored, Consolidator("none"))
    for batch in batches[3:]:
        a, b = update(batch, "a"), update2(batch, "a")
        torch.testing.assert_close(b[0], a[0], rtol=1e-4, atol=1e-5)
