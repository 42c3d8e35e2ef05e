"""Two admin pages on a role: "Compare versions" (what changed between two bundles) and
"Canary: compare" (how the active version, the canary and any other chosen version did
over the same period).

Both take the role through its ModelAdmin (`get_object` is tenant-scoped: another
tenant's role is a 404) and offer only the role's own versions; they read, never write.
RoleAdmin.get_urls adds `comparison_urls(self)`.
"""

from __future__ import annotations

from datetime import date, datetime, time, timedelta
from urllib.parse import urlencode

from django import forms
from django.contrib.admin.utils import unquote
from django.core.exceptions import PermissionDenied, ValidationError
from django.http import Http404
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone

from roles.comparison import Ratio, VersionFigures, compare_versions
from roles.diff import diff_bundles
from roles.models import Role, RoleVersion
from tenants.permissions import can_operate_tenant

DEFAULT_PERIOD_DAYS = 7
MAX_PERIOD_DAYS = 400
MAX_COMPARED_VERSIONS = 6


def comparison_urls(model_admin) -> list:
    """The pages' URLs, for RoleAdmin.get_urls (before its catch-all object URL)."""
    site = model_admin.admin_site

    def compare(request, object_id):
        return compare_view(model_admin, request, object_id)

    def canary_compare(request, object_id):
        return canary_compare_view(model_admin, request, object_id)

    # The longer route first: "<path:object_id>/compare/" would take "7/canary/compare/".
    return [
        path(
            "<path:object_id>/canary/compare/",
            site.admin_view(canary_compare),
            name="roles_role_canary_compare",
        ),
        path("<path:object_id>/compare/", site.admin_view(compare), name="roles_role_compare"),
    ]


def visible_role(model_admin, request, object_id) -> Role:
    role = model_admin.get_object(request, unquote(object_id))
    if role is None:
        raise Http404("No role with this id.")
    if not model_admin.has_view_permission(request, role):
        raise PermissionDenied
    return role


def version_label(role: Role, version: RoleVersion) -> str:
    label = f"v{version.number} · {version.get_status_display()}"
    if version.pk == role.active_version_id:
        label += " · active"
    elif version.pk == role.canary_version_id:
        label += f" · canary ({role.canary_percent}%)"
    return label


def versions_of(role: Role):
    return RoleVersion.objects.filter(tenant=role.tenant_id, role=role).order_by("-number")


# --- Compare versions ---------------------------------------------------------------------


class CompareForm(forms.Form):
    old = forms.ModelChoiceField(queryset=RoleVersion.objects.none(), label="From")
    new = forms.ModelChoiceField(queryset=RoleVersion.objects.none(), label="To")

    def __init__(self, *args, role: Role, **kwargs):
        super().__init__(*args, **kwargs)
        for name in ("old", "new"):
            # The choices need no bundle; the two compared read theirs, one query each.
            self.fields[name].queryset = versions_of(role).defer("definition")
            self.fields[name].label_from_instance = lambda v: version_label(role, v)


def default_pair(role: Role, asked_pk) -> tuple[RoleVersion | None, RoleVersion | None]:
    """The version asked for (else the latest) against the active one; the active version
    (or one never activated) against the one before it."""
    numbers = dict(versions_of(role).values_list("pk", "number"))
    new_pk = asked_pk if asked_pk in numbers else max(numbers, key=numbers.get, default=None)
    if new_pk is None:
        return None, None
    if role.active_version_id and role.active_version_id != new_pk:
        old_pk = role.active_version_id
    else:
        earlier = [pk for pk, number in numbers.items() if number < numbers[new_pk]]
        old_pk = max(earlier, key=numbers.get, default=None)
    pair = {v.pk: v for v in versions_of(role).filter(pk__in=[new_pk, old_pk])}
    return pair.get(old_pk), pair[new_pk]


def compare_view(model_admin, request, object_id):
    role = visible_role(model_admin, request, object_id)
    form = CompareForm(request.GET if {"old", "new"} <= set(request.GET) else None, role=role)
    old = new = None
    if form.is_bound:
        if form.is_valid():
            old, new = form.cleaned_data["old"], form.cleaned_data["new"]
    else:
        try:
            asked = int(request.GET.get("new", ""))
        except ValueError:
            asked = None
        old, new = default_pair(role, asked)
        form = CompareForm(initial={"old": old, "new": new}, role=role)
    changes = diff_bundles(old.definition if old else None, new.definition) if new else None
    context = {
        **model_admin.admin_site.each_context(request),
        "title": f"Compare versions of {role.name}",
        "opts": model_admin.opts,
        "original": role,
        "form": form,
        "old": old,
        "new": new,
        "old_label": version_label(role, old) if old else None,
        "new_label": version_label(role, new) if new else None,
        "changes": changes,
        "swap_url": (
            "?" + urlencode({"old": new.pk, "new": old.pk}) if old is not None and new else None
        ),
    }
    return TemplateResponse(request, "admin/roles/role/compare.html", context)


# --- Canary: compare --------------------------------------------------------------------


class CanaryCompareForm(forms.Form):
    versions = forms.ModelMultipleChoiceField(
        queryset=RoleVersion.objects.none(),
        widget=forms.CheckboxSelectMultiple,
        help_text=f"Up to {MAX_COMPARED_VERSIONS} versions of this role.",
    )
    since_date = forms.DateField(label="From", widget=forms.DateInput(attrs={"type": "date"}))
    until_date = forms.DateField(
        label="To (inclusive)", widget=forms.DateInput(attrs={"type": "date"})
    )

    def __init__(self, *args, role: Role, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["versions"].queryset = versions_of(role).defer("definition")
        self.fields["versions"].label_from_instance = lambda v: version_label(role, v)

    def clean_versions(self):
        versions = self.cleaned_data["versions"]
        if len(versions) > MAX_COMPARED_VERSIONS:
            raise ValidationError(f"Choose at most {MAX_COMPARED_VERSIONS} versions.")
        return versions

    def clean(self):
        cleaned = super().clean()
        since, until = cleaned.get("since_date"), cleaned.get("until_date")
        if since and until:
            if since > until:
                raise ValidationError("The period must start before it ends.")
            if (until - since).days >= MAX_PERIOD_DAYS:
                raise ValidationError(f"Choose a period of at most {MAX_PERIOD_DAYS} days.")
        return cleaned


def period_bounds(since_date: date, until_date: date) -> tuple[datetime, datetime]:
    """[start of since_date, start of the day after until_date), in the current time zone."""
    zone = timezone.get_current_timezone()
    since = datetime.combine(since_date, time.min, tzinfo=zone)
    until = datetime.combine(until_date + timedelta(days=1), time.min, tzinfo=zone)
    return since, until


def canary_compare_view(model_admin, request, object_id):
    role = visible_role(model_admin, request, object_id)
    today = timezone.localdate()
    defaults = {
        "versions": [pk for pk in (role.active_version_id, role.canary_version_id) if pk],
        "since_date": today - timedelta(days=DEFAULT_PERIOD_DAYS - 1),
        "until_date": today,
    }
    asked = any(name in request.GET for name in ("versions", "since_date", "until_date"))
    data = request.GET if asked else None
    form = CanaryCompareForm(data, role=role, initial=defaults)
    figures: list[VersionFigures] = []
    since = until = None
    if form.is_bound and form.is_valid():
        chosen = sorted(form.cleaned_data["versions"], key=lambda v: -v.number)
        since, until = period_bounds(
            form.cleaned_data["since_date"], form.cleaned_data["until_date"]
        )
    elif not form.is_bound:
        chosen = list(versions_of(role).filter(pk__in=defaults["versions"]))
        since, until = period_bounds(defaults["since_date"], defaults["until_date"])
    else:
        chosen = []
    if chosen:
        figures = compare_versions(role, chosen, since=since, until=until)
    may_operate = can_operate_tenant(request.user, role.tenant)
    context = {
        **model_admin.admin_site.each_context(request),
        "title": f"Canary of {role.name}: compare",
        "opts": model_admin.opts,
        "original": role,
        "form": form,
        "since": since,
        "until": until,
        "columns": [column(role, f) for f in figures],
        "rows": figure_rows(figures),
        "may_operate": may_operate,
        "canary": role.canary_version if role.canary_version_id else None,
        "diff_url": (
            reverse("admin:roles_role_compare", args=[role.pk])
            + "?"
            + urlencode({"old": role.active_version_id, "new": role.canary_version_id})
            if role.active_version_id and role.canary_version_id
            else None
        ),
    }
    return TemplateResponse(request, "admin/roles/role/canary_compare.html", context)


def runs_url(figures: VersionFigures, **filters) -> str:
    """The runs list showing the runs behind a figure: this version, this period."""
    query = {
        "role_version__id__exact": figures.version.pk,
        "created_at__gte": figures.since.isoformat(),
        "created_at__lt": figures.until.isoformat(),
        **filters,
    }
    return reverse("admin:desk_run_changelist") + "?" + urlencode(query)


def column(role: Role, figures: VersionFigures) -> dict:
    version = figures.version
    return {
        "label": version_label(role, version),
        "version_url": reverse("admin:roles_roleversion_change", args=[version.pk]),
        "runs_url": runs_url(figures),
    }


def ratio_cell(ratio: Ratio, url: str | None = None) -> dict:
    return {
        "value": ratio.percent,
        "detail": f"{ratio.numerator} of {ratio.denominator}",
        "url": url,
    }


def figure_rows(figures: list[VersionFigures]) -> list[dict]:
    """One row per figure, one cell per version: the value, the counts behind it, a link to
    the runs where a runs list can show them."""
    rows = [
        (
            "Runs started",
            lambda f: {"value": str(f.runs_started), "detail": "", "url": runs_url(f)},
        ),
        (
            "Completed",
            lambda f: ratio_cell(f.completed, runs_url(f, status__exact="completed")),
        ),
        ("Failed", lambda f: ratio_cell(f.failed, runs_url(f, status__exact="failed"))),
        (
            "Still open",
            lambda f: {"value": str(f.still_open), "detail": "", "url": None},
        ),
        ("Approval rate", lambda f: ratio_cell(f.approval_rate)),
        ("Edited when approved", lambda f: ratio_cell(f.edit_rate)),
        ("Sent back", lambda f: ratio_cell(f.send_back_rate)),
        ("Rejected", lambda f: ratio_cell(f.reject_rate)),
        (
            "Escalated runs",
            lambda f: {
                **ratio_cell(f.escalated),
                "detail": f"{f.escalated.numerator} of {f.escalated.denominator} "
                f"({f.escalations} escalations)",
            },
        ),
        (
            "Cost per run",
            lambda f: {
                "value": "—" if f.cost_per_run is None else f"{f.cost_per_run:.4f}",
                "detail": f"{f.total_cost:.4f} over {f.runs_started} runs",
                "url": None,
            },
        ),
        (
            "Mean latency",
            lambda f: {
                "value": duration_text(f.mean_latency),
                "detail": f"over {f.timed_runs} completed runs",
                "url": None,
            },
        ),
        (
            "Median latency",
            lambda f: {
                "value": duration_text(f.median_latency),
                "detail": f"over {f.timed_runs} completed runs",
                "url": None,
            },
        ),
    ]
    return [{"label": label, "cells": [cell(f) for f in figures]} for label, cell in rows]


def duration_text(delta: timedelta | None) -> str:
    if delta is None:
        return "—"
    seconds = delta.total_seconds()
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, seconds = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min" if hours else f"{minutes} min {seconds} s"
