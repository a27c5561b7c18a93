"""Which task the agent is on: the schedule's label, or a context inferred without labels.

The loop asks this module for a task *key* wherever it used the game's name: the key
chooses the replay buffer, the anchors (active, and refreshed at a switch), the probe's
snapshot and, with `network.task_params`, the network's gains and biases (`index`).

- labels: the key is the game; its index is the game's place in schedule.games.
- fmn: the agent is not told the game. A Forget-Me-Not process (agent/task_inference.py)
  reads one frame of env 0 per vector step and decides a context every `fmn.window`
  frames; the key is "context<N>", the index N. The true game is only logged: every
  change of context and every true switch is a row of the run's contexts.csv (see
  `task_inference_summary` for what is measured from it).
"""

from __future__ import annotations

import numpy as np
import torch

from agent.config import TrainConfig, validate_config
from agent.networks import QNetwork
from agent.task_inference import ForgetMeNot

CONTEXTS_COLUMNS = ("step", "visit", "game", "context", "event")  # event: visit, switch, new


def context_key(context: int) -> str:
    return f"context{context}"


def context_of(key: str) -> int:
    return int(key.removeprefix("context"))


def network_from_state(state: dict, device: torch.device | str = "cpu") -> tuple[QNetwork, Tasks]:
    """The online network of a checkpoint or milestone (with its task slots), and the Tasks saying which slot plays
    each game (pass `tasks.task_of` to evaluation)."""
    from envs import NUM_ACTIONS

    config = validate_config(state["config"], stored=True)
    tasks = Tasks(config)
    tasks.load_state_dict(state.get("tasks", {}))
    network = QNetwork(NUM_ACTIONS, config.network.architecture, num_tasks=tasks.num_tasks).to(device)
    network.load_state_dict(state["learner"]["online"])
    task = state["progress"].get("task")
    if task:
        network.set_task(tasks.index(task))
    return network.eval(), tasks


class Tasks:
    def __init__(self, config: TrainConfig):
        self.games = list(config.schedule.games)
        self.inferred = config.task_inference == "fmn"
        fmn = config.fmn
        self.fmn = ForgetMeNot(levels=fmn.levels, window=fmn.window, alpha=fmn.alpha,
                               switch_prior=fmn.switch_prior, max_contexts=fmn.max_contexts,
                               new_context_margin=fmn.new_context_margin) if self.inferred else None
        slots = fmn.max_contexts if self.inferred else len(self.games)
        self.num_tasks = slots if config.network.task_params else 0  # network slots (0: no task parameters)

    def first_key(self, game: str) -> str:
        """The key of a run's first steps: the game, or the first context (the first decision creates it)."""
        return context_key(0) if self.inferred else game

    def index(self, key: str) -> int | None:
        """The network's task slot for `key` (None without task parameters)."""
        if not self.num_tasks:
            return None
        return context_of(key) if self.inferred else self.games.index(key)

    def observe(self, frame: np.ndarray) -> str | None:
        """fmn: feed one frame; the decided context's key every window, else None. labels: always None."""
        if self.fmn is None:
            return None
        context = self.fmn.observe(frame)
        return None if context is None else context_key(context)

    @property
    def num_contexts(self) -> int:
        return self.fmn.num_contexts if self.fmn is not None else len(self.games)

    def task_of(self, game: str, frames: np.ndarray) -> int | None:
        """The task slot that plays `game` in an evaluation: the label's, or the context the frozen FMN infers
        from `frames` (M, 84, 84), the newest frames of the envs (no update, no new context)."""
        if not self.num_tasks:
            return None
        if self.fmn is None:
            self.check_evaluable([game])
            return self.games.index(game)
        if self.fmn.num_contexts == 0:
            return 0
        return self.fmn.infer(np.asarray(frames))

    def check_evaluable(self, games: list[str]) -> None:
        """With task parameters chosen by label, only the schedule's games have parameters of their own."""
        unknown = [game for game in games if game not in self.games]
        if self.num_tasks and self.fmn is None and unknown:
            raise ValueError(f"{', '.join(unknown)} {'is' if len(unknown) == 1 else 'are'} not in this run's schedule "
                             f"{self.games}: with network.task_params and task_inference: labels a game has gains "
                             "and biases only if it was trained. Evaluate games of the schedule (with "
                             "task_inference: fmn any game is played with the context inferred for it).")

    def state_dict(self) -> dict:
        """Tensors and Python scalars only: checkpoints are loaded with torch.load(weights_only=True)."""
        return {"fmn": _as_tensors(self.fmn.state_dict())} if self.fmn is not None else {}

    def load_state_dict(self, state: dict) -> None:
        if self.fmn is not None:
            self.fmn.load_state_dict(_as_arrays(state["fmn"]))


def _as_tensors(value):
    if isinstance(value, dict):
        return {key: _as_tensors(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_as_tensors(item) for item in value)
    if isinstance(value, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(value))
    return value.item() if isinstance(value, np.generic) else value


def _as_arrays(value):
    if isinstance(value, dict):
        return {key: _as_arrays(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_as_arrays(item) for item in value)
    return value.numpy() if isinstance(value, torch.Tensor) else value


def task_inference_summary(rows: list[dict], final_step: int) -> dict:
    """Detection delay, purity and contexts created, from contexts.csv's rows (dicts of CONTEXTS_COLUMNS).

    - delay: agent steps from each true switch (a `visit` row after the first) to the first
      change of context after it. A change logged at step S was decided on the frames of the vector
      step that ended at S, so one at exactly a switch's step still saw the old game: detections of
      the switch at V are the changes at V < S <= the next switch (or the end). A switch with no
      change in that window is missed (the last one: not detected by the end of the log).
    `final_step`: where the run ended (at least the last row's step).
    - purity: the fraction of steps whose context is mapped to the true game, mapping each
      context to the game it spent most steps on.
    - contexts vs games: contexts created against distinct games visited.
    """
    events = sorted(((int(r["step"]), r) for r in rows), key=lambda item: item[0])
    visits = [(step, r["game"]) for step, r in events if r["event"] == "visit"]
    changes = [(step, r["context"]) for step, r in events if r["event"] in ("switch", "new")]
    if not visits:
        return {}
    final_step = max(final_step, events[-1][0])
    visits = visits[:1] + [(step, game) for step, game in visits[1:] if step < final_step]  # none at the very end
    # Steps per (context, game): walk the step axis through both sequences of changes.
    boundaries = sorted({s for s, _ in visits} | {s for s, _ in changes} | {final_step})
    steps: dict[tuple[str, str], int] = {}
    for start, end in zip(boundaries, boundaries[1:]):
        game = _last_before(visits, start)
        context = _last_before(changes, start) or "context0"
        if game is not None and end > start:
            steps[(context, game)] = steps.get((context, game), 0) + end - start
    total = sum(steps.values())
    best: dict[str, int] = {}
    for (context, _game), count in steps.items():
        best[context] = max(best.get(context, 0), count)
    delays, missed = [], 0
    for (switch_step, _), following in zip(visits[1:], visits[2:] + [(final_step, None)]):
        detected = [step for step, _ in changes if switch_step < step <= following[0]]
        if detected:
            delays.append(detected[0] - switch_step)
        else:
            missed += 1
    contexts = {context for _, context in changes} | {"context0"}
    return {
        "switches": len(visits) - 1,
        "detected": len(delays),
        "missed": missed,
        "median_delay_steps": float(np.median(delays)) if delays else None,
        "max_delay_steps": max(delays) if delays else None,
        "purity": sum(best.values()) / total if total else None,
        "contexts_created": len(contexts),
        "games_visited": len({game for _, game in visits}),
        "context_changes": len(changes),
        "steps_per_context_game": {f"{c}/{g}": n for (c, g), n in sorted(steps.items())},
    }


def _last_before(changes: list[tuple[int, str]], step: int) -> str | None:
    value = None
    for when, what in changes:
        if when > step:
            break
        value = what
    return value
