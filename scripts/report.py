#!/usr/bin/env python
"""Continual-learning metrics and plots from one or more runs' eval.csv.

    python scripts/report.py runs/demo/none runs/demo/ewc --out runs/demo/report

Writes metrics.json (forgetting, forward transfer, final performance, the score matrix)
and PNG plots: per-game evaluation curves with the game-visit segments shaded (several
runs overlaid), and for each run a heatmap of the score on game i after visit j.
Needs the `plot` extra (matplotlib) for the figures.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from agent.metrics import EvalLog, MetricsError, compute_metrics, max_abs_returns  # noqa: E402


def plot_curves(logs: list[EvalLog], scale: dict[str, float], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    games = list(dict.fromkeys(g for log in logs for g in log.game_order))
    fig, axes = plt.subplots(len(games), 1, figsize=(9, 2.6 * len(games)), sharex=True, squeeze=False)
    palette = plt.get_cmap("tab10")  # games (shading)
    runs_palette = plt.get_cmap("Dark2")  # runs (lines)
    shade = {game: palette(i) for i, game in enumerate(games)}
    reference = logs[0]
    for row, game in enumerate(games):
        ax = axes[row][0]
        start = int(reference.steps.min())
        for _, trained, end in reference.visit_ends():  # shade each visit in its game's colour
            ax.axvspan(start, end, color=shade[trained], alpha=0.12, lw=0)
            start = end
        for index, log in enumerate(logs):
            mask = np.array(log.games) == game
            order = np.argsort(log.steps[mask])
            ax.plot(log.steps[mask][order], log.returns[mask][order] / (scale.get(game) or 1.0),
                    marker="o", ms=3, color=runs_palette(index) if len(logs) > 1 else "black", label=log.name)
        ax.set_ylabel(f"{game}\nnormalised return")
        ax.grid(alpha=0.3)
    handles = [plt.Rectangle((0, 0), 1, 1, color=shade[g], alpha=0.25) for g in games]
    axes[0][0].legend(handles + axes[0][0].get_lines(), [f"training {g}" for g in games] +
                      [log.name for log in logs], fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    axes[-1][0].set_xlabel("agent steps")
    fig.suptitle("Evaluation on every game during training (shaded: the game being trained)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_matrix(metrics: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    matrix = metrics["matrix"]
    values = np.array(matrix["values"], dtype=float)
    fig, ax = plt.subplots(figsize=(1.3 * values.shape[1] + 3, 0.7 * values.shape[0] + 2))
    image = ax.imshow(values, cmap="viridis", aspect="auto")
    ax.set_xticks(range(values.shape[1]), matrix["columns"], rotation=30, ha="right")
    ax.set_yticks(range(values.shape[0]), matrix["rows"])
    for (i, j), value in np.ndenumerate(values):
        ax.text(j, i, "n/a" if np.isnan(value) else f"{value:.2f}", ha="center", va="center",
                color="white" if np.isnan(value) or value < np.nanmean(values) else "black", fontsize=9)
    ax.set_xlabel("after visit (index: game trained)")
    ax.set_ylabel("score on game")
    ax.set_title(f"{metrics['run']}: normalised score after each visit")
    fig.colorbar(image, ax=ax)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="run directories holding eval.csv")
    parser.add_argument("--out", type=Path, help="where metrics.json and the plots go (default: the first run)")
    parser.add_argument("--no-plots", action="store_true")
    args = parser.parse_args(argv)
    try:
        logs = [EvalLog.read(run / "eval.csv", run.name) for run in args.runs]
    except MetricsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = args.out or args.runs[0]
    out.mkdir(parents=True, exist_ok=True)
    scale = max_abs_returns(logs)
    metrics = [compute_metrics(log, scale) for log in logs]
    (out / "metrics.json").write_text(json.dumps(metrics if len(metrics) > 1 else metrics[0], indent=2))
    print("| run | final performance | mean forgetting | mean forward transfer |\n|---|---:|---:|---:|")
    for m in metrics:
        cells = [m["mean_final_performance"], m["mean_forgetting"], m["mean_forward_transfer"]]
        print(f"| {m['run']} | " + " | ".join("n/a" if c is None else f"{c:.3f}" for c in cells) + " |")
    if not args.no_plots:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            print("matplotlib is not installed (pip install -e '.[plot]'); metrics written, no plots.",
                  file=sys.stderr)
            return 0
        plot_curves(logs, scale, out / "curves.png")
        for m in metrics:
            plot_matrix(m, out / f"matrix_{m['run']}.png")
    print(f"Wrote {out / 'metrics.json'}" + ("" if args.no_plots else " and plots"), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
