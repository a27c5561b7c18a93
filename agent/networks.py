"""Q-networks over stacks of four 84x84 uint8 frames."""

from __future__ import annotations

import torch
from torch import nn

_ARCHITECTURES = {
    # name: (conv channels, hidden units)
    "nature": ((32, 64, 64), 512),  # Mnih et al. 2015
    "large": ((32, 64, 128), 1024),  # Kirkpatrick et al. 2017, Atari experiments
}


class QNetwork(nn.Module):
    """Conv 8x8/4, 4x4/2, 3x3/1, one hidden linear layer, one Q-value per action."""

    def __init__(self, num_actions: int, architecture: str = "nature", in_frames: int = 4):
        super().__init__()
        if architecture not in _ARCHITECTURES:
            raise ValueError(f"Unknown architecture {architecture!r}: use one of {sorted(_ARCHITECTURES)}.")
        (c1, c2, c3), hidden = _ARCHITECTURES[architecture]
        self.net = nn.Sequential(
            nn.Conv2d(in_frames, c1, 8, stride=4),
            nn.ReLU(),
            nn.Conv2d(c1, c2, 4, stride=2),
            nn.ReLU(),
            nn.Conv2d(c2, c3, 3, stride=1),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(c3 * 7 * 7, hidden),
            nn.ReLU(),
            nn.Linear(hidden, num_actions),
        )
        # self.net's layers (held in a tuple, so not registered twice: the state dict keeps its names);
        # slicing a Sequential on every call would build a new one.
        self._parts = (tuple(self.net)[:-1], self.net[-1])

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
            return head(x.float())
