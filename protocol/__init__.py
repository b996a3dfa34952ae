"""The wire protocol MSR and its cache nodes share: grant claims, HTTP Range requests,
the OCI error body, request ids and log line formats.

Django-free and free of our other packages (standard library and PyJWT; boto3 for
the S3 layout of blobstore, imported when a bucket is first used), so the cache node
(caches/node.py) can use it without loading MSR; tests/test_dependencies.py checks both.
`blobstore` is the storage contract's S3 half that MSR's S3 store and a region's shared
store (caches/region.py) both build on.
"""
