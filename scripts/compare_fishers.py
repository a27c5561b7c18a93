#!/usr/bin/env python
"""Compare the three Fisher estimators on a real checkpoint's network and replay.

    python scripts/compare_fishers.py --checkpoint RUN_DIR --game Breakout [--states 3200]

For each estimator: seconds, the noise between two estimates from disjoint halves of
the states (relative L1 difference; lower means fewer states are needed), the
correlation of its log-Fisher with the expected Fisher's, and the share of the
expected Fisher's top 1% weights it also ranks in its top 1%.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import agent  # noqa: E402, F401, I001  (first: OpenMP's passive wait is set before torch loads)
import numpy as np  # noqa: E402
import torch  # noqa: E402

from agent.checkpoint import load_checkpoint, load_latest  # noqa: E402
from agent.config import validate_config  # noqa: E402
from agent.dqn import DQNLearner, per_sample_td_loss  # noqa: E402
from agent.fisher import ESTIMATORS, estimate_fisher  # noqa: E402
from agent.networks import QNetwork  # noqa: E402
from agent.tasks import Tasks  # noqa: E402
from agent.replay import FrameReplay  # noqa: E402
from envs import NUM_ACTIONS, resolve_game  # noqa: E402


def flat(fisher: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([v.flatten() for v in fisher.values()]).double()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, required=True, help="checkpoint file or run directory")
    parser.add_argument("--game", required=True, help="a game whose replay the checkpoint holds")
    parser.add_argument("--states", type=int, default=3200)
    args = parser.parse_args()
    if args.checkpoint.is_dir():
        _, state = load_latest(args.checkpoint / "checkpoints")
    else:
        state = load_checkpoint(args.checkpoint)
    config = validate_config(state["config"], stored=True)
    replays = state.get("replay", {})
    # With task_inference: fmn the buffers are the inferred contexts' (context0, ...), not games'.
    game = args.game if args.game in replays else resolve_game(args.game)[0]
    if game not in replays:
        raise SystemExit(f"The checkpoint holds no replay of {game} (checkpoint.replay=false, or not trained yet); "
                         f"it holds: {', '.join(replays) or 'none'}.")
    replay = FrameReplay(config.replay.capacity_per_game, config.env.num_envs)
    replay.load_state_dict(replays[game])
    tasks = Tasks(config)
    network = QNetwork(NUM_ACTIONS, config.network.architecture, num_tasks=tasks.num_tasks)
    dqn = config.dqn
    learner = DQNLearner(network, dqn.learning_rate, dqn.adam_eps, dqn.gamma, dqn.double_dqn, dqn.huber_delta,
                         dqn.max_grad_norm, dqn.clip_rewards)
    learner.load_state_dict(state["learner"])
    learner.set_task(tasks.index(game))  # the Fisher of a game is taken under its own gains and biases
    batch = replay.sample(args.states, np.random.default_rng(0))
    with torch.no_grad():
        targets = torch.cat([learner.targets(chunk) for chunk in batch.chunks(256)])

    def td_losses(outputs, rows, offset=0):
        rows = slice(rows.start + offset, rows.stop + offset)
        return per_sample_td_loss(outputs, batch.actions[rows], targets[rows], dqn.huber_delta)

    half = args.states // 2
    results = {}
    for estimator in ESTIMATORS:
        start = time.perf_counter()
        whole = estimate_fisher(network, batch.obs, estimator, td_losses, 32, torch.Generator().manual_seed(1))
        seconds = time.perf_counter() - start
        first = estimate_fisher(network, batch.obs[:half], estimator, td_losses, 32, torch.Generator().manual_seed(2))
        second = estimate_fisher(network, batch.obs[half:], estimator,
                                 lambda o, r: td_losses(o, r, offset=half), 32, torch.Generator().manual_seed(3))
        a, b = flat(first), flat(second)
        results[estimator] = (seconds, ((a - b).abs().sum() / (0.5 * (a + b)).abs().sum()).item(), flat(whole))
    reference = results["expected"][2]
    top = int(0.01 * len(reference))
    top_reference = set(torch.topk(reference, top).indices.tolist())
    print(f"{game}, {args.states} replayed states, network at step {state['progress']['global_step']}")
    print("| estimator | seconds | noise between halves | corr. of log F with expected | top-1% overlap |")
    print("|---|---:|---:|---:|---:|")
    for estimator, (seconds, noise, values) in results.items():
        logs = torch.stack([torch.log(values + 1e-20), torch.log(reference + 1e-20)])
        corr = torch.corrcoef(logs)[0, 1].item()
        overlap = len(top_reference & set(torch.topk(values, top).indices.tolist())) / top
        print(f"| {estimator} | {seconds:.1f} | {noise:.3f} | {corr:.3f} | {overlap:.2f} |")


if __name__ == "__main__":
    main()
