"""The sections of the configuration schema (agent/config.py puts them together as TrainConfig and loads
them from YAML): one pydantic model per section, each field with its type, default, bounds and a docstring
(the docs' configuration reference is generated from them: scripts/config_docs.py).
"""

from __future__ import annotations

import itertools
from decimal import Decimal, InvalidOperation
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, use_attribute_docstrings=True)

    @field_validator("*", mode="before")
    @classmethod
    def _whole_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        """Integers written as 1e6, 5.0e6 or 5e+6: YAML reads them as strings or floats."""
        if cls.model_fields[info.field_name].annotation not in (int, int | None):
            return value
        if isinstance(value, str):
            try:
                number = Decimal(value.strip())
            except InvalidOperation:
                return value  # not a number: pydantic says so
        elif isinstance(value, float):
            number = Decimal(value)
        else:
            return value
        if not number.is_finite():
            return value
        if number != number.to_integral_value():
            raise ValueError("must be a whole number, e.g. 1500 or 1.5e3")
        return int(number)


class EnvConfig(_Section):
    """The Atari environments and their protocol (Machado et al. 2018: sticky actions, no-ops, 108k-frame cap)."""

    backend: Literal["ale_vector", "gymnasium"] = "ale_vector"
    """ale_vector: ale-py's C++ vector env (fast); gymnasium: AsyncVectorEnv fallback."""
    num_envs: int = Field(8, gt=0, le=1024)
    """Environments stepped together; one agent step is one env step. Building them takes about 0.16 s each on a
    2-core CPU, at every visit (64: 10 s; 256: 42 s); at most 1024."""
    num_threads: int = Field(0, ge=0)
    """Emulator threads for ale_vector (0: ale-py chooses)."""
    overlap: bool = True
    """Step the emulators while the learner updates (updates then sample the replay one vector step behind)."""
    sticky_action_prob: float = Field(0.25, ge=0.0, le=1.0)
    """Probability of repeating the previous action (Machado et al.: 0.25)."""
    noop_max: int = Field(30, ge=0)
    """Up to this many no-op actions at episode start."""
    fire_reset: bool = True
    """Press FIRE on reset in games that need it to start."""
    max_episode_frames: int = Field(108_000, gt=0)
    """Episode cap in emulator frames (30 minutes of play)."""
    frame_skip: int = Field(4, gt=0)
    """Emulator frames per agent step (max-pooled over the last two)."""
    life_loss_terminal: bool = False
    """Treat a lost life as terminal for the learner only (the episode goes on)."""

    def atari_settings(self, max_episode_frames: int | None = None):
        """The protocol settings for `envs.make_vector_env` (optionally with another episode cap)."""
        from envs.atari import AtariSettings

        return AtariSettings(self.sticky_action_prob, self.noop_max, self.fire_reset,
                             max_episode_frames or self.max_episode_frames, self.frame_skip)

    @field_validator("backend")
    @classmethod
    def _backend_installed(cls, backend: str) -> str:
        from envs.atari import check_backend

        check_backend(backend)
        return backend


# Names the schedule's stream among the seeds derived from the run's seed (evaluation's is 7919).
ORDER_SEED_STREAM = 104_729


class ScheduleConfig(_Section):
    """Which games are trained, for how many agent steps each visit, how many times and in which order."""

    games: list[str] = Field(min_length=1)
    """The games, e.g. [Breakout, Pong]: visited in this order (order=cyclic) or in a seeded random one."""
    steps_per_visit: int = Field(gt=0)
    """Agent steps (summed over envs) spent on a game each time it is visited."""
    cycles: int = Field(1, gt=0)
    """How many times every game is visited; a cycle visits each game once."""
    order: Literal["cyclic", "random"] = "cyclic"
    """cyclic: every cycle visits the games as listed. random (the EWC paper's random order with revisits): each
    cycle is a random permutation of the games, drawn by numpy's default_rng(envs.derive_seed(seed, 104729, cycle,
    attempt)) with attempt 0, 1, ... until the permutation does not start with the game that ended the previous
    cycle (no game twice in a row). A function of seed, games and cycles only: a resume replays it, and raising
    schedule.cycles appends cycles. The order is written to the run's schedule.json."""

    @field_validator("games")
    @classmethod
    def _known_games(cls, games: list[str]) -> list[str]:
        from envs.atari import resolve_game

        canonical = [resolve_game(game)[0] for game in games]
        duplicates = sorted({g for g in canonical if canonical.count(g) > 1})
        if duplicates:
            raise ValueError(f"games listed twice: {duplicates}; use schedule.cycles to revisit games")
        return canonical

    @property
    def total_steps(self) -> int:
        return self.steps_per_visit * len(self.games) * self.cycles

    def visits(self, seed: int) -> list[str]:
        """The game of every visit, in order (see `order`); `seed` is the run's seed."""
        if self.order == "cyclic":
            return self.games * self.cycles
        import numpy as np

        from envs.atari import derive_seed

        visits: list[str] = []
        for cycle in range(self.cycles):
            for attempt in itertools.count():
                rng = np.random.default_rng(derive_seed(seed, ORDER_SEED_STREAM, cycle, attempt))
                permutation = [self.games[i] for i in rng.permutation(len(self.games))]
                if not visits or len(self.games) == 1 or permutation[0] != visits[-1]:
                    break
            visits += permutation
        return visits


class NetworkConfig(_Section):
    """The Q-network."""

    architecture: Literal["nature", "large"] = "nature"
    """nature: Mnih et al. 2015 (32/64/64, fc 512); large: Kirkpatrick et al. 2017 (32/64/128, fc 1024)."""
    task_params: bool = False
    """Per-task gains and biases on every layer, y = (W x + b_c) * g_c (Kirkpatrick et al. 2017): W shared and
    protected by consolidation, b_c (init 0) and g_c (init 1) trained only while task c is trained. A task is a
    game (task_inference: labels) or an inferred context (fmn: fmn.max_contexts slots)."""


class FMNConfig(_Section):
    """The Forget-Me-Not process that infers the context when task_inference is fmn (agent/task_inference.py)."""

    levels: int = Field(8, ge=2, le=256)
    """Gray levels of the 42x42 downsampled frames each context models (Dirichlet-multinomial per pixel)."""
    window: int = Field(4, gt=0, le=1000)
    """Frames per decision (with fmn.envs first, one frame per vector step)."""
    envs: Literal["first", "all"] = "first"
    """Whose frames are observed at each vector step: env 0's (first), or every env's, in order (all). Measured
    on recorded random play of 12 games x 2 cycles, 8 envs (docs/full-agent.md): all cuts the detection delay
    from 20 to 3 vector steps and merges and splits no game differently, for env.num_envs times the inference's
    compute."""
    alpha: float = Field(0.5, gt=0)
    """Dirichlet prior count per gray level (measured on recorded random play of 12 games: 0.5 makes fewer
    spurious contexts than 0.05 with the held-out Dirichlet; docs/full-agent.md)."""
    switch_prior: float = Field(0.1, gt=0, lt=1)
    """Prior probability of a switch at a decision, decaying with the windows since the last switch."""
    max_contexts: int = Field(16, gt=0)
    """Most contexts ever created (network slots for task_params)."""
    new_context_margin: float = Field(0.0, ge=0)
    """Extra (tempered) log-evidence the held-out model, a Dirichlet with no counts yet, needs over every context
    before a new context is made."""
    max_count: int = Field(1000, ge=1)
    """Vector steps a context weighs at most (frames: one per step with fmn.envs first, env.num_envs per step
    with all): past it, its counts are scaled back (older frames fade exponentially)."""
    evidence_scale: float = Field(1.0, gt=0)
    """Tempering: the window log-likelihoods are multiplied by this before the HMM prior combines them."""
    persist: int = Field(5, ge=1, le=1000)
    """Consecutive windows that must prefer another context before the change is decided (and consolidates): 5
    cut spurious changes from 5.4 to 0.2 per visit on CORA's games, at 16 frames more detection delay."""


class DQNConfig(_Section):
    """The learner: (Double) DQN with a target network, Huber loss and Adam."""

    learning_rate: float = Field(1e-4, gt=0)
    """Adam's learning rate."""
    adam_eps: float = Field(1.5e-4, gt=0)
    """Adam's epsilon."""
    gamma: float = Field(0.99, gt=0, le=1)
    """Discount factor of the TD target."""
    batch_size: int = Field(32, gt=0)
    """Transitions sampled from the current game's buffer per update."""
    train_every: int = Field(4, gt=0)
    """Agent steps per gradient update (the replay ratio)."""
    learning_starts: int = Field(10_000, ge=0)
    """Transitions in the current game's buffer before updates start."""
    target_update_every: int = Field(8_000, gt=0)
    """Agent steps between target-network syncs. Syncs happen only while updates run: while a game's buffer
    fills up to learning_starts no sync is made, and the next one comes at the first update after it."""
    double_dqn: bool = True
    """Double DQN: the online network chooses the next action, the target network values it (false: the target
    network does both)."""
    huber_delta: float = Field(1.0, gt=0)
    """Delta of the Huber loss on the TD error."""
    max_grad_norm: float = Field(10.0, gt=0)
    """Gradients are clipped to this global norm before each Adam step."""
    clip_rewards: bool = True
    """Clip rewards to [-1, 1] in the learner (logged returns stay raw)."""
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    """bf16: autocast the update's and the actor's forward passes to bfloat16 (about 2x faster on CPUs with
    AVX512-BF16/AMX; on CPUs without them, which emulate it, 0.79x (AVX512F) to 0.09x (AVX2 only); no faster on
    an H200 at batch 32). The Q head,
    every argmax, the Fisher, the penalty and the optimiser stay float32. auto: bf16 on a CPU with native
    bfloat16, fp32 elsewhere; the run's config.yaml records the one chosen."""
    cuda_graph: bool = True
    """On CUDA, run each update as one captured CUDA graph (8x more updates/s on an H200); ignored on the CPU."""


class EpsilonConfig(_Section):
    """Epsilon-greedy exploration while training."""

    start: float = Field(1.0, ge=0, le=1)
    """Exploration at the start of the decay."""
    end: float = Field(0.01, ge=0, le=1)
    """Exploration once the decay is over."""
    decay_steps: int = Field(250_000, gt=0)
    """Agent steps of the linear decay from start to end."""
    restart: Literal["visit", "game", "never"] = "visit"
    """Timer: restarts on every visit, runs per game (the paper), or once for the whole run."""


class ReplayConfig(_Section):
    """The replay: one buffer per game."""

    capacity_per_game: int = Field(50_000, ge=64)
    """Transitions kept for each game (one buffer per game)."""
    storage: Literal["host", "device"] = "host"
    """Where the frames live: host memory, or the training device (a GPU: sampling without host copies;
    about 7 KB x capacity_per_game x games of GPU memory)."""


class ConsolidationConfig(_Section):
    """What protects the earlier games: the method, its penalty and Fisher, and the retention probe."""

    method: Literal["none", "l2", "ewc", "online_ewc"] = "none"
    """none: fine-tuning; l2: uniform importance; ewc: one Fisher anchor per game; online_ewc: one running anchor."""
    lambda_: float = Field(10.0, ge=0, alias="lambda")
    """Penalty strength; with normalize=mean it is the mean stiffness per weight (chosen by experiment: see
    docs/consolidation.md)."""
    fisher_estimator: Literal["expected", "sampled", "empirical"] = "expected"
    """The Q-values read as a softmax policy's logits. expected: the exact expectation over all 18 actions;
    sampled: one action drawn per state; empirical: the per-sample TD-loss gradient."""
    fisher_batches: int = Field(100, gt=0)
    """Minibatches of replayed states of the game being left in each Fisher estimate."""
    fisher_batch_size: int = Field(32, gt=0)
    """States per Fisher minibatch."""
    normalize: Literal["none", "mean", "max"] = "mean"
    """Divide each new Fisher by its mean (default) or max before it is stored; none keeps the raw scale."""
    online_gamma: float = Field(1.0, ge=0, le=1)
    """online_ewc: decay of the running Fisher (F <- gamma F + F_new)."""
    min_steps_to_protect: int = Field(0, ge=0)
    """A game gets an anchor only after this many agent steps on it (the paper: 5M)."""
    full_strength_steps: int = Field(0, ge=0)
    """An anchor's importance is scaled by min(1, agent steps trained on its task / this): a task trained briefly
    (an inferred context that lasted a short while) is held in proportion. 0: every anchor at full strength."""
    probe_states: int = Field(512, ge=0)
    """Held-out replayed states per game for the retention probe (0 turns it off)."""
    probe_every: int = Field(10_000, gt=0)
    """Agent steps between retention-probe measurements."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, use_attribute_docstrings=True,
                              populate_by_name=True)


class CheckpointConfig(_Section):
    """Full checkpoints, to resume a run (milestones at every game switch are kept whatever these say)."""

    every: int = Field(250_000, ge=0)
    """Agent steps between checkpoints (0: only at game switches and on SIGTERM/SIGINT)."""
    keep: int = Field(3, gt=0)
    """Newest checkpoints kept; older ones are deleted."""
    replay: bool = True
    """Include the replay buffers (exact resume). Without them resume starts with empty buffers."""


class EvalConfig(_Section):
    """Evaluation of every game of the schedule during training, with its own envs and RNG."""

    every: int = Field(0, ge=0)
    """Agent steps between evaluations on every game of the schedule (0: only at the start and at each switch;
    set eval.episodes=0 to turn evaluation off)."""
    episodes: int = Field(3, ge=0)
    """Episodes per game and evaluation."""
    epsilon: float = Field(0.05, ge=0, le=1)
    """Exploration while evaluating."""
    num_envs: int = Field(8, gt=0, le=1024)
    """Environments stepped together while evaluating (at most 1024, as env.num_envs: building them takes about
    0.16 s each on a 2-core CPU)."""
    max_episode_frames: int = Field(108_000, gt=0)
    """Episode cap while evaluating (a greedy agent that never presses FIRE plays until the cap)."""


class LoggingConfig(_Section):
    """Scalar logs and the console."""

    log_every: int = Field(1_000, gt=0)
    """Agent steps between scalar logs (losses, sps, epsilon)."""
    progress_bar: bool = True
    """A progress bar; false (for log files): a status line every 30 s and at every visit, evaluation and switch."""


class PlasticityConfig(_Section):
    """Plasticity: diagnostics of what the network loses besides old games, and a method that restores it
    (agent/plasticity.py, agent/plasticity_methods.py; see docs/plasticity.md)."""

    every: int | None = 10_000
    """Agent steps between diagnostics on held-out replayed states of the current task (also at every switch);
    null turns them off. They draw from their own random stream: training is the same with or without them."""
    states: int = Field(256, ge=16, le=4096)
    """Held-out states each measurement samples from the current task's replay."""
    taus: list[float] = [0.0, 0.1]
    """Dormant thresholds on ReDo's score (a unit's mean |activation| over its layer's mean): 0 counts units that
    never fire, 0.1 is ReDo's."""
    method: Literal["none", "redo", "shrink_perturb", "reset"] = "none"
    """none; redo: recycle dormant units every redo_every updates (Sokar et al. 2023); shrink_perturb: at every
    switch, weights <- shrink * weights + perturb * a fresh initialisation (Ash & Adams 2020); reset: at every
    switch, re-initialise the last reset_layers layers (Nikishin et al. 2022). Composes with consolidation."""
    redo_every: int = Field(1_000, gt=0)
    """Updates between ReDo's recycling (its paper: every 1,000 updates on Atari)."""
    redo_tau: float = Field(0.1, ge=0)
    """ReDo's dormant threshold for recycling."""
    shrink: float = Field(0.8, ge=0, le=1)
    """shrink_perturb's factor on the current weights."""
    perturb: float = Field(0.2, ge=0, le=1)
    """shrink_perturb's factor on a freshly initialised network's weights."""
    reset_layers: int = Field(1, ge=1, le=5)
    """reset: how many of the last weight layers are re-initialised (1: the Q head; 2: the head and the hidden
    layer), their Adam moments zeroed."""

    @field_validator("every")
    @classmethod
    def _every(cls, every: int | None) -> int | None:
        if every is not None and every <= 0:
            raise ValueError(f"must be a positive number of agent steps, got {every}; use null to turn the "
                             "diagnostics off")
        return every

    @field_validator("taus")
    @classmethod
    def _taus(cls, taus: list[float]) -> list[float]:
        if not taus or any(tau < 0 for tau in taus):
            raise ValueError(f"must be one or more thresholds >= 0, got {taus}")
        return taus
