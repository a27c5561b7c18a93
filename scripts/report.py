#!/usr/bin/env python
"""Continual-learning metrics (CORA's definitions), aggregates over seeds and plots from runs' eval.csv.

    python scripts/report.py runs/ewc/seed0 runs/ewc/seed1 runs/none/seed0 runs/none/seed1 --out runs/report

metrics.json: for every run, CORA's isolated forgetting forgetting[game][by_game] and zero-shot
forward transfer forward_transfer[game][from_game], their means (mean_forgetting,
mean_forward_transfer), the final scores and the score matrix (one run: an object; several: a list),
and `scale`: how returns were normalised. By default (--scale shared) every game's returns are divided
by their largest absolute value over all the runs given, so two runs with identical returns get
identical metrics whatever method they belong to; --scale method is CORA's per-method scale.
A run trained with task_inference: fmn also gets `task_inference` from its contexts.csv: steps from each
true switch to its detection, context purity, contexts created against games visited. A run with a
plasticity.csv gets `plasticity.end_of_visit`: every diagnostic's value at the last measurement of each visit,
and `plasticity.visits`: per finished visit, the trained game's return at its end beside the dormant fractions,
effective rank and distance from the initial weights (also printed, and written as plasticity.md).
A run's method is its consolidation.method, with `+` its plasticity.method when there is one (ewc+redo).

With several runs of a method, aggregates.json and aggregates.md: per method (--group), the mean and the
interquartile mean of the final human-normalised score (per game and over games), of forgetting and of
transfer; with 5 or more runs in a group, their 95% stratified-bootstrap confidence intervals, and for
each pair of methods with 5+ runs each, rliable's probability of improvement (with its CI) on the final
scores and a permutation test of the difference in mean forgetting. A group of fewer than 5 runs gets
its per-run values and no interval. They need the `report` extra (rliable): pip install -e '.[report]'.

Plots (matplotlib): curves.png (every game's evaluation returns at the points evaluated, methods
overlaid, the mean with its 95% CI band over 5+ runs, each run otherwise; the visits shaded grey; random
and human reference lines), performance_profile.png (with the aggregates) and one matrix_<run>.png per
run (the normalised score on game i before training and after visit j, one colour range for all runs),
plasticity.png (dormant units, effective rank, distance from the initial weights and churn over training,
per method, the same bands and shading as the curves) when the runs have plasticity.csv.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

try:
    import numpy as np

    from agent.config import ConfigError
    from agent.metrics import SCALES, EvalLog, MetricsError, compute_metrics, max_abs_returns, read_run
    from agent.plasticity_log import PlasticityLog, visit_markdown, visit_table
    from agent.report_plots import matrix_range, plot_curves, plot_matrix, plot_plasticity, plot_profiles
    from agent.rundir import check_creatable, holds_run, owned_by_run
    from agent.tasks import task_inference_summary
except KeyboardInterrupt:  # Ctrl-C while Python was still importing: nothing was written
    print("Interrupted while starting: nothing was written.", file=sys.stderr)
    sys.exit(130)

EXTRA_HINT = "pip install -e '.[report]'"


def default_out(runs: list[Path]) -> Path:
    """Beside the record, never in it: RUN/report for one run, else report/ in the runs' common folder."""
    if len(runs) == 1:
        return runs[0] / "report"
    common = Path(os.path.commonpath([str(run.resolve()) for run in runs]))
    if len(common.parts) < 2:
        raise ConfigError(f"the runs share no folder but {common}: give --out, e.g. --out {runs[0].parent / 'report'}.")
    return common / "report"


def check_out(out: Path) -> None:
    """Before anything is computed: --out must be a folder this process can write, and neither a run
    directory nor a part of a run's record (its config.yaml, eval.csv, tb/, checkpoints/, milestones/)."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; give a folder, e.g. --out {out.with_suffix('')}-report.")
    if holds_run(out):
        raise ConfigError(f"--out {out} is a run directory: the report would mix with its record. "
                          f"Give e.g. --out {out / 'report'}.")
    run = owned_by_run(out / "metrics.json")
    if run is not None:
        raise ConfigError(f"--out {out} lies inside the record of the run in {run}. Give e.g. --out {run / 'report'}.")
    check_creatable(out, "--out")


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
        raise MetricsError(f"{path} has no config.yaml naming consolidation.method, so its method is unknown: "
                           "group the runs with --group parent (their folders) or --group none (all together).")
    return log.method


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="run directories holding eval.csv (and config.yaml)")
    parser.add_argument("--out", type=Path, help="where the reports and plots go (default: RUN/report for one run; "
                        "for several, report/ in the folder that holds them)")
    parser.add_argument("--group", choices=("method", "parent", "none"), default="method",
                        help="what makes runs one method: config.yaml's consolidation.method (default), the "
                             "run directory's parent folder, or nothing (all runs together)")
    parser.add_argument("--scale", choices=tuple(SCALES), default="shared",
                        help="each game's returns are divided by their largest absolute value over all the runs "
                             "given (shared, the default: methods compared on one scale) or over the runs of the "
                             "same method (method: CORA's per-method scale)")
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
        out = args.out or default_out(args.runs)
        check_out(out)
        labels = run_labels(args.runs)
        logs = []
        for path, label in zip(args.runs, labels):
            log = read_run(path)
            log.name = label
            if args.until_step is not None:
                log = log.until(args.until_step)
            logs.append(log)
        groups: dict[str, list[EvalLog]] = {}
        alone = len(logs) == 1 and logs[0].method is None  # one run: its method only labels the table
        for path, log in zip(args.runs, logs):
            groups.setdefault("unknown" if alone else group_of(log, path, args.group), []).append(log)
        for log in logs:
            log.visit_table()  # malformed visits are reported here, before anything is written
    except (MetricsError, ConfigError) as exc:
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

    shared = max_abs_returns(logs, args.smoothing) if args.scale == "shared" else None
    by_run = {}
    try:
        for method, runs in groups.items():
            scale = shared or max_abs_returns(runs, args.smoothing)
            for log in runs:
                by_run[log.name] = dict(compute_metrics(log, scale, args.smoothing), group=method, scale=args.scale)
    except MetricsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
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
    try:
        plasticity = {log.name: PlasticityLog.read(path, args.until_step) for path, log in zip(args.runs, logs)}
    except MetricsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    visit_tables = {}
    for m, log in zip(metrics, logs):
        if plasticity[m["run"]] is not None:
            visit_tables[m["run"]] = (m["group"], visit_table(log, plasticity[m["run"]]))
            m["plasticity"] = {"end_of_visit": plasticity[m["run"]].end_of_visits(),
                               "visits": visit_tables[m["run"]][1]}
    metrics_of = {method: [by_run[log.name] for log in runs] for method, runs in groups.items()}
    out.mkdir(parents=True, exist_ok=True)  # only now: a refused report leaves no empty folder behind
    (out / "metrics.json").write_text(json.dumps(metrics if len(metrics) > 1 else metrics[0], indent=2))
    scale_note = (f"scale: {args.scale}, {SCALES[args.scale]}"
                  + (f"; after a trailing moving average over {args.smoothing} evaluations" if args.smoothing else ""))
    print(f"Forgetting and transfer are normalised returns; {scale_note}.\n")
    print("| run | method | final human-normalised | mean forgetting | mean forward transfer |\n"
          "|---|---|---:|---:|---:|")
    for m in metrics:
        cells = [m["mean_final_human_normalized"], m["mean_forgetting"], m["mean_forward_transfer"]]
        print(f"| {m['run']} | {m['group']} | " + " | ".join("n/a" if c is None else f"{c:.3f}" for c in cells) + " |")
    if inferred:
        print("\n| run (fmn) | true switches | detected | median delay (steps) | max delay | purity "
              "| contexts / games | NMI | games sharing a main context | games split | spurious changes / visit "
              "(max) |\n|---|---:|---:|---:|---:|---:|---:|---:|---|---|---:|")
        for m in inferred:
            t = m["task_inference"]
            purity, nmi = ("n/a" if t[k] is None else f"{t[k]:.3f}" for k in ("purity", "nmi"))
            merged = "; ".join(", ".join(group) for group in t["merged_games"]) or "none"
            split = ", ".join(f"{g} ({n})" for g, n in t["contexts_per_game"].items() if n > 1) or "none"
            print(f"| {m['run']} | {t['switches']} | {t['detected']} | {t['median_delay_steps'] or 'n/a'} | "
                  f"{t['max_delay_steps'] or 'n/a'} | {purity} | {t['contexts_created']} / {t['games_visited']} | "
                  f"{nmi} | {merged} | {split} | {t['spurious_changes_per_visit']:.1f} "
                  f"({t['max_spurious_changes_in_a_visit']}) |")
    written = ["metrics.json"]
    if visit_tables:
        table = visit_markdown(visit_tables)
        print("\nPlasticity at the end of each visit (the diagnostics on held-out replayed states of the game "
              "trained; (new): its first visit):\n\n" + table, end="")
        (out / "plasticity.md").write_text(
            "# Plasticity at the end of each visit\n\nWritten by `scripts/report.py`: per run and finished visit, "
            "the game it trained, that game's mean return at the visit's last evaluation (raw and "
            "human-normalised), and the diagnostics of the visit's last measurement (`plasticity.csv`), on "
            "held-out replayed states of the game trained. (new): the game's first visit.\n\n" + table)
        written.append("plasticity.md")

    summary = None
    if aggregates is not None:
        notes = [f"normalisation of forgetting and transfer: {scale_note}"]
        for method, runs in groups.items():
            ends = sorted({log.steps.max().item() for log in runs})
            if len(ends) > 1:
                notes.append(f"{method}: the runs end at different steps {ends}: their final scores differ in age")
                print(f"warning: {notes[-1]}", file=sys.stderr)
        summary = aggregates.aggregate(metrics_of, args.reps, args.seed, forgetting_test=args.scale == "shared")
        summary["normalisation"] = args.scale
        summary["normalisation_note"] = SCALES[args.scale]
        summary["smoothing"] = args.smoothing
        matrices = {method: aggregates.final_score_matrix(runs)[1] for method, runs in metrics_of.items()}
        matrices = {method: m for method, m in matrices.items() if m.size}
        if matrices:
            taus = aggregates.profile_taus(matrices)
            summary["performance_profile"] = {"taus": taus.tolist(),
                                              **aggregates.performance_profile(matrices, taus, args.reps, args.seed)}
        (out / "aggregates.json").write_text(json.dumps(summary, indent=2))
        (out / "aggregates.md").write_text(aggregates.to_markdown(summary, notes))
        written += ["aggregates.json", "aggregates.md"]

    if not args.no_plots:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            print("matplotlib is not installed (pip install -e '.[plot]', or '.[report]', which has it too); no plots.",
                  file=sys.stderr)
        else:
            band = None if aggregates is None else (lambda values: aggregates.curve_band(values, args.reps, args.seed))
            plot_curves(groups, args.smoothing, band, out / "curves.png")
            written.append("curves.png")
            measured = {method: [(log, plasticity[log.name]) for log in runs if plasticity[log.name] is not None]
                        for method, runs in groups.items()}
            if any(measured.values()):
                plot_plasticity({k: v for k, v in measured.items() if v}, band, out / "plasticity.png")
                written.append("plasticity.png")
            if summary is not None and "performance_profile" in summary:
                profile = dict(summary["performance_profile"])
                plot_profiles({k: v for k, v in profile.items() if k not in ("taus",)}, np.array(profile["taus"]),
                              out / "performance_profile.png")
                written.append("performance_profile.png")
            value_range = matrix_range(metrics)
            scale_label = ("return / game's largest |return|\nover all runs (shared scale)" if args.scale == "shared"
                           else "return / game's largest |return|\nover this method's runs (per-method scale)")
            for m in metrics:
                if not m["matrix"]["columns"]:
                    print(f"note: {m['run']} has no finished visit by step {m['final_step']:,}: no matrix.",
                          file=sys.stderr)
                    continue
                name = f"matrix_{m['run'].replace('/', '_')}.png"
                plot_matrix(m, out / name, value_range, scale_label)
                written.append(name)
    print(f"Wrote {', '.join(written)} in {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("\nInterrupted: the report may be incomplete.", file=sys.stderr)
        sys.exit(130)
