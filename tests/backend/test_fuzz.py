"""Property-based fuzzing of every route: generated bodies and query strings never get a 5xx, and the
process's memory stays bounded. Label Studio is played by a stub that knows its user and no project
(every other API call answers 404), so the dashboard's routes run their parsing and error paths for real."""

from __future__ import annotations

import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, example, given, settings as hsettings, strategies as st

from backend.app import create_app
from backend.webhooks import HANDLED

LABEL_CONFIG = (
    '<View><Image name="image" value="$image"/><Choices name="label" toName="image">'
    '<Choice value="cat"/><Choice value="dog"/></Choices></View>'
)
SCALE = float(os.environ.get("ALC_FUZZ_SCALE", "1"))  # ALC_FUZZ_SCALE=10 for a long run
RESULTS: dict[str, int] = {}

# text with everything JSON can carry: lone surrogates, "²", NUL, right-to-left marks
any_text = st.text(st.characters(exclude_categories=()), max_size=40)
numbers = st.one_of(st.integers(), st.integers(min_value=10**30, max_value=10**60), st.floats(allow_nan=False))
ids = st.one_of(numbers, any_text, st.sampled_from(["1", "1.1700000000", "²", "1" * 5000, "-1", "0", "1e3", " 1"]))
leaves = st.one_of(st.none(), st.booleans(), numbers, any_text, ids)
json_values = st.recursive(leaves, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                           st.dictionaries(any_text, inner, max_size=4)), max_leaves=20)
choice = st.fixed_dictionaries({}, optional={"from_name": st.sampled_from(["label", "x"]) | json_values,
                                             "value": st.fixed_dictionaries({}, optional={"choices": st.lists(
                                                 st.sampled_from(["cat", "dog", "unicorn"]) | json_values, max_size=3) | json_values}) | json_values})
annotation = st.fixed_dictionaries({}, optional={"id": ids, "task": ids | st.fixed_dictionaries({"id": ids}),
                                                 "result": st.lists(choice, max_size=3) | json_values,
                                                 "was_cancelled": json_values, "project": ids})
task = st.fixed_dictionaries({}, optional={"id": ids, "data": st.fixed_dictionaries({}, optional={"image": st.sampled_from(
    ["/data/upload/1/0.png", "http://[::1/x.png", "http://127.0.0.1:99999/x", "/data/upload/../../api/projects"]) | json_values}) | json_values,
    "annotations": st.lists(annotation, max_size=3) | json_values})
config = st.sampled_from([LABEL_CONFIG, "<View><broken", "", '<!DOCTYPE x [<!ENTITY a "aaaaaaaa">]><View>&a;&a;</View>']) | any_text
bodies = st.one_of(
    json_values,
    st.fixed_dictionaries({}, optional={"project": ids | st.fixed_dictionaries({"id": ids}), "tasks": st.lists(task, max_size=4) | json_values,
                                        "label_config": config, "schema": config}),
    st.fixed_dictionaries({"action": st.sampled_from(HANDLED) | any_text}, optional={
        "project": ids | st.fixed_dictionaries({}, optional={"id": ids, "label_config": config}),
        "annotation": annotation | json_values, "annotations": st.lists(annotation, max_size=3) | json_values,
        "task": st.fixed_dictionaries({}, optional={"id": ids, "project": ids}) | json_values}),
)
raw_bodies = st.one_of(
    st.binary(max_size=300),
    st.integers(1, 3000).map(lambda depth: b"[" * depth + b"]" * depth),
    st.integers(1, 3000).map(lambda depth: b'{"a":' * depth + b"1" + b"}" * depth),
)
queries = st.one_of(
    st.dictionaries(st.sampled_from(["project", "target", "size", "refresh"]) | any_text, ids | any_text, max_size=3).map(
        lambda d: "&".join(f"{quote(str(k), safe='', errors='surrogatepass')}={quote(str(v), safe='', errors='surrogatepass')}" for k, v in d.items())),
    st.binary(max_size=100).map(lambda b: quote(b, safe="=&")),
)
POST_ROUTES = ["/setup", "/predict", "/webhook", "/train"]
GET_ROUTES = ["/health", "/", "/metrics"]
DASHBOARD_ROUTES = ["/dashboard", "/api/status", "/dashboard/thumbnail/1/2"]  # the dashboard blueprint's


def fuzz(examples: int):
    return hsettings(max_examples=int(examples * SCALE), deadline=None, suppress_health_check=list(HealthCheck),
                     database=None)


class _NoProjects(BaseHTTPRequestHandler):
    """Label Studio with a valid token and no projects."""

    def do_GET(self) -> None:  # noqa: N802
        if self.path.startswith("/api/current-user/whoami"):
            status, body = 200, {"id": 1, "username": "fuzz", "email": "fuzz@example.org"}
        else:
            status, body = 404, {"detail": "Not found."}
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_POST = do_PATCH = do_GET

    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def label_studio():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _NoProjects)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def client(redis_server, label_studio, tmp_path_factory):
    from backend.settings import load_settings

    url = label_studio
    settings = load_settings(
        redis_url=redis_server.url, data_home=tmp_path_factory.mktemp("fuzz-home"), label_studio_url=url,
        label_studio_api_key="0" * 40, selector="linear", retrain_after_annotations=10**6, retrain_after_seconds=10**6,
        basic_auth_user=None, basic_auth_pass=None, webhook_secret=None, label_studio_timeout=2,
        health_worker_timeout=10**6,  # no worker runs here: /health would rightly say 503 after a while
    )
    return create_app(settings).test_client()


def _rss_kb() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


def _check(response, what: str) -> None:
    RESULTS[what] = RESULTS.get(what, 0) + 1
    assert response.status_code < 500, f"{what}: {response.status_code} {response.data[:500]!r}"


@fuzz(500)
@given(route=st.sampled_from(POST_ROUTES), body=bodies, query=queries)
@example(route="/setup", body={"project": "²", "schema": LABEL_CONFIG}, query="")
@example(route="/train", body={"project": "1" * 5000}, query="")
@example(route="/webhook", body={"action": "\ud800", "project": 1}, query="")
@example(route="/predict", body={"project": "1.1", "tasks": 5, "label_config": LABEL_CONFIG}, query="")
def test_json_bodies_never_get_a_5xx(client, route, body, query):
    data = json.dumps(body)  # ensure_ascii: lone surrogates travel as \udXXX escapes
    _check(client.post(f"{route}?{query}", data=data, content_type="application/json"), "json")


@fuzz(300)
@given(route=st.sampled_from(POST_ROUTES), body=raw_bodies, kind=st.sampled_from(["application/json", "text/plain", ""]))
def test_raw_bodies_never_get_a_5xx(client, route, body, kind):
    _check(client.post(route, data=body, content_type=kind or None), "raw")


@fuzz(300)
@given(route=st.sampled_from(GET_ROUTES), query=queries)
def test_query_strings_never_get_a_5xx(client, route, query):
    _check(client.get(f"{route}?{query}"), "query")


@fuzz(50)
@given(route=st.sampled_from(DASHBOARD_ROUTES), query=queries)
@example(route="/dashboard", query="project=%C2%B2")  # the '/dashboard?project=²'
@example(route="/api/status", query="project=" + "7" * 5000)
@example(route="/api/status", query="project=%ED%A0%80")  # a lone surrogate, UTF-8 encoded
@example(route="/dashboard/thumbnail/1/2", query="size=%C2%B2")
@example(route="/dashboard", query="target=nan")
def test_dashboard_query_strings_never_get_a_5xx(client, route, query):
    _check(client.get(f"{route}?{query}"), "dashboard")


@fuzz(50)
@given(project=ids, task_id=ids)
def test_thumbnail_paths_never_get_a_5xx(client, project, task_id):
    path = f"/dashboard/thumbnail/{quote(str(project), safe='', errors='surrogatepass')}/{quote(str(task_id), safe='', errors='surrogatepass')}"
    _check(client.get(path), "path")


def test_memory_stays_bounded_over_repeated_requests(client):
    """Two rounds of 200 generated requests: the second grows the process by less than 50 MB."""
    @fuzz(200)
    @given(route=st.sampled_from(POST_ROUTES), body=bodies)
    def round_of_requests(route, body):
        _check(client.post(route, data=json.dumps(body), content_type="application/json"), "memory")

    round_of_requests()
    before = _rss_kb()
    round_of_requests()
    grown = _rss_kb() - before
    print(f"fuzz requests per kind: {RESULTS}; RSS growth over the second round: {grown / 1024:.1f} MB")
    assert grown < 50_000
