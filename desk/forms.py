"""Forms of the runs' admin pages."""

from __future__ import annotations

from django import forms

from desk.services import RunError
from roles.models import Role
from tenants.admin_scoping import PrettyJSONField
from tenants.models import Tenant

# Which field a start_run error belongs to (the others are about the whole form).
RUN_ERROR_FIELDS = {
    "tenant_inactive": "tenant",
    "role_not_found": "role",
    "no_active_version": "role",
    "invalid_input": "input",
}


class StartRunForm(forms.Form):
    tenant = forms.ModelChoiceField(queryset=Tenant.objects.none())
    role = forms.ModelChoiceField(
        queryset=Role.objects.none(), help_text="The AI employee who does the work."
    )
    input = PrettyJSONField(
        help_text="A JSON object matching the role's input schema (shown below when a role "
        "is chosen from its page)."
    )

    def __init__(self, *args, tenants, roles, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["tenant"].queryset = tenants
        self.fields["role"].queryset = roles.select_related("tenant").order_by(
            "tenant__name", "name"
        )

    def add_run_error(self, error: RunError) -> None:
        """Show why start_run refused, with every detail it gave."""
        field = RUN_ERROR_FIELDS.get(error.code)
        self.add_error(field, error.message)
        for detail in error.details:
            self.add_error(field, f"{detail.get('field', '(root)')}: {detail.get('message', '')}")
