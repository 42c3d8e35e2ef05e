"""The audit reports in the admin: a run's report, a tenant's period, and an auditor's three
questions, each on one page made for printing, and each downloadable as a ZIP of the
report's HTML, its PDF and their signed manifest.

Thin views: they parse the form, check the user may audit the tenant (the form offers no
other) and call one selector of audit.reports. A run of another tenant is a 404.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpResponse, HttpResponseNotAllowed
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone

from audit import report_documents, reports, signing
from audit.report_forms import (
    DataReadsForm,
    PeriodForm,
    RunReportForm,
    page_number,
)
from audit.services import Actor, record
from tenants.admin_scoping import ACCESS
from tenants.models import Tenant
from tenants.permissions import can_audit_tenant
from tenants.scoping import tenants_for_user

TEMPLATES = "admin/audit/reports"


def auditable_tenants(user):
    """The tenants whose trail the user may read. Raises PermissionDenied when there is none."""
    tenants = [
        tenant
        for tenant in tenants_for_user(user, kinds=ACCESS["audit"].kinds)
        if can_audit_tenant(user, tenant)
    ]
    if not tenants:
        raise PermissionDenied
    return Tenant.objects.filter(pk__in=[t.pk for t in tenants]).order_by("name")


@dataclass
class Asked:
    """A report asked for: its form and, once the form is valid, its answer."""

    kind: str
    form: forms.Form
    title: str
    answered: bool = False
    context: dict[str, Any] = field(default_factory=dict)

    @property
    def query(self) -> dict[str, Any]:
        """What was asked, as the manifest and the audit event name it."""
        asked = {}
        for name, value in self.form.cleaned_data.items():
            if isinstance(value, Tenant):
                asked["tenant"] = value.slug
                asked["tenant_id"] = value.pk
            elif hasattr(value, "isoformat"):
                asked[name] = value.isoformat()
            elif value not in ("", None):
                asked[name] = value
        return asked

    @property
    def tenant(self) -> Tenant:
        return self.form.cleaned_data["tenant"]


def _initial(tenants, **extra) -> dict:
    first = tenants.first()
    return {"tenant": first.pk if first else None, **extra}


def _period_form(request, data, form_class=PeriodForm, **kwargs):
    tenants = auditable_tenants(request.user)
    initial = _initial(tenants, **PeriodForm.default_initial())
    return form_class(data, tenants=tenants, initial=initial, **kwargs)


def ask_run(request, data, *, page: int | None) -> Asked:
    tenants = auditable_tenants(request.user)
    form = RunReportForm(data, tenants=tenants, initial=_initial(tenants))
    asked = Asked("run", form, "Run report")
    if form.is_bound and form.is_valid():
        report = reports.run_report(
            tenant=form.cleaned_data["tenant"], run_id=form.cleaned_data["run"]
        )
        if report is None:
            raise Http404("The tenant has no such run.")
        asked.title = f"Run #{report.run.id}: {report.run.employee}, {report.tenant.name}"
        asked.answered, asked.context = True, {"report": report}
    return asked


def ask_tenant(request, data, *, page: int | None) -> Asked:
    form = _period_form(request, data)
    asked = Asked("tenant", form, "Tenant report")
    if form.is_bound and form.is_valid():
        report = reports.tenant_report(tenant=form.cleaned_data["tenant"], period=form.period())
        asked.title = f"{report.tenant.name}: {report.period}"
        asked.answered, asked.context = True, {"report": report}
    return asked


def ask_reads(request, data, *, page: int | None) -> Asked:
    tenants = auditable_tenants(request.user)
    employees = reports.run_records().ai_employees(tenant_ids=[t.pk for t in tenants])
    form = _period_form(request, data, DataReadsForm, employees=employees)
    asked = Asked("reads", form, "What did an AI employee read, when and why?")
    if form.is_bound and form.is_valid():
        who, role_version_ids = form.role_versions()
        tenant, period = form.cleaned_data["tenant"], form.period()
        asked.title = f"What did {who} read, when and why, {period}?"
        asked.answered = True
        asked.context = {
            "who": who,
            "answer": reports.data_reads(
                tenant_id=tenant.pk, period=period, role_version_ids=role_version_ids, page=page
            ),
            "summary": reports.data_access_summary(
                tenant_id=tenant.pk, period=period, role_version_ids=role_version_ids
            ),
        }
    return asked


def ask_approvals(request, data, *, page: int | None) -> Asked:
    form = _period_form(request, data)
    asked = Asked("approvals", form, "Who approved what?")
    if form.is_bound and form.is_valid():
        period = form.period()
        asked.title = f"Who approved what, {period}?"
        asked.answered = True
        asked.context = {
            "answer": reports.approvals_in(
                tenant_id=form.cleaned_data["tenant"].pk, period=period, page=page
            )
        }
    return asked


def ask_changes(request, data, *, page: int | None) -> Asked:
    form = _period_form(request, data)
    asked = Asked("changes", form, "What changed in roles and policies?")
    if form.is_bound and form.is_valid():
        period = form.period()
        asked.title = f"What changed in roles and policies, {period}?"
        asked.answered = True
        asked.context = {
            "answer": reports.changes_in(
                tenant_id=form.cleaned_data["tenant"].pk, period=period, page=page
            )
        }
    return asked


ASK: dict[str, Callable[..., Asked]] = {
    "run": ask_run,
    "tenant": ask_tenant,
    "reads": ask_reads,
    "approvals": ask_approvals,
    "changes": ask_changes,
}


def body_template(kind: str) -> str:
    return f"{TEMPLATES}/_{kind}.html"


def _common(request) -> dict[str, Any]:
    return {
        "generated_at": timezone.now(),
        "generated_by": request.user.get_username(),
        "time_zone": timezone.get_current_timezone_name(),
    }


def _render(request, asked: Asked, *, status: int = 200):
    form = asked.form
    query = {k: v for k, v in (form.data.items() if form.is_bound else ()) if k != "page"}
    return TemplateResponse(
        request,
        f"{TEMPLATES}/page.html",
        {
            **admin.site.each_context(request),
            **_common(request),
            "title": asked.title,
            "form": form,
            "answered": asked.answered,
            "query_string": urlencode(query),
            "query_items": sorted(query.items()),
            "kind": asked.kind,
            "body_template": body_template(asked.kind),
            "download_url": reverse(f"audit_reports:{asked.kind}_download"),
            "pdf_available": report_documents.pdf_available(),
            **asked.context,
        },
        status=status,
    )


def index(request):
    tenants = auditable_tenants(request.user)
    return TemplateResponse(
        request,
        f"{TEMPLATES}/index.html",
        {
            **admin.site.each_context(request),
            **_common(request),
            "title": "Audit reports",
            "tenants": tenants,
        },
    )


def page(request, kind: str):
    data = request.GET if "tenant" in request.GET else None
    asked = ASK[kind](request, data, page=page_number(request.GET.get("page")))
    return _render(request, asked)


def download(request, kind: str):
    """The report as a ZIP: report.html, report.pdf (where WeasyPrint is installed) and
    manifest.json (signed, with the SHA-256 of each); the download is audited."""
    if request.method != "POST":
        return HttpResponseNotAllowed(["POST"])
    asked = ASK[kind](request, request.POST, page=None)
    if not asked.answered:
        return _render(request, asked, status=400)
    made_at = timezone.now()
    context = {**_common(request), "generated_at": made_at, "form": asked.form, **asked.context}
    html = report_documents.render_html(
        body_template=body_template(kind), title=asked.title, context=context
    )
    files = {"report.html": html}
    pdf = report_documents.render_pdf(html)
    if pdf is not None:
        files["report.pdf"] = pdf
    try:
        manifest = signing.document_manifest(
            tenant_id=asked.tenant.pk, kind=f"report.{kind}", query=asked.query, files=files
        )
    except signing.SigningKeyMissing as exc:
        messages.error(request, f"The report cannot be signed, so it is not offered: {exc}")
        return _render(request, asked, status=503)
    manifest_json = json.dumps(manifest, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    files["manifest.json"] = manifest_json.encode("utf-8")
    record(
        tenant=asked.tenant,
        actor=Actor.for_user(request.user),
        action="audit.report_generated",
        obj=asked.tenant,
        data={
            "kind": kind,
            "query": asked.query,
            "manifest_sha256": hashlib.sha256(files["manifest.json"]).hexdigest(),
        },
    )
    response = HttpResponse(
        report_documents.zip_bundle(files, made_at=made_at), content_type="application/zip"
    )
    name = f"audit-report-{kind}-{asked.tenant.slug}-{made_at:%Y%m%d-%H%M%S}.zip"
    response["Content-Disposition"] = f'attachment; filename="{name}"'
    return response


urlpatterns = [
    path("", admin.site.admin_view(index), name="index"),
    *(path(f"{kind}/", admin.site.admin_view(page), {"kind": kind}, name=kind) for kind in ASK),
    *(
        path(
            f"{kind}/download/",
            admin.site.admin_view(download),
            {"kind": kind},
            name=f"{kind}_download",
        )
        for kind in ASK
    ),
]
urls = (urlpatterns, "audit_reports")
