"""Every admin on the site, swept for cross-tenant access.

The cases are generated from `admin.site._registry`: registering an admin for a new model
adds it to the sweep, and one that is neither tenant-scoped through TenantScopedAdmin nor a
known platform-only admin fails `test_every_registered_admin_is_covered`.

The world: harbor-legal and northwind-accounting each have completed and parked runs,
decisions, an escalation, outbox messages and their delivery attempts, draft and published
versions, policies, records, memberships, API keys, webhook endpoints and audit events;
platform staff hold a break-glass grant to harbor.
Northwind's people — its reviewer and operator, and platform staff holding a break-glass grant
to northwind only — then try everything on harbor's objects.
"""

from __future__ import annotations

import json

import pytest
from django.apps import apps
from django.contrib import admin
from django.contrib.admin.filters import AllValuesFieldListFilter, RelatedFieldListFilter
from django.contrib.auth import get_user_model
from django.contrib.contenttypes.models import ContentType
from django.forms.models import model_to_dict
from django.test import RequestFactory
from django.urls import NoReverseMatch, reverse
from guardian.models import UserObjectPermission
from simple_history.admin import SimpleHistoryAdmin

from tenants.admin_scoping import TenantScopedAdmin, has_tenant_field
from tenants.models import BreakGlassGrant, Tenant
from tenants.services import open_break_glass
from tests.admin.conftest import BREAK_GLASS_REASON, make_platform_staff

User = get_user_model()

# Admins of models without a tenant: the platform's own, closed to tenant members.
PLATFORM_ONLY = {
    "auth.user",
    "auth.group",
    "desk.modelprice",
    "desk.sweep",
    "desk.workerheartbeat",
    "django_q.schedule",
    "django_q.success",
    "django_q.failure",
    "django_q.ormq",
    # Sign-in protection (tenants/signin/admin.py): lockouts and second factors.
    "axes.accessattempt",
    "otp_totp.totpdevice",
}
TENANT_PEOPLE = ("reviewer.northwind", "ops.northwind")
BREAK_GLASS_STAFF = "sre.northwind"  # platform staff with read-only access to northwind only
NORTHWIND_USERS = (*TENANT_PEOPLE, BREAK_GLASS_STAFF)
HARBOR_MARKERS = ("Harbor Legal LLP", "harbor-legal")


@pytest.fixture
def northwind_person(users, ops_northwind, northwind):
    def person(username: str):
        if username == "ops.northwind":
            return ops_northwind
        if username == BREAK_GLASS_STAFF:
            staff = make_platform_staff(username)
            open_break_glass(user=staff, tenant=northwind, reason=BREAK_GLASS_REASON)
            return staff
        return users[username]

    return person


def label(model) -> str:
    return model._meta.label_lower


def is_tenant_scoped(model) -> bool:
    return model is Tenant or has_tenant_field(model)


REGISTERED = sorted(admin.site._registry, key=label)
TENANT_SCOPED = [model for model in REGISTERED if is_tenant_scoped(model)]
PLATFORM = [model for model in REGISTERED if not is_tenant_scoped(model)]


def rows_of(model, tenant: Tenant):
    if model is Tenant:
        return Tenant.objects.filter(pk=tenant.pk)
    return model._default_manager.filter(tenant=tenant)


def pks_of(model, tenant: Tenant) -> set:
    if not is_tenant_scoped(model):
        return set()
    return set(rows_of(model, tenant).values_list("pk", flat=True))


def url(model, view: str, *args) -> str:
    return reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_{view}", args=args)


def tenant_state(tenant: Tenant) -> dict:
    """Every row of the tenant, in every tenant-scoped table (history included)."""
    state = {
        label(model): sorted(rows_of(model, tenant).values(), key=lambda row: str(row))
        for model in apps.get_models()
        if is_tenant_scoped(model)
    }
    state["guardian"] = sorted(
        UserObjectPermission.objects.filter(
            content_type=ContentType.objects.get_for_model(Tenant), object_pk=str(tenant.pk)
        ).values_list("user_id", "permission_id")
    )
    return state


def walk(obj, path: str):
    for part in path.split("__"):
        obj = getattr(obj, part, None)
    return obj


def post_data(obj) -> dict:
    """An object's own values as form data (as someone would replay them)."""
    data = {"verdict": "approve", "comment": "sweep", "post": "yes"}
    for name, value in model_to_dict(obj).items():
        if value is None:
            value = ""
        elif isinstance(value, list) and all(hasattr(v, "pk") for v in value):
            value = [v.pk for v in value]  # a many-to-many field: its keys
        elif isinstance(value, (dict, list)):
            value = json.dumps(value)
        data[name] = value
    return data


def result_pks(response) -> set:
    return {obj.pk for obj in response.context["cl"].result_list}


def assert_no_harbor_text(response, where: str) -> None:
    content = response.content.decode()
    for marker in HARBOR_MARKERS:
        assert marker not in content, f"{where}: the page mentions {marker!r}"


# --- coverage -----------------------------------------------------------------------------


def test_every_registered_admin_is_covered():
    uncovered = []
    for model, model_admin in admin.site._registry.items():
        if is_tenant_scoped(model):
            assert isinstance(model_admin, TenantScopedAdmin), (
                f"{label(model)}: its admin must use TenantScopedAdmin"
            )
            for inline in model_admin.inlines:
                if is_tenant_scoped(inline.model):
                    assert issubclass(inline, TenantScopedAdmin), (
                        f"{label(model)}: inline {inline.__name__} must use TenantScopedAdmin"
                    )
        elif label(model) not in PLATFORM_ONLY:
            uncovered.append(label(model))

    assert uncovered == [], f"admins the sweep does not cover: {uncovered}"


# --- the sweep ----------------------------------------------------------------------------


@pytest.mark.parametrize("username", NORTHWIND_USERS)
@pytest.mark.parametrize("model", TENANT_SCOPED, ids=label)
def test_northwind_people_cannot_reach_harbors_objects(
    client, world, northwind_person, model, username
):
    harbor, northwind = world.harbor, world.northwind
    user = northwind_person(username)
    # Platform staff may open a grant to any active tenant: the form names them all, and
    # opening one (audited) is theirs to do, so that page is not part of their sweep.
    opens_grants = model is BreakGlassGrant and username == BREAK_GLASS_STAFF
    model_admin = admin.site._registry[model]
    harbor_pks = pks_of(model, harbor)
    target = rows_of(model, harbor).order_by("pk").first()
    assert target is not None, f"the world has no harbor-legal {label(model)}: extend build_world"
    mine = rows_of(model, northwind).order_by("pk").first()
    before = tenant_state(harbor)
    client.force_login(user)

    # The changelist lists only northwind's rows and never names harbor.
    changelist = client.get(url(model, "changelist"))
    assert changelist.status_code in (200, 403)
    listed = changelist.status_code == 200
    if listed:
        assert not result_pks(changelist) & harbor_pks, "changelist lists harbor rows"
        assert all(
            (obj.pk if model is Tenant else obj.tenant_id) == northwind.pk
            for obj in changelist.context["cl"].result_list
        )
        assert_no_harbor_text(changelist, "changelist")
        assert_filters_offer_no_harbor_values(changelist, model, harbor, northwind)

    # Filtering on harbor's tenant shows nothing.
    key = "id__exact" if model is Tenant else "tenant__id__exact"
    filtered = client.get(url(model, "changelist"), {key: harbor.pk})
    assert filtered.status_code == (200 if listed else 403)
    if listed:
        assert result_pks(filtered) == set()

    # Searching for harbor's values finds nothing of harbor.
    for field in model_admin.get_search_fields(None) or ():
        term = walk(target, field.lstrip("^=@"))
        if isinstance(term, str) and term:
            found = client.get(url(model, "changelist"), {"q": term})
            assert found.status_code == (200 if listed else 403)
            if listed:
                assert not result_pks(found) & harbor_pks, f"search on {field} finds harbor"

    # Lookups through relations to other rows' columns are refused.
    for lookup in sensitive_lookups(model):
        probe = client.get(url(model, "changelist"), {lookup: "^p"})
        assert probe.status_code == (400 if listed else 403), f"?{lookup}= was not refused"
    local = next(
        f.name
        for f in model._meta.concrete_fields
        if not f.primary_key and not f.is_relation and not f.unique
    )
    probe = client.get(url(model, "changelist"), {"_to_field": local})
    assert probe.status_code == (400 if listed else 403), f"?_to_field={local} was not refused"

    # Harbor's object pages do not exist for northwind.
    pages = [url(model, "change", target.pk), url(model, "delete", target.pk)]
    pages.append(url(model, "history", target.pk))
    if isinstance(model_admin, SimpleHistoryAdmin):
        version = target.history.order_by("history_date").first()
        pages.append(url(model, "simple_history", target.pk, version.history_id))
    for page in pages:
        assert client.get(page).status_code in (403, 404), f"GET {page} reached harbor"
        assert client.post(page, post_data(target)).status_code in (403, 404), (
            f"POST {page} reached harbor"
        )

    # Autocomplete of any relation to this model offers none of harbor's rows.
    for source, field in relations_to(model):
        for term in ("", "harbor", "Harbor"):
            found = client.get(
                reverse("admin:autocomplete"),
                {
                    "app_label": source._meta.app_label,
                    "model_name": source._meta.model_name,
                    "field_name": field.name,
                    "term": term,
                },
            )
            assert found.status_code in (200, 403, 404)
            if found.status_code == 200:
                ids = {result["id"] for result in found.json()["results"]}
                assert not ids & {str(pk) for pk in harbor_pks}, (
                    f"autocomplete of {label(source)}.{field.name} offers harbor rows"
                )

    # Forms offer no harbor choices.
    forms_to_check = [url(model, "add")]
    if mine is not None:
        forms_to_check.append(url(model, "change", mine.pk))
    if opens_grants:
        forms_to_check.remove(url(model, "add"))
    for page in forms_to_check:
        response = client.get(page)
        assert response.status_code in (200, 403), f"GET {page}"
        if response.status_code == 200 and "adminform" in response.context:
            assert_form_offers_no_harbor_choices(response.context["adminform"].form, harbor)
            assert_no_harbor_text(response, page)

    # Posting harbor's ids changes nothing: actions, an add with harbor's values.
    request = RequestFactory().get("/")
    request.user = user
    for action in model_admin.get_actions(request):
        base = {"action": action, "_selected_action": [target.pk]}
        client.post(url(model, "changelist"), {**base, "index": "0"})
        client.post(
            url(model, "changelist"), {**base, "post": "yes", "confirm": "yes", "reason": "x"}
        )
    if not opens_grants:
        client.post(url(model, "add"), post_data(target))

    assert tenant_state(harbor) == before


def sensitive_lookups(model) -> list[str]:
    lookups = [
        f"{field.name}__password__regex"
        for field in model._meta.concrete_fields
        if field.is_relation and field.related_model is User
    ]
    if model is Tenant:
        lookups += ["memberships__user__password__regex", "memberships__user__email"]
    else:
        lookups += ["tenant__slug", "tenant__memberships__user__password__regex"]
    return lookups


def relations_to(model) -> list:
    """Every foreign key (in any model) whose autocomplete would list `model`'s rows."""
    return [
        (source, field)
        for source in apps.get_models()
        for field in source._meta.concrete_fields
        if field.is_relation and field.related_model is model
    ]


def assert_filters_offer_no_harbor_values(response, model, harbor, northwind) -> None:
    for spec in response.context["cl"].filter_specs:
        if isinstance(spec, RelatedFieldListFilter):
            offered = {pk for pk, _ in spec.lookup_choices}
            assert not offered & pks_of(spec.field.related_model, harbor), (
                f"filter {spec.field_path} offers harbor values"
            )
        elif isinstance(spec, AllValuesFieldListFilter):
            path = spec.field_path
            harbor_only = set(rows_of(model, harbor).values_list(path, flat=True)) - set(
                rows_of(model, northwind).values_list(path, flat=True)
            )
            assert not set(spec.lookup_choices) & harbor_only, (
                f"filter {path} offers values only harbor has"
            )


def assert_form_offers_no_harbor_choices(form, harbor) -> None:
    for name, field in form.fields.items():
        queryset = getattr(field, "queryset", None)
        if queryset is None or queryset.model is User:
            continue
        offered = set(queryset.values_list("pk", flat=True))
        assert not offered & pks_of(queryset.model, harbor), f"field {name} offers harbor rows"


def outsiders(tenant: Tenant) -> list:
    """Accounts that are neither members of the tenant nor platform staff who opened a
    break-glass grant on it (those a tenant is shown, on its grants' pages)."""
    granted = BreakGlassGrant.objects.filter(tenant=tenant).values("user_id")
    return list(User.objects.exclude(memberships__tenant=tenant).exclude(pk__in=granted))


@pytest.mark.parametrize("username", TENANT_PEOPLE)
@pytest.mark.parametrize("model", TENANT_SCOPED, ids=label)
def test_northwind_people_see_no_account_outside_their_tenant(
    client, world, northwind_person, model, username
):
    user = northwind_person(username)
    User.objects.create_user("nobody.yet", "nobody.yet@example.com", "pw-1", is_staff=True)
    make_platform_staff("sre.elsewhere")
    hidden = outsiders(world.northwind)
    members = set(
        User.objects.filter(memberships__tenant=world.northwind).values_list("pk", flat=True)
    )
    assert {"reviewer.harbor", "nobody.yet", "sre.elsewhere"} <= {u.username for u in hidden}
    client.force_login(user)
    mine = rows_of(model, world.northwind).order_by("pk").first()

    pages = [url(model, "changelist"), url(model, "add")]
    if mine is not None:
        pages.append(url(model, "change", mine.pk))
    for page in pages:
        response = client.get(page)
        assert response.status_code in (200, 403), f"GET {page}"
        if response.status_code != 200:
            continue
        content = response.content.decode()
        for person in hidden:
            for trace in (person.username, person.email):
                assert trace not in content, f"{page} shows {trace!r}"
        if "adminform" in response.context:
            for name, field in response.context["adminform"].form.fields.items():
                queryset = getattr(field, "queryset", None)
                if queryset is not None and queryset.model is User:
                    offered = set(queryset.values_list("pk", flat=True))
                    assert offered <= members, f"{page}: field {name} offers other accounts"


# --- the admins' own pages beyond Django's (one-click views, forms of their own) -----------

STANDARD_VIEWS = {"changelist", "add", "history", "delete", "change", "simple_history"}
# Pages without an object in their URL, swept by their own tests (the audit export's filters).
WITHOUT_OBJECT = {"audit_auditevent_export"}


def custom_admin_urls() -> list[tuple[type, object]]:
    """(model, URL pattern) of every page a tenant-scoped ModelAdmin adds to its standard ones."""
    from django.urls import URLPattern

    found = []
    for model in TENANT_SCOPED:
        prefix = f"{model._meta.app_label}_{model._meta.model_name}_"
        for pattern in admin.site._registry[model].get_urls():
            if not isinstance(pattern, URLPattern) or not pattern.name:
                continue
            if pattern.name.removeprefix(prefix) not in STANDARD_VIEWS:
                found.append((model, pattern))
    return found


def harbor_ids(world, model) -> dict[str, int]:
    """Harbor's object for each URL parameter a custom admin page takes."""
    from approvals.models import Decision
    from roles.models import RoleVersion

    harbor = world.harbor
    return {
        "object_id": rows_of(model, harbor).order_by("pk").first().pk,
        "decision_id": Decision.objects.filter(tenant=harbor, verdict="edit").get().pk,
        "run_id": world.completed_run.pk,
        "version_id": RoleVersion.objects.filter(tenant=harbor).order_by("-created_at").first().pk,
    }


def test_the_custom_admin_pages_are_known():
    names = {pattern.name for _, pattern in custom_admin_urls()}

    assert names == {
        "roles_role_canary",
        "roles_role_compare",
        "roles_role_canary_compare",
        "roles_goldencase_from_decision",
        "roles_goldencase_from_run",
        "roles_suiterun_start",
        "roles_roleversion_edit",
        "roles_roleversion_request_publication",
        "roles_roleversion_activate",
        *WITHOUT_OBJECT,
    }


@pytest.mark.parametrize("username", NORTHWIND_USERS)
def test_northwind_people_reach_nothing_of_harbor_through_custom_admin_pages(
    client, world, northwind_person, users, username
):
    from approvals.services import decide

    # A harbor edit that a harbor operator could turn into a golden case.
    draft = world.request.proposal["draft"]
    decide(
        request=world.request,
        reviewer=users["reviewer.harbor"],
        verdict="edit",
        edited_payload={"draft": {**draft, "subject": "Re: Your lease"}},
        comment="sweep",
    )
    user = northwind_person(username)
    before = tenant_state(world.harbor)
    client.force_login(user)

    for model, pattern in custom_admin_urls():
        params = list(pattern.pattern.converters)
        if not params:
            assert pattern.name in WITHOUT_OBJECT
            continue
        ids = harbor_ids(world, model)
        unknown = [name for name in params if name not in ids]
        assert not unknown, f"{pattern.name}: extend harbor_ids with {unknown}"
        page = reverse(f"admin:{pattern.name}", kwargs={name: ids[name] for name in params})
        for response in (client.get(page), client.post(page, {"percent": 50, "version": ""})):
            assert response.status_code in (403, 404, 405), f"{pattern.name} reached harbor"
            assert_no_harbor_text(response, page)

    assert tenant_state(world.harbor) == before


# --- platform-only admins -------------------------------------------------------------------


@pytest.mark.parametrize("username", TENANT_PEOPLE)
@pytest.mark.parametrize("model", PLATFORM, ids=label)
def test_platform_admins_are_closed_to_tenant_people(
    client, users, ops_northwind, platform_operator, model, username
):
    user = ops_northwind if username == "ops.northwind" else users[username]
    client.force_login(user)

    changelist = client.get(url(model, "changelist"))
    add = client.get(url(model, "add"))

    assert changelist.status_code == 403
    assert add.status_code == 403
    client.force_login(platform_operator)
    assert client.get(url(model, "changelist")).status_code == 200


@pytest.mark.parametrize("username", NORTHWIND_USERS)
def test_index_and_app_pages_name_no_other_tenant(client, world, northwind_person, username):
    user = northwind_person(username)
    client.force_login(user)
    app_labels = sorted({model._meta.app_label for model in TENANT_SCOPED})

    index = client.get(reverse("admin:index"))

    assert index.status_code == 200
    assert "Northwind Accounting" in index.content.decode()
    assert_no_harbor_text(index, "index")
    for app_label in app_labels:
        try:
            page = reverse("admin:app_list", args=[app_label])
        except NoReverseMatch:
            continue
        response = client.get(page)
        assert response.status_code in (200, 404)
        assert_no_harbor_text(response, page)


# --- pages under /admin/ that no ModelAdmin serves: the audit reports -----------------------

REPORT_PAGES = ("run", "tenant", "reads", "approvals", "changes")
WHOLE_TIME = {"since": "2000-01-01", "until": "2099-12-31"}


def admin_routes_outside_the_admin_site() -> set[str]:
    """Names of the routes under /admin/ that admin.site's own URLs (swept above) do not hold."""
    from django.urls import URLPattern, URLResolver, get_resolver

    found = set()

    def visit(patterns, prefix, namespace):
        for pattern in patterns:
            if isinstance(pattern, URLResolver):
                if pattern.namespace == admin.site.name:
                    continue
                path = prefix + str(pattern.pattern)
                visit(pattern.url_patterns, path, pattern.namespace or namespace)
            elif isinstance(pattern, URLPattern) and (prefix + str(pattern.pattern)).startswith(
                "/admin/"
            ):
                found.add(f"{namespace}:{pattern.name}")

    visit(get_resolver().url_patterns, "/", None)
    return found


def test_every_page_under_the_admin_outside_its_model_admins_is_swept():
    assert admin_routes_outside_the_admin_site() == {
        "audit_reports:index",
        *(f"audit_reports:{page}" for page in REPORT_PAGES),
        *(f"audit_reports:{page}_download" for page in REPORT_PAGES),
        "signin:setup",
        "signin:verify",
    }


@pytest.mark.parametrize("username", NORTHWIND_USERS)
def test_the_second_factor_pages_name_only_the_person_themselves(
    client, world, northwind_person, username
):
    from tests.conftest import force_login_password_only

    user = northwind_person(username)
    force_login_password_only(client, user)
    before = tenant_state(world.harbor)

    for page in (reverse("signin:setup"), reverse("signin:verify")):
        for response in (client.get(page), client.post(page, {"code": "123456"})):
            assert response.status_code in (200, 302, 400), page
            assert_no_harbor_text(response, page)

    assert tenant_state(world.harbor) == before


def harbor_asks(world) -> dict[str, list[dict]]:
    """What a northwind person could ask of harbor's trail: harbor as the tenant, or their
    own tenant with harbor's run, role and role version."""
    harbor, northwind = world.harbor.pk, world.northwind.pk
    run = world.completed_run
    return {
        "run": [
            {"tenant": harbor, "run": run.pk},
            {"tenant": northwind, "run": run.pk},
            {"tenant": northwind, "run": world.parked_run.pk},
        ],
        "tenant": [{"tenant": harbor, **WHOLE_TIME}],
        "reads": [
            {"tenant": harbor, **WHOLE_TIME},
            {"tenant": northwind, "employee": f"version:{run.role_version_id}", **WHOLE_TIME},
            {"tenant": northwind, "employee": f"role:{run.role_id}", **WHOLE_TIME},
        ],
        "approvals": [{"tenant": harbor, **WHOLE_TIME}],
        "changes": [{"tenant": harbor, **WHOLE_TIME}],
    }


@pytest.mark.parametrize("username", NORTHWIND_USERS)
def test_northwind_people_get_nothing_of_harbor_from_the_audit_reports(
    client, world, northwind_person, username
):
    user = northwind_person(username)
    may_audit = username != "reviewer.northwind"
    before = tenant_state(world.harbor)
    client.force_login(user)

    index = client.get(reverse("audit_reports:index"))
    assert index.status_code == (200 if may_audit else 403)
    assert_no_harbor_text(index, "reports index")
    for page, asks in harbor_asks(world).items():
        for params in asks:
            shown = client.get(reverse(f"audit_reports:{page}"), params)
            made = client.post(reverse(f"audit_reports:{page}_download"), params)

            where = f"{page} {params}"
            assert shown.status_code in (200, 403, 404), where
            if shown.status_code == 200:
                assert not shown.context["answered"], f"{where} answered"
            assert made.status_code in (400, 403, 404), f"download {where}"
            assert_no_harbor_text(shown, where)
            assert_no_harbor_text(made, f"download {where}")
        # Their own tenant's report names nothing of harbor.
        own = {"tenant": world.northwind.pk, **WHOLE_TIME}
        if page == "run":
            own = {"tenant": world.northwind.pk, "run": northwind_run(world).pk}
        mine = client.get(reverse(f"audit_reports:{page}"), own)
        assert mine.status_code == (200 if may_audit else 403)
        assert_no_harbor_text(mine, f"{page} of northwind")

    assert tenant_state(world.harbor) == before


def northwind_run(world):
    from desk.models import Run

    return Run.objects.filter(tenant=world.northwind).order_by("pk").first()


# --- pages outside the admin and the API ----------------------------------------------------


def public_routes() -> list[tuple[str, str | None]]:
    """Every route outside /admin/ and /api/v1/ (those are swept above and in test_api)."""
    from django.urls import URLPattern, URLResolver, get_resolver

    found = []

    def visit(patterns, prefix):
        for pattern in patterns:
            if isinstance(pattern, URLResolver):
                visit(pattern.url_patterns, prefix + str(pattern.pattern))
            elif isinstance(pattern, URLPattern):
                found.append((prefix + str(pattern.pattern), pattern.name))

    visit(get_resolver().url_patterns, "/")
    return [r for r in found if not r[0].startswith(("/admin/", "/api/v1/"))]


def test_every_page_outside_the_admin_and_the_api_is_swept():
    # The home page redirects; /healthz names no tenant; an approval link is swept below.
    assert {name for _, name in public_routes()} == {None, "healthz", "approval-link"}


def mailed_links(tenant: Tenant) -> list[str]:
    """Send the tenant's waiting request's notification with signed links; their paths."""
    import re

    from django.core import mail

    from approvals.models import ApprovalRequest
    from approvals.services import notify_reviewers

    request = ApprovalRequest.objects.get(tenant=tenant, status="pending", notified_at=None)
    ApprovalRequest.objects.filter(pk=request.pk).update(rule={**request.rule, "email_links": True})
    mail.outbox.clear()
    assert notify_reviewers(request_id=request.pk) > 0
    return [
        match[1]
        for message in mail.outbox
        for match in re.finditer(r"https?://[^/\s]+(/approvals/link/[^/\s]+/)", message.body)
    ]


def code_for_link(path: str) -> str:
    """A second-factor code of the reviewer a link was mailed to (a decision needs one)."""
    import hashlib

    from approvals.models import ApprovalLink
    from tests.conftest import second_factor_code

    token = path.rstrip("/").rsplit("/", 1)[-1]
    link = ApprovalLink.objects.get(token_hash=hashlib.sha256(token.encode()).hexdigest())
    return second_factor_code(link.reviewer)


@pytest.mark.parametrize("username", NORTHWIND_USERS)
def test_northwind_people_reach_nothing_of_harbor_through_approval_links(
    client, world, northwind_person, username
):
    from approvals.models import ApprovalLink, Decision

    harbor_links = ApprovalLink.objects.filter(tenant=world.harbor)
    assert mailed_links(world.harbor) and harbor_links.exists()
    theirs = mailed_links(world.northwind)
    user = northwind_person(username)
    before = tenant_state(world.harbor)
    client.force_login(user)
    # What a northwind person could know of harbor: its ids and, from a leak, stored hashes.
    harbor_ids = {
        "request": world.request.pk,
        "request_id": world.request.pk,
        "tenant": world.harbor.pk,
        "reviewer": harbor_links.first().reviewer_id,
        "comment": "sweep",
    }
    guesses = [str(world.request.pk), str(harbor_links.first().pk)]
    for stored in harbor_links.values_list("token_hash", flat=True):
        guesses += [stored, stored[:43]]

    for guess in guesses:
        path = f"/approvals/link/{guess}/"
        assert client.get(path).status_code == 404, f"GET {path}"
        assert client.post(path, harbor_ids).status_code == 404, f"POST {path}"
    for path in theirs:
        page = client.get(path)
        assert page.status_code == 200
        assert_no_harbor_text(page, path)
    for path in theirs:  # the first decides northwind's request; the rest are then refused
        posted = client.post(path, {**harbor_ids, "code": code_for_link(path)})
        assert posted.status_code in (200, 400, 410), f"POST {path}"
        assert_no_harbor_text(posted, path)

    assert tenant_state(world.harbor) == before
    assert Decision.objects.filter(tenant=world.northwind, via="email link").count() == 1


# --- pages a ModelAdmin adds on one of its objects ------------------------------------------

STANDARD_VIEWS = ("changelist", "add", "change", "delete", "history", "simple_history")


def added_object_routes() -> list[tuple[type, str]]:
    """(model, URL name) of every page on one object that a ModelAdmin adds to the standard
    ones (swept above): a canary, a comparison…"""
    routes = []
    for model, model_admin in admin.site._registry.items():
        opts = model._meta
        standard = {f"{opts.app_label}_{opts.model_name}_{view}" for view in STANDARD_VIEWS}
        for pattern in model_admin.get_urls():
            named = pattern.name is not None  # the unnamed catch-all redirects to the change page
            if named and "object_id" in str(pattern.pattern) and pattern.name not in standard:
                routes.append((model, pattern.name))
    return sorted(routes, key=lambda route: route[1])


# What each page is asked, with harbor's ids where it takes ids (filled in by harbor_params).
ADDED_OBJECT_PAGES = {
    "roles_role_canary": "canary",
    "roles_role_compare": "versions",
    "roles_role_canary_compare": "versions",
    "roles_roleversion_edit": "form",
    "roles_roleversion_request_publication": "form",
    "roles_roleversion_activate": "form",
}


def test_every_page_a_model_admin_adds_on_an_object_is_swept():
    assert {name for _, name in added_object_routes()} == set(ADDED_OBJECT_PAGES)


def harbor_params(kind: str, harbor: Tenant) -> dict:
    from roles.models import RoleVersion

    version = RoleVersion.objects.filter(tenant=harbor).order_by("-number", "pk").first()
    if kind == "canary":
        return {"version": version.pk, "percent": "50", "_confirm": "1"}
    if kind == "form":
        return {"definition": "{}", "change_note": "sweep", "override_reason": "sweep"}
    return {
        "old": version.pk,
        "new": version.pk,
        "versions": [version.pk],
        "since_date": "2000-01-01",
        "until_date": "2000-12-31",
    }


def harbor_objects_in(context, harbor: Tenant) -> list:
    """Model instances of harbor's in a page's context (also in lists and figures)."""
    from django.db.models import Model

    found = []

    def visit(value, depth=0):
        if isinstance(value, Model):
            tenant_id = value.pk if isinstance(value, Tenant) else getattr(value, "tenant_id", None)
            if tenant_id == harbor.pk:
                found.append(value)
        elif isinstance(value, (list, tuple)) and depth < 2:
            for item in value:
                visit(item, depth + 1)
        elif hasattr(value, "version") and isinstance(value.version, Model):
            visit(value.version, depth + 1)

    for each in context if isinstance(context, list) else [context]:  # a ContextList
        for value in each.flatten().values():
            visit(value)
    return found


@pytest.mark.parametrize("username", NORTHWIND_USERS)
def test_northwind_people_reach_nothing_of_harbor_through_added_object_pages(
    client, world, northwind_person, username
):
    user = northwind_person(username)
    before = tenant_state(world.harbor)
    client.force_login(user)

    for model, name in added_object_routes():
        params = harbor_params(ADDED_OBJECT_PAGES[name], world.harbor)
        target = rows_of(model, world.harbor).order_by("pk").first()
        page = reverse(f"admin:{name}", args=[target.pk])
        assert client.get(page).status_code in (403, 404), f"GET {page} reached harbor"
        assert client.get(page, params).status_code in (403, 404), f"GET {page} reached harbor"
        assert client.post(page, params).status_code in (403, 404), f"POST {page} reached harbor"

        # Their own object's page, asked about harbor's ids, shows nothing of harbor.
        mine = rows_of(model, world.northwind).order_by("pk").first()
        own = client.get(reverse(f"admin:{name}", args=[mine.pk]), params)
        assert own.status_code in (200, 302, 403), f"GET {name} of northwind"
        if own.status_code == 200:
            assert_no_harbor_text(own, f"{name} of northwind")
            assert harbor_objects_in(own.context, world.harbor) == [], f"{name} shows harbor"

    assert tenant_state(world.harbor) == before
