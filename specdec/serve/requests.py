"""Request bodies of /v1/chat/completions and /v1/completions, checked field by field.

Every field we do not honour is refused with a 400 naming it (a silently ignored `n` or
`tools` would be a wrong answer); unknown fields are ignored, as OpenAI-compatible servers
do, so clients that send extra metadata (`user`, `store`, ...) keep working. Extensions that
vLLM and llama.cpp's server accept too: `top_k`, `repetition_penalty`, `repetition_window`.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

from ..sampling_params import SAMPLING_PRESETS, SETTINGS, SamplingError, SamplingParams
from .errors import bad_request

ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
MAX_STOP_STRINGS = 4  # OpenAI's limit: each one is searched in the text after every pass

PENALTY_HELP = ("specdec applies a multiplicative repetition penalty instead (as llama.cpp's "
                "repeat_penalty and transformers' repetition_penalty do): send "
                "`repetition_penalty` (e.g. 1.1; 1 = off) and optionally `repetition_window` "
                "(tokens looked at, default 64; 0 = the whole context)")


def _is_off(*defaults):
    return lambda value: value is None or any(value == d and type(value) is type(d)
                                              for d in defaults)


# field -> (is this value one we can honour?, what to say otherwise)
UNSUPPORTED = {
    "n": (_is_off(1), "only one choice per request is supported (n=1); send several requests instead"),
    "best_of": (_is_off(1), "best_of > 1 is not supported; send several requests instead"),
    "tools": (lambda v: not v, "tool calling is not supported by this server; remove `tools`"),
    "tool_choice": (_is_off("none"), "tool calling is not supported by this server"),
    "functions": (lambda v: not v, "function calling is not supported by this server"),
    "function_call": (_is_off("none"), "function calling is not supported by this server"),
    "logprobs": (_is_off(False, 0), "logprobs are not supported by this server"),
    "top_logprobs": (_is_off(0), "logprobs are not supported by this server"),
    "logit_bias": (lambda v: not v, "logit_bias is not supported by this server"),
    "response_format": (lambda v: v is None or v == {"type": "text"},
                        "only plain text replies are supported (response_format {\"type\": \"text\"})"),
    "modalities": (lambda v: v is None or v == ["text"], "only text output is supported"),
    "audio": (lambda v: v is None, "audio output is not supported"),
    "prediction": (lambda v: v is None, "predicted outputs are not supported"),
    "echo": (_is_off(False), "echo is not supported; the reply never includes the prompt"),
    "suffix": (lambda v: not v, "suffix (insertion) is not supported"),
    "frequency_penalty": (_is_off(0, 0.0), f"frequency_penalty is not supported: {PENALTY_HELP}"),
    "presence_penalty": (_is_off(0, 0.0), f"presence_penalty is not supported: {PENALTY_HELP}"),
}


@dataclass
class GenerationRequest:
    """One checked request. `prompt`: the messages (chat: [{"role", "content": str}]) or
    the prompt (completion: text or token ids)."""
    kind: str  # "chat" | "completion"
    model: str
    prompt: list | str
    max_tokens: int | None  # None: up to the end of the context
    sampling: SamplingParams
    stop: list[str] = field(default_factory=list)
    stream: bool = False
    include_usage: bool = False


def parse_json(raw: bytes) -> dict:
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise bad_request(f"the request body is not valid JSON ({e}); send a JSON object "
                          "with Content-Type: application/json") from None
    if not isinstance(body, dict):
        raise bad_request(f"the request body must be a JSON object, not {type(body).__name__}")
    return body


def chat_request(body: dict, defaults: SamplingParams = SAMPLING_PRESETS["serve"]
                 ) -> GenerationRequest:
    if "messages" not in body:
        raise bad_request("missing required field `messages` (a list of {\"role\", \"content\"})",
                          "messages")
    return _request("chat", body, _messages(body["messages"]), defaults)


def completion_request(body: dict, defaults: SamplingParams = SAMPLING_PRESETS["serve"]
                       ) -> GenerationRequest:
    if "prompt" not in body:
        raise bad_request("missing required field `prompt` (text or a list of token ids)", "prompt")
    return _request("completion", body, _prompt(body["prompt"]), defaults)


def _request(kind: str, body: dict, prompt, defaults: SamplingParams) -> GenerationRequest:
    for name, (honoured, why) in UNSUPPORTED.items():
        if name in body and not honoured(body[name]):
            raise bad_request(f"{name}={json.dumps(body[name])[:80]}: {why}", name,
                              "unsupported_parameter")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise bad_request("missing required field `model` (GET /v1/models lists the served model)",
                          "model")
    stream = _boolean(body, "stream", False)
    options = body.get("stream_options")
    if options is not None and not stream:
        raise bad_request("stream_options is only allowed with stream=true", "stream_options")
    if options is not None and not isinstance(options, dict):
        raise bad_request("stream_options must be an object, e.g. {\"include_usage\": true}",
                          "stream_options")
    return GenerationRequest(kind, model, prompt, _max_tokens(body), _sampling(body, defaults),
                             _stop(body.get("stop")), stream,
                             _boolean(options or {}, "include_usage", False, "stream_options."))


def _sampling(body: dict, defaults: SamplingParams) -> SamplingParams:
    """The request's sampling fields (JSON types checked here, ranges by SamplingParams) over
    the server's `defaults` for the fields it omits."""
    given = {}
    for name in SETTINGS:
        value = body.get(name)
        if value is None:
            continue
        if isinstance(value, float) and value.is_integer() and SETTINGS[name].kind is int:
            value = int(value)  # JSON from some clients writes 256 as 256.0
        given[name] = value
    # OpenAI's range: clients built for its API may send up to 2, never more.
    if isinstance(given.get("temperature"), (int, float)) and not 0 <= given["temperature"] <= 2:
        raise bad_request(f"temperature={given['temperature']} is out of range: must be a number "
                          "in [0, 2] (0 = greedy)", "temperature")
    if isinstance(given.get("seed"), int) and not 0 <= given["seed"] < 2 ** 63:
        raise bad_request(f"seed={given['seed']} is out of range: must be an integer in [0, 2^63)",
                          "seed")
    try:
        return defaults.replace(**given)
    except SamplingError as e:
        raise bad_request(f"{e}", e.field) from None


def _max_tokens(body: dict) -> int | None:
    what = "an integer >= 1 (the reply's length cap, in tokens)"
    old = _integer(body, "max_tokens", None, 1, what)
    new = _integer(body, "max_completion_tokens", None, 1, what)
    if old is not None and new is not None and old != new:
        raise bad_request(f"max_tokens={old} and max_completion_tokens={new} disagree; send one "
                          "of them", "max_completion_tokens")
    return new if new is not None else old


def _stop(value) -> list[str]:
    if value is None:
        return []
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise bad_request("stop must be a string or a list of strings", "stop")
    if len(stops) > MAX_STOP_STRINGS:
        raise bad_request(f"stop has {len(stops)} strings; at most {MAX_STOP_STRINGS} are allowed",
                          "stop")
    return [s for s in stops if s]


def _messages(value) -> list[dict]:
    if not isinstance(value, list) or not value:
        raise bad_request("messages must be a non-empty list of {\"role\", \"content\"} objects",
                          "messages")
    return [_message(m, f"messages[{i}]") for i, m in enumerate(value)]


def _message(m, where: str) -> dict:
    if not isinstance(m, dict):
        raise bad_request(f"{where} must be an object with `role` and `content`", where)
    role = m.get("role")
    if role in ("tool", "function"):
        raise bad_request(f"{where}.role {role!r}: tool messages are not supported (this server "
                          "has no tool calling)", f"{where}.role")
    if role not in ROLES:
        raise bad_request(f"{where}.role {role!r} is not a known role; use one of "
                          f"{', '.join(ROLES)}", f"{where}.role")
    if m.get("tool_calls"):
        raise bad_request(f"{where}.tool_calls: tool calling is not supported", f"{where}.tool_calls")
    # `developer` is OpenAI's newer name for the system message.
    return {"role": ROLES[role], "content": _content(m.get("content"), f"{where}.content")}


def _content(content, where: str) -> str:
    """Text, or a list of text parts (joined); any other part (an image, audio) is refused."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise bad_request(f"{where} must be a string or a list of text parts", where)
    texts = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind != "text" or not isinstance(part.get("text"), str):
            raise bad_request(f"{where}[{j}]: only text parts ({{\"type\": \"text\", \"text\": ...}}) "
                              f"are supported, got type {kind!r} (this server takes no images or "
                              "audio)", f"{where}[{j}]")
        texts.append(part["text"])
    return "".join(texts)


def _prompt(value) -> str | list[int]:
    """Text or token ids; a batch of exactly one prompt is unwrapped."""
    if isinstance(value, list) and value and all(isinstance(p, (str, list)) for p in value):
        if len(value) > 1:
            raise bad_request(f"prompt is a batch of {len(value)} prompts; send one prompt per "
                              "request", "prompt")
        value = value[0]
    if isinstance(value, str):
        if not value:
            raise bad_request("prompt is empty", "prompt")
        return value
    if isinstance(value, list) and value and all(type(t) is int for t in value):
        return value
    raise bad_request("prompt must be a non-empty string or a non-empty list of token ids", "prompt")


def _boolean(body: dict, name: str, default: bool, prefix: str = "") -> bool:
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise bad_request(f"{prefix}{name} must be true or false, got {json.dumps(value)[:40]}",
                          prefix + name)
    return value


def _integer(body: dict, name: str, default, low: int, what: str):
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # JSON from some clients writes 256 as 256.0
    if type(value) is not int:
        raise bad_request(f"{name} must be {what}, got {json.dumps(value)[:40]}", name)
    if value < low:
        raise bad_request(f"{name}={value} is out of range: must be {what}", name)
    return value

