"""The evidence pilot's ranking: margins in units of the evaluation's noise, computed by hand."""

import json
import math

import pytest
from scripts_helper import pilot_report


def fake_pilot(root, games):
    """One run per game (config.yaml, eval.csv) and its three evaluations already played (reused, not replayed)."""
    out = root / "report"
    for game, (random_scores, learned_a, learned_b) in games.items():
        run = root / "pilot" / f"games={game}"
        run.mkdir(parents=True)
        (run / "config.yaml").write_text(f"schedule:\n  games: [{game}]\n  steps_per_visit: 20000\n"
                                         "eval:\n  epsilon: 0.05\n  max_episode_frames: 10800\n")
        (run / "eval.csv").write_text("step,visit,trained_game,game,mean_return,std_return,episodes,human_normalized\n"
                                      f"0,0,{game},{game},1.0,1.0,4,\n20000,0,{game},{game},5.0,2.0,4,\n")
        for name, scores in (("random", random_scores), ("learned-a", learned_a), ("learned-b", learned_b)):
            values = [float(v) for v in scores]
            mean = sum(values) / len(values)
            std = math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))  # numpy's population std
            path = out / "evaluations" / f"{game}-{name}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps({"games": {game: {"mean": mean, "std": std, "episodes": len(values)}}}))
    return root / "pilot", out


def test_games_ranked_by_margin_over_random_in_noise_units(tmp_path, monkeypatch):
    games = {"Alpha": ([0, 1, 2, 1], [10, 12, 11, 9], [9, 11, 13, 11]),   # a clear gain
             "Beta": ([5, 15, 10, 10], [8, 20, 12, 4], [6, 18, 14, 10]),  # a small gain in a lot of noise
             "Gamma": ([3, 3, 4, 2], [1, 2, 1, 2], [2, 1, 1, 2])}         # worse than random
    pilot, out = fake_pilot(tmp_path, games)
    monkeypatch.setattr(pilot_report, "evaluate_main", lambda argv: pytest.fail(f"replayed {argv}"))
    assert pilot_report.main([str(pilot), "--out", str(out), "--episodes", "4", "--choose", "2"]) == 0
    result = json.loads((out / "pilot.json").read_text())
    rows = {r["game"]: r for r in result["rows"]}
    for game, (random_scores, a, b) in games.items():
        def mean_se(values):
            m = sum(values) / len(values)
            return m, math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1) / len(values))
        (mr, ser), (ma, sea), (mb, seb) = mean_se(random_scores), mean_se(a), mean_se(b)
        learned, se_learned = (ma + mb) / 2, math.sqrt(sea**2 + seb**2) / 2
        assert rows[game]["margin"] == pytest.approx((learned - mr) / math.sqrt(se_learned**2 + ser**2))
        assert rows[game]["retest_z"] == pytest.approx((ma - mb) / math.sqrt(sea**2 + seb**2))
        untrained_se = 1.0 / math.sqrt(3)  # the step-0 row: mean 1, std 1 over 4 episodes
        assert rows[game]["margin_over_untrained"] == pytest.approx(
            (learned - 1.0) / math.sqrt(se_learned**2 + untrained_se**2))
    assert [r["game"] for r in result["rows"]] == ["Alpha", "Beta", "Gamma"]
    assert result["chosen"] == ["Alpha", "Beta"]  # Gamma never clears random, so never chosen
    assert rows["Gamma"]["episodes_for_quarter_gain"] is None
    table = (out / "pilot.md").read_text()
    assert "| Alpha (chosen) |" in table and "| Gamma |" in table
    assert (out / "pilot_curves.png").stat().st_size > 10_000


def test_an_empty_directory_is_a_clear_error(tmp_path, capsys):
    assert pilot_report.main([str(tmp_path), "--out", str(tmp_path / "out")]) == 2
    assert "holds no run directories" in capsys.readouterr().err
