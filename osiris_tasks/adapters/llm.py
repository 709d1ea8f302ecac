"""The LLM backend for any server that speaks OpenAI's Chat Completions API: Ollama, vLLM,
llama.cpp's server, LM Studio, OpenAI (`OSIRIS_LLM_BACKEND=openai`).

`ChatCompletionsBackend` answers the three LLM nodes with the same methods as the Osiris
sidecar's client (`generate`, `propose_trade_adjustments`, `score`), so the nodes do not know
which backend they call. Each call is one `POST {base_url}/chat/completions` through a
`SidecarClient` pointed at that server: the same timeouts, retry budget, Retry-After on
429/503, circuit breaker and error tree, and the bearer key scrubbed from every error.

Structured output: the proposal's JSON Schema (`proposal_schema`, the batch's symbols as the
ticker's enum) goes as `response_format` `json_schema` (strict), the evaluators' with schemas
of their own. A server that refuses that form — llama.cpp's answers HTTP 500 to `json_schema`
and takes `{"type": "json_object", "schema": ...}` — is asked the next way down
(`json_schema` -> `json_object` -> the prompt alone) at once, not retried until the budget is
gone, and that is remembered for the server. Whatever comes back is still validated by the
tolerant parser: structured output narrows what a model says, it does not replace the checks.

What is not a usable answer is an error, never a trade: `finish_reason: "length"` (cut
short), a refusal, no choices, a body that is not JSON, a score outside [0, 1]. A 401 or 403
is not retried, and its message names the setting to fix.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from osiris_tasks.adapters.completions import CompletionCache
from osiris_tasks.adapters.sidecar import CircuitBreaker, SidecarClient
from osiris_tasks.domain.numbers import finite_number
from osiris_tasks.domain.proposal import ASSESSMENT_SCHEMA, SCORE_SCHEMA, proposal_schema
from osiris_tasks.errors import SidecarError, SidecarResponseError, SidecarStatusError
from osiris_tasks.settings import LLM_STRUCTURED_MODES, Settings

__all__ = ["ChatCompletionsBackend", "ROLE_MARKER"]

logger = logging.getLogger(__name__)

CHAT_PATH = "/chat/completions"
# The first line of each system message names the role, so a log, a proxy or the reference
# server can tell the three kinds of call apart.
ROLE_MARKER = "osiris-role: "
SYSTEM_PROMPTS = {
    "proposal": "You are the Osiris trading policy. Answer with one JSON object only.",
    "assessment": (
        "You are Hermes, a risk analyst. Assess the trade proposal below in two or three "
        'sentences: is it reasonable, what could go wrong. Answer as JSON: {"assessment": "..."}.'
    ),
    "score": (
        "You are Hermes, a risk analyst. Score the trade proposal below from 0 (reject) to 1 "
        'in the context given. Answer as JSON: {"score": <number>}.'
    ),
}
# Statuses with which a server may refuse a `response_format` it does not support.
REFUSING_STATUSES = frozenset({400, 415, 422, 500, 501})
AUTH_STATUSES = frozenset({401, 403})


class ChatCompletionsBackend:
    """The three LLM calls of a run, on an OpenAI-compatible Chat Completions server."""

    # Per server (base URL): the structured-output modes it refused, shared by every backend
    # of this process.
    _refused: dict[str, set[str]] = {}
    _refused_lock = threading.Lock()

    def __init__(
        self,
        client: SidecarClient,
        *,
        model: str,
        eval_model: str | None = None,
        structured: str = LLM_STRUCTURED_MODES[0],
        temperature: float = 0.0,
        seed: int | None = None,
        max_tokens: int = 512,
    ):
        self._client = client
        self._model = model
        self._eval_model = eval_model or model
        self._modes = LLM_STRUCTURED_MODES[LLM_STRUCTURED_MODES.index(structured) :]
        self._sampling = {"temperature": temperature, "max_tokens": max_tokens}
        if seed is not None:
            self._sampling["seed"] = seed

    @property
    def cache(self) -> CompletionCache:
        """The completion cache of the three calls (its client's)."""
        return self._client.cache

    @classmethod
    def from_settings(
        cls, settings: Settings, cache: CompletionCache | None = None
    ) -> ChatCompletionsBackend:
        """A backend for `settings`' `OSIRIS_LLM_*`, with the sidecar's timeouts and budget."""
        client = SidecarClient(
            settings.llm_base_url,
            token=settings.llm_api_key,
            connect_timeout_s=settings.sidecar_connect_timeout_s,
            read_timeout_s=settings.sidecar_read_timeout_s,
            max_attempts=settings.sidecar_max_attempts,
            retry_budget_s=settings.sidecar_retry_budget_s,
            breaker=CircuitBreaker(settings.breaker_threshold, settings.breaker_reset_s),
            cache=cache,
        )
        return cls(
            client,
            model=settings.llm_model,
            eval_model=settings.llm_eval_model_or_default,
            structured=settings.llm_structured,
            temperature=settings.llm_temperature,
            seed=settings.llm_seed,
            max_tokens=settings.llm_max_tokens,
        )

    def __repr__(self) -> str:
        return f"ChatCompletionsBackend({self._client.base_url!r}, model={self._model!r})"

    @property
    def breaker(self) -> CircuitBreaker:
        """The circuit breaker guarding this backend's calls."""
        return self._client.breaker

    # -- the three calls ------------------------------------------------------------------

    def generate(
        self,
        prompt: str,
        *,
        max_length: int,
        symbols: Sequence[str] = (),
        run_id: str | None = None,
        calls: list[dict] | None = None,
    ) -> dict[str, Any]:
        """A proposal's completion, as the sidecar's body shape (`{"output": text}`)."""
        schema = proposal_schema(symbols) if symbols else None
        text = self._complete("proposal", self._model, prompt, schema, run_id, calls)
        return {"output": text}

    def propose_trade_adjustments(
        self,
        prompt: str,
        *,
        max_length: int,
        run_id: str | None = None,
        calls: list[dict] | None = None,
    ) -> dict[str, Any]:
        """Hermes' assessment of the proposal in `prompt` (its JSON)."""
        text = self._complete(
            "assessment", self._eval_model, prompt, ASSESSMENT_SCHEMA, run_id, calls
        )
        answer = _json_object(text)
        assessment = answer.get("assessment") if answer else text.strip()
        if not isinstance(assessment, str) or not assessment:
            raise SidecarResponseError(f"LLM {CHAT_PATH} answered no assessment", run_id=run_id)
        return {"hermes_assessment": assessment, "transaction_id": None}

    def score(
        self,
        proposal: dict,
        context: str,
        *,
        run_id: str | None = None,
        calls: list[dict] | None = None,
    ) -> float:
        """Hermes' score of `proposal` in `context`, a finite number in [0, 1]."""
        prompt = f"PROPOSAL {orjson.dumps(proposal).decode()}\nCONTEXT\n{context}"
        text = self._complete("score", self._eval_model, prompt, SCORE_SCHEMA, run_id, calls)
        value = (_json_object(text) or {}).get("score")
        number = finite_number(value)
        if number is None or not 0 <= number <= 1:
            raise SidecarResponseError(
                f"LLM {CHAT_PATH} answered a score that is not a number in [0, 1]: {value!r}",
                run_id=run_id,
            )
        return number

    def reset_after_fork(self) -> None:
        self._client.reset_after_fork()

    def close(self) -> None:
        self._client.close()

    # -- one completion -------------------------------------------------------------------

    def _complete(
        self,
        role: str,
        model: str,
        prompt: str,
        schema: Mapping | None,
        run_id: str | None,
        calls: list[dict] | None,
    ) -> str:
        """The assistant's text for `prompt`, from the completion cache or asked in the first
        structured mode this server has not refused; the call (with the server's token usage)
        is appended to `calls`. The cache's key is the request as first asked (messages,
        sampling, schema), whichever mode the server ends up answering."""
        first = self._payload(role, model, prompt, "json_schema" if schema else "none", schema)
        return self._client.cache.complete(
            backend="openai",
            model=model,
            role=role,
            request={k: v for k, v in first.items() if k != "model"},
            ask=lambda: self._ask(role, model, prompt, schema, run_id),
            calls=calls,
            run_id=run_id,
        )

    def _ask(
        self, role: str, model: str, prompt: str, schema: Mapping | None, run_id: str | None
    ) -> tuple[str, Any]:
        """The server's answer to `prompt` and its usage, asked in the first structured mode
        this server has not refused."""
        for mode in self._usable_modes(schema):
            payload = self._payload(role, model, prompt, mode, schema)
            try:
                body = self._client.post_json(
                    CHAT_PATH, payload, run_id=run_id, give_up=_refuses_format(mode)
                )
            except SidecarStatusError as exc:
                if exc.status in AUTH_STATUSES:
                    raise _auth_error(exc, run_id) from exc
                if _refuses_format(mode)(exc):
                    self._remember_refused(mode)
                    logger.warning(
                        "run_id=%s LLM server %s refused response_format %s; asking with %s",
                        run_id,
                        self._client.base_url,
                        mode,
                        "the next form",
                    )
                    continue
                raise
            return _assistant_text(body, run_id), body.get("usage")
        raise SidecarResponseError("LLM server refused every response_format", run_id=run_id)

    def _usable_modes(self, schema: Mapping | None) -> list[str]:
        if schema is None:
            return ["none"]
        with self._refused_lock:
            refused = self._refused.get(self._client.base_url, set())
            return [mode for mode in self._modes if mode not in refused] or ["none"]

    def _remember_refused(self, mode: str) -> None:
        with self._refused_lock:
            self._refused.setdefault(self._client.base_url, set()).add(mode)

    def _payload(
        self, role: str, model: str, prompt: str, mode: str, schema: Mapping | None
    ) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "model": model,
            "messages": [
                {"role": "system", "content": f"{ROLE_MARKER}{role}\n{SYSTEM_PROMPTS[role]}"},
                {"role": "user", "content": prompt},
            ],
            **self._sampling,
        }
        if mode == "json_schema":
            payload["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": role, "strict": True, "schema": schema},
            }
        elif mode == "json_object":
            payload["response_format"] = {"type": "json_object", "schema": schema}
        return payload


def _refuses_format(mode: str):
    """For a structured `mode`: whether an error says the server refuses that form (not
    retried: it would answer every retry the same way)."""

    def refuses(exc: SidecarError) -> bool:
        return (
            mode != "none"
            and isinstance(exc, SidecarStatusError)
            and exc.status in REFUSING_STATUSES
            and ("response_format" in exc.message or "json_schema" in exc.message)
        )

    return refuses


def _auth_error(exc: SidecarStatusError, run_id: str | None) -> SidecarStatusError:
    return SidecarStatusError(
        f"{exc.message} (check OSIRIS_LLM_API_KEY or OPENAI_API_KEY)",
        status=exc.status,
        run_id=run_id,
    )


def _assistant_text(body: Mapping[str, Any], run_id: str | None) -> str:
    """The first choice's text, or `SidecarResponseError` for an answer that is no answer."""
    choices = body.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise SidecarResponseError(f"LLM {CHAT_PATH} answered no choices", run_id=run_id)
    choice = choices[0]
    message = choice.get("message") if isinstance(choice.get("message"), dict) else {}
    if message.get("refusal"):
        raise SidecarResponseError(
            f"LLM {CHAT_PATH} refused: {str(message['refusal'])[:200]}", run_id=run_id
        )
    if choice.get("finish_reason") == "length":
        raise SidecarResponseError(
            f"LLM {CHAT_PATH} answer cut short (finish_reason length; raise OSIRIS_LLM_MAX_TOKENS)",
            run_id=run_id,
        )
    content = message.get("content")
    if not isinstance(content, str) or not content.strip():
        raise SidecarResponseError(f"LLM {CHAT_PATH} answered no content", run_id=run_id)
    return content


def _json_object(text: str) -> dict[str, Any] | None:
    """`text` as a JSON object, or None."""
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None
