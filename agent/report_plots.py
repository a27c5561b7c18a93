"""The report's figures (scripts/report.py): evaluation curves, performance profiles, score matrices and
the plasticity diagnostics over training. matplotlib is imported only when a figure is drawn."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from agent.metrics import MIN_RUNS_FOR_INTERVAL, EvalLog
from agent.plasticity_log import PlasticityLog


def _pyplot():
    """matplotlib's pyplot, drawing to files only; the font manager's fallback notices (rliable asks for STIX and
    Computer Modern fonts most machines lack, and DejaVu Sans draws the same text) are not the user's business."""
    import logging

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    logging.getLogger("matplotlib.font_manager").setLevel(logging.ERROR)
    return plt

# The diagnostics drawn over training, with their axis labels (every one is in plasticity.csv and metrics.json).
PLASTICITY_PANELS = (("dormant_tau0.1/all", "dormant units\n(score <= 0.1)"),
                     ("dormant_tau0/all", "never-active units\n(score 0)"),
                     ("effective_rank", "effective rank\n(penultimate features)"),
                     ("weight_distance/all", "distance from\ninitial weights"),
                     ("churn/greedy_changed", "greedy actions changed\nsince the last measurement"))


def common_visits(logs: list[EvalLog]) -> list[tuple[str, int, int | None]]:
    """The (game, start, end) of every visit when all the runs share them, else [] (nothing to shade)."""
    tables = [[(v.game, v.start_step, v.end_step) for v in log.visit_table()] for log in logs]
    return tables[0] if tables and all(t == tables[0] for t in tables) else []


def shade_visits(ax, shaded: list[tuple[str, int, int | None]]) -> None:
    """Visits as alternating grey bands, each named above: no method colour is also a visit's."""
    for number, (trained, start, end) in enumerate(shaded):
        if end is not None:
            ax.axvspan(start, end, color="0.88" if number % 2 == 0 else "0.95", lw=0, zorder=0)
            ax.text((start + end) / 2, 1.0, trained, transform=ax.get_xaxis_transform(), ha="center",
                    va="bottom", fontsize=7, color="0.35")


def align(curves: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Runs' curves on one grid (the steps any of them evaluated, where they all have data)."""
    low, high = max(s[0] for s, _ in curves), min(s[-1] for s, _ in curves)
    grid = np.unique(np.concatenate([s for s, _ in curves]))
    grid = grid[(grid >= low) & (grid <= high)]
    return grid, np.array([np.interp(grid, s, v) for s, v in curves])


def _episodes_caption(logs: list[EvalLog]) -> str:
    counts = sorted({int(n) for log in logs if log.episodes is not None for n in log.episodes})
    if not counts:
        return "episodes per point: not recorded"
    return f"each point: the mean return of {counts[0] if len(counts) == 1 else f'{counts[0]}-{counts[-1]}'} episodes"


def plot_curves(groups: dict[str, list[EvalLog]], smoothing: int | None, band, path: Path) -> None:
    """Per game: every method's evaluation returns at the points evaluated; with MIN_RUNS_FOR_INTERVAL
    runs or more the mean over runs and its 95% CI band, with fewer each run on its own. Visits are
    shaded in greys (named above each span), so no method colour is also a visit's; random and human
    reference returns are dashed lines."""
    plt = _pyplot()

    from envs.scores import reference_scores

    logs = [log for runs in groups.values() for log in runs]
    games = list(dict.fromkeys(g for log in logs for g in log.game_order))
    shaded = common_visits(logs)
    fig, axes = plt.subplots(len(games), 1, figsize=(10, 2.8 * len(games)), sharex=True, squeeze=False)
    colours = plt.get_cmap("tab10")
    for row, game in enumerate(games):
        ax = axes[row][0]
        shade_visits(ax, shaded)
        top = -np.inf
        for index, (method, runs) in enumerate(groups.items()):
            colour = colours(index % 10)
            curves = [log.series(game, smoothing) for log in runs if game in log.game_order]
            steps, values = align(curves) if curves else (np.array([]), None)
            if band is not None and len(curves) >= MIN_RUNS_FOR_INTERVAL and steps.size:
                mean, low, high = band(values)
                ax.plot(steps, mean, color=colour, marker="o", ms=3,
                        label=f"{method}: mean of {len(curves)} runs, 95% CI")
                ax.fill_between(steps, low, high, color=colour, alpha=0.2, lw=0)
                top = max(top, float(np.max(high)))
            else:
                note = (f"{method}: {len(curves)} runs, each shown (no CI under {MIN_RUNS_FOR_INTERVAL} runs)"
                        if len(curves) > 1 else method)
                for number, (s, v) in enumerate(curves):
                    ax.plot(s, v, marker="o", ms=3, lw=1, color=colour, alpha=1.0 if len(curves) == 1 else 0.7,
                            label=note if number == 0 else None)
                    top = max(top, float(np.max(v)) if v.size else top)
        reference, off_axis = reference_scores(game), ""
        if reference is not None:
            random_score, human_score = reference
            ax.axhline(random_score, color="0.3", ls="--", lw=1,
                       label="random / human (reference)" if row == 0 else None)
            shown = [random_score]
            if human_score <= 1.5 * max(top, random_score, 1e-9) or top >= human_score:
                ax.axhline(human_score, color="0.3", ls=":", lw=1)
                shown.append(human_score)
            else:
                off_axis = f"\n(human {human_score:g}: above)"
            low, high = ax.get_ylim()  # axhline does not widen the axis: keep the drawn references in view
            pad = 0.05 * ((max(high, *shown) - min(low, *shown)) or 1.0)
            ax.set_ylim(min(low, min(shown) - pad), max(high, max(shown) + pad))
        ax.set_ylabel(f"{game}\nmean return{off_axis}", fontsize=9)
        ax.grid(alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    axes[0][0].legend(handles, labels, fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    axes[-1][0].set_xlabel("agent steps")
    fig.suptitle("Evaluation on every game during training"
                 + (" (grey bands: the visits, named above)" if shaded else " (visits differ between runs: not shaded)")
                 + f"\n{_episodes_caption(logs)}"
                 + (f", trailing mean over {smoothing} evaluations" if smoothing else ""),
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_profiles(profiles: dict, taus: np.ndarray, path: Path) -> None:
    plt = _pyplot()

    fig, ax = plt.subplots(figsize=(6, 4))
    for index, (method, profile) in enumerate(profiles.items()):
        colour = plt.get_cmap("tab10")(index % 10)
        ax.plot(taus, profile["fraction"], color=colour, label=method)
        if "ci" in profile:
            ax.fill_between(taus, *profile["ci"], color=colour, alpha=0.25, lw=0)
    ax.set_xlim(taus[0], taus[-1])
    ax.set_xlabel(r"human-normalised score $\tau$")
    ax.set_ylabel(r"fraction of runs x games with score > $\tau$")
    with_ci = [("ci" in profile) for profile in profiles.values()]
    ax.set_title("Performance profile of the final scores" + (" (95% CI)" if all(with_ci) else
                 f" (95% CI for groups of {MIN_RUNS_FOR_INTERVAL}+ runs)" if any(with_ci) else
                 f" (no CI: fewer than {MIN_RUNS_FOR_INTERVAL} runs)"), fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_matrix(metrics: dict, path: Path, value_range: tuple[float, float], scale_label: str) -> None:
    """The normalised score on each game before training and after each finished visit, on the colour
    range shared by every run of the report (so two runs' matrices compare by colour)."""
    plt = _pyplot()

    matrix = metrics["matrix"]
    values = np.array(matrix["values"], dtype=float).reshape(len(matrix["rows"]), len(matrix["columns"]))
    before = np.array([np.nan if v is None else v for v in matrix.get("before", [None] * len(matrix["rows"]))],
                      dtype=float)
    values = np.column_stack([before, values])
    columns = ["before training", *matrix["columns"]]
    fig, ax = plt.subplots(figsize=(1.3 * values.shape[1] + 3.5, 0.7 * values.shape[0] + 2.2))
    image = ax.imshow(values, cmap="viridis", aspect="auto", vmin=value_range[0], vmax=value_range[1])
    ax.set_xticks(range(values.shape[1]), columns, rotation=30, ha="right")
    ax.set_yticks(range(values.shape[0]), matrix["rows"])
    middle = (value_range[0] + value_range[1]) / 2
    for (i, j), value in np.ndenumerate(values):
        ax.text(j, i, "n/a" if np.isnan(value) else f"{value:.2f}", ha="center", va="center",
                color="white" if np.isnan(value) or value < middle else "black", fontsize=9)
    ax.axvline(0.5, color="white", lw=2)
    ax.set_xlabel("before training, then after each finished visit (index: game trained)")
    ax.set_ylabel("score on game")
    ax.set_title(f"{metrics['run']}: normalised score\n(forgetting: a row's drop after a later visit; "
                 "transfer: a row's change before its own first visit)", fontsize=9)
    fig.colorbar(image, ax=ax, label=scale_label)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def matrix_range(metrics: list[dict]) -> tuple[float, float]:
    """One colour range for every run's matrix: [min(0, lowest), max(1, highest)]."""
    finite = [v for m in metrics for row in m["matrix"]["values"] + [m["matrix"].get("before", [])]
              for v in row if v is not None]
    return (min([0.0, *finite]), max([1.0, *finite]))


def plot_plasticity(groups: dict[str, list[tuple[EvalLog, PlasticityLog]]], band, path: Path) -> None:
    """The diagnostics over training per method: with MIN_RUNS_FOR_INTERVAL runs or more the mean and its 95% CI
    band over runs (on the steps they all measured), with fewer each run; visits shaded as in the curves."""
    plt = _pyplot()

    shaded = common_visits([log for runs in groups.values() for log, _ in runs])
    fig, axes = plt.subplots(len(PLASTICITY_PANELS), 1, figsize=(10, 2.4 * len(PLASTICITY_PANELS)), sharex=True,
                             squeeze=False)
    colours = plt.get_cmap("tab10")
    for row, (name, label) in enumerate(PLASTICITY_PANELS):
        ax = axes[row][0]
        shade_visits(ax, shaded)
        for index, (method, runs) in enumerate(groups.items()):
            colour = colours(index % 10)
            curves = [(p.steps, p.values[name]) for _, p in runs if name in p.values]
            if not curves:
                continue
            common = sorted(set.intersection(*(set(s.tolist()) for s, _ in curves)))
            if band is not None and len(curves) >= MIN_RUNS_FOR_INTERVAL and common:
                values = np.array([[dict(zip(s.tolist(), v))[step] for step in common] for s, v in curves])
                finite = np.isfinite(values).all(axis=0)
                steps = np.array(common)[finite]
                mean, low, high = band(values[:, finite])
                ax.plot(steps, mean, color=colour, marker="o", ms=2, label=f"{method}: mean of {len(curves)} runs, "
                        "95% CI")
                ax.fill_between(steps, low, high, color=colour, alpha=0.2, lw=0)
            else:
                note = f"{method}: {len(curves)} runs, each shown" if len(curves) > 1 else method
                for number, (steps, values) in enumerate(curves):
                    ax.plot(steps, values, color=colour, marker="o", ms=2, lw=1,
                            alpha=1.0 if len(curves) == 1 else 0.7, label=note if number == 0 else None)
        ax.set_ylabel(label, fontsize=9)
        ax.grid(alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    axes[0][0].legend(handles, labels, fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    axes[-1][0].set_xlabel("agent steps")
    fig.suptitle("Plasticity diagnostics on held-out replayed states of the task being trained"
                 + (" (grey bands: the visits)" if shaded else ""), fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
