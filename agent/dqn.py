"""DQN loss, learner and epsilon-greedy actor."""

from __future__ import annotations

import copy
import inspect
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from agent.replay import Batch


def td_targets(rewards: torch.Tensor, dones: torch.Tensor, next_q_online: torch.Tensor,
               next_q_target: torch.Tensor, gamma: float, double_dqn: bool) -> torch.Tensor:
    """r + gamma (1 - done) Q_target(s', a*), a* = argmax Q_online(s') (Double DQN) or argmax Q_target(s')."""
    chooser = next_q_online if double_dqn else next_q_target
    best = chooser.argmax(dim=1, keepdim=True)
    next_value = next_q_target.gather(1, best).squeeze(1)
    return rewards + gamma * (1.0 - dones) * next_value


def per_sample_td_loss(q_values: torch.Tensor, actions: torch.Tensor, targets: torch.Tensor,
                       huber_delta: float) -> torch.Tensor:
    """Huber loss of Q(s, a) against fixed targets, one value per sample."""
    chosen = q_values.gather(1, actions.unsqueeze(1)).squeeze(1)
    return F.huber_loss(chosen, targets, reduction="none", delta=huber_delta)


NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # /proc/cpuinfo flags of CPUs that compute bfloat16 natively


def cpu_flags() -> set[str]:
    """The CPU's feature flags as Linux lists them (empty where /proc/cpuinfo cannot be read)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            return set(line.partition(":")[2].split())
    return set()


def choose_precision(requested: str, device_type: str, flags: set[str] | None = None) -> tuple[str, str]:
    """The precision a run uses, and why. `auto` takes bf16 only where it is measured faster: on a CPU with
    native bfloat16 (AVX512-BF16 or AMX: about 2x fp32 for the update); elsewhere fp32 (a CPU without them
    emulates bfloat16: 0.79x fp32 measured with AVX512F, 0.09x with AVX2 only; on an H200 at batch 32, bf16 is no
    faster)."""
    if requested in ("fp32", "bf16"):
        return requested, "set in the config"
    if requested != "auto":
        raise ValueError(f"Unknown precision {requested!r}: use 'auto', 'fp32' or 'bf16'.")
    if device_type != "cpu":
        return "fp32", f"auto: {device_type} (bf16 no faster at the default batch size)"
    native = sorted(set(NATIVE_BF16_FLAGS) & (cpu_flags() if flags is None else flags))
    if native:
        return "bf16", f"auto: the CPU computes bfloat16 natively ({', '.join(native)})"
    return "fp32", "auto: the CPU has no native bfloat16 (no avx512_bf16 or amx_bf16 flag), where it is emulated"


class DQNLearner:
    """Online and target Q-networks with Adam; one `apply(loss)` per update."""

    def __init__(self, network: nn.Module, learning_rate: float, adam_eps: float, gamma: float,
                 double_dqn: bool, huber_delta: float, max_grad_norm: float, clip_rewards: bool,
                 precision: str = "fp32", capturable: bool = False):
        if precision not in ("fp32", "bf16"):
            raise ValueError(f"Unknown precision {precision!r}: use 'fp32' or 'bf16'.")
        self.online = network
        self.target = copy.deepcopy(network).requires_grad_(False)
        self.gamma = gamma
        self.double_dqn = double_dqn
        self.huber_delta = huber_delta
        self.max_grad_norm = max_grad_norm
        self.clip_rewards = clip_rewards
        device = next(network.parameters()).device
        # bf16 autocast runs the convolutions and matmuls of the update in bfloat16 (weights,
        # optimiser state and losses stay float32): about 2x faster on CPUs with AVX512-BF16
        # or AMX and on GPUs with tensor cores.
        self.device_type, self.bf16 = device.type, precision == "bf16"
        # The fused kernel does the whole Adam step in one pass (about 10% of an update on CPU).
        fused = "fused" in inspect.signature(torch.optim.Adam).parameters and device.type in ("cuda", "cpu")
        # capturable: Adam's step counts live on the GPU, so the step can be captured in a CUDA graph.
        self.capturable = capturable
        self.optimizer = torch.optim.Adam(network.parameters(), lr=learning_rate, eps=adam_eps,
                                          **({"fused": True} if fused else {}),
                                          **({"capturable": True} if capturable else {}))

    def _autocast(self) -> torch.autocast:
        # A CUDA graph cannot keep autocast's cache of cast weights (they would be stale on replay).
        return torch.autocast(self.device_type, dtype=torch.bfloat16, enabled=self.bf16,
                              cache_enabled=False if self.capturable else None)

    def targets(self, batch: Batch) -> torch.Tensor:
        rewards = batch.rewards.clamp(-1.0, 1.0) if self.clip_rewards else batch.rewards
        with torch.no_grad(), self._autocast():
            next_q_target = self.target(batch.next_obs).float()
            next_q_online = self.online(batch.next_obs).float() if self.double_dqn else next_q_target
        return td_targets(rewards, batch.dones, next_q_online, next_q_target, self.gamma, self.double_dqn)

    def td_loss(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean TD loss, mean Q(s, a) of the batch)."""
        with self._autocast():
            q_values = self.online(batch.obs).float()
        losses = per_sample_td_loss(q_values, batch.actions, self.targets(batch), self.huber_delta)
        return losses.mean(), q_values.detach().gather(1, batch.actions.unsqueeze(1)).mean()

    def apply(self, loss: torch.Tensor) -> torch.Tensor:
        """One optimiser step on `loss`; returns the gradient norm before clipping."""
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = nn.utils.clip_grad_norm_(self.online.parameters(), self.max_grad_norm)
        self.optimizer.step()
        return grad_norm

    def set_task(self, task: int | None) -> None:
        """Select task `task`'s gains and biases in both networks (None, or no task parameters: no change)."""
        for network in (self.online, self.target):
            if hasattr(network, "set_task"):
                network.set_task(task)

    def sync_target(self) -> None:
        self.target.load_state_dict(self.online.state_dict())

    def state_dict(self) -> dict:
        return {"online": self.online.state_dict(), "target": self.target.state_dict(),
                "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.online.load_state_dict(state["online"])
        self.target.load_state_dict(state["target"])
        self.optimizer.load_state_dict(state["optimizer"])


def linear_epsilon(step: int, start: float, end: float, decay_steps: int) -> float:
    fraction = min(step / decay_steps, 1.0)
    return start + fraction * (end - start)


@torch.no_grad()
def epsilon_greedy(network: nn.Module, obs: np.ndarray, epsilon: float, rng: np.random.Generator,
                   device: torch.device, num_actions: int) -> np.ndarray:
    """One action per env: greedy in Q, uniform with probability epsilon."""
    explore = rng.random(len(obs)) < epsilon
    random_actions = rng.integers(num_actions, size=len(obs))
    if explore.all():  # skip the forward pass while acting at random
        return random_actions
    greedy = network(torch.from_numpy(obs).to(device)).argmax(dim=1).cpu().numpy()
    return np.where(explore, random_actions, greedy)
