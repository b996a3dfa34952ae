"""A region's settings: the store's URL and the networks a node streams fills from."""

import pytest

from caches.region import parse_networks, peer_allowed
from protocol.blobstore import parse_url


def test_store_urls_and_peer_networks():
    assert parse_url("s3://bucket/a/b/") == ("bucket", "a/b")
    assert parse_url("s3://bucket") == ("bucket", "")
    for bad in ("http://bucket/x", "s3://", "s3:///x", "s3://bu cket/x"):
        with pytest.raises(ValueError):
            parse_url(bad)
    networks = parse_networks("10.0.0.0/8,127.0.0.0/8")
    assert peer_allowed("http://127.0.0.1:5100", networks)
    assert peer_allowed("http://10.1.2.3", networks)
    assert not peer_allowed("http://8.8.8.8:80", networks)  # a lease that points outside the region
    assert not peer_allowed("ftp://127.0.0.1", networks)
    assert not peer_allowed("http://no-such-host.invalid", networks)
    with pytest.raises(ValueError):
        parse_networks("10.0.0.0/8,not-a-network")
