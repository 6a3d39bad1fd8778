"""The openai backend: a model behind an OpenAI-compatible server (vLLM, SGLang, a hosted API), asked over HTTP.

``--backend openai --base-url URL --served-model NAME`` (:class:`OpenAIBackend`). The server serves the weights;
this process holds only the model's tokenizer (``--model``, default the default model), which counts tokens, renders
the prompts the run records and splits prompt from completion for the NLL, exactly as the transformers backend does.
Its ids are checked against the server's own (vLLM's ``/tokenize``) before anything is asked.

- **Generation**: a chat-format row through ``/v1/chat/completions`` with the conversation
  (:func:`medqa_bench.data.chat_messages`; the server applies its chat template), a reference-template row through
  ``/v1/completions`` with the prompt's token ids; greedy (temperature 0) unless the decoding samples, ``max_tokens``
  the run's budget, ``stop`` the format's stop sequences. ``finish_reason`` "length" is a truncated answer; "stop" is
  a stop sequence when the server names it (vLLM's ``stop_reason``), else the end of turn. ``generated_tokens`` is the
  server's ``usage.completion_tokens``.
- **Completion NLL**: ``/v1/completions`` with the prompt+completion token ids, ``echo``, ``logprobs: 0`` and
  ``max_tokens: 0``: the log-probability of every prompt token. The completion's tokens are those after the prompt's
  (:func:`medqa_bench.inference.encode_pairs`) and a sequence longer than the context is scored in the same strided
  windows (:func:`medqa_bench.inference.nll_windows`), so the number is :mod:`medqa_bench.inference`'s definition.
  The context is ``--max-length`` or the server's ``max_model_len`` less one (the server generates one token even when
  asked for none). A server that gives no prompt log-probabilities (one probe request says so) loses the "nll"
  capability: the runner then refuses the NLL metrics, naming why, and runs without NLL when none is asked for.
- **Next-token log-probabilities** (the LLM judge's grade, :meth:`OpenAIBackend.next_token_logprobs`):
  ``/v1/completions`` with the prompt's token ids, ``max_tokens: 1`` and ``logprobs``, read at the one generated
  position. vLLM is asked for the wanted tokens by id (its ``logprob_token_ids``, with ``return_tokens_as_token_ids``),
  so each one's log-probability comes back whatever its rank; another server gives its top :data:`TOP_LOGPROBS`, and a
  wanted token outside them is None. One probe request says which; a server that gives neither loses the
  "next_token" capability (the judge then reads its generated text).
- **Requests** (:mod:`medqa_bench.inference.backends.openai_api`): ``--concurrency`` in flight (threads), each with
  ``--request-timeout`` seconds and ``--retries`` retries with exponential backoff after a timeout, a dropped
  connection, 408, 409, 429 or a 5xx; any other 4xx fails at once. A request that still fails stops the run with one
  line naming the row; what finished is in the cache already.
- **Adapters** are the server's LoRA modules: ``--adapter NAME=served:LORA`` (the prompt format is then the first
  baseline row's, or ``--prompt-format``), or ``--adapter NAME=served:LORA@FOLDER`` with the adapter's local folder:
  its recorded prompt format, training metadata and weight fingerprint are read from it (the server's copy is not
  checked against it).
- **Identity** (the cache key): the base URL, the name asked for, the server's version (``/version``) and
  ``system_fingerprint``, the ``/v1/models`` entry's ``root`` and ``parent``, the tokenizer's fingerprint, the adapter
  folder's fingerprint when given, the prompt format and quantization. A server reports no weight checksum: a server
  restarted on other weights under the same name and path must be run with ``--no-cache`` (or another cache).
- **The API key** comes from ``MEDQA_BENCH_API_KEY`` or ``OPENAI_API_KEY`` (a local server takes any); it is sent
  in the Authorization header and written nowhere.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

from ...errors import AdapterError, BackendError, SpecError
from . import GenerationRequest, NLLRequest, OnResult, count_tokens
from .openai_api import API_KEY_VARIABLES, RequestFailed, ServerAPI, api_key, field, token_logprobs  # noqa: F401 - re-exported
from .options import BackendOption

if TYPE_CHECKING:
    from ...data.dataset import Example
    from ...data.rag import Passage
    from ..systems import System

log = logging.getLogger(__name__)

#: ``--adapter NAME=served:LORA[@FOLDER]``: an adapter the server serves as the LoRA module LORA.
SERVED_PREFIX = "served:"
#: A text whose token ids are compared with the server's, and scored once to see whether it gives log-probabilities.
PROBE_TEXT = "What are the symptoms of influenza? Fever, cough and muscle aches."
#: Statuses with which a server refuses a request it does not support (echo, logprobs, token ids, max_tokens 0).
REFUSALS = (400, 404, 405, 422, 501)
#: Log-probabilities of the top tokens asked for at a generated position where a server cannot be asked for tokens by
#: id: 20 is the most OpenAI's API and vLLM's default ``--max-logprobs`` give.
TOP_LOGPROBS = 20


@dataclass(frozen=True)
class ServedAdapter:
    """An adapter as the server serves it: its LoRA module name, and optionally its local folder."""

    served: str
    folder: str | None = None

    @classmethod
    def parse(cls, name: str, value: str) -> "ServedAdapter":
        """``served:LORA`` or ``served:LORA@FOLDER``.

        >>> ServedAdapter.parse("ft", "served:symptoms@data/adapters/x")
        ServedAdapter(served='symptoms', folder='data/adapters/x')
        """
        if not value.startswith(SERVED_PREFIX):
            raise AdapterError(f"adapter '{name}': with --backend openai an adapter is one the server serves: --adapter "
                               f"{name}=served:LORA, or {name}=served:LORA@FOLDER with its local folder (for its "
                               f"recorded prompt format and fingerprint); not '{value}'")
        served, _, folder = value[len(SERVED_PREFIX):].partition("@")
        if not served.strip():
            raise AdapterError(f"adapter '{name}': '{value}' names no LoRA module; use served:LORA[@FOLDER]")
        return cls(served.strip(), folder.strip() or None)


def _check_base_url(url: str) -> str | None:
    if not re.match(r"https?://[^/\s]+", url):
        return f"base_url must be an http:// or https:// URL, e.g. http://127.0.0.1:8000/v1; not {url!r}"
    if "@" in url.split("://", 1)[1].split("/", 1)[0]:
        return ("base_url holds credentials (user:password@host): they would be written into results.json; give the "
                "API key in OPENAI_API_KEY (or MEDQA_BENCH_API_KEY) instead")
    return None


#: The options of ``--backend openai`` (``RunSpec.backend_options``; flags ``--base-url`` ...).
OPTIONS = (
    BackendOption("base_url", str, None, "the server's OpenAI-compatible API, e.g. http://127.0.0.1:8000/v1 (the API "
                  "key comes from OPENAI_API_KEY or MEDQA_BENCH_API_KEY)", "URL", _check_base_url, required=True,
                  about="names a server"),
    BackendOption("served_model", str, None, "the base model's name on the server (its /v1/models id); --model "
                  "still names its tokenizer (for token counts and NLL)", "NAME", required=True,
                  about="names a model on a server"),
    BackendOption("concurrency", int, 8, "requests in flight at once", "N",
                  lambda n: None if n >= 1 else f"concurrency must be a positive number of requests, not {n}",
                  placement=True),
    BackendOption("request_timeout", float, 300.0, "how long one request may take before it is retried", "SECONDS",
                  lambda t: None if t > 0 else f"request_timeout must be a positive number of seconds, not {t}",
                  placement=True),
    BackendOption("retries", int, 4, "retries of a request after a timeout, a dropped connection, 429 or 5xx, with "
                  "exponential backoff", "N", lambda n: None if n >= 0 else f"retries must be >= 0, not {n}",
                  placement=True),
)


class OpenAIBackend:
    """A model served behind an OpenAI-compatible API; see the module docstring.

    ``spec`` gives the tokenizer's model (``model``) and the rows to plan, and in ``backend_options`` (:data:`OPTIONS`)
    ``base_url``, ``served_model`` and the request settings (``concurrency``, ``request_timeout``, ``retries``);
    ``adapters`` maps adapter names to ``served:LORA[@FOLDER]``.
    """

    name = "openai"
    options = OPTIONS
    #: What it can do with a server that gives prompt log-probabilities; an instance drops "nll" when its does not.
    capabilities = frozenset({"generate", "nll", "adapters", "next_token"})
    #: Its adapters are the server's, so a run adds no shipped adapter folder by default.
    loads_adapter_folders = False
    #: The server chooses the weights: every row records this quantization, and why.
    served_quantization = ("served", "the server's weights, whatever it loaded",
                           "the user's (the server's weights are not checked)")

    @classmethod
    def check_spec(cls, spec: Any) -> None:
        """What else of a spec this backend refuses before anything loads (a :class:`SpecError`, or an
        :class:`AdapterError` for an adapter that is not ``served:LORA[@FOLDER]``)."""
        if spec.quantization == "4bit":
            raise SpecError("quantization '4bit' is chosen by the server, not by the client: serve a quantized model "
                            "instead, or leave --quantization out (or 'none' to record that the server runs "
                            "unquantized weights)")
        for name, value in spec.adapters:
            ServedAdapter.parse(name, value)

    def __init__(self, spec: Any, *, ranks: Any = None):
        opts = spec.backend_options
        if not opts.get("base_url") or not opts.get("served_model"):
            raise BackendError("backend 'openai' needs --base-url URL and --served-model NAME")
        if spec.decoding is not None and spec.decoding.no_repeat_ngram_size:
            raise BackendError("--no-repeat-ngram-size is a transformers generation option that OpenAI-compatible "
                               "servers do not take; leave it out with --backend openai")
        self.spec, self.ranks = spec, ranks
        self.base_url, self.served_model = opts["base_url"].rstrip("/"), opts["served_model"]
        self.adapters: dict[str, ServedAdapter] = {}  # the rows' adapters (load), by adapter name
        self.device = "server"  # not CUDA here: the automatic --limit is a CPU's sample
        self.capabilities = type(self).capabilities
        #: Why a capability is missing (the runner's refusal quotes it).
        self.limitations: dict[str, str] = {}
        self._tokenizer: Any = None
        self.api = ServerAPI(self.base_url, timeout=opts["request_timeout"], retries=opts["retries"],
                             concurrency=opts["concurrency"])
        self._models: dict[str, dict[str, Any]] = {}  # /v1/models entries by id
        self._server: dict[str, Any] = {}  # version, system_fingerprint, tokenizer check
        self._infos: dict[str, Any] = {}  # adapter name -> AdapterInfo of its local folder
        self._messages: dict[str, list[dict[str, str]]] = {}  # a rendered chat prompt -> the conversation it renders
        self._score_max_tokens = 0
        self._tokens_by_id = False  # next-token log-probabilities asked for by token id (vLLM's extension)

    # ------------------------------------------------------------------------------------------ the server

    @property
    def tokenizer(self) -> Any:
        """The served model's tokenizer, from ``--model`` (no weights)."""
        if self._tokenizer is None:
            from ..models import load_tokenizer, resolve_model

            self._source = resolve_model(self.spec.model)
            self._tokenizer = load_tokenizer(self._source)
        return self._tokenizer

    def _connect(self) -> None:
        """Ask the server what it serves and check the run's names against it; probe its prompt log-probabilities."""
        what = f"listing the models of {self.base_url}"
        data = self.api.request("GET", "/models", None, what, retries=min(1, self.api.retries))
        entries = data.get("data")
        if not isinstance(entries, list) or not all(isinstance(e, dict) and isinstance(e.get("id"), str)
                                                    for e in entries):
            raise BackendError(f"{what}: the answer is not an OpenAI model list ({{'data': [{{'id': ...}}, ...]}})")
        self._models = {e["id"]: e for e in entries}
        self._check_served(self.served_model, "--served-model", "serve it (vLLM: --served-model-name NAME)")
        for name, adapter in self.adapters.items():
            self._check_served(adapter.served, f"adapter '{name}'",
                               f"serve it (vLLM: --enable-lora --lora-modules {adapter.served}=PATH)")
            parent = self._models[adapter.served].get("parent")
            if parent is not None and parent != self.served_model:
                raise BackendError(f"adapter '{name}': the server serves LoRA '{adapter.served}' on '{parent}', not on "
                                   f"--served-model '{self.served_model}'")
        root = re.sub(r"/v1$", "", self.base_url)
        try:
            self._server["version"] = self.api.request("GET", root + "/version", None, "version", retries=0).get("version")
        except BackendError:
            self._server["version"] = None  # not every server has vLLM's /version
        self._check_tokenizer(root)
        self._probe_logprobs()
        self._probe_next_token()

    def _check_served(self, served: str, who: str, how: str) -> None:
        if served in self._models:
            return
        import difflib

        near = difflib.get_close_matches(served, list(self._models), n=1)
        raise BackendError(f"{who}: the server at {self.base_url} serves no model '{served}'"
                           + (f"; did you mean '{near[0]}'?" if near else "")
                           + f" (it serves: {', '.join(self._models) or 'nothing'}); name one of those, or {how}")

    def _check_tokenizer(self, root: str) -> None:
        """The local tokenizer must give the server's ids (vLLM's ``/tokenize``; a server without it is trusted)."""
        import httpx
        import openai

        local = self.tokenizer(PROBE_TEXT, add_special_tokens=True)["input_ids"]
        try:
            response = self.api.client.with_options(max_retries=0).post(
                root + "/tokenize", body={"model": self.served_model, "prompt": PROBE_TEXT}, cast_to=httpx.Response)
            served = response.json().get("tokens")
        except (openai.OpenAIError, ValueError, AttributeError):
            served = None
        if not isinstance(served, list):
            self._server["tokenizer_check"] = "not checked (the server has no /tokenize)"
            return
        if served != local:
            raise BackendError(f"the server tokenizes differently from --model '{self.spec.model}' (ids of a probe "
                               f"text: server {served[:8]}..., local {local[:8]}...); give --model the served model's "
                               "tokenizer (its folder or Hub id)")
        self._server["tokenizer_check"] = "the server's /tokenize ids equal --model's"

    def _probe_logprobs(self) -> None:
        """Score :data:`PROBE_TEXT` once: prompt log-probabilities (NLL) or not, and the server's fingerprint."""
        ids = self.tokenizer(PROBE_TEXT, add_special_tokens=True)["input_ids"]
        reason = ""
        for max_tokens in (0, 1):  # 0: nothing generated; some servers want at least 1 (the lists are cut to the ids)
            try:
                data = self.api.request("POST", "/completions", self._score_body(self.served_model, ids, max_tokens),
                                        "probing prompt log-probabilities")
                token_logprobs(data, len(ids))
            except RequestFailed as exc:
                if exc.status not in REFUSALS:  # no answer, a server error or a wrong key: not an answer about logprobs
                    raise
                reason = str(exc).split(": ", 1)[-1]
                continue
            except BackendError as exc:  # an answer without the log-probabilities
                reason = str(exc).split(": ", 1)[-1]
                continue
            self._score_max_tokens = max_tokens
            self._server["system_fingerprint"] = data.get("system_fingerprint")
            return
        self.capabilities = self.capabilities - {"nll"}
        self.limitations["nll"] = (f"the server at {self.base_url} gives no prompt log-probabilities (/v1/completions "
                                   f"with echo and logprobs: {reason})")
        log.warning("%s; completion NLL cannot be scored", self.limitations["nll"])
        try:  # its fingerprint, from one generated token
            data = self.api.request("POST", "/completions", {"model": self.served_model, "prompt": PROBE_TEXT,
                                                             "max_tokens": 1, "temperature": 0}, "probing generation")
            self._server["system_fingerprint"] = data.get("system_fingerprint")
        except BackendError:
            self._server["system_fingerprint"] = None

    def _probe_next_token(self) -> None:
        """Ask once for a generated token's log-probabilities: by token id (vLLM), else the top-k, else none (the
        server loses the "next_token" capability)."""
        ids = self.tokenizer(PROBE_TEXT, add_special_tokens=True)["input_ids"]
        reason = ""
        for by_id in (True, False):
            body = self._next_token_body(self.served_model, ids, ids[-1:], by_id)
            try:
                answer = self.api.request("POST", "/completions", body, "probing next-token log-probabilities")
                top = _top_logprobs(answer)
            except RequestFailed as exc:
                if exc.status not in REFUSALS:
                    raise
                reason = str(exc).split(": ", 1)[-1]
                continue
            except BackendError as exc:
                reason = str(exc).split(": ", 1)[-1]
                continue
            # a server that ignores the extension names its tokens by text, not "token_id:N"
            self._tokens_by_id = by_id and any(k.startswith("token_id:") for k in top)
            return
        self.capabilities = self.capabilities - {"next_token"}
        self.limitations["next_token"] = (f"the server at {self.base_url} gives no log-probabilities of a generated "
                                          f"token (/v1/completions with logprobs: {reason})")
        log.info("%s; the LLM judge reads its generated text", self.limitations["next_token"])

    # ------------------------------------------------------------------------------------------ the rows

    def load(self, systems: "Sequence[System]") -> None:
        """Read each adapter's local folder (its fingerprint, for the cache key), then connect: the server must
        serve the base model and every adapter, on that base, and give the local tokenizer's ids."""
        from ..models import read_adapter

        self.adapters = {s.adapter_name: ServedAdapter.parse(s.adapter_name, s.adapter) for s in systems
                         if s.kind == "adapter"}
        self._infos = {n: read_adapter(n, a.folder) for n, a in self.adapters.items() if a.folder}
        self._connect()

    def close(self) -> None:
        self.api.close()

    def served_name(self, system: "System") -> str:
        """The model name a request of ``system`` asks for: the base's, or its adapter's LoRA module."""
        return self.adapters[system.adapter_name].served if system.adapter_name else self.served_model

    def identity(self, system: "System") -> dict[str, Any]:
        served = self.served_name(system)
        entry = self._models.get(served, {})
        info = self._infos.get(system.adapter_name) if system.adapter_name else None
        out = {
            "backend": self.name,
            "base_url": self.base_url,
            "served_model": served,
            "root": entry.get("root"),
            "parent": entry.get("parent"),
            "server_version": self._server.get("version"),
            "system_fingerprint": self._server.get("system_fingerprint"),
            "tokenizer": self._source.fingerprint,
            "adapter": info.fingerprint if info else None,
            "quantization": system.quantization,
            "prompt_format": system.prompt_format,
        }
        if system.retrieval is not None:
            out["retrieval"] = system.retrieval.to_dict()
        return out

    @property
    def max_length(self) -> int:
        if self.spec.max_length:
            return self.spec.max_length
        served = self._models.get(self.served_model, {}).get("max_model_len")
        if isinstance(served, int) and served > 2:
            return served - 1  # the server generates one token even when asked for none
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(self._source.location)
        return int(getattr(config, "max_position_embeddings", None) or 2048)

    def describe(self) -> dict[str, dict[str, Any]]:
        entry = self._models.get(self.served_model, {})
        return {self.served_model: {
            "reference": self.served_model,
            "backend": self.name,
            "base_url": self.base_url,
            "served_model": self.served_model,
            "root": entry.get("root"),
            "max_model_len": entry.get("max_model_len"),
            "server_version": self._server.get("version"),
            "system_fingerprint": self._server.get("system_fingerprint"),
            "tokenizer": self._source.to_dict(),
            "tokenizer_check": self._server.get("tokenizer_check"),
            "quantization": self.spec.quantization or "served",
            "prompt_logprobs": "nll" in self.capabilities,
            "next_token_logprobs": ("by token id" if self._tokens_by_id else f"top {TOP_LOGPROBS}")
                                   if "next_token" in self.capabilities else None,
        }}

    def describe_row(self, system: "System") -> dict[str, Any]:
        """What the server serves a row as: the model name its requests ask for, and the server's root and parent."""
        served = self.served_name(system)
        entry = self._models.get(served, {})
        return {"served_as": {"model": served, "root": entry.get("root"), "parent": entry.get("parent")}}

    #: NLL is computed in whatever dtype the server runs.
    compute_dtype = "the server's"

    # ------------------------------------------------------------------------------------------ text

    def render(self, example: "Example", system: "System", passages: "Sequence[Passage] | None" = None) -> str:
        from ...data.dataset import chat_messages
        from ...data.rag import rag_chat_example, rag_prompt

        if system.retrieval is not None:
            text = rag_prompt(example, system.prompt_format, self.tokenizer, passages or ())
            asked = rag_chat_example(example, passages or ())
        else:
            text, asked = example.prompt(system.prompt_format, self.tokenizer), example
        if system.prompt_format == "chat":
            self._messages[text] = chat_messages(asked)  # what the chat endpoint is sent for this prompt
        return text

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        return count_tokens(self.tokenizer, texts)

    # ------------------------------------------------------------------------------------------ inference

    def generate(self, requests: Sequence[GenerationRequest], *, progress: bool = False,
                 on_result: OnResult | None = None) -> list:
        return self.api.map(requests, self._generate_one, f"generate ({self.served_model})", progress, on_result)

    def _generate_one(self, r: GenerationRequest) -> Any:
        from ..decoding import Generation

        d, fmt = r.decoding, r.system.prompt_format
        stops = list(d.stop_sequences(fmt))
        body: dict[str, Any] = {"model": self.served_name(r.system), "max_tokens": d.max_new_tokens,
                                "temperature": d.temperature if d.do_sample else 0.0}
        if d.do_sample:
            body.update(top_p=d.top_p, seed=d.seed)
        if d.repetition_penalty != 1.0:
            body["repetition_penalty"] = d.repetition_penalty  # vLLM's sampling parameter; others may refuse it
        if stops:
            body["stop"] = stops
        what = f"generating for {r.system.name}"
        if fmt == "chat":
            if r.prompt not in self._messages:
                raise BackendError(f"{what}: a chat prompt this backend did not render")
            data = self.api.request("POST", "/chat/completions", {**body, "messages": self._messages[r.prompt]}, what)
            text = field(data, what, "choices", 0, "message", "content")
        else:
            ids = self.tokenizer(r.prompt, add_special_tokens=True)["input_ids"]  # as generation.generate tokenises
            data = self.api.request("POST", "/completions", {**body, "prompt": ids}, what)
            text = field(data, what, "choices", 0, "text")
        choice = field(data, what, "choices", 0)
        finish = choice.get("finish_reason")
        tokens = field(data, what, "usage", "completion_tokens")
        if not isinstance(text, str) or not isinstance(tokens, int) or finish not in ("stop", "length"):
            raise BackendError(f"{what}: the server's answer lacks a text, usage.completion_tokens or a finish_reason "
                               f"of stop or length (finish_reason {finish!r})")
        cut = min((text.find(s) for s in stops if s and s in text), default=-1)  # a server that echoes the stop
        if finish == "length":
            return Generation(text.strip(), tokens, True, "length")
        named = isinstance(choice.get("stop_reason"), str) or cut >= 0  # vLLM names the stop sequence that ended it
        return Generation((text[:cut] if cut >= 0 else text).strip(), tokens, False, "stop" if named else "eos")

    def completion_nll(self, requests: Sequence[NLLRequest], *, progress: bool = False,
                       on_result: OnResult | None = None) -> list:
        if "nll" not in self.capabilities:
            raise BackendError(self.limitations.get("nll", "the server gives no prompt log-probabilities"))
        from ..nll import encode_pairs

        pairs = encode_pairs(self.tokenizer, [r.prompt for r in requests], [r.completion for r in requests])
        by_request = {id(r): pair for r, pair in zip(requests, pairs)}
        return self.api.map(requests, lambda r: self._nll_one(r, *by_request[id(r)]), f"nll ({self.served_model})",
                            progress, on_result)

    def _nll_one(self, r: NLLRequest, ctx: list[int], cont: list[int]) -> Any:
        from ..nll import CompletionNLL, nll_windows

        seq, length = ctx + cont, self.max_length
        total, count = 0.0, 0
        for begin, end, start in nll_windows(len(ctx), len(seq), length, max(1, length // 2)):
            data = self.api.request("POST", "/completions", self._score_body(self.served_name(r.system), seq[begin:end],
                                                                          self._score_max_tokens),
                                 f"scoring NLL for {r.system.name}")
            logprobs = token_logprobs(data, end - begin)
            part = logprobs[start - begin:]
            total -= math.fsum(part)
            count += len(part)
        return CompletionNLL(total, count)

    def next_token_logprobs(self, requests: Sequence[Any], *, progress: bool = False,
                            on_result: OnResult | None = None) -> list:
        if "next_token" not in self.capabilities:
            raise BackendError(self.limitations.get("next_token", "the server gives no next-token log-probabilities"))
        return self.api.map(requests, self._next_token_one, f"next-token log-probabilities ({self.served_model})",
                            progress, on_result)

    def _next_token_one(self, r: Any) -> Any:
        from . import NextTokenLogprobs, next_token_ids

        ids, wanted = next_token_ids(self.tokenizer, r.prompt, r.tokens)
        data = self.api.request("POST", "/completions",
                                self._next_token_body(self.served_name(r.system), ids, wanted, self._tokens_by_id),
                                f"next-token log-probabilities for {r.system.name}")
        top = _top_logprobs(data)
        out: dict[str, float | None] = {}
        for token, k in zip(r.tokens, wanted):
            value = top.get(f"token_id:{k}") if self._tokens_by_id else top.get(self.tokenizer.decode([k]))
            out[token] = float(value) if value is not None else None
        return NextTokenLogprobs(out)

    @staticmethod
    def _next_token_body(model: str, ids: list[int], wanted: list[int], by_id: bool) -> dict[str, Any]:
        body: dict[str, Any] = {"model": model, "prompt": ids, "max_tokens": 1, "temperature": 0.0,
                                "logprobs": TOP_LOGPROBS}
        if by_id:
            body.update(logprob_token_ids=list(wanted), return_tokens_as_token_ids=True)
        return body

    @staticmethod
    def _score_body(model: str, ids: list[int], max_tokens: int) -> dict[str, Any]:
        return {"model": model, "prompt": ids, "echo": True, "logprobs": 0, "max_tokens": max_tokens,
                "temperature": 0.0}

    def batches(self, kind: str, requests: Sequence[Any]) -> list[list[int]]:
        return [[i] for i in range(len(requests))]  # every request stands alone; the server batches



def _top_logprobs(data: dict[str, Any]) -> dict[str, float]:
    """The top log-probabilities of the first generated token (``choices[0].logprobs.top_logprobs[0]``), checked."""
    what = "reading next-token log-probabilities"
    top = field(data, what, "choices", 0, "logprobs", "top_logprobs", 0)
    if not isinstance(top, dict) or not top:
        raise BackendError(f"{what}: choices[0].logprobs.top_logprobs[0] is {type(top).__name__}, not a mapping of "
                           "tokens to log-probabilities")
    bad = next((v for v in top.values() if isinstance(v, bool) or not isinstance(v, (int, float)) or math.isnan(v)
                or v > 1e-6), "ok")
    if bad != "ok":
        raise BackendError(f"{what}: a log-probability is {bad!r}, not a number <= 0")
    return top
