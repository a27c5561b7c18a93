"""The order of visits: cyclic as listed, or the paper's seeded random order with revisits."""

import csv
import itertools
import json
import re

import pytest
from test_train import SMOKE, TINY

from agent.cli import train_main
from agent.config import ScheduleConfig

GAMES = ["Breakout", "Pong", "Freeway"]


def random_order(games, cycles, seed):
    return ScheduleConfig(games=games, steps_per_visit=8, cycles=cycles, order="random").visits(seed)


def test_cyclic_order_visits_the_games_as_listed_every_cycle():
    schedule = ScheduleConfig(games=GAMES, steps_per_visit=8, cycles=3)
    assert schedule.order == "cyclic"
    assert schedule.visits(seed=5) == GAMES * 3


def test_random_order_is_seeded():
    games = ["Breakout", "Pong", "Freeway", "SpaceInvaders", "Seaquest", "Qbert", "Enduro", "Boxing"]
    assert random_order(games, 4, seed=0) == random_order(games, 4, seed=0)
    assert random_order(games, 4, seed=0) != random_order(games, 4, seed=1)
    assert len({tuple(random_order(games, 4, seed)) for seed in range(20)}) == 20
    # Every order of three games appears as a first cycle: the listed order is not favoured.
    assert {tuple(random_order(GAMES, 1, seed)) for seed in range(100)} == set(itertools.permutations(GAMES))


@pytest.mark.parametrize("games", [["Pong"], GAMES[:2], GAMES, GAMES + ["Seaquest", "Qbert", "Enduro"]])
def test_random_order_visits_every_game_once_per_cycle_with_no_immediate_repeat(games):
    for seed in range(50):
        visits = random_order(games, 6, seed)
        assert len(visits) == 6 * len(games)
        for start in range(0, len(visits), len(games)):
            assert sorted(visits[start:start + len(games)]) == sorted(games)
        if len(games) > 1:
            assert all(a != b for a, b in zip(visits, visits[1:])), (seed, visits)


def test_raising_cycles_keeps_the_visits_already_made():
    for seed in range(20):
        visits = random_order(GAMES, 7, seed)
        for cycles in range(1, 7):
            assert random_order(GAMES, cycles, seed) == visits[:cycles * len(GAMES)]


def eval_trained(run_dir):
    """{visit: trained_game} from eval.csv (each visit's rows must agree)."""
    with open(run_dir / "eval.csv", newline="") as handle:
        pairs = {(int(row["visit"]), row["trained_game"]) for row in csv.DictReader(handle)}
    assert len(pairs) == len({visit for visit, _ in pairs})
    return dict(pairs)


def test_a_random_run_trains_records_and_resumes_its_order(tmp_path, capsys):
    run = tmp_path / "run"
    quick = ["eval.episodes=1", "eval.num_envs=1", "eval.epsilon=1.0", "eval.max_episode_frames=200",
             "consolidation.method=none", "consolidation.probe_states=0"]
    assert train_main(["--config", SMOKE, "--run-dir", str(run), *TINY, *quick, "schedule.order=random",
                       f"schedule.games=[{', '.join(GAMES)}]", "schedule.steps_per_visit=8",
                       "dqn.learning_starts=8"]) == 0
    first = json.loads((run / "schedule.json").read_text())
    assert first["order"] == "random" and first["games"] == GAMES
    visits = first["visits"]
    assert visits == random_order(GAMES, 1, seed=0) and visits != GAMES  # the test sees a real reordering
    assert eval_trained(run) == dict(enumerate(visits))
    err = capsys.readouterr().err
    assert re.findall(r"training (\w+) \(visit (\d)/3\)", err) == [(g, str(i + 1)) for i, g in enumerate(visits)]
    assert "Order: " + ", ".join(visits) in err

    # One more cycle (evaluations off, to be quick): the visits made stay, the old record is kept.
    assert train_main(["--resume", str(run), "schedule.cycles=2", "eval.episodes=0"]) == 0
    second = json.loads((run / "schedule.json").read_text())
    assert second["visits"][:3] == visits and second["visits"] == random_order(GAMES, 2, seed=0)
    assert json.loads((run / "schedule-until-step-000000000024.json").read_text()) == first
    err = capsys.readouterr().err
    assert re.findall(r"training (\w+) \(visit (\d)/6\)", err) == [(g, str(i + 4)) for i, g in
                                                                    enumerate(second["visits"][3:])]
    assert "Order: " + ", ".join(visits) + " | " + ", ".join(second["visits"][3:]) in err

    # The order itself is not a resumable change.
    assert train_main(["--resume", str(run), "schedule.cycles=3", "schedule.order=cyclic"]) == 2
    err = capsys.readouterr().err
    assert "schedule.order: checkpoint 'random', now 'cyclic'" in err
    assert json.loads((run / "schedule.json").read_text()) == second

    # A recorded order that the code no longer computes (the rule changed) is refused, not silently replaced.
    tampered = dict(second, visits=second["visits"][::-1])
    (run / "schedule.json").write_text(json.dumps(tampered))
    assert train_main(["--resume", str(run), "schedule.cycles=3"]) == 2
    assert "its schedule.json records the visits" in capsys.readouterr().err
