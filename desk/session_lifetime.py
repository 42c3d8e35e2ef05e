"""A signed-in session ends after DESK_SESSION_MAX_HOURS, however active it was.

The idle timeout is Django's own (SESSION_COOKIE_AGE, pushed on by every request through
SESSION_SAVE_EVERY_REQUEST); this adds the absolute cap, so that a stolen session cookie
that is kept busy still dies. The session remembers when it was first seen signed in.
"""

from __future__ import annotations

import time

from django.conf import settings
from django.contrib.auth import SESSION_KEY, logout

STARTED_AT = "desk_session_started_at"


class SessionLifetimeMiddleware:
    """Sign out (an `auth.signed_out` audit event) a session past its absolute lifetime."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        session = request.session
        if SESSION_KEY in session:  # only signed-in sessions: no user is loaded otherwise
            now = int(time.time())
            started_at = session.get(STARTED_AT)
            if not isinstance(started_at, int):
                session[STARTED_AT] = now
            elif now - started_at >= settings.DESK_SESSION_MAX_SECONDS:
                logout(request)  # flushes the session; the request goes on signed out
        return self.get_response(request)
