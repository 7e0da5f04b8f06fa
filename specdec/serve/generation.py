"""What a job does with the decoder: turn a checked request into prompt ids (checked
against the context), then run SpecDecoder.stream_ids and report each pass's text.

No decoding logic here: the decoder does it all, including the KV cache reuse that makes a
conversation's next turn prefill only its new messages."""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Iterator

from .errors import bad_request
from .requests import GenerationRequest


@dataclass
class Piece:
    """The text one pass added (may be empty while a character or a stop string is
    incomplete) and how many tokens it accepted."""
    text: str
    tokens: int


@dataclass
class Finished:
    stats: object  # GenerationStats of the run
    time_to_first_token: float | None


def prompt_ids(lm, request: GenerationRequest) -> list[int]:
    """The request's prompt as token ids; a 400 naming the problem when it cannot be one."""
    if request.kind == "chat":
        if not lm.has_chat_template():
            raise bad_request("this model has no chat template; use /v1/completions with a "
                              "plain prompt", "messages")
        return lm.encode_chat(request.prompt)
    if isinstance(request.prompt, str) and lm.tokenizer is None:
        raise bad_request("this model has no tokenizer files: send the prompt as a list of "
                          "token ids", "prompt")
    try:
        return lm.encode(request.prompt)
    except ValueError as e:  # token ids outside the vocabulary
        raise bad_request(f"prompt: {e}", "prompt") from None


def reply_budget(ids: list[int], max_tokens: int | None, max_context: int,
                 prompt_field: str = "messages") -> int:
    """Tokens the reply may take: `max_tokens`, or the rest of the context when not given.
    Asking for more than the context holds is a 400 naming the context size (OpenAI's code
    context_length_exceeded), never a truncated surprise."""
    room = max_context - len(ids)
    if room <= 0:
        raise bad_request(f"the prompt has {len(ids)} tokens but the context holds {max_context}; "
                          "shorten the prompt (or start the server with a larger --max-context)",
                          prompt_field, "context_length_exceeded")
    if max_tokens is None:
        return room
    if max_tokens > room:
        raise bad_request(f"max_tokens={max_tokens} plus the prompt's {len(ids)} tokens exceeds the "
                          f"context of {max_context} tokens; ask for at most {room} (or leave "
                          "max_tokens out: the reply may then fill the context)", "max_tokens",
                          "context_length_exceeded")
    return max_tokens


def run_generation(lm, ids: list[int], max_new_tokens: int, request: GenerationRequest
                   ) -> Iterator[Piece | Finished]:
    """The job's iterator, run on the decoder thread: a Piece per pass, then Finished.
    Closing it early (a cancelled job) closes the decoder's stream, which frees the decoder."""
    started = time.perf_counter()
    first_token = None
    stream = lm.stream_ids(ids, max_new_tokens=max_new_tokens, sampling=request.sampling,
                           stop=request.stop or None)
    with contextlib.closing(stream):
        for text, new in stream:
            if new and first_token is None:
                first_token = time.perf_counter() - started
            yield Piece(text, len(new))
    yield Finished(lm.last_stats, first_token)
