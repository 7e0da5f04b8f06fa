"""Raw HTTP for the server tests (stdlib only), where the `openai` client would hide the
status, the headers or a malformed body: (status, headers, parsed JSON body)."""
from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

HANG_GUARD = 120  # seconds: only there so that a broken server fails the test instead of hanging it


def request(url: str, path: str, body=None, key: str | None = None, method: str | None = None,
            headers: dict | None = None):
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    req = urllib.request.Request(url + path, data=data, method=method or ("POST" if data is not None else "GET"),
                                 headers={"Content-Type": "application/json", **(headers or {})})
    if key is not None:
        req.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(req, timeout=HANG_GUARD) as r:
            return r.status, _lower(r.headers), json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, _lower(e.headers), json.loads(e.read())


def wait_until(condition, what: str, timeout: float = HANG_GUARD) -> None:
    """Poll `condition` (a state change another thread or process makes) until it holds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def error_of(status_headers_body) -> dict:
    """The OpenAI-shaped error of a response, checked to be one."""
    _, _, body = status_headers_body
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"message", "type", "param", "code"}, body
    assert body["error"]["message"]
    return body["error"]


def _lower(headers) -> dict:
    return {k.lower(): v for k, v in headers.items()}
