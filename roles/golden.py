"""Golden cases: a role's regression suite, and the gate publication asks.

Writes (each one transaction with its audit event): `create_case`, `update_case`,
`retire_case`, `case_from_decision`, `case_from_run`, `start_suite`; the django-q2 task body
`run_suite` (idempotent and resumable). Read: `regression_gate`, which fails closed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone

from audit.services import Actor, apply_changes, record
from roles import evaluation
from roles.evaluation import bundle_digest, case_digest, validate_expectations
from roles.models import CaseResult, GoldenCase, Role, RoleVersion, SuiteRun
from tenants import locking, rls
from tenants.locking import Level, lock

CASE_FIELDS = {"name", "input", "expectations"}


# --- cases ---------------------------------------------------------------------------------


def _validate_case(*, role: Role, name: str, input: Any, expectations: Any, exclude=None):
    errors: dict[str, list[str]] = {}
    if not isinstance(name, str) or not name.strip():
        errors["name"] = ["A golden case needs a name."]
    else:
        taken = GoldenCase.objects.filter(role=role, name=name.strip())
        if exclude is not None:
            taken = taken.exclude(pk=exclude.pk)
        if taken.exists():
            errors["name"] = [f"The role already has a golden case named “{name.strip()}”."]
    if not isinstance(input, dict):
        errors["input"] = ["The input must be a JSON object (what a run of the role receives)."]
    try:
        validate_expectations(expectations)
    except ValidationError as exc:
        errors["expectations"] = exc.messages
    if errors:
        raise ValidationError(errors)


def create_case(
    *,
    role: Role,
    name: str,
    input: dict[str, Any],
    expectations: dict[str, Any],
    actor: Actor,
    source: str = GoldenCase.Source.MANUAL,
    source_decision=None,
    source_run=None,
) -> GoldenCase:
    """Add a golden case to a role.

    Raises ValidationError (by field) for a missing or taken name, an input that is not an
    object, or invalid expectations; nothing is written then.
    """
    with locking.atomic():
        lock(Role.objects.filter(pk=role.pk), Level.ROW).first()
        _validate_case(role=role, name=name, input=input, expectations=expectations)
        case = GoldenCase(
            tenant_id=role.tenant_id,
            role=role,
            name=name.strip(),
            input=input,
            expectations=expectations,
            source=source,
            source_decision=source_decision,
            source_run=source_run,
            created_by=actor.user,
        )
        case._history_user = actor.user
        case.save()
        record(
            tenant=role.tenant_id,
            actor=actor,
            action="golden_case.created",
            obj=case,
            run_id=source_run.pk if source_run is not None else None,
            data={
                "role": role.slug,
                "name": case.name,
                "source": source,
                "decision": source_decision.pk if source_decision is not None else None,
                "digest": case_digest(input=input, expectations=expectations),
            },
        )
    return case


def update_case(*, case: GoldenCase, actor: Actor, changes: dict[str, Any]) -> GoldenCase:
    """Change a case's name, input or expectations (results for its old content go stale).

    Raises ValidationError for a retired case or invalid values; nothing is written then.
    """
    with locking.atomic():
        case = lock(GoldenCase.objects.select_related("role"), Level.ROW).get(pk=case.pk)
        if not case.is_active:
            raise ValidationError("A retired golden case cannot be changed.")
        before = case_digest(input=case.input, expectations=case.expectations)
        diff = apply_changes(case, changes, allowed=CASE_FIELDS)
        if not diff:
            return case
        _validate_case(
            role=case.role,
            name=case.name,
            input=case.input,
            expectations=case.expectations,
            exclude=case,
        )
        case.name = case.name.strip()
        case._history_user = actor.user
        case.save(update_fields=list(diff))
        record(
            tenant=case.tenant_id,
            actor=actor,
            action="golden_case.updated",
            obj=case,
            data={
                "changed": sorted(diff),
                "digest_before": before,
                "digest": case_digest(input=case.input, expectations=case.expectations),
            },
        )
    return case


def retire_case(*, case: GoldenCase, actor: Actor, reason: str = "") -> GoldenCase:
    """Retire a case: it leaves the suite, and a baseline that had it shows it as missing.

    Raises ValidationError when it is retired already.
    """
    with locking.atomic():
        case = lock(GoldenCase.objects.all(), Level.ROW).get(pk=case.pk)
        if not case.is_active:
            raise ValidationError("This golden case is retired already.")
        case.retired_at = timezone.now()
        case.retired_by = actor.user
        case._history_user = actor.user
        case.save(update_fields=["retired_at", "retired_by"])
        record(
            tenant=case.tenant_id,
            actor=actor,
            action="golden_case.retired",
            obj=case,
            reason=reason,
            data={"name": case.name},
        )
    return case


def _fields_of(prefix: str, value: Any) -> list[dict[str, Any]]:
    if isinstance(value, dict) and value:
        return [
            {"path": f"{prefix}.{name}", "op": "equals", "value": item}
            for name, item in value.items()
        ]
    return [{"path": prefix, "op": "equals", "value": value}]


def case_from_decision(decision, actor: Actor, *, name: str = "") -> GoldenCase:
    """A case from a reviewer's "Edit & approve": the run's input, and the edited step's
    fields as approved. Only a standing edit of a completed or parked run qualifies.

    Raises ValidationError otherwise (or when this decision made a case already).
    """
    from approvals.models import Decision
    from desk.models import Run

    decision = Decision.objects.select_related("request__run__role", "request__step").get(
        pk=decision.pk
    )
    run, step = decision.request.run, decision.request.step
    if decision.verdict != Decision.Verdict.EDIT or not isinstance(decision.edited_payload, dict):
        raise ValidationError("Only an “Edit & approve” decision makes a golden case.")
    if decision.dismissed_at is not None:
        raise ValidationError("A later edit replaced this one: make the case from that edit.")
    if run.status not in (Run.Status.COMPLETED, Run.Status.WAITING_APPROVAL):
        raise ValidationError("Only a completed or parked run's decision makes a golden case.")
    if GoldenCase.objects.filter(source_decision=decision).exists():
        raise ValidationError("A golden case was made from this decision already.")
    payload = decision.edited_payload
    if step.kind == "llm":
        fields = _fields_of(step.key, payload.get("draft"))
    elif step.kind == "tool":
        fields = _fields_of(f"{step.key}.args", payload.get("args"))
    else:
        fields = [
            item
            for key, value in (payload.get("outputs") or {}).items()
            for item in _fields_of(key, value)
        ]
    return create_case(
        role=run.role,
        name=name or f"Decision #{decision.pk}: {step.key} of run #{run.pk}",
        input=run.input,
        expectations={"fields": fields},
        actor=actor,
        source=GoldenCase.Source.DECISION,
        source_decision=decision,
        source_run=run,
    )


def case_from_run(run, actor: Actor, *, name: str = "") -> GoldenCase:
    """A case from a completed run: its input, and as field expectations the final output
    of each model step and the arguments of each call with side effects (what it would
    send). Read-only tools' outputs are the world's data, not behaviour, and are left out.

    Raises ValidationError for a run that is not completed.
    """
    from desk.models import Run, StepRun
    from desk.tools import ToolRefused, get_tool

    run = Run.objects.select_related("role").get(pk=run.pk)
    if run.status != Run.Status.COMPLETED:
        raise ValidationError("Only a completed run makes a golden case.")
    fields: list[dict[str, Any]] = []
    for step in run.steps.filter(status=StepRun.Status.COMPLETED).order_by("index"):
        if step.kind == "llm":
            fields += _fields_of(step.key, step.output)
        elif step.kind == "tool":
            try:
                tool = get_tool(step.rendered.get("tool", ""))
            except ToolRefused:
                continue
            if tool.has_side_effects or tool.category not in evaluation.READ_ONLY_CATEGORIES:
                fields += _fields_of(f"{step.key}.args", step.rendered.get("args"))
    return create_case(
        role=run.role,
        name=name or f"Run #{run.pk} ({run.created_at:%Y-%m-%d})",
        input=run.input,
        expectations={"fields": fields},
        actor=actor,
        source=GoldenCase.Source.RUN,
        source_run=run,
    )


# --- suite runs ----------------------------------------------------------------------------

SUITE_GROUP = {"group": "golden", "save": False}


def _enqueue(suite_run_id: int) -> None:
    from django_q.tasks import async_task

    async_task("roles.tasks.run_golden_suite", suite_run_id=suite_run_id, q_options=SUITE_GROUP)


def active_cases(role_id: int):
    return GoldenCase.objects.filter(role_id=role_id, retired_at__isnull=True).order_by(
        "created_at", "pk"
    )


def start_suite(version: RoleVersion, actor: Actor) -> SuiteRun:
    """Queue a run of the role's active golden cases against the version as it is now; a
    worker runs it (roles.tasks.run_golden_suite) once this commits.

    An unfinished suite run of the same bundle is returned (and its task rung again)
    instead of a second one.
    Raises ValidationError when the role has no active golden case.
    """
    with locking.atomic():
        lock(Role.objects.filter(pk=version.role_id), Level.ROW).first()
        version = RoleVersion.objects.select_related("role").get(pk=version.pk)
        digest = bundle_digest(version)
        running = (
            SuiteRun.objects.filter(version=version, bundle_digest=digest)
            .exclude(status__in=SuiteRun.FINISHED)
            .order_by("-created_at", "-pk")
            .first()
        )
        if running is not None:
            # Its task may have been lost (a broker restart, a killed worker): ring again;
            # the task skips what is done.
            transaction.on_commit(
                lambda: _enqueue(running.pk), robust=True, using=rls.current_alias()
            )
            return running
        total = active_cases(version.role_id).count()
        if not total:
            raise ValidationError(f"{version.role.name} has no golden cases to run.")
        suite = SuiteRun.objects.create(
            tenant_id=version.tenant_id,
            role_id=version.role_id,
            version=version,
            bundle_digest=digest,
            cases_total=total,
            provider=evaluation.provider_label(),
            started_by=actor.user,
        )
        record(
            tenant=version.tenant_id,
            actor=actor,
            action="golden_suite.started",
            obj=suite,
            data={
                "role": version.role.slug,
                "version": version.number,
                "digest": digest,
                "cases": total,
                "provider": suite.provider,
            },
        )
        transaction.on_commit(lambda: _enqueue(suite.pk), robust=True, using=rls.current_alias())
    return suite


def _suite_actor(suite: SuiteRun) -> Actor:
    return Actor.for_ai(
        role_version_id=suite.version_id,
        label=f"{suite.role.slug} v{suite.version.number} (golden suite #{suite.pk})",
    )


def _locked_suite(suite_run_id: int) -> SuiteRun:
    suites = SuiteRun.objects.select_related("role", "version", "version__tenant")
    return lock(suites, Level.ROW, of=("self",)).get(pk=suite_run_id)


def _fail_suite(suite: SuiteRun, error: str) -> None:
    suite.status = SuiteRun.Status.ERROR
    suite.error = error
    suite.finished_at = timezone.now()
    suite.save(update_fields=["status", "error", "finished_at"])
    record(
        tenant=suite.tenant_id,
        actor=Actor.system("golden"),
        action="golden_suite.finished",
        obj=suite,
        reason=error,
        data={"status": suite.status, "done": suite.cases_done, "total": suite.cases_total},
    )


def run_suite(suite_run_id: int) -> str:
    """Evaluate every active case of the suite's role that has no result yet, then finish
    the suite run; return its status. Safe to run again (a killed worker's retry, a doubled
    delivery): finished suites are left alone and evaluated cases are skipped. A version
    whose bundle changed since the start ends the suite run in error."""
    tenant_id = rls.tenant_of("roles_suiterun", suite_run_id)
    if tenant_id is None:
        return ""
    with locking.tracked(), rls.tenant_context(tenant_id):
        suite = _locked_suite(suite_run_id)
        if suite.is_finished:
            return suite.status
        if bundle_digest(suite.version) != suite.bundle_digest:
            _fail_suite(suite, "The version's bundle changed since the suite started.")
            return suite.status
        if suite.status == SuiteRun.Status.QUEUED:
            suite.status = SuiteRun.Status.RUNNING
            suite.save(update_fields=["status"])
        case_ids = list(active_cases(suite.role_id).values_list("pk", flat=True))
    for case_id in case_ids:
        if not _run_case(suite_run_id, case_id, tenant_id):
            break
    return _finish(suite_run_id, tenant_id)


def _run_case(suite_run_id: int, case_id: int, tenant_id: int) -> bool:
    """Evaluate one case (outside any lock) and save its result; False when the suite
    must stop (finished meanwhile, or its bundle changed)."""
    with rls.tenant_context(tenant_id):
        if CaseResult.objects.filter(suite_run_id=suite_run_id, case_id=case_id).exists():
            return True
        suite = SuiteRun.objects.select_related("version__role", "version__tenant").get(
            pk=suite_run_id
        )
        case = GoldenCase.objects.get(pk=case_id)
        version = suite.version
    if bundle_digest(version) != suite.bundle_digest:
        return False
    outcome = evaluation.evaluate(version=version, input=case.input, expectations=case.expectations)
    digest = case_digest(input=case.input, expectations=case.expectations)
    try:
        with locking.tracked(), rls.tenant_context(tenant_id):
            suite = _locked_suite(suite_run_id)
            if suite.is_finished:
                return False
            if bundle_digest(suite.version) != suite.bundle_digest:
                return False
            if CaseResult.objects.filter(suite_run=suite, case_id=case_id).exists():
                return True  # another worker got here first
            result = CaseResult.objects.create(
                tenant_id=tenant_id,
                suite_run=suite,
                case=case,
                case_digest=digest,
                status=outcome.status,
                checks=outcome.checks,
                output=outcome.output,
                tools_called=outcome.tools_called,
                gates_hit=outcome.gates_hit,
                tokens=outcome.tokens,
                cost=outcome.cost,
                error=outcome.error,
            )
            _audit_reads(suite, case, result, outcome)
            SuiteRun.objects.filter(pk=suite.pk).update(cases_done=F("cases_done") + 1)
    except IntegrityError:
        return True  # a concurrent duplicate: the first result stands
    return True


def _audit_reads(suite, case, result, outcome) -> None:
    actor = _suite_actor(suite)
    why = f"Golden case “{case.name}” (suite run #{suite.pk})"
    for step_def, read in outcome.reads:
        record(
            tenant=suite.tenant_id,
            actor=actor,
            action="data.read",
            obj=result,
            reason=f"{why}: {step_def.get('reason', '')}".rstrip(": "),
            data={
                "tool": step_def.get("tool"),
                "kind": read.kind,
                "references": read.references,
                "query": read.query,
                "golden_case": case.pk,
                "suite_run": suite.pk,
            },
        )
    for _step_def, refusal in outcome.refusals:
        record(
            tenant=suite.tenant_id,
            actor=actor,
            action="data.refused",
            obj=result,
            reason=why,
            data={**refusal, "golden_case": case.pk, "suite_run": suite.pk},
        )
    record(
        tenant=suite.tenant_id,
        actor=actor,
        action="golden_case.evaluated",
        obj=result,
        reason=why,
        data={
            "case": case.pk,
            "status": result.status,
            "digest": result.case_digest,
            "tokens": result.tokens,
            "failed": [c["check"] for c in result.checks if not c["ok"]],
            "error": result.error,
        },
    )


def _finish(suite_run_id: int, tenant_id: int) -> str:
    with locking.tracked(), rls.tenant_context(tenant_id):
        suite = _locked_suite(suite_run_id)
        role = lock(Role.objects.all(), Level.ROW).get(pk=suite.role_id)
        if suite.is_finished:
            return suite.status
        if bundle_digest(suite.version) != suite.bundle_digest:
            _fail_suite(suite, "The version's bundle changed while the suite ran.")
            return suite.status
        results = list(suite.results.values_list("case_id", "status"))
        done = {case_id for case_id, _ in results}
        statuses = {status for _, status in results}
        missing = set(active_cases(suite.role_id).values_list("pk", flat=True)) - done
        if missing or CaseResult.Status.ERROR in statuses:
            status = SuiteRun.Status.ERROR
        elif CaseResult.Status.FAILED in statuses or not results:
            status = SuiteRun.Status.FAILED
        else:
            status = SuiteRun.Status.PASSED
        suite.status = status
        suite.cases_done = len(results)
        suite.finished_at = timezone.now()
        suite.error = (
            f"{len(missing)} case(s) added while the suite ran have no result." if missing else ""
        )
        suite.save(update_fields=["status", "cases_done", "finished_at", "error"])
        record(
            tenant=tenant_id,
            actor=Actor.system("golden"),
            action="golden_suite.finished",
            obj=suite,
            reason=suite.error,
            data={"status": status, "done": len(results), "total": suite.cases_total},
        )
        if status == SuiteRun.Status.PASSED and role.active_version_id == suite.version_id:
            _make_baseline(suite)
    return suite.status


def _make_baseline(suite: SuiteRun) -> None:
    """A fully passing run of the role's active version is the role's baseline."""
    previous = SuiteRun.objects.filter(role_id=suite.role_id, is_baseline=True).exclude(pk=suite.pk)
    replaced = list(previous.values_list("pk", flat=True))
    previous.update(is_baseline=False)
    suite.is_baseline = True
    suite.save(update_fields=["is_baseline"])
    record(
        tenant=suite.tenant_id,
        actor=Actor.system("golden"),
        action="golden_suite.baseline",
        obj=suite,
        data={"version": suite.version.number, "replaced": replaced},
    )


# --- the regression gate -------------------------------------------------------------------

VERDICTS = ("passed", "regressed", "failed", "error", "missing", "stale", "new", "fixed")
GOOD_VERDICTS = ("passed", "new", "fixed")


@dataclass(frozen=True)
class GateRow:
    case_id: int
    case: str
    baseline: str | None  # the case's status in the baseline suite run, if it was there
    draft: str | None  # its status in the version's suite run, if it has a result
    verdict: str


@dataclass(frozen=True)
class GateReport:
    ok: bool
    problems: list[str] = field(default_factory=list)
    rows: list[GateRow] = field(default_factory=list)
    digest: str = ""
    suite_run_id: int | None = None
    baseline_id: int | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON for a publication request to keep."""
        return asdict(self)


def _verdict(
    case: GoldenCase,
    result: CaseResult | None,
    baseline: CaseResult | None,
    active: CaseResult | None,
) -> str:
    """A case's verdict. `baseline`: its result in the role's baseline, `active`: in the
    latest finished suite run of the active version, each only if for the case as it is."""
    if not case.is_active:
        return "missing"  # retired since the baseline had it
    if result is None:
        return "missing"
    if result.case_digest != case_digest(input=case.input, expectations=case.expectations):
        return "stale"
    if result.status == CaseResult.Status.ERROR:
        return "error"
    if result.status == CaseResult.Status.FAILED:
        return "regressed" if baseline and baseline.status == CaseResult.Status.PASSED else "failed"
    if active is not None and active.status != CaseResult.Status.PASSED:
        return "fixed"  # the active version fails it; this version passes
    return "new" if baseline is None else "passed"


def regression_gate(version: RoleVersion) -> GateReport:
    """Whether the version passes its role's golden cases, as its bundle is now. Fails
    closed: no cases, no finished suite run of this bundle, an unfinished latest run, a
    case missing, stale, failed or in error, or a baseline case retired since."""
    with rls.tenant_context(version.tenant_id):
        version = RoleVersion.objects.select_related("role").get(pk=version.pk)
        digest = bundle_digest(version)
        problems: list[str] = []
        cases = {case.pk: case for case in active_cases(version.role_id)}
        if not cases:
            problems.append(
                f"{version.role.name} has no active golden cases: nothing shows it works."
            )
        suite = (
            SuiteRun.objects.filter(version=version, bundle_digest=digest)
            .order_by("-created_at", "-pk")
            .first()
        )
        baseline = SuiteRun.objects.filter(role_id=version.role_id, is_baseline=True).first()
        results = {}
        if suite is None:
            problems.append(
                "No suite run for this version as it is now: run the golden cases"
                + (" again (the version changed since)." if version.suite_runs.exists() else ".")
            )
        elif not suite.is_finished:
            problems.append(
                f"Suite run #{suite.pk} has not finished ({suite.cases_done} of "
                f"{suite.cases_total} cases)."
            )
        else:
            if suite.status == SuiteRun.Status.ERROR and suite.error:
                problems.append(f"Suite run #{suite.pk} ended in error: {suite.error}")
            results = {r.case_id: r for r in suite.results.all()}
        baseline_results = (
            {r.case_id: r for r in baseline.results.select_related("case")} if baseline else {}
        )
        for case_id, result in baseline_results.items():
            cases.setdefault(case_id, result.case)
        active_suite = (
            SuiteRun.objects.filter(
                version_id=version.role.active_version_id, status__in=SuiteRun.FINISHED
            )
            .order_by("-created_at", "-pk")
            .first()
        )
        active_results = {r.case_id: r for r in active_suite.results.all()} if active_suite else {}
        rows = []
        finished = suite is not None and suite.is_finished
        # Cases in the order they were written, as everywhere golden cases are listed.
        for case_id in sorted(cases, key=lambda pk: (cases[pk].created_at, pk)):
            case = cases[case_id]
            result = results.get(case_id)
            base = baseline_results.get(case_id)
            current = case_digest(input=case.input, expectations=case.expectations)
            verdict = (
                _verdict(
                    case,
                    result,
                    base if base and base.case_digest == current else None,
                    _if_current(active_results.get(case_id), current),
                )
                if finished or not case.is_active
                else "missing"
            )
            rows.append(
                GateRow(
                    case_id=case_id,
                    case=case.name,
                    baseline=base.status if base else None,
                    draft=result.status if result else None,
                    verdict=verdict,
                )
            )
            if verdict not in GOOD_VERDICTS and (finished or not case.is_active):
                problems.append(_problem(case, verdict))
    return GateReport(
        ok=not problems,
        problems=problems,
        rows=rows,
        digest=digest,
        suite_run_id=suite.pk if suite else None,
        baseline_id=baseline.pk if baseline else None,
    )


def _if_current(result: CaseResult | None, digest: str) -> CaseResult | None:
    return result if result is not None and result.case_digest == digest else None


def _problem(case: GoldenCase, verdict: str) -> str:
    name = f"“{case.name}”"
    return {
        "missing": (
            f"{name} was in the baseline and has been retired since."
            if not case.is_active
            else f"{name} has no result in the suite run."
        ),
        "stale": f"{name} changed after it was evaluated: run the suite again.",
        "error": f"{name} ended in an error.",
        "failed": f"{name} fails.",
        "regressed": f"{name} passed in the baseline and fails now.",
    }[verdict]
