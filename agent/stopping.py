"""How a run stops: signals acted on at safe points, and an exit code and a message for every ending.

SIGTERM and SIGINT end a run at the next safe point, never in the middle of a write: the handler
only notes the signal; the loop calls `check()` once per vector step, evaluation step or Fisher
minibatch, which raises `Interrupted`: the work in progress is abandoned and the run's last
consistent state is checkpointed (agent/trainer.py). `ending` turns every other way a run can end
(divergence, a checkpoint that cannot be written, a bug) into an exit code and a message that
says what is kept and what to do next.
"""

from __future__ import annotations

import contextlib
import math
import signal
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path

from agent.checkpoint import CheckpointError

SIGNALS = (signal.SIGTERM, signal.SIGINT)
EXIT_DONE, EXIT_CRASHED, EXIT_BAD_INPUT, EXIT_INTERRUPTED, EXIT_DIVERGED, EXIT_CHECKPOINT_FAILED = 0, 1, 2, 3, 4, 5
SLOW_ENV_BUILD = 64  # envs from which building them takes long enough (10 s) to let a stop signal end it at once
ENV_BUILD_SECONDS = 0.16  # per env, measured on this project's 2-core machine


class TrainingDiverged(RuntimeError):
    """Non-finite loss or Q-values."""


class Interrupted(Exception):
    """A stop signal arrived: abandon the work in progress."""


class StopSignals:
    def __init__(self):
        self.received: str | None = None  # the name of the signal that stopped the run

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        """Note SIGTERM and SIGINT instead of acting on them, while the block runs."""
        previous = {sig: signal.signal(sig, self._note) for sig in SIGNALS}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def check(self) -> None:
        if self.received is not None:
            raise Interrupted

    def while_envs_build(self, num_envs: int, what: str, say: Callable[[str], None]):
        """ale-py builds and resets its envs in C++ holding the GIL, so no Python handler runs meanwhile:
        with many envs SIGTERM/SIGINT take their default action there instead and end the process at once.
        Nothing is lost where the run's last checkpoint is a state a resume continues from exactly, as after
        any kill (the trainer checkpoints at the start of every visit)."""
        if num_envs < SLOW_ENV_BUILD:
            return contextlib.nullcontext()
        return self._acted_on_at_once(lambda: say(
            f"{what} (about {ENV_BUILD_SECONDS * num_envs:.0f} s on 2 cores; a stop signal now ends the run at "
            "once, and --resume continues from its last checkpoint)"))

    @contextlib.contextmanager
    def _acted_on_at_once(self, announce: Callable[[], None]) -> Iterator[None]:
        previous = {sig: signal.signal(sig, signal.SIG_DFL) for sig in SIGNALS}
        try:
            self.check()  # a signal that came before the window opened
            announce()
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        self.check()

    def _note(self, signum, frame) -> None:
        self.received = signal.Signals(signum).name


def check_finite(stats: dict[str, float], step: int) -> None:
    """Raise TrainingDiverged when the logged loss or Q-values are not finite."""
    if stats.get("td_loss") is not None and not (math.isfinite(stats["td_loss"]) and math.isfinite(stats["q_values"])):
        raise TrainingDiverged(f"Non-finite loss or Q-values at step {step} "
                               f"(td_loss={stats['td_loss']}, q={stats['q_values']}).")


def ending(exc: Exception, run_dir: Path, step: int) -> tuple[int, str]:
    """The exit code and the message for a run that ended on `exc` at `step` (any exception but a stop)."""
    resume = f"python scripts/train.py --resume {run_dir}"
    if isinstance(exc, TrainingDiverged):
        return EXIT_DIVERGED, (f"{exc}\nThe last good checkpoint in {run_dir / 'checkpoints'} is kept. Try a lower "
                               "dqn.learning_rate, a lower consolidation.lambda, or dqn.max_grad_norm.")
    if isinstance(exc, CheckpointError):
        return EXIT_CHECKPOINT_FAILED, f"{exc}\nStopped at step {step:,}. Resume with: {resume}"
    # A bug or a broken environment: say where the details are, keep the record.
    log = run_dir / f"crash-{time.strftime('%Y%m%d-%H%M%S')}.log"
    try:
        log.write_text(traceback.format_exc())
    except OSError:
        log = "(could not be written: printed here)\n" + traceback.format_exc()
    return EXIT_CRASHED, (f"error: unexpected {type(exc).__name__} at step {step:,}: {exc}\nThe traceback is in "
                          f"{log}; the checkpoints in {run_dir / 'checkpoints'} are intact. Please report it; "
                          f"resume with: {resume}")
