"""The iteration report: one self-contained HTML file (its figure embedded as PNG) a person reads to judge an
iteration.

    alignloop report 3        # -> workspace/reports/iter-0003.html, also logged to the iteration's MLflow run

Contents: the gate table, the reward / KL / length curves across iterations (the one figure), the label mix per
iteration and this iteration's stage timings (tables), and candidate vs champion completions side by side. Built
from the ledgers and the artifact store only, so it renders the same from any copy of the workspace.
"""

from __future__ import annotations

import base64
import html
import io
from collections import Counter
from pathlib import Path

import pyarrow as pa

from components.artifacts import ArtifactRef, ArtifactStore
from components.gating import outcome_of
from components.workspace import Workspace

CSS = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;vertical-align:top}
th{background:#f3f3f3}.pass{color:#17692b}.fail{color:#b00020;font-weight:bold}.num{text-align:right}
img{max-width:100%;border:1px solid #eee}.promote{color:#17692b}.head{color:#8a6d00}.reject,.discard{color:#b00020}
code{font-size:90%}
.bar{background:#4c72b0;height:10px}"""
PIPELINE = ["sample_prompts", "generate", "label", "train_reward", "train_policy", "evaluate", "gate", "version"]


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    return f'<img alt="figure" src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}">'


def timings_table(timings: dict[str, float]) -> str:
    """Seconds per stage in pipeline order, with an inline bar (HTML, not a figure: exact numbers, no drawing)."""
    stages = sorted(timings, key=lambda s: PIPELINE.index(s) if s in PIPELINE else len(PIPELINE))
    top = max(timings.values(), default=0.0) or 1.0
    rows = "".join(f"<tr><td>{html.escape(s)}</td><td class=num>{timings[s]:.2f}</td><td><div class=bar "
                   f"style='width:{300 * timings[s] / top:.0f}px'></div></td></tr>" for s in stages)
    return f"<table><tr><th>stage</th><th>seconds</th><th></th></tr>{rows}</table>"


def label_mix_table(mix: dict[int, dict[str, int]]) -> str:
    """Pairs kept per label source (columns) per iteration (rows)."""
    sources = sorted({s for counts in mix.values() for s in counts})
    rows = "".join(f"<tr><td>{i}</td>" + "".join(f"<td class=num>{mix[i].get(s, 0)}</td>" for s in sources)
                   + f"<td class=num>{sum(mix[i].values())}</td></tr>" for i in sorted(mix))
    return ("<table><tr><th>iteration</th>" + "".join(f"<th>{html.escape(s)}</th>" for s in sources)
            + f"<th>total</th></tr>{rows}</table>")


def curves_figure(ledgers: list[dict]):
    """Candidate and champion per iteration on the held-out set: gold and proxy reward, KL to reference, length.

    matplotlib's object API, not pyplot (no global figure state, nothing to close), with fixed margins:
    tight_layout measured ~0.17 s per figure, the largest part of the report's cost."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    done = [d for d in ledgers if d.get("status") == "finished"]
    x = [d["iteration"] for d in done]
    fig = Figure(figsize=(17, 3))
    fig.subplots_adjust(left=0.035, right=0.99, bottom=0.17, top=0.88, wspace=0.25)
    axes = fig.subplots(1, 5)
    for ax, (key, title) in zip(axes, (("gold_reward", "gold reward (held-out)"), ("proxy_reward", "proxy reward"),
                                       ("kl", "KL to reference (nats/seq)"), ("mean_tokens", "mean length (tokens)"))):
        for side, style in (("champion", "o-"), ("candidate", "s--")):
            ys = [d["report"][side].get(key) for d in done]
            ax.plot(x, [float("nan") if y is None else y for y in ys], style, label=side)
        for xi, d in zip(x, done):  # promoted iterations marked green, new training heads yellow
            outcome = outcome_of(d["decision"])
            if outcome != "discard":
                ax.axvline(xi, color="#17692b" if outcome == "promote" else "#c9a400", alpha=0.15, lw=6)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("iteration")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[0].legend(fontsize=8)
    _gold_vs_oracle_calls(axes[4], done)
    return fig


def _gold_vs_oracle_calls(ax, done: list[dict]) -> None:
    """Champion gold after each gate (the candidate's if promoted) against cumulative `label/oracle_calls`: what
    the labels bought (benchmarks/continual.py plots the same for its arms)."""
    calls, total, gold = [], 0, []
    for d in done:
        total += d["outputs"]["preferences"].get("meta", {}).get("label", {}).get("label/oracle_calls", 0)
        side = "candidate" if d["decision"]["promote"] else "champion"
        calls.append(total)
        gold.append(d["report"][side].get("gold_reward"))
    ax.plot(calls, [float("nan") if g is None else g for g in gold], "o-")
    ax.set_title("champion gold vs oracle calls", fontsize=10)
    ax.set_xlabel("cumulative oracle calls")


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
    doc = next((d for d in ledgers if d["iteration"] == iteration), None)
    if doc is None or doc.get("status") != "finished":
        raise ValueError(f"iteration {iteration} has no finished ledger (known: {[d['iteration'] for d in ledgers]})")
    dec, rep = doc["decision"], doc["report"]
    verdict = dec.get("outcome") or ("promote" if dec["promote"] else "reject")
    heads = (f" · head v{dec['head_version']} · champion v{dec['champion_version']}"
             if dec.get("head_version") else "")
    reasons = "".join(f"<li>{html.escape(r)}</li>" for r in dec["reasons"] + dec.get("warnings", []))
    parts = [
        f"<h1>{html.escape(title)} — iteration {iteration}</h1>",
        f"<p>Gate: <b class={verdict}>{verdict.upper()}</b> (policy v{dec.get('version', '?')}){heads} · config "
        f"<code>{doc['config_hash']}</code> · data rev <code>{str(doc.get('data_rev', ''))[:12]}</code></p>",
        f"<ul>{reasons}</ul>" if reasons else "", "<h2>Gate</h2>", _gate_table(dec),
        "<h2>Across iterations</h2>", _png(curves_figure(ledgers)),
        "<h3>Label mix (pairs kept per label source)</h3>" + label_mix_table(label_mix) if label_mix else "",
        "<h2>Stage timings (this iteration)</h2>", timings_table(doc["timings"]),
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
    samples = store.read_table(store.ref("eval_samples", doc["report"]["eval_samples"])) if doc and \
        "eval_samples" in doc["report"] else None
    out = out or ws.report(iteration)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render_html(iteration, ledgers, mix, samples, title=title))
    return out
