"""The wire protocol MSR and its cache nodes share: grant claims, HTTP Range requests,
the OCI error body, request ids and log line formats.

Django-free and free of our other packages (standard library and PyJWT only), so the
cache node (caches/node.py) can use it without loading MSR; tests/test_dependencies.py
checks both.
"""
