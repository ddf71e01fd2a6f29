"""Figures of a fact edit (``mechaudit edit --rome``) and the page that shows them beside the edited weights.

An edit is not an audit finding: it describes a what-if copy of the model, not the audited one, so its figures go
on a page of its own written next to the weights (``edited.safetensors`` -> ``edited.html``), and an audit of the
edited weights gives the usual report. Per fact: the causal traces (Meng et al. 2022, Figure 1: the probability
of the true attribute when one layer's clean state is restored at one position in a run with the subject
corrupted; hidden states and MLP outputs, layer x position) and CounterFact's measures before and after.
"""

from __future__ import annotations

from html import escape
from typing import Any

from .figures import FAIL_COLOR, NEUTRAL_COLOR, PASS_COLOR, Figure, render_svg, short_label

MEASURES = (("efficacy", "new_above_true", "edited prompt:\nnew above true"),
            ("generalisation", "new_above_true", "paraphrases:\nnew above true"),
            ("specificity", "kept_above_new", "unrelated prompts:\nkeep their answer"))


def trace_figure(fact: dict, prefix: str) -> Figure | None:
    """The two causal-tracing heatmaps of one fact: restored probability of the true attribute per (layer,
    position), hidden states and MLP outputs, the subject's positions marked and the edited layer framed."""
    trace = fact.get("trace") or {}
    hidden, mlp = trace.get("hidden"), trace.get("mlp")
    if not hidden or not mlp:
        return None
    subject = set(trace.get("subject_positions", []))
    tokens = trace.get("tokens", [])
    labels = [f"{t}*" if i in subject else str(t) for i, t in enumerate(tokens)]
    projections = trace.get("projections", [])
    edited = projections.index(fact["layer"]) if fact.get("layer") in projections else None

    def draw(figure: Any) -> None:
        axes = figure.subplots(1, 2, sharey=True)
        for ax, values, title in ((axes[0], hidden, "hidden state restored"), (axes[1], mlp, "MLP output restored")):
            image = ax.imshow(values, aspect="auto", cmap="Purples", vmin=0, vmax=1, origin="lower")
            ax.set_xticks(range(len(labels)), labels)
            ax.set_yticks(range(len(values)), [str(i) for i in range(len(values))])
            ax.set_xlabel("position (token id; * subject)")
            ax.set_title(title, fontsize=8)
            if edited is not None and ax is axes[1] and trace.get("subject_positions"):
                last = max(trace["subject_positions"])
                ax.add_patch(_frame(last, edited))
        axes[0].set_ylabel("block")
        figure.colorbar(image, ax=list(axes), label="P(true attribute)", shrink=0.9)
        figure.suptitle(f"Causal trace of {fact['prompt']} -> {fact['target_true']}", fontsize=9,
                        fontweight="bold")

    caption = (f"Probability of the true attribute {fact['target_true']} after the prompt when one layer's clean "
               f"state is restored at one position in runs whose subject embeddings are noised: "
               f"{trace.get('clean', 0):.3f} clean, {trace.get('corrupted', 0):.3f} corrupted. Left: block i's "
               f"output (hidden state, {_span(trace.get('blocks', []))}); right: its MLP output projection "
               f"({_span(projections)}). The framed cell is where the edit was written (the subject's last token).")
    height = 1.4 + 0.28 * len(hidden)
    return Figure(f"{prefix}-trace.svg", "Causal trace", caption, render_svg(f"{prefix}-trace", draw, (6.4, height)))


def _span(names: list) -> str:
    return f"{names[0]} to {names[-1]}" if len(names) > 1 else ", ".join(map(str, names))


def _frame(position: int, layer: int) -> Any:
    from matplotlib.patches import Rectangle

    return Rectangle((position - 0.5, layer - 0.5), 1, 1, fill=False, edgecolor=FAIL_COLOR, linewidth=2)


def measures_figure(fact: dict, prefix: str) -> Figure | None:
    """CounterFact's scores of one fact, before (grey) and after (blue) the edit."""
    before, after = fact.get("before") or {}, fact.get("after") or {}
    rows = [(label, before[group][key], after[group][key]) for group, key, label in MEASURES
            if group in before and group in after]
    if not rows:
        return None

    def draw(figure: Any) -> None:
        ax = figure.subplots()
        positions = range(len(rows))
        ax.bar([p - 0.2 for p in positions], [r[1] for r in rows], 0.4, color=NEUTRAL_COLOR, label="before")
        ax.bar([p + 0.2 for p in positions], [r[2] for r in rows], 0.4, color=PASS_COLOR, label="after")
        for p, row in zip(positions, rows):
            ax.text(p + 0.2, row[2] + 0.02, f"{row[2]:.0%}", ha="center", fontsize=7)
        ax.set_xticks(list(positions), [r[0] for r in rows])
        ax.set_ylim(0, 1.3)
        ax.set_yticks([0, 0.25, 0.5, 0.75, 1])
        ax.set_ylabel("share of prompts")
        ax.legend(loc="upper left", frameon=False, ncols=2)
        figure.suptitle(f"Edit {fact['target_true']} -> {fact['target_new']} at "
                        f"{short_label(fact.get('layer', ''), 24)}", fontsize=9, fontweight="bold")

    caption = ("CounterFact's scores before and after the edit: the share of the edited prompt and of its "
               "paraphrases on which the new attribute is more probable than the true one (efficacy, "
               "generalisation), and the share of unrelated prompts that keep their own answer above the new "
               "attribute (specificity).")
    return Figure(f"{prefix}-measures.svg", "Before and after", caption,
                  render_svg(f"{prefix}-measures", draw, (6.4, 2.4)))


def edit_page(model: str, label: str, facts: list[dict], notice: str) -> str:
    """A self-contained HTML page: the edit, and per fact its traces, measures and the numbers behind them."""
    sections = []
    for i, fact in enumerate(facts):
        figures = [f for f in (trace_figure(fact, f"fact{i}"), measures_figure(fact, f"fact{i}")) if f is not None]
        body = "".join(f"<figure>{f.inline}<figcaption>{escape(f.caption)}</figcaption></figure>" for f in figures)
        sections.append(f"<section><h2>Fact {i + 1}: {escape(str(fact['prompt']))} &rarr; {fact['target_new']} "
                        f"(was {fact['target_true']})</h2><p>Edited at <code>{escape(fact['layer'])}</code>.</p>"
                        f"{body}{_table(fact)}</section>")
    return ("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>mechaudit edit: "
            f"{escape(model)}</title><style>{_CSS}</style></head><body><h1>Fact edit of {escape(model)}</h1>"
            f"<p class=\"notice\">{escape(notice)}: {escape(label)}</p>{''.join(sections)}</body></html>\n")


def _table(fact: dict) -> str:
    header = "<tr><th>measure</th><th>prompts</th><th>before</th><th>after</th></tr>"
    rows = []
    for group, values in (fact.get("after") or {}).items():
        for key, value in values.items():
            if key != "prompts":
                rows.append(f"<tr><td>{escape(group)}: {escape(key)}</td><td>{values['prompts']}</td>"
                            f"<td>{fact['before'][group][key]:.4f}</td><td>{value:.4f}</td></tr>")
    return f"<table>{header}{''.join(rows)}</table>"


_CSS = ("body{font-family:sans-serif;max-width:52rem;margin:2rem auto;padding:0 1rem;color:#222}"
        "figure{margin:1rem 0}figcaption{font-size:.85rem;color:#555}svg{max-width:100%;height:auto}"
        "table{border-collapse:collapse;font-size:.85rem}td,th{border:1px solid #ccc;padding:.2rem .5rem;"
        "text-align:right}td:first-child,th:first-child{text-align:left}.notice{font-weight:bold}")
