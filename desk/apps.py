from django.apps import AppConfig


class DeskConfig(AppConfig):
    name = "desk"
    verbose_name = "Runs"

    def ready(self):
        from django_q.signals import post_execute, pre_execute

        from desk import cluster

        # What a supervised cluster tells its supervisor (no-ops when not supervised).
        post_execute.connect(cluster.on_task_done, dispatch_uid="desk.cluster.on_task_done")
        pre_execute.connect(cluster.on_task_start, dispatch_uid="desk.cluster.on_task_start")
