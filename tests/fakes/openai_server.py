"""A fake OpenAI-compatible Chat Completions server for tests (real HTTP on 127.0.0.1).

Usage::

    with FakeOpenAIServer(latency=0.0) as server:
        server.script(FakeReply.status(429, headers={"Retry-After": "0"}), FakeReply.timeout())
        ...  # point a client at server.base_url ("http://127.0.0.1:PORT/v1")
        assert server.requests[0].body["model"] == "gpt-x"

Scripted replies are consumed one per chat-completions request, in arrival order; once the
script is empty the server answers successfully with a JSON object generated from the request's
``response_format`` JSON Schema.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["FakeOpenAIServer", "FakeReply", "RecordedRequest", "example_from_schema"]


@dataclass(frozen=True)
class FakeReply:
    """One scripted answer. Build with the classmethods, not the constructor."""

    kind: str  # "status" | "timeout" | "content" | "body" | "disconnect"
    status_code: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    payload: Any = None  # "status" / "body" replies
    text: str | None = None  # "content" replies
    usage: tuple[int, int] | None = None
    seconds: float = 0.0
    delay: float | None = None  # overrides the server's latency for this reply

    @classmethod
    def status(
        cls,
        code: int,
        *,
        headers: dict[str, str] | None = None,
        body: Any = None,
        delay: float | None = None,
    ) -> FakeReply:
        """An HTTP error (or any status) with an OpenAI-style error body unless ``body`` given."""
        if body is None:
            body = {"error": {"message": f"fake error {code}", "type": "fake", "code": code}}
        return cls(
            "status", status_code=code, headers=dict(headers or {}), payload=body, delay=delay
        )

    @classmethod
    def timeout(cls, seconds: float = 10.0) -> FakeReply:
        """Sleep ``seconds`` (longer than the client's timeout), then drop the connection."""
        return cls("timeout", seconds=seconds)

    @classmethod
    def content(
        cls, text: str, *, usage: tuple[int, int] | None = None, delay: float | None = None
    ) -> FakeReply:
        """A 200 completion whose ``message.content`` is ``text`` verbatim (e.g. "not json")."""
        return cls("content", text=text, usage=usage, delay=delay)

    @classmethod
    def output(
        cls, value: Any, *, usage: tuple[int, int] | None = None, delay: float | None = None
    ) -> FakeReply:
        """A 200 completion whose content is ``json.dumps(value)``."""
        return cls.content(json.dumps(value), usage=usage, delay=delay)

    @classmethod
    def body(
        cls,
        body: Any,
        *,
        status: int = 200,
        headers: dict[str, str] | None = None,
        delay: float | None = None,
    ) -> FakeReply:
        """A raw response body: a JSON-able value, or ``str``/``bytes`` sent as-is."""
        return cls(
            "body", status_code=status, headers=dict(headers or {}), payload=body, delay=delay
        )

    @classmethod
    def disconnect(cls, *, delay: float | None = None) -> FakeReply:
        """Close the connection without answering."""
        return cls("disconnect", delay=delay)


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]  # lower-cased names
    body: Any  # parsed JSON, or None if the body was not JSON
    raw_body: bytes
    received_at: float


def example_from_schema(schema: Any, root: Any = None, depth: int = 0) -> Any:
    """A simple value satisfying ``schema`` (enough for the strict schemas steps use)."""
    root = schema if root is None else root
    if not isinstance(schema, dict) or depth > 20:
        return {}
    if "$ref" in schema:
        return example_from_schema(_resolve_ref(root, schema["$ref"]), root, depth + 1)
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    for combinator in ("anyOf", "oneOf", "allOf"):
        if schema.get(combinator):
            return example_from_schema(schema[combinator][0], root, depth + 1)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), kind[0] if kind else None)
    if kind is None:
        kind = "object" if "properties" in schema else "string"
    if kind == "object":
        properties = schema.get("properties", {})
        names = schema.get("required", list(properties))
        return {
            name: example_from_schema(properties.get(name, {}), root, depth + 1) for name in names
        }
    if kind == "array":
        count = max(1, int(schema.get("minItems", 1)))
        if "maxItems" in schema:
            count = min(count, int(schema["maxItems"]))
        return [example_from_schema(schema.get("items", {}), root, depth + 1)] * count
    if kind == "string":
        text = "text".ljust(int(schema.get("minLength", 0)), "x")
        if "maxLength" in schema:
            text = text[: int(schema["maxLength"])]
        return text
    if kind in ("integer", "number"):
        return _example_number(schema, integer=kind == "integer")
    if kind == "boolean":
        return True
    if kind == "null":
        return None
    return {}


def _example_number(schema: dict[str, Any], *, integer: bool) -> int | float:
    value: float = 0
    if "minimum" in schema:
        value = schema["minimum"]
    if "exclusiveMinimum" in schema:
        value = schema["exclusiveMinimum"] + 1
    if "maximum" in schema and value > schema["maximum"]:
        value = schema["maximum"]
    return int(value) if integer else value


def _resolve_ref(root: Any, ref: str) -> Any:
    if not ref.startswith("#"):
        return {}
    node = root
    for part in ref.lstrip("#").strip("/").split("/"):
        if not part:
            continue
        part = part.replace("~1", "/").replace("~0", "~")
        if not isinstance(node, dict) or part not in node:
            return {}
        node = node[part]
    return node


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # The default backlog of 5 drops bursts of connects (SYN retries take 1 s+).
    request_queue_size = 1024
    fake: FakeOpenAIServer


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out as separate writes; with Nagle on, each answer waits ~40 ms.
    disable_nagle_algorithm = True
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self._send_json(404, {"error": {"message": "not found", "type": "fake"}})

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        fake = self.server.fake
        fake._record(
            RecordedRequest(
                method="POST",
                path=self.path,
                headers={name.lower(): value for name, value in self.headers.items()},
                body=body,
                raw_body=raw,
                received_at=time.monotonic(),
            )
        )
        with fake._track_in_flight():
            try:
                self._answer(fake, body)
            except ConnectionError:  # the client gave up (e.g. its timeout); nothing to answer
                self.close_connection = True

    def _answer(self, fake: FakeOpenAIServer, body: Any) -> None:
        if not self.path.rstrip("/").endswith("/chat/completions"):
            self._send_json(404, {"error": {"message": f"no route {self.path}", "type": "fake"}})
            return
        if fake.api_key and self.headers.get("Authorization") != f"Bearer {fake.api_key}":
            self._send_json(401, {"error": {"message": "bad api key", "type": "fake"}})
            return
        if not isinstance(body, dict):
            self._send_json(
                400, {"error": {"message": "body is not a JSON object", "type": "fake"}}
            )
            return
        fake._hold()
        reply = fake._next_reply()
        if reply is not None and reply.kind == "timeout":
            fake._wait(reply.seconds)
            self.close_connection = True
            return
        fake._wait(fake.latency if reply is None or reply.delay is None else reply.delay)
        if reply is None:
            self._send_completion(fake, body, None, None)
        elif reply.kind == "disconnect":
            self.close_connection = True
        elif reply.kind == "content":
            self._send_completion(fake, body, reply.text, reply.usage)
        else:  # "status" / "body"
            self._send_raw(reply.status_code, reply.payload, reply.headers)

    def _send_completion(
        self,
        fake: FakeOpenAIServer,
        body: dict[str, Any],
        content: str | None,
        usage: tuple[int, int] | None,
    ) -> None:
        if content is None:
            schema = (body.get("response_format") or {}).get("json_schema", {}).get("schema", {})
            content = json.dumps(example_from_schema(schema))
        if usage is None:
            words = sum(
                len(str(m.get("content", "")).split())
                for m in body.get("messages", [])
                if isinstance(m, dict)
            )
            usage = (max(1, words), max(1, len(content) // 4))
        self._send_json(
            200,
            {
                "id": f"chatcmpl-fake-{next(fake._ids)}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": fake.model or body.get("model", "fake-model"),
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": content, "refusal": None},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {
                    "prompt_tokens": usage[0],
                    "completion_tokens": usage[1],
                    "total_tokens": usage[0] + usage[1],
                },
            },
        )

    def _send_json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        self._send_raw(status, payload, headers or {})

    def _send_raw(self, status: int, payload: Any, headers: dict[str, str]) -> None:
        if isinstance(payload, bytes):
            data, content_type = payload, "application/octet-stream"
        elif isinstance(payload, str):
            data, content_type = payload.encode(), "text/plain; charset=utf-8"
        else:
            data, content_type = json.dumps(payload).encode(), "application/json"
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)


class FakeOpenAIServer:
    """Programmable fake of ``POST /v1/chat/completions``, served from a background thread."""

    def __init__(self, *, latency: float = 0.0, api_key: str = "", model: str = "") -> None:
        self.latency = latency  # default seconds before each answer
        self.api_key = api_key  # if set, requests must carry this bearer token (else 401)
        self.model = model  # if set, reported as the answering model instead of the requested
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._script: deque[FakeReply] = deque()
        self._requests: list[RecordedRequest] = []
        self._in_flight = 0
        self._peak_in_flight = 0
        self._arrived = threading.Condition(self._lock)
        self._hold_for = 0  # answer nothing until this many requests are in flight together
        self._hold_timeout = 0.0
        self.hold_released = False  # the held requests were all in flight at one moment
        self._ids = itertools.count(1)
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle --

    def start(self) -> FakeOpenAIServer:
        if self._httpd is not None:
            return self
        self._stopping.clear()
        httpd = _Server(("127.0.0.1", 0), _Handler)
        httpd.fake = self
        self._httpd = httpd
        self._thread = threading.Thread(
            target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving; wakes handlers sleeping on latency or ``timeout`` replies."""
        if self._httpd is None:
            return
        self._stopping.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._httpd = None
        self._thread = None

    def __enter__(self) -> FakeOpenAIServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- addresses --

    @property
    def port(self) -> int:
        if self._httpd is None:
            raise RuntimeError("FakeOpenAIServer is not running")
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``"""
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT/v1``, what an OpenAI client takes as its base URL."""
        return f"{self.url}/v1"

    # -- programming and inspection --

    def script(self, *replies: FakeReply) -> FakeOpenAIServer:
        """Queue replies for the next requests, in order."""
        with self._lock:
            self._script.extend(replies)
        return self

    @property
    def pending(self) -> int:
        """Scripted replies not yet used."""
        with self._lock:
            return len(self._script)

    @property
    def requests(self) -> list[RecordedRequest]:
        """A snapshot of every request received, in arrival order."""
        with self._lock:
            return list(self._requests)

    @property
    def request_count(self) -> int:
        with self._lock:
            return len(self._requests)

    @property
    def in_flight(self) -> int:
        with self._lock:
            return self._in_flight

    @property
    def peak_in_flight(self) -> int:
        """Most requests being handled at the same moment since start (or ``reset``)."""
        with self._lock:
            return self._peak_in_flight

    def hold_until_in_flight(self, count: int, *, timeout: float = 20.0) -> FakeOpenAIServer:
        """Hold every answer until `count` requests are in flight at the same moment.

        Proves concurrency without measuring time: if the client sends its calls one at a
        time, the count is never reached, the held requests are answered after `timeout`
        and `hold_released` stays False.
        """
        with self._lock:
            self._hold_for = count
            self._hold_timeout = timeout
            self.hold_released = False
        return self

    def reset(self) -> None:
        """Forget the script, recorded requests and peak (latency and api_key are kept)."""
        with self._lock:
            self._script.clear()
            self._requests.clear()
            self._peak_in_flight = self._in_flight

    # -- used by the handler --

    def _record(self, request: RecordedRequest) -> None:
        with self._lock:
            self._requests.append(request)

    def _next_reply(self) -> FakeReply | None:
        with self._lock:
            return self._script.popleft() if self._script else None

    def _hold(self) -> None:
        with self._arrived:
            if not self._hold_for:
                return
            self._arrived.notify_all()
            reached = self._arrived.wait_for(
                lambda: self.hold_released or self._in_flight >= self._hold_for,
                timeout=self._hold_timeout,
            )
            if reached:
                self.hold_released = True

    def _wait(self, seconds: float) -> None:
        if seconds > 0:
            self._stopping.wait(seconds)

    @contextlib.contextmanager
    def _track_in_flight(self) -> Iterator[None]:
        with self._lock:
            self._in_flight += 1
            self._peak_in_flight = max(self._peak_in_flight, self._in_flight)
        try:
            yield
        finally:
            with self._lock:
                self._in_flight -= 1
