import pytest
import torch

from specdec.sampling import SamplingParams, probs_from_logits, sample
from specdec.verify import accept_greedy, accept_sampled, residual


def test_greedy_is_one_hot_argmax():
    p = probs_from_logits(torch.tensor([0.1, 3.0, -1.0]), SamplingParams())
    assert p.tolist() == [0.0, 1.0, 0.0]


def test_top_k_and_top_p_keep_the_right_tokens():
    logits = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05]))
    topk = probs_from_logits(logits, SamplingParams(1.0, top_k=2))
    assert torch.allclose(topk, torch.tensor([0.625, 0.375, 0, 0]))
    topp = probs_from_logits(logits, SamplingParams(1.0, top_p=0.8))  # 0.5 + 0.3 reaches 0.8
    assert torch.allclose(topp, torch.tensor([0.625, 0.375, 0, 0]))
    topp2 = probs_from_logits(logits, SamplingParams(1.0, top_p=0.81))
    assert (topp2 > 0).tolist() == [True, True, True, False]


def test_temperature_sharpens():
    logits = torch.tensor([1.0, 0.0])
    hot, cold = (probs_from_logits(logits, SamplingParams(t)) for t in (2.0, 0.5))
    assert cold[0] > hot[0] > 0.5


@pytest.mark.parametrize("bad", [dict(temperature=-1), dict(top_k=-2), dict(top_p=0), dict(top_p=1.5)])
def test_bad_params_are_clear_errors(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        SamplingParams(**bad)


def test_sample_is_reproducible_with_a_seed():
    p = torch.softmax(torch.randn(50, generator=torch.Generator().manual_seed(0)), -1)
    a = [int(sample(p, torch.Generator().manual_seed(7))) for _ in range(3)]
    b = [int(sample(p, torch.Generator().manual_seed(7))) for _ in range(3)]
    assert a == b


def test_accept_greedy_counts_leading_matches():
    logits = torch.zeros(4, 10)
    for i, t in enumerate([3, 4, 5, 6]):
        logits[i, t] = 1
    assert accept_greedy(torch.tensor([3, 4, 9]), logits) == (2, 5)
    assert accept_greedy(torch.tensor([3, 4, 5]), logits) == (3, 6)
    assert accept_greedy(torch.tensor([], dtype=torch.long), logits[:1]) == (0, 3)


def test_residual_is_normalised_positive_part():
    r = residual(torch.tensor([0.5, 0.3, 0.2]), torch.tensor([0.2, 0.6, 0.2]))
    assert torch.allclose(r, torch.tensor([1.0, 0.0, 0.0]))


@pytest.mark.slow
def test_single_step_speculative_sampling_is_exact():
    # One draft token: P(first emitted = y) must equal p(y) exactly. Computed in closed
    # form from accept_sampled's rule by enumerating the draft token x ~ q.
    p = torch.tensor([[0.1, 0.6, 0.3], [0.2, 0.2, 0.6]])
    q = torch.tensor([[0.5, 0.25, 0.25]])
    gen = torch.Generator().manual_seed(0)
    counts = torch.zeros(3)
    n = 20000
    for _ in range(n):
        x = sample(q[0], gen).reshape(1)
        accepted, nxt = accept_sampled(x, q, p, gen)
        counts[int(x[0]) if accepted else nxt] += 1
    assert torch.allclose(counts / n, p[0], atol=0.015)
