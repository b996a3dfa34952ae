"""Promotion and mirroring policies, their jobs, and the copy engine (Celery tasks)."""
