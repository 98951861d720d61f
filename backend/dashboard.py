"""The project manager's view: GET /dashboard (server-rendered, charts as inline SVG) and GET /api/status (JSON).

Both read the project again from Label Studio on every request (through the connectors' ledger), so
the page never shows state that only lives here. Charts are drawn with matplotlib; no build step.
"""

from __future__ import annotations

import io
from datetime import datetime
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.dates as mdates  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
from flask import Blueprint, current_app, jsonify, render_template, request  # noqa: E402

from backend.queue import PROJECTS_KEY  # noqa: E402
from backend.status import collect_status  # noqa: E402

bp = Blueprint("dashboard", __name__, template_folder="templates")


class StatusRequestError(ValueError):
    """A request the dashboard cannot answer (no project given and none known); answered with 400."""


def _project_id(app_state: Any) -> int:
    raw = request.args.get("project")
    if raw is not None:
        if not raw.isdigit() or int(raw) <= 0:
            raise StatusRequestError(f"project must be a positive integer, got {raw!r}")
        return int(raw)
    try:
        known = sorted(int(p) for p in app_state.redis.smembers(PROJECTS_KEY))
    except Exception:
        known = []
    if not known:
        raise StatusRequestError("which project? add ?project=<id> (no project has sent webhooks to this backend yet)")
    return known[-1]


def _status() -> dict:
    from connectors.client import connect

    app_state = current_app.extensions["alc"]
    settings = app_state.settings
    project_id = _project_id(app_state)
    target = float(request.args.get("target", 0.95))
    if not 0 < target < 1:
        raise StatusRequestError("target must be between 0 and 1")
    url, key = settings.require_label_studio()
    client = connect(url, key, timeout=settings.label_studio_timeout, retries=2)
    return collect_status(client, project_id, settings, store=app_state.store, redis_conn=app_state.redis, target=target)


def _error(exc: Exception) -> tuple[Any, int]:
    from connectors.errors import ConnectorError, UnknownProject

    if isinstance(exc, StatusRequestError):
        return {"error": str(exc)}, 400
    if isinstance(exc, UnknownProject):
        return {"error": str(exc)}, 404
    if isinstance(exc, ConnectorError):
        return {"error": str(exc)}, 502
    raise exc


@bp.get("/api/status")
def api_status():
    try:
        return jsonify(_status())
    except Exception as exc:
        body, code = _error(exc)
        return jsonify(body), code


@bp.get("/dashboard")
def dashboard():
    try:
        status = _status()
    except Exception as exc:
        body, code = _error(exc)
        return render_template("dashboard_error.html", error=body["error"]), code
    return render_template("dashboard.html", s=status, charts=charts(status))


# --- charts ------------------------------------------------------------------------------------------


def _svg(fig) -> str:
    buffer = io.StringIO()
    fig.savefig(buffer, format="svg", bbox_inches="tight")
    plt.close(fig)
    text = buffer.getvalue()
    return text[text.index("<svg"):]  # drop the XML prolog: the SVG goes inline in the page


def _times(timeline: list[dict]) -> list[datetime]:
    return [datetime.fromisoformat(str(e["time"]).replace("Z", "+00:00")) for e in timeline]


def charts(status: dict) -> dict[str, str]:
    """Inline SVGs: budget burn-down over time, labels corrected vs spend."""
    timeline = [e for e in status.get("timeline", []) if e.get("time")]
    budget = status["budget"]
    out = {}

    fig, ax = plt.subplots(figsize=(5.5, 2.8))
    if timeline:
        times = _times(timeline)
        times = [times[0]] + times  # start from the full budget, just before the first re-annotation
        spent = [0] + [e["spent"] for e in timeline]
        if budget["total"] is not None:
            ax.step(times, [budget["total"] - s for s in spent], where="post")
            ax.axhline(0, color="grey", lw=0.8)
            ax.set_ylabel("re-annotations left")
        else:
            ax.step(times, spent, where="post")
            ax.set_ylabel("re-annotations spent")
        ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M:%S"))
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        fig.autofmt_xdate()
    else:
        ax.text(0.5, 0.5, "no re-annotation yet", ha="center", va="center", transform=ax.transAxes)
    ax.set_title("Budget burn-down")
    out["burndown"] = _svg(fig)

    fig, ax = plt.subplots(figsize=(5.5, 2.8))
    if timeline:
        ax.plot([0] + [e["spent"] for e in timeline], [0] + [e["labels_changed"] for e in timeline], marker=".")
        ax.set_xlabel("re-annotations spent")
        ax.set_ylabel("labels corrected")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    else:
        ax.text(0.5, 0.5, "no re-annotation yet", ha="center", va="center", transform=ax.transAxes)
    ax.set_title("Labels corrected vs spend")
    out["corrected"] = _svg(fig)
    return out
