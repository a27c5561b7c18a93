"""The actor: owns one game's vector env and acts in it.

`act` picks epsilon-greedy actions for the current observations, `send` starts the
emulators on them (they step in ale-py's C++ threads), `recv` waits for the step and
returns it as the replay stores it. Between `send` and `recv` the caller is free: the
trainer runs the learner's updates there, so emulation and learning overlap. The actor
knows nothing of the replay or the learner.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from agent.dqn import epsilon_greedy
from envs import NUM_ACTIONS, AtariSettings, make_vector_env


@dataclass
class Transitions:
    """One vector step: obs[e] --actions[e]--> next_obs[e] for the envs in `real`."""

    obs: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    dones: np.ndarray  # stop bootstrapping: termination, or a lost life when configured
    episode_over: np.ndarray  # terminated or truncated
    next_obs: np.ndarray
    real: np.ndarray  # False for the autoreset step, which is no transition
    ended_returns: np.ndarray  # returns and lengths of the episodes that ended at this step
    ended_lengths: np.ndarray


class Actor:
    def __init__(self, game: str, num_envs: int, settings: AtariSettings, network: nn.Module,
                 rng: np.random.Generator, *, backend: str = "ale_vector", num_threads: int = 0,
                 life_loss_terminal: bool = False, bf16: bool = False):
        self.env = make_vector_env(game, num_envs, settings, backend, num_threads)
        self.num_envs = num_envs
        self.network = network
        self.device = next(network.parameters()).device
        self.rng = rng
        self.life_loss_terminal = life_loss_terminal
        self.bf16 = bf16
        self.obs: np.ndarray | None = None
        self._actions: np.ndarray | None = None

    def reset(self, seed: int) -> None:
        self.obs = self.env.reset(seed=seed)
        self.lives = np.zeros(self.num_envs, dtype=np.int64)
        self.returns = np.zeros(self.num_envs)
        self.lengths = np.zeros(self.num_envs, dtype=np.int64)

    def act(self, epsilon: float) -> np.ndarray:
        """Epsilon-greedy actions for the current observations (Q-values and argmax in float32)."""
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            return epsilon_greedy(self.network, self.obs, epsilon, self.rng, self.device, NUM_ACTIONS)

    def send(self, actions: np.ndarray) -> None:
        self._actions = actions
        self.env.send(actions)

    def recv(self) -> Transitions:
        step = self.env.recv()
        real = ~step.was_reset
        episode_over = step.terminated | step.truncated
        dones = step.terminated | (self.life_loss_terminal & (step.lives < self.lives) & real)
        self.returns += np.where(real, step.reward, 0.0)
        self.lengths += real
        ended_returns, ended_lengths = self.returns[episode_over], self.lengths[episode_over]
        self.returns[episode_over], self.lengths[episode_over] = 0.0, 0
        transitions = Transitions(self.obs, self._actions, step.reward, dones, episode_over, step.obs, real,
                                  ended_returns, ended_lengths)
        self.obs, self.lives = step.obs, step.lives
        return transitions

    def close(self) -> None:
        self.env.close()
