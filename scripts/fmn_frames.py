#!/usr/bin/env python
"""Task inference measured on recorded frames: how Forget-Me-Not maps frames to contexts, game by game.

    python scripts/fmn_frames.py record --games SpaceInvaders Krull BeamRider Hero StarGunner MsPacman \\
        --frames 1000 --cycles 2 --out tests/data/fmn_cora.npz
    python scripts/fmn_frames.py measure tests/data/fmn_cora.npz [fmn.alpha=0.05 ...]

`record` plays each game at random (the protocol's sticky actions, one env: what the trainer's env 0
shows Forget-Me-Not, one frame per vector step) for `--frames` frames per visit, the games in order,
`--cycles` times, and keeps each frame 2x2 mean-pooled to 42x42 (exact for Forget-Me-Not with any
power-of-two `levels`). `measure` feeds the frames to Forget-Me-Not as training does (the fmn keys of the
config schema, as dotted overrides) and prints what report.py's task-inference table shows for a run:
contexts per game (splits), games sharing a main context (merges), normalised mutual information
between context and game, context changes per visit beyond the one a true switch needs, detections
and their delay (in steps). A step is one frame of a one-env recording, one vector step of a recording of
several envs (`record --envs 8`; the override envs=all observes all of them, as fmn.envs: all does in training).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from agent.config import ConfigError, FMNConfig, parse_overrides  # noqa: E402
from agent.tasks import build_fmn, feed, task_inference_summary  # noqa: E402


def record(games: list[str], frames: int, cycles: int, seed: int, envs: int = 1) -> dict[str, np.ndarray]:
    """Random play of every game, visit by visit: (visits, frames, 42, 42) uint8 with one env, (visits, frames,
    envs, 42, 42) with more, and the game of each visit."""
    from envs import AtariSettings, make_vector_env

    rng = np.random.default_rng(seed)
    visits, names = [], []
    for cycle in range(cycles):
        for number, game in enumerate(games):
            env = make_vector_env(game, envs, AtariSettings())
            obs = env.reset(seed=seed + 1000 * cycle + number)
            kept = []
            for _ in range(frames):
                obs = env.step(rng.integers(18, size=envs)).obs
                f = obs[:, -1].astype(np.uint16)
                pooled = (f[:, 0::2, 0::2] + f[:, 1::2, 0::2] + f[:, 0::2, 1::2] + f[:, 1::2, 1::2]) // 4
                kept.append(pooled.astype(np.uint8) if envs > 1 else pooled[0].astype(np.uint8))
            env.close()
            visits.append(np.stack(kept))
            names.append(game)
            print(f"recorded {game} (cycle {cycle + 1}): {frames} frames x {envs} env(s)", file=sys.stderr)
    return {"frames": np.stack(visits), "games": np.array(names)}


def measure(frames: np.ndarray, games: list[str], settings: FMNConfig) -> dict:
    """Forget-Me-Not over the visits in order, fed as training feeds it (agent.tasks.feed: env 0's frame per step, or
    every env's with fmn.envs all); the contexts.csv rows training would write, summarised."""
    if frames.ndim == 4:  # a one-env recording
        frames = frames[:, :, None]
    fmn, every_env = build_fmn(settings, frames.shape[2]), settings.envs == "all"
    rows, step, known = [], 0, {0}
    for visit, (game, visit_frames) in enumerate(zip(games, frames)):
        current = fmn.context or 0
        rows.append({"step": step, "visit": visit, "game": game, "context": f"context{current}", "event": "visit"})
        for step_frames in visit_frames:
            step += 1
            decided = feed(fmn, step_frames, every_env)
            if decided is not None and decided != current:
                rows.append({"step": step, "visit": visit, "game": game, "context": f"context{decided}",
                             "event": "switch" if decided in known else "new"})
                known.add(decided)
                current = decided
    return task_inference_summary(rows, step)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    rec = commands.add_parser("record", help="record random-play frames")
    rec.add_argument("--games", nargs="+", required=True)
    rec.add_argument("--frames", type=int, default=1000, help="frames per visit (default 1000)")
    rec.add_argument("--cycles", type=int, default=2)
    rec.add_argument("--seed", type=int, default=0)
    rec.add_argument("--envs", type=int, default=1, help="environments stepped together (default 1)")
    rec.add_argument("--out", type=Path, required=True)
    mea = commands.add_parser("measure", help="Forget-Me-Not on recorded frames")
    mea.add_argument("recording", type=Path)
    mea.add_argument("overrides", nargs="*", metavar="key=value", help="fmn keys, e.g. alpha=0.05 window=4")
    mea.add_argument("--json", action="store_true", help="print the summary as JSON")
    args = parser.parse_args(argv)
    if args.command == "record":
        data = record(args.games, args.frames, args.cycles, args.seed, args.envs)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(args.out, **data)
        print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.1f} MB)", file=sys.stderr)
        return 0
    try:
        settings = FMNConfig(**parse_overrides(args.overrides))
    except (ConfigError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    data = np.load(args.recording)
    games = [str(g) for g in data["games"]]
    summary = measure(data["frames"], games, settings)
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print(f"{args.recording.name}: {len(games)} visits of {data['frames'].shape[1]} steps, {settings.model_dump()}")
    print("| contexts / games | NMI | merged games | games split | spurious changes / visit (max) "
          "| detected / switches | median delay (steps) |\n|---:|---:|---|---|---:|---:|---:|")
    split = {g: n for g, n in summary["contexts_per_game"].items() if n > 1}
    print(f"| {summary['contexts_created']} / {summary['games_visited']} | {summary['nmi']:.3f} | "
          f"{'; '.join(', '.join(g) for g in summary['merged_games']) or 'none'} | "
          f"{', '.join(f'{g} ({n})' for g, n in split.items()) or 'none'} | "
          f"{summary['spurious_changes_per_visit']:.1f} ({summary['max_spurious_changes_in_a_visit']}) | "
          f"{summary['detected']} / {summary['switches']} | {summary['median_delay_steps']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
