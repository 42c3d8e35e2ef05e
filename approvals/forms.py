"""The reviewer's decision form."""

from __future__ import annotations

import json

from django import forms

from approvals.models import Decision


class ReviewForm(forms.Form):
    verdict = forms.ChoiceField(choices=Decision.Verdict.choices)
    comment = forms.CharField(
        required=False,
        widget=forms.Textarea(attrs={"rows": 3, "class": "vLargeTextField"}),
        help_text="Required to reject or to send back for revision; the AI employee reads it.",
    )
    edited_payload = forms.CharField(
        required=False,
        strip=False,
        label="Edited proposal",
        widget=forms.Textarea(attrs={"rows": 14, "class": "vLargeTextField desk-json"}),
        help_text="Used by “Edit & approve” only: the proposal as it should go ahead.",
    )

    def clean_edited_payload(self):
        text = self.cleaned_data["edited_payload"]
        if self.data.get("verdict") != Decision.Verdict.EDIT:
            return None
        try:
            payload = json.loads(text)
        except ValueError as exc:
            raise forms.ValidationError(f"This is not valid JSON: {exc}.") from None
        if not isinstance(payload, dict):
            raise forms.ValidationError("The edited proposal must be a JSON object.")
        return payload
