"""The batch worker and admission: many runs in flight, capacity and fairness per tenant."""

from datetime import timedelta

from django.utils import timezone

from audit.services import Actor
from desk import engine, worker
from desk.models import Run, StepRun
from desk.services import admit_runs, start_run
from roles.models import Role
from tenants import rls
from tests.conftest import INTAKE_INPUT
from tests.runtime import advance


def start(tenant, role, n):
    return [
        start_run(
            tenant=tenant,
            role=role,
            input={**INTAKE_INPUT, "subject": f"Enquiry {i}"},
            actor=Actor.system("t"),
            via="api",
        )
        for i in range(n)
    ]


def statuses(runs):
    return [Run.objects.get(pk=r.pk).status for r in runs]


class TestAdmission:
    def test_runs_beyond_capacity_wait_in_the_queue(self, harbor, intake_role):
        harbor.max_concurrent_runs = 2
        harbor.save()

        runs = start(harbor, intake_role, 3)

        assert statuses(runs) == ["running", "running", "queued"]
        assert runs[2].steps.get(index=0).status == StepRun.Status.PENDING
        assert engine.advance(run_id=runs[2].pk, tenant_id=harbor.pk, owner="w").lease is None

    def test_a_parked_run_frees_its_slot_for_the_next(self, harbor, intake_role):
        harbor.max_concurrent_runs = 1
        harbor.save()
        first, second = start(harbor, intake_role, 2)

        advance(first.pk)

        assert statuses([first, second]) == ["waiting_approval", "running"]

    def test_one_tenants_flood_leaves_the_others_capacity_alone(
        self, harbor, northwind, intake_role
    ):
        harbor.max_concurrent_runs = 2
        harbor.save()
        start(harbor, intake_role, 6)
        northwind_role = Role.objects.get(tenant=northwind, slug="intake-coordinator")

        [theirs] = start(northwind, northwind_role, 1)

        assert Run.objects.get(pk=theirs.pk).status == Run.Status.RUNNING


class TestBatchWorker:
    def test_one_task_takes_every_ready_run_to_its_gate(self, harbor, intake_role):
        runs = start(harbor, intake_role, 5)

        result = worker.work(run_id=runs[0].pk)

        assert statuses(runs) == ["waiting_approval"] * 5
        assert result["steps"] == 5 * 3  # classify, lookup, draft for each

    def test_model_calls_of_many_runs_are_in_flight_together(
        self, harbor, intake_role, fake_openai, settings
    ):
        settings.DESK_LLM_PROVIDER = "openai"
        settings.OPENAI_BASE_URL = fake_openai.base_url
        harbor.max_concurrent_runs = 50
        harbor.save()
        fake_openai.hold_until_in_flight(20)
        runs = start(harbor, intake_role, 20)

        result = worker.work()

        assert statuses(runs) == ["waiting_approval"] * 20
        assert fake_openai.hold_released  # all 20 first calls were out before any answer
        assert result["peak_model_calls"] == 20

    def test_the_per_tenant_bound_caps_calls_in_flight(
        self, harbor, intake_role, fake_openai, settings
    ):
        settings.DESK_LLM_PROVIDER = "openai"
        settings.OPENAI_BASE_URL = fake_openai.base_url
        settings.DESK_TENANT_MODEL_CONCURRENCY = 3
        harbor.max_concurrent_runs = 50
        harbor.save()
        fake_openai.latency = 0.2
        start(harbor, intake_role, 10)

        worker.work()

        assert fake_openai.peak_in_flight == 3


class TestFairOrder:
    def test_ready_work_is_interleaved_across_tenants(self, harbor, northwind, intake_role):
        harbor.max_concurrent_runs = 50
        harbor.save()
        flood = start(harbor, intake_role, 10)
        northwind_role = Role.objects.get(tenant=northwind, slug="intake-coordinator")
        few = start(northwind, northwind_role, 2)

        picked = worker.ready_runs(limit=4, exclude=set())

        assert {run_id for run_id, _ in picked} >= {r.pk for r in few}
        assert [run_id for run_id, _ in picked if run_id in {r.pk for r in flood}] == [
            flood[0].pk,
            flood[1].pk,
        ]

    def test_priority_weight_gives_a_larger_share(self, harbor, northwind, intake_role):
        harbor.max_concurrent_runs = 50
        harbor.priority_weight = 3
        harbor.save()
        start(harbor, intake_role, 10)
        northwind_role = Role.objects.get(tenant=northwind, slug="intake-coordinator")
        start(northwind, northwind_role, 10)

        picked = worker.ready_runs(limit=8, exclude=set())

        tenants = [tenant_id for _, tenant_id in picked]
        assert tenants.count(harbor.pk) == 6
        assert tenants.count(northwind.pk) == 2

    def test_a_tenant_below_its_reservation_is_served_ahead_of_the_turns(
        self, harbor, northwind, intake_role
    ):
        harbor.max_concurrent_runs = northwind.max_concurrent_runs = 50
        harbor.priority_weight = 10  # by weight alone harbor would take 10 of 11 turns
        harbor.reserved_steps_per_minute = 0  # no reservation: nothing owed to harbor
        harbor.save()
        northwind.reserved_steps_per_minute = 3
        northwind.save()
        start(harbor, intake_role, 10)
        northwind_role = Role.objects.get(tenant=northwind, slug="intake-coordinator")
        owed = start(northwind, northwind_role, 5)
        done_this_minute(northwind, 1)  # 2 of its 3 reserved steps still owed

        picked = worker.ready_runs(limit=4, exclude=set())

        assert [run_id for run_id, _ in picked[:2]] == [owed[0].pk, owed[1].pk]
        assert [tenant_id for _, tenant_id in picked[2:]] == [harbor.pk, harbor.pk]

    def test_a_reservation_used_up_this_minute_gives_no_precedence(
        self, harbor, northwind, intake_role
    ):
        harbor.max_concurrent_runs = northwind.max_concurrent_runs = 50
        harbor.priority_weight = 10
        harbor.reserved_steps_per_minute = 0  # none: no precedence for harbor either
        harbor.save()
        northwind.reserved_steps_per_minute = 3
        northwind.save()
        start(harbor, intake_role, 10)
        northwind_role = Role.objects.get(tenant=northwind, slug="intake-coordinator")
        start(northwind, northwind_role, 5)
        done_this_minute(northwind, 3)

        picked = worker.ready_runs(limit=11, exclude=set())

        # By weight alone: harbor's ten turns, then northwind's first (not its three owed).
        assert [tenant_id for _, tenant_id in picked].count(northwind.pk) == 1

    def test_within_a_tenant_the_run_nearest_its_deadline_goes_first(self, harbor, intake_role):
        harbor.max_concurrent_runs = 50
        harbor.save()
        older, newer = start(harbor, intake_role, 2)
        with rls.platform_context():
            Run.objects.filter(pk=newer.pk).update(sla_due_at=older.sla_due_at - timedelta(1))

        picked = worker.ready_runs(limit=2, exclude=set())

        assert [run_id for run_id, _ in picked] == [newer.pk, older.pk]


def done_this_minute(tenant, count: int) -> None:
    """`count` of the tenant's steps completed just now (steps not ready: the waiting ones)."""
    with rls.platform_context():
        waiting = StepRun.objects.filter(tenant=tenant, status=StepRun.Status.PENDING)
        keys = list(waiting.order_by("pk").values_list("pk", flat=True)[:count])
        assert len(keys) == count
        StepRun.objects.filter(pk__in=keys).update(
            status=StepRun.Status.COMPLETED, finished_at=timezone.now()
        )


class TestTimeBudget:
    def test_a_task_out_of_time_hands_the_rest_to_a_successor(
        self, harbor, intake_role, settings, monkeypatch
    ):
        settings.DESK_WORKER_TASK_SECONDS = -1  # out of time from the start
        rung = []
        monkeypatch.setattr("desk.doorbell.async_task", lambda func, **kw: rung.append(kw))
        runs = start(harbor, intake_role, 2)

        result = worker.work()

        assert result["steps"] == 0
        assert statuses(runs) == ["running", "running"]
        assert rung == [
            {"run_id": None, "tenant_id": None, "q_options": {"group": "runs", "save": False}}
        ]


class TestDeadlines:
    def test_a_model_call_past_its_steps_deadline_is_a_failed_attempt(
        self, harbor, intake_role, fake_openai, settings, monkeypatch
    ):
        settings.DESK_LLM_PROVIDER = "openai"
        settings.OPENAI_BASE_URL = fake_openai.base_url
        fake_openai.latency = 2.0
        monkeypatch.setattr(engine.Lease, "deadline_seconds", property(lambda lease: 0.2))
        [run] = start(harbor, intake_role, 1)

        worker.work(run_id=run.pk, only=[run.pk])

        classify = run.steps.get(key="classify")
        assert classify.status == StepRun.Status.FAILED
        assert classify.attempts == settings.DESK_STEP_MAX_ATTEMPTS
        assert classify.error == "the step did not finish within 0.2 s"
        assert Run.objects.get(pk=run.pk).status == Run.Status.FAILED


class TestDoorbells:
    def test_admitting_many_runs_rings_one_doorbell_per_worker_batch(
        self, harbor, intake_role, settings, monkeypatch, django_capture_on_commit_callbacks
    ):
        settings.DESK_WORKER_BATCH = 2
        rung = []
        monkeypatch.setattr("desk.doorbell.async_task", lambda func, **kw: rung.append(kw))
        harbor.max_concurrent_runs = 0
        harbor.save()
        runs = start(harbor, intake_role, 5)
        harbor.max_concurrent_runs = 10
        harbor.save()

        with django_capture_on_commit_callbacks(execute=True):
            admitted = admit_runs(tenant_id=harbor.pk)

        assert admitted == [r.pk for r in runs]
        assert [kw["run_id"] for kw in rung] == [runs[0].pk, runs[2].pk, runs[4].pk]
        assert all(kw["q_options"] == {"group": "runs", "save": False} for kw in rung)


def test_the_queued_run_nearest_its_deadline_is_admitted_first(harbor, intake_role):
    harbor.max_concurrent_runs = 0
    harbor.save()
    older, newer = start(harbor, intake_role, 2)
    with rls.platform_context():
        Run.objects.filter(pk=newer.pk).update(sla_due_at=older.sla_due_at - timedelta(1))
    harbor.max_concurrent_runs = 1
    harbor.save()

    assert admit_runs(tenant_id=harbor.pk) == [newer.pk]


def test_a_connection_in_a_callers_transaction_is_not_closed_before_work(monkeypatch):
    # seed_demo calls work() inside platform work: closing the platform connection there
    # (as close_old_connections does to any connection not in autocommit) lost it mid-way.
    class Conn:
        def __init__(self, in_atomic_block):
            self.in_atomic_block = in_atomic_block
            self.checked = False

        def close_if_unusable_or_obsolete(self):
            self.checked = True

    default, platform = Conn(in_atomic_block=False), Conn(in_atomic_block=True)
    monkeypatch.setattr(
        worker.connections, "all", lambda initialized_only=False: [default, platform]
    )

    worker._refresh_connection()

    assert default.checked and not platform.checked
