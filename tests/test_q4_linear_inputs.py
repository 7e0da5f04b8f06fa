"""Q4Weight.linear hands a bf16 [T, K] input and bf16 scales to the int4 kernel as they are
(no conversion call per matmul: ~200 per pass of the demo target), converts what is not so,
and computes the same either way."""
import pytest
import torch

from offload.encodings import q4 as q4_module
from offload.encodings.q4 import Q4Weight


def _weight(scale_dtype=torch.bfloat16) -> Q4Weight:
    g = torch.Generator().manual_seed(0)
    return Q4Weight.quantize(torch.randn(48, 64, generator=g), scale_dtype=scale_dtype)


@pytest.fixture
def calls(monkeypatch):
    seen = []
    kernel = q4_module.INT4_MM

    def recording(x, packed, group, scales_zeros):
        seen.append((x, scales_zeros))
        return kernel(x, packed, group, scales_zeros)

    monkeypatch.setattr(q4_module, "INT4_MM", recording)
    return seen


def test_a_bf16_input_and_bf16_scales_reach_the_kernel_as_they_are(calls):
    w = _weight()
    x = torch.randn(3, 64).to(torch.bfloat16)
    w.linear(x)
    assert calls[0][0] is x and calls[0][1] is w.scales_zeros


@pytest.mark.parametrize("shape", [(3, 64), (2, 3, 64)])
@pytest.mark.parametrize("scale_dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("layout", ["contiguous", "strided"])
def test_other_inputs_are_converted_and_give_the_same_result(calls, shape, scale_dtype, layout):
    w = _weight(scale_dtype)
    x = torch.randn(*shape).to(torch.bfloat16)
    if layout == "strided":
        x = torch.randn(*shape[:-1], 128).to(torch.bfloat16)[..., ::2]
    out = w.linear(x)
    assert out.shape == (*shape[:-1], 48) and out.dtype == torch.bfloat16
    sent, scales = calls[-1]
    assert sent.is_contiguous() and sent.dtype == torch.bfloat16 and scales.dtype == torch.bfloat16
    reference = torch.ops.aten._weight_int4pack_mm_for_cpu(
        x.reshape(-1, 64).contiguous(), w.packed, w.group, w.scales_zeros.to(torch.bfloat16))
    assert torch.equal(out.reshape(-1, 48), reference)
    fp16 = w.linear(x.to(torch.float16))  # another dtype: computed in bf16, returned in its own
    assert fp16.dtype == torch.float16 and torch.equal(fp16.reshape(-1, 48), reference.to(torch.float16))
