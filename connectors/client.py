"""A label-studio-sdk client that survives a slow or restarting Label Studio and fails with a clear error.

The SDK's own retries cover connection errors and 5xx but not timeouts, and end in a bare ``ApiError``.
Here one httpx transport does the retrying for every SDK call (the SDK's own are switched off):

- connection errors, timeouts and 5xx are retried with exponential backoff, then raise
  :class:`LabelStudioUnavailable` naming the URL, the request and the last failure;
- a POST (not idempotent: an import may have happened before the answer was lost) is retried only when
  the request certainly never reached Label Studio (connection refused, connect timeout, 502/503/504);
- 401/403 raise :class:`LabelStudioAuthError` at once (a bad token does not get better by retrying);
- other 4xx (404 included) are answers, never retried; :func:`get_project` turns a 404 into :class:`UnknownProject`;
- a request carrying the ``X-ALC-No-Retry`` header is sent once (the project export: a retry would start
  a second export while Label Studio still builds the first).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import httpx
from label_studio_sdk import LabelStudio
from label_studio_sdk.core.api_error import ApiError

from connectors.errors import LabelStudioAuthError, LabelStudioUnavailable, UnknownProject

log = logging.getLogger(__name__)

IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "PATCH", "DELETE"})
RETRY_STATUS = frozenset({500, 502, 503, 504})
NOT_RECEIVED_STATUS = frozenset({502, 503, 504})  # a proxy answered: Label Studio never saw the request
MAX_BACKOFF = 8.0
NO_RETRY_HEADER = "X-ALC-No-Retry"  # set on one request: send it once (a retried export would start a second one)
# Label Studio's task view (GET and PATCH /api/tasks/{id}) first computes its Data Manager columns for the one
# task (completed_at, draft_exists, predictions_score, avg_lead_time, ...) unless ``review`` is set, which cuts
# them to two; nothing here reads those columns. 10,000 tasks, 1.23.2: GET 88 -> 66 ms, PATCH 152 -> 127 ms.
LEAN_TASK_VIEW = {"additional_query_parameters": {"review": "1"}}


class RetryingTransport(httpx.BaseTransport):
    """Retries with backoff around another transport; turns exhausted retries and bad tokens into our errors."""

    def __init__(self, inner: httpx.BaseTransport | None = None, retries: int = 3, backoff: float = 0.5) -> None:
        self.inner = inner or httpx.HTTPTransport()
        self.retries = max(0, int(retries))
        self.backoff = backoff

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        idempotent = request.method in IDEMPOTENT
        what = f"{request.method} {request.url.copy_with(query=None)}"
        once = request.headers.pop(NO_RETRY_HEADER, None) is not None
        started = time.monotonic()
        last = ""
        for attempt in range(1 if once else self.retries + 1):
            if attempt:
                time.sleep(min(self.backoff * 2 ** (attempt - 1), MAX_BACKOFF))
            try:
                response = self.inner.handle_request(request)
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                last = f"{type(exc).__name__}: {exc}"
                continue
            except (httpx.TimeoutException, httpx.RemoteProtocolError, httpx.ReadError) as exc:
                last = f"{type(exc).__name__}: {exc or 'no answer in time'}"
                if idempotent:
                    continue
                break
            status = response.status_code
            if status in (401, 403):
                response.read()
                raise LabelStudioAuthError(
                    f"Label Studio at {request.url.scheme}://{request.url.netloc.decode()} refused the API token "
                    f"({status} on {what}): check LABEL_STUDIO_API_KEY (a personal access token or the legacy token "
                    "of a user who can see the project)"
                )
            if status in RETRY_STATUS:
                response.read()
                last = f"HTTP {status}: {response.text[:200]}"
                response.close()
                if idempotent or status in NOT_RECEIVED_STATUS:
                    continue
                last += " (a POST is not retried: Label Studio may have applied it)"
                break
            return response
        waited = time.monotonic() - started
        raise LabelStudioUnavailable(
            f"Label Studio did not answer {what} ({attempt + 1} attempt(s) over {waited:.1f} s): {last}"
        )

    def close(self) -> None:
        self.inner.close()


def connect(
    url: str,
    api_key: str,
    timeout: float = 30.0,
    retries: int = 3,
    *,
    backoff: float = 0.5,
    transport: httpx.BaseTransport | None = None,
    check: bool = True,
) -> LabelStudio:
    """An SDK client for ``url`` whose every call retries (see the module doc); ``check`` verifies the token now."""
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise ValueError(f"Label Studio URL must start with http:// or https://, got {url!r}")
    if not api_key:
        raise LabelStudioAuthError("no API token given: set LABEL_STUDIO_API_KEY")
    http = httpx.Client(
        transport=RetryingTransport(transport, retries=retries, backoff=backoff),
        timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
        follow_redirects=True,
    )
    client = LabelStudio(base_url=url.rstrip("/"), api_key=api_key, httpx_client=http, timeout=timeout, max_retries=0)
    if check:
        client.users.whoami()
    return client


def get_project(client: LabelStudio, project_id: int) -> Any:
    """The project, or :class:`UnknownProject` when Label Studio has none with this id."""
    try:
        return client.projects.get(int(project_id))
    except ApiError as exc:
        if exc.status_code == 404:
            raise UnknownProject(
                f"Label Studio has no project {project_id} (or this token cannot see it)"
            ) from None
        raise


def get_task(client: LabelStudio, task_id: int) -> Any:
    """One task with its annotations and predictions (raises the SDK's ``ApiError``, 404 included)."""
    return client.tasks.get(str(int(task_id)), request_options=LEAN_TASK_VIEW)


def update_task(client: LabelStudio, task_id: int, body: dict) -> None:
    """One task PATCH (``overlap``, ``is_labeled``, ``data``: see connectors.plan.task_patch)."""
    client.tasks.update(str(int(task_id)), **body, request_options=LEAN_TASK_VIEW)


def base_url(client: LabelStudio) -> str:
    """The Label Studio URL this client talks to (for links to tasks)."""
    return client._client_wrapper.get_base_url().rstrip("/")


def task_url(client: LabelStudio, project_id: int, task_id: int) -> str:
    return f"{base_url(client)}/projects/{project_id}/data?task={task_id}"
