"""Wiring between the parts (issue 17): each test checks an effect that a one-line break of the wiring removes.

The trainer's tests share one tiny real run (Breakout, Pong, twice round, per-task gains and biases, EWC),
recorded as it trains: what each update saw and returned, and each consolidation's own Fisher estimate."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn

from agent.config import load_config
from agent.consolidation import Consolidator
from agent.dqn import DQNLearner, linear_epsilon
from agent.evaluation import play_episodes
from agent.fisher import estimate_fisher, shared_parameters
from agent.networks import QNetwork
from agent.probe import RetentionProbe
from agent.replay import Batch, FrameReplay
from agent.task_inference import ForgetMeNot
from agent.trainer import Trainer
from envs import AtariSettings, derive_seed, make_vector_env

ROOT = Path(__file__).resolve().parent.parent
SMOKE = ROOT / "configs" / "smoke.yaml"
VISIT, ENVS, LOG_EVERY, TARGET_EVERY, DECAY, LAMBDA = 120, 4, 40, 40, 10_000, 100.0
RUN = ["schedule.games=[Breakout, Pong]", "schedule.cycles=2", f"schedule.steps_per_visit={VISIT}",
       f"env.num_envs={ENVS}", "replay.capacity_per_game=512", "dqn.learning_starts=16", "dqn.train_every=8",
       "dqn.learning_rate=1e-3", f"dqn.target_update_every={TARGET_EVERY}", f"epsilon.decay_steps={DECAY}",
       "epsilon.restart=visit", "network.task_params=true", "consolidation.method=ewc",
       f"consolidation.lambda={LAMBDA}", "consolidation.fisher_batches=1", "consolidation.fisher_batch_size=16",
       "consolidation.probe_states=8", f"consolidation.probe_every={VISIT}", "eval.episodes=1", "eval.num_envs=1",
       "eval.max_episode_frames=40", f"logging.log_every={LOG_EVERY}", "logging.progress_bar=false", "torch_threads=1"]
# learning_starts < target_update_every: every interval between two syncs has updates, so each sync is visible.


_PROJECTIONS: dict[int, torch.Tensor] = {}


def fingerprint(module: nn.Module) -> float:
    """A number that changes whenever any parameter does (a fixed random projection, in float64)."""
    flat = torch.cat([p.detach().flatten() for p in module.parameters()]).double()
    if len(flat) not in _PROJECTIONS:
        _PROJECTIONS[len(flat)] = torch.randn(len(flat), generator=torch.Generator().manual_seed(0),
                                              dtype=torch.float64)
    return float(flat @ _PROJECTIONS[len(flat)])


def naive_penalty(anchors: dict, model: nn.Module, current: str | None, lambda_: float) -> float:
    """lambda/2 sum over the anchors of the other tasks of F (theta - theta*)^2, plainly in float64."""
    shared = shared_parameters(model)
    theta = torch.cat([p.detach().flatten() for p in shared.values()]).double()
    total = 0.0
    for key, anchor in anchors.items():
        if key == current:
            continue
        centre = torch.cat([anchor["params"][name].flatten() for name in shared]).double()
        importance = torch.cat([anchor["importance"][name].flatten() for name in shared]).double()
        total += float((importance * (theta - centre).square()).sum())
    return 0.5 * lambda_ * total


def mean_normalised(fisher: dict) -> dict:
    """F / (the mean of all its entries), the slow way."""
    total = sum(float(value.double().sum()) for value in fisher.values())
    count = sum(value.numel() for value in fisher.values())
    return {name: value.double() / (total / count) for name, value in fisher.items()}


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """The shared run, with what every update and every consolidation did."""
    config = load_config(SMOKE, RUN)
    trainer = Trainer(config, tmp_path_factory.mktemp("wiring") / "run")
    updates, consolidations = [], []
    real_update, real_leave = trainer.update, trainer.switch.leave

    def update(batch, task):
        progress, anchors = trainer.progress, trainer.consolidator.anchors
        updates.append({"step": progress.global_step, "visit": progress.visit, "task": progress.task,
                        "online": fingerprint(trainer.learner.online),
                        "target": fingerprint(trainer.learner.target),
                        "expected_penalty": naive_penalty(anchors, trainer.network, progress.task, LAMBDA),
                        # what every anchor, the current game's included, would give (revisits only)
                        "all_anchors": naive_penalty(anchors, trainer.network, None, LAMBDA)
                        if progress.task in anchors else None})
        result = real_update(batch, task)
        updates[-1]["penalty"] = float(result[2])
        return result

    def leave(key, record):
        # The Fisher on states drawn, as the trainer draws them, from the replay of the task being left.
        rng = np.random.default_rng()
        rng.bit_generator.state = trainer.rng.bit_generator.state
        cons = config.consolidation
        states = trainer.replays[key].sample(cons.fisher_batches * cons.fisher_batch_size, rng).obs
        own = mean_normalised(estimate_fisher(trainer.network, states, "expected",
                                              batch_size=cons.fisher_batch_size))
        real_leave(key, record)
        consolidations.append({"key": key, "own": own, "stored": {
            name: value.clone() for name, value in trainer.consolidator.anchors[key]["importance"].items()}})

    trainer.update, trainer.switch.leave = update, leave
    assert trainer.train() == 0
    events = EventAccumulator(str(trainer.run_dir / "tb"), size_guidance={"scalars": 0})
    events.Reload()
    scalars = {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}
    return {"trainer": trainer, "updates": updates, "consolidations": consolidations, "scalars": scalars}


# ------------------------------------------------------------------ the update


class PenaltyOnly(DQNLearner):
    """A learner whose TD loss is zero (with a gradient, of zeros): its update is the penalty's alone."""

    def td_loss(self, batch):
        q = self.online(batch.obs)
        return 0.0 * q.sum(), q.detach().mean()


def test_eager_update_steps_the_optimiser_on_the_penalty():
    """With the TD loss zero, one update is Adam's first step on the penalty's gradient alone,
    theta - lr g / (|g| + eps) with g = lambda F (theta - theta*): every weight moves toward the anchor.
    An update that applied the TD loss alone would not move at all."""
    from agent.graphed import eager_update

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 4))
    states = torch.randn(40, 6, generator=torch.Generator().manual_seed(2))
    consolidator = Consolidator("ewc", lambda_=50.0, normalize="mean")
    consolidator.consolidate("A", model, states)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(1)) * 0.3)
    lr, eps = 1e-3, 1e-8
    learner = PenaltyOnly(model, lr, eps, 0.99, True, 1.0, max_grad_norm=1e9, clip_rewards=True)
    anchor, fisher = consolidator.anchors["A"]["params"], consolidator.anchors["A"]["importance"]
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    batch = Batch(states[:8], torch.zeros(8, dtype=torch.int64), torch.zeros(8), torch.zeros(8), states[8:16])
    expected_penalty = naive_penalty(consolidator.anchors, model, "B", 50.0)
    _, _, penalty, _ = eager_update(learner, consolidator, batch, "B")
    assert penalty.item() == pytest.approx(expected_penalty, rel=1e-5) and expected_penalty > 0
    for name, p in model.named_parameters():
        g = 50.0 * fisher[name] * (before[name] - anchor[name])
        expected = before[name] - lr * g / (g.abs() + eps)
        torch.testing.assert_close(p.detach(), expected, rtol=1e-5, atol=1e-7, msg=name)
        pulled = g.abs() > 10 * eps
        assert pulled.any()
        assert ((p - anchor[name]).abs()[pulled] < (before[name] - anchor[name]).abs()[pulled]).all(), name


# ------------------------------------------------------------------ the trainer, on the shared run


def test_the_target_network_is_synced_every_target_update_every_steps(recorded):
    """Every update's target network is the online network as it was at the last multiple of
    target_update_every (the initial network before the first), and the run ends with one sync per
    multiple: global_step // target_update_every of them. A loop that never syncs keeps the initial target."""
    updates, trainer = recorded["updates"], recorded["trainer"]
    steps = [u["step"] for u in updates]
    for u in updates:
        last_sync = (u["step"] - 1) // TARGET_EVERY * TARGET_EVERY  # a sync comes after the updates of its step
        first_after = next(v for v in updates if v["step"] > last_sync) if last_sync else updates[0]
        assert u["target"] == first_after["online"], (u["step"], last_sync)
    targets = [u["target"] for u in updates] + [fingerprint(trainer.learner.target)]
    syncs = sum(a != b for a, b in zip(targets, targets[1:]))
    global_step = trainer.progress.global_step
    assert global_step == 4 * VISIT and global_step % TARGET_EVERY == 0 and steps[-1] == global_step
    assert syncs == global_step // TARGET_EVERY
    assert fingerprint(trainer.learner.target) == fingerprint(trainer.learner.online)  # synced at the last step


def test_epsilon_restarts_at_every_visit(recorded):
    """epsilon.restart=visit: the first log of each visit shows the schedule's value LOG_EVERY steps in
    (epsilon is taken before the vector step that crosses the log), not its value on the global or game timer."""
    logged = dict(recorded["scalars"]["charts/epsilon"])
    expected = linear_epsilon(LOG_EVERY - ENVS, 1.0, 0.01, DECAY)
    for visit in range(4):
        step = visit * VISIT + LOG_EVERY
        assert logged[step] == pytest.approx(expected, rel=1e-6), visit
    assert linear_epsilon(VISIT + LOG_EVERY - ENVS, 1.0, 0.01, DECAY) != pytest.approx(expected, rel=1e-6)


def test_the_current_games_own_anchor_is_inactive_while_it_trains(recorded):
    """Every update's penalty is the naive sum over the anchors of the other games only. On the revisits both
    games have anchors, and the current game's own would add its term: the weights left it a visit ago."""
    updates = recorded["updates"]
    for u in updates:
        assert u["penalty"] == pytest.approx(u["expected_penalty"], rel=1e-4, abs=1e-9), (u["step"], u["task"])
    revisits = [u for u in updates if u["all_anchors"] is not None]
    assert {u["visit"] for u in revisits} == {2, 3}
    # The check can fail: with the current game's anchor active every revisit update would be off by far more.
    assert all(u["all_anchors"] - u["expected_penalty"] > 1e3 * max(1e-9, 1e-4 * u["expected_penalty"])
               for u in revisits)
    first = revisits[0]  # it starts at the other game's anchor, just set: only the wrong anchor would weigh
    assert first["penalty"] == pytest.approx(0.0, abs=1e-9)


def test_each_anchor_is_the_fisher_of_its_own_games_replay(recorded):
    """At each switch the stored importance equals the mean-normalised Fisher estimated on states drawn from
    the replay of the game being left (with the trainer's RNG as it stood), for every switch of the run."""
    consolidations = recorded["consolidations"]
    assert [c["key"] for c in consolidations] == ["Breakout", "Pong", "Breakout", "Pong"]
    for c in consolidations:
        for name, own in c["own"].items():
            torch.testing.assert_close(c["stored"][name].double(), own, rtol=1e-4, atol=1e-6, msg=c["key"])
    # The games' Fishers differ: a Fisher of the wrong game's states would not pass.
    breakout, pong = consolidations[0]["own"], consolidations[1]["own"]
    assert any(not torch.allclose(breakout[name], pong[name], rtol=1e-2) for name in breakout)


def test_labels_mode_evaluation_plays_each_game_with_its_own_task_slot(recorded):
    """network.task_params with labels: every evaluation (start and end of each visit) plays Breakout with
    task slot 0 and Pong with slot 1, its place in schedule.games."""
    scalars = recorded["scalars"]
    for index, game in enumerate(["Breakout", "Pong"]):
        assert f"eval/{game}/task" in scalars, f"no task logged: {game} was not evaluated with task_of"
        slots = scalars[f"eval/{game}/task"]
        assert [step for step, _ in slots] == [visit * VISIT for visit in range(5)]
        assert {value for _, value in slots} == {float(index)}, game


def test_evaluation_forwards_through_the_slot_task_of_names():
    """What plays is the slot: every forward pass of Pong's evaluation runs with Pong's gains and biases (slot 1
    of [Breakout, Pong]), Breakout's with slot 0, whatever task the network was left on."""
    from agent.evaluation import evaluate_games
    from agent.tasks import Tasks

    config = load_config(SMOKE, ["network.task_params=true", "schedule.games=[Breakout, Pong]"])
    tasks = Tasks(config)
    network = QNetwork(18, num_tasks=tasks.num_tasks)
    seen = []
    network.register_forward_pre_hook(lambda module, args: seen.append(module.task))
    settings = AtariSettings(max_episode_frames=40)
    for game, slot in (("Pong", 1), ("Breakout", 0)):
        network.set_task(1 - slot)
        seen.clear()
        evaluate_games(network, [game], 1, 0.0, seed=0, settings=settings, num_envs=1, task_of=tasks.task_of)
        assert seen and set(seen) == {slot}, game


# ------------------------------------------------------------------ the actor


def plain_replay(config) -> tuple[dict, int]:
    """A visit written the obvious way with `env.step` and random actions (epsilon 1): the arrays of its replay,
    and how many autoreset steps it left out."""
    rng = np.random.default_rng(config.seed)
    n = config.env.num_envs
    env = make_vector_env(config.schedule.games[0], n, config.env.atari_settings())
    replay = FrameReplay(config.replay.capacity_per_game, n)
    obs, pseudo = env.reset(seed=derive_seed(config.seed, 0, 0)), 0
    for _ in range(0, config.schedule.steps_per_visit, n):
        rng.random(n)  # epsilon_greedy's exploration draw, as in the actor
        actions = rng.integers(18, size=n)
        result = env.step(actions)
        replay.add(obs, actions, result.reward, result.terminated, result.terminated | result.truncated,
                   result.obs, mask=~result.was_reset)
        pseudo += int(result.was_reset.sum())
        obs = result.obs
    env.close()
    return {key: value.numpy() for key, value in replay.state_dict().items()}, pseudo


def test_the_actor_never_stores_the_autoreset_step(tmp_path):
    """Episodes capped at 20 agent steps end twice per env in the visit; what the trainer's actor stores
    is exactly what a plain env.step loop stores leaving out the reset steps (storing them adds transitions)."""
    config = load_config(SMOKE, ["schedule.games=[Breakout]", "schedule.steps_per_visit=240", "env.num_envs=4",
                                 "env.max_episode_frames=80", "epsilon.start=1.0", "epsilon.end=1.0",
                                 "dqn.learning_starts=240", "replay.capacity_per_game=512",
                                 "consolidation.method=none", "consolidation.probe_states=0", "eval.episodes=0",
                                 "logging.progress_bar=false", "torch_threads=1"])
    trainer = Trainer(config, tmp_path / "run")
    assert trainer.train() == 0
    assert trainer.progress.updates == 0
    expected, pseudo = plain_replay(config)
    assert pseudo >= 4  # episodes ended: there were reset steps to leave out
    ours = {key: value.numpy() for key, value in trainer.replays["Breakout"].state_dict().items()}
    assert ours.keys() == expected.keys()
    for key in ours:
        np.testing.assert_array_equal(ours[key], expected[key], err_msg=key)


# ------------------------------------------------------------------ consolidation, probe, evaluation maths


def test_mean_normalisation_divides_the_fisher_by_the_mean_of_all_its_entries():
    """consolidation.normalize=mean (the default): F / mean over every entry of every tensor (one scale, so
    the ratios between layers are kept); the stored importance then averages exactly 1."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 4))
    states = torch.randn(40, 6, generator=torch.Generator().manual_seed(2))
    raw = estimate_fisher(model, states, "expected", batch_size=32)
    consolidator = Consolidator("ewc", normalize="mean")
    consolidator.consolidate("A", model, states)
    stored = consolidator.anchors["A"]["importance"]
    expected = mean_normalised(raw)
    for name in raw:
        torch.testing.assert_close(stored[name].double(), expected[name], rtol=1e-5, atol=0.0)
    flat = torch.cat([value.flatten().double() for value in stored.values()])
    assert flat.mean().item() == pytest.approx(1.0, rel=1e-6)
    # One scale for all: per-tensor means differ, so normalising each tensor by its own would not pass.
    means = [value.mean().item() for value in raw.values()]
    assert max(means) > 2 * min(means)


def test_q_drift_is_the_mean_absolute_change_not_the_absolute_mean_change():
    """Q-values moved by +1, -1, +2, -2 per action: a mean |change| of 1.5 where the mean change is 0."""
    torch.manual_seed(0)
    model = nn.Linear(3, 4)
    states = torch.randn(10, 3, generator=torch.Generator().manual_seed(1))
    probe = RetentionProbe()
    probe.snapshot("A", model, states)
    with torch.no_grad():
        before = model(states)
        model.bias.add_(torch.tensor([1.0, -1.0, 2.0, -2.0]))
        after = model(states)
    result = probe.measure(model, current_game="B")["A"]
    assert result["q_drift"] == pytest.approx(1.5, rel=1e-5)
    assert result["q_drift"] == pytest.approx((after - before).abs().mean().item(), rel=1e-6)
    assert result["agreement"] == pytest.approx((after.argmax(1) == before.argmax(1)).float().mean().item())


def test_each_env_plays_its_quota_of_episodes_and_no_more():
    """3 episodes on 2 envs: env 0 plays 2, env 1 plays 1. Pong's episodes here all last exactly the frame cap
    (no game of Pong ends in 100 frames, and no-op starts are off), so env 1 finishes a second episode at the
    very step env 0 finishes its second, whatever the seed: without the quota it would be counted (4 returns)."""
    network = QNetwork(18)
    settings = AtariSettings(noop_max=0, max_episode_frames=100)
    for seed in (0, 1):
        played = play_episodes(network, "Pong", 3, epsilon=1.0, seed=seed, settings=settings, num_envs=2)
        assert len(played["returns"]) == 3, seed
        assert len(set(played["lengths"])) == 1, played["lengths"]


def test_aggregate_intervals_are_95_percent_percentile_bootstrap_intervals():
    """interval_estimate's mean CI against a slow percentile bootstrap with 200,000 resamples: each bound is
    within a quarter of the distance between the 95% and the 90% bounds (rliable's 5,000 resamples put it
    within about a tenth), so a 90% interval fails."""
    from agent.aggregates import interval_estimate

    scores = np.random.default_rng(0).normal(size=(12, 1))
    estimate = interval_estimate(scores, reps=5000, seed=3)
    rng = np.random.default_rng(1)
    means = scores[rng.integers(0, 12, size=(200_000, 12)), 0].mean(axis=1)
    ci95, ci90 = np.percentile(means, [2.5, 97.5]), np.percentile(means, [5, 95])
    gap = np.abs(ci95 - ci90)
    assert (gap > 0.04).all()
    assert (np.abs(np.array(estimate["mean_ci"]) - ci95) < 0.25 * gap).all(), (estimate["mean_ci"], ci95, ci90)


def test_fmn_new_context_score_is_the_held_out_dirichlet_by_hand():
    """Window of one 3x3 frame, 4 gray levels: context 0 has seen one black frame; a white frame scores
    9 log(0.5 / (1 + 4 * 0.5)) under it and 9 log(0.5 / (4 * 0.5)) = 9 log(1/4) under the held-out Dirichlet
    with no counts (for one frame its Polya predictive is uniform; over a window it is not). With the switch prior
    s = 0.1 the joint scores are log(0.9) + 9 log(1/6) and log(0.1) + 9 log(1/4): the new context wins, and the
    posterior is their normalisation."""
    fmn = ForgetMeNot(levels=4, window=1, size=3, alpha=0.5, switch_prior=0.1)
    black, white = np.zeros((3, 3), np.uint8), np.full((3, 3), 255, np.uint8)
    assert fmn.observe(black) == 0
    assert fmn.observe(white) == 1
    existing = math.log(0.9) + 9 * math.log(1 / 6)
    new = math.log(0.1) + 9 * math.log(1 / 4)
    total = np.logaddexp(existing, new)
    np.testing.assert_allclose(fmn.log_posterior, [existing - total, new - total], rtol=0, atol=1e-9)
