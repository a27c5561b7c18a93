"""Config loading: shipped configs validate; bad input is a clear error."""

from pathlib import Path

import pytest

from agent.config import ConfigError, crossed, load_config, parse_overrides

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_validate(path):
    if path.name.startswith("sweep_"):  # a sweep file: a base config and a grid, every run of it must validate
        from agent.sweep_grid import load_sweep

        assert len(load_sweep(path).runs) > 1
        return
    config = load_config(path)
    assert config.schedule.total_steps > 0


def test_overrides_are_dotted_and_typed():
    config = load_config(CONFIGS / "smoke.yaml", ["schedule.steps_per_visit=5000", "schedule.games=[Pong, ms_pacman]",
                                                  "consolidation.lambda=50", "dqn.double_dqn=false"])
    assert config.schedule.steps_per_visit == 5000
    assert config.schedule.games == ["Pong", "MsPacman"]
    assert config.consolidation.lambda_ == 50
    assert config.dqn.double_dqn is False
    assert parse_overrides(["a.b.c=1", "a.d=x"]) == {"a": {"b": {"c": 1}, "d": "x"}}


@pytest.mark.parametrize("override, message", [
    ("dqn.learning_rat=0.1", r"dqn.learning_rat: unknown key. Did you mean learning_rate"),
    ("bogus=1", r"bogus: unknown key"),
    ("schedule.steps_per_visit=-5", r"schedule.steps_per_visit: Input should be greater than 0 \(got -5\)"),
    ("schedule.steps_per_visit=lots", r"schedule.steps_per_visit: .*integer"),
    ("schedule.games=[Brekout]", r"Unknown Atari game 'Brekout'.*Breakout"),
    ("schedule.games=[Pong, pong]", r"games listed twice"),
    ("schedule.order=shuffled", r"schedule.order: Input should be 'cyclic' or 'random'"),
    ("env.sticky_action_prob=1.5", r"env.sticky_action_prob"),
    ("consolidation.method=ewk", r"consolidation.method"),
    ("device=tpu", r"device"),
    ("replay.capacity_per_game=100", r"exceeds|greater than or equal"),
])
def test_bad_values_are_clear_errors(override, message):
    overrides = [override] + (["dqn.batch_size=128"] if "capacity" in override else [])
    with pytest.raises(ConfigError, match=message):
        load_config(CONFIGS / "smoke.yaml", overrides)


def test_malformed_override_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="section.key=value"):
        load_config(CONFIGS / "smoke.yaml", ["schedule.cycles"])
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("schedule: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="schedule: Field required"):
        load_config(None, ["seed=1"])


def test_keys_listing_and_print_config(capsys):
    from agent.cli import describe_keys, train_main

    listing = describe_keys()
    assert "consolidation.lambda = 10.0  # Penalty strength" in listing
    assert "schedule.games = (required)" in listing
    assert train_main(["--config", str(CONFIGS / "smoke.yaml"), "--print-config", "schedule.cycles=3"]) == 0
    assert "cycles: 3" in capsys.readouterr().out


def test_crossed_matches_stepping_one_at_a_time():
    """An interval is crossed by an advance of n exactly when one of the n single steps lands on a multiple of it,
    at every magnitude a run reaches (a 50M-step run's counters included); 0 and None are off."""
    for every in (1, 3, 8, 10_000, 250_000):
        for start in (0, 5, every - 1, 7 * every - 3, 49_999_990, 2**40):
            for advanced in (0, 1, 2, 8, 64, every, 3 * every + 1):
                slow = any((start + i) % every == 0 for i in range(1, advanced + 1)) if advanced <= 10**6 else None
                if slow is not None:
                    assert crossed(start + advanced, advanced, every) == slow, (every, start, advanced)
    assert not crossed(10, 10, 0) and not crossed(10, 10, None)


def test_every_env_observed_needs_a_change_to_span_a_vector_step():
    """fmn.envs: all with persist x window below env.num_envs could decide two changes in one vector step."""
    base = ["task_inference=fmn", "fmn.envs=all", "env.num_envs=8"]
    with pytest.raises(ConfigError, match=r"two changes could be decided in one step.*Raise fmn.window to 4 or more"):
        load_config(CONFIGS / "smoke.yaml", [*base, "fmn.persist=2", "fmn.window=3"])
    assert load_config(CONFIGS / "smoke.yaml", [*base, "fmn.persist=2", "fmn.window=4"]).fmn.envs == "all"
    assert load_config(CONFIGS / "smoke.yaml", ["task_inference=fmn", "fmn.persist=1", "fmn.window=1"]).fmn.window == 1


def test_fmn_max_count_must_weigh_a_window_in_frames():
    """fmn.max_count is in vector steps and fmn.window in frames: with fmn.envs all a vector step is num_envs frames,
    so max_count 2 x 8 envs weighs a window of 16 frames, which env 0 alone (2 frames) does not."""
    base = ["task_inference=fmn", "env.num_envs=8", "fmn.window=16", "fmn.max_count=2"]
    with pytest.raises(ConfigError, match=r"fmn.max_count \(2 vector steps, 2 frames with fmn.envs first\) is below "
                                          r"fmn.window \(16 frames\).*Raise fmn.max_count to 16 or more"):
        load_config(CONFIGS / "smoke.yaml", base)
    assert load_config(CONFIGS / "smoke.yaml", [*base, "fmn.envs=all"]).fmn.max_count == 2
    with pytest.raises(ConfigError, match=r"\(1 vector steps, 8 frames with fmn.envs all\).*Raise fmn.max_count to 2"):
        load_config(CONFIGS / "smoke.yaml", [*base, "fmn.envs=all", "fmn.max_count=1"])
