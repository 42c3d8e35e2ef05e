"""Which request an audit event was written in: its id, the client's address and agent.

`RequestContextMiddleware` sets these for the duration of each request; `audit.services.record`
copies them onto every event it writes, so an event recorded by a view, a service or a signal
receiver during that request carries them. Outside a request (tasks, commands) they are empty.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

from django.conf import settings

REQUEST_ID_HEADER = "X-Request-ID"
_VALID_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{8,64}")
USER_AGENT_LENGTH = 300


@dataclass(frozen=True)
class RequestInfo:
    request_id: str = ""
    client_ip: str | None = None
    user_agent: str = ""


NO_REQUEST = RequestInfo()
_current: ContextVar[RequestInfo] = ContextVar("audit_request", default=NO_REQUEST)


def current() -> RequestInfo:
    return _current.get()


@contextmanager
def using(info: RequestInfo) -> Iterator[None]:
    """Events recorded inside carry `info`: for work a request hands on, such as a
    streamed response produced after the request's middleware has returned."""
    token = _current.set(info)
    try:
        yield
    finally:
        _current.reset(token)


def client_ip(request) -> str | None:
    """The client's address: REMOTE_ADDR, or the address a trusted proxy put last in
    X-Forwarded-For when the request came from one of `AUDIT_TRUSTED_PROXIES`."""
    remote = request.META.get("REMOTE_ADDR") or None
    forwarded = request.META.get("HTTP_X_FORWARDED_FOR", "")
    if forwarded and remote in settings.AUDIT_TRUSTED_PROXIES:
        return forwarded.split(",")[-1].strip() or remote
    return remote


def info_for(request) -> RequestInfo:
    given = request.headers.get(REQUEST_ID_HEADER, "")
    request_id = given if _VALID_REQUEST_ID.fullmatch(given) else uuid.uuid4().hex
    agent = request.headers.get("User-Agent", "").replace("\x00", "")[:USER_AGENT_LENGTH]
    return RequestInfo(request_id=request_id, client_ip=client_ip(request), user_agent=agent)


class RequestContextMiddleware:
    """Give each request an id (a well-formed X-Request-ID from the caller, else a new
    one), echo it in the response, and expose it to the audit trail."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        info = info_for(request)
        with using(info):
            response = self.get_response(request)
        response[REQUEST_ID_HEADER] = info.request_id
        return response
