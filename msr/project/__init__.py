"""The Django project: what wires the registry core (msr/) and the apps (accounts, caches,
mirroring) into running processes. Settings (and the environment they read), the URLconf,
the WSGI entry point with its access log and request figures, the Celery application,
the `msr` command that starts every process, process configuration (gunicorn,
healthchecks), the probes and `/metrics`, and the operators' management commands.

It may import everything; nothing of the core or the apps imports it
(tests/unit/test_import_rules.py).
"""
