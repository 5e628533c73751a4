"""``report.html`` of an attribution report: summary, circuit, the two tables, each method's figure."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
import plotly.graph_objects as go

from arithinterp.methods.circuits import circuit_figure
from arithinterp.reports.html import ReportSection, render_html_report
from arithinterp.results.io import atomic_write_text

if TYPE_CHECKING:
    from arithinterp.reports.build import AttributionReport

__all__ = ["render_report", "report_sections", "write_report_html"]

#: Method results shown as figures, in page order, with their section titles.
_FIGURES = {
    "patching_heads": "Activation patching: heads",
    "patching_neurons": "Activation patching: neurons",
    "attribution_heads": "Attribution patching (AtP): heads",
    "mediation": "Causal mediation (Stolfo et al.): heads",
    "dla": "Direct logit attribution",
    "probes": "Linear probes",
    "key_frequencies": "Fourier key frequencies: neurons",
    "key_frequencies_heads": "Fourier key frequencies: heads",
    "heuristics": "Neuron heuristics (Nikankin et al.)",
    "heuristic_knockout": "Heuristic knockout",
    "logit_lens": "Logit lens",
}
NEURON_ROWS = 1000


def _summary_text(report: AttributionReport) -> str:
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
            f"Circuit ({c.get('metric')} faithfulness, target {c.get('target')}): {len(c['components'])} "
            f"components, faithfulness {'undefined' if f is None else f'{f:.3f}'}"
            f"{'' if c.get('reached') else ' (target not reached)'}: {', '.join(c['components'])}."
        )
    lines.append(
        "Rank: 1 = largest |exact patching effect| (else |AtP|). agree_* flags: the method puts the "
        "component in its top-k exactly when patching does (AtP: with the same sign). Filter a table "
        "with terms (all must match), col=value, col>x or col<x; click a header to sort."
    )
    return "\n\n".join(lines)


def _skipped_table(report: AttributionReport) -> pd.DataFrame:
    s = report.summary
    rows = [{"method": m, "status": "ran", "seconds": s.get("timings_s", {}).get(m), "reason": ""}
            for m in s.get("methods", [])]
    rows += [{"method": m, "status": "skipped", "seconds": s.get("timings_s", {}).get(m), "reason": why}
             for m, why in s.get("skipped", {}).items()]
    frame = pd.DataFrame(rows, columns=["method", "status", "seconds", "reason"])
    frame.attrs["title"] = "Methods"
    return frame


def _effect_figure(frame: pd.DataFrame, what: str, k: int = 20) -> go.Figure:
    top = frame.head(k)
    fig = go.Figure()
    if top["patch_effect"].notna().any():
        fig.add_trace(go.Bar(
            x=top["component"], y=top["patch_effect"], name="exact patching",
            error_y={"type": "data", "symmetric": False,
                     "array": (top["patch_ci_high"] - top["patch_effect"]).tolist(),
                     "arrayminus": (top["patch_effect"] - top["patch_ci_low"]).tolist()},
        ))
    for col, name in (("atp", "AtP"), ("mediation_ie", "mediation IE"), ("dla", "DLA")):
        if top[col].notna().any():
            fig.add_trace(go.Scatter(x=top["component"], y=top[col], mode="markers", name=name,
                                     marker={"size": 9}))
    fig.update_layout(title=f"top {len(top)} {what} by rank: effect of each method",
                      xaxis_title="component", yaxis_title="effect (normalised patching scale; IE, DLA raw)")
    return fig


def _table_for_page(frame: pd.DataFrame, title: str) -> pd.DataFrame:
    out = frame.copy()
    for col in out.columns:
        if out[col].dtype == object:
            out[col] = out[col].map(lambda v: "" if v is None else v)
    out.attrs["title"] = title
    return out


def _head_frequency_figure(result) -> go.Figure:
    v = result.values.transpose("layer", "head")
    freq = result.extras["key_freq"].transpose("layer", "head").values
    fig = go.Figure(go.Heatmap(
        z=v.values, x=[f"H{h}" for h in v.coords["head"].values], y=[f"L{la}" for la in v.coords["layer"].values],
        text=[[f"k={k}" for k in row] for row in freq], texttemplate="%{text}", zmin=0, zmax=1,
        colorscale="Viridis", colorbar={"title": "explained"},
        hovertemplate="%{y}%{x}<br>%{text}<br>explained %{z:.3f}<extra></extra>",
    ))
    fig.update_layout(title="heads: share of the write's variance in the best frequency's 2D block",
                      yaxis={"autorange": "reversed"})
    return fig


def report_sections(report: AttributionReport) -> list[ReportSection]:
    """The page's sections, in order."""
    sections = [ReportSection("Summary", tables=[_skipped_table(report)], text=_summary_text(report))]
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
        "Head table", figures=[_effect_figure(report.heads, "heads")],
        tables=[_table_for_page(report.heads, f"{len(report.heads)} attention heads")],
        interactive=True, max_rows=len(report.heads),
    ))
    n = len(report.neurons)
    sections.append(ReportSection(
        "Neuron table", figures=[_effect_figure(report.neurons, "neurons")],
        tables=[_table_for_page(report.neurons, f"{n} MLP neurons (of {report.summary.get('n_neurons', n)})")],
        interactive=True, max_rows=NEURON_ROWS,
    ))
    for name, title in _FIGURES.items():
        result = report.results.get(name)
        if result is not None:
            fig = _head_frequency_figure(result) if name == "key_frequencies_heads" else result.plot()
            sections.append(ReportSection(title, figures=[fig]))
    return sections


def render_report(report: AttributionReport) -> str:
    """The report page as a string."""
    return render_html_report(title=f"Attribution report: {report.summary.get('model')}",
                              sections=report_sections(report))


def write_report_html(report: AttributionReport, path: str | os.PathLike[str]) -> Path:
    """Write ``report.html`` atomically."""
    return atomic_write_text(path, render_report(report))
