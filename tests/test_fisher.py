"""Each batched Fisher estimator equals a slow per-sample loop over full parameter gradients."""

import pytest
import torch
from torch import nn

from agent.fisher import estimate_fisher


def small_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(2, 3, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(3, 4, 2), nn.ReLU(),
                         nn.Flatten(), nn.Linear(4 * 4 * 4, 6), nn.Tanh(), nn.Linear(6, 5)).double()


def states(n=13):
    return torch.randn(n, 2, 10, 10, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


def per_sample_reference(net, x, sample_grads):
    """Mean over samples of the sum of squared full gradients that `sample_grads(q, i)` yields."""
    fisher = {name: torch.zeros_like(p) for name, p in net.named_parameters()}
    for i in range(len(x)):
        q = net(x[i:i + 1])[0]
        for scalar in sample_grads(q, i):
            grads = torch.autograd.grad(scalar, list(net.parameters()), retain_graph=True)
            for (name, _), g in zip(net.named_parameters(), grads):
                fisher[name] += g.square()
    return {name: value / len(x) for name, value in fisher.items()}


def assert_close(batched, reference):
    for name in reference:
        scale = reference[name].abs().max()
        assert scale > 0
        assert ((batched[name] - reference[name]).abs().max() / scale) < 1e-6, name


def test_expected_fisher_matches_loop():
    net, x = small_net(), states()

    def grads(q, i):
        log_probs = torch.log_softmax(q, 0)
        return [log_probs[a] * log_probs[a].exp().detach().sqrt() for a in range(len(q))]

    assert_close(estimate_fisher(net, x, "expected", batch_size=4), per_sample_reference(net, x, grads))


def test_sampled_fisher_matches_loop_with_the_same_actions():
    net, x = small_net(), states()
    batched = estimate_fisher(net, x, "sampled", batch_size=5, generator=torch.Generator().manual_seed(7))
    generator = torch.Generator().manual_seed(7)  # the same draws, minibatch by minibatch
    actions = []
    for start in range(0, len(x), 5):
        with torch.no_grad():
            probs = torch.softmax(net(x[start:start + 5]), 1)
        actions += torch.multinomial(probs, 1, generator=generator).squeeze(1).tolist()
    reference = per_sample_reference(net, x, lambda q, i: [torch.log_softmax(q, 0)[actions[i]]])
    assert_close(batched, reference)


def test_empirical_fisher_matches_loop():
    net, x = small_net(), states()
    actions = torch.randint(0, 5, (len(x),), generator=torch.Generator().manual_seed(3))
    targets = torch.randn(len(x), generator=torch.Generator().manual_seed(4), dtype=torch.float64) * 3

    def loss(q, rows):
        chosen = q.gather(1, actions[rows].unsqueeze(1)).squeeze(1)
        return nn.functional.huber_loss(chosen, targets[rows], reduction="none")

    batched = estimate_fisher(net, x, "empirical", per_sample_loss=loss, batch_size=4)
    reference = per_sample_reference(net, x, lambda q, i: [loss(q[None], slice(i, i + 1))[0]])
    assert_close(batched, reference)


def test_not_the_square_of_the_mean_gradient():
    """Per-sample squares, not the square of a minibatch gradient. One common bug squares the gradient of the
    minibatch's mean loss (far smaller than the Fisher); another squares the gradient of its summed loss and
    divides by N (as large on average, since the sampled score has mean zero, but wrong entry by entry). On one
    minibatch of 32 the estimate equals the per-sample loop entry by entry, and each bug is far from it."""
    net, x = small_net(), states(32)
    fisher = estimate_fisher(net, x, "sampled", batch_size=32, generator=torch.Generator().manual_seed(0))
    generator = torch.Generator().manual_seed(0)
    q = net(x)
    actions = torch.multinomial(torch.softmax(q.detach(), 1), 1, generator=generator).squeeze(1)
    reference = per_sample_reference(net, x, lambda q, i: [torch.log_softmax(q, 0)[actions[i]]])
    assert_close(fisher, reference)
    chosen = torch.log_softmax(q, 1).gather(1, actions[:, None]).sum()
    summed = dict(zip(reference, torch.autograd.grad(chosen, list(net.parameters()))))
    size = sum(r.abs().sum() for r in reference.values())
    for bug, square in (("mean", lambda g: (g / len(x)).square()), ("summed", lambda g: g.square() / len(x))):
        off = sum((square(summed[name]) - reference[name]).abs().sum() for name in reference)
        assert off > 0.3 * size, bug  # the entry-by-entry check above tells either bug apart


def test_unsupported_layers_and_bad_input_are_errors():
    with pytest.raises(TypeError, match="BatchNorm"):
        estimate_fisher(nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3)), torch.randn(4, 3))
    with pytest.raises(ValueError, match="Unknown Fisher estimator"):
        estimate_fisher(nn.Linear(3, 2), torch.randn(4, 3), "exact")
    with pytest.raises(ValueError, match="per_sample_loss"):
        estimate_fisher(nn.Linear(3, 2), torch.randn(4, 3), "empirical")
