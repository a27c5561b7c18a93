"""Aggregates over seeds (rliable) against slow, obvious numpy references; report.py end to end."""

import json
import sys

import numpy as np
import pytest
from scripts_helper import report_main
from test_metrics import RETURNS, eval_csv, write_run

import agent
from agent import aggregates
from agent.metrics import compute_metrics, max_abs_returns, read_run

GAMES = ["A", "B", "C"]


def iqm(values):
    """The interquartile mean the slow way: sort, drop a quarter (rounded down) at each end, average."""
    ordered = np.sort(np.ravel(values))
    cut = int(0.25 * ordered.size)
    return ordered[cut:ordered.size - cut].mean()


def bootstrap_ci(scores, statistic, reps, seed):
    """Stratified bootstrap, one resample at a time: runs drawn with replacement within each game."""
    rng = np.random.default_rng(seed)
    runs, games = scores.shape
    draws = [statistic(np.stack([scores[rng.integers(0, runs, runs), g] for g in range(games)], axis=1))
             for _ in range(reps)]
    return np.percentile(draws, [2.5, 97.5])


def test_interval_estimates_match_numpy():
    scores = np.array([[0.1, 1.2, 0.5], [0.3, 0.9, -0.2], [0.8, 2.0, 0.4], [0.0, 1.1, 0.6], [0.4, 1.5, 0.3]])
    estimate = aggregates.interval_estimate(scores, reps=2000, seed=0)
    assert estimate["mean"] == pytest.approx(scores.mean())
    assert estimate["iqm"] == pytest.approx(iqm(scores))  # 15 scores: the middle 9 (3 cut at each end)
    for key, statistic in (("mean", np.mean), ("iqm", iqm)):
        low, high = estimate[f"{key}_ci"]
        assert low <= estimate[key] <= high
        ref_low, ref_high = bootstrap_ci(scores, statistic, reps=2000, seed=1)
        width = high - low
        assert abs(low - ref_low) < 0.15 * width and abs(high - ref_high) < 0.15 * width, (key, low, high,
                                                                                           ref_low, ref_high)
    assert aggregates.interval_estimate(scores, reps=200, seed=3) == aggregates.interval_estimate(scores, 200, 3)


def fake_runs(root):
    """3 seeds x 2 methods: each seed scales the returns of a method's own pattern."""
    paths = {}
    for method, bend in (("ewc", 1.0), ("none", -1.0)):
        for seed in range(3):
            returns = {step: tuple(r * (1 + 0.1 * seed) + bend * 5 * i * (step > 100) for i, r in enumerate(row))
                       for step, row in RETURNS.items()}
            paths[(method, seed)] = write_run(root / method / f"seed{seed}", eval_csv("ABCABC", returns),
                                              method=method)
    return paths


def test_report_aggregates_by_method(tmp_path):
    paths = fake_runs(tmp_path / "runs")
    out = tmp_path / "report"
    assert report_main([*map(str, paths.values()), "--out", str(out), "--reps", "200"]) == 0
    summary = json.loads((out / "aggregates.json").read_text())
    assert summary["methods"] == {"ewc": ["ewc/seed0", "ewc/seed1", "ewc/seed2"],
                                  "none": ["none/seed0", "none/seed1", "none/seed2"]}
    for method in ("ewc", "none"):
        logs = [read_run(paths[(method, seed)]) for seed in range(3)]
        scale = max_abs_returns(logs)  # CORA: one scale per method, over its runs
        metrics = [compute_metrics(log, scale) for log in logs]
        final = np.array([[m["final_human_normalized"][g] for g in GAMES] for m in metrics])
        forgetting = np.array([m["mean_forgetting"] for m in metrics])
        transfer_of_c = np.array([np.mean(list(m["forward_transfer"]["C"].values())) for m in metrics])
        checks = [(summary["final_human_normalized"]["overall"][method], final),
                  (summary["final_human_normalized"]["per_game"]["B"][method], final[:, 1]),
                  (summary["forgetting"]["overall"][method], forgetting),
                  (summary["forward_transfer"]["per_game"]["C"][method], transfer_of_c)]
        for estimate, values in checks:
            assert estimate["runs"] == 3
            assert estimate["mean"] == pytest.approx(values.mean())
            assert estimate["iqm"] == pytest.approx(iqm(values))
            assert estimate["mean_ci"][0] <= estimate["mean"] <= estimate["mean_ci"][1]
            assert estimate["iqm_ci"][0] <= estimate["iqm"] <= estimate["iqm_ci"][1]
        assert "A" not in summary["forward_transfer"]["per_game"]  # nothing came before the first game
        written = json.loads((out / "metrics.json").read_text())
        ours = [m for m in written if m["group"] == method]
        assert [m["normalisation"] for m in ours] == [scale] * 3
        assert [m["mean_forgetting"] for m in ours] == pytest.approx(forgetting)
    profile = summary["performance_profile"]
    assert len(profile["taus"]) == 101 and profile["ewc"]["fraction"][0] == pytest.approx(1.0)
    table = (out / "aggregates.md").read_text()
    assert "| all games (runs x games) | ewc | 3 |" in table and "IQM [95% CI]" in table
    for name in ("curves.png", "performance_profile.png", "matrix_ewc_seed0.png"):
        assert (out / name).stat().st_size > 10_000


def test_grouping_and_shared_scale(tmp_path):
    paths = fake_runs(tmp_path / "runs")
    runs = [str(p) for p in paths.values()]
    out = tmp_path / "report"
    assert report_main([*runs, "--out", str(out), "--group", "none", "--scale", "shared", "--reps", "50",
                        "--no-plots"]) == 0
    summary = json.loads((out / "aggregates.json").read_text())
    assert list(summary["methods"]) == ["all"] and summary["forgetting"]["overall"]["all"]["runs"] == 6
    scale = max_abs_returns([read_run(p) for p in paths.values()])
    assert all(m["normalisation"] == scale for m in json.loads((out / "metrics.json").read_text()))
    assert report_main([*runs, "--out", str(out), "--group", "parent", "--reps", "50", "--no-plots"]) == 0
    assert list(json.loads((out / "aggregates.json").read_text())["methods"]) == ["ewc", "none"]


def test_without_rliable_the_report_names_the_extra(tmp_path, monkeypatch, capsys):
    paths = fake_runs(tmp_path / "runs")
    for name in ("rliable", "rliable.library", "rliable.metrics"):
        monkeypatch.setitem(sys.modules, name, None)  # import fails as if not installed
    monkeypatch.delitem(sys.modules, "agent.aggregates")
    monkeypatch.delattr(agent, "aggregates")
    assert report_main([*map(str, paths.values()), "--out", str(tmp_path / "report")]) == 2
    assert "pip install -e '.[report]'" in capsys.readouterr().err
    assert report_main([*map(str, paths.values()), "--out", str(tmp_path / "report"), "--no-aggregates",
                        "--no-plots"]) == 0
    one_each = [str(paths[("ewc", 0)]), str(paths[("none", 0)])]  # nothing to aggregate over seeds
    assert report_main([*one_each, "--out", str(tmp_path / "single"), "--no-plots"]) == 0
