"""Continual-learning metrics from a run's eval.csv (CORA's definitions, Powers et al. 2022).

- Scores are normalised per game by the largest absolute mean return seen for that game
  (across every run being compared, so runs share one scale).
- Forgetting of the game trained in visit v: its score at the end of visit v minus its
  score at the end of visit v+1.
- Zero-shot forward transfer to the game trained in visit v: its score at the end of
  visit v-1 minus its score at the start of visit v-1 (before any of it was trained).
- Final performance: the mean normalised score over games at the last evaluation.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


class MetricsError(ValueError):
    """eval.csv missing or malformed, with a message meant for the user."""


@dataclass
class EvalLog:
    """The rows of one run's eval.csv."""

    name: str
    steps: np.ndarray
    visits: np.ndarray
    trained: list[str]
    games: list[str]
    returns: np.ndarray
    game_order: list[str] = field(default_factory=list)

    @classmethod
    def read(cls, path: Path, name: str | None = None) -> EvalLog:
        if not path.is_file():
            raise MetricsError(f"{path} does not exist: evaluations are written during training "
                               "(eval.episodes > 0), at the start and at every game switch.")
        with open(path, newline="") as handle:
            rows = list(csv.DictReader(handle))
        needed = {"step", "visit", "trained_game", "game", "mean_return"}
        if not rows or not needed <= set(rows[0]):
            raise MetricsError(f"{path} has no evaluation rows with the columns {sorted(needed)}.")
        try:
            log = cls(name or path.parent.name, np.array([int(r["step"]) for r in rows]),
                      np.array([int(r["visit"]) for r in rows]), [r["trained_game"] for r in rows],
                      [r["game"] for r in rows], np.array([float(r["mean_return"]) for r in rows]))
        except ValueError as exc:
            raise MetricsError(f"{path} has a malformed row: {exc}") from None
        log.game_order = list(dict.fromkeys(log.games))
        return log

    def score(self, game: str, at_step: int) -> float:
        mask = (np.array(self.games) == game) & (self.steps == at_step)
        return float(self.returns[mask][0]) if mask.any() else float("nan")

    def visit_ends(self) -> list[tuple[int, str, int]]:
        """(visit, game trained, step of the evaluation that closed it), for every finished visit."""
        ends = []
        for visit in np.unique(self.visits):
            rows = np.flatnonzero(self.visits == visit)
            last = rows[np.argmax(self.steps[rows])]
            if self.steps[last] > 0:
                ends.append((int(visit), self.trained[last], int(self.steps[last])))
        return ends


def max_abs_returns(logs: list[EvalLog]) -> dict[str, float]:
    scale: dict[str, float] = {}
    for log in logs:
        for game, value in zip(log.games, log.returns):
            scale[game] = max(scale.get(game, 0.0), abs(value))
    return scale


def compute_metrics(log: EvalLog, scale: dict[str, float]) -> dict:
    def normalised(game: str, step: int) -> float:
        return log.score(game, step) / scale[game] if scale.get(game) else float("nan")

    ends = log.visit_ends()
    start_step = int(log.steps.min())
    boundaries = [start_step] + [step for _, _, step in ends]  # boundaries[v] = start of visit v
    forgetting, transfer = [], []
    for index, (visit, game, step) in enumerate(ends):
        if index + 1 < len(ends):
            forgetting.append({"visit": visit, "game": game,
                               "value": normalised(game, step) - normalised(game, ends[index + 1][2])})
        if index >= 1:
            transfer.append({"visit": visit, "game": game,
                             "value": normalised(game, boundaries[index]) - normalised(game, boundaries[index - 1])})
    final_step = int(log.steps.max())
    final = {game: normalised(game, final_step) for game in log.game_order}
    matrix = [[normalised(game, step) for _, _, step in ends] for game in log.game_order]
    return {
        "run": log.name,
        "games": log.game_order,
        "visits": [{"visit": v, "game": g, "end_step": s} for v, g, s in ends],
        "normalisation": {game: scale.get(game) for game in log.game_order},
        "forgetting": forgetting,
        "mean_forgetting": _mean([f["value"] for f in forgetting]),
        "forward_transfer": transfer,
        "mean_forward_transfer": _mean([t["value"] for t in transfer]),
        "final_performance": final,
        "mean_final_performance": _mean(list(final.values())),
        "matrix": {"rows": log.game_order, "columns": [f"{v}: {g}" for v, g, _ in ends], "values": matrix},
    }


def _mean(values: list[float]) -> float | None:
    finite = [v for v in values if np.isfinite(v)]
    return float(np.mean(finite)) if finite else None
