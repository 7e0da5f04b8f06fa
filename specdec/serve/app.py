"""The HTTP routes (Starlette): /health, /v1/models, /v1/chat/completions, /v1/completions.

A route checks the request, turns it into prompt ids, queues one job on the decoder
thread and answers with what the job produces, whole or streamed as server-sent events.
A client that disconnects cancels its job (at the decoder's next pass, or before it starts).
"""
from __future__ import annotations

import asyncio
import logging
import time
import traceback
from dataclasses import dataclass

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from ..sampling_params import SAMPLING_PRESETS, SamplingParams
from .errors import APIError
from .generation import Finished, Piece, prompt_ids, reply_budget, run_generation
from .middleware import RequestLog, RequireAPIKey, error_response
from .requests import chat_request, completion_request, parse_json
from .responses import SSE_DONE, Reply, models_list, sse, usage
from .worker import GenerationQueue, Job, QueueFull, ShuttingDown

log = logging.getLogger("specdec.serve")

DRAIN_LIMIT = 16 << 20  # a too-large body is read this far, so the client sees the 413
CLIENT_LEFT = 499  # nginx's "client closed request": logged for a client that hung up waiting


@dataclass
class AppSettings:
    model_name: str
    api_key: str | None = None
    max_body_bytes: int = 1 << 20
    sampling: SamplingParams = SAMPLING_PRESETS["serve"]  # for the fields a request omits


def build_app(lm, jobs: GenerationQueue, settings: AppSettings) -> Starlette:
    routes = Routes(lm, jobs, settings)
    return Starlette(
        routes=[Route("/health", routes.health),
                Route("/v1/models", routes.models),
                Route("/v1/models/{model:path}", routes.model),
                Route("/v1/chat/completions", routes.chat, methods=["POST"]),
                Route("/v1/completions", routes.completions, methods=["POST"])],
        middleware=[Middleware(RequestLog), Middleware(RequireAPIKey, api_key=settings.api_key)],
        exception_handlers={HTTPException: _http_error})


class Routes:
    def __init__(self, lm, jobs: GenerationQueue, settings: AppSettings):
        self.lm = lm
        self.jobs = jobs
        self.settings = settings
        self.started = int(time.time())

    async def health(self, request: Request):
        return JSONResponse({"status": "ok", "model": self.settings.model_name, **self.jobs.status()})

    async def models(self, request: Request):
        return JSONResponse(models_list(self.settings.model_name, self.started))

    async def model(self, request: Request):
        try:
            self._check_model(request.path_params["model"])
        except APIError as e:
            return error_response(e)
        return JSONResponse(models_list(self.settings.model_name, self.started)["data"][0])

    async def chat(self, request: Request):
        return await self._answer(request, chat_request)

    async def completions(self, request: Request):
        return await self._answer(request, completion_request)

    # -- one generation request -----------------------------------------------------------
    async def _answer(self, request: Request, parse):
        try:
            return await self._generate(request, parse)
        except APIError as e:
            return error_response(e)
        except Exception as e:  # a bug: the log gets the traceback, the client one line
            return error_response(_internal(e))

    async def _generate(self, request: Request, parse):
        body = parse_json(await _read_body(request, self.settings.max_body_bytes))
        req = parse(body, self.settings.sampling)
        self._check_model(req.model)
        ids = prompt_ids(self.lm, req)
        budget = reply_budget(ids, req.max_tokens, self.lm.max_context,
                              "messages" if req.kind == "chat" else "prompt")
        job = self._submit(lambda: run_generation(self.lm, ids, budget, req))
        reply = Reply(req.kind, self.settings.model_name)
        if req.stream:
            return await self._streamed(request, job, reply, len(ids), req.include_usage)
        return await self._whole(request, job, reply, len(ids))

    def _check_model(self, name: str) -> None:
        if name != self.settings.model_name:
            raise APIError(404, f"model {name!r} is not served here; this server serves "
                                f"{self.settings.model_name!r} (GET /v1/models)", "model",
                           "model_not_found")

    def _submit(self, run) -> Job:
        try:
            return self.jobs.submit(run)
        except QueueFull as e:
            raise APIError(503, f"the server is busy: one generation runs at a time and "
                                f"{self.jobs.queue_length} may wait (--queue); retry after "
                                f"{e.retry_after} s", code="queue_full",
                           headers={"Retry-After": str(e.retry_after)}) from None
        except ShuttingDown:
            raise _shutting_down() from None

    async def _whole(self, request: Request, job: Job, reply: Reply, prompt_tokens: int):
        text, finished = [], None
        watcher = asyncio.create_task(_cancel_on_disconnect(request, job))
        try:
            async for item in job.items():
                if isinstance(item, Piece):
                    text.append(item.text)
                else:
                    finished = item
        except Exception as e:
            raise _job_error(e) from None
        finally:
            watcher.cancel()
            job.cancel()
        if finished is None and job.client_left:  # nobody to answer; the log says 499
            return Response(status_code=CLIENT_LEFT)
        if finished is None:  # cancelled: the server is stopping
            raise _shutting_down()
        request.state.tokens = f"{prompt_tokens}+{finished.stats.new_tokens}"
        return JSONResponse(reply.whole("".join(text), finished.stats.stop_reason,
                                        _usage(prompt_tokens, finished, job)))

    async def _streamed(self, request: Request, job: Job, reply: Reply, prompt_tokens: int,
                        include_usage: bool):
        """Headers go out with the first pass's result, so that a request the decoder
        refuses still gets its status code; after that, errors travel as an SSE event."""
        items = job.items()
        watcher = asyncio.create_task(_cancel_on_disconnect(request, job))
        try:
            first = await anext(items, None)
        except Exception as e:
            job.cancel()
            raise _job_error(e) from None
        finally:
            watcher.cancel()
        if first is None:  # cancelled before its first pass
            if job.client_left:
                return Response(status_code=CLIENT_LEFT)
            raise _shutting_down()
        state = request.state

        async def events():
            item, finished, count = first, None, 0
            try:
                opening = reply.first_chunk()
                if opening:
                    yield opening
                while item is not None:
                    if isinstance(item, Piece):
                        count += item.tokens
                        if item.text:
                            yield reply.text_chunk(item.text)
                    else:
                        finished = item
                    item = await anext(items, None)
                if finished is None:
                    yield sse(_shutting_down().body())
                else:
                    yield reply.last_chunk(finished.stats.stop_reason)
                    if include_usage:
                        yield reply.usage_chunk(_usage(prompt_tokens, finished, job))
            except Exception as e:
                yield sse(_job_error(e).body())
            finally:
                state.tokens = f"{prompt_tokens}+{count}"
                job.cancel()
            yield SSE_DONE

        return JobStream(events(), job)


class JobStream(StreamingResponse):
    """An SSE response that cancels its job however it ends (finished, the client gone,
    the server stopping)."""

    def __init__(self, content, job: Job):
        super().__init__(content, media_type="text/event-stream",
                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self.job = job

    async def __call__(self, scope, receive, send):
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.job.cancel()


async def _read_body(request: Request, limit: int) -> bytes:
    too_large = APIError(413, f"the request body is over the server's limit of {limit} bytes; "
                              "shorten the conversation", code="request_too_large")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > DRAIN_LIMIT:
        raise too_large
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size <= limit:
            chunks.append(chunk)
        elif size > DRAIN_LIMIT:
            break
    if size > limit:
        raise too_large
    return b"".join(chunks)


async def _cancel_on_disconnect(request: Request, job: Job) -> None:
    """Runs while a route waits for its job: a client that goes away cancels it. (The body
    is read by then, so the next ASGI message is the disconnect.)"""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            job.cancel(client_left=True)
            return


def _usage(prompt_tokens: int, finished: Finished, job: Job) -> dict:
    return usage(prompt_tokens, finished.stats, finished.time_to_first_token, job.queued_seconds)


def _job_error(e: Exception) -> APIError:
    """What the decoder raised, as the client's error."""
    if isinstance(e, APIError):
        return e
    if isinstance(e, ShuttingDown):
        return _shutting_down()
    if isinstance(e, ValueError):  # the decoder's input checks (a prompt that does not fit ...)
        return APIError(400, " ".join(str(e).split()))
    if isinstance(e, OSError):  # reading the model from disk failed: say so, in one line
        log.error("generation failed: %s", e)
        return APIError(500, f"generation failed reading the model: {' '.join(str(e).split())}; "
                             "the server log has details", code="server_error")
    return _internal(e)


def _internal(e: BaseException) -> APIError:
    log.error("internal error (a bug in specdec):\n%s",
              "".join(traceback.format_exception(e)).rstrip())
    return APIError(500, f"internal error ({type(e).__name__}), a bug in specdec; the server log "
                         "has the traceback, please report it", code="server_error")


def _shutting_down() -> APIError:
    return APIError(503, "the server is shutting down; retry against a running server",
                    code="shutting_down")


async def _http_error(request: Request, exc: HTTPException):
    """The router's own errors (unknown path, wrong method) in OpenAI's shape."""
    routes = "GET /health, GET /v1/models, POST /v1/chat/completions, POST /v1/completions"
    what = {404: f"no such endpoint {request.url.path}; this server has {routes}",
            405: f"{request.method} is not allowed on {request.url.path}; this server has {routes}"}
    message = what.get(exc.status_code, exc.detail)
    return error_response(APIError(exc.status_code, message, headers=exc.headers))
