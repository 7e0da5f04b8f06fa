"""specdec: speculative decoding with the target streamed from disk.

    import specdec
    lm = specdec.load(target="DIR|GGUF|STORE", draft="DIR|GGUF|None", ram="4GB")
    out = lm.generate("prompt", max_new_tokens=128)
"""
from .api import GenerationOutput, SpecDecoder
from .sampling import SamplingParams
from .session import load

__all__ = ["load", "SpecDecoder", "GenerationOutput", "SamplingParams"]
__version__ = "0.1.0"
