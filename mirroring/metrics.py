"""Prometheus figures of mirroring, read from the Job table at each scrape; registered with
the core's /metrics in MirroringConfig.ready() (msr/extensions.py)."""

from datetime import timedelta

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

_JOB_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600)


class JobCollector:
    """msr_mirroring_jobs_total{action,status}: jobs that ended (done, failed, canceled);
    msr_mirroring_jobs_active{action,status}: waiting or running now;
    msr_mirroring_job_duration_seconds{action}: started_at to finished_at of ended jobs
    (a retried job's last attempt)."""

    def collect(self):
        from django.db.models import Count, DurationField, ExpressionWrapper, F, Q, Sum

        from mirroring.models import Job

        actions = [action for action, _ in Job.ACTIONS]
        counts = {(a, s): n for a, s, n in Job.objects.order_by().values_list("action", "status")
                  .annotate(n=Count("pk"))}
        ended = CounterMetricFamily("msr_mirroring_jobs", "Mirroring and promotion jobs that ended, by outcome",
                                    labels=["action", "status"])
        active = GaugeMetricFamily("msr_mirroring_jobs_active", "Mirroring and promotion jobs waiting or running",
                                   labels=["action", "status"])
        for action in actions:
            for status in (Job.DONE, Job.FAILED, Job.CANCELED):
                ended.add_metric([action, status], counts.get((action, status), 0))
            for status in Job.ACTIVE:
                active.add_metric([action, status], counts.get((action, status), 0))
        yield ended
        yield active

        duration = ExpressionWrapper(F("finished_at") - F("started_at"), output_field=DurationField())
        buckets = {f"le{i}": Count("pk", filter=Q(duration__lte=timedelta(seconds=bound)))
                   for i, bound in enumerate(_JOB_BUCKETS)}
        rows = {row["action"]: row for row in Job.objects.order_by()
                .filter(status__in=(Job.DONE, Job.FAILED, Job.CANCELED), started_at__isnull=False,
                        finished_at__isnull=False)
                .annotate(duration=duration).values("action")
                .annotate(count=Count("pk"), total=Sum("duration"), **buckets)}
        histogram = HistogramMetricFamily("msr_mirroring_job_duration_seconds",
                                          "Run time of ended jobs (their last attempt), by action",
                                          labels=["action"])
        for action in actions:
            row = rows.get(action, {})
            cumulative = [(str(float(bound)), row.get(f"le{i}", 0)) for i, bound in enumerate(_JOB_BUCKETS)]
            total = row.get("total") or timedelta(0)
            histogram.add_metric([action], cumulative + [("+Inf", row.get("count", 0))],
                                 sum_value=total.total_seconds())
        yield histogram
