"""A region of several cache nodes behind one address, as MSR sees it (issue 18): the
health check reads the region's `/stats` through that address (caches/tasks.py
check_cache), records the shared store and each node's heartbeat, and the caches API and
console show them. The `/stats` documents come from a real HTTP server on 127.0.0.1 that
answers whatever the test gives it: what a node, or whatever else answers at its
address, may send. The database is rolled back after each test."""

import html
import json
import re
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from django.test import Client

REGION_STATS = {
    "name": None,  # the cache's name, set by the test
    "hits": 30, "misses": 6, "bytes_from_disk": 3_000_000, "bytes_from_upstream": 600_000,
    "upstream_fetches": 2, "upstream_failures": 0, "refused": 1, "disk_used": 5_000_000,
    "store": "s3://msr-cache-eu/region",
    "node": "eu-b",
    "self": {"hits": 10, "misses": 2, "upstream_fetches": 1},
    "region": {
        "used": 5_000_000, "budget": 50_000_000_000,
        "nodes": [
            {"node": "eu-c", "url": "http://10.0.3.13:5100", "seen": 1_796_000_000.5, "age": 41.2, "healthy": False,
             "hits": 0, "upstream_fetches": 0},
            {"node": "eu-a", "url": "http://10.0.3.11:5100", "seen": 1_796_000_038.0, "age": 3.7, "healthy": True,
             "hits": 20, "upstream_fetches": 1},
            {"node": "eu-b", "url": "http://10.0.3.12:5100", "seen": 1_796_000_040.1, "age": 1.6, "healthy": True,
             "hits": 10, "upstream_fetches": 1},
        ],
    },
}


class StatsServer:
    """Answers GET /stats with `body` (bytes) and `status`; a stand-in for a region's
    load balancer and whichever node it picked."""

    def __init__(self):
        self.body, self.status = b"{}", 200
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                self.send_response(server.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(server.body)))
                self.end_headers()
                self.wfile.write(server.body)

            def log_message(self, *args):
                pass

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.http.server_address[1]}"
        threading.Thread(target=self.http.serve_forever, daemon=True).start()

    def answer(self, document, status=200):
        self.body = document if isinstance(document, bytes) else json.dumps(document).encode()
        self.status = status

    def stop(self):
        self.http.shutdown()
        self.http.server_close()


@pytest.fixture
def region(db):
    """A registered cache whose address is a StatsServer."""
    from caches.models import ContentCache

    server = StatsServer()
    cache = ContentCache.objects.create(name=f"eu-{uuid.uuid4().hex[:8]}", region="Europe", url=server.url)
    yield server, cache
    server.stop()


def region_stats(cache, **changes) -> dict:
    document = json.loads(json.dumps(REGION_STATS))
    document["name"] = cache.name
    document.update(changes)
    return document


def checked(cache):
    from caches.tasks import check_cache

    healthy = check_cache(cache)
    cache.refresh_from_db()
    return healthy


# -- the health check --------------------------------------------------------------------


def test_a_regions_store_and_nodes_are_recorded_by_node_id_with_the_regions_totals(region):
    server, cache = region
    server.answer(region_stats(cache))
    assert checked(cache) is True
    assert cache.store == "s3://msr-cache-eu/region" and cache.is_region
    assert cache.nodes == [
        {"node": "eu-a", "url": "http://10.0.3.11:5100", "healthy": True, "age": 3.7,
         "seen": "2026-11-30T00:53:58+00:00"},
        {"node": "eu-b", "url": "http://10.0.3.12:5100", "healthy": True, "age": 1.6,
         "seen": "2026-11-30T00:54:00.100000+00:00"},
        {"node": "eu-c", "url": "http://10.0.3.13:5100", "healthy": False, "age": 41.2,
         "seen": "2026-11-30T00:53:20.500000+00:00"},
    ]
    assert cache.nodes_healthy == 2 and cache.nodes_reported_at == cache.last_checked_at
    sample = cache.metrics.get()  # the region's sums, not the answering node's own ("self")
    assert (sample.hits, sample.misses, sample.upstream_fetches, sample.disk_used) == (30, 6, 2, 5_000_000)


def test_a_cache_of_one_node_has_no_store_and_no_nodes_and_one_that_was_a_region_loses_them(region):
    server, cache = region
    server.answer(region_stats(cache))
    assert checked(cache) is True and len(cache.nodes) == 3
    local = {key: value for key, value in region_stats(cache).items() if key not in ("store", "node", "self", "region")}
    server.answer(local)
    assert checked(cache) is True
    assert (cache.store, cache.nodes, cache.nodes_reported_at, cache.is_region) == ("", [], None, False)
    assert cache.metrics.order_by("-at").first().hits == 30


def test_a_region_whose_address_stops_answering_keeps_its_last_report_and_is_unhealthy(region):
    server, cache = region
    server.answer(region_stats(cache))
    checked(cache)
    reported_at = cache.nodes_reported_at
    server.answer(b"", status=502)  # the load balancer finds no node
    assert checked(cache) is False
    assert cache.last_error == f"The cache node at {server.url} answered 502 Bad Gateway instead of its statistics."
    assert len(cache.nodes) == 3 and cache.nodes_reported_at == reported_at < cache.last_checked_at


def test_a_region_stays_in_use_while_its_address_answers_even_with_every_other_node_down(region):
    server, cache = region
    document = region_stats(cache)
    for node in document["region"]["nodes"]:
        node["healthy"] = node["node"] == "eu-b"
    server.answer(document)
    assert checked(cache) is True and cache.nodes_healthy == 1 and len(cache.nodes) == 3


JUNK_REGIONS = [
    pytest.param({"region": "everything is fine"}, ("", []), id="region-not-an-object"),
    pytest.param({"region": [1, 2, 3]}, ("", []), id="region-a-list"),
    pytest.param({"region": {}}, ("s3://msr-cache-eu/region", []), id="no-node-list"),
    pytest.param({"region": {"nodes": {"eu-a": {}}}}, ("s3://msr-cache-eu/region", []), id="nodes-not-a-list"),
    pytest.param({"region": {"nodes": None}, "store": None}, ("(not named)", []), id="store-missing"),
    pytest.param({"region": {"nodes": []}, "store": 42}, ("(not named)", []), id="store-not-text"),
]


@pytest.mark.parametrize("changes, expected", JUNK_REGIONS)
def test_a_region_object_of_the_wrong_shape_is_read_as_far_as_it_goes(region, changes, expected):
    server, cache = region
    server.answer(region_stats(cache, **changes))
    assert checked(cache) is True
    assert (cache.store, cache.nodes) == expected


def test_node_entries_that_are_junk_are_left_out_and_odd_fields_are_made_safe(region):
    server, cache = region
    nodes = [
        "eu-a", 17, None, [], {}, {"node": 5}, {"node": ""}, {"node": "   "},    # no node id: left out
        {"node": "eu-a", "age": 1, "healthy": True},                             # the first of a node id wins
        {"node": "eu-a", "age": 99, "healthy": False},
        {"node": "eu-b", "age": "3", "healthy": "yes", "url": ["x"], "seen": "yesterday"},
        {"node": "eu-c", "age": 2.04, "seen": "2026-12-02T06:00:00"},           # healthy from the age
        {"node": "eu-d", "age": 16, "seen": 1e300},                             # old; a time out of range
        {"node": "eu-e", "age": -4, "healthy": 0, "seen": True},                # a clock ahead; 0 is no answer
        {"node": "eu-f", "age": float("inf"), "seen": "2026-12-02T07:00:00+02:00"},
        {"node": "n" * 300, "url": "http://" + "u" * 1000, "age": 1e12, "healthy": True, "seen": "9" * 100},
    ]
    server.answer(json.dumps(region_stats(cache, region={"nodes": nodes})).encode())  # Infinity, as Python writes it
    assert checked(cache) is True
    by_id = {node["node"]: node for node in cache.nodes}
    assert by_id["eu-a"] == {"node": "eu-a", "url": "", "healthy": True, "age": 1.0, "seen": None}
    assert by_id["eu-b"] == {"node": "eu-b", "url": "", "healthy": False, "age": None, "seen": None}
    assert by_id["eu-c"] == {"node": "eu-c", "url": "", "healthy": True, "age": 2.0,
                             "seen": "2026-12-02T06:00:00+00:00"}
    assert by_id["eu-d"]["healthy"] is False and by_id["eu-d"]["seen"] is None
    assert by_id["eu-e"]["age"] == 0.0 and by_id["eu-e"]["healthy"] is True and by_id["eu-e"]["seen"] is None
    assert by_id["eu-f"] == {"node": "eu-f", "url": "", "healthy": False, "age": None,
                             "seen": "2026-12-02T05:00:00+00:00"}
    long = next(node for node in cache.nodes if node["node"].startswith("nnn"))
    assert len(long["node"]) == 100 and long["node"].endswith("…") and len(long["url"]) == 500
    assert long["age"] == 10 * 365 * 86400.0 and long["seen"] is None
    assert [node["node"] for node in cache.nodes] == sorted(by_id) and len(cache.nodes) == 7


def test_a_huge_node_list_is_cut_at_two_hundred_nodes(region):
    from caches.tasks import MAX_NODES

    server, cache = region
    nodes = [{"node": f"node-{i:05d}", "url": f"http://10.1.{i // 256}.{i % 256}:5100", "age": 1, "healthy": True}
             for i in range(5000)]
    server.answer(region_stats(cache, region={"nodes": nodes}))
    assert checked(cache) is True
    assert MAX_NODES == 200 and len(cache.nodes) == 200 and cache.nodes_healthy == 200
    assert cache.nodes[0]["node"] == "node-00000" and cache.nodes[-1]["node"] == "node-00199"


def test_statistics_larger_than_a_mebibyte_fail_the_check_without_reading_on(region):
    server, cache = region
    padding = [{"node": f"n{i}", "url": "http://" + "x" * 400} for i in range(3000)]  # about 1.3 MB
    server.answer(region_stats(cache, region={"nodes": padding}))
    assert checked(cache) is False
    assert cache.last_error == f"The cache node at {server.url} answered with something other than its statistics."
    assert cache.last_error_detail == "ValueError: the statistics are larger than 1024 KiB"
    assert cache.nodes == [] and not cache.metrics.exists()


@pytest.mark.parametrize("body", [b"[" * 5000 + b"]" * 5000, b"not json", b'"a string"', b"\xff\xfe"],
                         ids=["nested-deep", "not-json", "not-an-object", "not-utf8"])
def test_a_body_that_is_not_statistics_fails_the_check_as_a_sentence(region, body):
    server, cache = region
    server.answer(body)
    assert checked(cache) is False
    assert cache.last_error == f"The cache node at {server.url} answered with something other than its statistics."


def test_counters_that_are_not_whole_numbers_count_nothing_and_the_region_stays_healthy(region):
    server, cache = region
    server.answer(region_stats(cache, hits="many", misses=[1], bytes_from_disk=True, bytes_from_upstream=-5,
                               upstream_fetches=2.9, disk_used=10**30))
    assert checked(cache) is True
    sample = cache.metrics.get()
    assert (sample.hits, sample.misses, sample.bytes_from_disk, sample.bytes_from_upstream,
            sample.upstream_fetches, sample.disk_used) == (0, 0, 0, 0, 2, 2**63 - 1)


# -- the API and the console -------------------------------------------------------------


@pytest.fixture
def admin_client(db):
    from accounts.services import create_user

    client = Client()
    client.force_login(create_user(f"root-{uuid.uuid4().hex[:8]}", is_admin=True))
    return client


def test_the_api_gives_a_regions_store_and_nodes_and_nothing_for_a_cache_of_one_node(region, admin_client):
    from caches.models import ContentCache

    server, cache = region
    server.answer(region_stats(cache))
    checked(cache)
    single = ContentCache.objects.create(name=f"lab-{uuid.uuid4().hex[:8]}", url="http://10.20.0.5:5100")
    body = admin_client.get(f"/api/v0/content_caches/{cache.pk}").json()
    assert body["healthy"] is True and body["store"] == "s3://msr-cache-eu/region"
    assert (body["nodesHealthy"], body["nodesTotal"]) == (2, 3)
    assert body["nodes"][2] == {"node": "eu-c", "url": "http://10.0.3.13:5100", "healthy": False, "age": 41.2,
                                "seen": "2026-11-30T00:53:20.500000+00:00"}
    assert body["nodesReportedAt"] is not None and body["metrics"]["diskUsed"] == 5_000_000
    listed = {c["name"]: c for c in admin_client.get("/api/v0/content_caches").json()["results"]}
    assert listed[cache.name]["nodesTotal"] == 3
    assert {key: listed[single.name][key] for key in ("store", "nodes", "nodesHealthy", "nodesTotal",
                                                       "nodesReportedAt")} == \
        {"store": "", "nodes": [], "nodesHealthy": None, "nodesTotal": None, "nodesReportedAt": None}


def test_a_regions_store_and_nodes_cannot_be_written_through_the_api(region, admin_client):
    server, cache = region
    server.answer(region_stats(cache))
    checked(cache)
    response = admin_client.patch(f"/api/v0/content_caches/{cache.pk}", content_type="application/json",
                                  data={"store": "s3://elsewhere", "nodes": [], "region": "Europe West"})
    assert response.status_code == 200, response.content
    cache.refresh_from_db()
    assert cache.region == "Europe West" and cache.store == "s3://msr-cache-eu/region" and len(cache.nodes) == 3


def test_the_console_shows_a_region_its_nodes_and_which_one_misses_its_heartbeat(region, admin_client):
    from caches.models import ContentCache

    server, cache = region
    document = region_stats(cache)
    document["region"]["nodes"][0]["node"] = "<script>alert(1)</script>"
    server.answer(document)
    checked(cache)
    single = ContentCache.objects.create(name=f"lab-{uuid.uuid4().hex[:8]}", url="http://10.20.0.5:5100")
    response = admin_client.get("/console/caches/")
    assert response.status_code == 200
    page = response.content.decode()
    row = re.search(rf"<tr>\s*<td class=\"cache\"><strong>{cache.name}</strong>.*?</tr>", page, re.S).group(0)
    assert f'<small class="region degraded"><a href="#region-{cache.name}">region of 3 nodes, 2 healthy</a>' in row
    section = re.search(rf'<section class="region" id="region-{cache.name}".*?</section>', page, re.S).group(0)
    text = " ".join(html.unescape(re.sub(r"<[^>]+>", " ", section)).split())
    assert f"{cache.name}: region of 3 nodes, 2 healthy" in text and "s3://msr-cache-eu/region" in text
    nodes = re.findall(r'<tr class="(node-up|node-down)">(.*?)</tr>', section, re.S)
    cells = [(state, " ".join(html.unescape(re.sub(r"<[^>]+>", " ", cells)).split())) for state, cells in nodes]
    assert cells == [
        ("node-down", "<script>alert(1)</script> http://10.0.3.13:5100 41 s ago no heartbeat"),
        ("node-up", "eu-a http://10.0.3.11:5100 3 s ago healthy"),
        ("node-up", "eu-b http://10.0.3.12:5100 1 s ago healthy"),
    ]
    assert "<script>alert(1)</script>" not in page
    assert f'id="region-{single.name}"' not in page and page.count('<section class="region"') == 1


def test_the_console_says_a_regions_nodes_are_from_before_its_address_stopped_answering(region, admin_client):
    server, cache = region
    server.answer(region_stats(cache))
    checked(cache)
    server.answer(b"", status=503)
    checked(cache)
    page = admin_client.get("/console/caches/").content.decode()
    section = re.search(rf'<section class="region" id="region-{cache.name}".*?</section>', page, re.S).group(0)
    assert "before the address stopped answering" in section and section.count('class="node-') == 3


def test_heartbeat_ages_read_as_people_say_them():
    from caches.views import heartbeat_age

    assert [heartbeat_age(age) for age in (None, 0, 14.6, 59.9, 60, 3599, 7200, 200_000)] == \
        ["unknown", "0 s ago", "14 s ago", "59 s ago", "1 min ago", "59 min ago", "2 h ago", "2 d ago"]
