"""Changelists of the tables that grow with the work (runs, approval requests, escalations,
audit events, the outbox): pages that cost the same with a hundred rows or a million.

Django's changelist counts every filtered row to number its pages, and counts the whole
table once more for "N total". Here neither happens:

- `CappedPaginator` counts at most the rows up to `PAGES_AHEAD` pages past the page asked
  for, over a LIMITed subquery (`SELECT COUNT(*) FROM (SELECT … LIMIT n)`). Below that the
  count is exact and the page links, "Show all" and the last-page link are Django's. Past
  it the page says "1,000+ runs", links the pages around this one and ends in "…": the last
  page is not known without reading everything (nor is "Show all" offered: it counts at
  least `list_max_show_all` rows). Any page can still be opened (`?p=200` counts up to
  page 210), and a page past the end is refused as Django refuses it.
- `BigTableAdmin` uses that paginator, turns off the full count and the filters' facet
  counts (each a count over the table), and builds its filters' choices without reading
  the table: a related filter (tenant, role) offers the related rows of the tenants the user
  may see, not the distinct ones of the table's rows; a filter on a text column (an
  event's action) offers the values of the newest rows and the one asked for. A date
  filter offers fixed ranges (today, the past 7 days, this month, this year): Django's date
  hierarchy reads the first and last date and every distinct year, month or day.
"""

from __future__ import annotations

from django.contrib import admin
from django.contrib.admin.utils import get_fields_from_path
from django.contrib.admin.views.main import IGNORED_PARAMS, PAGE_VAR, ChangeList
from django.core.paginator import Paginator
from django.db import models
from django.utils.functional import cached_property

from tenants.admin_scoping import ScopedRelatedFilter, TenantScopedAdmin, has_tenant_field
from tenants.models import Tenant
from tenants.scoping import scope_to_user, visible_tenants

PAGES_AHEAD = 10


def count_at_most(queryset, limit: int) -> int:
    """The number of rows, counted no further than `limit` + 1: `limit` + 1 means "more than
    `limit`". One query over a LIMITed subquery, in no particular order."""
    return queryset.order_by()[: limit + 1].count()


def at_least(count: int, limit: int) -> str:
    """ "1,000+" when `count` (from count_at_most) is past `limit`, else the count."""
    return f"{limit:,}+" if count > limit else str(count)


class CappedPaginator(Paginator):
    """A paginator that counts no further than `pages_ahead` pages past the page asked for
    (`page`, from the request), and no less than `minimum` rows; see the module's docstring."""

    pages_ahead = PAGES_AHEAD

    def __init__(
        self, object_list, per_page, orphans=0, allow_empty_first_page=True, *, page=1, minimum=0
    ):
        super().__init__(object_list, per_page, orphans, allow_empty_first_page)
        self.page_asked = max(page, 1)
        self.minimum = minimum

    @property
    def limit(self) -> int:
        """The rows counted at most: those of the pages up to `pages_ahead` past the one asked."""
        return max((self.page_asked - 1 + self.pages_ahead) * self.per_page, self.minimum)

    @cached_property
    def count(self) -> int:
        return count_at_most(self.object_list, self.limit)

    def rows(self, bottom: int, top: int):
        """Rows `bottom` to `top` in two queries: first their keys, from the table alone (an
        index of the tenant and the order serves it, and a deep page skips index entries,
        not joined rows), then those rows with what the page shows of them. In one query
        the planner, who cannot know how many rows row-level security lets through, may
        join and sort every row of a big tenant to keep a hundred."""
        keys = list(self.object_list.values_list("pk", flat=True)[bottom:top])
        return self.object_list.filter(pk__in=keys)

    def page(self, number):
        number = self.validate_number(number)
        bottom = (number - 1) * self.per_page
        top = bottom + self.per_page
        if top + self.orphans >= self.count:
            top = self.count
        return self._get_page(self.rows(bottom, top), number, self)

    @property
    def capped(self) -> bool:
        """Whether there are more rows than were counted (the count is a lower bound)."""
        return self.count > self.limit

    @property
    def count_label(self) -> str:
        return at_least(self.count, self.limit)

    def get_elided_page_range(self, number=1, *, on_each_side=3, on_ends=2):
        if not self.capped:
            yield from super().get_elided_page_range(
                number, on_each_side=on_each_side, on_ends=on_ends
            )
            return
        # The first pages and those around this one, then "…": no last page (not counted).
        number = self.validate_number(number)
        if number > (1 + on_each_side + on_ends) + 1:
            yield from range(1, on_ends + 1)
            yield self.ELLIPSIS
            yield from range(number - on_each_side, number + 1)
        else:
            yield from range(1, number + 1)
        yield from range(number + 1, min(number + on_each_side, self.num_pages) + 1)
        yield self.ELLIPSIS


def page_asked(request) -> int:
    """The changelist page the request asks for, read as Django's ChangeList reads it."""
    try:
        return int(request.GET.get(PAGE_VAR, 1))
    except ValueError:
        return 1


class VisibleRelatedFilter(ScopedRelatedFilter):
    """A big table's filter on a related table: the tenants the user may see on the page
    (one small query, shared with the page's other lists of tenants), or the related rows
    of those tenants (a run's role), at most `max_choices`; not the distinct related rows of
    the table's rows (a read of the whole table). The value asked for always applies."""

    max_choices = 200

    def field_choices(self, field, request, model_admin):
        kinds = model_admin._visible_kinds()
        if kinds == ():
            return []
        related_model = field.remote_field.model
        if related_model is Tenant:
            return [(t.pk, str(t)) for t in visible_tenants(request.user, kinds=kinds)]
        if not has_tenant_field(related_model):
            return super().field_choices(field, request, model_admin)
        related = scope_to_user(related_model._default_manager.all(), request.user, kinds=kinds)
        ordering = self.field_admin_ordering(field, request, model_admin) or ("pk",)
        related = related.select_related("tenant").order_by(*ordering)[: self.max_choices]
        return [(obj.pk, str(obj)) for obj in related]


class RecentValuesFilter(admin.AllValuesFieldListFilter):
    """A big table's filter on a text column (an audit event's action, a request's
    category): the values of the newest `recent_rows` rows the user may see (in the page's
    order), and the value asked for; not the distinct values of every row (a read of the
    whole table). A rarer value is still one search, or `?field=value`, away."""

    recent_rows = 1000

    def __init__(self, field, request, params, model, model_admin, field_path):
        super().__init__(field, request, params, model, model_admin, field_path)
        newest = (
            model_admin.get_queryset(request)
            .order_by(*model_admin.get_ordering(request))
            .values_list(field.name, flat=True)[: self.recent_rows]
        )
        values = {value for value in newest if value is not None} | set(self.lookup_val or ())
        self.lookup_choices = sorted(values)
        self.title = f"{self.title} (in the latest {self.recent_rows:,})"


class CappedChangeList(ChangeList):
    """Django's changelist over a capped count. Unfiltered, it says nothing beside the search
    box, as Django's does when the page shows the whole table (it cannot tell "N total")."""

    def get_results(self, request):
        super().get_results(request)
        if not self.query and all(name in IGNORED_PARAMS for name in self.params):
            self.full_result_count = self.result_count
        if not self.multi_page and not (self.show_all and self.can_show_all):
            # One page of results (a search that found a few): read as any page is.
            self.result_list = self.paginator.rows(0, self.result_count)


class BigTableAdmin(TenantScopedAdmin):
    """The changelist of a tenant-scoped table that grows with the work: no count of the
    whole table, the capped paginator, no facet counts, the tenant filter from the user's
    tenants. Its pages cost a fixed number of queries (tests/admin/test_page_queries.py)."""

    paginator = CappedPaginator
    show_full_result_count = False
    show_facets = admin.ShowFacets.NEVER

    def get_changelist(self, request, **kwargs):
        return CappedChangeList

    def get_paginator(self, request, queryset, per_page, orphans=0, allow_empty_first_page=True):
        # Counted at least past "Show all"'s limit: it is offered only for what fits in it.
        return self.paginator(
            queryset,
            per_page,
            orphans,
            allow_empty_first_page,
            page=page_asked(request),
            minimum=self.list_max_show_all,
        )

    def _scoped_filter(self, item):
        if not isinstance(item, str):
            return item
        field = get_fields_from_path(self.model, item)[-1]
        if field.is_relation:
            return (item, VisibleRelatedFilter)
        if isinstance(field, models.DateTimeField):
            return (item, admin.DateFieldListFilter)
        if not field.choices and isinstance(field, models.CharField):
            return (item, RecentValuesFilter)
        return item

    def changelist_view(self, request, extra_context=None):
        response = super().changelist_view(request, extra_context)
        context = getattr(response, "context_data", None) or {}
        changelist = context.get("cl")
        if changelist is not None and getattr(changelist.paginator, "capped", False):
            # "All 1,001 selected" would be wrong: the count is a lower bound.
            context["selection_note_all"] = f"All {changelist.paginator.count_label} selected"
        return response
