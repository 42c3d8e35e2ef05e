"""A deterministic provider that needs no network: answers are built from the request's
output schema and the rendered prompt, so demos and tests read sensibly and repeat exactly."""

from __future__ import annotations

import hashlib
import re
from typing import Any

from desk.providers.base import ModelRequest, ModelResponse, Provider

_NOT_SUMMARISED = {"signature", "body", "message", "meeting_notes", "client_name"}
_URGENT = re.compile(r"\b(urgent|asap|immediately|today)\b", re.IGNORECASE)
_LINE = re.compile(r"^\s*([A-Za-z][\w ]{0,40}):\s*(.+)$")


def _facts(prompt: str) -> dict[str, str]:
    """`Name: value` lines of the prompt, lower-cased names with spaces as underscores."""
    facts: dict[str, str] = {}
    for line in prompt.splitlines():
        match = _LINE.match(line)
        if match:
            facts.setdefault(
                match.group(1).strip().lower().replace(" ", "_"), match.group(2).strip()
            )
    return facts


def _pick(options: list[Any], prompt: str, seed: str) -> Any:
    # Look for an option named in the facts (the run's data), not in the instructions,
    # which usually list every option.
    lowered = " ".join(_facts(prompt).values()).lower()
    for option in options:
        if isinstance(option, str) and option.lower().replace("_", " ") in lowered:
            return option
    digest = int(hashlib.sha256(f"{seed}:{prompt}".encode()).hexdigest(), 16)
    return options[digest % len(options)]


def _text(name: str, prompt: str, facts: dict[str, str]) -> str:
    subject = facts.get("subject", "your enquiry")
    sender = facts.get("client_name") or facts.get("from_name") or "there"
    if name in {"subject", "title"}:
        return subject if subject.lower().startswith("re:") else f"Re: {subject}"
    if name in facts:
        return facts[name]
    if name == "summary":
        shown = [
            f"{k.replace('_', ' ')}: {v}" for k, v in facts.items() if k not in _NOT_SUMMARISED
        ]
        return "; ".join(shown[:5]) or subject
    if name in {"body", "draft", "message", "reply", "text", "statement"}:
        lines = [f"Dear {sender},", ""]
        lines.append(f"Thank you for your message about \u201c{subject}\u201d.")
        if "feedback" in facts:
            lines.append(f"(Revised following review: {facts['feedback']})")
        lines.append("We have noted the details and a member of our team will follow up shortly.")
        lines += ["", "Kind regards,", facts.get("signature", "The team")]
        return "\n".join(lines)
    words = re.findall(r"[A-Za-z]{4,}", prompt)
    return " ".join(words[:8]) or name.replace("_", " ")


def _number(name: str, prompt: str, facts: dict[str, str], integer: bool) -> float | int:
    raw = facts.get(name, "")
    try:
        value = float(raw.replace(",", ""))
    except ValueError:
        value = int(hashlib.sha256(f"{name}:{prompt}".encode()).hexdigest(), 16) % 1000
    return int(value) if integer else round(value, 2)


def generate(schema: dict[str, Any], prompt: str, *, name: str = "value") -> Any:
    """A value satisfying `schema` (the subset of JSON Schema workflow outputs use)."""
    facts = _facts(prompt)
    if "const" in schema:
        return schema["const"]
    if "enum" in schema:
        return _pick(list(schema["enum"]), prompt, name)
    kind = schema.get("type", "object")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object":
        properties = schema.get("properties", {})
        return {key: generate(sub, prompt, name=key) for key, sub in properties.items()}
    if kind == "array":
        count = max(schema.get("minItems", 1), 1)
        return [generate(schema.get("items", {"type": "string"}), prompt, name=name)] * count
    if kind == "string":
        text = _text(name, prompt, facts)
        if "maxLength" in schema:
            text = text[: schema["maxLength"]]
        if len(text) < schema.get("minLength", 0):
            text = text.ljust(schema["minLength"], ".")
        return text
    if kind in {"number", "integer"}:
        value = _number(name, prompt, facts, integer=kind == "integer")
        if "minimum" in schema:
            value = max(value, schema["minimum"])
        if "maximum" in schema:
            value = min(value, schema["maximum"])
        return value
    if kind == "boolean":
        if name == "is_urgent":
            return any(_URGENT.search(value) for value in facts.values())
        return True
    return None


class OfflineProvider(Provider):
    name = "offline"

    async def acomplete(self, request: ModelRequest) -> ModelResponse:
        output = generate(request.output_schema, request.prompt, name="output")
        prompt_tokens = max(1, len(request.prompt) // 4)
        completion_tokens = max(1, len(str(output)) // 4)
        return ModelResponse(
            output=output,
            model=request.model if request.model.startswith("offline") else "offline-1",
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
        )
