"""The one typed configuration schema, loaded from YAML with dotted command-line overrides.

pydantic does the validation: unknown keys, wrong types and out-of-range values are
errors that name the key, instead of silently falling back to a default. The sections
(env, schedule, dqn, ...) are in agent/config_sections.py; here, the whole config, the
checks that span sections, and loading.
"""

from __future__ import annotations

import difflib
import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field, ValidationError, ValidationInfo, field_validator, model_validator

from agent.config_sections import (
    CheckpointConfig,
    ConsolidationConfig,
    DQNConfig,
    EnvConfig,
    EpsilonConfig,
    EvalConfig,
    FMNConfig,
    LoggingConfig,
    NetworkConfig,
    PlasticityConfig,
    ReplayConfig,
    ScheduleConfig,
    _Section,
)


class ConfigError(ValueError):
    """A configuration problem, with a message meant for the user."""


class TrainConfig(_Section):
    seed: int = Field(0, ge=0, lt=2**63)
    """Seeds every random generator of the run (env seeds are derived from it)."""
    device: str = "auto"
    """auto (CUDA when available, else CPU), cpu, cuda or cuda:N."""
    torch_threads: int = Field(0, ge=0)
    """CPU threads for torch (0: torch's default, one per core; they wait passively, see agent/__init__.py)."""
    env: EnvConfig = EnvConfig()
    schedule: ScheduleConfig
    network: NetworkConfig = NetworkConfig()
    task_inference: Literal["labels", "fmn"] = "labels"
    """labels: the schedule says which game is played. fmn: the agent is not told; a Forget-Me-Not process infers
    the context, which then selects the replay buffer, the task parameters, the active anchors and the anchor
    refreshed at a detected switch (epsilon's visit/game timers follow the context too). The true game is only
    logged (contexts.csv)."""
    fmn: FMNConfig = FMNConfig()
    dqn: DQNConfig = DQNConfig()
    epsilon: EpsilonConfig = EpsilonConfig()
    replay: ReplayConfig = ReplayConfig()
    consolidation: ConsolidationConfig = ConsolidationConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()
    eval: EvalConfig = EvalConfig()
    logging: LoggingConfig = LoggingConfig()
    plasticity: PlasticityConfig = PlasticityConfig()

    @field_validator("device")
    @classmethod
    def _device(cls, device: str) -> str:
        import torch

        if device == "auto" or device == "cpu":
            return device
        try:
            parsed = torch.device(device)
        except RuntimeError:
            raise ValueError(f"{device!r} is not a device: use auto, cpu, cuda or cuda:N") from None
        if parsed.type != "cuda":
            raise ValueError(f"device {device!r} is not supported: use auto, cpu, cuda or cuda:N")
        return device

    @model_validator(mode="after")
    def _consistent(self, info: ValidationInfo) -> TrainConfig:
        dqn, replay, schedule, env = self.dqn, self.replay, self.schedule, self.env
        problems = []
        if dqn.batch_size > replay.capacity_per_game:
            problems.append(f"dqn.batch_size ({dqn.batch_size}) exceeds replay.capacity_per_game "
                            f"({replay.capacity_per_game}): a batch cannot be larger than the buffer it is drawn "
                            "from. Raise replay.capacity_per_game or lower dqn.batch_size.")
        from agent.replay import FrameReplay

        minimum = FrameReplay.minimum_capacity(env.num_envs)
        if replay.capacity_per_game < minimum:
            problems.append(f"replay.capacity_per_game ({replay.capacity_per_game}) is too small for env.num_envs "
                            f"({env.num_envs}): the replay needs at least "
                            f"{minimum // env.num_envs} transitions per env. Raise "
                            f"replay.capacity_per_game to {minimum} or more, or lower env.num_envs.")
        fmn = self.fmn
        frames_per_step = env.num_envs if fmn.envs == "all" else 1
        if fmn.max_count * frames_per_step < fmn.window:  # the model's counts are in frames
            problems.append(f"fmn.max_count ({fmn.max_count} vector steps, {fmn.max_count * frames_per_step} "
                            f"frames with fmn.envs {fmn.envs}) is below fmn.window ({fmn.window} frames): a context "
                            "must weigh at least one window. Raise fmn.max_count to "
                            f"{-(-fmn.window // frames_per_step)} or more.")
        # Stored configs of earlier runs are still evaluated and resumed as they are.
        if not (info.context or {}).get("stored"):
            if self.epsilon.start < self.epsilon.end:
                problems.append(f"epsilon.start ({self.epsilon.start}) is below epsilon.end ({self.epsilon.end}): "
                                "exploration would grow during training. Swap them (start is the value at the "
                                "beginning of the decay).")
            evaluation = self.eval
            if evaluation.every and evaluation.episodes and schedule.steps_per_visit > 100 * evaluation.every:
                problems.append(f"eval.every ({evaluation.every}) evaluates more than 100 times per visit of "
                                f"{schedule.steps_per_visit} steps, each time {evaluation.episodes} episode(s) of "
                                "every game: evaluation would take most of the run. Raise eval.every (e.g. "
                                f"{max(1, schedule.steps_per_visit // 10)}), or set 0 to evaluate at the switches "
                                "only.")
            if dqn.learning_starts > schedule.steps_per_visit:
                problems.append(f"dqn.learning_starts ({dqn.learning_starts}) exceeds schedule.steps_per_visit "
                                f"({schedule.steps_per_visit}): the first visit would make no update (and an EWC "
                                "anchor would be taken from an untrained network). Lower dqn.learning_starts or "
                                "raise schedule.steps_per_visit.")
            if self.task_inference == "fmn" and fmn.envs == "all" and fmn.persist * fmn.window < env.num_envs:
                problems.append(f"fmn.envs: all feeds {env.num_envs} frames a vector step, more than a change "
                                f"needs (fmn.persist {fmn.persist} x fmn.window {fmn.window} frames): two changes "
                                "could be decided in one step and the loop would act on the second only. Raise "
                                f"fmn.window to {-(-env.num_envs // fmn.persist)} or more, or use fmn.envs: first.")
            if dqn.learning_starts > replay.capacity_per_game:
                problems.append(f"dqn.learning_starts ({dqn.learning_starts}) exceeds replay.capacity_per_game "
                                f"({replay.capacity_per_game}): the buffer never holds that many transitions. "
                                "Lower dqn.learning_starts or raise replay.capacity_per_game.")
        if problems:
            raise ValueError("\n  ".join(problems))
        return self

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True)

    def digest(self) -> str:
        """Short stable hash of the resolved config."""
        text = json.dumps(self.to_dict(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """['a.b=1', 'c=[x, y]'] -> nested dict; values are parsed as YAML."""
    nested: dict[str, Any] = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key or any(not part for part in key.split(".")):
            raise ConfigError(f"Override {item!r} is not of the form section.key=value (e.g. schedule.cycles=2).")
        node = nested
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"Override {item!r} conflicts with an earlier override of {part!r}.")
        try:
            node[leaf] = yaml.safe_load(raw) if raw else ""
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            raise ConfigError(f"Override {item!r}: the value {raw!r} is not valid YAML ({mark}). Check its brackets "
                              "and quotes, e.g. schedule.games=[Breakout, Pong] (quote the whole argument in the "
                              "shell).") from None
    return nested


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def load_config(path: str | Path | None = None, overrides: list[str] | None = None,
                base: dict[str, Any] | None = None) -> TrainConfig:
    """Read a YAML file (or start from `base`), apply dotted overrides, validate."""
    data: dict[str, Any] = dict(base or {})
    source = "config"
    if path is not None:
        path = Path(path)
        source = str(path)
        if path.is_dir():
            raise ConfigError(f"Config file {path} is a directory; pass a YAML file such as "
                              "configs/quickstart.yaml.")
        if not path.is_file():
            raise ConfigError(f"Config file {path} does not exist. Shipped configs are in configs/.")
        try:
            loaded = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path} is not valid YAML: {exc}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path} must hold a mapping of sections (env, schedule, dqn, ...).")
        data = _merge(data, loaded)
    data = _merge(data, parse_overrides(overrides or []))
    return validate_config(data, source)


def validate_config(data: dict[str, Any], source: str = "config", stored: bool = False) -> TrainConfig:
    """`stored`: the config of an existing run, exempt from the checks that only concern a new run's plan."""
    try:
        return TrainConfig.model_validate(data, context={"stored": stored})
    except ValidationError as exc:
        raise ConfigError(f"Invalid {source}:\n" + _explain(exc)) from None


def _explain(exc: ValidationError) -> str:
    lines = []
    for error in exc.errors():
        loc = [str(part) for part in error["loc"]]
        key = ".".join(loc)
        if not loc:  # a check across sections: its message names the keys
            lines.append("  " + error["msg"].removeprefix("Value error, "))
        elif error["type"] == "extra_forbidden":
            model = _model_at(loc[:-1])
            names = [f.alias or n for n, f in model.model_fields.items()] if model else []
            close = difflib.get_close_matches(loc[-1], names, n=3)
            hint = f" Did you mean {' or '.join(close)}?" if close else f" Known keys: {', '.join(names)}."
            lines.append(f"  {key}: unknown key.{hint}")
        else:
            message = error["msg"].removeprefix("Value error, ")
            got = f" (got {error['input']!r})" if error["type"] != "missing" else ""
            lines.append(f"  {key}: {message}{got}")
    return "\n".join(lines)


def _model_at(loc: list[str]) -> type[BaseModel] | None:
    model: type[BaseModel] = TrainConfig
    for part in loc:
        field = model.model_fields.get(part) or next(
            (f for f in model.model_fields.values() if f.alias == part), None)
        if field is None or not (isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)):
            return None
        model = field.annotation
    return model


def crossed(count: int, advanced: int, every: int | None) -> bool:
    """Whether a counter (agent steps, updates) that just advanced by `advanced` to `count` passed a multiple of
    one of the config's `every` intervals (0 or None: the interval is off, never crossed)."""
    return bool(every) and count // every != (count - advanced) // every


def resolve_device(name: str):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={name} was asked for but CUDA is not available; use device=auto or device=cpu.")
    return device
