"""q and k are rotated together, once per layer (specdec.model.rope_qk): bit for bit what
rotating each alone gives, in bf16 and float32, one token or many."""
import pytest
import torch

from specdec import model as model_module
from specdec.model import rope_qk, rotate_half


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("tokens", [1, 5])
def test_together_equals_each_alone(dtype, tokens):
    g = torch.Generator().manual_seed(tokens)
    q, k = torch.randn(9, tokens, 64, generator=g).to(dtype), torch.randn(3, tokens, 64, generator=g).to(dtype)
    cos, sin = torch.randn(tokens, 64, generator=g).to(dtype), torch.randn(tokens, 64, generator=g).to(dtype)
    rq, rk = rope_qk(q, k, cos, sin)
    assert torch.equal(rq, q * cos + rotate_half(q) * sin)
    assert torch.equal(rk, k * cos + rotate_half(k) * sin)


def test_one_rotation_per_layer(monkeypatch, tmp_path):
    import specdec
    from helpers.models import make_tiny_model
    make_tiny_model(tmp_path / "m", "llama")
    model = specdec.load(tmp_path / "m").target.model
    calls = []
    monkeypatch.setattr(model_module, "rotate_half", lambda x: calls.append(x.shape) or rotate_half(x))
    cache = model.new_cache(8)
    model.forward(torch.tensor([3]), cache.next_positions(1), cache)
    assert len(calls) == model.args.num_layers
