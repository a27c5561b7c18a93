"""Which task the agent is on: the schedule's label, or a context inferred without labels.

The loop asks this module for a task *key* wherever it used the game's name: the key
chooses the replay buffer, the anchors (active, and refreshed at a switch), the probe's
snapshot and, with `network.task_params`, the network's gains and biases (`index`).

- labels: the key is the game; its index is the game's place in schedule.games.
- fmn: the agent is not told the game. A Forget-Me-Not process (agent/task_inference.py)
  reads the newest frame of env 0 (or of every env, fmn.envs: all) per vector step and
  decides a context every `fmn.window` frames; the key is "context<N>", the index N. The true game is only logged: every
  change of context and every true switch is a row of the run's contexts.csv (see
  `task_inference_summary` for what is measured from it).
"""

from __future__ import annotations

import numpy as np
import torch

from agent.config import FMNConfig, TrainConfig, validate_config
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


def build_fmn(fmn: FMNConfig, num_envs: int) -> ForgetMeNot:
    """The Forget-Me-Not process of a run: fmn.max_count is in vector steps, the model's in frames."""
    frames_per_step = num_envs if fmn.envs == "all" else 1
    return ForgetMeNot(**fmn.model_dump(exclude={"envs", "max_count"}), max_count=fmn.max_count * frames_per_step)


def feed(fmn: ForgetMeNot, frames: np.ndarray, every_env: bool) -> int | None:
    """One vector step's newest frames (num_envs, H, W): env 0's, or every env's in order, to Forget-Me-Not; the
    context it decided last if a window completed, else None."""
    decided = None
    for frame in (frames if every_env else frames[:1]):
        context = fmn.observe(frame)
        decided = decided if context is None else context
    return decided


class Tasks:
    def __init__(self, config: TrainConfig):
        self.games = list(config.schedule.games)
        self.inferred = config.task_inference == "fmn"
        fmn = config.fmn
        self.observe_all = fmn.envs == "all"
        self.fmn = build_fmn(fmn, config.env.num_envs) if self.inferred else None
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

    def observe(self, frames: np.ndarray) -> str | None:
        """fmn: feed the newest frames of the envs (num_envs, 84, 84), env 0's or all of them (fmn.envs); the key
        of the context decided last when a window completes, else None. labels: always None."""
        if self.fmn is None:
            return None
        decided = feed(self.fmn, frames, self.observe_all)
        return None if decided is None else context_key(decided)

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
    - splits: per game, the contexts that hold at least `SHARE` of its steps (1 when the game has one
      context); merges: games whose main context (the one holding most of their steps) is the same.
    - nmi: normalised mutual information between context and game over the steps (the arithmetic-mean
      normalisation, as scikit-learn's default): 1 when contexts and games match one to one.
    - spurious changes per visit: context changes within a visit beyond the one its true switch needs
      (a visit after a switch may make one change for free; the first visit none).
    - revisits recognised: per game visited more than once, whether all its visits have the same main
      context.
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
    per_visit: dict[tuple[int, str], int] = {}  # steps per (visit number, context)
    for start, end in zip(boundaries, boundaries[1:]):
        game = _last_before(visits, start)
        context = _last_before(changes, start) or "context0"
        if game is not None and end > start:
            steps[(context, game)] = steps.get((context, game), 0) + end - start
            number = sum(1 for step, _ in visits if step <= start) - 1
            per_visit[(number, context)] = per_visit.get((number, context), 0) + end - start
    total = sum(steps.values())
    best: dict[str, int] = {}
    for (context, _game), count in steps.items():
        best[context] = max(best.get(context, 0), count)
    # A true switch is a visit of another game than the visit before (a game repeated is not one).
    switched = [False] + [game != visits[i - 1][1] for i, (_, game) in enumerate(visits) if i]
    delays, missed = [], 0
    for (switch_step, _), following, changed in zip(visits[1:], visits[2:] + [(final_step, None)], switched[1:]):
        if not changed:
            continue
        detected = [step for step, _ in changes if switch_step < step <= following[0]]
        if detected:
            delays.append(detected[0] - switch_step)
        else:
            missed += 1
    contexts = {context for _, context in changes} | {"context0"}
    spurious = []
    for number, ((start, _), (end, _)) in enumerate(zip(visits, visits[1:] + [(final_step, None)])):
        made = sum(1 for step, _ in changes if start < step <= end) if number else \
            sum(1 for step, _ in changes if step <= end)
        spurious.append(max(made - (1 if switched[number] else 0), 0))
    return {
        "switches": sum(switched),
        "detected": len(delays),
        "missed": missed,
        "median_delay_steps": float(np.median(delays)) if delays else None,
        "max_delay_steps": max(delays) if delays else None,
        "purity": sum(best.values()) / total if total else None,
        "contexts_created": len(contexts),
        "games_visited": len({game for _, game in visits}),
        "context_changes": len(changes),
        "steps_per_context_game": {f"{c}/{g}": n for (c, g), n in sorted(steps.items())},
        **overlap(steps),
        "revisits_recognised": _revisits_recognised(visits, per_visit),
        "spurious_changes_per_visit": float(np.mean(spurious)) if spurious else None,
        "max_spurious_changes_in_a_visit": max(spurious) if spurious else None,
    }


def _revisits_recognised(visits: list[tuple[int, str]], per_visit: dict[tuple[int, str], int]) -> dict[str, bool]:
    """Per game visited more than once: whether every visit's main context (most of its steps) is the same."""
    main: dict[str, set[str]] = {}
    for number, (_, game) in enumerate(visits):
        held = {context: n for (visit, context), n in per_visit.items() if visit == number}
        if held:
            main.setdefault(game, set()).add(max(held, key=held.get))
    counts = {game: sum(1 for _, g in visits if g == game) for game in main}
    return {game: len(contexts) == 1 for game, contexts in main.items() if counts[game] > 1}


SHARE = 0.05  # a context holding at least this share of a game's steps counts as one of its contexts


def overlap(steps: dict[tuple[str, str], int]) -> dict:
    """How contexts and games map onto each other, from the steps spent in each (context, game)."""
    games = sorted({g for _, g in steps})
    contexts = sorted({c for c, _ in steps})
    table = np.array([[steps.get((c, g), 0) for g in games] for c in contexts], dtype=float)
    per_game = table.sum(axis=0)
    splits = {g: int((table[:, j] >= SHARE * per_game[j]).sum()) for j, g in enumerate(games) if per_game[j]}
    main = {g: contexts[int(table[:, j].argmax())] for j, g in enumerate(games) if per_game[j]}
    shared: dict[str, list[str]] = {}
    for game, context in main.items():
        shared.setdefault(context, []).append(game)
    return {"contexts_per_game": splits, "main_context": main,
            "merged_games": [sorted(group) for group in shared.values() if len(group) > 1],
            "nmi": normalized_mutual_information(table)}


def normalized_mutual_information(table: np.ndarray) -> float | None:
    """I(C; G) / ((H(C) + H(G)) / 2) of a joint count table (rows: contexts, columns: games)."""
    total = table.sum()
    if total == 0:
        return None
    joint = table / total
    rows, columns = joint.sum(axis=1), joint.sum(axis=0)
    nonzero = joint > 0
    mutual = float((joint[nonzero] * np.log(joint[nonzero] / np.outer(rows, columns)[nonzero])).sum())
    entropy = -sum(float((p[p > 0] * np.log(p[p > 0])).sum()) for p in (rows, columns))
    return 1.0 if entropy == 0 else mutual / (entropy / 2)


def _last_before(changes: list[tuple[int, str]], step: int) -> str | None:
    value = None
    for when, what in changes:
        if when > step:
            break
        value = what
    return value
