#!/usr/bin/env python
"""Train one config with several consolidation methods (same seed) and tabulate forgetting.

    python scripts/compare_methods.py --config configs/forgetting_demo.yaml --methods none l2 ewc

Each method runs in OUT/<method> (an unfinished run is resumed, a finished one reused).
Then, for every game: the evaluation return right after its last visit and at the end
of the run, and the retention probe at the end (greedy-action agreement and mean |dQ|
on held-out replayed states, against the network at the moment the game was left).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import agent  # noqa: E402, F401, I001  (first: OpenMP's passive wait is set before torch loads)
import torch  # noqa: E402

from agent.checkpoint import list_checkpoints, load_checkpoint, load_latest  # noqa: E402
from agent.cli import train_main  # noqa: E402
from agent.config import load_config, validate_config  # noqa: E402
from agent.evaluation import evaluate_games  # noqa: E402
from agent.networks import QNetwork  # noqa: E402
from agent.tasks import network_from_state  # noqa: E402
from agent.probe import RetentionProbe  # noqa: E402


def train(config_path: Path, method: str, run_dir: Path, overrides: list[str]) -> None:
    args = [f"consolidation.method={method}", *overrides]
    checkpoints = list_checkpoints(run_dir / "checkpoints")
    if checkpoints:
        config = load_config(config_path, args)
        _, state = load_latest(run_dir / "checkpoints")
        if state["progress"]["global_step"] >= config.schedule.total_steps:
            print(f"{method}: finished run found in {run_dir}", file=sys.stderr)
            return
        code = train_main(["--resume", str(run_dir), "--config", str(config_path), *args])
    else:
        code = train_main(["--config", str(config_path), "--run-dir", str(run_dir), *args])
    if code != 0:
        raise SystemExit(f"training {method} failed with exit code {code}")


def network_from(state: dict) -> tuple[QNetwork, Callable]:
    """The checkpoint's network and its `task_of` (which task parameters play each game)."""
    network, tasks = network_from_state(state)
    return network, tasks.task_of


def analyse(run_dir: Path, episodes: int, epsilon: float) -> dict:
    final = load_latest(run_dir / "checkpoints")[1]
    # The network as it left each game: the milestones, kept at every switch (full checkpoints are pruned).
    milestones = [load_checkpoint(p) for p in list_checkpoints(run_dir / "milestones")]
    config = validate_config(final["config"], stored=True)
    settings = config.env.atari_settings(config.eval.max_episode_frames)
    visits = config.schedule.visits(config.seed)
    result = {"games": {}}
    network, task_of = network_from(final)
    end_scores = evaluate_games(network, config.schedule.games, episodes, epsilon, config.seed, settings,
                                task_of=task_of)["games"]
    probe = RetentionProbe()
    probe.load_state_dict(final["probe"])
    # The game trained last was snapshotted at the very end: nothing to compare yet.
    retention = probe.measure(network, current_game=final["progress"].get("task") or visits[-1])
    for game in config.schedule.games:
        last_visit = max(i for i, g in enumerate(visits) if g == game)
        # The milestone written at the end of that visit (progress.visit counts finished visits).
        after = next(m for m in milestones if m["progress"]["visit"] == last_visit + 1)
        network, task_of = network_from(after)
        after_score = evaluate_games(network, [game], episodes, epsilon, config.seed, settings, task_of=task_of)
        result["games"][game] = {
            "return_after_visit": after_score["games"][game]["mean"],
            "return_at_end": end_scores[game]["mean"],
            **{f"probe_{k}": v for k, v in retention.get(game, {}).items()},
        }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--methods", nargs="+", default=["none", "l2", "ewc"])
    parser.add_argument("--out", type=Path, default=Path("runs/forgetting_demo"))
    parser.add_argument("--episodes", type=int, default=10)
    parser.add_argument("--epsilon", type=float, default=0.05)
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="applied to every method's config")
    args = parser.parse_args()
    torch.set_num_threads(max(torch.get_num_threads(), 1))
    rows = {}
    for method in args.methods:
        run_dir = args.out / method
        train(args.config, method, run_dir, args.overrides)
        rows[method] = analyse(run_dir, args.episodes, args.epsilon)
        (run_dir / "forgetting.json").write_text(json.dumps(rows[method], indent=2))
    games = list(next(iter(rows.values()))["games"])
    header = ["method"]
    for game in games:
        header += [f"{game} return after its visit", f"{game} return at end", f"{game} probe agreement",
                   f"{game} probe mean abs dQ"]
    print("| " + " | ".join(header) + " |\n" + "|---" * len(header) + "|")
    for method, result in rows.items():
        cells = [method]
        for game in games:
            r = result["games"][game]
            cells += [f"{r['return_after_visit']:.1f}", f"{r['return_at_end']:.1f}",
                      f"{r['probe_agreement']:.2f}" if "probe_agreement" in r else "(trained last)",
                      f"{r['probe_q_drift']:.3f}" if "probe_q_drift" in r else "(trained last)"]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
