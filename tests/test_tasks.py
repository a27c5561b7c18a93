"""Task keys end to end: per-task parameters and Forget-Me-Not contexts on real games, through train, a stop
in the middle of a context switch, resume, evaluate and report; and the measurement of the inference."""

import collections
import csv
import json
import math
import os
import signal

import pytest
from scripts_helper import report_main
from test_train import SMOKE, TINY

from agent import tasks as tasks_module
from agent import trainer as trainer_module
from agent.checkpoint import load_latest
from agent.cli import evaluate_main, train_main
from agent.resume import resume
from agent.switch import Switch
from agent.tasks import task_inference_summary


def rows(*items):
    return [dict(zip(("step", "visit", "game", "context", "event"), map(str, item))) for item in items]


def test_the_summary_measures_delay_purity_and_contexts_by_hand():
    log = rows((0, 0, "A", "context0", "visit"), (100, 1, "B", "context0", "visit"), (108, 1, "B", "context1", "new"),
               (150, 1, "B", "context0", "switch"), (160, 1, "B", "context1", "switch"),  # a false alarm
               (200, 2, "A", "context1", "visit"), (216, 2, "A", "context0", "switch"))
    summary = task_inference_summary(log, final_step=300)
    # context0: A 100 + 84, B 8 + 10; context1: B 42 + 40, A 16 -> purity (184 + 82) / 300.
    assert summary["steps_per_context_game"] == {"context0/A": 184, "context0/B": 18, "context1/A": 16,
                                                 "context1/B": 82}
    assert summary["purity"] == pytest.approx(266 / 300)
    assert (summary["switches"], summary["detected"], summary["missed"]) == (2, 2, 0)
    assert (summary["median_delay_steps"], summary["max_delay_steps"]) == (12.0, 16)
    assert (summary["contexts_created"], summary["games_visited"], summary["context_changes"]) == (2, 2, 4)
    # Splits (contexts with >= 5% of a game's steps), merges (games sharing a main context), revisits.
    assert summary["contexts_per_game"] == {"A": 2, "B": 2} and summary["merged_games"] == []
    assert summary["main_context"] == {"A": "context0", "B": "context1"}
    assert summary["revisits_recognised"] == {"A": True}  # A's second visit: 16 steps in context1, 84 in context0
    # Spurious changes: visit 0 none; visit 1 three (108, 150, 160), one of them needed; visit 2 one, needed.
    assert summary["spurious_changes_per_visit"] == pytest.approx(2 / 3)
    assert summary["max_spurious_changes_in_a_visit"] == 2
    # NMI the slow way: one (context, game) label per step, entropies from plain counts.
    labels = [("context0", "A")] * 184 + [("context0", "B")] * 18 + [("context1", "A")] * 16 + [("context1", "B")] * 82
    n = len(labels)

    def entropy(items):
        return -sum(c / n * math.log(c / n) for c in collections.Counter(items).values())
    contexts, games = entropy([c for c, _ in labels]), entropy([g for _, g in labels])
    assert summary["nmi"] == pytest.approx((contexts + games - entropy(labels)) / ((contexts + games) / 2))
    # A switch with no change of context before the next one is missed, not measured from a later change.
    missed = task_inference_summary(rows((0, 0, "A", "context0", "visit"), (100, 1, "B", "context0", "visit"),
                                         (200, 2, "A", "context0", "visit"), (210, 2, "A", "context1", "new")), 300)
    assert (missed["detected"], missed["missed"], missed["median_delay_steps"]) == (1, 1, 10.0)
    assert missed["purity"] == pytest.approx(200 / 300)
    # A game visited again straight after itself (one game, several cycles) is no switch.
    same = task_inference_summary(rows((0, 0, "A", "context0", "visit"), (100, 1, "A", "context0", "visit")), 200)
    assert (same["switches"], same["missed"], same["spurious_changes_per_visit"]) == (0, 0, 0.0)


FMN = [*TINY, "schedule.games=[Breakout, Pong]", "schedule.steps_per_visit=400", "dqn.learning_starts=100",
       "network.task_params=true", "task_inference=fmn", "fmn.max_contexts=4", "eval.episodes=1", "eval.num_envs=1",
       "eval.max_episode_frames=200"]


def test_fmn_with_task_params_trains_stops_mid_switch_resumes_evaluates_and_reports(tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    original = Switch.change_context
    stopped = []

    def stop_during_the_first_switch(self, game, record):
        if not stopped:  # a SIGTERM arrives as the first context switch starts: its Fisher polls and stops
            stopped.append(self.state.progress.global_step)
            signal.raise_signal(signal.SIGTERM)
        return original(self, game, record)

    monkeypatch.setattr(Switch, "change_context", stop_during_the_first_switch)
    assert train_main(["--config", SMOKE, "--run-dir", str(run), *FMN]) == 3
    _, state = load_latest(run / "checkpoints")
    assert state["progress"]["pending_switch"] == "context1" and state["progress"]["task"] == "context0"
    assert state["consolidator"]["anchors"] == {}  # the interrupted estimate left no anchor
    assert 400 < stopped[0] <= 400 + (5 + 1) * 4 * 2  # decided on its 5th window (fmn.persist), 4 frames x 2 envs
    monkeypatch.setattr(Switch, "change_context", original)
    assert train_main(["--resume", str(run)]) == 0
    assert train_main(["--resume", str(run), "schedule.cycles=2"]) == 0  # Breakout and Pong again
    _, state = load_latest(run / "checkpoints")
    assert sorted(state["consolidator"]["anchors"]) == ["context0", "context1"]
    assert state["tasks"]["fmn"]["counts"].shape[0] == 2

    with open(run / "contexts.csv", newline="") as handle:
        log = list(csv.DictReader(handle))
    visits = [(r["game"], r["step"]) for r in log if r["event"] == "visit"]
    assert visits == [("Breakout", "0"), ("Pong", "400"), ("Breakout", "800"), ("Pong", "1200")]  # each once
    changes = [(r["game"], r["context"], r["event"]) for r in log if r["event"] != "visit"]
    assert changes == [("Pong", "context1", "new"), ("Breakout", "context0", "switch"),
                       ("Pong", "context1", "switch")]  # the revisits are recognised
    summary = task_inference_summary(log, 1600)
    assert summary["detected"] == 3 and summary["max_delay_steps"] <= (5 + 1) * 4 * 2  # decided on 5 windows
    assert summary["purity"] >= 1 - 3 * 48 / 1600 and summary["nmi"] > 0.6 and summary["merged_games"] == []
    assert summary["revisits_recognised"] == {"Breakout": True, "Pong": True}

    out = tmp_path / "eval"
    capsys.readouterr()
    assert evaluate_main(["--checkpoint", str(run), "--episodes", "1", "--num-envs", "1",
                          "--max-episode-frames", "400", "--output", str(out / "eval.json")]) == 0
    games = json.loads((out / "eval.json").read_text())["games"]
    assert {game: row["task"] for game, row in games.items()} == {"Breakout": 0, "Pong": 1}  # inferred, not told

    assert report_main([str(run), "--out", str(tmp_path / "report"), "--no-plots"]) == 0
    metrics = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert metrics["task_inference"]["contexts_created"] == 2 and metrics["task_inference"]["detected"] == 3


def test_fmn_observing_every_env_detects_switches_sooner_in_a_real_run(tmp_path):
    """fmn.envs: all on real Breakout and Pong (2 envs): every env's frame is observed, so a change persists in
    5 windows x 4 frames / 2 envs = 10 vector steps (20 agent steps) instead of 20 with env 0 alone."""
    run = tmp_path / "run"
    assert train_main(["--config", SMOKE, "--run-dir", str(run), *FMN, "fmn.envs=all", "schedule.cycles=2"]) == 0
    with open(run / "contexts.csv", newline="") as handle:
        log = list(csv.DictReader(handle))
    summary = task_inference_summary(log, 1600)
    assert summary["detected"] == 3 and summary["revisits_recognised"] == {"Breakout": True, "Pong": True}
    assert summary["max_delay_steps"] <= (10 + 2) * 2 and summary["contexts_created"] == 2
    _, state = load_latest(run / "checkpoints")
    fmn = state["tasks"]["fmn"]
    assert fmn["frames_observed"] == 1600 and fmn["config"]["max_count"] == 1000 * 2  # vector steps x envs


def test_labels_with_task_params_switch_the_networks_task_with_the_game(tmp_path, capsys):
    run = tmp_path / "run"
    assert train_main(["--config", SMOKE, "--run-dir", str(run), *TINY, "schedule.games=[Breakout, Pong]",
                       "schedule.steps_per_visit=200", "dqn.learning_starts=100", "network.task_params=true"]) == 0
    _, state = load_latest(run / "checkpoints")
    online = state["learner"]["online"]
    trained = {name for name in online if ".gains." in name and not (online[name] == 1).all()}
    assert {name.rsplit(".", 1)[1] for name in trained} == {"0", "1"}  # both games trained their own gains
    assert not (run / "contexts.csv").exists()
    # A resumed trainer uses its task's parameters from the start (a switch's Fisher may come before any step).
    assert resume(run).network.task == 1 and state["progress"]["task"] == "Pong"
    # A game outside the schedule has no parameters of its own: a clear error, nothing written.
    assert evaluate_main(["--checkpoint", str(run), "--games", "SpaceInvaders", "--episodes", "1"]) == 2
    assert "not in this run's schedule" in capsys.readouterr().err


def test_a_change_decided_on_the_last_frames_of_a_visit_is_a_false_alarm_not_a_detection():
    log = rows((0, 0, "A", "context0", "visit"), (100, 0, "A", "context1", "new"),  # decided on A's last frames
               (100, 1, "B", "context1", "visit"), (200, 2, "A", "context1", "visit"),
               (208, 2, "A", "context0", "switch"))
    summary = task_inference_summary(log, final_step=250)
    assert (summary["detected"], summary["missed"], summary["max_delay_steps"]) == (1, 1, 8)
    # The end of the run is at least its last row: a late detection is not "missed".
    late = task_inference_summary(rows((0, 0, "A", "context0", "visit"), (100, 1, "B", "context0", "visit"),
                                       (116, 1, "B", "context1", "new")), final_step=100)
    assert (late["detected"], late["missed"]) == (1, 0) and late["purity"] == pytest.approx(100 / 116)
    # A switch at the very end (report.py --until-step at a visit boundary) had no time to be detected.
    ended = task_inference_summary(rows((0, 0, "A", "context0", "visit"), (100, 1, "B", "context1", "visit")), 100)
    assert (ended["switches"], ended["missed"], ended["purity"]) == (0, 0, 1.0)


def forced_contexts(monkeypatch, switch_at_call: int):
    """Forget-Me-Not replaced by a script: context0 until the `switch_at_call`-th frame, context1 after."""
    calls = []

    def observe(self, frame):
        calls.append(1)
        return "context0" if len(calls) < switch_at_call else "context1"
    monkeypatch.setattr(tasks_module.Tasks, "observe", observe)


FORCED = [*TINY, "schedule.games=[Breakout, Pong]", "schedule.steps_per_visit=40", "dqn.learning_starts=16",
          "network.task_params=true", "task_inference=fmn", "fmn.max_contexts=4"]


def test_a_stop_in_a_switch_on_a_visits_last_step_is_finished_before_the_visit_ends(tmp_path, monkeypatch):
    run = tmp_path / "run"
    forced_contexts(monkeypatch, switch_at_call=20)  # 2 envs: the 20th vector step is Breakout's last
    original = Switch.change_context
    stopped = []

    def stop_once(self, game, record):
        if not stopped:
            stopped.append(self.state.progress.global_step)
            signal.raise_signal(signal.SIGTERM)
        return original(self, game, record)
    monkeypatch.setattr(Switch, "change_context", stop_once)
    assert train_main(["--config", SMOKE, "--run-dir", str(run), *FORCED]) == 3
    assert stopped == [40]
    assert train_main(["--resume", str(run)]) == 0
    with open(run / "contexts.csv", newline="") as handle:
        log = [(r["step"], r["visit"], r["game"], r["context"], r["event"]) for r in csv.DictReader(handle)]
    assert log == [("0", "0", "Breakout", "context0", "visit"), ("40", "0", "Breakout", "context1", "new"),
                   ("40", "1", "Pong", "context1", "visit")]
    _, state = load_latest(run / "checkpoints")
    assert list(state["consolidator"]["anchors"]) == ["context0"]


def test_a_stop_before_the_first_step_logs_the_first_visit_once(tmp_path, monkeypatch):
    run = tmp_path / "run"
    forced_contexts(monkeypatch, switch_at_call=10**9)
    original = trainer_module.Actor.reset

    def reset_then_stop(self, seed):
        original(self, seed)
        if not (run / "stopped").exists():
            (run / "stopped").touch()
            os.kill(os.getpid(), signal.SIGTERM)
    monkeypatch.setattr(trainer_module.Actor, "reset", reset_then_stop)
    assert train_main(["--config", SMOKE, "--run-dir", str(run), *FORCED]) == 3
    assert train_main(["--resume", str(run)]) == 0
    with open(run / "contexts.csv", newline="") as handle:
        assert [r["step"] + r["event"] for r in csv.DictReader(handle)] == ["0visit", "40visit"]
