"""Aggregates over seeds with rliable (Agarwal et al. 2021): mean and interquartile mean (IQM)
with stratified-bootstrap 95% confidence intervals, performance profiles, and for each pair of
methods the probability of improvement (rliable) and a permutation test of the difference in mean
forgetting.

Intervals only where they mean something: a group of fewer than MIN_RUNS_FOR_INTERVAL (5) runs gets
its per-run values and no interval. With 2 runs a percentile bootstrap interval is [min, max] and the
best exact permutation p-value of 2 runs against 2 is 1/3 (two-sided), so neither says anything.

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

import itertools
import math
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import numpy as np
from rliable import library as rly
from rliable import metrics as rly_metrics

from agent.metrics import MIN_RUNS_FOR_INTERVAL

CONFIDENCE = 0.95
EXACT_PERMUTATIONS = 200_000  # above this many relabellings the permutation test samples them
NO_INTERVAL = (f"fewer than {MIN_RUNS_FOR_INTERVAL} runs: the per-run values are given and no interval "
               "(a bootstrap over so few runs only restates their range)")
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
    """Mean and IQM of a runs x tasks matrix, each with its stratified-bootstrap 95% CI (with at least
    MIN_RUNS_FOR_INTERVAL runs; with fewer, each run's value (its mean over tasks) and no interval)."""
    scores = np.asarray(scores, dtype=float)
    if scores.shape[0] < MIN_RUNS_FOR_INTERVAL:
        return {"runs": int(scores.shape[0]), "tasks": int(scores.shape[1]), "mean": float(scores.mean()),
                "iqm": float(rly_metrics.aggregate_iqm(scores)), "per_run": scores.mean(axis=1).tolist(),
                "no_interval": NO_INTERVAL}
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
    """Fraction of runs x games scoring above each tau per method, with its 95% CI where the method has
    at least MIN_RUNS_FOR_INTERVAL runs."""
    with _seeded(seed):
        profiles, intervals = rly.create_performance_profile(dict(scores), taus, reps=reps,
                                                             confidence_interval_size=CONFIDENCE)
    result = {}
    for method, matrix in scores.items():
        result[method] = {"fraction": profiles[method].tolist(), "runs": int(np.shape(matrix)[0])}
        if np.shape(matrix)[0] >= MIN_RUNS_FOR_INTERVAL:
            result[method]["ci"] = intervals[method].tolist()
    return result


def profile_taus(matrices: Mapping[str, np.ndarray], points: int = 101) -> np.ndarray:
    """Thresholds spanning the scores (with a 5% margin each side), so the profile fills its axis."""
    everything = np.concatenate([np.ravel(m) for m in matrices.values()])
    low, high = float(everything.min()), float(everything.max())
    margin = 0.05 * (high - low) if high > low else 0.05 * max(abs(high), 1.0)
    return np.linspace(low - margin, high + margin, points)


def permutation_test(x: np.ndarray, y: np.ndarray, reps: int = 100_000, seed: int = 0) -> dict:
    """Two-sided permutation test of mean(x) - mean(y): every relabelling of the pooled values into
    groups of len(x) and len(y) when there are at most EXACT_PERMUTATIONS of them, else `reps` random
    ones (p = (1 + hits) / (1 + reps), never 0; Phipson & Smyth 2010). A relabelling counts when its
    |difference| reaches the observed one (to within rounding)."""
    x, y = np.asarray(x, dtype=float).ravel(), np.asarray(y, dtype=float).ravel()
    pooled, n = np.concatenate([x, y]), len(x)
    observed = x.mean() - y.mean()
    total = math.comb(len(pooled), n)
    tolerance = 1e-9 * max(1.0, float(np.abs(pooled).max()))
    if total <= EXACT_PERMUTATIONS:
        chosen = np.zeros((total, len(pooled)), dtype=bool)
        for row, members in enumerate(itertools.combinations(range(len(pooled)), n)):
            chosen[row, list(members)] = True
        kind, count = "exact", total
    else:
        rng = np.random.default_rng(seed)
        order = np.argsort(rng.random((reps, len(pooled))), axis=1)
        chosen = np.zeros((reps, len(pooled)), dtype=bool)
        np.put_along_axis(chosen, order[:, :n], True, axis=1)
        kind, count = "monte-carlo", reps
    sums = chosen.astype(float) @ pooled
    differences = sums / n - (pooled.sum() - sums) / (len(pooled) - n)
    hits = int(np.count_nonzero(np.abs(differences) >= abs(observed) - tolerance))
    p = hits / total if kind == "exact" else (1 + hits) / (1 + reps)
    return {"difference": float(observed), "p_value": float(p), "kind": kind, "relabellings": int(count),
            "n": [len(x), len(y)]}


def probability_of_improvement(x: np.ndarray, y: np.ndarray, reps: int, seed: int) -> dict:
    """rliable's P(X > Y) on runs x tasks score matrices (averaged over tasks), with its
    stratified-bootstrap 95% CI (runs of X and of Y resampled independently within each task)."""
    with _seeded(seed):
        points, intervals = rly.get_interval_estimates(
            {"pair": (np.asarray(x, dtype=float), np.asarray(y, dtype=float))},
            rly_metrics.probability_of_improvement, reps=reps, confidence_interval_size=CONFIDENCE)
    return {"value": float(np.ravel(points["pair"])[0]),
            "ci": [float(np.ravel(intervals["pair"][0])[0]), float(np.ravel(intervals["pair"][1])[0])]}


def compare_pairs(groups: Mapping[str, list[dict]], reps: int, seed: int, forgetting_test: bool = True) -> list[dict]:
    """For each pair of methods with at least MIN_RUNS_FOR_INTERVAL runs each: the probability that
    the first's final human-normalised score beats the second's (rliable), and the permutation test
    of the difference in mean forgetting (each run's mean over its pairs). Pairs with fewer runs are
    listed with the reason and nothing else."""
    comparisons = []
    for first, second in itertools.combinations(groups, 2):
        runs_x, runs_y = groups[first], groups[second]
        entry: dict = {"x": first, "y": second, "runs": [len(runs_x), len(runs_y)]}
        if min(len(runs_x), len(runs_y)) < MIN_RUNS_FOR_INTERVAL:
            entry["skipped"] = NO_INTERVAL
            comparisons.append(entry)
            continue
        games_x, final_x = final_score_matrix(runs_x)
        games_y, final_y = final_score_matrix(runs_y)
        games = [g for g in games_x if g in games_y]
        if games:
            entry["probability_of_improvement"] = dict(
                probability_of_improvement(final_x[:, [games_x.index(g) for g in games]],
                                           final_y[:, [games_y.index(g) for g in games]], reps, seed),
                games=games, quantity="final human-normalised score")
        forgetting_x = [m["mean_forgetting"] for m in runs_x if m["mean_forgetting"] is not None]
        forgetting_y = [m["mean_forgetting"] for m in runs_y if m["mean_forgetting"] is not None]
        if not forgetting_test:
            entry["forgetting_permutation_test_skipped"] = ("per-method scale: each method's forgetting is a fraction "
                                                            "of its own best return, so the two are not comparable")
        elif min(len(forgetting_x), len(forgetting_y)) >= MIN_RUNS_FOR_INTERVAL:
            entry["forgetting_permutation_test"] = permutation_test(forgetting_x, forgetting_y, seed=seed)
        comparisons.append(entry)
    return comparisons


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


def aggregate(groups: Mapping[str, list[dict]], reps: int, seed: int, forgetting_test: bool = True) -> dict:
    """aggregates.json: every quantity per game and overall, per method."""
    games = list(dict.fromkeys(g for runs in groups.values() for m in runs for g in m["games"]))
    result: dict = {
        "confidence": CONFIDENCE,
        "min_runs_for_interval": MIN_RUNS_FOR_INTERVAL,
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
    result["comparisons"] = compare_pairs(groups, reps, seed + len(QUANTITIES), forgetting_test)
    return result


def estimates(aggregates: dict) -> list[dict]:
    """Every estimate of aggregates.json: per game and overall, of every quantity and method."""
    found = []
    for quantity in QUANTITIES:
        block = aggregates[quantity]
        found += [e for by_method in block["per_game"].values() for e in by_method.values()]
        found += list(block["overall"].values())
    return found


def to_markdown(aggregates: dict, notes: list[str] | None = None) -> str:
    """aggregates.md: one table per quantity (rows game x method), then the pairwise comparisons."""
    def cell(estimate: dict, key: str) -> str:
        if "no_interval" in estimate:
            return f"{estimate[key]:.3f}" + (" (no CI)" if any_interval else "")
        lo, hi = estimate[f"{key}_ci"]
        return f"{estimate[key]:.3f} [{lo:.3f}, {hi:.3f}]"

    def runs(estimate: dict) -> str:
        if "no_interval" in estimate:
            return ", ".join(f"{v:.3f}" for v in estimate["per_run"])
        return ""

    minimum = aggregates.get("min_runs_for_interval", MIN_RUNS_FOR_INTERVAL)
    any_interval = any("no_interval" not in e for e in estimates(aggregates))
    lines = ["# Aggregates over runs", ""]
    if any_interval:
        lines += [f"Mean and interquartile mean (IQM) with {aggregates['confidence']:.0%} stratified-bootstrap "
                  f"confidence intervals ({aggregates['bootstrap']['reps']} resamples of the runs, rliable) for "
                  f"groups of {minimum} or more runs. A group of fewer runs gets its per-run values and no "
                  "interval: a bootstrap over so few runs only restates their range.", ""]
    else:
        lines += [f"Mean, interquartile mean (IQM) and every run's value. No confidence interval: every group has "
                  f"fewer than {minimum} runs, and a bootstrap over so few runs only restates their range.", ""]
    lines += [f"- {note}" for note in notes or []]
    lines += ["- methods: " + "; ".join(f"{method} ({len(runs)} runs: {', '.join(runs)})"
                                         for method, runs in aggregates["methods"].items()), ""]
    overall_label = {"final_human_normalized": "all games (runs x games)",
                     "forgetting": "all pairs (each run's mean)", "forward_transfer": "all pairs (each run's mean)"}
    for quantity, title in QUANTITIES.items():
        block = aggregates[quantity]
        ci = f" [{aggregates['confidence']:.0%} CI]" if any_interval else ""
        lines += [f"## {title}", "", f"| game | method | runs | mean{ci} | IQM{ci} | per run (n < {minimum}) |",
                  "|---|---|---:|---:|---:|---|"]
        rows = [(game, method, e) for game, by_method in block["per_game"].items() for method, e in by_method.items()]
        rows += [(overall_label[quantity], method, e) for method, e in block["overall"].items()]
        lines += [f"| {game} | {method} | {e['runs']} | {cell(e, 'mean')} | {cell(e, 'iqm')} | {runs(e)} |"
                  for game, method, e in rows]
        lines.append("")
    comparisons = aggregates.get("comparisons", [])
    if comparisons and all("skipped" in c for c in comparisons):
        lines += ["## Pairs of methods", "",
                  "Not compared (no probability of improvement, no permutation test): "
                  + "; ".join(f"{c['x']} vs {c['y']} ({c['runs'][0]} vs {c['runs'][1]} runs)" for c in comparisons)
                  + f". Each needs {minimum} or more runs per method: not computed: {NO_INTERVAL}.", ""]
    elif comparisons:
        lines += ["## Pairs of methods", "",
                  "P(X > Y): rliable's probability of improvement of X over Y on the final human-normalised "
                  "scores (averaged over games), with its 95% stratified-bootstrap CI. Forgetting: "
                  "mean forgetting of X minus that of Y (each run's mean over its pairs) and the two-sided "
                  "permutation p-value (exact over every relabelling of the runs, or sampled past "
                  f"{EXACT_PERMUTATIONS:,}).", "",
                  "| X | Y | runs | P(X > Y) [95% CI] | forgetting X - Y | p (permutation) |",
                  "|---|---|---:|---:|---:|---:|"]
        for c in comparisons:
            counts = f"{c['runs'][0]} vs {c['runs'][1]}"
            if "skipped" in c:
                lines.append(f"| {c['x']} | {c['y']} | {counts} | not computed: {c['skipped']} | | |")
                continue
            poi = c.get("probability_of_improvement")
            test = c.get("forgetting_permutation_test")
            poi_cell = "n/a" if poi is None else f"{poi['value']:.3f} [{poi['ci'][0]:.3f}, {poi['ci'][1]:.3f}]"
            diff_cell = "n/a" if test is None else f"{test['difference']:+.3f}"
            p_cell = ("not on one scale" if "forgetting_permutation_test_skipped" in c else "n/a") if test is None \
                else f"{test['p_value']:.4f} ({test['kind']})"
            lines.append(f"| {c['x']} | {c['y']} | {counts} | {poi_cell} | {diff_cell} | {p_cell} |")
        lines.append("")
    return "\n".join(lines)
