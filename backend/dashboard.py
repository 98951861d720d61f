"""The project manager's view: GET /dashboard (server-rendered, charts as inline SVG) and GET /api/status (JSON).

Both read the project again from Label Studio on every request (through the connectors' ledger), so
the page never shows state that only lives here. Charts are drawn with matplotlib's object API (no
pyplot: requests are served from several threads); no JavaScript, no build step. Anything missing
(no project given, Label Studio down or not configured, an unknown project, no model yet) is said on
the page, never answered with a bare 500.

The cleaning view's thumbnails come from GET /dashboard/thumbnail/<project>/<task>: the task's image
read through the backend's image loader (its URL policy, its cache), behind the same auth as the page,
cached by the browser (a task's image does not change).
"""

from __future__ import annotations

import io
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import matplotlib.dates as mdates
from flask import Blueprint, Response, current_app, jsonify, render_template, request
from label_studio_sdk.core.api_error import ApiError
from matplotlib import rc_context
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator, PercentFormatter

from backend.images import ImageError
from backend.protocol import MAX_ID, ChoicesConfig, ProtocolError, TaskError
from backend.queue import PROJECTS_KEY
from backend.settings import SettingsError
from backend.status import collect_status
from connectors.client import connect, get_task
from connectors.errors import ConnectorError, UnknownProject

bp = Blueprint("dashboard", __name__, template_folder="templates")

QUEUE_ROWS = 50  # the page lists the first ones; /api/status has them all
THUMBNAIL_SIZES = (48, 96, 192)
CACHE_SECONDS = 10.0  # a read of a 1,000-task project takes seconds: reloads and several viewers share one
BLUE, ORANGE, GREEN, GREY = "#2563eb", "#ea580c", "#16a34a", "#9ca3af"


class StatusRequestError(ValueError):
    """A request the dashboard cannot answer as asked (bad or missing parameters); answered with 400."""


def _project_id(app_state: Any) -> int:
    raw = request.args.get("project")
    if raw:
        if not _ascii_int(raw, 19) or int(raw) <= 0:
            raise StatusRequestError(f"project must be a positive integer, got {ascii(raw[:40])}")
        return int(raw)
    try:
        known = sorted(int(p) for p in app_state.redis.smembers(PROJECTS_KEY))
    except Exception:
        known = []
    if not known:
        raise StatusRequestError("which project? add ?project=<id> (no project has sent webhooks to this backend yet)")
    return known[-1]


def _ascii_int(raw: str, digits: int) -> bool:
    """ASCII digits only, at most ``digits`` of them (str.isdigit accepts '²', which int() refuses)."""
    return raw.isascii() and raw.isdigit() and len(raw) <= digits


def _target() -> float:
    raw = request.args.get("target", "0.95")
    try:
        target = float(raw)
    except ValueError:
        target = float("nan")
    if not 0 < target < 1:
        raise StatusRequestError(f"target must be a number between 0 and 1 (an accuracy), got {ascii(raw[:40])}")
    return target


@dataclass
class _StatusCache:
    """The last status per (project, target) for CACHE_SECONDS, one read at a time per key; errors are not kept."""

    entries: dict[tuple[int, float], tuple[float, dict]] = field(default_factory=dict)
    locks: dict[tuple[int, float], threading.Lock] = field(default_factory=dict)
    guard: threading.Lock = field(default_factory=threading.Lock)

    def get(self, key: tuple[int, float], build) -> dict:
        with self.guard:
            lock = self.locks.setdefault(key, threading.Lock())
        with lock:
            hit = self.entries.get(key)
            if hit is not None and time.monotonic() - hit[0] < CACHE_SECONDS:
                return hit[1]
            status = build()
            self.entries[key] = (time.monotonic(), status)
            return status


def _status() -> dict:
    app_state = current_app.extensions["alc"]
    settings = app_state.settings
    project_id = _project_id(app_state)
    target = _target()
    url, key = settings.require_label_studio()

    def build() -> dict:
        client = connect(url, key, timeout=settings.label_studio_timeout, retries=2, check=False)  # no request yet: the working state may answer alone
        return collect_status(client, project_id, settings, store=app_state.store, redis_conn=app_state.redis,
                              target=target)

    cache = current_app.extensions.setdefault("alc_status_cache", _StatusCache())
    return cache.get((project_id, target), build)


def _error(exc: Exception) -> tuple[str, int]:
    """The message and HTTP status for a request that cannot be answered."""
    if isinstance(exc, StatusRequestError):
        return str(exc), 400
    if isinstance(exc, UnknownProject):
        return str(exc), 404
    if isinstance(exc, SettingsError):
        return f"the backend is not set up to reach Label Studio: {exc}", 503
    if isinstance(exc, ConnectorError):
        return f"Label Studio could not be read: {exc}", 502
    current_app.logger.exception("status failed")
    return f"the status could not be built ({type(exc).__name__}: {exc}); see the backend's log", 500


@bp.get("/api/status")
def api_status():
    try:
        return jsonify(_status())
    except Exception as exc:
        message, code = _error(exc)
        return jsonify(error=message), code


@bp.get("/dashboard")
def dashboard():
    refresh = request.args.get("refresh", "30")
    refresh = max(int(refresh), 5) if _ascii_int(refresh, 6) else 30
    try:
        status = _status()
    except Exception as exc:
        message, code = _error(exc)
        return render_template("dashboard_error.html", error=message, code=code,
                               project=request.args.get("project", "")), code
    return render_template("dashboard.html", s=status, charts=charts(status), refresh=refresh, rows=QUEUE_ROWS)


@bp.get("/dashboard/thumbnail/<int:project_id>/<int:task_id>")
def thumbnail(project_id: int, task_id: int):
    """The task's image as a PNG thumbnail (``?size=`` 48, 96 or 192), through the image loader."""
    app_state = current_app.extensions["alc"]
    settings = app_state.settings
    if max(project_id, task_id) > MAX_ID:
        return jsonify(error="no such task: ids are database integers"), 404
    size = request.args.get("size", "96")
    if not _ascii_int(size, 4) or int(size) not in THUMBNAIL_SIZES:
        return jsonify(error=f"size must be one of {', '.join(map(str, THUMBNAIL_SIZES))}, got {ascii(size[:40])}"), 400
    try:
        url, key = settings.require_label_studio()
        client = connect(url, key, timeout=settings.label_studio_timeout, retries=2, check=False)  # a bad token fails the first request
        task = get_task(client, task_id)
        if int(task.project or 0) != project_id:
            return jsonify(error=f"task {task_id} is not in project {project_id}"), 404
        configs = current_app.extensions.setdefault("alc_label_configs", {})
        if project_id not in configs:
            configs[project_id] = ChoicesConfig.parse(client.projects.get(project_id).label_config)
        config = configs[project_id]
        ref = config.object_value({"data": task.data})
        png = (app_state.loader.text_card(ref, int(size)) if config.object_type in ("text", "hypertext")  # a snippet
               else app_state.loader.thumbnail(ref, int(size)))
    except ApiError as exc:
        code = exc.status_code if exc.status_code in (401, 403, 404) else 502
        return jsonify(error=f"Label Studio answered {exc.status_code} for task {task_id}"), code
    except (ImageError, TaskError, ProtocolError) as exc:
        return jsonify(error=f"task {task_id}: {exc}"), 404
    except Exception as exc:
        message, code = _error(exc)
        return jsonify(error=message), code
    return Response(png, mimetype="image/png", headers={"Cache-Control": "private, max-age=86400"})


@bp.app_template_filter("when")
def when(value: str | None) -> str:
    """An ISO time from Label Studio as 'YYYY-MM-DD HH:MM:SS UTC' ('-' when there is none)."""
    if not value:
        return "-"
    parsed = _parse_time(value)
    return parsed.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC") if parsed is not None else str(value)


# --- charts ------------------------------------------------------------------------------------------


def _parse_time(value: str) -> datetime | None:
    """The time, UTC when it names no zone; None for a value that is not an ISO time (the chart skips it)."""
    try:
        parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def _figure() -> tuple[Figure, Any]:
    fig = Figure(figsize=(4.1, 2.7))
    ax = fig.add_subplot()
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    ax.grid(True, color="#e5e7eb", linewidth=0.8)
    ax.set_axisbelow(True)
    return fig, ax


def _svg(fig: Figure) -> str:
    buffer = io.StringIO()
    with rc_context({"svg.fonttype": "none"}):  # text stays text: smaller, and it takes the page's font
        fig.savefig(buffer, format="svg", bbox_inches="tight")
    text = buffer.getvalue()
    return text[text.index("<svg"):]  # drop the XML prolog: the SVG goes inline in the page


def _empty(ax: Any, message: str) -> None:
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes, color="#6b7280")
    ax.set_xticks([])
    ax.set_yticks([])


def burndown_chart(status: dict) -> str:
    """Budget left after each re-annotation, over time, up to now; what the open tasks hold is drawn apart."""
    fig, ax = _figure()
    budget = status["budget"]
    timed = [(when, e) for e in status.get("timeline", []) if (when := _parse_time(e.get("time"))) is not None]
    if timed:
        times, timeline = [t for t, _ in timed], [e for _, e in timed]
        generated = _parse_time(status.get("generated_at"))
        now = max(generated, times[-1]) if generated is not None else times[-1]
        xs = [times[0]] + times + [now]
        spent = [0] + [e["spent"] for e in timeline] + [timeline[-1]["spent"]]
        if budget["total"] is not None:
            ax.step(xs, [budget["total"] - s for s in spent], where="post", color=BLUE, lw=2, label="not yet spent")
            if budget["held"]:
                ax.step(xs[-2:], [budget["remaining"]] * 2, where="post", color=ORANGE, lw=1.5, ls="--",
                        label=f"after the {budget['held']} held for the open tasks")
            ax.set_ylim(bottom=0, top=budget["total"] * 1.05 + 0.5)
            ax.set_ylabel("re-annotations")
            ax.legend(frameon=False, fontsize=8, loc="lower left")
        else:
            ax.step(xs, spent, where="post", color=BLUE, lw=2)
            ax.set_ylabel("re-annotations spent (no budget set)")
        locator = mdates.AutoDateLocator(minticks=3, maxticks=6)
        ax.xaxis.set_major_locator(locator)
        ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    else:
        _empty(ax, "no re-annotation yet")
    ax.set_title("Budget burn-down (UTC)", loc="left", fontsize=11)
    return _svg(fig)


def corrected_chart(status: dict) -> str:
    """Labels changed (the initial label -> a different final majority) against re-annotations spent."""
    fig, ax = _figure()
    timeline = status.get("timeline", [])
    if timeline:
        spent = [0] + [e["spent"] for e in timeline]
        changed = [0] + [e["labels_changed"] for e in timeline]
        ax.step(spent, changed, where="post", color=GREEN, lw=2)
        ax.plot(spent[1:], changed[1:], "o", color=GREEN, ms=3)
        ax.set_xlabel("re-annotations spent")
        ax.set_ylabel("labels changed")
        ax.set_ylim(bottom=0, top=max(changed) + 1)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    else:
        _empty(ax, "no re-annotation yet")
    ax.set_title("Labels changed vs spend", loc="left", fontsize=11)
    return _svg(fig)


def accuracy_chart(status: dict) -> str:
    """The accuracy estimate now with its interval, the target, and the forecast spend to reach it."""
    fig, ax = _figure()
    estimate = status.get("estimate", {})
    if estimate.get("available"):
        spent = status["budget"]["spent"]
        low, high = estimate["accuracy_interval"]
        ax.vlines([spent], [low], [high], color=BLUE, lw=5, alpha=0.25,
                  label=f"{100 * estimate['confidence']:.0f}% interval")
        ax.plot([spent], [estimate["accuracy"]], "o", color=BLUE, label="estimated now")
        ax.axhline(estimate["target"], color=GREY, ls=":", lw=1.2, label=f"target {estimate['target']:.0%}")
        forecast = estimate.get("forecast_spend") or 0
        if forecast > 0:
            ax.plot([spent, spent + forecast], [estimate["accuracy"], estimate["target"]], "--", color=ORANGE,
                    lw=1.5, label="forecast")
        ax.set_ylim(max(0.0, min(low, estimate["target"]) - 0.05), 1.0)
        ax.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlim(-0.5, max(spent + forecast, 1) * 1.05 + 0.5)
        ax.set_xlabel("re-annotations spent")
        ax.legend(frameon=False, fontsize=8, loc="lower right")
    else:
        _empty(ax, "no estimate before an audit draw settles")
    ax.set_title("Estimated label accuracy", loc="left", fontsize=11)
    return _svg(fig)


def charts(status: dict) -> dict[str, str]:
    """The page's inline SVGs."""
    return {"burndown": burndown_chart(status), "corrected": corrected_chart(status), "accuracy": accuracy_chart(status)}
