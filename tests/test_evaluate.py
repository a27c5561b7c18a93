"""The evaluation script on a checkpoint of a real (tiny) run: JSON shape, episode count, errors."""

import json

import pytest
from test_train import tiny_run

from agent.cli import evaluate_main


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return tiny_run(tmp_path_factory.mktemp("eval") / "run", "Breakout, Pong", 16)


def test_json_shape_and_episode_count(run_dir, tmp_path, capsys):
    out = tmp_path / "result.json"
    args = ["--checkpoint", str(run_dir), "--games", "Breakout", "--episodes", "3", "--epsilon", "1.0",
            "--num-envs", "2", "--output", str(out), "--seed", "5"]
    assert evaluate_main(args) == 0
    table = capsys.readouterr().out
    assert "| Breakout |" in table and "mean human-normalised score" in table
    result = json.loads(out.read_text())
    row = result["games"]["Breakout"]
    assert row["episodes"] == 3
    assert set(row) >= {"mean", "std", "median", "min", "max", "episodes", "human_normalized"}
    assert row["human_normalized"] == pytest.approx((row["mean"] - 1.7) / (30.5 - 1.7))
    assert result["mean_human_normalized"] == pytest.approx(row["human_normalized"])
    assert result["step"] == 32 and result["seed"] == 5 and result["epsilon"] == 1.0 and result["config_hash"]
    assert out.with_suffix(".csv").read_text().startswith("game,mean,std")
    # Reproducible: the same checkpoint, seed and settings give the same numbers.
    again = tmp_path / "again.json"
    assert evaluate_main(args[:-4] + ["--output", str(again), "--seed", "5"]) == 0
    assert json.loads(again.read_text())["games"] == result["games"]


def test_errors_are_clear(run_dir, tmp_path, capsys):
    assert evaluate_main(["--checkpoint", str(tmp_path / "nowhere")]) == 2
    assert "does not exist" in capsys.readouterr().err
    corrupt = tmp_path / "step-000000000001.pt"
    corrupt.write_bytes(b"not a checkpoint")
    assert evaluate_main(["--checkpoint", str(corrupt)]) == 2
    assert "no completion sentinel" in capsys.readouterr().err
    assert evaluate_main(["--checkpoint", str(run_dir), "--games", "Pongg"]) == 2
    assert "Unknown Atari game 'Pongg'" in capsys.readouterr().err
    assert evaluate_main(["--checkpoint", str(run_dir), "--episodes", "0"]) == 2


def test_an_evaluation_carries_its_settings_and_counts_capped_episodes(run_dir, tmp_path, capsys):
    """--max-episode-frames 200 cuts every random-play Pong episode short (a game lasts thousands of
    frames): the JSON, the CSV and the table say so, with the frame cap, env count, seed and config hash."""
    import csv

    out = tmp_path / "capped.json"
    assert evaluate_main(["--checkpoint", str(run_dir), "--games", "Pong", "--episodes", "2", "--epsilon", "1.0",
                          "--num-envs", "2", "--max-episode-frames", "200", "--output", str(out)]) == 0
    assert "2 episode(s) hit the frame cap (200 frames)" in capsys.readouterr().out
    result = json.loads(out.read_text())
    assert result["games"]["Pong"]["capped_episodes"] == 2 and result["capped_episodes"] == 2
    assert (result["max_episode_frames"], result["num_envs"], result["seed"]) == (200, 2, 0)
    [row] = list(csv.DictReader(open(out.with_suffix(".csv"))))
    assert (row["capped_episodes"], row["max_episode_frames"], row["num_envs"]) == ("2", "200", "2")
    assert row["config_hash"] == result["config_hash"] and row["epsilon"] == "1.0"


def test_an_unwritable_output_is_refused_before_anything_is_played(run_dir, tmp_path, capsys, monkeypatch):
    """/proc takes no new files, even from root (a chmod would not stop root); a path through a file cannot
    be created. Both are refused before a single episode is played."""
    import agent.evaluation

    monkeypatch.setattr(agent.evaluation, "play_episodes", lambda *a, **k: pytest.fail("played before the check"))
    assert evaluate_main(["--checkpoint", str(run_dir), "--output", "/proc/ewc-evaluation.json"]) == 2
    assert "--output: cannot write in /proc" in capsys.readouterr().err
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    assert evaluate_main(["--checkpoint", str(run_dir), "--output", str(blocked / "r.json")]) == 2
    assert "is a file" in capsys.readouterr().err
    folder = tmp_path / "results"
    folder.mkdir()
    assert evaluate_main(["--checkpoint", str(run_dir), "--output", str(folder)]) == 2
    assert f"{folder} is a directory; give a file name" in capsys.readouterr().err
