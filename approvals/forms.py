"""The reviewer's decision form: a draft or a tool call is edited as its fields (built from
the step's JSON Schema), not as raw JSON; a checkpoint's corrections as JSON per step."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

from django import forms

from approvals.edits import edit_schema
from approvals.models import Decision
from tenants.safe_json import SafeJSONField, UnsafeJSON, check, validation_error

PREFIX = "field__"


def _field_for(name: str, schema: dict[str, Any], *, required: bool) -> forms.Field:
    label = schema.get("title") or name.replace("_", " ")
    help_text = schema.get("description", "")
    kinds = schema.get("type")
    kinds = kinds if isinstance(kinds, list) else [kinds]
    if "enum" in schema:
        return forms.ChoiceField(
            label=label,
            help_text=help_text,
            required=required,
            choices=[(json.dumps(v), str(v)) for v in schema["enum"]],
        )
    if kinds == ["string"]:
        long = schema.get("maxLength", 0) > 200 or name in ("body", "summary", "text", "notes")
        return forms.CharField(
            label=label,
            help_text=help_text,
            required=False,  # the schema says whether empty is allowed
            strip=False,
            widget=forms.Textarea(attrs={"rows": 8, "class": "vLargeTextField"})
            if long
            else forms.TextInput(attrs={"class": "vLargeTextField"}),
        )
    if kinds in (["number"], ["integer"]):
        return forms.DecimalField(label=label, help_text=help_text, required=False)
    if kinds == ["boolean"]:
        return forms.BooleanField(label=label, help_text=help_text, required=False)
    return SafeJSONField(
        label=label,
        help_text=help_text or "JSON",
        required=False,
        widget=forms.Textarea(attrs={"rows": 4, "class": "vLargeTextField desk-json"}),
    )


def _to_json(field: forms.Field, value: Any) -> Any:
    if isinstance(field, forms.ChoiceField):
        return json.loads(value) if value else None
    if isinstance(value, Decimal):  # JSON numbers: whole ones stay whole
        # Beyond 19 digits as a float (inf for 1e999999999), which clean() refuses (safe
        # JSON), rather than an integer of a billion digits; no arithmetic (it would overflow).
        small = value.is_finite() and value.adjusted() < 19
        return int(value) if small and value == value.to_integral_value() else float(value)
    return value


def _initial(field: forms.Field, value: Any) -> Any:
    if isinstance(field, forms.ChoiceField):
        return json.dumps(value)
    return value


class ReviewForm(forms.Form):
    """The decision box. `request` is the ApprovalRequest under review: its proposal gives
    the editable fields and their values."""

    verdict = forms.ChoiceField(choices=Decision.Verdict.choices)
    version = forms.IntegerField(widget=forms.HiddenInput)
    comment = forms.CharField(
        required=False,
        widget=forms.Textarea(attrs={"rows": 3, "class": "vLargeTextField"}),
        help_text="Required to reject or to send back for revision; the AI employee reads it.",
    )

    def __init__(self, *args, request, **kwargs):
        super().__init__(*args, **kwargs)
        self.approval = request
        self.fields["version"].initial = request.version
        self.editable, self.values = self._editable(request)
        for name, (field, _schema) in self.editable.items():
            field.initial = _initial(field, self.values.get(name))
            self.fields[PREFIX + name] = field

    @staticmethod
    def _editable(request) -> tuple[dict[str, tuple[forms.Field, dict]], dict[str, Any]]:
        kind = request.step.kind
        proposal = request.proposal
        if kind in ("llm", "tool"):
            values = (proposal.get("draft") if kind == "llm" else proposal.get("args")) or {}
            schema = edit_schema(request) or {}
            properties = dict(schema.get("properties") or {})
            for name in values:  # whatever the schema does not describe is still shown
                properties.setdefault(name, {})
            required = set(schema.get("required") or [])
            return {
                name: (_field_for(name, sub, required=name in required), sub)
                for name, sub in properties.items()
            }, values
        outputs = proposal.get("outputs") or {}
        return {name: (_field_for(name, {}, required=False), {}) for name in outputs}, outputs

    def edited_values(self) -> dict[str, Any]:
        """The proposal's values as the form now has them (unchanged fields as they were)."""
        values = dict(self.values)
        for name, (field, _schema) in self.editable.items():
            if PREFIX + name not in self.data and not isinstance(field, forms.BooleanField):
                continue  # not posted at all: as it was
            value = self.cleaned_data.get(PREFIX + name)
            if value is None or (isinstance(value, str) and not value.strip()):
                values.pop(name, None)  # a blank field is a missing value
                continue
            values[name] = _to_json(field, value)
        return values

    def edited_proposal(self) -> dict[str, Any]:
        values = self.edited_values()
        kind = self.approval.step.kind
        if kind == "llm":
            return {"draft": values}
        if kind == "tool":
            return {"tool": self.approval.proposal.get("tool"), "args": values}
        return {**self.approval.proposal, "outputs": values}

    def clean(self):
        cleaned = super().clean()
        if self.errors:
            return cleaned
        proposal = self.edited_proposal()
        try:
            check(proposal)
        except UnsafeJSON as exc:
            # The path starts with "draft", "args" or "outputs"; the field is what follows.
            _, _, inner = exc.path.partition(".")
            self.add_error(self.field_name(inner), validation_error(exc))
            return cleaned
        changed = proposal != self.approval.proposal
        verdict = cleaned.get("verdict")
        if changed and verdict != Decision.Verdict.EDIT:
            # Unsaved edits are never dropped silently.
            raise forms.ValidationError(
                "You changed the proposal: press “Edit & approve” to approve your version, "
                "or undo your changes first.",
                code="unsaved_edit",
            )
        cleaned["edited_payload"] = (
            self.edited_proposal() if verdict == Decision.Verdict.EDIT else None
        )
        return cleaned

    def field_name(self, error_field: str) -> str | None:
        """The form field a schema error path points at, if it is one of ours."""
        top = (error_field or "").split(".")[0]
        return PREFIX + top if top in self.editable else None
