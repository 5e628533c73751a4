"""``report.html`` of an attribution report: summary, circuit, the two tables, each method's figure."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pandas as pd
import plotly.graph_objects as go

from arithinterp.methods.circuits import circuit_figure
from arithinterp.methods.registry import methods
from arithinterp.reports.html import ReportSection, render_html_report
from arithinterp.reports.inputs import report_methods
from arithinterp.results.io import atomic_write_text

__all__ = ["EFFECT_PANELS", "effect_figure", "figure_titles", "render_report", "report_sections", "write_report_html"]

#: Neuron rows written into the page, and rows shown per page of its table.
NEURON_ROWS = 1000
NEURON_PAGE = 50

# ``report`` below is an :class:`~arithinterp.reports.report.AttributionReport` (not imported:
# the report imports this module to render itself).


def figure_titles() -> dict[str, str]:
    """Method results shown as figures, in page order, with their section titles (the registered
    methods' report views)."""
    registry = methods()
    return {name: title for method in report_methods() for name, title in registry[method].report.figures.items()}


def _summary_text(report: Any) -> str:
    s = report.summary
    task = s.get("task", {})
    lines = [
        f"Model {s.get('model')}; task {task.get('operation')} "
        f"({task.get('format')} format), {s.get('n_prompts')} prompts, {s.get('n_pairs')} "
        f"'{s.get('pairs')}' counterfactual pairs, {s.get('answer')}-token answers, seed {s.get('seed')}.",
        f"Methods run: {', '.join(s.get('methods', [])) or 'none'}.",
    ]
    acc = s.get("accuracy")
    if acc is not None:
        lines.append(
            f"The model answers {acc:.1%} of these prompts exactly (every answer token, teacher-forced)."
            + ("" if acc >= 0.5 else
               " Low accuracy: the effects and the circuit's faithfulness below are relative to the "
               "model's own preference for the clean answer over the corrupt one (logit difference), "
               "so they explain what the model does, not how it would compute the right answer.")
        )
    c = s.get("circuit")
    if c:
        f = c.get("faithfulness")
        lines.append(
            f"Circuit ({c.get('metric')} faithfulness, {c.get('ablation', 'mean')} ablation, target "
            f"{c.get('target')}): {len(c['components'])} components, faithfulness "
            f"{'undefined' if f is None else f'{f:.3f}'}"
            f"{'' if c.get('reached') else ' (target not reached)'}: {', '.join(c['components'])}."
            + (f" MIB scores of the component ranking: CPR {c['cpr']:.3f} (area under the faithfulness curve, "
               f"higher is better), CMD {c['cmd']:.3f} (area between it and 1, lower is better)."
               if c.get("cpr") is not None and c.get("cmd") is not None else "")
            + (f" Note: {c['note']}." if c.get("note") else "")
        )
    if c:
        lines.append(
            f"The circuit is made of {c.get('granularity', 'components')}. "
            + ("Neurons are not marked in_circuit: a whole MLP in the circuit says nothing about "
               "which of its neurons matter (see patch_effect)." if "neurons" not in str(c.get("granularity"))
               else "Neurons in the circuit are marked in_circuit."))
    lines.append(
        "Each method is drawn on its own scale in the effect charts. Mediation: mediation_ie is Stolfo "
        "et al.'s ratio, unbounded on a confident model; mediation_pd is its probability-difference "
        "form in [-1, 1]; ie_unbounded marks |IE| above the sanity bound.")
    vs = s.get("attribution_vs_exact")
    if vs:
        lines.append(attribution_text(vs))
    lines.append(
        "Rank: 1 = largest |exact patching effect| (else |AtP|). agree_* flags: the method puts the "
        "component in its top-k exactly when patching does (AtP: with the same sign). Filter a table "
        "with terms (all must match), col=value, col>x or col<x; click a header to sort."
    )
    return "\n\n".join(lines)


def attribution_text(vs: dict) -> str:
    """Which to trust where attribution and exact patching disagree, with how well they agree here."""
    def num(x: Any) -> str:
        return "undefined" if x is None or x != x else f"{x:.2f}"

    parts = [f"{table}: Spearman {num(c.get('spearman'))}, Pearson {num(c.get('pearson'))}"
             + (f", top-{c['k']} overlap {num(c.get('top_k_overlap'))}" if c.get("k", 0) < c.get("n_cells", 0) else "")
             for table, c in vs.items() if isinstance(c, dict)]
    weak = [table for table, c in vs.items() if isinstance(c, dict) and not (c.get("spearman") or 0) >= 0.9]
    return (f"Attribution (atp column: {vs.get('method')}) against exact patching on these pairs: "
            f"{'; '.join(parts)}. Exact patching is the measurement and attribution its estimate: where they "
            "disagree (agree_atp false), trust patch_effect."
            + (f" Here the estimate does not rank the {' or '.join(weak)} reliably (Spearman below 0.9); read "
               "atp as a screen, not a ranking." if weak else ""))


def _skipped_table(report: Any) -> pd.DataFrame:
    s = report.summary
    rows = [{"method": m, "status": "ran", "seconds": s.get("timings_s", {}).get(m), "reason": ""}
            for m in s.get("methods", [])]
    rows += [{"method": m, "status": "skipped", "seconds": s.get("timings_s", {}).get(m), "reason": why}
             for m, why in s.get("skipped", {}).items()]
    frame = pd.DataFrame(rows, columns=["method", "status", "seconds", "reason"])
    frame.attrs["title"] = "Methods"
    return frame


#: The methods of the effect chart, each on its own y axis: ``column -> (name, what its axis measures)``.
EFFECT_PANELS = {
    "patch_effect": ("exact patching", "normalised: 1 = the whole clean-vs-corrupt effect"),
    "atp": ("AtP", "normalised like patching (first-order estimate)"),
    "mediation_pd": ("mediation, probability difference", "½[ΔP(r) + ΔP(r')], bounded in [-1, 1]"),
    "mediation_ie": ("mediation IE (Stolfo's ratio)", "unbounded ratio; red: |IE| > sanity bound"),
    "dla": ("DLA", "direct logit-difference attribution, summed over answer tokens"),
}


def effect_figure(frame: pd.DataFrame, what: str, k: int = 20) -> go.Figure:
    """The top ``k`` components by rank, one row per method, each on its own y axis (the methods'
    scales differ by orders of magnitude: one axis hides all but the largest)."""
    from plotly.subplots import make_subplots

    top = frame.head(k)
    shown = [c for c in EFFECT_PANELS if c in top and pd.to_numeric(top[c], errors="coerce").notna().any()]
    if not shown:
        return go.Figure(layout={"title": f"top {len(top)} {what}: no method effects"})
    titles = [f"{EFFECT_PANELS[c][0]}: {EFFECT_PANELS[c][1]}" for c in shown]
    fig = make_subplots(rows=len(shown), cols=1, shared_xaxes=True, subplot_titles=titles, vertical_spacing=0.08)
    x = top["component"].astype(str).tolist()
    for row, col in enumerate(shown, start=1):
        y = pd.to_numeric(top[col], errors="coerce")
        bar: dict = {"x": x, "y": y.tolist(), "name": EFFECT_PANELS[col][0]}
        if col == "patch_effect" and {"patch_ci_low", "patch_ci_high"} <= set(top):
            bar["error_y"] = {"type": "data", "symmetric": False,
                              "array": (top["patch_ci_high"] - top["patch_effect"]).tolist(),
                              "arrayminus": (top["patch_effect"] - top["patch_ci_low"]).tolist()}
        if col == "mediation_ie" and "ie_unbounded" in top:
            flagged = top["ie_unbounded"].map(lambda v: bool(v) if v is not None else False).tolist()
            bar["marker"] = {"color": ["#d62728" if f else "#1f77b4" for f in flagged]}
            bar["text"] = ["unbounded" if f else "" for f in flagged]
        fig.add_trace(go.Bar(**bar), row=row, col=1)
        fig.update_yaxes(title_text=col, row=row, col=1)
    fig.update_layout(title=f"top {len(top)} {what} by rank: each method on its own scale", showlegend=False,
                      height=max(360, 200 * len(shown)))
    fig.update_annotations(font_size=12)
    return fig


def _table_for_page(frame: pd.DataFrame, title: str) -> pd.DataFrame:
    out = frame.copy()
    for col in out.columns:
        if out[col].dtype == object:
            out[col] = out[col].map(lambda v: "" if v is None else v)
    out.attrs["title"] = title
    return out


def report_sections(report: Any) -> list[ReportSection]:
    """The page's sections, in order."""
    sections = []
    warnings = report.summary.get("warnings") or []
    if warnings:  # first, so a model that cannot read the prompts is the first thing one reads
        sections.append(ReportSection("Warning: the model is at chance level on these prompts",
                                      text="\n\n".join(warnings)))
    sections.append(ReportSection("Summary", tables=[_skipped_table(report)], text=_summary_text(report)))
    circuit = report.circuit
    if circuit is not None:
        table = circuit.to_frame()
        table.attrs["title"] = "Components in growth order (faithfulness of the circuit up to each)"
        sections.append(ReportSection(
            "Circuit",
            figures=[circuit_figure(circuit, edges=report.results.get("circuit_edges")), circuit.plot()],
            tables=[table],
            text=("Layers left to right (attention, then MLP). Edge widths and labels are edge "
                  "attribution (EAP) scores when available."),
            max_rows=60,
        ))
    sections.append(ReportSection(
        "Head table", figures=[effect_figure(report.heads, "heads")],
        tables=[_table_for_page(report.heads, f"{len(report.heads)} attention heads")],
        interactive=True, max_rows=len(report.heads),
    ))
    n = len(report.neurons)
    sections.append(ReportSection(
        "Neuron table", figures=[effect_figure(report.neurons, "neurons")],
        tables=[_table_for_page(report.neurons, f"{n} MLP neurons (of {report.summary.get('n_neurons', n)})")],
        interactive=True, max_rows=NEURON_ROWS, page_size=NEURON_PAGE,
    ))
    for name, title in figure_titles().items():
        result = report.results.get(name)
        if result is not None:
            sections.append(ReportSection(title, figures=[result.plot()]))
    return sections


def render_report(report: Any, *, plotly_js: str | None = None) -> str:
    """The report page as a string (``plotly_js``: see :func:`~arithinterp.reports.html.render_html_report`)."""
    return render_html_report(title=f"Attribution report: {report.summary.get('model')}",
                              sections=report_sections(report), plotly_js=plotly_js)


def write_report_html(report: Any, path: str | os.PathLike[str]) -> Path:
    """Write ``report.html`` atomically, plotly.js inlined (one self-contained file)."""
    return atomic_write_text(path, render_report(report))
