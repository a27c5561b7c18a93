"""Command-line entry points (scripts/*.py and the installed console scripts call these)."""

from __future__ import annotations

import argparse
import functools
import sys
import time
from pathlib import Path

from agent.checkpoint import CheckpointError
from agent.config import ConfigError, load_config, resolve_device
from agent.rundir import (
    RECORD_TEXT,
    RunBusy,
    check_creatable,
    check_new_place,
    check_writable,
    hold_run,
    holds_run,
    make_dir,
    owned_by_run,
)


def _interruptible(main):
    """Ctrl-C before a command's own handling starts (while torch and the envs are imported, the config
    read): a one-line message and exit 130, not a traceback from inside the imports."""
    @functools.wraps(main)
    def wrapper(argv: list[str] | None = None) -> int:
        try:
            return main(argv)
        except KeyboardInterrupt:
            print("\nInterrupted (Ctrl-C).", file=sys.stderr)
            return 130
    return wrapper


@_interruptible
def train_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="ewc-train",
        description="Train one DQN agent through a schedule of Atari games, with optional EWC.",
        epilog="Overrides are dotted keys, e.g. schedule.steps_per_visit=5000 consolidation.method=ewc. "
               "Exit codes: 0 finished, 1 unexpected error (traceback in RUN_DIR/crash-*.log), 2 bad input, "
               "3 stopped by SIGTERM/SIGINT (checkpoint written), 4 non-finite loss (last good checkpoint kept), "
               "5 a checkpoint could not be written (disk full?), 130 Ctrl-C while starting (nothing written).")
    parser.add_argument("--config", type=Path, help="YAML config (see configs/)")
    parser.add_argument("--run-dir", type=Path, help="where checkpoints, TensorBoard events and config go "
                        "(default: runs/<config name>-<time>)")
    parser.add_argument("--resume", type=Path, metavar="RUN_DIR", help="continue the run in RUN_DIR")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config as YAML and exit")
    parser.add_argument("--keys", action="store_true", help="list every config key with its default and meaning")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    args = parser.parse_intermixed_args(argv)  # overrides may come before or after the options

    from agent.resume import resume
    from agent.trainer import EXIT_BAD_INPUT, Trainer

    if args.keys:
        print(describe_keys())
        return 0
    if args.print_config:
        import yaml

        try:
            if args.resume is None and args.config is None:
                raise ConfigError("--print-config prints the config of --config FILE (e.g. configs/quickstart.yaml) "
                                  "or of --resume RUN_DIR, with the overrides given: name one of them.")
            if args.resume is not None and args.config is None:
                check_run_dir(args.resume)
            config = load_config(args.config or (args.resume / "config.yaml" if args.resume else None),
                                 args.overrides)
        except (ConfigError, CheckpointError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_BAD_INPUT
        print(yaml.safe_dump(config.to_dict(), sort_keys=False), end="")
        return 0

    try:
        if args.resume is not None:
            if args.run_dir is not None and args.run_dir != args.resume:
                raise ConfigError("--resume RUN_DIR already names the run directory; drop --run-dir.")
            check_run_dir(args.resume)
            check_writable(args.resume, "--resume")
            hold_run(args.resume).release()  # another writer is refused at once, before its checkpoint loads
            config = None
            if args.config is not None or args.overrides:
                stored = args.resume / "config.yaml"
                config = load_config(args.config or stored, args.overrides)
            trainer = resume(args.resume, config)
        else:
            if args.config is None:
                raise ConfigError("Give --config FILE (e.g. configs/quickstart.yaml), or --resume RUN_DIR.")
            config = load_config(args.config, args.overrides)
            resolve_device(config.device)  # refused before the run directory exists (device=cuda without CUDA)
            run_dir = args.run_dir or Path("runs") / f"{args.config.stem}-{time.strftime('%Y%m%d-%H%M%S')}"
            if holds_run(run_dir):
                raise ConfigError(f"{run_dir} already holds a run. Continue it with --resume {run_dir}, "
                                  "or choose another --run-dir.")
            check_new_place(run_dir, "--run-dir")
            make_dir(run_dir)
            check_writable(run_dir, "--run-dir")
            trainer = Trainer(config, run_dir)
    except (ConfigError, CheckpointError, ValueError, RunBusy) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(f"Run directory: {trainer.run_dir}  (tensorboard --logdir {trainer.run_dir})", file=sys.stderr)
    return trainer.train()


@_interruptible
def evaluate_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="ewc-evaluate",
        description="Play full episodes of every game with a checkpoint's network and report the scores.")
    parser.add_argument("--checkpoint", type=Path, required=True,
                        help="a checkpoint file (step-N.pt) or a run directory (its newest complete checkpoint)")
    parser.add_argument("--games", nargs="+", help="games to play (default: the run's schedule)")
    parser.add_argument("--episodes", type=int, default=10, help="episodes per game (default 10)")
    parser.add_argument("--epsilon", type=float, default=0.05, help="exploration while playing (default 0.05)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-envs", type=int, default=8)
    parser.add_argument("--max-episode-frames", type=int, help="episode cap (default: the run's, 108000)")
    parser.add_argument("--output", type=Path, help="write the results as JSON here (and CSV beside it)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--video", type=Path, metavar="DIR",
                        help="also write one .mp4 per game of the agent playing one episode, DIR/<game>-step-N.mp4 "
                        "(needs the extra: pip install -e '.[video]')")
    parser.add_argument("--video-frames", type=int, default=3000, metavar="N",
                        help="at most N emulator frames (60 a second) per video (default 3000)")
    args = parser.parse_args(argv)

    import json

    from tqdm import tqdm

    from agent.checkpoint import load_checkpoint, load_latest
    from agent.config import validate_config
    from agent.evaluation import evaluate_games
    from agent.networks import using_task
    from agent.tasks import Tasks, network_from_state
    from agent.video import check_video_library, record_video, video_path
    from envs import derive_seed, resolve_game

    try:
        if args.episodes <= 0:
            raise ConfigError(f"--episodes must be positive, got {args.episodes}.")
        if not 0 < args.num_envs <= 1024:
            raise ConfigError(f"--num-envs must be in 1..1024, got {args.num_envs} (building envs takes about 0.16 s "
                              "each on a 2-core CPU); leave it out for the default 8.")
        if args.seed < 0:
            raise ConfigError(f"--seed must not be negative, got {args.seed}; use a seed of 0 or more.")
        if args.max_episode_frames is not None and args.max_episode_frames <= 0:
            raise ConfigError(f"--max-episode-frames must be positive, got {args.max_episode_frames}.")
        if not 0.0 <= args.epsilon <= 1.0:
            raise ConfigError(f"--epsilon must lie in [0, 1], got {args.epsilon}.")
        if args.output is not None:
            check_output(args.output)
        if args.video is not None:
            if args.video_frames <= 0:
                raise ConfigError(f"--video-frames must be positive, got {args.video_frames}.")
            check_video_library()
        if args.checkpoint.is_dir():
            if not holds_run(args.checkpoint) and not any(args.checkpoint.glob("step-*.pt")):
                raise CheckpointError(f"{args.checkpoint} does not hold a run (no checkpoints/, config.yaml or "
                                      "step-N.pt in it): give the --run-dir of an ewc-train run, or one of its "
                                      "checkpoints/step-N.pt files.")
            path, state = load_latest(args.checkpoint / "checkpoints" if (args.checkpoint / "checkpoints").is_dir()
                                      else args.checkpoint)
        elif args.checkpoint.exists():
            path, state = args.checkpoint, load_checkpoint(args.checkpoint)
        else:
            raise CheckpointError(f"{args.checkpoint} does not exist: give a checkpoint file or a run directory.")
        config = validate_config(state["config"], f"config stored in {path}", stored=True)
        games = [resolve_game(g)[0] for g in args.games] if args.games else config.schedule.games
        device = resolve_device(args.device)
        step = state["progress"]["global_step"]
        tasks = Tasks(config)  # which task parameters play each game: the label's, or the inferred context's
        tasks.load_state_dict(state.get("tasks", {}))
        tasks.check_evaluable(games)
        if args.video is not None:
            check_video_dir(args.video, [video_path(args.video, game, step) for game in games])
    except (ConfigError, CheckpointError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    network, tasks = network_from_state(state, device)
    settings = config.env.atari_settings(args.max_episode_frames)
    with tqdm(total=args.episodes * len(games), unit="episode", file=sys.stderr) as bar:
        def on_episode(game: str, finished: int) -> None:
            bar.set_description(game)
            bar.update(finished and 1)

        try:
            results = evaluate_games(network, games, args.episodes, args.epsilon, args.seed, settings,
                                     args.num_envs, on_episode=on_episode, task_of=tasks.task_of)
        except KeyboardInterrupt:
            print("\nInterrupted: nothing was written.", file=sys.stderr)
            return 130
    results.update(checkpoint=str(path), step=step, config_hash=config.digest(), seed=args.seed,
                   epsilon=args.epsilon, episodes=args.episodes, num_envs=args.num_envs,
                   max_episode_frames=settings.max_episode_frames,
                   capped_episodes=sum(r["capped_episodes"] for r in results["games"].values()))
    print(format_table(results))
    if args.output is not None:
        args.output.write_text(json.dumps(results, indent=2))
        write_csv(results, args.output.with_suffix(".csv"))
        print(f"Wrote {args.output} and {args.output.with_suffix('.csv')}", file=sys.stderr)
    if args.video is not None:
        for index, game in enumerate(games):
            target = video_path(args.video, game, step)
            try:
                with using_task(network, results["games"][game].get("task")):
                    frames = record_video(network, game, target, args.video_frames, args.epsilon,
                                          derive_seed(args.seed, index), settings)
            except KeyboardInterrupt:
                print(f"\nInterrupted: no video of {game} was written.", file=sys.stderr)
                return 130
            print(f"Wrote {target} ({frames} frames)", file=sys.stderr)
    return 0


@_interruptible
def sweep_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="ewc-sweep",
        description="Train every run of a sweep file's grid on Ray (a local Ray, or a cluster with --address). "
                    "Each run is an ordinary run directory OUT/<key=value,...>; rerunning the command resumes "
                    "unfinished runs and skips finished ones.",
        epilog="Exit codes: 0 every run finished, 1 a run failed (listed with its error), 2 bad input "
               "(nothing started), 3 interrupted (the runs wrote checkpoints).")
    parser.add_argument("sweep", type=Path, help="sweep file (see configs/sweep_methods.yaml)")
    parser.add_argument("--out", type=Path, help="the sweep's directory (default: runs/<sweep file name>)")
    parser.add_argument("--address", help="a running Ray cluster: auto (this node is in one), HOST:PORT or "
                        "ray://HOST:10001 (default: start a local Ray)")
    parser.add_argument("--local-cpus", type=int, help="CPUs of the local Ray (default: all cores)")
    parser.add_argument("--num-cpus", type=float, help="CPUs per run (default: the sweep file's, else 1)")
    parser.add_argument("--num-gpus", type=float, help="GPUs per run, e.g. 0.25 for four runs per GPU "
                        "(default: the sweep file's, else 0)")
    parser.add_argument("--max-retries", type=int, help="restarts of a run whose worker died (default: the "
                        "sweep file's, else 3)")
    parser.add_argument("--progress-every", type=float, default=5.0, help="seconds between progress lines")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="set in every run")
    args = parser.parse_intermixed_args(argv)

    from agent import sweep as sweeps
    from agent import sweep_grid

    out = args.out or Path("runs") / args.sweep.stem
    try:
        if args.local_cpus is not None and args.local_cpus <= 0:
            raise ConfigError(f"--local-cpus must be positive, got {args.local_cpus}.")
        if out.exists() and not out.is_dir():
            raise ConfigError(f"--out {out} is a file; give a directory for the sweep's runs.")
        if holds_run(out):
            raise ConfigError(f"--out {out} is a run directory; a sweep's runs go in a directory of their own, "
                              f"e.g. --out {out.parent / (out.name + '-sweep')}.")
        check_new_place(out, "--out")
        sweep = sweep_grid.load_sweep(args.sweep, args.overrides, args.num_cpus, args.num_gpus, args.max_retries)
        check_creatable(out, "--out")  # before Ray starts, and without leaving a folder behind
        started_ray = sweeps.connect(args.address, args.local_cpus)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return sweeps.EXIT_BAD_INPUT
    import ray

    try:
        sweeps.check_resources(sweep, local=args.address is None)
        with sweeps.lock(out):
            record = sweep_grid.write_record(out, sweep, [sys.argv[0], *(sys.argv[1:] if argv is None else argv)],
                                         args.address)
            return sweeps.run_sweep(sweep, out, record, args.progress_every)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return sweeps.EXIT_BAD_INPUT
    finally:
        if started_ray:
            ray.shutdown()


def check_output(output: Path) -> None:
    """Before anything is played: refuse an --output that is a directory, whose JSON or CSV would
    overwrite a file of a run's own record, or whose folder cannot be created or written."""
    for target in (output, output.with_suffix(".csv")):
        if target.is_dir():
            raise ConfigError(f"--output {output}: {target} is a directory; give a file name such as "
                              f"{target / 'eval-final.json'}.")
        run = owned_by_run(target)
        if run is not None:
            raise ConfigError(f"--output {output} would write {target}, which belongs to the record of the run in "
                              f"{run} (training writes {RECORD_TEXT}). Write the evaluation elsewhere, e.g. "
                              f"--output {run / 'evaluations' / 'final.json'}.")
    make_dir(output.parent, "output folder", "--output")
    check_writable(output.parent, "--output")


def check_video_dir(directory: Path, targets: list[Path]) -> None:
    """Refuse a --video DIR that is a file or lies inside a run's record; create it."""
    for target in targets:
        if target.is_dir():
            raise ConfigError(f"--video {directory}: {target} is a directory; give another --video DIR.")
        run = owned_by_run(target)
        if run is not None:
            raise ConfigError(f"--video {directory} would write {target} into the record of the run in {run} "
                              f"(training writes {RECORD_TEXT}). Write the videos elsewhere, e.g. "
                              f"--video {run / 'videos'}.")
    make_dir(directory, "video directory", "--video DIR")
    check_writable(directory, "--video")


def check_run_dir(path: Path) -> None:
    """Refuse a --resume RUN_DIR that is not the directory of a run."""
    if not path.exists():
        raise CheckpointError(f"no such run directory: {path}. Give the --run-dir of an earlier ewc-train run, "
                              "or start a new run with --config FILE.")
    if not path.is_dir():
        raise CheckpointError(f"{path} is a file, not a run directory: --resume takes the --run-dir of an earlier "
                              "ewc-train run (it holds config.yaml and checkpoints/).")
    if not holds_run(path):
        raise CheckpointError(f"{path} does not hold a run (no checkpoints/ and no config.yaml in it): give the "
                              "--run-dir of an earlier ewc-train run, or start a new run with --config FILE.")


COLUMNS = ("mean", "std", "median", "min", "max", "episodes", "capped_episodes", "human_normalized")
SETTINGS = ("checkpoint", "step", "config_hash", "seed", "epsilon", "num_envs", "max_episode_frames")


def format_table(results: dict) -> str:
    def cell(value):
        if value is None:
            return "n/a"
        return f"{value:d}" if isinstance(value, int) else f"{value:.2f}"

    lines = [f"checkpoint {results['checkpoint']} (step {results['step']}), epsilon {results['epsilon']}, "
             f"seed {results['seed']}, {results['num_envs']} envs, episodes capped at "
             f"{results['max_episode_frames']:,} frames",
             "| game | " + " | ".join(COLUMNS) + " |", "|---" * (len(COLUMNS) + 1) + "|"]
    for game, row in results["games"].items():
        lines.append(f"| {game} | " + " | ".join(cell(row[c]) for c in COLUMNS) + " |")
    lines.append(f"mean human-normalised score: {cell(results['mean_human_normalized'])}")
    if results["capped_episodes"]:
        lines.append(f"warning: {results['capped_episodes']} episode(s) hit the frame cap "
                     f"({results['max_episode_frames']:,} frames): their returns are cut short, and so are the "
                     "scores above; raise --max-episode-frames for full episodes.")
    return "\n".join(lines)


def write_csv(results: dict, path: Path) -> None:
    import csv

    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["game", *COLUMNS, *SETTINGS])
        for game, row in results["games"].items():
            writer.writerow([game, *(row[c] for c in COLUMNS), *(results[key] for key in SETTINGS)])


def describe_keys() -> str:
    """One line per config key: dotted name, default, meaning (from the schema's docstrings)."""
    from pydantic import BaseModel

    from agent.config import TrainConfig

    lines = []

    def walk(model: type[BaseModel], prefix: str) -> None:
        for name, field in model.model_fields.items():
            key = prefix + (field.alias or name)
            annotation = field.annotation
            if isinstance(annotation, type) and issubclass(annotation, BaseModel):
                walk(annotation, key + ".")
                continue
            default = "(required)" if field.is_required() else repr(field.get_default(call_default_factory=True))
            lines.append(f"{key} = {default}" + (f"  # {' '.join(field.description.split())}"
                                                 if field.description else ""))

    walk(TrainConfig, "")
    return "\n".join(lines)
