"""CORA's metrics on hand-made eval.csv files equal hand-computed values; report.py writes them."""

import json

import pytest
from scripts_helper import report_main

from agent.metrics import EvalLog, MetricsError, compute_metrics, max_abs_returns, read_run, trailing_mean

HEADER = "step,visit,trained_game,game,mean_return,std_return,episodes,human_normalized\n"
# Three games x two cycles, 100 steps a visit: A (0-100), B (100-200), C (200-300), A, B, C (500-600).
# Evaluations at the start, at every switch, and in the middle of the first two visits (50, 150).
#        step: (A,    B,   C)
RETURNS = {0: (10, 5, 20), 50: (40, 0, 20), 100: (80, -10, 40), 150: (60, 10, 30), 200: (30, 25, 60),
           300: (20, 15, 100), 400: (100, 5, 80), 500: (50, 40, 50), 600: (70, -50, 200)}
# Normalised by the largest absolute return per game: A / 100, B / 50 (the -50), C / 200:
#   step:   0    50   100   150   200   300   400   500   600
#   A     .10  .40   .80   .60   .30   .20  1.00   .50   .70
#   B     .10  .00  -.20   .20   .50   .30   .10   .80 -1.00
#   C     .10  .10   .20   .15   .30   .50   .40   .25  1.00


def eval_csv(order, steps=RETURNS, per_visit=100):
    """eval.csv rows as the trainer writes them: an evaluation belongs to the visit it ends or falls in."""
    lines = [HEADER]
    for step, returns in steps.items():
        visit = max(0, (step - 1) // per_visit)
        for game, value in zip("ABC", returns):
            lines.append(f"{step},{visit},{order[visit]},{game},{value},0,10,{value / 10}\n")
    return "".join(lines)


def write_run(directory, text, steps_per_visit=100, method="ewc"):
    directory.mkdir(parents=True)
    (directory / "eval.csv").write_text(text)
    if steps_per_visit is not None:
        (directory / "config.yaml").write_text(
            f"schedule:\n  games: [A, B, C]\n  steps_per_visit: {steps_per_visit}\n  cycles: 2\n"
            f"consolidation:\n  method: {method}\n")
    return directory


@pytest.fixture
def cyclic(tmp_path):
    return write_run(tmp_path / "cyclic", eval_csv("ABCABC"))


def test_cora_metrics_by_hand(cyclic):
    log = read_run(cyclic)
    scale = max_abs_returns([log])
    assert scale == {"A": 100, "B": 50, "C": 200}
    m = compute_metrics(log, scale)
    assert [(v["game"], v["start_step"], v["end_step"], v["finished"]) for v in m["visits"]] == [
        ("A", 0, 100, True), ("B", 100, 200, True), ("C", 200, 300, True),
        ("A", 300, 400, True), ("B", 400, 500, True), ("C", 500, 600, True)]
    assert m["first_cycle"] == ["A", "B", "C"]
    # Isolated forgetting of T by S: T before S's visit minus T at its end (the first cycle only).
    #   A by B: A(100) - A(200) = .8 - .3 = .5     A by C: A(200) - A(300) = .3 - .2 = .1
    #   B by C: B(200) - B(300) = .5 - .3 = .2     mean (.5 + .1 + .2) / 3 = .8 / 3
    assert m["forgetting"] == {"A": {"B": pytest.approx(0.5), "C": pytest.approx(0.1)}, "B": {"C": pytest.approx(0.2)}}
    assert m["mean_forgetting"] == pytest.approx(0.8 / 3)
    # Zero-shot transfer to T from P: T at the end of P's visit minus T before it (the run's first evaluation
    # for the first game); the middle evaluations (50, 150) are not the end of a visit.
    #   B from A: B(100) - B(0) = -.2 - .1 = -.3   C from A: C(100) - C(0) = .2 - .1 = .1
    #   C from B: C(200) - C(100) = .3 - .2 = .1   mean (-.3 + .1 + .1) / 3 = -.1 / 3
    assert m["forward_transfer"] == {"B": {"A": pytest.approx(-0.3)},
                                     "C": {"A": pytest.approx(0.1), "B": pytest.approx(0.1)}}
    assert m["mean_forward_transfer"] == pytest.approx(-0.1 / 3)
    # The second cycle changes nothing above; the final scores are those at step 600.
    assert m["final_performance"] == pytest.approx({"A": 0.7, "B": -1.0, "C": 1.0})
    assert m["final_human_normalized"] == pytest.approx({"A": 7.0, "B": -5.0, "C": 20.0})
    assert m["mean_final_human_normalized"] == pytest.approx(22 / 3)
    assert m["matrix"]["values"][0] == pytest.approx([0.8, 0.3, 0.2, 1.0, 0.5, 0.7])


def test_report_reproduces_cora_metrics(cyclic, tmp_path):
    out = tmp_path / "report"
    assert report_main([str(cyclic), "--out", str(out)]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["mean_forgetting"] == pytest.approx(0.8 / 3)
    assert m["mean_forward_transfer"] == pytest.approx(-0.1 / 3)
    assert m["forgetting"]["A"]["C"] == pytest.approx(0.1)
    assert m["forward_transfer"]["C"]["B"] == pytest.approx(0.1)
    for name in ("curves.png", "matrix_cyclic.png"):
        assert (out / name).stat().st_size > 10_000


def test_until_step_reads_a_run_as_it_stood_at_that_budget(cyclic, tmp_path):
    # Up to step 300 (the first cycle): the scale is that of steps 0-300 (A / 80, B / 50, C / 60), the final
    # scores those at 300, forgetting of A by B (.8 - .3) * 100 / 80.
    out = tmp_path / "report"
    assert report_main([str(cyclic), "--out", str(out), "--until-step", "300", "--no-plots"]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["final_step"] == 300 and [v["end_step"] for v in m["visits"]] == [100, 200, 300]
    assert m["forgetting"]["A"]["B"] == pytest.approx(50 / 80)
    assert m["final_human_normalized"] == pytest.approx({"A": 2.0, "B": 1.5, "C": 10.0})
    assert report_main([str(cyclic), "--out", str(out), "--until-step", "-1"]) == 2


def test_smoothing_comes_before_normalisation(cyclic):
    # A's returns 10 40 80 60 30 20 100 50 70; trailing means over 3: 10 25 130/3 60 170/3 110/3 50 170/3 220/3.
    # Largest: 220/3. Forgetting of A by B: (130/3 - 170/3) / (220/3) = -40/220.
    log = read_run(cyclic)
    assert trailing_mean(log.series("A")[1], 3) == pytest.approx([10, 25, 130 / 3, 60, 170 / 3, 110 / 3, 50,
                                                                   170 / 3, 220 / 3])
    m = compute_metrics(log, max_abs_returns([log], smoothing=3), smoothing=3)
    assert m["normalisation"]["A"] == pytest.approx(220 / 3)
    assert m["forgetting"]["A"]["B"] == pytest.approx(-40 / 220)
    assert compute_metrics(log, max_abs_returns([log]))["forgetting"]["A"]["B"] == pytest.approx(0.5)  # off by default


def test_unfinished_visits_enter_no_metric(tmp_path):
    # Stopped at step 250, in the middle of C's first visit: nothing about C's visit yet.
    partial = {s: r for s, r in RETURNS.items() if s <= 200} | {250: (25, 20, 90)}
    log = read_run(write_run(tmp_path / "partial", eval_csv("ABCABC", partial)))
    m = compute_metrics(log, max_abs_returns([log]))
    assert [(v["game"], v["end_step"], v["finished"]) for v in m["visits"]] == [
        ("A", 100, True), ("B", 200, True), ("C", 250, False)]
    assert m["forgetting"] == {"A": {"B": pytest.approx((80 - 30) / 80)}}  # A's largest return is now 80
    assert set(m["forward_transfer"]) == {"B", "C"} and set(m["forward_transfer"]["C"]) == {"A", "B"}
    assert m["matrix"]["columns"] == ["0: A", "1: B"]
    # Without a config the length of a visit is unknown: the last one counts as unfinished.
    log = read_run(write_run(tmp_path / "no_config", eval_csv("ABCABC"), steps_per_visit=None))
    assert [v.finished for v in log.visit_table()] == [True] * 5 + [False]
    # A single cycle whose last visit has run its steps is finished.
    one_cycle = {s: r for s, r in RETURNS.items() if s <= 300}
    log = read_run(write_run(tmp_path / "one_cycle", eval_csv("ABC", one_cycle)))
    assert [v.finished for v in log.visit_table()] == [True] * 3
    assert set(compute_metrics(log, max_abs_returns([log]))["forgetting"]["A"]) == {"B", "C"}


def test_any_visit_order_with_revisits(tmp_path):
    # B, A, B, C, A, C: the first cycle is B (visit 0), A (1), C (3); B's revisit (2) lies between A and C.
    log = read_run(write_run(tmp_path / "shuffled", eval_csv("BABCAC")))
    m = compute_metrics(log, max_abs_returns([log]))
    assert m["first_cycle"] == ["B", "A", "C"]
    # B by A: B(100) - B(200) = -.2 - .5 = -.7; B by C: B(300) - B(400) = .3 - .1 = .2; A by C: .2 - 1 = -.8
    assert m["forgetting"] == {"B": {"A": pytest.approx(-0.7), "C": pytest.approx(0.2)},
                               "A": {"C": pytest.approx(-0.8)}}
    # A from B: A(100) - A(0) = .7; C from B: C(100) - C(0) = .1; C from A: C(200) - C(100) = .1
    assert m["forward_transfer"] == {"A": {"B": pytest.approx(0.7)},
                                     "C": {"B": pytest.approx(0.1), "A": pytest.approx(0.1)}}


def test_missing_or_malformed_eval_csv(tmp_path):
    with pytest.raises(MetricsError, match="does not exist"):
        EvalLog.read(tmp_path / "eval.csv")
    bad = tmp_path / "eval.csv"
    bad.write_text("a,b\n1,2\n")
    with pytest.raises(MetricsError, match="columns"):
        EvalLog.read(bad)
    assert report_main([str(tmp_path)]) == 2
    bad.write_text(HEADER + "0,0,A,A,1,0,1,\n100,0,B,A,1,0,1,\n")
    with pytest.raises(MetricsError, match="exactly one game"):
        EvalLog.read(bad).visit_table()


def test_report_output_goes_beside_the_record_and_is_checked_before_the_work(cyclic, tmp_path, capsys):
    before = sorted(p.name for p in cyclic.iterdir())
    assert report_main([str(cyclic), "--no-plots"]) == 0  # the default: RUN/report, not the run's own folder
    assert (cyclic / "report" / "metrics.json").is_file()
    assert sorted(p.name for p in cyclic.iterdir()) == sorted(before + ["report"])
    (cyclic / "checkpoints").mkdir()
    refusals = {str(cyclic): "is a run directory", str(cyclic / "checkpoints"): "inside the record of the run",
                str(cyclic / "tb" / "report"): "inside the record of the run", str(cyclic / "eval.csv"): "is a file",
                str(cyclic / "eval.csv" / "deeper"): "is a file", "/proc/ewc-report": "cannot write in /proc"}
    for out, message in refusals.items():
        assert report_main([str(cyclic), "--out", out, "--no-plots"]) == 2, out
        assert message in capsys.readouterr().err, out
    assert not (cyclic / "tb").exists()


def test_report_refuses_duplicate_rows_and_a_trained_game_never_evaluated(tmp_path, capsys):
    text = eval_csv("ABCABC")
    twice = write_run(tmp_path / "twice", text + text.splitlines(keepends=True)[5])  # step 50, game B again
    out = tmp_path / "report"
    assert report_main([str(twice), "--out", str(out), "--no-plots"]) == 2
    err = capsys.readouterr().err
    assert "more than one row for the same step and game: step 50, B (lines 6 and 29)" in err
    assert not out.exists()  # nothing written, not even the folder
    lines = [line for line in text.splitlines(keepends=True) if line.split(",")[3:4] != ["C"]]  # no game-C rows
    missing = write_run(tmp_path / "missing", "".join(lines))
    assert report_main([str(missing), "--out", str(out), "--no-plots", "--group", "none"]) == 2
    assert "visit 2 trained C, but eval.csv has no evaluation of C" in capsys.readouterr().err
    assert not out.exists()


def test_report_on_what_is_not_a_run(tmp_path, cyclic, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert report_main([str(empty), "--out", str(tmp_path / "r")]) == 2
    assert "is not a run directory (no config.yaml, no eval.csv)" in capsys.readouterr().err
    alone = tmp_path / "alone"
    alone.mkdir()
    (alone / "eval.csv").write_text((cyclic / "eval.csv").read_text())  # a run without config.yaml
    assert report_main([str(alone), "--out", str(tmp_path / "r"), "--no-plots"]) == 0
    assert "no config.yaml: its last visit counts as unfinished" in capsys.readouterr().err
    assert report_main([str(cyclic), "--out", str(tmp_path / "r0"), "--until-step", "0"]) == 0
    assert "no finished visit by step 0: no matrix" in capsys.readouterr().err
    assert not list((tmp_path / "r0").glob("matrix_*.png"))


def test_report_adds_plasticity_at_the_end_of_each_visit_and_groups_by_plasticity_method(tmp_path):
    """plasticity.csv (as training writes it, churn empty at the first measurement) gives metrics.json the
    last row of each visit, the whole network's distance from its initialisation, and plasticity.png; a run
    with plasticity.method redo is its own group beside its consolidation method's."""
    import csv
    import json

    columns = ["step", "visit", "task", "event", "dormant_tau0.1/all", "effective_rank", "weight_distance/conv1",
               "weight_distance/fc1", "churn/greedy_changed"]
    rows = [[50, 0, "A", "every", 0.5, 3.0, 3.0, 4.0, ""], [100, 0, "A", "switch", 0.4, 2.5, 6.0, 8.0, 0.25],
            [150, 1, "B", "every", 0.3, 2.0, 0.0, 1.0, 0.5], [200, 1, "B", "switch", 0.2, 1.5, 5.0, 12.0, 0.75]]
    runs = []
    for name, plasticity in (("plain", None), ("redo", "redo")):
        run = write_run(tmp_path / name, eval_csv("ABCABC"))
        if plasticity:
            with open(run / "config.yaml", "a") as handle:
                handle.write(f"plasticity:\n  method: {plasticity}\n")
        with open(run / "plasticity.csv", "w", newline="") as handle:
            csv.writer(handle).writerows([columns, *rows])
        runs.append(run)
    assert report_main([*map(str, runs), "--out", str(tmp_path / "report"), "--no-aggregates"]) == 0
    metrics = {m["run"]: m for m in json.loads((tmp_path / "report" / "metrics.json").read_text())}
    assert metrics["plain"]["group"] == "ewc" and metrics["redo"]["group"] == "ewc+redo"
    ends = metrics["redo"]["plasticity"]["end_of_visit"]
    assert [(e["visit"], e["task"], e["step"]) for e in ends] == [(0, "A", 100), (1, "B", 200)]
    assert ends[0]["dormant_tau0.1/all"] == 0.4 and ends[1]["churn/greedy_changed"] == 0.75
    assert ends[0]["weight_distance/all"] == pytest.approx(10.0) and ends[1]["weight_distance/all"] == 13.0
    assert (tmp_path / "report" / "plasticity.png").stat().st_size > 10_000
    first = json.loads((tmp_path / "report" / "metrics.json").read_text())[0]
    assert first["plasticity"]["end_of_visit"][0]["effective_rank"] == 2.5
    # Beside the diagnostics, the return of the game each finished visit trained, at the visit's last evaluation
    # (RETURNS: A 80 at 100, B 25 at 200, C 100 at 300, A 100 at 400, B 40 at 500, C 200 at 600; human = / 10).
    visits = metrics["redo"]["plasticity"]["visits"]
    assert [(v["visit"], v["game"], v["first_visit"], v["return"]) for v in visits] == [
        (0, "A", True, 80), (1, "B", True, 25), (2, "C", True, 100), (3, "A", False, 100), (4, "B", False, 40),
        (5, "C", False, 200)]
    assert visits[1]["human_normalized"] == 2.5 and visits[1]["dormant_tau0.1/all"] == 0.2
    assert visits[0]["weight_distance/all"] == pytest.approx(10.0) and visits[2]["effective_rank"] is None
    table = (tmp_path / "report" / "plasticity.md").read_text()
    assert "| redo | ewc+redo | 1: B (new) | 25.0 | 2.500 | 0.200 | n/a | 1.50 | 13.00 |" in table
    assert "| plain | ewc | 5: C | 200.0 | 20.000 | n/a | n/a | n/a | n/a |" in table
    assert report_main([str(runs[0]), "--out", str(tmp_path / "until"), "--until-step", "120", "--no-plots"]) == 0
    until = json.loads((tmp_path / "until" / "metrics.json").read_text())["plasticity"]
    assert [e["step"] for e in until["end_of_visit"]] == [100]
    assert [(v["visit"], v["return"]) for v in until["visits"]] == [(0, 80)]  # visit 1 is not finished by 120


def test_report_slips_without_a_test_until_now(tmp_path, cyclic, capsys):
    """Malformed rows with --group none, a budget before every evaluation, several runs' default output and
    runs that share no folder: each an exit 2 (or the default place), and nothing written where refused."""
    out = tmp_path / "out"
    mixed = write_run(tmp_path / "mixed", HEADER + "0,0,A,A,1,0,1,\n100,0,B,A,1,0,1,\n")
    assert report_main([str(mixed), "--out", str(out), "--group", "none", "--no-plots"]) == 2
    assert "the rows of visit 0 name ['A', 'B'] as the game trained" in capsys.readouterr().err
    broken = write_run(tmp_path / "broken", HEADER + "0,0,A,A,1,0,1,\nx,0,A,A,1,0,1,\n")
    assert report_main([str(broken), "--out", str(out), "--group", "none", "--no-plots"]) == 2
    assert "has a malformed row" in capsys.readouterr().err
    late = write_run(tmp_path / "late", eval_csv("ABCABC").replace("\n0,", "\n5,"))  # first evaluation at step 5
    assert report_main([str(late), "--out", str(out), "--until-step", "2", "--no-plots"]) == 2
    assert "has no evaluation at or before step 2" in capsys.readouterr().err
    assert not out.exists()
    other = write_run(tmp_path / "b" / "other", eval_csv("ABCABC"))
    assert report_main([str(cyclic), str(other), "--no-plots", "--no-aggregates"]) == 0
    assert (tmp_path / "report" / "metrics.json").is_file()  # beside both runs: their common folder
    assert report_main([str(cyclic), "/proc/self", "--no-plots"]) == 2
    assert "the runs share no folder but /: give --out" in capsys.readouterr().err
