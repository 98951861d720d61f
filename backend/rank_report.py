"""The HTML report of `alc rank --report`: one self-contained file (images inline as base64 PNG).

It shows what the paper's Fig. 4 shows: the items to re-check first, each with its current label, the
model's suggestion, the cross-entropy of the label under the out-of-fold posteriors (noisiness: how wrong
the label looks) and the posteriors' entropy (ambiguity: how unclear the item is), plus a scatter of the
two over every item; and the estimated number of wrong labels, which is model-based (confident learning
on the same posteriors) and only as good as the model.
"""

from __future__ import annotations

import base64
import html
import io
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

THUMB = 96


def write_report(path: Path, dataset: Any, kept: list[int], ranking: Any, probs: np.ndarray, *, images: Path | None,
                 selector: str, top: int) -> None:
    from scoring.noise import model_noise_estimate

    names = dataset.class_names
    labels = ranking.counts.argmax(axis=1)
    try:
        noise = model_noise_estimate(labels, probs, rounds=100)
        noise_line = (f"About <b>{noise['wrong']}</b> of {noise['tasks']} labels look wrong (90% interval "
                      f"{noise['wrong_low']}&ndash;{noise['wrong_high']}). This is a <b>model-based</b> estimate: "
                      f"confident learning (cleanlab) on the model's out-of-fold posteriors, so it is only as good as "
                      f"the model ({html.escape(selector)}); the interval covers the resampling of the items, not "
                      f"the model's own errors.")
    except (ValueError, IndexError) as exc:
        noise_line = f"No estimate of the wrong labels: {html.escape(str(exc))}"
    order = np.argsort(-ranking.priority, kind="stable")[:top]
    cards = []
    for rank_no, r in enumerate(order, 1):
        item = kept[r]
        shown = _thumbnail(images / dataset.ids[item]) if images is not None else _snippet(dataset, item)
        label, suggested = names[int(labels[r])], names[int(ranking.predicted[r])]
        cards.append(
            f'<div class="card"><div class="pic">{shown}</div><div class="meta">#{rank_no} '
            f'<code>{html.escape(dataset.ids[item][:60])}</code><br>label <b>{html.escape(label)}</b>'
            f' &rarr; model <b>{html.escape(suggested)}</b><br>CE {ranking.noisiness[r]:.2f} &middot; '
            f'ambiguity {ranking.ambiguity[r]:.2f} &middot; p(label) {ranking.p_label[r]:.2f}</div></div>')
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>alc rank report</title><style>
body{{font-family:system-ui,sans-serif;margin:24px;max-width:1200px}} .grid{{display:flex;flex-wrap:wrap;gap:10px}}
.card{{width:260px;border:1px solid #ddd;border-radius:6px;padding:8px;font-size:13px}}
.pic img{{width:{THUMB}px;height:{THUMB}px;image-rendering:pixelated}} .snip{{font-size:12px;color:#333;max-height:9em;overflow:hidden}}
</style></head><body>
<h1>Labels to re-check first</h1>
<p>{len(kept)} items, {len(names)} classes, ranked by <code>{html.escape(selector)}</code> with out-of-fold posteriors
(each item graded by a model that never saw its label); {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC.</p>
<p>{noise_line}</p>
<h2>Noisiness against ambiguity</h2>
<p>Cross-entropy of the current label (noisiness) against the entropy of the posteriors (ambiguity) for every item;
the {len(order)} highest priorities in red: a high CE with a low ambiguity is a clear item with a label the model
contradicts.</p>
<img alt="CE against ambiguity" src="data:image/png;base64,{_scatter(ranking, order)}">
<h2>The {len(order)} items with the highest priority</h2>
<div class="grid">{''.join(cards)}</div>
</body></html>"""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")


def _thumbnail(file: Path) -> str:
    from PIL import Image

    try:
        with Image.open(file) as img:
            img = img.convert("RGB")
            img.thumbnail((THUMB * 2, THUMB * 2))
            buffer = io.BytesIO()
            img.save(buffer, format="PNG")
    except Exception as exc:  # the item was read for ranking; a report without its picture is still a report
        return html.escape(f"({type(exc).__name__})")
    return f'<img alt="" src="data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()}">'


def _snippet(dataset: Any, item: int) -> str:
    from backend.commands.rank import SNIPPET_CHARS

    text = dataset.texts[item] if dataset.texts is not None else dataset.ids[item]
    short = text[:SNIPPET_CHARS] + ("..." if len(text) > SNIPPET_CHARS else "")
    return f'<div class="snip">{html.escape(short)}</div>'


def _scatter(ranking: Any, order: np.ndarray) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    ax.scatter(ranking.ambiguity, ranking.noisiness, s=6, c="#999999", label="all items")
    ax.scatter(ranking.ambiguity[order], ranking.noisiness[order], s=12, c="#d62728", label="highest priority")
    ax.set_xlabel("ambiguity: H(p) / log C")
    ax.set_ylabel("noisiness: CE(label, p) / log C")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode()
