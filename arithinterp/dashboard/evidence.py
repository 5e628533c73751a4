"""What a report knows about one component, as plain data (what the detail panel shows).

Each reader returns an :class:`Evidence`: ``data`` when the report holds
something for that component, otherwise ``reason`` says why not (no such
result in this run, or the result does not cover this component). The
figures in :mod:`arithinterp.dashboard.figures` are drawn from these.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from arithinterp.dashboard.data import Component, Report, component_site, json_row, parse_component
from arithinterp.methods.registry import methods
from arithinterp.models.site import Site

__all__ = [
    "Evidence",
    "component_detail",
    "fourier_evidence",
    "lens_trajectory",
    "neuron_map",
    "panel_evidence",
    "probe_evidence",
    "probe_sites",
    "top_prompts",
]


@dataclass(frozen=True)
class Evidence:
    """One section of the detail panel: ``data`` or, when absent, the ``reason``."""

    data: Any = None
    reason: str | None = None

    @property
    def available(self) -> bool:
        return self.reason is None

    @classmethod
    def missing(cls, reason: str) -> Evidence:
        return cls(reason=reason)


def _no_result(name: str) -> Evidence:
    return Evidence.missing(f"this run has no {name} result")


def _floats(values: Any) -> list[float | None]:
    return [None if not np.isfinite(v) else float(v) for v in np.asarray(values, dtype=float).ravel()]


def lens_trajectory(report: Report, comp: Component) -> Evidence:
    """Mean logit-lens probability of each answer token by depth, with the depths just
    before and after the component's layer (the step it writes into)."""
    lens = report.result("logit_lens")
    if lens is None:
        return _no_result("logit-lens")
    v = lens.values
    if not {"layer", "pos"} <= set(v.dims):
        return Evidence.missing("the logit-lens result has no (layer, pos) axes")
    depths = v.sizes["layer"]
    if comp.layer + 1 >= depths:
        return Evidence.missing(f"layer {comp.layer} is outside the lens (depths 0..{depths - 1})")
    mean = v.mean("prompt") if "prompt" in v.dims else v
    is_answer = np.asarray(v.coords["is_answer"].values) if "is_answer" in v.coords else None
    positions = np.flatnonzero(is_answer) if is_answer is not None and is_answer.any() else [v.sizes["pos"] - 1]
    tokens = v.coords["next_token"].values if "next_token" in v.coords else v.coords["pos"].values
    labels = (v.coords["layer_label"].values if "layer_label" in v.coords else v.coords["layer"].values)
    series = [
        {"pos": int(v.coords["pos"].values[p]), "token": str(tokens[p]),
         "prob": _floats(mean.isel(pos=int(p)).transpose("layer").values)}
        for p in positions
    ]
    return Evidence({"depth_labels": [str(x) for x in labels], "series": series,
                     "before": comp.layer, "after": comp.layer + 1})


def probe_sites(comp: Component, labels: list[str]) -> dict[str, str]:
    """The residual sites a component reads (``in``) and writes (``out``), as probe layer labels:
    a head between ``L{l} pre`` and ``L{l} mid``; a neuron or MLP between ``L{l} mid`` and
    ``L{l+1} pre`` (``L{l} post`` after the last layer)."""
    layer = comp.layer
    if comp.kind == "head":
        wanted = {"in": [Site("resid_pre", layer).label], "out": [Site("resid_mid", layer).label]}
    else:
        wanted = {"in": [Site("resid_mid", layer).label],
                  "out": [Site("resid_pre", layer + 1).label, Site("resid_post", layer).label]}
    out = {}
    for role, names in wanted.items():
        hit = next((n for n in names if n in labels), None)
        if hit is not None:
            out[role] = hit
    return out


def probe_evidence(report: Report, comp: Component) -> Evidence:
    """For each probe target, the held-out score at the residual sites just before and
    after the component (best position), with its CI, control and selectivity. Positions
    whose teacher-forced input already shows the target's digit are masked (never the best
    position; listed in ``masked``), as in the report's tables and figure."""
    probes = report.result("probes")
    if probes is None:
        return _no_result("probe")
    v = probes.values
    if not {"target", "site", "pos"} <= set(v.dims):
        return Evidence.missing("the probe result has no labelled (target, site, pos) axes")
    labels = [str(x) for x in v.coords["site"].values]
    sites = probe_sites(comp, labels)
    if not sites:
        return Evidence.missing(f"no probes at layer {comp.layer} (probed: {', '.join(labels)})")
    tokens = v.coords["next_token"].values if "next_token" in v.coords else v.coords["pos"].values
    masked = probes.masked() if hasattr(probes, "masked") else v.isnull() & False
    rows = []
    for t, target in enumerate(v.coords["target"].values):
        for role, site in sites.items():
            hidden = masked.isel(target=t).sel(site=site).transpose("pos").values.astype(bool)
            # A masked position reads the teacher-forced input, not the model: never the best.
            scores = np.where(hidden, np.nan, v.isel(target=t).sel(site=site).transpose("pos").values.astype(float))
            shown = ", ".join(str(int(x)) for x in v.coords["pos"].values[hidden])
            if not np.isfinite(scores).any():
                rows.append(json_row({"target": str(target), "site": site, "role": role, "pos": None,
                                      "token": "", "score": None, "masked": shown or "none"}))
                continue
            p = int(np.nanargmax(scores))
            row = {"target": str(target), "site": site, "role": role,
                   "pos": int(v.coords["pos"].values[p]), "token": str(tokens[p]),
                   "score": float(scores[p]), "masked": shown or "none"}
            for name in ("ci_low", "ci_high", "control", "selectivity"):
                if name in probes.extras:
                    row[name] = float(probes.extras[name].isel(target=t, pos=p).sel(site=site).values)
            rows.append(json_row(row))
    if not rows:
        return Evidence.missing(f"the probes at {', '.join(sites.values())} have no scores")
    return Evidence({"sites": sites, "rows": rows})


def _fourier_results(report: Report, comp: Component) -> list:
    """The key-frequency results that may cover ``comp``: per-layer neuron results
    (``key_frequencies_L{layer}``, then ``key_frequencies``) or the head result."""
    names = (["key_frequencies_heads", "key_frequencies"] if comp.kind == "head"
             else [f"key_frequencies_L{comp.layer}", "key_frequencies"])
    return [r for r in (report.result(n) for n in names if n in report.result_names) if r is not None]


def _unit_index(res, comp: Component) -> dict | str:
    """The ``sel`` indexers of ``comp`` in a key-frequency result, or why it is not there."""
    v = res.values
    unit = {"head": "head", "neuron": "neuron"}.get(comp.kind)
    if unit is None:
        return "key frequencies are measured for heads and MLP neurons, not whole MLPs"
    if unit not in v.dims:
        return f"this run's key frequencies do not cover {unit}s"
    layer = res.meta.options.get("layer")
    if "layer" not in v.dims and layer is not None and int(layer) != comp.layer:
        return f"key frequencies were measured on layer {layer}'s {unit}s"
    pick = {unit: comp.index}
    if "layer" in v.dims:
        pick["layer"] = comp.layer
    for dim, value in pick.items():
        if value not in {int(x) for x in v.coords[dim].values}:
            return f"{comp.label} is not in the key-frequency result"
    return pick


def fourier_evidence(report: Report, comp: Component) -> Evidence:
    """The component's key frequency, the fraction of its variance that frequency's 2D block
    explains, and how many units of its kind have each key frequency; or its spectrum
    when the result has a ``freq`` axis."""
    candidates = _fourier_results(report, comp)
    if not candidates:
        return _no_result("Fourier (key-frequency)")
    reason = ""
    for res in candidates:
        pick = _unit_index(res, comp)
        if isinstance(pick, str):
            reason = pick
            continue
        v = res.values
        if "freq" in v.dims:
            row = v.sel(pick)
            other = [d for d in row.dims if d != "freq"]
            row = row.mean(other) if other else row
            return Evidence({"kind": "spectrum", "metric": res.metric, "value": _floats(row.values),
                             "freq": [str(f) for f in row.coords["freq"].values]})
        data = {"kind": "key_frequency", "explained": float(v.sel(pick)),
                "threshold": getattr(res, "threshold", None)}
        if "clustered" in res.extras:
            data["clustered"] = bool(res.extras["clustered"].sel(pick))
        if "key_freq" in res.extras:
            data["key_freq"] = int(res.extras["key_freq"].sel(pick))
            ks, n = np.unique(res.extras["key_freq"].values, return_counts=True)
            data["freq_counts"] = {str(int(k)): int(c) for k, c in zip(ks, n)}
        return Evidence(data)
    return Evidence.missing(reason)


def neuron_map(report: Report, comp: Component) -> Evidence:
    """A neuron's K map (activation) and KV map (activation × its vote for the true result)
    over the operand grid, as ``operand_a × operand_b`` arrays."""
    maps = report.result("neuron_maps")
    if maps is None:
        return _no_result("K/KV map")
    if comp.kind != "neuron":
        return Evidence.missing("K/KV maps are drawn for MLP neurons only")
    v = maps.values
    layer = int(v.coords["layer"].values) if "layer" in v.coords and v.coords["layer"].ndim == 0 else None
    if layer is not None and layer != comp.layer:
        return Evidence.missing(f"K/KV maps were drawn for layer {layer}'s neurons")
    if comp.index not in {int(n) for n in v.coords["neuron"].values}:
        return Evidence.missing(f"neuron {comp.index} has no K/KV map in this run")
    out: dict[str, Any] = {}
    for kind in ("k", "kv"):
        if kind == "kv" and "kv" not in maps.extras:
            continue
        grid = maps.grid(comp.index, kind=kind)
        out[kind] = [_floats(row) for row in grid.values]
        out["operand_a"] = [int(x) for x in grid.coords["operand_a"].values]
        out["operand_b"] = [int(x) for x in grid.coords["operand_b"].values]
    out["operation"] = getattr(maps, "operation", "")
    return Evidence(out)


def top_prompts(report: Report, comp: Component) -> Evidence:
    """The prompts on which the component is most active (``top_prompts.json``)."""
    if not report.top_prompts:
        return Evidence.missing("this run has no top_prompts.json")
    rows = report.top_prompts.get(comp.label)
    if not rows:
        return Evidence.missing(f"no top prompts recorded for {comp.label}")
    return Evidence([json_row({"prompt": r.get("prompt"), "value": r.get("value")})
                     for r in rows if isinstance(r, dict)])


def _component_rows(result: Any, site: Any) -> Any:
    """The rows of ``result.to_frame()`` at the component's layer and head / neuron (the default
    panel), or a reason string."""
    frame = result.to_frame()
    if "layer" not in frame.columns:
        return "the result has no layer axis to select this component on"
    keep = frame["layer"].to_numpy() == site.layer
    for column, value in (("head", site.head), ("neuron", site.neuron)):
        if value is None:
            continue
        if column not in frame.columns:
            return f"the result does not cover this component (it has no {column} axis)"
        keep &= frame[column].to_numpy() == value
    rows = frame[keep]
    return rows.reset_index(drop=True) if len(rows) else "the result does not cover this component"


def panel_evidence(report: Report, comp: Component) -> dict[str, Evidence]:
    """The registered methods' dashboard panels (:class:`~arithinterp.methods.Panel`) for ``comp``,
    by title: a plotly figure, a table (a DataFrame) or the reason it is missing."""
    out: dict[str, Evidence] = {}
    site = component_site(comp)
    for spec in methods().values():
        for panel in spec.panels:
            result = report.result(panel.result) if panel.result in report.result_names else None
            if result is None:
                out[panel.title] = _no_result(panel.result)
                continue
            shown = (panel.render or _component_rows)(result, site)
            out[panel.title] = Evidence.missing(shown) if isinstance(shown, str) else Evidence(shown)
    return out


def component_detail(report: Report, label: str) -> dict[str, Any]:
    """Every section of the detail panel for ``label`` (``panels``: the registered methods' panels)."""
    comp = parse_component(label)
    row = report.row(label)
    return {
        "row": Evidence(row) if row is not None else Evidence.missing(f"{label} is not in the table"),
        "lens": lens_trajectory(report, comp),
        "probes": probe_evidence(report, comp),
        "fourier": fourier_evidence(report, comp),
        "neuron_map": neuron_map(report, comp),
        "top_prompts": top_prompts(report, comp),
        "panels": panel_evidence(report, comp),
    }
