"""Quantized weight encodings (offload/encodings): GGUF blocks kept exactly, conversions with a
bounded error, the int4 kernel's CPU layout checked, zero-copy reads.

The reference is gguf-py's own dequantization (`gguf.quants.dequantize`). Blocks come from
gguf-py's quantizer where it has one (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0) and are random bytes with
sane float16 scales otherwise (K-quants, IQ*, TQ*, MXFP4: gguf-py can only dequantize those).

Tolerances (documented in the modules):
  float32 scales: dequantize() == gguf-py bit for bit (Q5_K: within 2 float32 ulp of the
                  group's largest weight, q8's plane zeros are rounded once)
  bf16 scales:    |error| <= 0.05 of the type's step + 2^-8 of the group's largest weight
                  (bf16 rounding of scales and zeros; the same size as storing bf16 weights)
  linear(x) bf16: |y - x @ W.T| <= 2% of max |x @ W.T| (bf16 activations and output)
  linear(x) fp32: == F.linear(x, dequantize()) exactly
"""
from __future__ import annotations

import collections
import inspect
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

gguf = pytest.importorskip("gguf")
from gguf import GGMLQuantizationType as GT  # noqa: E402
from gguf.quants import dequantize as gguf_dequantize  # noqa: E402
from gguf.quants import quantize as gguf_quantize  # noqa: E402

from offload import encodings  # noqa: E402
from offload.encodings import gguf_types, int4_layout  # noqa: E402
from offload.encodings.q4 import Q4Weight, UnsupportedShape, choose_group  # noqa: E402
from offload.encodings.q8 import Q8Weight  # noqa: E402

from helpers.gguf_blocks import CONVERSION_ERROR_BOUNDS, gguf_blocks_for  # noqa: E402

# gguf_blocks_for's default shape: N % 16 == 0 and 48 = a partial block under every layout
N, K = 48, 512


def reference(raw: np.ndarray, qtype: str) -> torch.Tensor:
    values = gguf_dequantize(raw, GT[qtype])
    assert np.isfinite(values).all()
    return torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32))


def step_of(weight, qtype: str) -> torch.Tensor:
    """Per-weight quantization step (the scale of its group) of an exactly kept weight."""
    plane = weight.lo if isinstance(weight, Q8Weight) else weight
    return plane.scales_zeros[..., 0].float().abs().t().repeat_interleave(plane.group, dim=1)


# -- the int4 kernel's layout ------------------------------------------------------------------

@pytest.mark.parametrize("n_rows", [16, 48, 64, 80, 112, 192])
def test_layout_model_matches_torch_packing(n_rows):
    """Our model of this machine's layout packs exactly as torch does, and unpacks every
    known layout back to the codes (partial and full row blocks)."""
    codes = torch.randint(0, 16, (n_rows, 64), generator=torch.Generator().manual_seed(n_rows),
                          dtype=torch.uint8)
    here = int4_layout.KNOWN_LAYOUTS[int4_layout.current_layout()]
    assert torch.equal(int4_layout.torch_pack(codes), int4_layout.pack_codes(codes, here))
    assert torch.equal(int4_layout.torch_pack(codes), int4_layout.pack_for_this_machine(codes))
    for layout in int4_layout.KNOWN_LAYOUTS.values():
        packed = int4_layout.pack_codes(codes, layout)
        assert torch.equal(int4_layout.unpack_codes(packed, n_rows, 64, layout), codes)


def test_fingerprint_names_layout_isa_and_torch():
    fp = encodings.layout_fingerprint()
    assert fp["layout"] in int4_layout.KNOWN_LAYOUTS
    assert fp["isa"] == torch.backends.cpu.get_cpu_capability()
    assert fp["torch"] == torch.__version__


FOREIGN_CAPABILITY = {"split64": "avx2", "split32": "default", "pairs32": None}


def exact_q4() -> Q4Weight:
    """A q4 weight from integer codes and scales/zeros exact in bf16: the same bytes on every
    instruction set. (Quantizing random floats is not: the scales' float rounding follows the
    ISA's vector kernels, e.g. 1.4687e-04 vs 1.4591e-04 between AVX2 and the scalar build.)"""
    codes = torch.randint(0, 16, (80, 128), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    idx = torch.arange(80 * 4).reshape(80, 4)
    return Q4Weight.from_codes(codes, (idx % 7 + 1).float() / 64, -(idx % 5).float() / 32, 32)


@pytest.fixture(scope="module")
def foreign_store(tmp_path_factory):
    """A q4 weight packed in another process whose torch kernels run a lower instruction set
    (ATEN_CPU_CAPABILITY), i.e. bytes in another layout, written as header + bytes."""
    capability = FOREIGN_CAPABILITY[int4_layout.current_layout()]
    if capability is None:
        pytest.skip("this machine already uses the lowest int4 layout")
    path = tmp_path_factory.mktemp("foreign") / "w"
    script = (
        "import json, sys, torch\n"
        "from offload import encodings\n"
        "from offload.encodings.q4 import Q4Weight\n"
        + inspect.getsource(exact_q4) +
        "w = exact_q4()\n"
        "open(sys.argv[1] + '.json', 'w').write(json.dumps(w.header()))\n"
        "open(sys.argv[1] + '.bin', 'wb').write(encodings.to_bytes(w))\n")
    env = dict(os.environ, ATEN_CPU_CAPABILITY=capability)
    subprocess.run([sys.executable, "-c", script, str(path)], check=True, env=env,
                   cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import json
    return json.loads(path.with_suffix(".json").read_text()), bytearray(path.with_suffix(".bin").read_bytes())


@pytest.mark.slow
def test_foreign_layout_is_refused_with_the_fix(foreign_store):
    header, data = foreign_store
    assert header["layout"]["layout"] != int4_layout.current_layout()
    with pytest.raises(encodings.LayoutMismatchError, match="repack") as err:
        encodings.decode(header, encodings.views(header, data))
    assert header["layout"]["layout"] in str(err.value)
    assert int4_layout.current_layout() in str(err.value)


@pytest.mark.slow
def test_foreign_layout_repacks_to_the_same_weight(foreign_store):
    header, data = foreign_store
    weight = encodings.decode(header, encodings.views(header, data), repack=True)
    assert weight.layout["layout"] == int4_layout.current_layout()
    native = exact_q4()
    assert torch.equal(weight.packed, native.packed)
    assert torch.equal(weight.scales_zeros, native.scales_zeros)
    x = torch.randn(3, 128).to(torch.bfloat16)
    assert torch.equal(weight.linear(x), native.linear(x))


def test_unknown_layout_cannot_be_repacked():
    weight = Q4Weight.quantize(torch.randn(32, 64))
    header = dict(weight.header(), layout=dict(weight.layout, layout="unknown-0123"))
    parts = encodings.views(header, bytearray(encodings.to_bytes(weight)))
    with pytest.raises(encodings.LayoutMismatchError, match="pack the store again"):
        encodings.decode(header, parts)
    with pytest.raises(encodings.LayoutMismatchError, match="pack the store again"):
        encodings.decode(header, parts, repack=True)


# -- GGUF types kept exactly -------------------------------------------------------------------

EXACT_TYPES = sorted(gguf_types.EXACT)


@pytest.mark.parametrize("qtype", EXACT_TYPES)
def test_exact_types_dequantize_like_gguf(qtype):
    raw = gguf_blocks_for(qtype)
    ref = reference(raw, qtype)
    cls = Q4Weight if gguf_types.EXACT[qtype] == "q4" else Q8Weight
    exact = cls.from_gguf(raw, qtype, (N, K), scale_dtype=torch.float32)
    got = exact.dequantize()
    if qtype == "Q5_K":
        ulp = torch.finfo(torch.float32).eps * ref.abs().view(-1, 32).amax(1, keepdim=True)
        assert ((got - ref).abs().view(-1, 32) <= 2 * ulp).all()
    else:
        assert torch.equal(got, ref)
    fast = cls.from_gguf(raw, qtype, (N, K))  # bf16 scales, the stored form
    err = (fast.dequantize() - ref).abs()
    bound = 0.05 * step_of(exact, qtype) + 2 ** -8 * ref.abs().view(N, -1, 32).amax(-1).repeat_interleave(32, 1)
    assert (err <= bound).all(), float((err / step_of(exact, qtype)).max())


@pytest.mark.parametrize("qtype", EXACT_TYPES)
def test_exact_types_linear_matches_dequantized_weights(qtype):
    raw = gguf_blocks_for(qtype)
    weight = gguf_types.encode_tensor(raw, qtype, (N, K)).value
    dense = weight.dequantize()
    gen = torch.Generator().manual_seed(2)
    bias = torch.randn(N, generator=gen)
    for n in (1, 5, 33):
        x = torch.randn(n, K, generator=gen)
        want = F.linear(x, dense, bias)
        got = weight.linear(x.to(torch.bfloat16), bias)
        assert got.dtype == torch.bfloat16
        assert (got.float() - want).abs().max() <= 0.02 * want.abs().max()
        assert torch.equal(weight.linear(x, bias), F.linear(x, dense, bias))  # float32: exact
    x3 = torch.randn(2, 3, K, generator=gen, dtype=torch.float16)
    out = weight.linear(x3)
    assert out.shape == (2, 3, N) and out.dtype == torch.float16


@pytest.mark.parametrize("cls", [Q4Weight, Q8Weight])
def test_rows_equal_dequantized_rows(cls):
    weight = cls.quantize(torch.randn(208, 64, generator=torch.Generator().manual_seed(5)))
    index = torch.tensor([[0, 207, 64, 65], [31, 32, 200, 0]])  # full and partial row blocks
    assert torch.equal(weight.rows(index), weight.dequantize()[index])
    with pytest.raises(IndexError, match="out of range"):
        weight.rows(torch.tensor([208]))


def test_qk_unpermutation_matches_transformers_and_is_exact():
    from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor
    n_rows, n_head = 96, 3
    order = gguf_types.unpermute_qk_rows(n_rows, n_head)
    want = LlamaTensorProcessor()._reverse_permute_weights(np.arange(n_rows), n_head)
    assert np.array_equal(order.numpy(), want)
    raw = gguf_blocks_for("Q4_K", n_rows, 256)
    encoded = gguf_types.encode_tensor(raw, "Q4_K", (n_rows, 256), torch.float32, row_order=order)
    assert torch.equal(encoded.value.dequantize(), reference(raw, "Q4_K")[order])


@pytest.mark.slow
def test_real_smollm2_gguf_maps_and_matches(smollm2_gguf):
    path = smollm2_gguf
    reader = gguf.GGUFReader(path)
    types = collections.Counter(t.tensor_type.name for t in reader.tensors)
    assert types == {"Q4_1": 210, "F32": 61, "Q8_0": 1}  # the demo target, for the record
    for tensor in reader.tensors:
        gguf_types.plan_for(tensor.tensor_type.name)  # every type maps
    by_name = {t.name: t for t in reader.tensors}
    for name in ("blk.0.attn_q.weight", "blk.29.ffn_down.weight", "token_embd.weight"):
        tensor = by_name[name]
        shape = tuple(int(s) for s in reversed(tensor.shape))
        qtype = tensor.tensor_type.name
        cls = Q4Weight if qtype == "Q4_1" else Q8Weight
        weight = cls.from_gguf(tensor.data, qtype, shape, scale_dtype=torch.float32)
        want = reference(tensor.data, qtype).view(shape)
        assert torch.equal(weight.dequantize(), want), name
        index = torch.tensor([0, shape[0] // 3, shape[0] - 1])
        assert torch.equal(weight.rows(index), want[index]), name  # embedding lookups
    # attn_q / attn_k as transformers loads them (llama.cpp's rotary permutation undone):
    # SmolLM2 has 9 heads and 3 kv heads.
    from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor
    for name, heads in (("blk.3.attn_q.weight", 9), ("blk.3.attn_k.weight", 3)):
        tensor = by_name[name]
        shape = tuple(int(s) for s in reversed(tensor.shape))
        encoded = gguf_types.encode_tensor(tensor.data, "Q4_1", shape, torch.float32,
                                           row_order=gguf_types.unpermute_qk_rows(shape[0], heads))
        want = LlamaTensorProcessor()._reverse_permute_weights(
            reference(tensor.data, "Q4_1").view(shape).numpy(), heads)
        assert torch.equal(encoded.value.dequantize(), torch.from_numpy(want)), name


# -- conversions and plain types ---------------------------------------------------------------

CONVERTED = sorted(gguf_types.CONVERTED)


def measure_conversion(qtype: str) -> dict:
    raw = gguf_blocks_for(qtype, k=1024)
    encoded = gguf_types.encode_tensor(raw, qtype, (N, 1024))
    assert encoded.encoding == gguf_types.CONVERTED[qtype]
    assert qtype in encoded.note and "error" in encoded.note
    return gguf_types.conversion_error(reference(raw, qtype).view(N, 1024),
                                       encoded.value.dequantize(), qtype)


@pytest.mark.parametrize("qtype", CONVERTED)
def test_converted_types_stay_within_their_measured_error(qtype):
    err = measure_conversion(qtype)
    bound_max, bound_mean = CONVERSION_ERROR_BOUNDS[qtype]
    assert err["max"] <= bound_max and err["mean"] <= bound_mean, err


@pytest.mark.parametrize("qtype,dtype", [("F32", torch.float32), ("F16", torch.bfloat16),
                                         ("BF16", torch.bfloat16)])
def test_plain_types(qtype, dtype):
    weight = np.random.default_rng(0).standard_normal((N, 64)).astype(np.float32)
    raw = gguf_quantize(weight, GT[qtype])
    encoded = gguf_types.encode_tensor(raw, qtype, (N, 64))
    assert encoded.encoding == str(dtype).removeprefix("torch.")
    assert torch.equal(encoded.value, reference(raw, qtype).to(dtype))


def test_one_dimensional_tensors_stay_plain():
    raw = gguf_quantize(np.ones((1, 64), np.float32), GT.Q8_0)
    encoded = gguf_types.encode_tensor(raw, "Q8_0", (64,))
    assert encoded.encoding == "bfloat16" and encoded.value.shape == (64,)


@pytest.mark.parametrize("qtype", ["I32", "F64", "Q8_K", "NVFP4", "Q9_9"])
def test_unsupported_type_lists_what_is_supported(qtype):
    with pytest.raises(gguf_types.UnsupportedGGUFType) as err:
        gguf_types.plan_for(qtype)
    for supported in ("Q4_K", "Q8_0", "Q6_K", "BF16"):
        assert supported in str(err.value)


def test_shape_the_kernel_cannot_take_falls_back_to_bf16():
    raw = gguf_blocks_for("Q4_1", n_rows=40, k=64)  # 40 % 16 != 0
    encoded = gguf_types.encode_tensor(raw, "Q4_1", (40, 64))
    assert encoded.encoding == "bfloat16" and "N % 16" in encoded.note
    assert torch.equal(encoded.value, reference(raw, "Q4_1").to(torch.bfloat16))
    with pytest.raises(UnsupportedShape, match="N % 16"):
        Q4Weight.quantize(torch.randn(40, 64))


# -- quantizing float weights ------------------------------------------------------------------

def test_group_choice():
    assert choose_group((64, 4096)) == 32     # q4
    assert choose_group((64, 4096), 64) == 64  # q8
    assert choose_group((64, 576), 64) == 64   # SmolLM2's hidden size
    assert choose_group((64, 96), 64) == 32    # K % 64 != 0
    with pytest.raises(UnsupportedShape, match="K % 32"):
        choose_group((64, 40))


@pytest.mark.parametrize("cls,levels,group", [(Q4Weight, 15, 32), (Q8Weight, 254, 64)])
def test_round_to_nearest_error_is_half_a_step(cls, levels, group):
    gen = torch.Generator().manual_seed(3)
    weight = torch.randn(64, 576, generator=gen) * 0.02
    encoded = cls.quantize(weight)
    assert encoded.group == group
    groups = weight.view(64, -1, group)
    span = groups.amax(-1) - groups.amin(-1) if cls is Q4Weight else 2 * groups.abs().amax(-1)
    step = (span / levels).unsqueeze(-1)
    err = (encoded.dequantize() - weight).abs().view(64, -1, group)
    assert (err <= 0.51 * step).all()  # half a step; 0.01 for the bf16-rounded scale
    x = torch.randn(4, 576, generator=gen).to(torch.bfloat16)
    want = x.float() @ encoded.dequantize().t()
    assert (encoded.linear(x).float() - want).abs().max() <= 0.02 * want.abs().max()


def test_constant_and_zero_groups_do_not_divide_by_zero():
    constant, zeros = torch.full((16, 64), 0.25), torch.zeros(16, 64)
    assert torch.equal(Q4Weight.quantize(constant).dequantize(), constant)  # min == max
    for cls in (Q4Weight, Q8Weight):
        assert torch.equal(cls.quantize(zeros).dequantize(), zeros)


def test_quantize_float_encodings_and_fallbacks():
    from offload.encodings.from_float import quantize_float
    weight = torch.randn(32, 128, generator=torch.Generator().manual_seed(6))
    for encoding, cls in (("q4", Q4Weight), ("q8", Q8Weight)):
        encoded = quantize_float(weight, encoding)
        assert encoded.encoding == encoding and isinstance(encoded.value, cls)
    odd = quantize_float(torch.randn(40, 128), "q4")
    assert odd.encoding == "bfloat16" and "N % 16" in odd.note
    assert quantize_float(torch.randn(128), "q8").encoding == "bfloat16"
    with pytest.raises(ValueError, match="choose one of q4, q8"):
        quantize_float(weight, "q3")
    with pytest.raises(ValueError, match="width 64"):
        Q4Weight.quantize(weight).linear(torch.randn(2, 64).to(torch.bfloat16))


# -- bytes -------------------------------------------------------------------------------------

@pytest.mark.parametrize("cls", [Q4Weight, Q8Weight])
def test_zero_copy_round_trip_through_bytes(cls):
    weight = cls.quantize(torch.randn(48, 256, generator=torch.Generator().manual_seed(4)))
    header = weight.header()
    import json
    header = json.loads(json.dumps(header))  # what a manifest stores
    buffer = torch.zeros(encodings.packed_size(header) + 4096, dtype=torch.uint8)
    offset = 4096  # somewhere inside a reader's buffer, page-aligned
    buffer[offset:offset + encodings.packed_size(header)] = torch.frombuffer(
        bytearray(encodings.to_bytes(weight)), dtype=torch.uint8)
    parts = encodings.views(header, buffer, offset)
    rebuilt = encodings.decode(header, parts)
    start, end = buffer.data_ptr(), buffer.data_ptr() + buffer.numel()
    for name, tensor in rebuilt_parts(rebuilt).items():
        assert start <= tensor.data_ptr() < end, name  # a view, not a copy
        assert tensor.data_ptr() % encodings.ALIGN == 0
    x = torch.randn(3, 256).to(torch.bfloat16)
    assert torch.equal(rebuilt.linear(x), weight.linear(x))
    assert rebuilt.nbytes == weight.nbytes


def rebuilt_parts(weight) -> dict:
    return weight.parts()


def test_truncated_buffer_and_unknown_encoding_are_named():
    weight = Q4Weight.quantize(torch.randn(32, 64))
    header = weight.header()
    data = bytearray(encodings.to_bytes(weight))[:-10]
    with pytest.raises(ValueError, match="truncated"):
        encodings.views(header, data)
    with pytest.raises(ValueError, match="unknown weight encoding 'q3'"):
        encodings.decode(dict(header, encoding="q3"), {})


def test_bytes_per_weight():
    """q4 (group 32, as GGUF) stores 5 bits per weight, 4.5 at group 64; q8 two planes 9 / 10."""
    shape = (64, 4096)
    assert Q4Weight.quantize(torch.randn(shape)).nbytes * 8 / (64 * 4096) == 5.0
    assert Q4Weight.quantize(torch.randn(shape), 64).nbytes * 8 / (64 * 4096) == 4.5
    assert Q8Weight.quantize(torch.randn(shape)).nbytes * 8 / (64 * 4096) == 9.0
    raw = gguf_blocks_for("Q4_1", 64, 4096)
    assert Q4Weight.from_gguf(raw, "Q4_1", shape).nbytes * 8 / (64 * 4096) == 5.0
