"""The learner's update as one CUDA graph (`dqn.cuda_graph: true`, CUDA only).

An update of the Nature network at batch 32 is a few hundred small kernels: on a GPU
its cost is launching them from Python, not computing them. Captured once as a CUDA
graph (forward passes, TD loss, the consolidation penalty, backward, gradient clipping,
Adam), an update is a copy of the batch into fixed input tensors and one replay.

The graph reads the networks' parameters, Adam's state and the penalty's anchors where
they lie in memory, so it stays valid when they change in place (updates, the target
sync), and is captured again when the penalty's anchors change (a new game or a new
anchor: `Consolidator.version`). A checkpoint is loaded before the first capture (Adam's
`load_state_dict` replaces its state tensors, which a captured graph would not see).
Each capture starts with one eager update on a side stream, as CUDA graphs require; it
is a real update of the run.
"""

from __future__ import annotations

import dataclasses

import torch

from agent.consolidation import Consolidator
from agent.dqn import DQNLearner
from agent.replay import Batch


def eager_update(learner: DQNLearner, consolidator: Consolidator, batch: Batch,
                 game: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One update; (TD loss, mean Q(s, a), penalty, gradient norm before clipping), detached device scalars."""
    td_loss, q_mean = learner.td_loss(batch)
    penalty = consolidator.penalty(learner.online, current_game=game)
    grad_norm = learner.apply(td_loss + penalty)
    return td_loss.detach(), q_mean, penalty.detach(), grad_norm.detach()


class GraphedUpdate:
    def __init__(self, learner: DQNLearner, consolidator: Consolidator):
        if not learner.capturable:
            raise ValueError("A CUDA-graphed update needs DQNLearner(capturable=True).")
        self.learner, self.consolidator = learner, consolidator
        self.graph: torch.cuda.CUDAGraph | None = None
        self.key: tuple | None = None
        self.inputs: Batch | None = None
        self.outputs: tuple[torch.Tensor, ...] = ()
        self.captures = 0

    def __call__(self, batch: Batch, game: str) -> tuple[torch.Tensor, ...]:
        """One update, as `eager_update`; the returned tensors are overwritten by the next call."""
        # The graph bakes in the task's gains and biases in use at capture (network.task_params).
        key = (game, getattr(self.learner.online, "task", None), self.consolidator.version,
               tuple(batch.actions.shape))
        if self.graph is None or key != self.key:
            return self._capture(batch, game, key)
        for field in dataclasses.fields(Batch):
            getattr(self.inputs, field.name).copy_(getattr(batch, field.name), non_blocking=True)
        self.graph.replay()
        return self.outputs

    def _capture(self, batch: Batch, game: str, key: tuple) -> tuple[torch.Tensor, ...]:
        self.graph = None  # free the old graph's memory pool first
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # the warm-up: a real update, and the penalty's anchors combined
            result = tuple(t.clone() for t in eager_update(self.learner, self.consolidator, batch, game))
        torch.cuda.current_stream().wait_stream(side)
        self.inputs = Batch(*(getattr(batch, f.name).clone() for f in dataclasses.fields(Batch)))
        graph = torch.cuda.CUDAGraph()
        self.learner.optimizer.zero_grad(set_to_none=True)  # the graph's backward writes its own gradients
        with torch.cuda.graph(graph):
            self.outputs = eager_update(self.learner, self.consolidator, self.inputs, game)
        self.graph, self.key = graph, key
        self.captures += 1
        return result
