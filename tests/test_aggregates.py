"""Aggregates over seeds (rliable) against slow, obvious numpy references; report.py end to end."""

import itertools
import json
import math
import sys

import numpy as np
import pytest
import scipy.stats
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


def fake_runs(root, seeds=5, methods=(("ewc", 1.0), ("none", -1.0))):
    """`seeds` seeds x 2 methods: each seed scales the returns of a method's own pattern."""
    paths = {}
    for method, bend in methods:
        for seed in range(seeds):
            returns = {step: tuple(r * (1 + 0.1 * seed) + bend * 5 * i * (step > 100) for i, r in enumerate(row))
                       for step, row in RETURNS.items()}
            paths[(method, seed)] = write_run(root / method / f"seed{seed}", eval_csv("ABCABC", returns),
                                              method=method)
    return paths


def probability_of_improvement_by_hand(x, y):
    """P(X > Y) the slow way: per game, every pair of runs counts 1 if x wins, 1/2 on a tie; mean over games."""
    per_game = []
    for game in range(x.shape[1]):
        wins = [1.0 if a > b else 0.5 if a == b else 0.0 for a in x[:, game] for b in y[:, game]]
        per_game.append(np.mean(wins))
    return float(np.mean(per_game))


def permutation_p_by_hand(x, y):
    """Two-sided exact permutation p-value: every way of choosing which pooled values form the first group."""
    pooled = list(x) + list(y)
    observed = abs(np.mean(x) - np.mean(y))
    hits = total = 0
    for chosen in itertools.combinations(range(len(pooled)), len(x)):
        first = [pooled[i] for i in chosen]
        second = [pooled[i] for i in range(len(pooled)) if i not in chosen]
        total += 1
        hits += abs(np.mean(first) - np.mean(second)) >= observed - 1e-12
    return hits / total


def test_report_aggregates_by_method(tmp_path):
    paths = fake_runs(tmp_path / "runs")
    out = tmp_path / "report"
    assert report_main([*map(str, paths.values()), "--out", str(out), "--reps", "200"]) == 0
    summary = json.loads((out / "aggregates.json").read_text())
    assert summary["methods"] == {"ewc": [f"ewc/seed{s}" for s in range(5)],
                                  "none": [f"none/seed{s}" for s in range(5)]}
    assert summary["normalisation"] == "shared"
    scale = max_abs_returns([read_run(p) for p in paths.values()])  # one scale over every run given
    per_method = {}
    for method in ("ewc", "none"):
        logs = [read_run(paths[(method, seed)]) for seed in range(5)]
        metrics = [compute_metrics(log, scale) for log in logs]
        final = np.array([[m["final_human_normalized"][g] for g in GAMES] for m in metrics])
        forgetting = np.array([m["mean_forgetting"] for m in metrics])
        per_method[method] = (final, forgetting)
        transfer_of_c = np.array([np.mean(list(m["forward_transfer"]["C"].values())) for m in metrics])
        checks = [(summary["final_human_normalized"]["overall"][method], final),
                  (summary["final_human_normalized"]["per_game"]["B"][method], final[:, 1]),
                  (summary["forgetting"]["overall"][method], forgetting),
                  (summary["forward_transfer"]["per_game"]["C"][method], transfer_of_c)]
        for estimate, values in checks:
            assert estimate["runs"] == 5 and "no_interval" not in estimate
            assert estimate["mean"] == pytest.approx(values.mean())
            assert estimate["iqm"] == pytest.approx(iqm(values))
            assert estimate["mean_ci"][0] <= estimate["mean"] <= estimate["mean_ci"][1]
            assert estimate["iqm_ci"][0] <= estimate["iqm"] <= estimate["iqm_ci"][1]
        assert "A" not in summary["forward_transfer"]["per_game"]  # nothing came before the first game
        written = json.loads((out / "metrics.json").read_text())
        ours = [m for m in written if m["group"] == method]
        assert [m["normalisation"] for m in ours] == [scale] * 5 and {m["scale"] for m in ours} == {"shared"}
        assert [m["mean_forgetting"] for m in ours] == pytest.approx(forgetting)
    [pair] = summary["comparisons"]
    assert (pair["x"], pair["y"], pair["runs"]) == ("ewc", "none", [5, 5])
    poi = pair["probability_of_improvement"]
    assert poi["value"] == pytest.approx(probability_of_improvement_by_hand(per_method["ewc"][0],
                                                                            per_method["none"][0]))
    assert poi["ci"][0] <= poi["value"] <= poi["ci"][1]
    test = pair["forgetting_permutation_test"]
    assert test["kind"] == "exact" and test["relabellings"] == 252
    assert test["difference"] == pytest.approx(per_method["ewc"][1].mean() - per_method["none"][1].mean())
    assert test["p_value"] == pytest.approx(permutation_p_by_hand(per_method["ewc"][1], per_method["none"][1]))
    profile = summary["performance_profile"]
    assert len(profile["taus"]) == 101 and profile["ewc"]["fraction"][0] == pytest.approx(1.0)
    assert profile["ewc"]["fraction"][-1] == pytest.approx(0.0) and "ci" in profile["ewc"]  # the axis fits the data
    table = (out / "aggregates.md").read_text()
    assert "| all games (runs x games) | ewc | 5 |" in table and "IQM [95% CI]" in table
    assert "| ewc | none | 5 vs 5 |" in table and "(exact)" in table and "scale: shared" in table
    # On CORA's per-method scale each method's forgetting is a fraction of its own best return: no test.
    assert report_main([*map(str, paths.values()), "--out", str(out), "--reps", "50", "--no-plots",
                        "--scale", "method"]) == 0
    [pair] = json.loads((out / "aggregates.json").read_text())["comparisons"]
    assert "forgetting_permutation_test" not in pair and "per-method scale" in pair[
        "forgetting_permutation_test_skipped"]
    assert "not on one scale" in (out / "aggregates.md").read_text()
    for name in ("curves.png", "performance_profile.png", "matrix_ewc_seed0.png"):
        assert (out / name).stat().st_size > 10_000


def test_fewer_than_five_runs_get_their_values_and_no_interval(tmp_path, capsys):
    paths = fake_runs(tmp_path / "runs", seeds=3)
    out = tmp_path / "report"
    assert report_main([*map(str, paths.values()), "--out", str(out), "--reps", "200"]) == 0
    summary = json.loads((out / "aggregates.json").read_text())
    estimates = aggregates.estimates(summary)
    assert estimates and all("mean_ci" not in e and "iqm_ci" not in e for e in estimates)
    forgetting = summary["forgetting"]["overall"]["ewc"]
    written = [m["mean_forgetting"] for m in json.loads((out / "metrics.json").read_text()) if m["group"] == "ewc"]
    assert forgetting["per_run"] == pytest.approx(written) and "fewer than 5 runs" in forgetting["no_interval"]
    [pair] = summary["comparisons"]
    assert set(pair) == {"x", "y", "runs", "skipped"}
    table = (out / "aggregates.md").read_text()
    assert "[" not in table.split("## ")[1].split("|---|")[-1]  # no interval in any row of the first table
    assert "CI" not in table.replace("No confidence interval", "") and "not computed: fewer than 5 runs" in table


def test_identical_returns_get_identical_metrics_whatever_the_other_runs(tmp_path):
    """Two methods' runs with the same eval.csv: equal forgetting and transfer on the default (shared) scale,
    however the methods' other runs scored; the per-method scale (an option) tells them apart and says so."""
    root = tmp_path / "runs"
    same = eval_csv("ABCABC")
    runs = [write_run(root / "ewc" / "twin", same, method="ewc"),
            write_run(root / "none" / "twin", same, method="none")]
    louder = {step: tuple(10 * r for r in row) for step, row in RETURNS.items()}
    runs.append(write_run(root / "ewc" / "loud", eval_csv("ABCABC", louder), method="ewc"))
    runs.append(write_run(root / "none" / "quiet", eval_csv("ABCABC"), method="none"))
    out = tmp_path / "report"
    assert report_main([*map(str, runs), "--out", str(out), "--reps", "50", "--no-plots"]) == 0
    metrics = {m["run"]: m for m in json.loads((out / "metrics.json").read_text())}
    ewc, none = metrics["ewc/twin"], metrics["none/twin"]
    for key in ("forgetting", "forward_transfer", "mean_forgetting", "mean_forward_transfer", "matrix"):
        assert ewc[key] == none[key], key
    assert ewc["scale"] == none["scale"] == "shared"
    assert report_main([*map(str, runs), "--out", str(out), "--reps", "50", "--no-plots", "--scale", "method"]) == 0
    metrics = {m["run"]: m for m in json.loads((out / "metrics.json").read_text())}
    assert metrics["ewc/twin"]["mean_forgetting"] == pytest.approx(metrics["none/twin"]["mean_forgetting"] / 10)
    assert metrics["ewc/twin"]["scale"] == "method"
    assert "scale: method" in (out / "aggregates.md").read_text()


def test_permutation_test_against_enumeration_and_scipy(monkeypatch):
    rng = np.random.default_rng(0)
    for n, m in ((2, 2), (3, 4), (5, 5), (6, 3)):
        x, y = rng.normal(0.3, 1.0, n), rng.normal(0.0, 1.0, m)
        result = aggregates.permutation_test(x, y)
        assert result["kind"] == "exact" and result["relabellings"] == math.comb(n + m, n)
        assert result["p_value"] == pytest.approx(permutation_p_by_hand(x, y))
        # scipy's test on |difference| (its own two-sided p doubles the smaller tail, which differs for n != m)
        reference = scipy.stats.permutation_test((x, y), lambda a, b: abs(np.mean(a) - np.mean(b)),
                                                 n_resamples=np.inf, permutation_type="independent",
                                                 alternative="greater")
        assert result["p_value"] == pytest.approx(reference.pvalue)
    # 2 runs against 2: the smallest two-sided p-value there is, 2 of the 6 relabellings
    assert aggregates.permutation_test([1.0, 2.0], [5.0, 6.0])["p_value"] == pytest.approx(1 / 3)
    # past EXACT_PERMUTATIONS, sampled relabellings: close to the exact value, never 0
    x, y = rng.normal(0.8, 1.0, 6), rng.normal(0.0, 1.0, 6)
    exact = aggregates.permutation_test(x, y)["p_value"]
    monkeypatch.setattr(aggregates, "EXACT_PERMUTATIONS", 100)
    sampled = aggregates.permutation_test(x, y, reps=20_000, seed=1)
    assert sampled["kind"] == "monte-carlo" and sampled["relabellings"] == 20_000
    assert sampled["p_value"] == pytest.approx(exact, abs=4 * math.sqrt(exact * (1 - exact) / 20_000) + 1e-4)
    assert aggregates.permutation_test([0.0] * 6, [9.0] * 6, reps=1000)["p_value"] >= 1 / 1001


def test_probability_of_improvement_against_pairs_by_hand():
    rng = np.random.default_rng(1)
    x, y = rng.normal(0.5, 1.0, (6, 3)), rng.normal(0.0, 1.0, (5, 3))
    y[0, 0] = x[0, 0]  # a tie counts one half
    result = aggregates.probability_of_improvement(x, y, reps=500, seed=0)
    assert result["value"] == pytest.approx(probability_of_improvement_by_hand(x, y))
    assert result["ci"][0] <= result["value"] <= result["ci"][1]


def test_grouping_and_shared_scale(tmp_path):
    paths = fake_runs(tmp_path / "runs", seeds=3)
    runs = [str(p) for p in paths.values()]
    out = tmp_path / "report"
    assert report_main([*runs, "--out", str(out), "--group", "none", "--reps", "50", "--no-plots"]) == 0
    summary = json.loads((out / "aggregates.json").read_text())
    assert list(summary["methods"]) == ["all"] and summary["forgetting"]["overall"]["all"]["runs"] == 6
    assert "mean_ci" in summary["forgetting"]["overall"]["all"] and summary["comparisons"] == []
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
