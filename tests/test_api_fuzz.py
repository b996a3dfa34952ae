"""Property-based fuzzing of the REST API against the schema it serves (schemathesis):
no 5xx, and every response matches the documented schema. Bounded: a few examples per
operation, as a normal (non-admin) user so that it cannot disturb other tests' data."""

import base64

import schemathesis
from schemathesis.checks import (
    content_type_conformance, not_a_server_error, response_schema_conformance, status_code_conformance,
)
from hypothesis import HealthCheck, given, settings

FUZZER_PASSWORD = "fuzzer-password-1"
EXAMPLES_PER_OPERATION = 8
# What the API promises: no server error, and every answer (status, content type, body)
# as documented. Schema-valid input that names nothing (an unknown repository) is
# rightly refused with a 400/404, so "positive data acceptance" is not checked.
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


def test_api_answers_every_generated_request_as_its_schema_says(msr):
    from accounts.models import User
    from accounts.services import create_user

    if not User.objects.filter(username="fuzzer").exists():
        create_user("fuzzer", FUZZER_PASSWORD)
    auth = {"Authorization": "Basic " + base64.b64encode(f"fuzzer:{FUZZER_PASSWORD}".encode()).decode()}
    schema = schemathesis.openapi.from_url(f"{msr}/api/v0/schema?format=json", headers=auth)
    failures, operations = [], 0
    for result in schema.get_all_operations():
        operation = result.ok()
        operations += 1

        @given(case=operation.as_strategy())
        @settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        def check(case):
            case.call_and_validate(base_url=msr, headers=auth, checks=CHECKS)

        try:
            check()
        except Exception as e:  # collect every operation's failure, then report them all
            failures.append(f"{operation.label}: {str(e)[:1500]}")
    assert operations >= 30
    assert not failures, "\n\n".join(failures)
