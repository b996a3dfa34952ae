"""Hot-path lookups compiled once (msr/prepared.py) give the ORM's answers."""

import pytest
from django.db import connection

from msr.prepared import prepared
from msr.services import find_repository, linked_blob_size, resolve_manifest
from tests.client import Registry


def test_prepared_lookups_match_the_orm_and_survive_a_lost_statement(msr, personas, unique):
    alice = Registry(msr, "alice", personas["alice"].token)
    name = f"acme/prepared-{unique}"
    digest, _ = alice.push_image(name, "v1", layers=(b"prepared layer " + unique.encode(),))
    assert resolve_manifest(name, "v1")[0] == digest
    assert resolve_manifest(name, digest)[0] == digest
    manifest = find_repository(name).manifests.get(digest=digest)
    layer = manifest.blobs.order_by("-size").first()
    assert linked_blob_size(name, layer.digest) == layer.size
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("DEALLOCATE ALL")
    assert resolve_manifest(name, "v1")[0] == digest


def test_a_query_with_its_own_constants_is_refused():
    from msr.models import Tag

    @prepared
    def constant(name):
        return Tag.objects.filter(name=name, repository__name="fixed").values_list("name")

    with pytest.raises(AssertionError):
        constant("x")
