#!/usr/bin/env python
"""The evidence pilot's report: which games does one visit at the sweep's budget teach?

    python scripts/sweep.py configs/sweep_pilot.yaml --out runs/pilot
    python scripts/pilot_report.py runs/pilot --out docs/results/pilot --episodes 16

For every run of the pilot (one game, one visit) this plays the final network twice (evaluation
seeds 1 and 2, --episodes each, the run's epsilon and frame cap) and random play once (epsilon 1),
then ranks the games by how far the learned score clears random play in units of the evaluation's
noise:

    margin = (learned - random) / sqrt(se_learned^2 + se_random^2)

where `learned` pools both evaluations (2 x --episodes episodes) and se is a mean's standard error
(sample standard deviation / sqrt(episodes)). The two evaluations of the same network are compared
too (retest z = (A - B) / sqrt(se_A^2 + se_B^2)): |z| < 2 means they agree. `episodes for se <= gain/4`
is how many episodes an evaluation needs for its standard error to be a quarter of the gain over
random: the sweep's eval.episodes comes from it.

Writes pilot.md (the table), pilot.json and pilot_curves.png (each run's evaluations during training,
+-1 se, against random play). The evaluations are kept under OUT/evaluations/ and reused on a rerun.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import yaml  # noqa: E402

from agent.cli import evaluate_main  # noqa: E402
from agent.metrics import EvalLog, MetricsError  # noqa: E402

EVALUATIONS = (("learned-a", 1, None), ("learned-b", 2, None), ("random", 3, 1.0))  # name, seed, epsilon


def standard_error(std: float, episodes: int) -> float:
    """The standard error of an evaluation's mean return from its std (numpy's population std)."""
    return std / math.sqrt(episodes - 1) if episodes > 1 else math.inf


def evaluate(run: Path, game: str, out: Path, name: str, seed: int, epsilon: float, episodes: int,
             frames: int) -> dict:
    path = out / "evaluations" / f"{game}-{name}.json"
    if path.is_file():
        result = json.loads(path.read_text())
        if result["games"][game]["episodes"] == episodes:
            return result["games"][game]
    path.parent.mkdir(parents=True, exist_ok=True)
    code = evaluate_main(["--checkpoint", str(run), "--games", game, "--episodes", str(episodes), "--seed", str(seed),
                          "--epsilon", str(epsilon), "--max-episode-frames", str(frames), "--output", str(path)])
    if code != 0:
        raise SystemExit(f"error: evaluating {run} ({name}) failed with exit code {code}")
    return json.loads(path.read_text())["games"][game]


def pilot_rows(runs: list[Path], out: Path, episodes: int) -> list[dict]:
    rows = []
    for run in runs:
        config = yaml.safe_load((run / "config.yaml").read_text())
        [game] = config["schedule"]["games"]
        frames = config["eval"]["max_episode_frames"]
        results = {name: evaluate(run, game, out, name, seed, config["eval"]["epsilon"] if epsilon is None else epsilon,
                                  episodes, frames)
                   for name, seed, epsilon in EVALUATIONS}
        a, b, rand = results["learned-a"], results["learned-b"], results["random"]
        log = EvalLog.read(run / "eval.csv")
        start = int(np.argmin(log.steps))  # the untrained network, as training evaluated it at step 0
        with open(run / "eval.csv", newline="") as handle:
            first = next(r for r in csv.DictReader(handle) if int(r["step"]) == int(log.steps[start]))
        untrained_n = int(first["episodes"])
        untrained, untrained_se = float(first["mean_return"]), standard_error(float(first["std_return"]), untrained_n)
        se_a, se_b, se_r = (standard_error(r["std"], r["episodes"]) for r in (a, b, rand))
        learned, se_learned = (a["mean"] + b["mean"]) / 2, math.sqrt(se_a**2 + se_b**2) / 2
        gain = learned - rand["mean"]
        noise = math.sqrt(se_learned**2 + se_r**2)
        sd = math.sqrt((se_a**2 + se_b**2) / 2 * (episodes - 1)) if episodes > 1 else math.inf  # per-episode sd
        rows.append({
            "game": game, "run": run.name, "steps": int(log.steps.max()),
            "untrained": untrained, "untrained_se": untrained_se, "untrained_episodes": untrained_n,
            "margin_over_untrained": (learned - untrained) / math.hypot(se_learned, untrained_se)
                if math.hypot(se_learned, untrained_se) > 0 else 0.0,
            "episodes": episodes, "random": rand["mean"], "random_se": se_r,
            "learned_a": a["mean"], "learned_a_se": se_a, "learned_b": b["mean"], "learned_b_se": se_b,
            "learned": learned, "learned_se": se_learned, "gain": gain,
            "margin": gain / noise if noise > 0 else (math.inf if gain > 0 else 0.0),
            "retest_z": (a["mean"] - b["mean"]) / math.hypot(se_a, se_b) if math.hypot(se_a, se_b) > 0 else 0.0,
            "episodes_for_quarter_gain":
                (math.ceil((4 * sd / gain) ** 2) if gain > 0 and math.isfinite(sd) else None),
        })
    return sorted(rows, key=lambda r: -r["margin"])


def to_markdown(rows: list[dict], chosen: list[str]) -> str:
    lines = ["# Evidence pilot: one visit of each candidate game at the sweep's per-visit budget", "",
             f"Each run: one game, {rows[0]['steps']:,} agent steps (the final network), evaluated twice "
             f"({rows[0]['episodes']} episodes each, seeds 1 and 2) and against random play ({rows[0]['episodes']} "
             "episodes, epsilon 1). Mean return +- its standard error. margin = (learned - random) / "
             "sqrt(se_learned^2 + se_random^2), learned pooling both evaluations; retest z compares the two "
             "evaluations of the same network (|z| < 2: they agree).", "",
             "The untrained network (step 0, as training evaluated it, epsilon 0.05) is a second baseline: a "
             "near-deterministic policy can beat random play without learning anything; 'over untrained' is "
             "(learned - untrained) in the same noise units.", "",
             "| game | random | untrained (step 0) | learned (eval A) | learned (eval B) | retest z | gain over random "
             "| margin over random (noise units) | margin over untrained | episodes for se <= gain/4 |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        need = "n/a (no gain)" if r["episodes_for_quarter_gain"] is None else f"{r['episodes_for_quarter_gain']}"
        lines.append(f"| {r['game']}{' (chosen)' if r['game'] in chosen else ''} | {r['random']:.1f} +- "
                     f"{r['random_se']:.1f} | {r['untrained']:.1f} +- {r['untrained_se']:.1f} | {r['learned_a']:.1f} "
                     f"+- {r['learned_a_se']:.1f} | {r['learned_b']:.1f} +- {r['learned_b_se']:.1f} | "
                     f"{r['retest_z']:+.2f} | {r['gain']:+.1f} | {r['margin']:.1f} | {r['margin_over_untrained']:.1f} "
                     f"| {need} |")
    lines += ["", f"Chosen (widest margins): {', '.join(chosen)}.", ""]
    return "\n".join(lines)


def plot(runs: list[Path], rows: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_game = {r["run"]: r for r in rows}
    columns = 4
    lines = math.ceil(len(runs) / columns)
    fig, axes = plt.subplots(lines, columns, figsize=(3.2 * columns, 2.6 * lines), squeeze=False)
    for ax, run in zip(axes.ravel(), runs):
        row = by_game[run.name]
        with open(run / "eval.csv", newline="") as handle:
            table = list(csv.DictReader(handle))
        steps = np.array([int(r["step"]) for r in table])
        means = np.array([float(r["mean_return"]) for r in table])
        n = np.array([int(r["episodes"]) for r in table])
        se = np.array([standard_error(float(r["std_return"]), max(int(r["episodes"]), 2)) for r in table])
        ax.errorbar(steps, means, yerr=se, marker="o", ms=3, color="tab:blue", capsize=2, label="training evals")
        ax.axhspan(row["random"] - row["random_se"], row["random"] + row["random_se"], color="0.6", alpha=0.4, lw=0)
        ax.axhline(row["random"], color="0.3", ls="--", lw=1, label="random play")
        ax.errorbar([steps.max()], [row["learned"]], yerr=[row["learned_se"]], marker="s", color="tab:red",
                    capsize=3, label="final, 2 evals pooled")
        ax.set_title(f"{row['game']}: margin {row['margin']:.1f}", fontsize=9)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in axes.ravel()[len(runs):]:
        ax.axis("off")
    axes[0][0].legend(fontsize=6)
    fig.suptitle(f"Pilot: one visit per game (mean return +- 1 se; training evals of {int(n[0])} episodes, "
                 f"final of {2 * rows[0]['episodes']})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("pilot", type=Path, help="the pilot sweep's directory (runs/pilot)")
    parser.add_argument("--out", type=Path, required=True, help="where pilot.md, pilot.json and the plot go")
    parser.add_argument("--episodes", type=int, default=16, help="episodes per evaluation (default 16)")
    parser.add_argument("--choose", type=int, default=3, help="how many games to choose (default 3)")
    args = parser.parse_args(argv)
    if args.episodes < 2:
        parser.error("--episodes must be at least 2 (a standard error needs two episodes)")
    runs = sorted(p for p in args.pilot.iterdir() if (p / "config.yaml").is_file()) if args.pilot.is_dir() else []
    if not runs:
        print(f"error: {args.pilot} holds no run directories (give the pilot sweep's --out)", file=sys.stderr)
        return 2
    try:
        rows = pilot_rows(runs, args.out, args.episodes)
    except (MetricsError, KeyError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    chosen = [r["game"] for r in rows[:args.choose] if r["margin"] > 0]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "pilot.json").write_text(json.dumps({"rows": rows, "chosen": chosen}, indent=2))
    table = to_markdown(rows, chosen)
    (args.out / "pilot.md").write_text(table)
    print(table)
    plot(runs, rows, args.out / "pilot_curves.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
