#!/usr/bin/env python
"""Continual-learning metrics (CORA's definitions), aggregates over seeds and plots from runs' eval.csv.

    python scripts/report.py runs/ewc/seed0 runs/ewc/seed1 runs/none/seed0 runs/none/seed1 --out runs/report

metrics.json: for every run, CORA's isolated forgetting forgetting[game][by_game] and zero-shot
forward transfer forward_transfer[game][from_game], their means (mean_forgetting,
mean_forward_transfer), the final scores and the score matrix (one run: an object; several: a list).
A run trained with task_inference: fmn also gets `task_inference` from its contexts.csv: steps from each
true switch to its detection, context purity, contexts created against games visited.

With several runs of a method, aggregates.json and aggregates.md: per method (--group), the mean and the
interquartile mean with 95% stratified-bootstrap confidence intervals of the final human-normalised
score (per game and over games), of forgetting and of transfer. They need the `report` extra
(rliable): pip install -e '.[report]'.

Plots (matplotlib): curves.png (every game's evaluation return, methods overlaid, the mean over
runs with its 95% CI band, the visits shaded), performance_profile.png (with the aggregates) and
one matrix_<run>.png per run (the normalised score on game i after visit j).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from agent.metrics import EvalLog, MetricsError, compute_metrics, max_abs_returns, read_run  # noqa: E402
from agent.tasks import task_inference_summary  # noqa: E402

EXTRA_HINT = "pip install -e '.[report]'"


def run_labels(paths: list[Path]) -> list[str]:
    """The shortest path tails that tell the runs apart: seed0, or ewc/seed0 beside none/seed0."""
    parts = [path.resolve().parts for path in paths]
    for depth in range(1, max(len(p) for p in parts) + 1):
        labels = ["/".join(p[-depth:]) for p in parts]
        if len(set(labels)) == len(labels):
            return labels
    raise MetricsError("the same run directory is given twice")


def group_of(log: EvalLog, path: Path, how: str) -> str:
    if how == "none":
        return "all"
    if how == "parent":
        return path.resolve().parent.name
    if log.method is None:
        raise MetricsError(f"{path} has no config.yaml naming consolidation.method: "
                           "group the runs with --group parent or --group none.")
    return log.method


def align(curves: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Runs' curves on one grid (the steps any of them evaluated, where they all have data)."""
    low, high = max(s[0] for s, _ in curves), min(s[-1] for s, _ in curves)
    grid = np.unique(np.concatenate([s for s, _ in curves]))
    grid = grid[(grid >= low) & (grid <= high)]
    return grid, np.array([np.interp(grid, s, v) for s, v in curves])


def plot_curves(groups: dict[str, list[EvalLog]], smoothing: int | None, band, path: Path) -> None:
    """Per game: every method's evaluation return (mean over runs and its CI band when `band`)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    logs = [log for runs in groups.values() for log in runs]
    games = list(dict.fromkeys(g for log in logs for g in log.game_order))
    tables = [[(v.game, v.start_step, v.end_step) for v in log.visit_table()] for log in logs]
    shaded = tables[0] if all(t == tables[0] for t in tables) else []
    fig, axes = plt.subplots(len(games), 1, figsize=(9, 2.6 * len(games)), sharex=True, squeeze=False)
    shade = {game: plt.get_cmap("tab10")(i) for i, game in enumerate(games)}
    colours = plt.get_cmap("Dark2")
    for row, game in enumerate(games):
        ax = axes[row][0]
        for trained, start, end in shaded:
            if end is not None:
                ax.axvspan(start, end, color=shade[trained], alpha=0.12, lw=0)
        for index, (method, runs) in enumerate(groups.items()):
            colour = colours(index) if len(groups) > 1 else "black"
            curves = [log.series(game, smoothing) for log in runs if game in log.game_order]
            steps, values = align(curves) if curves else (np.array([]), None)
            if band is not None and len(curves) > 1 and steps.size:
                mean, low, high = band(values)
                ax.plot(steps, mean, color=colour, label=f"{method} (mean of {len(curves)}, 95% CI)")
                ax.fill_between(steps, low, high, color=colour, alpha=0.25, lw=0)
            else:
                for number, (s, v) in enumerate(curves):
                    ax.plot(s, v, marker="o", ms=3, color=colour, alpha=1.0 if len(curves) == 1 else 0.6,
                            label=method if number == 0 else None)
        ax.set_ylabel(f"{game}\nmean return")
        ax.grid(alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    handles += [plt.Rectangle((0, 0), 1, 1, color=shade[g], alpha=0.25) for g in games] if shaded else []
    labels += [f"training {g}" for g in games] if shaded else []
    axes[0][0].legend(handles, labels, fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    axes[-1][0].set_xlabel("agent steps")
    fig.suptitle("Evaluation on every game during training" +
                 (" (shaded: the game being trained)" if shaded else " (visits differ between runs: not shaded)"))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_profiles(profiles: dict, taus: np.ndarray, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for index, (method, profile) in enumerate(profiles.items()):
        colour = plt.get_cmap("Dark2")(index)
        ax.plot(taus, profile["fraction"], color=colour, label=method)
        ax.fill_between(taus, *profile["ci"], color=colour, alpha=0.25, lw=0)
    ax.set_xlabel(r"human-normalised score $\tau$")
    ax.set_ylabel(r"fraction of runs x games with score > $\tau$")
    ax.set_title("Performance profile of the final scores (95% CI)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_matrix(metrics: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    matrix = metrics["matrix"]
    values = np.array(matrix["values"], dtype=float).reshape(len(matrix["rows"]), len(matrix["columns"]))
    fig, ax = plt.subplots(figsize=(1.3 * values.shape[1] + 3, 0.7 * values.shape[0] + 2))
    image = ax.imshow(values, cmap="viridis", aspect="auto")
    ax.set_xticks(range(values.shape[1]), matrix["columns"], rotation=30, ha="right")
    ax.set_yticks(range(values.shape[0]), matrix["rows"])
    for (i, j), value in np.ndenumerate(values):
        ax.text(j, i, "n/a" if np.isnan(value) else f"{value:.2f}", ha="center", va="center",
                color="white" if np.isnan(value) or value < np.nanmean(values) else "black", fontsize=9)
    ax.set_xlabel("after visit (index: game trained)")
    ax.set_ylabel("score on game")
    ax.set_title(f"{metrics['run']}: normalised score after each finished visit")
    fig.colorbar(image, ax=ax)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="run directories holding eval.csv (and config.yaml)")
    parser.add_argument("--out", type=Path, help="where the reports and plots go (default: the first run)")
    parser.add_argument("--group", choices=("method", "parent", "none"), default="method",
                        help="what makes runs one method: config.yaml's consolidation.method (default), the "
                             "run directory's parent folder, or nothing (all runs together)")
    parser.add_argument("--scale", choices=("method", "shared"), default="method",
                        help="each game's returns are divided by their largest absolute value over the runs of "
                             "the same method (CORA, default) or over all runs given (one scale for all)")
    parser.add_argument("--smoothing", type=int, default=None, metavar="N",
                        help="trailing moving average over N evaluations before anything else (CORA: 20 on "
                             "Atari, with evaluations every 0.25M steps); off by default")
    parser.add_argument("--until-step", type=int, default=None, metavar="N",
                        help="only the evaluations up to step N of every run (compare runs at one budget)")
    parser.add_argument("--reps", type=int, default=10_000, help="bootstrap resamples for the confidence intervals")
    parser.add_argument("--seed", type=int, default=0, help="seed of the bootstrap")
    parser.add_argument("--no-aggregates", action="store_true", help="metrics.json and plots only")
    parser.add_argument("--no-plots", action="store_true")
    args = parser.parse_args(argv)
    if args.smoothing is not None and args.smoothing < 1:
        parser.error("--smoothing must be at least 1")
    if args.reps < 1:
        parser.error("--reps must be at least 1")

    try:
        labels = run_labels(args.runs)
        logs = []
        for path, label in zip(args.runs, labels):
            log = read_run(path)
            log.name = label
            if args.until_step is not None:
                log = log.until(args.until_step)
            logs.append(log)
        groups: dict[str, list[EvalLog]] = {}
        for path, log in zip(args.runs, logs):
            groups.setdefault(group_of(log, path, args.group), []).append(log)
        for log in logs:
            log.visit_table()  # malformed visits are reported here, before anything is written
    except MetricsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    aggregates = None
    if any(len(runs) > 1 for runs in groups.values()) and not args.no_aggregates:
        try:
            from agent import aggregates
        except ImportError as exc:
            print(f"error: aggregating several runs of a method needs the `report` extra ({exc}): {EXTRA_HINT}\n"
                  "(or pass --no-aggregates for metrics.json and plots only)", file=sys.stderr)
            return 2
    for log in logs:
        if log.steps_per_visit is None:
            print(f"note: {log.name} has no config.yaml: its last visit counts as unfinished.", file=sys.stderr)

    out = args.out or args.runs[0]
    out.mkdir(parents=True, exist_ok=True)
    shared = max_abs_returns(logs, args.smoothing) if args.scale == "shared" else None
    by_run = {}
    for method, runs in groups.items():
        scale = shared or max_abs_returns(runs, args.smoothing)
        for log in runs:
            by_run[log.name] = dict(compute_metrics(log, scale, args.smoothing), group=method)
    metrics = [by_run[log.name] for log in logs]
    inferred = []
    for path, m in zip(args.runs, metrics):
        if (path / "contexts.csv").is_file():
            try:
                with open(path / "contexts.csv", newline="") as handle:
                    context_rows = [r for r in csv.DictReader(handle)
                                    if args.until_step is None or int(r["step"]) <= args.until_step]
                summary = task_inference_summary(context_rows, m["final_step"])
            except (KeyError, TypeError, ValueError) as exc:
                print(f"error: {path / 'contexts.csv'} is not a run's contexts.csv ({type(exc).__name__}: {exc}); "
                      "it is written by training with task_inference: fmn", file=sys.stderr)
                return 2
            if summary:
                m["task_inference"] = summary
                inferred.append(m)
    metrics_of = {method: [by_run[log.name] for log in runs] for method, runs in groups.items()}
    (out / "metrics.json").write_text(json.dumps(metrics if len(metrics) > 1 else metrics[0], indent=2))
    print("| run | method | final human-normalised | mean forgetting | mean forward transfer |\n"
          "|---|---|---:|---:|---:|")
    for m in metrics:
        cells = [m["mean_final_human_normalized"], m["mean_forgetting"], m["mean_forward_transfer"]]
        print(f"| {m['run']} | {m['group']} | " + " | ".join("n/a" if c is None else f"{c:.3f}" for c in cells) + " |")
    if inferred:
        print("\n| run (fmn) | true switches | detected | median delay (steps) | max delay | purity "
              "| contexts / games |\n|---|---:|---:|---:|---:|---:|---:|")
        for m in inferred:
            t = m["task_inference"]
            purity = "n/a" if t["purity"] is None else f"{t['purity']:.3f}"
            print(f"| {m['run']} | {t['switches']} | {t['detected']} | {t['median_delay_steps'] or 'n/a'} | "
                  f"{t['max_delay_steps'] or 'n/a'} | {purity} | {t['contexts_created']} / {t['games_visited']} |")
    written = ["metrics.json"]

    summary = None
    if aggregates is not None:
        notes = [f"normalisation of forgetting and transfer: each game's returns divided by their largest absolute "
                 f"value over the runs of {'all methods' if shared else 'the same method'}"
                 + (f", after a trailing moving average over {args.smoothing} evaluations" if args.smoothing else "")]
        for method, runs in groups.items():
            ends = sorted({log.steps.max().item() for log in runs})
            if len(ends) > 1:
                notes.append(f"{method}: the runs end at different steps {ends}: their final scores differ in age")
                print(f"warning: {notes[-1]}", file=sys.stderr)
        summary = aggregates.aggregate(metrics_of, args.reps, args.seed)
        summary["normalisation"] = "shared" if shared else "method"
        summary["smoothing"] = args.smoothing
        matrices = {method: aggregates.final_score_matrix(runs)[1] for method, runs in metrics_of.items()}
        matrices = {method: m for method, m in matrices.items() if m.size}
        if matrices:
            everything = np.concatenate([m.ravel() for m in matrices.values()])
            taus = np.linspace(min(0.0, everything.min()), max(1.0, everything.max()), 101)
            summary["performance_profile"] = {"taus": taus.tolist(),
                                              **aggregates.performance_profile(matrices, taus, args.reps, args.seed)}
        (out / "aggregates.json").write_text(json.dumps(summary, indent=2))
        (out / "aggregates.md").write_text(aggregates.to_markdown(summary, notes))
        written += ["aggregates.json", "aggregates.md"]

    if not args.no_plots:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            print(f"matplotlib is not installed ({EXTRA_HINT}); no plots.", file=sys.stderr)
        else:
            band = None if aggregates is None else (lambda values: aggregates.curve_band(values, args.reps, args.seed))
            plot_curves(groups, args.smoothing, band, out / "curves.png")
            written.append("curves.png")
            if summary is not None and "performance_profile" in summary:
                profile = dict(summary["performance_profile"])
                plot_profiles({k: v for k, v in profile.items() if k != "taus"}, np.array(profile["taus"]),
                              out / "performance_profile.png")
                written.append("performance_profile.png")
            for m in metrics:
                name = f"matrix_{m['run'].replace('/', '_')}.png"
                plot_matrix(m, out / name)
                written.append(name)
    print(f"Wrote {', '.join(written)} in {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
