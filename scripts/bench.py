#!/usr/bin/env python
"""Benchmarks, each row measured side by side with its baseline in this one run.

    python scripts/bench.py            # the full table (about 5 minutes on 2 cores)
    python scripts/bench.py --quick    # smaller sizes, for a quick look
    python scripts/bench.py --only env,fisher
    python scripts/bench.py --only signals --busy 1   # with a competing busy process

Timings are medians over --repeats runs; compare the ratios, the machine is shared.
The Stable-Baselines3 row needs the `bench` extra (pip install -e ".[bench]").
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import agent  # noqa: E402, F401, I001  (first: OpenMP's passive wait is set before torch loads)
import numpy as np  # noqa: E402
import torch  # noqa: E402

from agent.config import load_config  # noqa: E402
from agent.consolidation import Consolidator  # noqa: E402
from agent.dqn import DQNLearner, choose_precision  # noqa: E402
from agent.fisher import estimate_fisher  # noqa: E402
from agent.graphed import GraphedUpdate, eager_update  # noqa: E402
from agent.networks import QNetwork  # noqa: E402
from agent.replay import Batch, FrameReplay  # noqa: E402
from agent.trainer import Trainer  # noqa: E402
from envs import NUM_ACTIONS, AtariSettings, make_vector_env  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
GAME = "Breakout"


def median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_env(args) -> list[tuple]:
    steps, num_envs = (200, 8) if args.quick else (1000, 8)
    rng = np.random.default_rng(0)

    def run(backend):
        env = make_vector_env(GAME, num_envs, AtariSettings(), backend=backend)
        env.reset(seed=0)
        actions = [rng.integers(NUM_ACTIONS, size=num_envs) for _ in range(steps)]

        def go():
            for a in actions:
                env.step(a)
        seconds = median_time(go, args.repeats)
        env.close()
        return steps * num_envs / seconds

    ours, fallback = run("ale_vector"), run("gymnasium")
    return [(f"env steps/s, {GAME}, {num_envs} envs, random actions", "AtariVectorEnv (C++ threads)",
             ours, "gymnasium AsyncVectorEnv", fallback)]


def _batch(n: int) -> Batch:
    g = torch.Generator().manual_seed(0)
    frames = lambda: torch.randint(0, 256, (n, 4, 84, 84), dtype=torch.uint8, generator=g)  # noqa: E731
    return Batch(frames(), torch.randint(0, 18, (n,), generator=g), torch.randn(n, generator=g),
                 torch.zeros(n), frames())


def _learner_rate(args, precision: str = "fp32", fused: bool = True, updates: int | None = None,
                  graphed: bool = False, num_tasks: int = 0) -> float:
    """Updates per second of the DQN learner (batch 32, Nature CNN, Double DQN) on args.device."""
    device = torch.device(args.device)
    updates = updates or (20 if args.quick else 60) * (10 if device.type == "cuda" else 1)
    batch = Batch(*(t.to(device) for t in vars(_batch(32)).values()))
    torch.manual_seed(0)
    network = QNetwork(NUM_ACTIONS, num_tasks=num_tasks).to(device)
    network.set_task(num_tasks - 1 if num_tasks else None)
    precision = choose_precision(precision, device.type)[0]
    learner = DQNLearner(network, 1e-4, 1.5e-4, 0.99, True, 1.0, 10.0, True, precision, capturable=graphed)
    if not fused:
        learner.optimizer = torch.optim.Adam(learner.online.parameters(), lr=1e-4, eps=1.5e-4, foreach=False)
    consolidator = Consolidator("none")
    update = GraphedUpdate(learner, consolidator) if graphed else \
        (lambda batch, game: eager_update(learner, consolidator, batch, game))

    def go():
        for _ in range(updates):
            update(batch, GAME)
        _sync(device)
    go()  # warm-up
    return updates / median_time(go, args.repeats)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_learner(args) -> list[tuple]:
    fused = _learner_rate(args)
    what = f"learner updates/s, batch 32, Nature CNN, Double DQN, {args.device}"
    bf16 = _learner_rate(args, "bf16")
    auto = f"precision auto (= {choose_precision('auto', torch.device(args.device).type)[0]} here), fused Adam"
    auto_rate = _learner_rate(args, "auto")
    rows = [(what, "fp32, fused Adam", fused, "fp32, per-parameter Adam", _learner_rate(args, fused=False)),
            (what, "bf16 autocast (fp32 Q head), fused Adam", bf16, "fp32, fused Adam", fused),
            (what, auto, auto_rate, "fp32, fused Adam", fused),
            (what, auto, auto_rate, "bf16 autocast (fp32 Q head), fused Adam", bf16)]
    if args.device != "cpu":
        rows += [(what, f"{precision}, one CUDA graph per update", _learner_rate(args, precision, graphed=True),
                  "fp32, fused Adam, eager", fused) for precision in ("fp32", "bf16")]
    return rows


def _end_to_end_config(args, num_envs: int, precision: str, overlap: bool = True, storage: str = "host",
                       extra: tuple[str, ...] = ()):
    steps, starts = _end_to_end_steps(args)
    return load_config(ROOT / "configs" / "smoke.yaml", [
        f"schedule.games=[{GAME}]", f"schedule.steps_per_visit={steps}", f"env.num_envs={num_envs}",
        f"dqn.learning_starts={starts}", "dqn.train_every=4", f"dqn.precision={precision}",
        f"env.overlap={overlap}", f"replay.storage={storage}", "replay.capacity_per_game=100000",
        f"dqn.cuda_graph={args.cuda_graph}",
        "consolidation.method=none", "consolidation.probe_states=0", "checkpoint.every=0", "eval.episodes=0",
        "logging.progress_bar=false", "logging.log_every=1000000", f"device={args.device}", *extra])


def _end_to_end_steps(args) -> tuple[int, int]:
    """(agent steps, learning_starts) of one end-to-end run: long enough for a steady state."""
    if args.device == "cpu":
        return (3000, 1000) if args.quick else (7000, 1000)
    return (8000, 2000) if args.quick else (20000, 5000)


def steady_rate(config) -> float:
    """Agent steps per second of a whole Trainer run, from its first update to its end (the steady state)."""
    with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stderr(io.StringIO()), \
            contextlib.redirect_stdout(io.StringIO()):  # the run's own progress lines
        trainer = Trainer(config, Path(tmp))
        first_update, apply = [], trainer.learner.apply

        def timed_apply(loss):
            if not first_update:
                first_update.append((time.perf_counter(), trainer.progress.global_step))
            return apply(loss)
        trainer.learner.apply = timed_apply
        if trainer.train() != 0:
            raise RuntimeError("the end-to-end run failed")
        _sync(trainer.device)
        start, step = first_update[0]
        return (trainer.progress.global_step - step) / (time.perf_counter() - start)


def bench_end_to_end(args) -> list[tuple]:
    """Agent steps/s of the whole loop at 1 update per 4 agent steps, against SB3 DQN and the learner."""
    steps, starts = _end_to_end_steps(args)
    sb3 = None if args.no_sb3 else _sb3_rate(args, steps, starts)
    baseline = ("Stable-Baselines3 DQN, 1 env, fp32", sb3) if sb3 is not None else None
    label = f"end-to-end agent steps/s, {args.device}, 1 update / 4 steps, steady state"
    rows = []
    graph = ", CUDA graph" if args.cuda_graph else ""
    first_rates = {}
    for precision in args.precisions:
        limit = 4 * _learner_rate(args, precision, graphed=args.cuda_graph)
        shown = precision if precision != "auto" else \
            f"auto (= {choose_precision('auto', torch.device(args.device).type)[0]})"
        for num_envs in args.envs:
            rate = steady_rate(_end_to_end_config(args, num_envs, precision))
            first_rates.setdefault(precision, rate)
            name = f"{num_envs} envs, {shown}, overlapped{graph}"
            if baseline:
                rows.append((label, name, rate, *baseline))
            rows.append((label, name, rate, f"learner-bound limit (4 x {shown}{graph} updates/s, same run)", limit))
        if precision == "fp32":
            sequential = steady_rate(_end_to_end_config(args, args.envs[0], precision, overlap=False))
            first = first_rates["fp32"]
            rows.append((label, f"{args.envs[0]} envs, fp32, overlapped{graph}", first,
                         f"{args.envs[0]} envs, fp32, sequential (env.overlap=false){graph}", sequential))
            if args.device != "cpu":
                on_device = steady_rate(_end_to_end_config(args, args.envs[0], precision, storage="device"))
                rows.append((label, f"{args.envs[0]} envs, fp32, replay.storage=device{graph}", on_device,
                             f"{args.envs[0]} envs, fp32, replay in host memory{graph}", first))
    return rows


def bench_tasks(args) -> list[tuple]:
    """What the paper's full agent costs: per-task gains and biases in the update, Forget-Me-Not in the loop."""
    from agent.task_inference import ForgetMeNot
    from envs import AtariSettings, make_vector_env

    rows = []
    what = f"learner updates/s, batch 32, Nature CNN, Double DQN, {args.device}"
    for precision in args.precisions:
        plain = _learner_rate(args, precision)
        rows.append((what, f"{precision}, per-task gains and biases (3 tasks)", _learner_rate(args, precision,
                     num_tasks=3), f"{precision}, shared biases", plain))
    label = f"end-to-end agent steps/s, {args.device}, {args.envs[0]} envs, fp32, 1 update / 4 steps, steady state"
    plain = steady_rate(_end_to_end_config(args, args.envs[0], "fp32"))
    full = steady_rate(_end_to_end_config(args, args.envs[0], "fp32", extra=(
        "network.task_params=true", "task_inference=fmn")))
    rows.append((label, "task parameters + Forget-Me-Not", full, "labels, shared biases", plain))
    every_env = steady_rate(_end_to_end_config(args, args.envs[0], "fp32", extra=(
        "network.task_params=true", "task_inference=fmn", "fmn.envs=all")))
    rows.append((label, "the same, Forget-Me-Not observing every env (fmn.envs: all)", every_env,
                 "the same, env 0 observed", full))
    # FMN reads one frame per vector step (num_envs with fmn.envs: all): frames/s it can take against the vector
    # steps/s the loop makes.
    frames, rng = [], np.random.default_rng(0)
    for game in (GAME, "Breakout" if GAME != "Breakout" else "Pong"):  # two contexts' worth of counts
        env = make_vector_env(game, 1, AtariSettings())
        frames.append(env.reset(seed=0)[0, -1])
        for _ in range(199):
            frames.append(env.step(rng.integers(18, size=1)).obs[0, -1])
        env.close()
    fmn = ForgetMeNot()
    for frame in frames:
        fmn.observe(frame)

    def observe_all():
        for frame in frames:
            fmn.observe(frame)
    observe_all()
    rows.append(("Forget-Me-Not frames observed/s (84x84; one per vector step, num_envs with fmn.envs: all)",
                 f"{fmn.num_contexts} context(s)",
                 len(frames) / median_time(observe_all, args.repeats),
                 f"vector steps/s of the loop above ({args.envs[0]} envs, fp32, labels)", plain / args.envs[0]))
    return rows


def _sb3_rate(args, steps: int, starts: int) -> float | None:
    """SB3 DQN's steady-state agent steps/s on the same settings (one env, its own Atari wrappers)."""
    try:
        import ale_py
        import gymnasium as gym
        from stable_baselines3 import DQN
        from stable_baselines3.common.atari_wrappers import AtariWrapper
        from stable_baselines3.common.callbacks import BaseCallback
        from stable_baselines3.common.vec_env import DummyVecEnv, VecFrameStack
    except ImportError:
        print("(Stable-Baselines3 not installed: pip install -e '.[bench]' for its rows)", file=sys.stderr)
        return None
    gym.register_envs(ale_py)

    def make():
        env = gym.make(f"ALE/{GAME}-v5", frameskip=1, repeat_action_probability=0.25, full_action_space=True)
        return AtariWrapper(env, frame_skip=4, terminal_on_life_loss=False)

    class Clock(BaseCallback):
        def _on_step(self) -> bool:
            if self.num_timesteps == starts + 1:
                self.start = time.perf_counter()
            return True

    steps = min(steps, starts + (5000 if args.device == "cpu" else 10000))
    env = VecFrameStack(DummyVecEnv([make]), 4)
    model = DQN("CnnPolicy", env, buffer_size=100_000, learning_starts=starts, train_freq=4, gradient_steps=1,
                batch_size=32, target_update_interval=1000, optimize_memory_usage=False, device=args.device, seed=0,
                replay_buffer_kwargs={"handle_timeout_termination": False})
    clock = Clock()
    model.learn(steps, callback=clock)
    _sync(torch.device(args.device))
    rate = (steps - starts - 1) / (time.perf_counter() - clock.start)
    env.close()
    return rate


def bench_threads(args) -> list[tuple]:
    """The learner and the loop with a competing busy process (one spinning core), against quiet,
    and against OpenMP's default wait policy (spin, then sleep: torch's default before this project set passive)."""
    import subprocess

    code = ("import os, sys, time, statistics; sys.path.insert(0, {root!r}); {first}"
            "import torch; from scripts.bench import _batch; from agent.dqn import DQNLearner; "
            "from agent.networks import QNetwork\n"
            "b = _batch(32); L = DQNLearner(QNetwork(18), 1e-4, 1.5e-4, .99, True, 1., 10., True)\n"
            "def go():\n    loss, _ = L.td_loss(b); L.apply(loss)\n"
            "go(); rates = []; end = time.perf_counter() + {seconds}\n"
            "while time.perf_counter() < end:\n"
            "    t = time.perf_counter(); go(); rates.append(1 / (time.perf_counter() - t))\n"
            "print(statistics.median(rates))")
    seconds = 4 if args.quick else 10

    def updates_per_second(passive: bool) -> float:
        env = dict(os.environ)
        env.pop("OMP_WAIT_POLICY", None)
        script = code.format(root=str(ROOT), seconds=seconds, first="import agent; " if passive else "")
        out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True)
        return float(out.stdout.split()[-1])

    def busy(fn):
        spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        try:
            return fn()
        finally:
            spinner.kill()

    quiet = updates_per_second(True)
    busy_passive, busy_active = busy(lambda: updates_per_second(True)), busy(lambda: updates_per_second(False))
    config = _end_to_end_config(args, args.envs[0], "fp32")
    loop_quiet = steady_rate(config)
    loop_busy = busy(lambda: steady_rate(config))
    threads = f"{torch.get_num_threads()} torch threads"
    return [(f"learner updates/s, {threads}, 1 competing busy process", "passive wait (this project)", busy_passive,
             "the same, quiet machine", quiet),
            (f"learner updates/s, {threads}, 1 competing busy process", "passive wait (this project)", busy_passive,
             "OpenMP's default wait (spins, then sleeps)", busy_active),
            (f"end-to-end agent steps/s, fp32, {args.envs[0]} envs, 1 competing busy process", "this project",
             loop_busy, "the same, quiet machine", loop_quiet)]


def bench_memory(args) -> list[tuple]:
    """Peak resident memory of the quickstart config (the learner thinned to 1 update per 1,000 steps so
    the run takes a minute): both games' replays filled, a Fisher, evaluations, checkpoints."""
    import resource
    import subprocess

    per_visit = 3000 if args.quick else 12000
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, str(ROOT / "scripts" / "train.py"),
               "--config", str(ROOT / "configs" / "quickstart.yaml"), "--run-dir", f"{tmp}/run",
               f"schedule.steps_per_visit={per_visit}", "schedule.cycles=1",
               "dqn.train_every=1000", "dqn.learning_starts=1000", "eval.episodes=2", "eval.max_episode_frames=2000",
               "logging.progress_bar=false", f"device={args.device}"]
        subprocess.run(cmd, check=True, capture_output=True)
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024  # the largest child so far
    replay = 2 * FrameReplay(20000, 8).nbytes
    return [(f"peak resident MB, quickstart config, 2 games x {per_visit:,} steps (lower is better)",
             "whole process", peak / 1e6, "its two replay buffers alone", replay / 1e6)]


def bench_replay(args) -> list[tuple]:
    replay = FrameReplay(capacity=80_000, num_envs=8)
    ours = replay.nbytes / 80_000
    full = 2 * 4 * 84 * 84 + 1 + 4 + 1  # obs and next_obs stacks, action, reward, done
    return [("replay bytes per transition (lower is better)", "single frames, stacks rebuilt", ours,
             "obs + next_obs stacks", full)]


def bench_fisher(args) -> list[tuple]:
    n, loop_n = (640, 32) if args.quick else (3200, 128)
    torch.manual_seed(0)
    net = QNetwork(NUM_ACTIONS)
    states = torch.randint(0, 256, (n, 4, 84, 84), dtype=torch.uint8)
    params = list(net.parameters())

    def loop():
        # The obvious way: one backward pass per state and action.
        for i in range(loop_n):
            log_probs = torch.log_softmax(net(states[i:i + 1])[0], 0)
            probs = log_probs.exp().detach()
            for a in range(NUM_ACTIONS):
                grads = torch.autograd.grad(log_probs[a], params, retain_graph=True)
                _ = [probs[a] * g.square() for g in grads]

    batched = median_time(lambda: estimate_fisher(net, states, "expected", batch_size=32), 1)
    looped = median_time(loop, 1) * n / loop_n
    return [(f"Fisher (expected over 18 actions), {n} states, seconds (lower is better)", "batched exact",
             batched, f"per-sample loop (timed on {loop_n}, scaled)", looped)]


def bench_penalty(args) -> list[tuple]:
    net = QNetwork(NUM_ACTIONS)
    repeats = 20 if args.quick else 50

    def cost(num_anchors: int, combined: bool) -> float:
        consolidator = Consolidator("l2", lambda_=1.0)
        for k in range(num_anchors):
            with torch.no_grad():
                for p in net.parameters():
                    p.add_(0.01)
            consolidator.consolidate(f"game{k}", net)
        anchors = list(consolidator.anchors.values())

        def naive():
            total = 0.0
            for anchor in anchors:
                for name, p in net.named_parameters():
                    total = total + (anchor["importance"][name] * (p - anchor["params"][name]).square()).sum()
            total.backward()

        def fast():
            consolidator.penalty(net, "current").backward()

        fn = fast if combined else naive
        fn()
        return median_time(lambda: [fn() for _ in range(repeats)], args.repeats) / repeats * 1e3

    one, ten, ten_naive = cost(1, True), cost(10, True), cost(10, False)
    return [("penalty forward+backward per update, ms (lower is better)", "10 anchors, combined", ten,
             "1 anchor", one),
            ("penalty forward+backward per update, ms (lower is better)", "10 anchors, combined", ten,
             "10 anchors, naive per-game sum", ten_naive)]


def bench_checkpoint(args) -> list[tuple]:
    """The quickstart's state at its first switch (12k of 20k transitions per game written), saved as
    this project saves it, against saving the replay's views as they are (torch.save then writes the
    whole storage behind each view: what this project did before)."""
    from agent.checkpoint import save_checkpoint

    config = load_config(ROOT / "configs" / "quickstart.yaml", ["logging.progress_bar=false", "device=cpu"])
    written = config.schedule.steps_per_visit // (4 if args.quick else 1)
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(config, Path(tmp))
        n = config.env.num_envs
        for game in config.schedule.games:
            replay = trainer.state.replay(game)
            for _ in range(written // n):
                frames = rng.integers(0, 256, (n, 4, 84, 84), dtype=np.uint8)
                replay.add(frames, rng.integers(18, size=n), np.zeros(n), np.zeros(n, bool), np.zeros(n, bool), frames)
        game = config.schedule.games[0]
        states = torch.from_numpy(trainer.replays[game].sample_states(64, rng))
        trainer.consolidator.consolidate(game, trainer.network, states, written, generator=trainer.state.random.fisher)
        trainer.probe.snapshot(game, trainer.network, torch.from_numpy(
            trainer.replays[game].sample_states(config.consolidation.probe_states, rng)))
        state = trainer.state.state_dict()
        transitions = sum(len(r) for r in trainer.replays.values())
        replay_bytes = sum(t.numel() * t.element_size() for r in state["replay"].values() for t in r.values())

        def size(name, state):
            start = time.perf_counter()
            path = save_checkpoint(Path(tmp) / name, 1, state, keep=1)
            return path.stat().st_size, time.perf_counter() - start

        ours, ours_seconds = size("ours", state)
        views = {game: {key: torch.from_numpy(getattr(replay, key)[:, :int(replay.written.max())])
                        if key in replay._PER_SLOT else value for key, value in replay.state_dict().items()}
                 for game, replay in trainer.replays.items()}
        whole, whole_seconds = size("views", {**state, "replay": views})
        trainer.progress.visit = 1
        milestone = trainer.switch.milestone(game).stat().st_size
    label = f"quickstart at its first switch, {transitions:,} transitions in replay"
    return [(f"checkpoint MB, {label} (lower is better)", "written slots only", ours / 1e6,
             "views of the buffers (whole storage)", whole / 1e6),
            (f"checkpoint write seconds incl. fsync and SHA-256, {label} (lower is better)", "written slots only",
             ours_seconds, "views of the buffers (whole storage)", whole_seconds),
            ("replay bytes in the checkpoint per transition (lower is better)", "written slots only",
             replay_bytes / transitions, "the buffer in memory", FrameReplay(80_000, 8).nbytes / 80_000),
            ("milestone MB, kept at every switch (lower is better)", "network + the new anchor's Fisher",
             milestone / 1e6, "full checkpoint", ours / 1e6)]


def bench_signals(args) -> list[tuple]:
    """Seconds from SIGTERM to exit (checkpoint written) while training, evaluating and estimating a Fisher."""
    import signal
    import subprocess

    phases = {  # name: (overrides, the output line after which the phase is under way)
        "training": (["schedule.steps_per_visit=100000", "eval.episodes=0"], "training Breakout"),
        "evaluation (50 episodes, 108k-frame cap)": (["eval.episodes=50"], "evaluating"),
        "Fisher (expected, 3,200 states)": (["eval.episodes=0", "consolidation.fisher_batches=100"], "consolidating"),
    }
    rows = []
    for phase, (overrides, marker) in phases.items():
        latencies = []
        for _ in range(args.repeats):
            with tempfile.TemporaryDirectory() as tmp:
                cmd = [sys.executable, str(ROOT / "scripts" / "train.py"), "--config",
                       str(ROOT / "configs" / "quickstart.yaml"), "--run-dir", f"{tmp}/run",
                       "schedule.games=[Breakout]", "schedule.steps_per_visit=2000", "dqn.learning_starts=500",
                       "logging.progress_bar=false", *overrides]
                proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                for line in proc.stdout:
                    if marker in line:
                        break
                time.sleep(2.0)  # well inside the phase
                sent = time.perf_counter()
                proc.send_signal(signal.SIGTERM)
                proc.communicate(timeout=600)
                latencies.append(time.perf_counter() - sent)
                if proc.returncode != 3:
                    raise RuntimeError(f"{phase}: exit code {proc.returncode}, expected 3")
        rows.append((f"seconds from SIGTERM to exit 3 with a checkpoint, during {phase} (lower is better)",
                     "median", statistics.median(latencies), "cluster grace period (SLURM KillWait)", 30.0))
    return rows


def bench_plasticity(args) -> list[tuple]:
    """What the plasticity diagnostics cost: one measurement, and training with them against without."""
    import types

    config = _end_to_end_config(args, args.envs[0], "fp32")
    steps, _ = _end_to_end_steps(args)
    often = max(steps // 8, 1)  # several measurements in one steady-state run
    offs, ons = [], []
    for _ in range(args.repeats):  # interleaved, so a change in the machine's load falls on both
        offs.append(steady_rate(_end_to_end_config(args, args.envs[0], "fp32", extra=("plasticity.every=null",))))
        ons.append(steady_rate(_end_to_end_config(args, args.envs[0], "fp32", extra=(f"plasticity.every={often}",))))
    off, on = statistics.median(offs), statistics.median(ons)
    label = (f"end-to-end agent steps/s, {args.device}, {args.envs[0]} envs, fp32, 1 update / 4 steps, steady state, "
             f"median of {args.repeats} interleaved runs")
    rows = [(label, f"diagnostics every {often:,} agent steps", on, "diagnostics off (plasticity.every=null)", off)]
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(config, Path(tmp))
        replay = trainer.state.replay(GAME)
        n = config.env.num_envs
        for _ in range(4000 // n):
            frames = rng.integers(0, 256, (n, 4, 84, 84), dtype=np.uint8)
            replay.add(frames, rng.integers(18, size=n), np.zeros(n), np.zeros(n, bool), np.zeros(n, bool), frames)
        monitor, record = trainer.state.plasticity, types.SimpleNamespace(plasticity=lambda *row: None)
        steps_done = iter(range(1, 10**9))
        seconds = median_time(lambda: monitor.measure(next(steps_done), 0, GAME, "every", replay, record),
                              args.repeats)
    every = type(config.plasticity)().every  # the default interval
    per_interval_off = every / off
    rows.append((f"training seconds per {every:,} agent steps (the default plasticity.every), {args.device}",
                 f"with one measurement ({config.plasticity.states} states, {seconds * 1000:.0f} ms)",
                 per_interval_off + seconds, "without diagnostics (same run)", per_interval_off))
    return rows


BENCHES = {"env": bench_env, "learner": bench_learner, "end_to_end": bench_end_to_end, "replay": bench_replay,
           "fisher": bench_fisher, "penalty": bench_penalty, "checkpoint": bench_checkpoint,
           "signals": bench_signals, "threads": bench_threads, "memory": bench_memory, "tasks": bench_tasks,
           "plasticity": bench_plasticity}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--only", default=",".join(BENCHES), help=f"comma-separated subset of {list(BENCHES)}")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (learner and end-to-end rows)")
    parser.add_argument("--envs", default="8", help="comma-separated env counts of the end-to-end rows")
    parser.add_argument("--precisions", default="fp32,bf16,auto", help="precisions of the end-to-end rows")
    parser.add_argument("--cuda-graph", action="store_true", help="end-to-end runs with dqn.cuda_graph=true")
    parser.add_argument("--no-sb3", action="store_true", help="leave out the Stable-Baselines3 rows")
    parser.add_argument("--busy", type=int, default=0, metavar="N",
                        help="run N competing busy processes (one spinning core each) during the benchmarks")
    args = parser.parse_args()
    args.envs = [int(n) for n in args.envs.split(",")]
    args.precisions = args.precisions.split(",")
    unknown = set(args.only.split(",")) - set(BENCHES)
    if unknown:
        parser.error(f"unknown benchmark(s) {sorted(unknown)}; choose from {list(BENCHES)}")
    import subprocess

    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.busy)]
    try:
        rows = []
        for name in args.only.split(","):
            print(f"running {name} ...", file=sys.stderr, flush=True)
            rows += BENCHES[name](args)
    finally:
        for spinner in spinners:
            spinner.kill()
    print(f"\nMachine: {os.cpu_count()} CPU cores, torch {torch.__version__}, {torch.get_num_threads()} torch threads, "
          f"device {_device_name(args.device)}, {args.busy} competing busy process(es)")
    print("| measurement | this project | value | baseline | value | ratio |\n|---|---|---:|---|---:|---:|")
    for what, ours_name, ours, base_name, base in rows:
        print(f"| {what} | {ours_name} | {ours:,.1f} | {base_name} | {base:,.1f} | {ours / base:.2f}x |")


def _device_name(device: str) -> str:
    return torch.cuda.get_device_name(device) if device.startswith("cuda") else "cpu"


if __name__ == "__main__":
    main()
