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


def _trajectory(learner, consolidator, update, batches):
    """(TD loss, penalty) of every update, with a new anchor half-way (a game switch: a recapture)."""
    out = []
    for i, batch in enumerate(batches):
        if i == len(batches) // 2:
            consolidator.consolidate("a", learner.online)
        if i % 10 == 9:
            learner.sync_target()
        td_loss, _, penalty = update(batch, "b" if i >= len(batches) // 2 else "a")
        out.append((float(td_loss), float(penalty)))
    return np.array(out)


@cuda
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_graphed_updates_follow_the_eager_ones_through_a_new_anchor(precision):
    """Two eager runs on the GPU differ already (cuDNN's backward kernels add in a varying order, and Adam
    amplifies it: about 0.4% after 20 updates on an H200); the graphed run must stay within that noise,
    where a stale input, anchor or gradient would put it off by orders of magnitude."""
    device = torch.device("cuda")
    batches = list(_batches(40, device))
    runs = []
    for graphed in (False, False, True):
        learner, consolidator = _learner(device, graphed, precision), Consolidator("l2", lambda_=5.0)
        update = GraphedUpdate(learner, consolidator) if graphed else \
            (lambda batch, game, learner=learner, consolidator=consolidator:
             eager_update(learner, consolidator, batch, game))
        runs.append(_trajectory(learner, consolidator, update, batches))
    assert update.captures == 2
    eager, eager_again, graphed = runs
    assert graphed[21:, 1].min() > 0 and graphed[:21, 1].max() == 0  # on once the weights left the new anchor
    noise = np.abs(eager_again - eager).max(axis=0) / np.abs(eager).max(axis=0)
    off = np.abs(graphed - eager).max(axis=0) / np.abs(eager).max(axis=0)
    floor = 1e-2 if precision == "fp32" else 3e-2
    assert (off <= np.maximum(5 * noise, floor)).all(), (off, noise)


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


@cuda
def test_graphed_updates_with_task_parameters_leave_the_other_tasks_untouched():
    """Task 0, then 1, then 0 again under the graph: each change of task is a recapture; the task not being
    trained keeps its gains and biases bit for bit (no stale gradient in the graph, no Adam step on them)."""
    device = torch.device("cuda")
    torch.manual_seed(0)
    learner = DQNLearner(QNetwork(18, num_tasks=2).to(device), 1e-3, 1.5e-4, 0.99, True, 1.0, 10.0, True,
                         capturable=True)
    update = GraphedUpdate(learner, Consolidator("none"))
    batches = list(_batches(15, device))

    def task_params(task):
        return {n: p.detach().clone() for n, p in learner.online.named_parameters() if n.endswith(f"s.{task}")}
    for task, chunk in ((0, batches[:5]), (1, batches[5:10]), (0, batches[10:])):
        learner.set_task(task)
        other = task_params(1 - task)
        mine = task_params(task)
        for batch in chunk:
            update(batch, f"game{task}")
        torch.cuda.synchronize()
        assert all(torch.equal(value, task_params(1 - task)[n]) for n, value in other.items()), task
        assert any(not torch.equal(value, task_params(task)[n]) for n, value in mine.items()), task
    assert update.captures == 3
