"""specdec.compute: every matmul path equals F.linear (up to float rounding), a token's row
never depends on the other tokens of the pass, the probe picks the fastest path it timed and
is cached per machine, and the pass-time profile the cost models start from adds up."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from specdec.compute import choice, kernels, probe, probe_cache, probe_process
from specdec.compute.profile import Profile

PLAIN = [("native", torch.bfloat16), ("upcast", torch.bfloat16), ("native", torch.float32),
         ("wxt", torch.float32)]


def _weights(dtype, rows=300, cols=96, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = (torch.randn(rows, cols, generator=g) * 0.05).to(dtype)
    b = (torch.randn(rows, generator=g) * 0.1).to(dtype)
    x = torch.randn(2, 5, cols, generator=g).to(dtype)
    return x, w, b


@pytest.mark.parametrize("path,dtype", PLAIN)
def test_every_path_equals_f_linear_within_rounding(path, dtype):
    x, w, b = _weights(dtype)
    ref = F.linear(x.double(), w.double(), b.double())
    y = kernels.PATHS[path](x, w, b)
    assert y.dtype == dtype and y.shape == ref.shape and y.is_contiguous()
    # one rounding of the output to the dtype, plus float32 accumulation
    tol = 2 ** -7 * ref.abs().max().item() if dtype == torch.bfloat16 else 1e-5
    assert (y.double() - ref).abs().max().item() <= tol


@pytest.mark.parametrize("path,dtype", PLAIN)
def test_a_tokens_row_does_not_depend_on_the_other_tokens(path, dtype):
    """Speculation stays lossless only if a verified token's result is the same whatever else
    the pass holds: no per-batch scaling or quantization of activations."""
    x, w, _ = _weights(dtype, rows=200, cols=64)
    x = x.reshape(-1, 64)
    alone = kernels.PATHS[path](x[3:4], w)
    other = x.clone()
    other[[0, 1, 2, 4]] *= 1000.0  # wildly different company
    together = kernels.PATHS[path](other, w)[3:4]
    assert torch.allclose(alone.double(), together.double(), rtol=1e-5 if dtype == torch.float32 else 1e-2,
                          atol=1e-6)


def test_upcast_chunks_rows_through_a_small_scratch(monkeypatch):
    """Weights bigger than the scratch are multiplied chunk by chunk, same result."""
    x, w, b = _weights(torch.bfloat16, rows=1000, cols=64)
    whole = kernels.linear_upcast(x, w, b)
    monkeypatch.setattr(kernels, "SCRATCH_ELEMENTS", 64 * 7)  # 7 rows per chunk, ragged end
    kernels._scratch.buf = None
    assert torch.equal(kernels.linear_upcast(x, w, b), whole)
    kernels._scratch.buf = None


def test_linear_dispatches_by_kind_and_bucket(monkeypatch):
    calls = []
    for name in kernels.PATHS:
        monkeypatch.setitem(kernels.PATHS, name, lambda x, w, b=None, n=name: calls.append(n) or x)
    policy = kernels.Policy({"bfloat16": {b: ("native" if b == 1 else "upcast") for b in kernels.BUCKETS},
                             "float32": {b: "wxt" for b in kernels.BUCKETS}})
    w16, w32 = torch.zeros(4, 8, dtype=torch.bfloat16), torch.zeros(4, 8)
    with kernels.using(policy):
        kernels.linear(torch.zeros(1, 8, dtype=torch.bfloat16), w16)
        kernels.linear(torch.zeros(3, 8, dtype=torch.bfloat16), w16)
        kernels.linear(torch.zeros(300, 8, dtype=torch.bfloat16), w16)  # past the last bucket
        kernels.linear(torch.zeros(1, 8), w32)
    kernels.linear(torch.zeros(3, 8), w32)  # outside any model's forward: the reference
    assert calls == ["native", "upcast", "upcast", "wxt", "native"]
    assert kernels.bucket(3) == 4 and kernels.bucket(1000) == kernels.BUCKETS[-1]
    assert "upcast at 2-256" in policy.summary() and "fp32: wxt at 1-256" in policy.summary()


def _recording_paths(monkeypatch) -> list[str]:
    """Every path call appends its name, then computes as the real path does."""
    calls = []
    for name, real in list(kernels.PATHS.items()):
        monkeypatch.setitem(kernels.PATHS, name,
                            lambda x, w, b=None, n=name, r=real: calls.append(n) or r(x, w, b))
    return calls


def test_two_models_in_one_process_each_follow_their_own_policy(tiny_llama, monkeypatch):
    """The policy is the model's, given at build time: loading a second model with another
    policy changes nothing for the first, and a forward nested in another (a draft's, run
    while the target waits for a layer) uses its own model's and gives the outer one back."""
    from specdec.loading import load_resident

    path, hf = tiny_llama
    calls = _recording_paths(monkeypatch)
    every = lambda path: kernels.Policy({"float32": {b: path for b in kernels.BUCKETS}})
    wxt = load_resident(path, torch.float32, kernels=every("wxt")).model
    native = load_resident(path, torch.float32).model  # no policy: F.linear, the reference
    ids = torch.tensor([1, 5, 9, 13, 2, 7])
    with torch.no_grad():
        ref = hf(ids[None]).logits[0]
    for model, expected in ((wxt, "wxt"), (native, "native"), (wxt, "wxt")):
        calls.clear()
        cache = model.new_cache(32)
        logits = model.forward(ids, cache.next_positions(6), cache)
        assert set(calls) == {expected} and len(calls) == 7 * 3 + 1  # 7 per layer, the head
        assert (logits - ref).abs().max().item() <= 1e-4
    calls.clear()
    x, w = torch.zeros(2, 8), torch.zeros(4, 8)
    with kernels.using(every("wxt")):
        kernels.linear(x, w)
        with kernels.using(every("native")):
            kernels.linear(x, w)
        kernels.linear(x, w)
    assert calls == ["wxt", "native", "wxt"]


def test_the_probe_picks_the_fastest_timed_path_and_caches_it(tmp_path, monkeypatch):
    """The choice is the minimum of what was timed (here: made-up timings, so the test does
    not depend on this machine's speed), and a second load reads the cache."""
    fake = {"native": 5.0, "upcast": 2.0, "wxt": 1.0}
    monkeypatch.setattr(probe, "_time_ms", lambda fn, reps=3: fn() or fake[current[0]])
    current = [None]
    for name in list(kernels.PATHS):
        monkeypatch.setitem(kernels.PATHS, name,
                            lambda x, w, b=None, n=name: current.__setitem__(0, n))
    monkeypatch.setattr(probe, "_q4_probe_weight", lambda shape: None)
    in_process = lambda progress: probe.probe(progress=progress)  # the patches live here
    policy = probe_cache.load_or_probe(tmp_path, progress=False, measure=in_process)
    assert all(p == "upcast" for p in policy.paths["bfloat16"].values())
    assert all(p == "wxt" for p in policy.paths["float32"].values())
    cached = probe_cache.cache_file(tmp_path)
    assert json.loads(cached.read_text())["machine"] == probe.machine()
    never = lambda progress: pytest.fail("probed again")
    assert probe_cache.load_or_probe(tmp_path, measure=never).paths == policy.paths
    cached.write_text("{ damaged")  # a damaged cache is measured again and replaced
    reference = lambda progress: kernels.Policy.reference()
    assert probe_cache.load_or_probe(tmp_path, measure=reference).paths == kernels.Policy.reference().paths
    assert json.loads(cached.read_text())["paths"]["bfloat16"]["8"] == "native"


def test_a_failed_probe_falls_back_to_the_reference_and_caches_nothing(tmp_path, capsys):
    def fails(progress):
        progress(0, 9)
        progress(1, 9)
        raise probe_process.ProbeFailed("the probe process was killed by SIGSEGV")

    policy = probe_cache.load_or_probe(tmp_path, progress=True, measure=fails)
    assert policy == kernels.Policy.reference()
    assert not probe_cache.cache_file(tmp_path).exists()
    err = capsys.readouterr().err
    # the progress line is ended, then one line says what failed and what happens now
    assert err.endswith("1/9\nspecdec: the matmul probe failed (the probe process was killed by "
                        "SIGSEGV); this run uses the reference kernels (F.linear), and the next "
                        "run probes again\n"), err


def test_a_real_probe_on_a_small_shape_chooses_a_known_path_per_bucket():
    policy = probe.probe(shape=(64, 128), buckets=(1, 8))
    for kind in kernels.PLAIN_KINDS:
        for b in (1, 8):
            assert policy.paths[kind][b] in kernels.CANDIDATES[kind]
            assert set(policy.timings[kind][b]) == set(kernels.CANDIDATES[kind])
    assert policy.timings["q4"][8]["int4"] > 0


def test_the_profile_adds_up_elements_times_the_probes_rate():
    timings = {"bfloat16": {b: {"native": 2.0 * b, "upcast": 1.0 * b} for b in kernels.BUCKETS},
               "q4": {b: {"int4": 0.5 * b} for b in kernels.BUCKETS}}
    policy = kernels.Policy({}, timings)
    probe_elements = probe.PROBE_SHAPE[0] * probe.PROBE_SHAPE[1]
    profile = Profile(policy, {"bfloat16": probe_elements, "q8": 2 * probe_elements})
    # bf16: the faster path's 1 ms per probe matrix per token; q8: two int4 planes per matrix
    assert profile.seconds(8) == pytest.approx(8e-3 + 2 * 2 * 0.5 * 8e-3)
    assert profile.seconds(6) == pytest.approx(6e-3 + 2 * 2 * 0.5 * 6e-3)  # interpolated
    assert profile.seconds(512) == pytest.approx(512e-3 + 2 * 2 * 0.5 * 512e-3)  # extrapolated
    assert not Profile(policy, {"float32": 10}).known  # nothing probed for it


@pytest.mark.slow  # a real probe process
def test_a_model_loaded_with_probed_kernels_matches_transformers(tiny_llama, tmp_path, monkeypatch):
    import specdec

    path, hf = tiny_llama
    monkeypatch.setattr(probe, "PROBE_SHAPE", (64, 128))  # a quick probe
    monkeypatch.setattr(choice, "_measured", {})  # nothing probed yet in this process
    lm = specdec.load(path, dtype="float32", kernels="auto", progress=False, cache_dir=tmp_path)
    try:
        assert lm.target.model.kernels.timings  # probed: the model holds the policy
        assert len(list(tmp_path.glob("compute/probe-*.json"))) == 1
        ids = torch.tensor([[1, 5, 9, 13, 2, 7]])
        model = lm.target.model
        cache = model.new_cache(32)
        logits = model.forward(ids[0], cache.next_positions(6), cache)
        with torch.no_grad():
            ref = hf(ids).logits[0]
        assert (logits - ref).abs().max().item() <= 1e-4
    finally:
        lm.close()


@pytest.mark.slow  # real processes
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
def test_the_probe_runs_in_a_child_so_its_memory_never_counts_here():
    """(Linux: VmHWM, the peak of this process image; ru_maxrss survives exec from pytest.)
    A first load probes once; the probe's weights must not raise the decoder process's
    peak RSS above the user's budget: it runs in a child process. Measured in a fresh process:
    the child probe adds (almost) nothing to its peak, while 128 MB allocated here does (which
    shows the measure can see growth)."""
    import subprocess
    import sys

    code = (
        "import torch\n"
        "from specdec.compute import probe, probe_process\n"
        "probe.PROBE_SHAPE = (2048, 4096)\n"
        "peak = lambda: int(open('/proc/self/status').read().split('VmHWM:')[1].split()[0])\n"
        "a = peak(); p = probe_process.run_probe_child(); b = peak()\n"
        "assert p.paths['bfloat16'] and p.timings['q4'] and p.machine == probe.machine()\n"
        "big = torch.ones(32 << 20); c = peak()\n"
        "print(b - a, c - b)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    child_kib, here_kib = map(int, out.stdout.split())
    assert child_kib < 16 * 1024 and here_kib > 64 * 1024, (child_kib, here_kib)
