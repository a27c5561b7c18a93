"""TD targets against a hand computation; the learner's update; epsilon schedule."""

import numpy as np
import pytest
import torch

from agent.dqn import (
    DQNLearner,
    choose_precision,
    epsilon_greedy,
    linear_epsilon,
    per_sample_td_loss,
    td_targets,
)
from agent.networks import QNetwork
from agent.replay import Batch


def test_double_dqn_target_by_hand():
    rewards = torch.tensor([1.0, 0.5, -1.0])
    dones = torch.tensor([0.0, 1.0, 0.0])
    online = torch.tensor([[1.0, 3.0], [0.0, 1.0], [5.0, 2.0]])
    target = torch.tensor([[10.0, 20.0], [7.0, 8.0], [4.0, 9.0]])
    # Double DQN: online picks (1, 1, 0); target evaluates (20, 8, 4); done row 1 ignores it.
    expected = torch.tensor([1.0 + 0.9 * 20.0, 0.5, -1.0 + 0.9 * 4.0])
    assert torch.allclose(td_targets(rewards, dones, online, target, 0.9, double_dqn=True), expected)
    # Plain DQN: max of the target network (20, 8, 9).
    expected_plain = torch.tensor([1.0 + 0.9 * 20.0, 0.5, -1.0 + 0.9 * 9.0])
    assert torch.allclose(td_targets(rewards, dones, online, target, 0.9, double_dqn=False), expected_plain)


def test_huber_per_sample():
    q = torch.tensor([[0.0, 2.0], [1.0, 0.0]])
    losses = per_sample_td_loss(q, torch.tensor([1, 0]), torch.tensor([2.5, 4.0]), huber_delta=1.0)
    assert torch.allclose(losses, torch.tensor([0.5 * 0.5 ** 2, 3.0 - 0.5]))


def _batch(n=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    frames = lambda: torch.randint(0, 256, (n, 4, 84, 84), dtype=torch.uint8, generator=g)  # noqa: E731
    return Batch(frames(), torch.randint(0, 18, (n,), generator=g), torch.randn(n, generator=g) * 3,
                 (torch.rand(n, generator=g) < 0.3).float(), frames())


def test_learner_targets_clip_rewards_and_use_target_network():
    """TD targets by hand from the two networks' Q-values, with the target network's head moved away from the
    online one first (they are equal at construction, where either network would pass): Double DQN takes the
    online network's argmax and the target network's value there, plain DQN the target network's max."""
    batch = _batch()
    for double in (True, False):
        torch.manual_seed(0)
        learner = DQNLearner(QNetwork(18), 1e-4, 1.5e-4, 0.99, double, 1.0, 10.0, clip_rewards=True)
        with torch.no_grad():
            head = learner.target.net[-1]
            head.weight.copy_(torch.randn(head.weight.shape, generator=torch.Generator().manual_seed(5)) * 0.5)
            q_online, q_target = learner.online(batch.next_obs), learner.target(batch.next_obs)
        assert (q_online.argmax(1) != q_target.argmax(1)).any()  # Double DQN's choice matters here
        expected, online_only = [], []
        for i in range(len(batch.rewards)):
            action = int(q_online[i].argmax()) if double else int(q_target[i].argmax())
            reward = max(-1.0, min(1.0, float(batch.rewards[i])))
            live = 0.0 if batch.dones[i] else 0.99
            expected.append(reward + live * float(q_target[i, action]))
            online_only.append(reward + live * float(q_online[i].max()))
        assert torch.allclose(learner.targets(batch), torch.tensor(expected), rtol=1e-5, atol=1e-6), double
        assert not torch.allclose(torch.tensor(online_only), torch.tensor(expected), rtol=1e-3)  # it can fail


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_updates_reduce_the_loss_and_leave_the_target_until_sync(precision):
    torch.manual_seed(0)
    learner = DQNLearner(QNetwork(18), 1e-3, 1.5e-4, 0.99, True, 1.0, 10.0, clip_rewards=True, precision=precision)
    batch = _batch()
    before = [p.clone() for p in learner.target.parameters()]
    first, _ = learner.td_loss(batch)
    for _ in range(30):
        loss, _ = learner.td_loss(batch)
        learner.apply(loss)
    last, _ = learner.td_loss(batch)
    assert last < first
    assert all(torch.equal(a, b) for a, b in zip(before, learner.target.parameters()))
    learner.sync_target()
    assert all(torch.equal(a, b) for a, b in zip(learner.online.parameters(), learner.target.parameters()))


def test_epsilon_schedule_and_greedy_actions():
    assert linear_epsilon(0, 1.0, 0.1, 100) == 1.0
    assert linear_epsilon(50, 1.0, 0.1, 100) == pytest.approx(0.55)
    assert linear_epsilon(1000, 1.0, 0.1, 100) == pytest.approx(0.1)
    net = QNetwork(18)
    obs = np.random.default_rng(0).integers(0, 256, (5, 4, 84, 84), dtype=np.uint8)
    greedy = net(torch.from_numpy(obs)).argmax(1).numpy()
    actions = epsilon_greedy(net, obs, 0.0, np.random.default_rng(1), torch.device("cpu"), 18)
    assert (actions == greedy).all()


def _real_replay(games: list[str], vector_steps: int, rng: np.random.Generator):
    """Random play of each game, 8 envs, in one buffer: states that differ as a multi-game agent's do."""
    from agent.replay import FrameReplay
    from envs import make_vector_env

    replay = FrameReplay(len(games) * vector_steps * 8 + 64, 8)
    for game in games:
        env = make_vector_env(game, 8, num_threads=1)
        obs = env.reset(seed=0)
        replay.close_episodes()
        for _ in range(vector_steps):
            actions = rng.integers(18, size=8)
            step = env.step(actions)
            replay.add(obs, actions, step.reward, step.terminated, step.terminated | step.truncated, step.obs,
                       mask=~step.was_reset)
            obs = step.obs
        env.close()
    return replay


@pytest.mark.skipif(choose_precision("auto", "cpu")[0] != "bf16",
                    reason="this CPU emulates bfloat16, so precision auto never uses it (it is 0.09x fp32 on an "
                           "AVX2-only CPU, and its greedy actions agreed with fp32 on only 91-97% of these states)")
def test_bf16_picks_the_fp32_greedy_action_on_real_states_of_a_trained_network():
    """Under bf16 autocast the torso runs in bfloat16 but the Q head stays float32, so the greedy action
    (acting, Double-DQN target, evaluation) agrees with float32. With the head in bfloat16 too, Q-values
    near 10 (a state value of 10, as a trained agent's) are quantised to steps of 0.0625 and tie."""
    rng = np.random.default_rng(0)
    replay = _real_replay(["Breakout", "Pong", "SpaceInvaders"], 150, rng)
    torch.manual_seed(0)
    learner = DQNLearner(QNetwork(18), 1e-3, 1.5e-4, 0.99, True, 1.0, 10.0, clip_rewards=False, precision="bf16")
    for update in range(150):  # trained with bf16 autocast, as the bf16 runs train
        loss, _ = learner.td_loss(replay.sample(32, rng))
        learner.apply(loss)
        if update % 50 == 49:
            learner.sync_target()
    net = learner.online
    states = torch.from_numpy(replay.sample_states(1000, rng))

    def agreement(net):
        with torch.no_grad():
            fp32 = net(states)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                bf16 = net(states)
                head_bf16 = net.net(states.float() / 255.0)  # the whole network in bfloat16
        assert bf16.dtype == torch.float32
        same = lambda q: (q.float().argmax(1) == fp32.argmax(1)).float().mean().item()  # noqa: E731
        return same(bf16), same(head_bf16)

    with torch.no_grad():
        greedy = net(states).argmax(1)
    assert len(greedy.unique()) >= 3  # the greedy action depends on the state: agreement is not trivial
    assert agreement(net)[0] >= 0.99
    with torch.no_grad():
        net.net[-1].bias += 10.0 - net(states).mean()  # the same advantages on a state value near 10
    ours, whole_bf16 = agreement(net)
    assert ours >= 0.99
    assert whole_bf16 < 0.5  # what the head in bfloat16 did: the check can fail

    # The Double-DQN target's argmax and the actor's too: same actions as float32 on these states.
    bf16_learner, fp32_learner = (DQNLearner(net, 1e-3, 1.5e-4, 0.99, True, 1.0, 10.0, False, precision)
                                  for precision in ("bf16", "fp32"))
    batch = replay.sample(256, rng)
    assert torch.allclose(bf16_learner.targets(batch), fp32_learner.targets(batch), atol=0.05)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        acted = epsilon_greedy(net, batch.next_obs.numpy(), 0.0, rng, torch.device("cpu"), 18)
    fp32_acted = epsilon_greedy(net, batch.next_obs.numpy(), 0.0, rng, torch.device("cpu"), 18)
    assert (acted == fp32_acted).mean() >= 0.99


def test_precision_auto_takes_bf16_only_where_the_hardware_computes_it():
    """The decision on two kinds of CPU description (the flags of /proc/cpuinfo) and on a GPU."""
    avx512_no_bf16 = {"fpu", "sse4_2", "avx2", "avx512f", "avx512bw", "avx512vl", "avx512_vnni"}
    sapphire_rapids = avx512_no_bf16 | {"avx512_bf16", "amx_bf16", "amx_tile", "amx_int8"}
    cooper_lake = avx512_no_bf16 | {"avx512_bf16"}
    assert choose_precision("auto", "cpu", avx512_no_bf16)[0] == "fp32"
    assert choose_precision("auto", "cpu", sapphire_rapids)[0] == "bf16"
    assert choose_precision("auto", "cpu", cooper_lake)[0] == "bf16"
    assert choose_precision("auto", "cpu", set())[0] == "fp32"  # flags unreadable: the safe choice
    assert choose_precision("auto", "cuda", sapphire_rapids)[0] == "fp32"
    for explicit in ("fp32", "bf16"):  # an explicit setting is never second-guessed
        assert choose_precision(explicit, "cpu", avx512_no_bf16)[0] == explicit
        assert choose_precision(explicit, "cpu", sapphire_rapids)[0] == explicit
    with pytest.raises(ValueError, match="'auto', 'fp32' or 'bf16'"):
        choose_precision("fp16", "cpu", set())
    assert "no native bfloat16" in choose_precision("auto", "cpu", avx512_no_bf16)[1]
