#!/usr/bin/env python
"""FrameReplay with its frames in host memory (numpy) against frames on the device (torch).

    python scripts/bench_replay_device.py              # cuda if available, else cpu
    python scripts/bench_replay_device.py --device cpu --threads 1

A 100k-transition, 8-env replay filled with random frames, the same stream for both
storages. Times `sample(batch)` until the batch is on the device (synchronised), per
call, the median of --repeats runs of --calls calls; and `add` per vector step over
--add-steps more steps (the device work synchronised once at the end). Prints a markdown table.
On a busy CPU, torch's intra-op threads can wait on each other for milliseconds per
gather: give --threads 1 there.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

# isort: off
import agent  # noqa: E402, F401  (first: OpenMP's passive wait, see agent/__init__.py)
import numpy as np  # noqa: E402
import torch  # noqa: E402
# isort: on

from agent.replay import FrameReplay  # noqa: E402


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def stream(steps: int, num_envs: int, seed: int):
    """Random vector steps (obs, actions, rewards, dones, episode_ends, next_obs) with a few episode ends."""
    rng = np.random.default_rng(seed)
    obs = rng.integers(0, 256, size=(num_envs, 4, 84, 84), dtype=np.uint8)
    for _ in range(steps):
        frame = rng.integers(0, 256, size=(num_envs, 1, 84, 84), dtype=np.uint8)
        next_obs = np.concatenate([obs[:, 1:], frame], axis=1)
        ends = rng.random(num_envs) < 0.005  # history slots are written too
        dones = ends & (rng.random(num_envs) < 0.5)
        yield obs, rng.integers(18, size=num_envs), rng.normal(size=num_envs).astype(np.float32), dones, ends, next_obs
        obs = next_obs


def time_add(replays: dict[str, FrameReplay], steps: int, num_envs: int, device: torch.device) -> dict[str, float]:
    """Seconds per vector step in `add` for each replay, fed the same steps; the device work synchronised at the end."""
    spent = dict.fromkeys(replays, 0.0)
    for step in stream(steps, num_envs, seed=1):
        for name, replay in replays.items():
            start = time.perf_counter()
            replay.add(*step)
            spent[name] += time.perf_counter() - start
    for name in replays:
        start = time.perf_counter()
        synchronize(device)
        spent[name] += time.perf_counter() - start
    return {name: seconds / steps for name, seconds in spent.items()}


def time_sample(replay: FrameReplay, batch: int, device: torch.device, calls: int, repeats: int) -> float:
    rng = np.random.default_rng(1)
    for _ in range(10):  # warm-up: allocator, kernels
        replay.sample(batch, rng, device)
    synchronize(device)
    per_call = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            replay.sample(batch, rng, device)
        synchronize(device)
        per_call.append((time.perf_counter() - start) / calls)
    return statistics.median(per_call)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--capacity", type=int, default=100_000)
    parser.add_argument("--num-envs", type=int, default=8)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--add-steps", type=int, default=1000, help="vector steps timed in add, after the fill")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    host = FrameReplay(args.capacity, args.num_envs)
    on_device = FrameReplay(args.capacity, args.num_envs, device=device)
    for step in stream(args.capacity // args.num_envs, args.num_envs, seed=0):  # fill the host replay ...
        host.add(*step)
    on_device.load_state_dict(host.state_dict())  # ... and copy it: the same contents
    replays = {"host (numpy)": host, "device (torch)": on_device}
    add = time_add(replays, args.add_steps, args.num_envs, device)
    a, b = (replay.sample(args.batch, np.random.default_rng(2), device) for replay in (host, on_device))
    assert torch.equal(a.obs, b.obs) and torch.equal(a.next_obs, b.next_obs), "the two storages disagree"
    sample = {name: time_sample(replay, args.batch, device, args.calls, args.repeats)
              for name, replay in replays.items()}

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"FrameReplay, {args.capacity:,} transitions, {args.num_envs} envs, batch on {device} ({name}), "
          f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads; "
          f"median of {args.repeats} x {args.calls} calls\n")
    print(f"| frames stored in | sample({args.batch}) + batch on {device}, µs/call | add, µs/vector step |")
    print("| --- | --- | --- |")
    for storage in replays:
        print(f"| {storage} | {sample[storage] * 1e6:,.1f} | {add[storage] * 1e6:,.1f} |")
    first, second = replays
    print(f"\nsample: device storage takes {sample[second] / sample[first]:.2f}x the host storage's time; "
          f"add: {add[second] / add[first]:.2f}x.")


if __name__ == "__main__":
    main()
