from tenants import rls
from tenants.scoping import member_tenant_ids


class TenantContextMiddleware:
    """Run each admin request in a transaction that sees only the user's tenants.

    The intake API sets its own context from the bearer key (desk.api).
    """

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        if request.path.startswith("/api/"):
            return self.get_response(request)
        user = request.user
        if not user.is_authenticated:
            with rls.lookup_context():
                return self.get_response(request)
        with rls.lookup_context(user_id=user.pk):
            tenant_ids = member_tenant_ids(user)
        with rls.tenant_context(tenant_ids, user_id=user.pk):
            return self.get_response(request)
