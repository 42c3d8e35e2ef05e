from django.contrib import admin
from django.urls import include, path, re_path
from django.views.generic import RedirectView

from audit import report_views
from desk import api, views

api_patterns = (
    [
        path("runs", api.runs_collection, name="runs"),
        path("runs/<int:run_id>", api.run_detail, name="run-detail"),
        path("roles", api.roles_list, name="roles"),
        path("openapi.json", api.openapi_document, name="openapi"),
        re_path(r"^(?P<path>.*)$", api.not_found, name="not-found"),
    ],
    "api",
)

urlpatterns = [
    path("", RedirectView.as_view(url="/admin/", permanent=False)),
    path("healthz", views.healthz, name="healthz"),
    # Before the admin's own URLs, whose catch-all would answer 404 for these.
    path("admin/audit/reports/", include(report_views.urls)),
    path("admin/", include("tenants.signin.urls")),  # the second factor's pages
    path("admin/", admin.site.urls),
    path("approvals/", include("approvals.urls")),
    path("api/v1/", include(api_patterns)),
]
