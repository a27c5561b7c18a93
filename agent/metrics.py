"""Continual-learning metrics from a run's eval.csv, as CORA computes them (Powers et al. 2022;
AGI-Labs/continual_rl, `continual_rl/utils/metrics.py` with isolated forgetting and isolated
zero-shot forward transfer on).

Each eval.csv row names its visit and the game that visit trained, so nothing here assumes the
schedule's order. From the rows:

- Visit v starts at the last evaluation of an earlier visit (the evaluation at the switch; for the
  first visit, the run's first evaluation). Its end is its last evaluation after that start. It is
  finished when a later visit has rows, or when it lasted `steps_per_visit` (the run's config):
  an unfinished visit enters no metric.
- Each game's series of mean returns, optionally smoothed by a trailing moving average over
  `smoothing` evaluations (CORA: 20 on Atari), is divided by `scale[game]`: the largest absolute
  value of that series over the runs normalised together (see `max_abs_returns`).
- The first cycle is each game's first visit, in the order they happened.
- forgetting[T][S], for every game S first visited after T: T's score before S's first visit
  minus T's score at the end of it. Positive means forgotten.
- forward_transfer[T][P], for every game P first visited before T (zero-shot: T is untrained):
  T's score at the end of P's first visit minus T's score before it.
- mean_forgetting and mean_forward_transfer average every pair (CORA's tables show them x10).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

REQUIRED_COLUMNS = ("step", "visit", "trained_game", "game", "mean_return")
MIN_RUNS_FOR_INTERVAL = 5  # a group of fewer runs gets its per-run values and no confidence interval
SCALES = {
    "shared": "each game's returns divided by their largest absolute value over all the runs given "
              "(one scale for every method)",
    "method": "each game's returns divided by their largest absolute value over the runs of the same "
              "method (CORA's per-method scale: identical returns of two methods can get different values)",
}


class MetricsError(ValueError):
    """eval.csv missing or malformed, with a message meant for the user."""


@dataclass(frozen=True)
class Visit:
    index: int
    game: str
    start_step: int
    end_step: int | None  # its last evaluation after start_step; None before the first one
    finished: bool


@dataclass
class EvalLog:
    """The rows of one run's eval.csv, and what its config says about them."""

    name: str
    steps: np.ndarray
    visits: np.ndarray
    trained: list[str]
    games: list[str]
    returns: np.ndarray
    human_normalized: np.ndarray  # nan where the game has no human reference
    steps_per_visit: int | None = None  # None: the last visit counts as unfinished
    method: str | None = None  # consolidation.method of the run's config
    game_order: list[str] = field(default_factory=list)
    episodes: np.ndarray | None = None  # episodes behind each row's mean (None: the column is missing)

    @classmethod
    def read(cls, path: Path, name: str | None = None, steps_per_visit: int | None = None) -> EvalLog:
        if not path.is_file():
            raise MetricsError(f"{path} does not exist: evaluations are written during training "
                               "(eval.episodes > 0), at the start and at every game switch.")
        with open(path, newline="") as handle:
            rows = list(csv.DictReader(handle))
        if not rows or not set(REQUIRED_COLUMNS) <= set(rows[0]):
            raise MetricsError(f"{path} has no evaluation rows with the columns {sorted(REQUIRED_COLUMNS)}.")
        try:
            log = cls(name or path.parent.name, np.array([int(r["step"]) for r in rows]),
                      np.array([int(r["visit"]) for r in rows]), [r["trained_game"] for r in rows],
                      [r["game"] for r in rows], np.array([float(r["mean_return"]) for r in rows]),
                      np.array([float(r.get("human_normalized") or "nan") for r in rows]), steps_per_visit)
        except ValueError as exc:
            raise MetricsError(f"{path} has a malformed row: {exc}") from None
        seen: dict[tuple[int, str], int] = {}
        twice = []
        for line, (step, game) in enumerate(zip(log.steps.tolist(), log.games), start=2):
            if (step, game) in seen:
                twice.append(f"step {step}, {game} (lines {seen[(step, game)]} and {line})")
            seen.setdefault((step, game), line)
        if twice:
            shown = "; ".join(twice[:5]) + (f" and {len(twice) - 5} more" if len(twice) > 5 else "")
            raise MetricsError(f"{path} has more than one row for the same step and game: {shown}. Either two "
                               "processes trained this run at once (before training took a lock on its directory), "
                               "or it was resumed from a checkpoint older than the record of file sizes (the resume "
                               "warned that points "
                               "may appear twice). Keep one row of each (the later one is the resumed run's) and "
                               "report again.")
        log.game_order = list(dict.fromkeys(log.games))
        try:
            if all(r.get("episodes") not in (None, "") for r in rows):
                log.episodes = np.array([int(r["episodes"]) for r in rows])
        except ValueError:
            log.episodes = None  # the column is only shown in captions; malformed values are not fatal
        return log

    def until(self, step: int) -> EvalLog:
        """The log as it stood at `step` (its rows up to it): compares runs of different lengths at one budget."""
        keep = self.steps <= step
        if not keep.any():
            raise MetricsError(f"{self.name} has no evaluation at or before step {step}.")
        rows = np.flatnonzero(keep)
        return EvalLog(self.name, self.steps[rows], self.visits[rows], [self.trained[i] for i in rows],
                       [self.games[i] for i in rows], self.returns[rows], self.human_normalized[rows],
                       self.steps_per_visit, self.method, list(self.game_order),
                       None if self.episodes is None else self.episodes[rows])

    def series(self, game: str, smoothing: int | None = None, column: str = "returns") -> tuple[np.ndarray, np.ndarray]:
        """(steps, values) of one game in step order (`read` refuses a step logged twice)."""
        rows = np.flatnonzero(np.array(self.games) == game)
        by_step = dict(zip(self.steps[rows].tolist(), getattr(self, column)[rows].tolist()))
        steps = np.array(sorted(by_step), dtype=np.int64)
        values = np.array([by_step[s] for s in steps], dtype=float)
        return steps, trailing_mean(values, smoothing)

    def visit_table(self) -> list[Visit]:
        table = []
        first_step = int(self.steps.min())
        for index in sorted(set(self.visits.tolist())):
            rows = self.visits == index
            games = {self.trained[i] for i in np.flatnonzero(rows)}
            if len(games) != 1 or "" in games:
                raise MetricsError(f"{self.name}: the rows of visit {index} name {sorted(games)} as the game "
                                   "trained; each visit trains exactly one game.")
            earlier = self.steps[self.visits < index]
            start = int(earlier.max()) if earlier.size else first_step
            inside = self.steps[rows & (self.steps > start)]
            end = int(inside.max()) if inside.size else None
            game = next(iter(games))
            if game not in self.game_order:
                raise MetricsError(f"{self.name}: visit {index} trained {game}, but eval.csv has no evaluation of "
                                   f"{game} (it evaluates {', '.join(self.game_order)}): the run's evaluations must "
                                   "cover every game it trains, as training writes them.")
            later = bool((self.visits > index).any())
            lasted = end is not None and self.steps_per_visit is not None and end - start >= self.steps_per_visit
            table.append(Visit(index, games.pop(), start, end, end is not None and (later or lasted)))
        return table


def read_run(run_dir: Path) -> EvalLog:
    """A run directory's eval.csv, with its config's visit length and method (consolidation.method, with
    `+plasticity.method` when it is not none)."""
    steps_per_visit = method = None
    config_path = run_dir / "config.yaml"
    if config_path.is_file():
        try:
            config = yaml.safe_load(config_path.read_text()) or {}
            steps_per_visit = config.get("schedule", {}).get("steps_per_visit")
            method = config.get("consolidation", {}).get("method")
            plasticity = (config.get("plasticity") or {}).get("method")
            if method and plasticity and plasticity != "none":  # e.g. ewc+redo: its own group in a report
                method = f"{method}+{plasticity}"
        except (yaml.YAMLError, AttributeError) as exc:
            raise MetricsError(f"{config_path} is not a run's config: {exc}") from None
    if not run_dir.is_dir():
        raise MetricsError(f"{run_dir} is not a directory: give run directories (the --run-dir of ewc-train runs).")
    if not config_path.is_file() and not (run_dir / "eval.csv").is_file():
        raise MetricsError(f"{run_dir} is not a run directory (no config.yaml, no eval.csv): give the --run-dir of "
                           "an ewc-train run, or the run folders inside a sweep's directory (e.g. OUT/method=*).")
    log = EvalLog.read(run_dir / "eval.csv", run_dir.name, steps_per_visit)
    log.method = method
    return log


def trailing_mean(values: np.ndarray, window: int | None) -> np.ndarray:
    """CORA's moving average: each value becomes the mean of itself and up to window-1 values before it."""
    if not window or window <= 1:
        return values
    sums = np.cumsum(np.concatenate([[0.0], values]))
    ends = np.arange(1, len(values) + 1)
    starts = np.maximum(ends - window, 0)
    return (sums[ends] - sums[starts]) / (ends - starts)


def max_abs_returns(logs: Sequence[EvalLog], smoothing: int | None = None) -> dict[str, float]:
    """Per game, the largest absolute (smoothed) mean return over the given runs: CORA's scale."""
    scale: dict[str, float] = {}
    for log in logs:
        for game in log.game_order:
            _, values = log.series(game, smoothing)
            scale[game] = max(scale.get(game, 0.0), float(np.abs(values).max()))
    return scale


def compute_metrics(log: EvalLog, scale: dict[str, float], smoothing: int | None = None) -> dict:
    """CORA's isolated forgetting and zero-shot forward transfer of one run, and its final scores."""
    curves = {}
    for game in log.game_order:
        steps, values = log.series(game, smoothing)
        curves[game] = (steps, values / (scale[game] or 1.0))  # a game that always scores 0 stays 0

    def before(game: str, step: int) -> float:  # the last evaluation at or before the step
        steps, values = curves[game]
        i = np.searchsorted(steps, step, side="right") - 1
        return float(values[i]) if i >= 0 else math.nan

    def end_of(game: str, visit: Visit) -> float:  # the last evaluation inside the visit
        steps, values = curves[game]
        i = np.searchsorted(steps, visit.end_step, side="right") - 1
        return float(values[i]) if i >= 0 and steps[i] > visit.start_step else math.nan

    table = log.visit_table()
    first: dict[str, Visit] = {}
    for visit in table:
        first.setdefault(visit.game, visit)
    cycle = list(first.values())  # the first cycle, in the order it happened
    forgetting: dict[str, dict[str, float]] = {}
    transfer: dict[str, dict[str, float]] = {}
    for i, visit in enumerate(cycle):
        game = visit.game
        for later in (v for v in cycle[i + 1:] if v.finished):
            value = before(game, later.start_step) - end_of(game, later)
            if math.isfinite(value):
                forgetting.setdefault(game, {})[later.game] = value
        for earlier in (v for v in cycle[:i] if v.finished):
            value = end_of(game, earlier) - before(game, earlier.start_step)
            if math.isfinite(value):
                transfer.setdefault(game, {})[earlier.game] = value
    final_step = int(log.steps.max())
    final = {game: _finite_or_none(before(game, final_step)) for game in log.game_order}
    human = {}
    for game in log.game_order:
        _, values = log.series(game, smoothing, column="human_normalized")
        human[game] = _finite_or_none(values[-1])
    finished = [visit for visit in table if visit.finished]
    return {
        "run": log.name,
        "method": log.method,
        "games": log.game_order,
        "smoothing": smoothing,
        "normalisation": {game: scale.get(game) for game in log.game_order},
        "visits": [{"visit": v.index, "game": v.game, "start_step": v.start_step, "end_step": v.end_step,
                    "finished": v.finished} for v in table],
        "first_cycle": [visit.game for visit in cycle],
        "forgetting": forgetting,
        "mean_forgetting": _mean([v for row in forgetting.values() for v in row.values()]),
        "forward_transfer": transfer,
        "mean_forward_transfer": _mean([v for row in transfer.values() for v in row.values()]),
        "final_step": final_step,
        "final_performance": final,
        "mean_final_performance": _mean([v for v in final.values() if v is not None]),
        "final_human_normalized": human,
        "mean_final_human_normalized": _mean([v for v in human.values() if v is not None]),
        "matrix": {"rows": log.game_order, "columns": [f"{v.index}: {v.game}" for v in finished],
                   "values": [[_finite_or_none(end_of(game, v)) for v in finished] for game in log.game_order],
                   "before": [_finite_or_none(before(game, int(log.steps.min()))) for game in log.game_order]},
    }


def _finite_or_none(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None


def _mean(values: list[float]) -> float | None:
    finite = [v for v in values if np.isfinite(v)]
    return float(np.mean(finite)) if finite else None
