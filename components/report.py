"""The iteration report: one self-contained HTML file (figures embedded as PNG) a person reads to judge an iteration.

    alignloop report 3        # -> workspace/reports/iter-0003.html, also logged to the iteration's MLflow run

Contents: the gate table, stage timings, the label mix and reward / KL / length curves across iterations, and
candidate vs champion completions side by side. Built from the ledgers and the artifact store only, so it
renders the same from any copy of the workspace.
"""

from __future__ import annotations

import base64
import html
import io
from collections import Counter
from pathlib import Path

import pyarrow as pa

from components.artifacts import ArtifactRef, ArtifactStore
from components.workspace import Workspace

CSS = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;vertical-align:top}
th{background:#f3f3f3}.pass{color:#17692b}.fail{color:#b00020;font-weight:bold}.num{text-align:right}
img{max-width:100%;border:1px solid #eee}.promote{color:#17692b}.reject{color:#b00020}code{font-size:90%}"""
PIPELINE = ["sample_prompts", "generate", "label", "train_reward", "train_policy", "evaluate", "gate", "version"]


def _png(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    # tight_layout, not savefig(bbox_inches="tight"), which draws the figure twice (~0.5 s per report)
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return f'<img alt="figure" src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}">'


def timings_figure(timings: dict[str, float]):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 2.8))
    # pipeline order (the ledger stores them sorted by name)
    stages = sorted(timings, key=lambda s: PIPELINE.index(s) if s in PIPELINE else len(PIPELINE))
    ax.barh(stages[::-1], [timings[s] for s in stages][::-1], color="#4c72b0")
    ax.set_xlabel("seconds")
    ax.set_title("stage timings (this iteration)")
    return fig


def label_mix_figure(mix: dict[int, dict[str, int]]):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 2.8))
    iters = sorted(mix)
    sources = sorted({s for counts in mix.values() for s in counts})
    bottom = [0] * len(iters)
    for src in sources:
        heights = [mix[i].get(src, 0) for i in iters]
        ax.bar([str(i) for i in iters], heights, bottom=bottom, label=src)
        bottom = [b + h for b, h in zip(bottom, heights)]
    ax.set_xlabel("iteration")
    ax.set_ylabel("preference pairs")
    ax.set_title("label mix (pairs kept per label source)")
    ax.legend(fontsize=8)
    return fig


def curves_figure(ledgers: list[dict]):
    """Candidate and champion per iteration on the held-out set: gold and proxy reward, KL to reference, length."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    done = [d for d in ledgers if d.get("status") == "finished"]
    x = [d["iteration"] for d in done]
    fig, axes = plt.subplots(1, 4, figsize=(14, 3))
    for ax, (key, title) in zip(axes, (("gold_reward", "gold reward (held-out)"), ("proxy_reward", "proxy reward"),
                                       ("kl", "KL to reference (nats/seq)"), ("mean_tokens", "mean length (tokens)"))):
        for side, style in (("champion", "o-"), ("candidate", "s--")):
            ys = [d["report"][side].get(key) for d in done]
            ax.plot(x, [float("nan") if y is None else y for y in ys], style, label=side)
        for xi, d in zip(x, done):  # promoted iterations marked
            if d["decision"]["promote"]:
                ax.axvline(xi, color="#17692b", alpha=0.15, lw=6)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("iteration")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[0].legend(fontsize=8)
    return fig


def _gate_table(decision: dict) -> str:
    rows = "".join(
        f"<tr><td>{html.escape(c['name'])}</td><td><code>{html.escape(c['metric'])}</code></td>"
        f"<td class=num>{c['value']:.4g}</td><td>{html.escape(c['bound'])}</td>"
        f"<td class={'pass' if c['passed'] else 'fail'}>{'pass' if c['passed'] else 'FAIL'}</td>"
        f"<td>{'blocking' if c['blocking'] else 'advisory'}</td></tr>" for c in decision["checks"])
    return ("<table><tr><th>check</th><th>metric</th><th>value</th><th>bound</th><th>verdict</th><th>kind</th></tr>"
            f"{rows}</table>")


def _samples_table(samples: pa.Table, n_prompts: int) -> str:
    """First sample of each of the first `n_prompts` prompts, candidate next to champion."""
    by = {}
    for r in samples.to_pylist():
        by.setdefault(r["prompt_id"], {}).setdefault(r["model"], r)
    rows = []
    for side in list(by.values())[:n_prompts]:
        cells = "".join(f"<td>{html.escape(side[m]['completion'])}<br><small>proxy {side[m]['proxy_reward']:+.2f}"
                        f" · gold {side[m]['gold_reward']:+.2f} · {side[m]['num_tokens']} tok</small></td>"
                        for m in ("candidate", "champion") if m in side)
        prompt = next(iter(side.values()))["prompt"]
        rows.append(f"<tr><td><code>{html.escape(prompt)}</code></td>{cells}</tr>")
    return "<table><tr><th>prompt</th><th>candidate</th><th>champion</th></tr>" + "".join(rows) + "</table>"


def render_html(iteration: int, ledgers: list[dict], label_mix: dict[int, dict[str, int]], samples: pa.Table | None,
                *, title: str = "alignloop", n_samples: int = 12) -> str:
    """The report of `iteration` (its ledger must be finished) in the context of all `ledgers`."""
    import matplotlib

    matplotlib.use("Agg")  # files only, never a display
    doc = next((d for d in ledgers if d["iteration"] == iteration), None)
    if doc is None or doc.get("status") != "finished":
        raise ValueError(f"iteration {iteration} has no finished ledger (known: {[d['iteration'] for d in ledgers]})")
    dec, rep = doc["decision"], doc["report"]
    verdict = "promote" if dec["promote"] else "reject"
    reasons = "".join(f"<li>{html.escape(r)}</li>" for r in dec["reasons"] + dec.get("warnings", []))
    parts = [
        f"<h1>{html.escape(title)} — iteration {iteration}</h1>",
        f"<p>Gate: <b class={verdict}>{verdict.upper()}</b> (policy v{dec.get('version', '?')}) · config "
        f"<code>{doc['config_hash']}</code> · data rev <code>{str(doc.get('data_rev', ''))[:12]}</code></p>",
        f"<ul>{reasons}</ul>" if reasons else "", "<h2>Gate</h2>", _gate_table(dec),
        "<h2>Across iterations</h2>", _png(curves_figure(ledgers)),
        _png(label_mix_figure(label_mix)) if label_mix else "",
        "<h2>Stage timings</h2>", _png(timings_figure(doc["timings"])),
        "<h2>Held-out summary</h2><table><tr><th></th>"
        + "".join(f"<th>{k}</th>" for k in rep["candidate"]) + "</tr>"
        + "".join(f"<tr><td>{side}</td>" + "".join(f"<td class=num>{'-' if v is None else f'{v:.3f}'}</td>"
                                                    for v in rep[side].values()) + "</tr>"
                  for side in ("candidate", "champion")) + "</table>",
    ]
    if samples is not None:
        parts += ["<h2>Samples: candidate vs champion</h2>", _samples_table(samples, n_samples)]
    return (f"<!doctype html><html><head><meta charset=utf-8><title>{html.escape(title)} iteration {iteration}"
            f"</title><style>{CSS}</style></head><body>{''.join(parts)}</body></html>")


def write_report(ws: Workspace, iteration: int, title: str, out: Path | None = None) -> Path:
    """Gather the iteration's data from `ws` (ledgers, preferences, eval samples) and write the HTML report."""
    store = ArtifactStore(ws.store)
    ledgers = ws.ledgers()
    mix = {}
    for d in ledgers:
        if d.get("status") == "finished":
            prefs = store.read_table(ArtifactRef(**d["outputs"]["preferences"]))
            mix[d["iteration"]] = dict(Counter(prefs["label_source"].to_pylist()))
    doc = next((d for d in ledgers if d["iteration"] == iteration and d.get("status") == "finished"), None)
    samples = store.read_table(store.ref("eval_samples", doc["report"]["samples"])) if doc and \
        "samples" in doc["report"] else None
    out = out or ws.root / "reports" / f"iter-{iteration:04d}.html"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render_html(iteration, ledgers, mix, samples, title=title))
    return out
