"""Retention probe: forgetting measured on held-out replayed states, without playing.

When a game is left, a few hundred of its replayed states are kept with the
network's Q-values on them. Later, for each such game, the probe reports the
fraction of those states whose greedy action is unchanged and the mean absolute
change of the Q-values. It works the same whatever the consolidation method. With per-task gains and biases the
snapshot remembers which task's parameters it used, and is measured with the same ones.
"""

from __future__ import annotations

import torch
from torch import nn

from agent.networks import using_task


class RetentionProbe:
    def __init__(self):
        # game -> {"states": uint8 (n, 4, 84, 84), "q": float (n, A), and with task parameters "task": the
        # network's task index} at the moment the game was left
        self.snapshots: dict[str, dict[str, torch.Tensor]] = {}

    @torch.no_grad()
    def snapshot(self, game: str, model: nn.Module, states: torch.Tensor, batch_size: int = 256) -> None:
        states = states.cpu()
        self.snapshots[game] = {"states": states, "q": _q_values(model, states, batch_size)}
        if getattr(model, "task", None) is not None:  # the task parameters it was taken with
            self.snapshots[game]["task"] = model.task

    @torch.no_grad()
    def measure(self, model: nn.Module, current_game: str | None = None,
                batch_size: int = 256) -> dict[str, dict[str, float]]:
        """{game: {"agreement": ..., "q_drift": ...}} for every snapshot but the current game's."""
        results = {}
        for game, snap in self.snapshots.items():
            if game == current_game:
                continue
            with using_task(model, snap.get("task")):
                q_now = _q_values(model, snap["states"], batch_size)
            results[game] = {
                "agreement": (q_now.argmax(1) == snap["q"].argmax(1)).float().mean().item(),
                "q_drift": (q_now - snap["q"]).abs().mean().item(),
            }
        return results

    def state_dict(self) -> dict:
        return {"snapshots": self.snapshots}

    def load_state_dict(self, state: dict) -> None:
        self.snapshots = dict(state["snapshots"])


def _q_values(model: nn.Module, states: torch.Tensor, batch_size: int) -> torch.Tensor:
    device = next(model.parameters()).device
    chunks = [model(states[i:i + batch_size].to(device)).float().cpu() for i in range(0, len(states), batch_size)]
    return torch.cat(chunks)
