"""A judge behind any OpenAI-compatible chat-completions endpoint (vLLM, llama.cpp's server, Ollama, hosted APIs).

Requests go out `concurrency` at a time over one `httpx` client. A timeout, a connection error, HTTP 429 or
5xx, or a body that is not a chat completion is retried with exponential backoff (honouring Retry-After);
any other 4xx is refused at once. The API key is read from an environment variable and sent only as the
Authorization header: it is not part of the judge's name, identity or repr, and is masked in every error
message (a server may echo it).
"""

from __future__ import annotations

import math
import os
import random
import time
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any

import httpx

from sae.analysis.autointerp.judges.base import JudgeError, OnReply, Reply, Request

__all__ = ["OpenAIJudge"]

_SNIPPET = 300


def _p_yes(logprobs: Any) -> float | None:
    """P(yes) / (P(yes) + P(no)) from the first answer token's top_logprobs, None when neither is among them."""
    try:
        top = logprobs["content"][0]["top_logprobs"]
    except (KeyError, IndexError, TypeError):
        return None
    yes = no = 0.0
    for t in top if isinstance(top, list) else []:
        try:
            word, p = str(t["token"]).strip().lower(), math.exp(float(t["logprob"]))
        except (KeyError, TypeError, ValueError):
            continue
        if word == "yes":
            yes += p
        elif word == "no":
            no += p
    return yes / (yes + no) if yes + no > 0 else None


class OpenAIJudge:
    """`OpenAIJudge("http://127.0.0.1:8000/v1", "my-model")`: POSTs to `{base_url}/chat/completions`.

    `api_key_env` names the environment variable holding the key (unset or empty: no Authorization
    header, as local servers want). `logprobs=True` asks for the first token's top log-probabilities so
    single-passage scores get an AUROC (not every server supports it). `timeout` is per attempt, in seconds.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key_env: str | None = "OPENAI_API_KEY",
        concurrency: int = 8,
        timeout: float = 60.0,
        retries: int = 4,
        backoff: float = 1.0,
        max_wait: float = 60.0,
        temperature: float = 0.0,
        logprobs: bool = False,
    ) -> None:
        if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must start with http:// or https://, got {base_url!r}")
        if not isinstance(model, str) or not model:
            raise ValueError(f"model must be a non-empty name, got {model!r}")
        for name, v, lo in (("concurrency", concurrency, 1), ("retries", retries, 0)):
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise ValueError(f"{name} must be an integer >= {lo}, got {v!r}")
        for name, x in (("timeout", timeout), ("backoff", backoff), ("max_wait", max_wait)):
            if not isinstance(x, (int, float)) or not x >= 0 or (name == "timeout" and x == 0):
                raise ValueError(f"{name} must be a number of seconds > 0 (backoff, max_wait >= 0), got {x!r}")
        self.base_url = base_url.rstrip("/")
        self.url = self.base_url + "/chat/completions"
        self.model = model
        self.concurrency, self.timeout, self.retries = concurrency, float(timeout), retries
        self.backoff, self.max_wait = float(backoff), float(max_wait)
        self.temperature, self.logprobs = float(temperature), bool(logprobs)
        self.name = f"openai:{self.base_url}:{model}"
        self.identity = {
            "kind": "openai",
            "base_url": self.base_url,
            "model": model,
            "temperature": self.temperature,
            "logprobs": self.logprobs,
        }
        self.parallel = concurrency
        key = (os.environ.get(api_key_env, "") if api_key_env else "").strip()
        self._secret = key
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._client = httpx.Client(
            timeout=httpx.Timeout(self.timeout),
            headers=headers,
            limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency),
        )

    def __repr__(self) -> str:
        return f"OpenAIJudge(base_url={self.base_url!r}, model={self.model!r}, concurrency={self.concurrency})"

    def close(self) -> None:
        self._client.close()

    def _mask(self, text: str) -> str:
        return text.replace(self._secret, "***") if self._secret else text

    def _body(self, req: Request) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model,
            "messages": req.message_dicts(),
            "max_tokens": req.max_tokens,
            "temperature": self.temperature,
        }
        if self.logprobs and req.probs:
            body.update(logprobs=True, top_logprobs=10)
        return body

    def _parse(self, req: Request, r: httpx.Response) -> Reply:
        data = r.json()
        choice = data["choices"][0]
        text = choice["message"]["content"]
        if text is None:
            text = ""
        if not isinstance(text, str):
            raise ValueError(f"message content is {type(text).__name__}, expected text")
        usage = data.get("usage") or {}
        prompt = usage.get("prompt_tokens")
        completion = usage.get("completion_tokens")
        if not isinstance(prompt, int) or not isinstance(completion, int):  # no usage reported: estimate
            prompt = sum(len(c) for _, c in req.messages) // 4
            completion = len(text) // 4 + 1
        return Reply(text, prompt, completion, _p_yes(choice.get("logprobs")) if req.probs else None)

    def _wait(self, attempt: int, retry_after: str | None) -> float:
        if retry_after is not None:
            try:
                return min(self.max_wait, max(0.0, float(retry_after)))
            except ValueError:
                pass
        return min(self.max_wait, self.backoff * 2**attempt * random.uniform(0.75, 1.25))

    def ask(self, req: Request) -> Reply:
        """One request, retried as the class says; raises `JudgeError` naming the endpoint when it gives up."""
        body = self._body(req)
        reason = ""
        for attempt in range(self.retries + 1):
            retry_after = None
            try:
                r = self._client.post(self.url, json=body)
            except httpx.TimeoutException:
                reason = f"no answer within the {self.timeout:g} s timeout"
            except httpx.TransportError as e:
                reason = f"cannot connect ({type(e).__name__}: {e})"
            else:
                snippet = r.text[:_SNIPPET].replace("\n", " ")
                if r.status_code == 429 or r.status_code >= 500:
                    reason = f"HTTP {r.status_code}: {snippet}"
                    retry_after = r.headers.get("retry-after")
                elif r.status_code >= 400:
                    raise JudgeError(self._mask(f"the judge at {self.url} refused the request: HTTP {r.status_code}: {snippet}"))
                else:
                    try:
                        return self._parse(req, r)
                    except (ValueError, KeyError, IndexError, TypeError) as e:
                        reason = f"an answer that is not a chat completion ({type(e).__name__}: {e}): {snippet}"
            if attempt < self.retries:
                time.sleep(self._wait(attempt, retry_after))
        raise JudgeError(self._mask(f"the judge at {self.url} failed after {self.retries + 1} attempts: {reason}"))

    def answer(self, requests: Sequence[Request], on_reply: OnReply | None = None) -> list[Reply]:
        out: list[Reply | None] = [None] * len(requests)
        if not requests:
            return []
        pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix="judge")
        try:
            pending: dict[Future, int] = {pool.submit(self.ask, r): i for i, r in enumerate(requests)}
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                error = None
                for f in done:
                    i = pending.pop(f)
                    try:
                        reply = f.result()
                    except JudgeError as e:  # ends the batch, once the replies that did come back are handed on
                        error = e
                        continue
                    out[i] = reply
                    if on_reply is not None:
                        on_reply(i, reply)
                if error is not None:
                    raise error
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        return [r for r in out if r is not None]
