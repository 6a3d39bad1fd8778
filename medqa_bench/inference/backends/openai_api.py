"""Requests to an OpenAI-compatible server, for :mod:`medqa_bench.inference.backends.openai`: one request with its failure made
one line a user can act on (:meth:`ServerAPI.request`), answers read defensively (:func:`field`,
:func:`token_logprobs`), and many requests in flight at once (:meth:`ServerAPI.map`).

Timeouts and retries are the openai client's: ``retries`` retries with exponential backoff (0.5 s doubling to 8 s,
with jitter, honouring ``Retry-After``) after a timeout, a dropped connection, 408, 409, 429 or a 5xx; any other 4xx
fails at once. The API key is read from the environment (:data:`API_KEY_VARIABLES`) and sent in the Authorization
header only.
"""

from __future__ import annotations

import math
import os
import threading
from typing import Any, Callable, Sequence

from ...errors import BackendError
from . import OnResult

class RequestFailed(BackendError):
    """A request the server did not answer (``status`` None: a timeout, no connection) or refused (its HTTP status)."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


#: Where the API key is read from, first found wins. Never written to any output.
API_KEY_VARIABLES = ("MEDQA_BENCH_API_KEY", "OPENAI_API_KEY")


def api_key() -> str:
    """The API key from the environment; a placeholder for a server that checks none (vLLM without --api-key)."""
    return next((os.environ[v] for v in API_KEY_VARIABLES if os.environ.get(v)), "EMPTY")


class ServerAPI:
    """The server at ``base_url`` (its ``/v1``), asked with ``timeout`` seconds a request, ``retries`` retries and at
    most ``concurrency`` requests in flight."""

    def __init__(self, base_url: str, *, timeout: float, retries: int, concurrency: int):
        self.base_url, self.timeout, self.retries, self.concurrency = base_url.rstrip("/"), timeout, retries, concurrency
        self._client: Any = None

    @property
    def client(self) -> Any:
        if self._client is None:
            try:
                from openai import OpenAI
            except ImportError:
                raise BackendError("backend 'openai' needs the openai package: pip install 'medqa-bench[openai]'"
                                   ) from None
            self._client = OpenAI(base_url=self.base_url, api_key=api_key(), timeout=self.timeout,
                                  max_retries=self.retries)
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def request(self, method: str, path: str, body: dict[str, Any] | None, what: str, *,
                 retries: int | None = None) -> dict[str, Any]:
        """One request's JSON answer (a mapping), or a one-line :class:`BackendError` saying what went wrong."""
        import httpx
        import openai

        client = self.client if retries is None else self.client.with_options(max_retries=retries)
        url = path if "://" in path else self.base_url + path
        try:
            if method == "GET":
                response = client.get(path, cast_to=httpx.Response)
            else:
                response = client.post(path, body=body, cast_to=httpx.Response)
        except openai.APITimeoutError:
            raise RequestFailed(f"{what}: no answer from {url} within {self.timeout:g} s (tried "
                               f"{1 + (self.retries if retries is None else retries)} times); is the server "
                               "overloaded? raise --request-timeout or lower --concurrency") from None
        except openai.APIConnectionError as exc:
            cause = _one_line(str(exc.__cause__ or exc))
            raise RequestFailed(f"{what}: cannot reach the server at {url} ({cause}); is it running? check --base-url"
                               ) from None
        except openai.APIStatusError as exc:
            raise RequestFailed(f"{what}: the server answered {exc.status_code}: {_error_message(exc)}",
                                exc.status_code) from None
        try:
            data = response.json()
        except ValueError:
            raise BackendError(f"{what}: the server's answer is not JSON ({_one_line(response.text)[:120]!r}); is "
                               f"{self.base_url} an OpenAI-compatible API (its /v1 path)?") from None
        if not isinstance(data, dict):
            raise BackendError(f"{what}: the server's answer is not a JSON object but {type(data).__name__}")
        return data

    def map(self, requests: Sequence[Any], work: Callable[[Any], Any], desc: str, progress: bool,
             on_result: OnResult | None) -> list:
        """``work`` on every request, ``--concurrency`` at a time; ``on_result`` in this thread as each finishes. The
        first failure stops the rest (those not started are cancelled) and is raised."""
        from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait

        from ..nll import _progress

        out: list[Any] = [None] * len(requests)
        if not requests:
            return out
        bar = _progress(len(requests), f"{desc} at {self.base_url}", progress)
        failed = threading.Event()

        def guarded(r: Any) -> Any:  # after a failure, a worker starts no further request
            if failed.is_set():
                return None
            try:
                return work(r)
            except BaseException:
                failed.set()
                raise

        pool = ThreadPoolExecutor(max_workers=min(self.concurrency, len(requests)), thread_name_prefix="openai")
        pending = {pool.submit(guarded, r): i for i, r in enumerate(requests)}
        try:
            while pending:
                done, _ = wait(pending, return_when=FIRST_EXCEPTION)
                for future in done:
                    i = pending.pop(future)
                    out[i] = future.result()  # a failure is raised here, the rest cancelled below
                    if out[i] is None:
                        continue  # not started after another failed: that failure is raised next
                    if on_result is not None:
                        on_result(i, out[i])
                    bar.update(1)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
            bar.close()
        return out


def field(data: Any, what: str, *path: Any) -> Any:
    """``data[path[0]][path[1]]...``, or a one-line :class:`BackendError` naming the missing field."""
    value = data
    for k, key in enumerate(path):
        try:
            value = value[key]
        except (KeyError, IndexError, TypeError):
            where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path[: k + 1]).lstrip(".")
            raise BackendError(f"{what}: the server's answer has no {where}: not an OpenAI-compatible response"
                               ) from None
    return value


def token_logprobs(data: dict[str, Any], n: int) -> list[float | None]:
    """The log-probabilities of the ``n`` prompt tokens of an echo+logprobs answer (the first is None)."""
    what = "reading prompt log-probabilities"
    values = field(data, what, "choices", 0, "logprobs", "token_logprobs")
    if not isinstance(values, list) or len(values) < n:
        raise BackendError(f"{what}: choices[0].logprobs.token_logprobs holds "
                           f"{len(values) if isinstance(values, list) else 'no list'} values for {n} prompt tokens")
    values = values[:n]  # with max_tokens 1 the generated token comes after them
    bad = next((v for v in values[1:] if isinstance(v, bool) or not isinstance(v, (int, float)) or not
                math.isfinite(v) or v > 1e-6), "ok")
    if bad != "ok":
        raise BackendError(f"{what}: a prompt token's log-probability is {bad!r}, not a finite number <= 0")
    return values


def _error_message(exc: Any) -> str:
    """The server's own error message (the OpenAI error envelope, FastAPI's ``detail``), on one line."""
    body = getattr(exc, "body", None)  # the openai client keeps the envelope's "error" member, else the whole body
    if isinstance(body, dict):
        error = body.get("error")
        msg = (error.get("message") if isinstance(error, dict) else error) or body.get("message") or body.get("detail")
        if msg:
            return _one_line(str(msg))
    return _one_line(str(getattr(exc, "message", exc)))


def _one_line(text: str, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
