"""Play full episodes with a Q-network, vectorised, reproducibly.

Each env plays a fixed share of the episodes (env i plays episodes i, i+N, ...), so
the mean is not biased toward short episodes, which finish first. Raw game scores,
the training protocol's preprocessing and sticky actions, no life-loss signal.

With per-task gains and biases, `task_of(game, frames)` says which task's parameters
play the game: the schedule's index of the game (labels), or the context a frozen
task-inference model infers from the newest frames (agent/tasks.py). It is asked again
every `TASK_WINDOW` steps with the frames of all envs since the last time, as the agent
in training would switch its parameters with its inferred context (a game such as Krull
has scenes that look like different contexts).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from agent.dqn import epsilon_greedy
from agent.networks import using_task
from envs import NUM_ACTIONS, AtariSettings, derive_seed, human_normalized_score, make_vector_env

TASK_WINDOW = 4  # vector steps between two inferences of the task (FMN's window)


def play_episodes(network: nn.Module, game: str, episodes: int, epsilon: float = 0.05, seed: int = 0,
                  settings: AtariSettings | None = None, num_envs: int = 8, backend: str = "ale_vector",
                  on_episode: Callable[[str, int], None] | None = None,
                  poll: Callable[[], None] | None = None,
                  task_of: Callable[[str, np.ndarray], int | None] | None = None) -> dict:
    """{"returns": [...], "lengths": [...], "capped": episodes cut by the frame cap, "task": the task that
    played most steps, or None} of `episodes` complete episodes of `game`.

    `seed` is any non-negative integer (the env seed is derived from it into ale-py's range);
    `on_episode(game, finished)` is called at the start and after every finished episode;
    `poll()` before every step, and it may raise to abandon the evaluation (a stop signal).
    """
    if episodes <= 0:
        raise ValueError(f"episodes must be positive, got {episodes}.")
    if num_envs <= 0:
        raise ValueError(f"num_envs must be positive, got {num_envs}.")
    num_envs = min(num_envs, episodes)
    quota = np.array([len(range(i, episodes, num_envs)) for i in range(num_envs)])
    device = next(network.parameters()).device
    rng = np.random.default_rng(seed)
    env = make_vector_env(game, num_envs, settings or AtariSettings(), backend=backend)
    returns, lengths, capped = [], [], 0
    try:
        if on_episode is not None:
            on_episode(game, 0)
        obs = env.reset(seed=derive_seed(seed))
        recent = [obs[:, -1]]  # the newest frame of each env since the task was last inferred
        task = task_of(game, recent[0]) if task_of is not None else None
        task_steps: dict[int, int] = {}
        finished = np.zeros(num_envs, dtype=np.int64)
        running = np.zeros(num_envs)
        running_len = np.zeros(num_envs, dtype=np.int64)
        while (finished < quota).any():
            if poll is not None:
                poll()
            with using_task(network, task):
                actions = epsilon_greedy(network, obs, epsilon, rng, device, NUM_ACTIONS)
            if task is not None:
                task_steps[task] = task_steps.get(task, 0) + 1
            step = env.step(actions)
            counting = ~step.was_reset & (finished < quota)
            running += np.where(counting, step.reward, 0.0)
            running_len += counting
            for e in np.flatnonzero((step.terminated | step.truncated) & counting):
                returns.append(float(running[e]))
                lengths.append(int(running_len[e]))
                capped += bool(step.truncated[e] and not step.terminated[e])
                finished[e] += 1
                running[e], running_len[e] = 0.0, 0
                if on_episode is not None:
                    on_episode(game, len(returns))
            obs = step.obs
            if task_of is not None:
                recent.append(obs[:, -1])
                if len(recent) == TASK_WINDOW:
                    task = task_of(game, np.concatenate(recent))
                    recent.clear()
    finally:
        env.close()
    most = max(task_steps, key=task_steps.get) if task_steps else None  # ties: the first used
    return {"returns": returns, "lengths": lengths, "capped": capped, "task": most}


def summarize(game: str, returns: list[float], capped: int = 0) -> dict[str, float]:
    values = np.asarray(returns, dtype=np.float64)
    mean = float(values.mean())
    hns = human_normalized_score(game, mean)
    return {
        "mean": mean,
        "std": float(values.std()),
        "median": float(np.median(values)),
        "min": float(values.min()),
        "max": float(values.max()),
        "episodes": int(len(values)),
        "capped_episodes": int(capped),  # ended by the frame cap, not by the game: their returns are cut short
        "human_normalized": None if math.isnan(hns) else hns,
    }


@torch.no_grad()
def evaluate_games(network: nn.Module, games: list[str], episodes: int, epsilon: float, seed: int,
                   settings: AtariSettings | None = None, num_envs: int = 8,
                   on_episode: Callable[[str, int], None] | None = None,
                   poll: Callable[[], None] | None = None,
                   task_of: Callable[[str, np.ndarray], int | None] | None = None) -> dict:
    """The JSON-ready summary of every game (with the task index that played it), plus the mean
    human-normalised score.

    Game i plays with the seed derived from (seed, i): any non-negative `seed` is valid."""
    results = {}
    for index, game in enumerate(games):
        played = play_episodes(network, game, episodes, epsilon, derive_seed(seed, index), settings, num_envs,
                               on_episode=on_episode, poll=poll, task_of=task_of)
        results[game] = summarize(game, played["returns"], played["capped"])
        if played["task"] is not None:
            results[game]["task"] = played["task"]
    normalised = [r["human_normalized"] for r in results.values() if r["human_normalized"] is not None]
    return {"games": results, "mean_human_normalized": float(np.mean(normalised)) if normalised else None}
