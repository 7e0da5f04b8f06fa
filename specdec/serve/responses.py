"""Response bodies in OpenAI's shapes: chat completions and text completions, whole or as
server-sent-event chunks, and the usage block (with specdec's own statistics beside the
token counts)."""
from __future__ import annotations

import json
import secrets
import time

# The engine's stop reasons -> OpenAI's finish_reason.
FINISH_REASONS = {"eos": "stop", "stop_string": "stop", "max_new_tokens": "length",
                  "context_full": "length"}
SSE_DONE = b"data: [DONE]\n\n"


class Reply:
    """The identity one response's chunks share (id, created, model) and its object names."""

    def __init__(self, kind: str, model: str):
        self.kind = kind  # "chat" | "completion"
        self.model = model
        self.id = ("chatcmpl-" if kind == "chat" else "cmpl-") + secrets.token_hex(12)
        self.created = int(time.time())

    def whole(self, text: str, stop_reason: str, usage: dict) -> dict:
        if self.kind == "chat":
            choice = {"index": 0, "message": {"role": "assistant", "content": text},
                      "logprobs": None, "finish_reason": finish_reason(stop_reason)}
        else:
            choice = {"index": 0, "text": text, "logprobs": None,
                      "finish_reason": finish_reason(stop_reason)}
        return {**self._head(""), "choices": [choice], "usage": usage}

    def first_chunk(self) -> bytes | None:
        """A chat stream opens with the assistant's role (OpenAI's first chunk)."""
        if self.kind != "chat":
            return None
        return self._chunk({"role": "assistant", "content": ""}, None)

    def text_chunk(self, text: str) -> bytes:
        return self._chunk({"content": text} if self.kind == "chat" else text, None)

    def last_chunk(self, stop_reason: str) -> bytes:
        return self._chunk({} if self.kind == "chat" else "", finish_reason(stop_reason))

    def usage_chunk(self, usage: dict) -> bytes:
        return sse({**self._head(".chunk"), "choices": [], "usage": usage})

    def _chunk(self, delta, finish: str | None) -> bytes:
        if self.kind == "chat":
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        else:
            choice = {"index": 0, "text": delta, "logprobs": None, "finish_reason": finish}
        return sse({**self._head(".chunk"), "choices": [choice]})

    def _head(self, suffix: str) -> dict:
        obj = "chat.completion" if self.kind == "chat" else "text_completion"
        # A text completion's chunks are text_completion objects too.
        return {"id": self.id, "object": obj + (suffix if self.kind == "chat" else ""),
                "created": self.created, "model": self.model}


def finish_reason(stop_reason: str) -> str:
    return FINISH_REASONS.get(stop_reason, "stop")


def usage(prompt_tokens: int, stats, time_to_first_token: float | None,
          queued_seconds: float) -> dict:
    """OpenAI's token counts, plus `specdec`: the decoder's statistics of this reply
    (passes, acceptance, tokens per pass, bytes read, timings) and the time spent queued."""
    return {"prompt_tokens": prompt_tokens, "completion_tokens": stats.new_tokens,
            "total_tokens": prompt_tokens + stats.new_tokens,
            "specdec": {**stats.to_dict(),
                        "time_to_first_token": None if time_to_first_token is None
                        else round(time_to_first_token, 4),
                        "queued_seconds": round(queued_seconds, 4)}}


def sse(obj: dict) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


def models_list(model: str, created: int) -> dict:
    return {"object": "list",
            "data": [{"id": model, "object": "model", "created": created, "owned_by": "specdec"}]}
