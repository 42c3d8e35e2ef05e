"""What an auditor asks a report for: a tenant they may audit, a period of whole days, a run,
an AI employee (a role, or one of its versions)."""

from __future__ import annotations

from django import forms
from django.utils import timezone

from audit.reports import AIEmployee, Period


class TenantField(forms.ModelChoiceField):
    def label_from_instance(self, obj):
        return obj.name


class TenantReportForm(forms.Form):
    """The tenant; `tenants` are those the user may audit (another one is not a choice)."""

    tenant = TenantField(queryset=None, empty_label=None)

    def __init__(self, *args, tenants, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["tenant"].queryset = tenants


class RunReportForm(TenantReportForm):
    run = forms.IntegerField(label="Run", min_value=1, help_text="The run's number, e.g. 42.")


class PeriodForm(TenantReportForm):
    since = forms.DateField(
        label="From", widget=forms.DateInput(attrs={"type": "date"}, format="%Y-%m-%d")
    )
    until = forms.DateField(
        label="To",
        widget=forms.DateInput(attrs={"type": "date"}, format="%Y-%m-%d"),
        help_text="Included: the report covers whole days, from 00:00:00 to 23:59:59.",
    )

    def clean(self):
        cleaned = super().clean()
        since, until = cleaned.get("since"), cleaned.get("until")
        if since and until and until < since:
            self.add_error("until", "The period ends before it starts: pick a later date.")
        return cleaned

    def period(self) -> Period:
        return Period(self.cleaned_data["since"], self.cleaned_data["until"])

    @staticmethod
    def default_initial() -> dict:
        """This month so far."""
        today = timezone.localdate()
        return {"since": today.replace(day=1), "until": today}


ALL_EMPLOYEES = ""


class DataReadsForm(PeriodForm):
    """Adds the AI employee: a role (all its versions) or one version of it."""

    employee = forms.ChoiceField(label="AI employee", required=False)

    field_order = ["tenant", "employee", "since", "until"]

    def __init__(self, *args, employees: list[AIEmployee], **kwargs):
        super().__init__(*args, **kwargs)
        self.employees = employees
        names = {t.pk: t.name for t in self.fields["tenant"].queryset}
        choices: list = [(ALL_EMPLOYEES, "Every AI employee")]
        for tenant_id, name in names.items():
            group = []
            for employee in (e for e in employees if e.tenant_id == tenant_id):
                group.append((f"role:{employee.role_id}", f"{employee.name} (every version)"))
                group += [
                    (f"version:{version_id}", f"{employee.slug} v{number}")
                    for version_id, number in employee.versions
                ]
            if group:
                choices.append((name, group))
        self.fields["employee"].choices = choices

    def clean(self):
        cleaned = super().clean()
        tenant, chosen = cleaned.get("tenant"), cleaned.get("employee")
        if tenant is not None and chosen and self.chosen(tenant.pk, chosen) is None:
            self.add_error("employee", "This AI employee does not work for the chosen tenant.")
        return cleaned

    def chosen(self, tenant_id: int, value: str) -> tuple[str, list[int]] | None:
        """(label, role version ids) of a choice within the tenant, or None."""
        kind, _, key = value.partition(":")
        for employee in (e for e in self.employees if e.tenant_id == tenant_id):
            if kind == "role" and key == str(employee.role_id):
                return f"{employee.name} ({employee.slug}, every version)", employee.version_ids()
            for version_id, number in employee.versions:
                if kind == "version" and key == str(version_id):
                    return f"{employee.name} ({employee.slug} v{number})", [version_id]
        return None

    def role_versions(self) -> tuple[str, list[int] | None]:
        """(who, role version ids): every AI employee is (…, None)."""
        value = self.cleaned_data.get("employee")
        if not value:
            return "every AI employee", None
        return self.chosen(self.cleaned_data["tenant"].pk, value)


def page_number(value) -> int:
    try:
        return max(1, int(value))
    except (TypeError, ValueError):
        return 1
