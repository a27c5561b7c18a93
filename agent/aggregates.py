"""Aggregates over seeds with rliable (Agarwal et al. 2021): mean and interquartile mean (IQM)
with stratified-bootstrap 95% confidence intervals, and performance profiles.

Input: the per-run dicts of `agent.metrics.compute_metrics`, grouped by method. A score matrix
is runs x tasks; the bootstrap resamples runs within each task (rliable's StratifiedBootstrap).

- final_human_normalized: per game, that game's final scores over runs; overall, runs x games
  (the games every run of the method has a human reference for).
- forgetting / forward_transfer: per game, each run's mean over that game's pairs (forgetting of
  the game by every later game of the first cycle; transfer to it from every earlier one);
  overall, each run's mean over all pairs (CORA's figure), over runs.

Needs the `report` extra (rliable, which brings scipy and arch).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import numpy as np
from rliable import library as rly
from rliable import metrics as rly_metrics

CONFIDENCE = 0.95
QUANTITIES = {
    "final_human_normalized": "final human-normalised score",
    "forgetting": "isolated forgetting (CORA; positive: forgotten)",
    "forward_transfer": "zero-shot forward transfer (CORA)",
}


@contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """rliable's StratifiedBootstrap draws from numpy's global RNG: seed it, then put it back."""
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)


def _mean_and_iqm(scores: np.ndarray) -> np.ndarray:
    return np.array([rly_metrics.aggregate_mean(scores), rly_metrics.aggregate_iqm(scores)])


def interval_estimate(scores: np.ndarray, reps: int, seed: int) -> dict:
    """Mean and IQM of a runs x tasks matrix, each with its stratified-bootstrap 95% CI."""
    scores = np.asarray(scores, dtype=float)
    with _seeded(seed):
        points, intervals = rly.get_interval_estimates({"x": scores}, _mean_and_iqm, reps=reps,
                                                       confidence_interval_size=CONFIDENCE)
    (mean, iqm), ((mean_lo, iqm_lo), (mean_hi, iqm_hi)) = points["x"], intervals["x"]
    return {"runs": int(scores.shape[0]), "tasks": int(scores.shape[1]), "mean": float(mean),
            "mean_ci": [float(mean_lo), float(mean_hi)], "iqm": float(iqm), "iqm_ci": [float(iqm_lo), float(iqm_hi)]}


def curve_band(values: np.ndarray, reps: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean over runs of a runs x points curve, with the 95% bootstrap CI at every point."""
    scores = np.asarray(values, dtype=float)[:, None, :]  # runs x 1 task x points
    with _seeded(seed):
        points, intervals = rly.get_interval_estimates({"x": scores}, lambda s: s.mean(axis=0)[0], reps=reps,
                                                       confidence_interval_size=CONFIDENCE)
    return points["x"], intervals["x"][0], intervals["x"][1]


def performance_profile(scores: Mapping[str, np.ndarray], taus: np.ndarray, reps: int, seed: int) -> dict:
    """Fraction of runs x games scoring above each tau, with its 95% CI, per method."""
    with _seeded(seed):
        profiles, intervals = rly.create_performance_profile(dict(scores), taus, reps=reps,
                                                             confidence_interval_size=CONFIDENCE)
    return {method: {"fraction": profiles[method].tolist(), "ci": intervals[method].tolist()} for method in scores}


def _per_run(metrics: dict, quantity: str) -> tuple[dict[str, float], float | None]:
    """One run's value of the quantity per game, and its overall value."""
    if quantity == "final_human_normalized":
        per_game = {g: v for g, v in metrics[quantity].items() if v is not None}
        return per_game, None
    pairs = metrics[quantity]
    per_game = {game: float(np.mean(list(row.values()))) for game, row in pairs.items() if row}
    return per_game, metrics[f"mean_{quantity}"]


def final_score_matrix(runs: list[dict]) -> tuple[list[str], np.ndarray]:
    """Runs x games final human-normalised scores, over the games every run has a reference for."""
    scores = [_per_run(m, "final_human_normalized")[0] for m in runs]
    games = [g for g in dict.fromkeys(g for m in runs for g in m["games"]) if all(g in s for s in scores)]
    return games, np.array([[s[g] for g in games] for s in scores]).reshape(len(runs), len(games))


def aggregate(groups: Mapping[str, list[dict]], reps: int, seed: int) -> dict:
    """aggregates.json: every quantity per game and overall, per method."""
    games = list(dict.fromkeys(g for runs in groups.values() for m in runs for g in m["games"]))
    result: dict = {
        "confidence": CONFIDENCE,
        "bootstrap": {"kind": "stratified over runs (rliable), percentile", "reps": reps, "seed": seed},
        "methods": {method: [m["run"] for m in runs] for method, runs in groups.items()},
    }
    for index, quantity in enumerate(QUANTITIES):
        per_game: dict[str, dict] = {}
        overall: dict[str, dict] = {}
        for method, runs in groups.items():
            values = [_per_run(m, quantity) for m in runs]
            for game in games:
                column = [v[0][game] for v in values if game in v[0]]
                if column:
                    per_game.setdefault(game, {})[method] = interval_estimate(
                        np.array(column)[:, None], reps, seed + index)
            if quantity == "final_human_normalized":
                matrix = final_score_matrix(runs)[1]
            else:
                matrix = np.array([[v[1]] for v in values if v[1] is not None])
            if matrix.size:
                overall[method] = interval_estimate(matrix, reps, seed + index)
        result[quantity] = {"per_game": per_game, "overall": overall}
    return result


def to_markdown(aggregates: dict, notes: list[str] | None = None) -> str:
    """aggregates.md: one table per quantity, rows game x method."""
    def cell(estimate: dict, key: str) -> str:
        lo, hi = estimate[f"{key}_ci"]
        return f"{estimate[key]:.3f} [{lo:.3f}, {hi:.3f}]"

    lines = ["# Aggregates over runs", "",
             f"Mean and interquartile mean (IQM) with {aggregates['confidence']:.0%} stratified-bootstrap "
             f"confidence intervals ({aggregates['bootstrap']['reps']} resamples of the runs, rliable).", ""]
    lines += [f"- {note}" for note in notes or []]
    lines += ["- methods: " + "; ".join(f"{method} ({len(runs)} runs: {', '.join(runs)})"
                                         for method, runs in aggregates["methods"].items()), ""]
    overall_label = {"final_human_normalized": "all games (runs x games)",
                     "forgetting": "all pairs (each run's mean)", "forward_transfer": "all pairs (each run's mean)"}
    for quantity, title in QUANTITIES.items():
        block = aggregates[quantity]
        lines += [f"## {title}", "", "| game | method | runs | mean [95% CI] | IQM [95% CI] |",
                  "|---|---|---:|---:|---:|"]
        rows = [(game, method, e) for game, by_method in block["per_game"].items() for method, e in by_method.items()]
        rows += [(overall_label[quantity], method, e) for method, e in block["overall"].items()]
        lines += [f"| {game} | {method} | {e['runs']} | {cell(e, 'mean')} | {cell(e, 'iqm')} |"
                  for game, method, e in rows]
        lines.append("")
    return "\n".join(lines)

