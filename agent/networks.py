"""Q-networks over stacks of four 84x84 uint8 frames, optionally with per-task gains and biases.

With `num_tasks > 0` (`network.task_params: true`) every layer computes
`y = (W x + b_c) * g_c` for the current task c (Kirkpatrick et al. 2017, Atari): the
weights W are shared by all tasks, each task has its own biases (initialised to 0) and
per-unit gains (per output channel of a convolution, per unit of a linear layer;
initialised to 1). Each task's gains and biases are separate parameters, so a task that
is not being trained gets no gradient (None) and Adam leaves them alone; they are marked
`task_specific`, so consolidation protects the shared weights only. The current task is
set on the network (`set_task`) by whoever owns it: the loop, the evaluator, the probe.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

_ARCHITECTURES = {
    # name: (conv channels, hidden units)
    "nature": ((32, 64, 64), 512),  # Mnih et al. 2015
    "large": ((32, 64, 128), 1024),  # Kirkpatrick et al. 2017, Atari experiments
}


class TaskAffine(nn.Module):
    """`(x + b_c) * g_c` over the channel dimension (dim 1) for the current task c."""

    task_specific = True  # consolidation skips these parameters (agent/fisher.py)

    def __init__(self, features: int, num_tasks: int):
        super().__init__()
        self.biases = nn.ParameterList([nn.Parameter(torch.zeros(features)) for _ in range(num_tasks)])
        self.gains = nn.ParameterList([nn.Parameter(torch.ones(features)) for _ in range(num_tasks)])
        self.task = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = (1, -1) + (1,) * (x.dim() - 2)
        # Cast to the activations' dtype: under bf16 autocast a float32 bias would promote x to float32.
        bias = self.biases[self.task].to(x.dtype).view(shape)
        gain = self.gains[self.task].to(x.dtype).view(shape)
        return (x + bias) * gain

    def extra_repr(self) -> str:
        return f"features={len(self.biases[0])}, tasks={len(self.biases)}"


class QNetwork(nn.Module):
    """Conv 8x8/4, 4x4/2, 3x3/1, one hidden linear layer, one Q-value per action."""

    def __init__(self, num_actions: int, architecture: str = "nature", in_frames: int = 4, num_tasks: int = 0):
        super().__init__()
        if architecture not in _ARCHITECTURES:
            raise ValueError(f"Unknown architecture {architecture!r}: use one of {sorted(_ARCHITECTURES)}.")
        if num_tasks < 0:
            raise ValueError(f"num_tasks must be >= 0 (0: no per-task parameters), got {num_tasks}.")
        (c1, c2, c3), hidden = _ARCHITECTURES[architecture]
        self.num_tasks = num_tasks
        with_bias = num_tasks == 0  # per-task biases replace the shared ones

        def after(features: int) -> list[nn.Module]:
            return [TaskAffine(features, num_tasks)] if num_tasks else []

        layers = [nn.Conv2d(in_frames, c1, 8, stride=4, bias=with_bias), *after(c1), nn.ReLU(),
                  nn.Conv2d(c1, c2, 4, stride=2, bias=with_bias), *after(c2), nn.ReLU(),
                  nn.Conv2d(c2, c3, 3, stride=1, bias=with_bias), *after(c3), nn.ReLU(),
                  nn.Flatten(),
                  nn.Linear(c3 * 7 * 7, hidden, bias=with_bias), *after(hidden), nn.ReLU(),
                  nn.Linear(hidden, num_actions, bias=with_bias), *after(num_actions)]
        self.net = nn.Sequential(*layers)
        # self.net's layers (held in tuples, so not registered twice: the state dict keeps its names);
        # slicing a Sequential on every call would build a new one. The head: the last linear layer
        # and its task parameters.
        head_size = 2 if num_tasks else 1
        self._parts = (tuple(self.net)[:-head_size], tuple(self.net)[-head_size:])
        self._affines = tuple(m for m in self.net if isinstance(m, TaskAffine))

    @property
    def task(self) -> int | None:
        """The current task's index (None without per-task parameters)."""
        return self._affines[0].task if self._affines else None

    def set_task(self, task: int | None) -> None:
        """Use task `task`'s gains and biases from now on (None: leave as is; ignored without task parameters)."""
        if task is None or not self._affines:
            return
        if not 0 <= task < self.num_tasks:
            raise ValueError(f"Task {task} is out of range: the network has parameters for {self.num_tasks} tasks.")
        for affine in self._affines:
            affine.task = task

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """Q-values, always float32: under bf16 autocast the torso runs in bfloat16 but the Q head does not.

        A bfloat16 output has about 2^-8 relative resolution: with |Q| near 10, actions whose
        values differ by less than 0.04 tie, and the greedy action (acting, the Double-DQN
        target, evaluation) would change against float32. The head is one small matmul."""
        # uint8 frames travel to the device as bytes (4x less traffic); scale here.
        x = frames.to(self.net[0].weight.dtype) / 255.0
        torso, head = self._parts
        for layer in torso:
            x = layer(x)
        with torch.autocast(x.device.type, enabled=False):
            x = x.float()
            for layer in head:
                x = layer(x)
            return x


@contextlib.contextmanager
def using_task(network: nn.Module, task: int | None):
    """Run a block with `network` set to `task` (None: unchanged), then restore its task."""
    set_task = getattr(network, "set_task", None)
    if task is None or set_task is None:
        yield network
        return
    previous = network.task
    set_task(task)
    try:
        yield network
    finally:
        set_task(previous)

