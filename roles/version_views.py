"""The admin pages on a version's way to live runs: edit a draft, ask for its publication,
decide a publication (the second operator), activate or roll back. Each page shows what
it changes (the diff against the version runs use now, the regression gate's report)
before the button that does it; every write is a roles.services call."""

from __future__ import annotations

from django import forms
from django.contrib import messages
from django.contrib.admin.utils import unquote
from django.core.exceptions import PermissionDenied, ValidationError
from django.http import Http404
from django.shortcuts import redirect
from django.template.response import TemplateResponse
from django.urls import path, reverse

from audit.services import Actor
from roles.diff import diff_bundles, render_diff_html
from roles.golden import regression_gate
from roles.models import Publication, RoleVersion
from roles.services import (
    activate_role_version,
    approve_publication,
    close_publication,
    draft_authors,
    request_publication,
    update_draft,
)
from tenants.admin_scoping import PrettyJSONField, add_service_error
from tenants.permissions import can_operate_tenant


def version_urls(model_admin) -> list:
    def view(function, suffix: str, name: str):
        return path(
            f"<path:object_id>/{suffix}/",
            model_admin.admin_site.admin_view(
                lambda request, object_id: function(model_admin, request, object_id)
            ),
            name=name,
        )

    return [
        view(edit_view, "edit", "roles_roleversion_edit"),
        view(request_view, "request-publication", "roles_roleversion_request_publication"),
        view(activate_view, "activate", "roles_roleversion_activate"),
    ]


def operated_version(model_admin, request, object_id) -> RoleVersion:
    """The version, if the user sees it (else 404) and operates its tenant (else 403)."""
    version = model_admin.get_object(request, unquote(object_id))
    if version is None:
        raise Http404("No role version with this id.")
    if not can_operate_tenant(request.user, version.tenant):
        raise PermissionDenied
    return version


def against_active(version: RoleVersion) -> dict:
    """The diff from the version runs use now to `version`, for a page's context."""
    active = version.role.active_version
    if active is not None and active.pk == version.pk:
        active = None
    return {
        "diff": render_diff_html(
            diff_bundles(active.definition if active else None, version.definition)
        ),
        "against": f"the active v{active.number}" if active else "nothing (no active version)",
    }


def _page(model_admin, request, version, *, title: str, **context):
    request.current_app = model_admin.admin_site.name
    return TemplateResponse(
        request,
        "admin/roles/roleversion/step.html",
        {
            **model_admin.admin_site.each_context(request),
            "title": title,
            "step_title": title,
            "opts": model_admin.opts,
            "version": version,
            **context,
        },
    )


# --- edit a draft ------------------------------------------------------------------------


class DraftForm(forms.Form):
    definition = PrettyJSONField(
        widget=forms.Textarea(attrs={"rows": 30, "class": "vLargeTextField desk-json"}),
        help_text="The whole bundle (see README: “The bundle”).",
    )
    change_note = forms.CharField(
        required=False,
        widget=forms.Textarea(attrs={"rows": 3, "class": "vLargeTextField"}),
        help_text="What changed and why; the second operator reads this.",
    )


def edit_view(model_admin, request, object_id):
    version = operated_version(model_admin, request, object_id)
    if version.is_published:
        messages.error(request, "A published version never changes: write a new draft.")
        return redirect("admin:roles_roleversion_change", version.pk)
    initial = {"definition": version.definition, "change_note": version.change_note}
    form = DraftForm(request.POST if request.method == "POST" else None, initial=initial)
    if form.is_bound and form.is_valid():
        try:
            update_draft(
                version=version,
                actor=Actor.for_user(request.user),
                definition=form.cleaned_data["definition"],
                change_note=form.cleaned_data["change_note"],
            )
        except ValidationError as exc:
            add_service_error(form, exc)
        else:
            messages.success(request, f"Saved {version}. Run its golden cases again.")
            return redirect("admin:roles_roleversion_change", version.pk)
    return _page(
        model_admin,
        request,
        version,
        title=f"Edit draft {version}",
        intro=[
            "A draft is edited freely. Saving it lapses a pending publication request: "
            "the second operator reviews what the draft holds, not what it held."
        ],
        form=form,
        buttons=[("_save", "Save the draft")],
        diff=None,
    )


# --- ask for publication ---------------------------------------------------------------------


class RequestForm(forms.Form):
    note = forms.CharField(
        required=False,
        widget=forms.Textarea(attrs={"rows": 3, "class": "vLargeTextField"}),
        help_text="For the second operator: what to look at.",
    )
    override_reason = forms.CharField(
        required=False,
        widget=forms.Textarea(attrs={"rows": 3, "class": "vLargeTextField"}),
        help_text="Only if the regression gate refuses: why this version may go out anyway. "
        "The second operator approves the override too.",
    )


def request_view(model_admin, request, object_id):
    version = operated_version(model_admin, request, object_id)
    form = RequestForm(request.POST if request.method == "POST" else None)
    if form.is_bound and form.is_valid():
        try:
            publication = request_publication(
                version=version,
                actor=Actor.for_user(request.user),
                note=form.cleaned_data["note"],
                override_reason=form.cleaned_data["override_reason"],
            )
        except ValidationError as exc:
            add_service_error(form, exc)
        else:
            messages.success(
                request,
                f"Asked for the publication of {version}: another operator of "
                f"{version.tenant} decides it.",
            )
            return redirect("admin:roles_publication_change", publication.pk)
    gate = regression_gate(version)
    return _page(
        model_admin,
        request,
        version,
        title=f"Ask for the publication of {version}",
        intro=[
            "A second operator of the tenant who did not write this draft reviews the "
            "changes below and decides. Approved, the version is published but not yet in "
            "use: activating it or starting a canary is the next step."
        ],
        gate=gate,
        gate_link=reverse("admin:roles_suiterun_start", args=[version.pk]),
        form=form,
        buttons=[("_request", "Ask for publication")],
        **against_active(version),
    )


# --- decide a publication --------------------------------------------------------------------


class DecideForm(forms.Form):
    note = forms.CharField(
        required=False,
        widget=forms.Textarea(attrs={"rows": 3, "class": "vLargeTextField"}),
        help_text="Required to reject or withdraw.",
    )


def publication_view(model_admin, request, publication: Publication):
    """The second operator's page: the diff, the gate report as asked and as it is now."""
    version = publication.version
    form = DecideForm(request.POST if request.method == "POST" else None)
    may_operate = can_operate_tenant(request.user, publication.tenant)
    if form.is_bound and form.is_valid():
        if not may_operate:
            raise PermissionDenied
        actor, note = Actor.for_user(request.user), form.cleaned_data["note"]
        try:
            if "_approve" in request.POST:
                approve_publication(publication=publication, actor=actor, note=note)
                messages.success(
                    request,
                    f"Published {version}. Activate it for all new runs, start a canary, or "
                    "keep it ready.",
                )
                return redirect("admin:roles_roleversion_change", version.pk)
            close_publication(publication=publication, actor=actor, note=note)
        except ValidationError as exc:
            add_service_error(form, exc)
        else:
            messages.success(request, f"Closed the publication of {version}.")
            return redirect("admin:roles_roleversion_change", version.pk)
    pending = publication.status == Publication.Status.PENDING
    requester = publication.requested_by_id == request.user.pk
    intro = [
        f"{publication.requested_by} asked on {publication.requested_at:%Y-%m-%d %H:%M} "
        f"to publish {version} ({publication.get_status_display().lower()}).",
    ]
    if publication.note:
        intro.append(f"Note: {publication.note}")
    if publication.override_reason:
        intro.append(
            "The regression gate refused; approving publishes it anyway, for this reason: "
            f"{publication.override_reason}"
        )
    if version.digest != publication.digest:
        intro.append("The draft changed since: this request can no longer be approved.")
    if pending and not requester and request.user.pk in draft_authors(version):
        intro.append("You wrote part of this draft: another operator must approve it.")
    buttons = []
    if pending and may_operate:
        buttons = (
            [("_withdraw", "Withdraw")]
            if requester
            else [("_approve", "Approve and publish"), ("_reject", "Reject")]
        )
    return _page(
        model_admin,
        request,
        version,
        title=f"Publication of {version}",
        intro=intro,
        gate=regression_gate(version) if pending else publication.gate,
        form=form if buttons else None,
        buttons=buttons,
        **against_active(version),
    )


# --- activate / roll back --------------------------------------------------------------------


def activate_view(model_admin, request, object_id):
    version = operated_version(model_admin, request, object_id)
    role = version.role
    active = role.active_version
    rollback = active is not None and active.number > version.number
    if request.method == "POST":
        try:
            activate_role_version(version=version, actor=Actor.for_user(request.user))
        except ValidationError as exc:
            messages.error(request, " ".join(exc.messages))
        else:
            messages.success(request, f"{version} is now active; new runs of {role.name} use it.")
        return redirect("admin:roles_roleversion_change", version.pk)
    verb = "Roll back to" if rollback else "Activate"
    return _page(
        model_admin,
        request,
        version,
        title=f"{verb} {version}",
        intro=[
            f"Every new run of {role.name} will use v{version.number}"
            + (f" instead of v{active.number}" if active else "")
            + (" and the canary stops" if role.canary_version_id == version.pk else "")
            + ". Runs already started keep their version.",
        ],
        form=forms.Form(),
        buttons=[("_activate", f"Yes, {verb.lower()} v{version.number}")],
        **against_active(version),
    )
