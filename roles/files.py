"""Roles as files: a role version's bundle and the role's golden cases as one JSON or YAML
document, to review in a pull request, keep in git or carry to another tenant.

`export_document` and `dumps` write one (stable: the same version gives the same bytes);
`loads` parses and checks one; `import_document` turns one into a new *draft* version of
the role (created if the tenant lacks it), in one transaction with its audit event. An
import never publishes or activates anything: the draft goes through the usual review.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from django.core.exceptions import ValidationError
from django.core.validators import validate_slug

from audit.services import Actor, record
from roles import golden
from roles.evaluation import canonical_digest, case_digest
from roles.models import GoldenCase, Role, RoleVersion
from roles.services import create_role, create_role_version, prepare_bundle
from tenants import locking
from tenants.locking import Level, lock
from tenants.models import Tenant

FORMAT = "agentdesk.role/1"
FORMATS = ("json", "yaml")
EXTENSIONS = {".json": "json", ".yaml": "yaml", ".yml": "yaml"}
MAX_CHARS = 5_000_000  # a role file is kilobytes; anything near this is not one

TOP_KEYS = {"format", "tenant", "role", "version", "bundle", "golden_cases"}
REQUIRED_TOP_KEYS = {"format", "role", "bundle"}
ROLE_KEYS = {"slug", "name", "purpose"}
VERSION_KEYS = {"number", "status", "change_note"}
CASE_KEYS = {"name", "input", "expectations"}
SLUG_MAX_LENGTH = Role._meta.get_field("slug").max_length
NAME_MAX_LENGTH = Role._meta.get_field("name").max_length


@dataclass
class ImportResult:
    role: Role
    version: RoleVersion
    role_created: bool
    cases_created: list[str] = field(default_factory=list)
    cases_updated: list[str] = field(default_factory=list)


# --- export --------------------------------------------------------------------------------


def export_document(version: RoleVersion) -> dict[str, Any]:
    """The document of one role version: its bundle and the role's active golden cases."""
    role = version.role
    cases = GoldenCase.objects.filter(role=role, retired_at__isnull=True).order_by("name")
    return {
        "format": FORMAT,
        "tenant": role.tenant.slug,
        "role": {"slug": role.slug, "name": role.name, "purpose": role.purpose},
        "version": {
            "number": version.number,
            "status": version.status,
            "change_note": version.change_note,
        },
        "bundle": version.definition,
        "golden_cases": [
            {"name": case.name, "input": case.input, "expectations": case.expectations}
            for case in cases
        ],
    }


def dumps(document: dict[str, Any], fmt: str) -> str:
    """The document as JSON or YAML text, keys sorted: the same document, the same bytes.

    Raises ValueError for another format.
    """
    if fmt == "json":
        return json.dumps(document, sort_keys=True, indent=2, ensure_ascii=False) + "\n"
    if fmt == "yaml":
        return yaml.dump(
            document,
            Dumper=_BlockDumper,
            sort_keys=True,
            allow_unicode=True,
            default_flow_style=False,
        )
    raise ValueError(f"unknown format {fmt!r} (known: {', '.join(FORMATS)})")


class _BlockDumper(yaml.SafeDumper):
    """safe_dump, with multi-line text (prompts) as `|` blocks that read and diff as written;
    PyYAML quotes instead where a block cannot hold the text exactly."""


def _represent_text(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_BlockDumper.add_representer(str, _represent_text)


def format_for(path: str | os.PathLike) -> str | None:
    """The format a file name's extension says (.json, .yaml, .yml), or None."""
    return EXTENSIONS.get(Path(path).suffix.lower())


def write_atomically(path: str | os.PathLike, text: str) -> None:
    """Write `text` to `path` whole or not at all: a temporary file beside it, then a rename.

    Raises OSError when the directory is missing or not writable.
    """
    target = Path(path)
    handle, temporary = tempfile.mkstemp(
        dir=target.parent, prefix=f".{target.name}.", suffix=".tmp"
    )
    try:
        with os.fdopen(handle, "w", encoding="utf-8", newline="\n") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


# --- parse and check -----------------------------------------------------------------------


def loads(text: str, fmt: str | None = None) -> dict[str, Any]:
    """Parse a role file (JSON or YAML; without `fmt`, JSON when it starts with '{') and check
    its shape. YAML is read with `safe_load`: tags that build objects are refused.

    Raises ValidationError, listing every problem, for text that does not parse, holds a NUL
    byte or a value JSON cannot hold, or is not a role document.
    """
    if fmt is None:
        fmt = "json" if text.lstrip("\ufeff \t\r\n").startswith("{") else "yaml"
    if fmt not in FORMATS:
        raise ValidationError(f"Unknown file format '{fmt}' (known: {', '.join(FORMATS)}).")
    if len(text) > MAX_CHARS:
        raise ValidationError(f"The file is too large for a role file ({len(text)} characters).")
    if "\x00" in text:
        line = text.count("\n", 0, text.index("\x00")) + 1
        raise ValidationError(f"The file holds a NUL byte (line {line}); it is not a role file.")
    text = text.removeprefix("\ufeff")
    try:
        document = _parse_json(text) if fmt == "json" else _parse_yaml(text)
        _check_plain(document, where="the document", seen=set())
    except RecursionError:
        raise ValidationError("The file is nested too deeply.") from None
    check_document(document)
    return document


def _parse_json(text: str) -> Any:
    try:
        return json.loads(text, parse_constant=_refuse_constant)
    except json.JSONDecodeError as exc:
        raise ValidationError(
            f"Invalid JSON (line {exc.lineno}, column {exc.colno}): {exc.msg}."
        ) from None


def _refuse_constant(name: str) -> Any:
    raise ValidationError(f"Invalid JSON: {name} is not a JSON number.")


def _parse_yaml(text: str) -> Any:
    try:
        document = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = " ".join(part for part in (exc.context, exc.problem) if part)
        raise ValidationError(f"Invalid YAML{where}: {problem}.") from None
    except yaml.YAMLError as exc:
        raise ValidationError(f"Invalid YAML: {exc}.") from None
    return document


def _check_plain(value: Any, *, where: str, seen: set[int]) -> None:
    """Refuse what JSON cannot hold (YAML dates, binary, non-text keys; NaN and infinity) and
    YAML aliases (a shared node is how an alias bomb grows; a role file never needs one)."""
    if isinstance(value, dict | list):
        if id(value) in seen:
            raise ValidationError(
                f"YAML anchors and aliases are not supported (at {where}); write the value out."
            )
        seen.add(id(value))
        if isinstance(value, dict):
            for key, item in value.items():
                if not isinstance(key, str):
                    raise ValidationError(f"A key in {where} is not text: {key!r}.")
                _check_plain(item, where=f"{where} → {key}", seen=seen)
        else:
            for index, item in enumerate(value):
                _check_plain(item, where=f"{where}[{index}]", seen=seen)
    elif isinstance(value, str) and "\x00" in value:
        raise ValidationError(f"{where} holds a NUL character, which the database refuses.")
    elif isinstance(value, float) and not math.isfinite(value):
        raise ValidationError(f"{where} is {value}, which JSON cannot hold.")
    elif value is not None and not isinstance(value, str | int | float | bool):
        raise ValidationError(
            f"{where} is a YAML {type(value).__name__}, which JSON cannot hold; quote it."
        )


def check_document(document: Any) -> None:
    """Check a parsed document's shape (the bundle and cases are checked on import).

    Raises ValidationError listing every problem.
    """
    if not isinstance(document, dict):
        raise ValidationError(
            f"A role file holds one object (format, role, bundle, …), not {_kind(document)}."
        )
    errors: list[str] = []
    unknown = sorted(set(document) - TOP_KEYS)
    if unknown:
        errors.append(f"Unknown keys: {', '.join(unknown)} (known: {', '.join(sorted(TOP_KEYS))}).")
    missing = sorted(REQUIRED_TOP_KEYS - set(document))
    if missing:
        errors.append(f"Missing keys: {', '.join(missing)}.")
    if "format" in document and document["format"] != FORMAT:
        errors.append(f"'format' must be '{FORMAT}', not {document['format']!r}.")
    if "tenant" in document and not isinstance(document["tenant"], str):
        errors.append("'tenant' must be text (a tenant slug; it is not used on import).")
    if "role" in document:
        errors += _role_errors(document["role"])
    if "version" in document:
        errors += _version_errors(document["version"])
    if "bundle" in document and not isinstance(document["bundle"], dict):
        errors.append(f"'bundle' must be an object, not {_kind(document['bundle'])}.")
    if "golden_cases" in document:
        errors += _cases_errors(document["golden_cases"])
    if errors:
        raise ValidationError(errors)


def _role_errors(role: Any) -> list[str]:
    if not isinstance(role, dict):
        return [f"'role' must be an object with slug, name and purpose, not {_kind(role)}."]
    errors = []
    unknown = sorted(set(role) - ROLE_KEYS)
    if unknown:
        errors.append(f"'role' has unknown keys: {', '.join(unknown)}.")
    slug = role.get("slug")
    if not isinstance(slug, str):
        errors.append("'role.slug' must be text (a slug).")
    else:
        try:
            validate_slug(slug)
        except ValidationError:
            errors.append(f"'role.slug' must be a slug (letters, digits, - and _), not {slug!r}.")
        if len(slug) > SLUG_MAX_LENGTH:
            errors.append(f"'role.slug' is longer than {SLUG_MAX_LENGTH} characters.")
    name = role.get("name")
    if not isinstance(name, str) or not name.strip():
        errors.append("'role.name' must be non-empty text.")
    elif len(name) > NAME_MAX_LENGTH:
        errors.append(f"'role.name' is longer than {NAME_MAX_LENGTH} characters.")
    if not isinstance(role.get("purpose", ""), str):
        errors.append("'role.purpose' must be text.")
    return errors


def _version_errors(version: Any) -> list[str]:
    if not isinstance(version, dict):
        return [f"'version' must be an object, not {_kind(version)}."]
    errors = []
    unknown = sorted(set(version) - VERSION_KEYS)
    if unknown:
        errors.append(f"'version' has unknown keys: {', '.join(unknown)}.")
    number = version.get("number")
    if number is not None and (isinstance(number, bool) or not isinstance(number, int)):
        errors.append("'version.number' must be a whole number.")
    for key in ("status", "change_note"):
        if not isinstance(version.get(key, ""), str):
            errors.append(f"'version.{key}' must be text.")
    return errors


def _cases_errors(cases: Any) -> list[str]:
    if not isinstance(cases, list):
        return [f"'golden_cases' must be a list, not {_kind(cases)}."]
    errors = []
    names: set[str] = set()
    for index, case in enumerate(cases, start=1):
        where = f"Golden case {index}"
        if not isinstance(case, dict) or set(case) != CASE_KEYS:
            errors.append(f"{where} must be an object with exactly name, input and expectations.")
            continue
        name = case["name"]
        if not isinstance(name, str) or not name.strip():
            errors.append(f"{where} needs a name (non-empty text).")
            continue
        if name.strip() in names:
            errors.append(f"{where}: the name '{name.strip()}' is used twice in the file.")
        names.add(name.strip())
        for key in ("input", "expectations"):
            if not isinstance(case[key], dict):
                errors.append(f"Golden case '{name.strip()}': '{key}' must be an object.")
    return errors


def _kind(value: Any) -> str:
    names = {dict: "an object", list: "a list", str: "text", bool: "true/false"}
    if value is None:
        return "nothing (null)"
    return names.get(type(value), "a number" if isinstance(value, int | float) else "that")


# --- import --------------------------------------------------------------------------------


def import_document(
    *, tenant: Tenant, document: dict[str, Any], actor: Actor, change_note: str = ""
) -> ImportResult:
    """Save a role file as a new draft version of the tenant's role (creating the role if the
    tenant lacks it), and create or update the file's golden cases. The document's tenant is
    ignored; cases of the role that the file leaves out stay as they are. Nothing is
    published or activated.

    Raises ValidationError, listing every problem, for a malformed document, an invalid
    bundle or case, or a bundle equal to the role's latest version; nothing is written then.
    """
    check_document(document)
    spec = document["role"]
    bundle = document["bundle"]
    note = change_note or (document.get("version") or {}).get("change_note") or ""
    note = note or "Imported from file"
    with locking.atomic():
        # Every row lock before the first audit event (the lock order: rows, then the chain).
        role = lock(Role.objects.filter(tenant=tenant, slug=spec["slug"]), Level.ROW).first()
        role_created = role is None
        if role_created:
            role = create_role(
                tenant=tenant,
                slug=spec["slug"],
                name=spec["name"],
                actor=actor,
                purpose=spec.get("purpose", ""),
            )
        else:
            latest = role.versions.order_by("-number").first()
            # Compared as a draft would store it (defaults filled, tools pinned).
            try:
                prepared = prepare_bundle(tenant_id=tenant.pk, definition=bundle)
            except ValidationError:
                prepared = bundle  # create_role_version below reports why
            if latest is not None and latest.digest == canonical_digest(prepared):
                raise ValidationError(
                    f"Nothing to import: the bundle equals version {latest.number} of "
                    f"'{role.slug}'."
                )
        cases = {
            case.name: case
            for case in lock(GoldenCase.objects.filter(role=role), Level.ROW).order_by("pk")
        }
        try:
            version = create_role_version(
                role=role, definition=bundle, actor=actor, change_note=note
            )
        except ValidationError as exc:
            raise ValidationError([f"The bundle: {m}" for m in exc.messages]) from None
        created, updated = _import_cases(
            role=role, cases=cases, wanted=document.get("golden_cases", []), actor=actor
        )
        record(
            tenant=tenant,
            actor=actor,
            action="role_version.imported",
            obj=version,
            data={
                "role": role.slug,
                "number": version.number,
                "role_created": role_created,
                "cases_created": created,
                "cases_updated": updated,
                "digest": canonical_digest(bundle),
            },
        )
    return ImportResult(
        role=role,
        version=version,
        role_created=role_created,
        cases_created=created,
        cases_updated=updated,
    )


def _import_cases(
    *, role: Role, cases: dict[str, GoldenCase], wanted: list[dict[str, Any]], actor: Actor
) -> tuple[list[str], list[str]]:
    created: list[str] = []
    updated: list[str] = []
    errors: list[str] = []
    for item in wanted:
        name = item["name"].strip()
        existing = cases.get(name)
        try:
            if existing is None:
                golden.create_case(
                    role=role,
                    name=name,
                    input=item["input"],
                    expectations=item["expectations"],
                    actor=actor,
                )
                created.append(name)
            elif not existing.is_active:
                errors.append(
                    f"Golden case '{name}': the role has a retired case of that name "
                    "(cases are never deleted); give this one another name."
                )
            elif case_digest(
                input=existing.input, expectations=existing.expectations
            ) != case_digest(input=item["input"], expectations=item["expectations"]):
                golden.update_case(
                    case=existing,
                    actor=actor,
                    changes={"input": item["input"], "expectations": item["expectations"]},
                )
                updated.append(name)
        except ValidationError as exc:
            errors += [f"Golden case '{name}': {m}" for m in _messages(exc)]
    if errors:
        raise ValidationError(errors)
    return created, updated


def _messages(error: ValidationError) -> list[str]:
    if hasattr(error, "error_dict"):
        return [f"{key}: {m}" for key, found in error.message_dict.items() for m in found]
    return error.messages
