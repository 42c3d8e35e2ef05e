from tenants import rls
from tenants.scoping import break_glass_grants, member_tenant_ids
from tenants.services import record_break_glass_view

UNAUDITED_PREFIXES = ("/static/", "/admin/jsi18n/", "/favicon.ico")
# Paths that set their own database context: the intake API (from its bearer key) and the
# health probe (which must answer, with a JSON 503, when the database is down).
OWN_CONTEXT_PREFIXES = ("/api/", "/healthz")


class TenantContextMiddleware:
    """Run each admin request in a transaction that sees only the user's tenants, and audit
    every page a platform-staff member views under break-glass access.

    The intake API sets its own context from the bearer key (desk.api); the health probe
    reads no tenant data.
    """

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        # Whom the request works for: the database checks each tenant context against it.
        # Nobody, until the user is known (the intake API names its key itself).
        user = request.user
        if request.path.startswith(OWN_CONTEXT_PREFIXES) or not user.is_authenticated:
            with rls.acting_for():
                if request.path.startswith(OWN_CONTEXT_PREFIXES):
                    return self.get_response(request)
                with rls.lookup_context():
                    return self.get_response(request)
        with rls.acting_for(user_id=user.pk):
            with rls.lookup_context(user_id=user.pk):
                tenant_ids = member_tenant_ids(user)
                grants = break_glass_grants(user)
            if grants and not request.path.startswith(UNAUDITED_PREFIXES):
                # Committed before the page runs (and kept if it fails), so the request's
                # own transaction holds no tenant chain that platform work may need.
                with rls.tenant_context(tenant_ids):
                    record_break_glass_view(
                        user=user,
                        grant_ids=list(grants.values()),
                        method=request.method,
                        path=request.get_full_path(),
                    )
            with rls.tenant_context(tenant_ids):
                return self.get_response(request)
