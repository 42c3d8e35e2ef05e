"""A webhook receiver on loopback, as a client firm would run one: it verifies every delivery
with `standardwebhooks.Webhook(secret).verify(body, headers)` and answers as scripted.

    with FakeWebhookReceiver(secret) as receiver:
        receiver.script(503, 200)          # the next answers, then 200 for ever
        receiver.hold()                    # keep answers back until release()
        receiver.tamper = True             # verify a body altered on the way
        ... receiver.deliveries            # what arrived: body, headers, verified or why not
"""

from __future__ import annotations

import json
import threading
from collections import deque
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError


@dataclass
class Delivery:
    path: str
    body: bytes
    headers: dict[str, str]
    verified: bool
    error: str = ""
    event: dict[str, Any] | None = None


class FakeWebhookReceiver:
    def __init__(self, secret: str = ""):
        self.secret = secret
        self.deliveries: list[Delivery] = []
        self.tamper = False
        self._answers: deque[int] = deque()
        self._released = threading.Event()
        self._released.set()
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                headers = {k.lower(): v for k, v in self.headers.items()}
                verified = receiver._receive(self.path, body, headers)
                receiver._released.wait(timeout=30)
                # A receiver refuses what it cannot verify, as the scheme asks.
                status = receiver._next_status() if verified else 400
                answer = json.dumps({"received": status < 300}).encode()
                try:
                    self.send_response(status)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(answer)))
                    self.end_headers()
                    self.wfile.write(answer)
                except OSError:
                    pass  # the sender gave up waiting

            def log_message(self, *args):
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/hooks/agentdesk"

    def __enter__(self) -> FakeWebhookReceiver:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._released.set()
        self._server.shutdown()
        self._server.server_close()

    def script(self, *statuses: int) -> None:
        """Answer the next deliveries with these statuses (then 200)."""
        with self._lock:
            self._answers.extend(statuses)

    def hold(self) -> None:
        """Keep every answer back (the sender times out) until release()."""
        self._released.clear()

    def release(self) -> None:
        self._released.set()

    @property
    def verified(self) -> list[Delivery]:
        return [d for d in self.deliveries if d.verified]

    def _next_status(self) -> int:
        with self._lock:
            return self._answers.popleft() if self._answers else 200

    def _receive(self, path: str, body: bytes, headers: dict[str, str]) -> bool:
        checked = body.replace(b'"data":{', b'"data":{"injected":1,', 1) if self.tamper else body
        try:
            event = Webhook(self.secret).verify(checked, headers)
        except WebhookVerificationError as exc:
            delivery = Delivery(path, body, headers, verified=False, error=str(exc))
        else:
            delivery = Delivery(path, body, headers, verified=True, event=event)
        with self._lock:
            self.deliveries.append(delivery)
        return delivery.verified
