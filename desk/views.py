"""Pages outside the admin and the API: the health probe for load balancers."""

from __future__ import annotations

from django.http import JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from desk.health import web_health


@never_cache
@require_GET
def healthz(request):
    """200 when this web process can reach its database, else 503; JSON either way."""
    report = web_health()
    return JsonResponse(report.as_dict(), status=200 if report.ok else 503)
