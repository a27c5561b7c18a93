"""Sweeps: the runs of a sweep file (agent/sweep_grid.py), each an ordinary run directory, trained as Ray tasks.

Run `method=ewc,seed=1` lives in OUT/method=ewc,seed=1 and is an ordinary run directory (`ewc-train --resume`
works on it); its console goes to OUT/logs/method=ewc,seed=1.log.

Left to Ray: one plain `ray.remote` task per run does placement and resource sharing; `max_retries` restarts a
run whose worker died (the task resumes the run from its checkpoint); `ray.wait` collects the results as they
come; `ray.cancel` stops the runs on SIGINT/SIGTERM (a KeyboardInterrupt in the task, on which the trainer writes
a checkpoint); `runtime_env` gives the workers this project. No actor or thread reports progress: the status
line reads the runs' logs (the trainer's `[step N...` lines, at least every 30 s; an attempt's `====` line).

Kept, as Ray has no equivalent: the grid's expansion, every run's config validated before Ray starts, and the
record OUT/sweep.json, which refuses a changed grid (both in agent/sweep_grid.py); here, the skip of finished
runs (read from their newest checkpoint, so they are not even opened for writing); one sweep per OUT (a lock: a
file-system property); a probe of --address (ray.init retries an unreachable address for minutes); the refusal
of runs larger than any node (Ray would wait for ever); the status line and the summary. Ray is imported only
when a sweep runs.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import re
import signal
import socket
import sys
import time
import traceback
from pathlib import Path

from agent.checkpoint import CheckpointError, list_checkpoints
from agent.config import ConfigError, TrainConfig, load_config
from agent.rundir import check_writable, exclusive, holder, holds_run, make_dir, replace_atomically
from agent.sweep_grid import Sweep, SweepError, now

EXIT_DONE, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 3
PROJECT_ROOT = Path(__file__).resolve().parent.parent  # the folder that holds agent/ and envs/
RUN_LOCK_WAIT = 120.0  # seconds a run waits for an earlier attempt's worker to let go of it
RATE_WINDOW = 60.0  # seconds of the status line's steps/s (a run logs its step at least every 30 s)


# ---------------------------------------------------------------- one run, inside a Ray task
def finished_steps(run_dir: Path, config: TrainConfig) -> int | None:
    """The agent steps of a run whose newest checkpoint has done the schedule, else None. Reads the
    checkpoint memory-mapped: its tensors (the replay, gigabytes at scale) are not loaded."""
    import torch

    checkpoints = list_checkpoints(run_dir / "checkpoints")
    if not checkpoints:
        return None
    try:
        if checkpoints[-1].stat().st_size != json.loads(checkpoints[-1].with_suffix(".done").read_text())["size"]:
            return None  # damaged: the run's own resume skips it and says so
        progress = torch.load(checkpoints[-1], map_location="cpu", mmap=True, weights_only=True)["progress"]
    except Exception:  # unreadable: leave the verdict to the resume
        return None
    visits = config.schedule.cycles * len(config.schedule.games)
    return progress["global_step"] if progress["visit"] >= visits else None


def train_run(name: str, run_dir: str, base: str, overrides: list[str], log: str) -> dict:
    """Start, resume or (if finished) leave the run in `run_dir`; its console goes to `log`. Returns its
    exit code and, for a failure, the error in one line. Runs again from the top when Ray retries it."""
    from agent.resume import resume
    from agent.stopping import EXIT_BAD_INPUT, EXIT_CRASHED
    from agent.trainer import Trainer

    run_dir, log = Path(run_dir), Path(log)
    result = {"name": name, "code": EXIT_CRASHED, "error": None, "steps": None, "host": socket.gethostname(),
              "pid": os.getpid(), "agent": str(PROJECT_ROOT)}
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a", buffering=1) as handle:
        console = _LastMessage(handle)
        handle.write(f"==== {now()} {name} on {result['host']}, pid {result['pid']}\n")
        with contextlib.redirect_stdout(console), contextlib.redirect_stderr(console):
            try:
                # The worker of an earlier attempt may outlive its sweep (killed) by a few seconds.
                with exclusive(log.with_suffix(".lock"), holder(), wait=RUN_LOCK_WAIT):
                    config = load_config(base, overrides)
                    if holds_run(run_dir):
                        trainer = resume(run_dir, config)
                    else:
                        make_dir(run_dir)
                        trainer = Trainer(config, run_dir)
                    result["code"] = trainer.train()
                result["steps"] = trainer.progress.global_step
                if result["code"] != 0:
                    crash = _crash_line(run_dir) if result["code"] == EXIT_CRASHED else None
                    result["error"] = crash or console.last
            except TimeoutError as exc:
                result["error"] = f"another process still trains this run after {RUN_LOCK_WAIT:.0f} s ({exc})"
            except Exception as exc:  # refused before training (a config, device or run directory problem)
                traceback.print_exc(file=handle)
                bad_input = isinstance(exc, (ConfigError, CheckpointError, ValueError))
                result["code"] = EXIT_BAD_INPUT if bad_input else EXIT_CRASHED
                result["error"] = f"{type(exc).__name__}: {_one_line(str(exc))}"
        handle.write(f"==== {now()} exit {result['code']}" + (f": {result['error']}" if result["error"] else "")
                     + "\n")
    return result


class _LastMessage:
    """A text stream into the run's log that remembers the first line of the last message written (the
    trainer's console prints each message, such as a failure and its advice, in one write)."""

    def __init__(self, handle):
        self.handle, self.last = handle, None

    def write(self, text: str) -> int:
        if text.strip():
            self.last = text.strip().splitlines()[0]
        return self.handle.write(text)

    def flush(self) -> None:
        self.handle.flush()


def _crash_line(run_dir: Path) -> str | None:
    """The exception line of the newest crash log (its traceback's last line)."""
    logs = sorted(run_dir.glob("crash-*.log"))
    lines = logs[-1].read_text().strip().splitlines() if logs else []
    return lines[-1] if lines else None


def _one_line(text: str, limit: int = 400) -> str:
    line = " ".join(part.strip() for part in text.strip().splitlines() if part.strip())
    return line if len(line) <= limit else line[: limit - 3] + "..."


# ---------------------------------------------------------------- the driver
def connect(address: str | None, local_cpus: int | None) -> bool:
    """Start a local Ray (address None) or join a running cluster, unless this process already did
    (then False); workers import this project."""
    try:
        import ray
    except ImportError:
        raise SweepError("Ray is not installed: pip install -e '.[sweep]' (or pip install ray).") from None
    if address is not None:
        if local_cpus is not None:
            raise SweepError("--local-cpus sizes the local Ray; a cluster (--address) has the CPUs its nodes have.")
        _check_address(address)
    if ray.is_initialized():
        return False
    # The workers import the project from where this process does (a checkout on PYTHONPATH or an
    # editable install): it must be at the same path on every node.
    runtime_env = {"env_vars": {"PYTHONPATH": str(PROJECT_ROOT) + os.pathsep + "${PYTHONPATH}"}}
    try:
        if address is None:
            # The sweep passes only small arguments and results through Ray's object store.
            ray.init(address="local", num_cpus=local_cpus, include_dashboard=False, log_to_driver=False,
                     object_store_memory=100 * 1024**2, runtime_env=runtime_env, logging_level="WARNING")
        else:
            ray.init(address=address, log_to_driver=False, runtime_env=runtime_env, logging_level="WARNING")
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise SweepError(f"Cannot connect to a Ray cluster at --address {address}: {_one_line(str(exc))}\n"
                         "Start one with `ray start --head` (and `ray start --address=HEAD:6379` on the other "
                         "nodes), or leave --address out to run on this machine.") from None
    return True


def _check_address(address: str) -> None:
    """Fail fast, with advice, on an address ray.init would retry for minutes."""
    if address == "auto" or address.startswith("ray://"):
        return
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise SweepError(f"--address {address} is not a Ray address: give auto (a cluster started on this node "
                         "with `ray start`), HOST:PORT (the head's address that `ray start --head` prints, port "
                         "6379 by default) or ray://HOST:10001.")
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as exc:
        raise SweepError(f"Cannot reach a Ray cluster at --address {address}: {exc.strerror or exc}. Start its "
                         f"head with `ray start --head --port={port}` on {host}, check the address it printed, "
                         "or leave --address out to run on this machine.") from None


def lock(out: Path):
    """One sweep at a time in OUT: two would train the same run directories at once."""
    make_dir(out, "sweep directory", "--out")
    check_writable(out, "--out")
    try:
        return exclusive(out / ".lock", holder())
    except TimeoutError as exc:
        raise SweepError(f"Another sweep is running in {out} ({exc}); wait for it, or stop it (its runs resume "
                         "when the sweep is run again).") from None


def check_resources(sweep: Sweep, local: bool) -> None:
    """A run asking for more than any node has would wait for ever."""
    import ray

    nodes = [node["Resources"] for node in ray.nodes() if node.get("Alive")]
    if any(node.get("CPU", 0) >= sweep.num_cpus and node.get("GPU", 0) >= sweep.num_gpus for node in nodes):
        return
    have = ", ".join(f"{node.get('CPU', 0):g} CPUs and {node.get('GPU', 0):g} GPUs" for node in nodes)
    message = (f"each run asks for {sweep.num_cpus:g} CPUs and {sweep.num_gpus:g} GPUs, but no node has that "
               f"({have}). Lower resources.num_cpus / num_gpus (or --num-cpus / --num-gpus)")
    if local:
        raise SweepError(message + ", or give the local Ray more with --local-cpus.")
    print(f"warning: {message}; the runs wait until a node that large joins the cluster.", file=sys.stderr)


def run_sweep(sweep: Sweep, out: Path, record: dict, progress_every: float = 5.0, stream=None) -> int:
    """Hand the runs that are not finished to Ray, report progress, return the sweep's exit code."""
    import ray

    stream = stream or sys.stderr
    results: dict[str, dict] = {}
    for run in sweep.runs:
        steps = finished_steps(out / run.name, run.config)
        if steps is not None:
            results[run.name] = {"status": "finished earlier", "code": 0, "steps": steps, "error": None}
    todo = [run for run in sweep.runs if run.name not in results]
    print(f"Sweep {sweep.path} in {out}: {len(sweep.runs)} runs, {len(results)} finished earlier, "
          f"{len(todo)} to train ({sweep.num_cpus:g} CPUs, {sweep.num_gpus:g} GPUs each).", file=stream, flush=True)
    status = _Status(out, [run.name for run in todo], len(sweep.runs), stream)
    task = ray.remote(train_run)  # Ray gives a task with GPUs a fresh worker (max_calls=1 is its default there)
    pending = {task.options(num_cpus=sweep.num_cpus, num_gpus=sweep.num_gpus, max_retries=sweep.max_retries,
                            name=f"sweep:{run.name}").remote(run.name, str(out / run.name), str(sweep.base),
                                                             run.overrides, str(status.logs[run.name])): run.name
               for run in todo}
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    interrupted = False
    try:
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=max(status.due(progress_every), 0.05))
            for ref in ready:
                name = pending.pop(ref)
                results[name] = _result(ref, name)
                if results[name]["code"] not in (0, EXIT_INTERRUPTED):
                    status.say(f"run {name} failed: {results[name]['error']} (log: {status.logs[name]})")
            if status.due(progress_every) <= 0:
                status.line(results)
    except KeyboardInterrupt:
        interrupted = True
        status.say(f"Interrupted: stopping {len(pending)} run(s); each writes a checkpoint (rerun the sweep to "
                   "continue them).")
        for ref in pending:
            ray.cancel(ref)  # a KeyboardInterrupt in the task: the trainer checkpoints and exits
        for ref, name in pending.items():
            results[name] = _result(ref, name, timeout=120)
    finally:
        signal.signal(signal.SIGTERM, previous)
    status.line(results)
    record["sessions"][-1].update(ended=now(), results={run.name: results[run.name] for run in sweep.runs
                                                         if run.name in results})
    replace_atomically(out / "sweep.json", json.dumps(record, indent=2).encode())
    _summary(sweep, out, results, stream)
    if interrupted:
        return EXIT_INTERRUPTED
    return EXIT_FAILED if any(result["code"] != 0 for result in results.values()) else EXIT_DONE


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def _result(ref, name: str, timeout: float | None = None) -> dict:
    """A task's result, or the reason there is none (its worker died more often than max_retries...)."""
    import ray

    try:
        result = ray.get(ref, timeout=timeout)
    except ray.exceptions.TaskCancelledError:
        return {"status": "interrupted", "code": EXIT_INTERRUPTED, "steps": None,
                "error": "cancelled before it started"}
    except ray.exceptions.RayError as exc:
        lines = [line for line in str(exc).strip().splitlines() if line.strip()]
        return {"status": "failed", "code": 1, "steps": None,
                "error": f"{type(exc).__name__}: {lines[-1].strip() if lines else exc}"}
    if result["agent"] != str(PROJECT_ROOT):
        print(f"warning: run {name} ran the project in {result['agent']} on {result['host']}, this sweep the one "
              f"in {PROJECT_ROOT}: the workers may run other code.", file=sys.stderr)
    status = {0: "done", EXIT_INTERRUPTED: "interrupted"}.get(result["code"], "failed")
    return {"status": status, "code": result["code"], "steps": result["steps"], "error": result["error"]}


class _Status:
    """The sweep's progress line, from the runs' logs: a run runs once an attempt has written its `====` line in
    this session; each attempt trained the steps between its first and its last `[step N` line."""

    def __init__(self, out: Path, names: list[str], total: int, stream):
        self.logs = {name: out / "logs" / f"{name}.log" for name in names}
        self.read = {name: path.stat().st_size if path.exists() else 0 for name, path in self.logs.items()}
        self.total, self.stream, self.started = total, stream, time.monotonic()
        self.attempts: dict[str, tuple[int, int] | None] = {}  # a run's current attempt: first and last step
        self.trained, self.last, self.history = 0, self.started, collections.deque([(self.started, 0)])

    def due(self, every: float) -> float:
        return self.last + every - time.monotonic()

    def say(self, text: str) -> None:
        print(text, file=self.stream, flush=True)

    def _read_logs(self) -> None:
        for name, path in self.logs.items():
            with contextlib.suppress(FileNotFoundError), open(path, "rb") as handle:
                handle.seek(self.read[name])
                new = handle.read()
                new = new[: new.rfind(b"\n") + 1]  # whole lines only
                self.read[name] += len(new)
                for line in new.decode(errors="replace").splitlines():
                    if re.match(r"==== \S+ (?!exit )", line):  # an attempt starts (its end: `==== T exit`)
                        first, last = self.attempts.get(name) or (0, 0)
                        self.trained, self.attempts[name] = self.trained + last - first, None
                    elif (step := re.match(r"\[step ([\d,]+)", line)) and name in self.attempts:
                        step = int(step[1].replace(",", ""))
                        self.attempts[name] = (self.attempts[name] or (step,))[0], step

    def line(self, results: dict) -> None:
        self._read_logs()
        trained = self.trained + sum(max((results.get(name, {}).get("steps") or span[1]) - span[0], 0)
                                     for name, span in self.attempts.items() if span)
        now = self.last = time.monotonic()
        while len(self.history) > 1 and self.history[1][0] <= now - RATE_WINDOW:
            self.history.popleft()
        since, before = self.history[0]
        self.history.append((now, trained))
        count = collections.Counter({0: "done", EXIT_INTERRUPTED: "stopped"}.get(result["code"], "failed")
                                    for result in results.values())
        running = sum(name not in results for name in self.attempts)
        elapsed = int(now - self.started)
        self.say(f"[sweep {elapsed // 3600}:{elapsed % 3600 // 60:02d}:{elapsed % 60:02d}] {count['done']}/"
                 f"{self.total} done, {running} running, {self.total - len(results) - running} waiting, "
                 f"{count['failed']} failed" + (f", {count['stopped']} stopped" if count["stopped"] else "")
                 + f" | {(trained - before) / max(now - since, 1e-9):,.0f} agent steps/s | {trained:,} steps "
                 "this session")


def _summary(sweep: Sweep, out: Path, results: dict, stream) -> None:
    lines = [f"Sweep {out} ({out / 'sweep.json'}):", "| run | status | steps | error |", "|---|---|---:|---|"]
    for run in sweep.runs:
        result = results.get(run.name, {"status": "not run", "steps": None, "error": None})
        steps = f"{result['steps']:,}" if result["steps"] is not None else "-"
        lines.append(f"| {run.name} | {result['status']} | {steps} | {result['error'] or ''} |")
    stopped = [name for name, result in results.items() if result["code"] == EXIT_INTERRUPTED]
    failed = [name for name, result in results.items() if result["code"] not in (0, EXIT_INTERRUPTED)]
    if stopped:
        lines.append(f"{len(stopped)} run(s) interrupted (those that had started wrote a checkpoint); rerun the "
                     "same command to continue them (finished runs are skipped).")
    if failed:
        lines.append(f"{len(failed)} run(s) failed; their logs are in {out / 'logs'}. Rerun the same command to "
                     "resume them (finished runs are skipped).")
    print("\n".join(lines), file=stream, flush=True)
