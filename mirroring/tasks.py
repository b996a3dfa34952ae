"""Celery tasks of mirroring: run a job, and beat's tick (poll schedules, lost jobs)."""

from celery import shared_task

from mirroring import jobs


@shared_task(acks_late=True, ignore_result=True)
def run_job(job_id: int) -> str:
    """Claim job `job_id` (compare-and-set) and run it; duplicates find it claimed and
    stop. Retries are new messages with a countdown (see jobs.execute)."""
    return jobs.execute(job_id)


@shared_task(ignore_result=True)
def tick() -> dict:
    return jobs.tick()
