"""An OpenAI-compatible chat-completions server on the loopback interface (starlette + uvicorn, in a thread).

It answers our prompts by the rule judge's rule; the model name picks a behaviour:
  rule        the rule's answer, with usage
  nousage     the rule's answer without a usage field
  flaky       HTTP 503 on a request's first attempt, then the answer
  ratelimit   HTTP 429 (Retry-After: 0) on a request's first attempt, then the answer
  slow        the answer after `slow_s` seconds
  malformed   a body that is not JSON
  badshape    JSON without choices
  nonsense    a well-formed completion whose text is neither yes nor no
  echo        HTTP 401 with the request's Authorization header in the body
With `hold_after = N`, requests after the N-th answered one hang until `release()` and are then dropped.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
import time

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from sae.analysis.autointerp.judges.rule import rule_answer


def body_key(body: dict) -> str:
    """What identifies a request: its messages, model and answer settings."""
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


class Loopback:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.received: list[dict] = []  # every attempt: key, model, authorization header
        self.answered: list[str] = []  # keys of requests answered with a completion
        self.attempts: dict[str, int] = {}
        self.hold_after: int | None = None
        self.held = 0
        self.slow_s = 1.0
        self._release = threading.Event()
        app = Starlette(routes=[Route("/v1/chat/completions", self.chat, methods=["POST"])])
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def start(self) -> Loopback:
        self.thread.start()
        deadline = time.time() + 20
        while not self.server.started:
            if time.time() > deadline or not self.thread.is_alive():
                raise RuntimeError("the loopback server did not start")
            time.sleep(0.02)
        self.port = self.server.servers[0].sockets[0].getsockname()[1]
        return self

    def url(self, model: str = "rule") -> str:
        return f"openai:http://127.0.0.1:{self.port}/v1:{model}"

    def stop(self) -> None:
        self._release.set()
        self.server.should_exit = True
        self.thread.join(10)

    def reset(self) -> None:
        with self.lock:
            self.received.clear()
            self.answered.clear()
            self.attempts.clear()
            self.hold_after, self.held = None, 0
            self._release = threading.Event()

    def release(self) -> None:
        self._release.set()

    def _completion(self, body: dict, usage: bool = True) -> dict:
        text, verdicts = rule_answer(body["messages"])
        choice: dict = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
        if body.get("logprobs") and verdicts is not None and len(verdicts) == 1:
            first = "yes" if verdicts[0] else "no"
            other = "no" if verdicts[0] else "yes"
            choice["logprobs"] = {
                "content": [{"token": first, "logprob": -0.1, "top_logprobs": [
                    {"token": first, "logprob": -0.1}, {"token": other, "logprob": -2.4}, {"token": "Maybe", "logprob": -5.0}
                ]}]
            }  # fmt: skip
        out = {"id": "x", "object": "chat.completion", "model": body["model"], "choices": [choice]}
        if usage:
            prompt = sum(len(m["content"]) for m in body["messages"]) // 4
            out["usage"] = {"prompt_tokens": prompt, "completion_tokens": 2, "total_tokens": prompt + 2}
        return out

    async def chat(self, request: Request) -> Response:
        body = await request.json()
        key, model = body_key(body), body.get("model")
        with self.lock:
            self.received.append({"key": key, "model": model, "authorization": request.headers.get("authorization")})
            n = self.attempts[key] = self.attempts.get(key, 0) + 1
            hold = self.hold_after is not None and len(self.answered) >= self.hold_after
            if hold:
                self.held += 1
        if hold:
            while not self._release.is_set():
                await asyncio.sleep(0.02)
            return PlainTextResponse("dropped", status_code=503)
        if model == "flaky" and n == 1:
            return PlainTextResponse("upstream busy", status_code=503)
        if model == "ratelimit" and n == 1:
            return JSONResponse({"error": "slow down"}, status_code=429, headers={"Retry-After": "0"})
        if model == "slow":
            await asyncio.sleep(self.slow_s)
        if model == "malformed":
            return PlainTextResponse("this is not json", status_code=200)
        if model == "badshape":
            return JSONResponse({"object": "chat.completion", "choices": []})
        if model == "echo":
            return PlainTextResponse(f"bad key: {request.headers.get('authorization')}", status_code=401)
        if model == "nonsense":
            out = self._completion(body)
            out["choices"][0]["message"]["content"] = "Let me think.\nIt is hard to say."
        else:
            out = self._completion(body, usage=model != "nousage")
        with self.lock:
            self.answered.append(key)
        return JSONResponse(out)
