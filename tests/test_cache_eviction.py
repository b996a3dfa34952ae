"""Eviction on a cache node: TTL by last access, then least recently used to the budget."""

import os
import time

from caches.node import Config, parse_duration, parse_size


def test_sizes_and_durations_parse_like_the_command_line_says():
    assert parse_size("50G") == 50 << 30 and parse_size("500M") == 500 << 20 and parse_size("1024") == 1024
    assert parse_duration("24h") == 86400 and parse_duration("30m") == 1800 and parse_duration("45") == 45


def test_eviction_drops_expired_then_least_recently_used_blobs(tmp_path, new_node):
    node = new_node(Config({"MSR_CACHE_NAME": "t", "MSR_CACHE_MSR_URL": "http://127.0.0.1:9",
                             "MSR_CACHE_DATA_DIR": str(tmp_path), "MSR_CACHE_MAX_SIZE": "3000",
                             "MSR_CACHE_TTL": "1h", "MSR_CACHE_EVICT_INTERVAL": "3600"}))
    now = time.time()
    ages = {"expired": 7200, "oldest": 1000, "older": 500, "recent": 10}
    paths = {}
    for i, (label, age) in enumerate(ages.items()):
        path = node.blob_path("sha256:" + f"{i:x}" * 64)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x" * 1200)
        os.utime(path, (now - age, now - age))
        paths[label] = path
    freed = node.evict()
    assert not paths["expired"].exists()       # past the TTL
    assert not paths["oldest"].exists()        # least recently used, over the 3000-byte budget
    assert paths["older"].exists() and paths["recent"].exists()
    assert freed == 2400 and node.disk_used() == 2400
