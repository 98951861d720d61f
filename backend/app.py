"""The Flask app: Label Studio's ML-backend protocol, the webhook, /metrics and the dashboard.

Routes: GET /health, POST /setup, POST /predict, POST /webhook (and the legacy POST /train, which
Label Studio uses instead of a START_TRAINING webhook when its feature flag is off), GET /metrics, and
the connectors' dashboard blueprint (GET /dashboard, GET /api/status) when installed.

Auth: with BASIC_AUTH_USER/PASS set, every route but /health needs them. With ALC_WEBHOOK_SECRET set,
/webhook needs the header ``X-ALC-Webhook-Secret`` instead (Label Studio's webhooks carry custom headers,
not the ML backend's basic auth). Without credentials the app answers loopback clients only (and
`alc serve` refuses to listen elsewhere): closed by default.

Bounds: request bodies up to ALC_MAX_REQUEST_BYTES (413), tasks per /predict up to ALC_MAX_PREDICT_TASKS
(413); malformed input of any shape is a 4xx with a message, never a 500.
"""

from __future__ import annotations

import atexit
import hmac
import ipaddress
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import redis
from flask import Flask, Response, current_app, jsonify, request
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from werkzeug.exceptions import HTTPException

from backend import queue as q
from backend import worker as workers
from backend.images import ImageError, ImageLoader
from backend.metrics import Metrics
from backend.model_store import ModelStore, ModelVersion
from backend.protocol import ChoicesConfig, ProtocolError, TaskError, explanation, parse_project, score_from_priority
from backend.settings import Settings
from backend.events import handle_event, recover_missed
from backend.webhooks import parse_webhook

log = logging.getLogger(__name__)
SECRET_HEADER = "X-ALC-Webhook-Secret"
UNTRAINED = "alc-untrained"


@dataclass
class AppState:
    """What the routes (and the dashboard blueprint, via ``current_app.extensions['alc']``) share."""

    settings: Settings
    redis: redis.Redis
    store: ModelStore
    loader: ImageLoader
    metrics: Metrics
    cadence: q.Cadence
    embedded_redis: q.EmbeddedRedis | None = None  # when this app started its own Redis
    missed: set[int] = field(default_factory=set)  # projects whose webhooks failed while Redis was down
    started_at: float = field(default_factory=time.time)
    supervisor: str | None = None  # the name of the worker `alc serve --with-worker` supervises, if any


def state() -> AppState:
    return current_app.extensions["alc"]


def create_app(settings: Settings) -> Flask:
    """Build the app. Without REDIS_URL it starts the embedded Redis in ALC_DATA_HOME."""
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_request_bytes
    embedded = None
    url = settings.redis_url
    if url is None:
        embedded = q.EmbeddedRedis(settings.data_home)
        url = embedded.start()
        atexit.register(embedded.stop)  # only stops it if this process started it
    conn = q.connect(url, fast_fail=True)
    app.extensions["alc"] = AppState(
        settings=settings,
        redis=conn,
        store=ModelStore(settings.models_path),
        loader=ImageLoader.from_settings(settings),
        metrics=Metrics(lambda: conn),
        cadence=q.Cadence.from_settings(settings),
        embedded_redis=embedded,
    )
    app.before_request(_authenticate)
    app.register_error_handler(ProtocolError, lambda e: (jsonify(error=str(e)), e.status))
    app.register_error_handler(HTTPException, _http_error)
    for rule, view, methods in [
        ("/health", health, ["GET"]),
        ("/", health, ["GET"]),
        ("/setup", setup, ["POST"]),
        ("/predict", predict, ["POST"]),
        ("/webhook", webhook, ["POST"]),
        ("/train", train, ["POST"]),
        ("/metrics", metrics, ["GET"]),
    ]:
        app.add_url_rule(rule, view.__name__ if rule != "/" else "index", view, methods=methods)
    _register_dashboard(app)
    return app


def _register_dashboard(app: Flask) -> None:
    try:
        from backend.dashboard import bp
    except ModuleNotFoundError as exc:
        if exc.name != "backend.dashboard":
            raise
        return
    app.register_blueprint(bp)


def _http_error(error: HTTPException) -> tuple[Response, int]:
    if error.code == 413:
        limit = state().settings.max_request_bytes
        return jsonify(error=f"request body over the limit of {limit} bytes (ALC_MAX_REQUEST_BYTES)"), 413
    return jsonify(error=error.description), error.code or 500


# --- auth --------------------------------------------------------------------------------------


def _authenticate() -> Response | tuple[Response, int] | None:
    settings = state().settings
    if request.path in ("/health", "/"):
        return None
    if request.path == "/webhook" and settings.webhook_secret is not None:
        if _same(request.headers.get(SECRET_HEADER, ""), settings.webhook_secret.get_secret_value()):
            return None
        return jsonify(error=f"missing or wrong {SECRET_HEADER} header"), 401
    expected = settings.basic_auth
    if expected is None:
        if _loopback(request.remote_addr):
            return None
        return jsonify(error="this server has no credentials and answers its own machine only: "
                             "set BASIC_AUTH_USER and BASIC_AUTH_PASS to serve other machines"), 403
    auth = request.authorization
    if auth is not None and auth.type == "basic" and _same(auth.username or "", expected[0]) and _same(
        auth.password or "", expected[1]
    ):
        return None
    response = jsonify(error="basic auth required")
    response.status_code = 401
    response.headers["WWW-Authenticate"] = 'Basic realm="active-label-cleaning"'
    return response


def _same(given: str, expected: str) -> bool:
    """Constant-time comparison that also takes text no client should send (lone surrogates)."""
    return hmac.compare_digest(given.encode("utf-8", "surrogatepass"), expected.encode("utf-8", "surrogatepass"))


def _loopback(address: str | None) -> bool:
    try:
        return ipaddress.ip_address(address or "").is_loopback
    except ValueError:
        return False


def _json_body() -> object:
    """The body as JSON, or ProtocolError 400 (invalid JSON, invalid UTF-8, nesting too deep, huge numbers)."""
    raw = request.get_data(cache=True)
    try:
        return json.loads(raw)
    except RecursionError:
        raise ProtocolError("the request body must be a JSON object nested less deeply") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, int digits over Python's limit
        raise ProtocolError(f"the request body must be a JSON object; it is not JSON ({str(exc)[:80]})") from None


def _json_object() -> dict:
    body = _json_body()
    if not isinstance(body, dict):
        raise ProtocolError("the request body must be a JSON object")
    return body


# --- ML-backend protocol -------------------------------------------------------------------------


def health() -> tuple[Response, int]:
    """UP (200) or DEGRADED (503, with the reasons): Redis down, no worker seen for a while, the
    supervised worker restarting. Also lists the workers seen and the age of the oldest queued job."""
    st = state()
    report = workers.health_report(
        st.redis, timeout=st.settings.health_worker_timeout, started_at=st.started_at, supervisor=st.supervisor
    )
    body = {"model_class": "ActiveLabelCleaning", "selector": st.settings.selector, "rule": st.settings.rule, **report}
    return jsonify(body), 200 if report["status"] == "UP" else 503


def setup() -> Response:
    """Label Studio connects (and re-checks before each predict): the serving model_version of the project."""
    body = _json_object()
    project_id = parse_project(body.get("project"))
    ChoicesConfig.parse(body.get("schema") or body.get("label_config"))
    st = state()
    model = st.store.load(project_id)  # the version that serves: a torn `current` falls back to an intact one
    version = model.version if model is not None else None
    if version is None:
        _queue_training(project_id)
    return jsonify(model_version=version or UNTRAINED)


def _queue_training(project_id: int) -> None:
    """Queue a (coalesced) training of the project: on first contact, or when its classes changed.
    Best effort: /setup and /predict must answer anyway."""
    st = state()
    try:
        st.redis.sadd(q.PROJECTS_KEY, project_id)
        q.request_retrain(st.redis, project_id, st.cadence, force=True)
    except redis.RedisError as exc:
        log.warning("could not queue the first training of project %s: %s", project_id, exc)


def predict() -> Response:
    """Scores for Label Studio: one entry per task, lowest score = re-annotate first (see backend.protocol)."""
    st = state()
    started = time.perf_counter()
    body = _json_object()
    tasks = body.get("tasks")
    if not isinstance(tasks, list):
        raise ProtocolError("'tasks' must be a list")
    if len(tasks) > st.settings.max_predict_tasks:
        raise ProtocolError(
            f"{len(tasks)} tasks in one /predict; at most {st.settings.max_predict_tasks} (ALC_MAX_PREDICT_TASKS)", 413
        )
    project_id = parse_project(body.get("project"))
    config = ChoicesConfig.parse(body.get("label_config"))
    model = st.store.load(project_id)
    if model is None:
        _queue_training(project_id)
        raise ProtocolError(f"no model for project {project_id} yet: its first training has been queued", 404)
    if tuple(model.ranking.class_names) != config.class_names:
        _queue_training(project_id)
        raise ProtocolError(
            f"the label config's classes {list(config.class_names)} differ from those of model {model.version} "
            f"({model.ranking.class_names}); a retrain has been queued",
            409,
        )
    results = []
    for task in tasks:
        try:
            results.append(_predict_task(task, model, config))
            st.metrics.predict_tasks.labels("ok").inc()
        except (TaskError, ImageError) as exc:
            task_id = task.get("id") if isinstance(task, dict) else None
            results.append({"task": task_id, "error": str(exc), "model_version": model.version})
            st.metrics.predict_tasks.labels("error").inc()
    st.metrics.predict_latency.observe(time.perf_counter() - started)
    return jsonify(results=results, model_version=model.version)


def _predict_task(task: Any, model: ModelVersion, config: ChoicesConfig) -> dict:
    """The stored ranking for tasks of the last retrain; a live score from the serving selector otherwise."""
    if not isinstance(task, dict) or not isinstance(task.get("id"), int) or isinstance(task["id"], bool):
        raise TaskError("task must be an object with an integer 'id'")
    ranking, meta = model.ranking, model.meta
    row = ranking.row(task["id"])
    if row is not None:
        priority, noisiness, ambiguity = ranking.priority[row], ranking.noisiness[row], ranking.ambiguity[row]
        counts, score = ranking.counts[row], float(ranking.scores[row])
        predicted = int(ranking.predicted[row])
    else:
        counts = config.counts_from_annotations(task)
        if counts.sum() == 0:
            raise TaskError("task has no label yet, so there is no label to check")
        image = state().loader.load(config.image_ref(task))
        try:
            priority, noisiness, ambiguity, probs = _live_priority(model, counts, image)
        except Exception as exc:  # a selector's failure on one task is that task's error
            log.warning("model %s could not score task %s", model.version, task["id"], exc_info=True)
            raise TaskError(f"model {model.version} could not score this task: {type(exc).__name__}: {str(exc)[:120]}") from None
        score = score_from_priority(priority)
        predicted = int(np.argmax(probs))
    why = explanation(priority, noisiness, ambiguity, counts, ranking.class_names, meta.get("selector_version", ""), meta.get("rule", ""))
    why["in_ranking"] = row is not None
    return config.prediction(predicted, score, model.version, why)


def _live_priority(model: ModelVersion, counts: np.ndarray, image: np.ndarray) -> tuple[float, float, float, np.ndarray]:
    from scoring.ranking import Strategy

    strategy = Strategy.build(model.selector(), model.meta.get("rule"))
    output = strategy.model_output(image[None])
    pri = strategy.priorities(counts[None], output)
    probs = Strategy.posteriors(output)
    return float(pri.priority[0]), float(pri.noisiness[0]), float(pri.ambiguity[0]), probs[0]


# --- webhooks ----------------------------------------------------------------------------------


def webhook() -> Response:
    """Validate, count, enqueue, answer: Label Studio waits on this inside the annotator's submit."""
    st = state()
    started = time.perf_counter()
    try:
        event = parse_webhook(_json_body())
    except ProtocolError:
        st.metrics.webhooks.labels("invalid", "rejected").inc()
        raise
    action = st.metrics.action_label(event.action)
    if not event.handled:
        st.metrics.webhooks.labels(action, "ignored").inc()
        return jsonify(status="ignored", action=action)
    try:
        outcome = handle_event(st, event)
        recover_missed(st)
    except redis.RedisError as exc:
        st.missed.add(event.project_id)
        st.metrics.webhooks.labels(action, "unavailable").inc()
        log.warning("webhook %s for project %s not queued, Redis unavailable: %s", event.action, event.project_id, exc)
        return (
            jsonify(
                error="the retraining queue (Redis) is unavailable; Label Studio keeps the annotation and the next sync counts it"
            ),
            503,
        )
    st.metrics.webhooks.labels(action, "queued").inc()
    st.metrics.webhook_latency.observe(time.perf_counter() - started)
    return jsonify(status="ok", action=event.action, project=event.project_id, retrain=outcome)


def train() -> Response:
    """Legacy training call (Label Studio without the START_TRAINING webhook flag): same as START_TRAINING."""
    st = state()
    project_id = parse_project(_json_object().get("project"))
    try:
        st.redis.sadd(q.PROJECTS_KEY, project_id)
        outcome = q.request_retrain(st.redis, project_id, st.cadence, force=True)
    except redis.RedisError:
        return jsonify(error="the retraining queue (Redis) is unavailable"), 503
    return jsonify(status="ok", retrain=outcome)


def metrics() -> Response:
    return Response(generate_latest(state().metrics.registry), mimetype=CONTENT_TYPE_LATEST)
