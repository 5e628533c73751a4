"""Grade attribution and discovery methods against the planted truth.

Every method gives each component of a planted model (its heads and MLPs, or heads and
neurons) an importance score; :func:`grade` compares it with the truth three ways:

* **AUROC**: the area under the ROC curve of the scores against the truth labels (1 = every
  circuit component above every other; 0.5 = chance). Decoys and dead components are the
  negatives. Scores within :data:`TIE_TOLERANCE` of the largest are ties (half credit).
* **CPR** and **CMD** (MIB, Mueller et al. 2025; ``shared/METHODS.md`` §14), by
  :func:`arithinterp.methods.mib.mib_curve`: the circuit made of the top ``int(k n)`` of the
  ``n`` ranked components, at each of MIB's fractions ``k``, is scored by faithfulness
  ``f = (m(C) − m(∅)) / (m(M) − m(∅))`` with everything outside it patched from the pair's
  counterfactual prompt (MIB's default ablation) and ``m`` the logit difference; CPR is the
  area under ``f(k)`` (higher is better, it can pass 1), CMD the area under ``|1 − f(k)|``
  (lower is better).

With a few components MIB's fractions are coarse (a model of 5 components has circuits of
0, 1, 2 and 5 of them), so a perfect ranking of the 3-component AND circuit reaches only
CPR 0.35; ``f_at_truth``, the faithfulness of the top ``len(truth)`` components, is 1 for a
perfect ranking whatever the size. Within a tie the curves keep the non-members first, so
an order the scores do not resolve earns nothing. Discovery (``discover_circuit``) is graded
on the order components joined its circuit (then the rest by score); ``exact`` says whether
the circuit it returned is the truth.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Literal, get_args

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from arithinterp.errors import ConfigError
from arithinterp.methods.attribution import attribution_patch
from arithinterp.methods.components import direct_logit_attribution
from arithinterp.methods.edge_attribution import edge_attribution_patch
from arithinterp.methods.mediation import mediate
from arithinterp.methods.mib import MIB_FRACTIONS, mib_curve
from arithinterp.methods.patching import patch_activations
from arithinterp.models import Site
from arithinterp.planted.suite import PLANTED, Planted, planted

__all__ = ["GRADED_METHODS", "TIE_TOLERANCE", "GradedMethod", "auroc", "component_scores", "curve", "grade",
           "grade_model", "grade_records", "markdown_table", "pessimistic_ranking", "regressions", "resolved"]

GradedMethod = Literal["patching", "attribution", "atp_frozen_norm", "atp_star", "relp", "ig_activations",
                       "edge_attribution", "mediation", "dla", "circuit_topk", "circuit_greedy"]
GRADED_METHODS: tuple[str, ...] = get_args(GradedMethod)

#: The faithfulness metric of the MIB curves: the answer's logit minus the largest other.
CURVE_METRIC = "logit_diff"
#: What replaces a component outside the circuit on the MIB curves (MIB's default: patching
#: from the pair's counterfactual prompt).
CURVE_ABLATION = "counterfactual"
#: The ablation discovery runs with when it is graded.
DISCOVERY_ABLATION = "resample"


# ---- component scores -------------------------------------------------------------------


def _sweep_scores(p: Planted, sweep: Callable, value: Callable) -> dict[str, float]:
    """|effect| of every component, one whole-component sweep per kind."""
    out: dict[str, float] = {}
    for kind in p.components:
        res = sweep(p.model, p.pairs, kind=kind, per_position=False, answer=p.answer, n_boot=1, progress=False)
        arr = value(res)
        for layer in range(arr.sizes["layer"]):
            row = arr.isel(layer=layer)
            if kind == "attn_head":
                out.update({Site(kind, layer, head=h).label: float(abs(row.isel(head=h))) for h in range(row.sizes["head"])})
            elif kind == "mlp_post":
                out.update({Site(kind, layer, neuron=n).label: float(abs(row.isel(neuron=n)))
                            for n in range(row.sizes["neuron"])})
            else:
                out[Site(kind, layer).label] = float(abs(row))
    return out


def _edge_scores(p: Planted) -> dict[str, float] | None:
    if "mlp_post" in p.components:
        return None  # edges join whole MLPs, not neurons
    res = edge_attribution_patch(p.model, p.pairs, answer=p.answer, n_boot=1, progress=False)
    # A node's score: the summed |score| of the edges it sends.
    sent = abs(res.values).sum("site")
    return {str(c): float(v) for c, v in zip(sent.coords["component"].values, sent.values)}


def _mediation_scores(p: Planted) -> dict[str, float]:
    out: dict[str, float] = {}
    model = p.model
    kw = dict(per_position=False, answer=p.answer, n_boot=1, progress=False)
    heads = mediate(model, p.pairs, heads=True, **kw).values
    for layer in range(heads.sizes["layer"]):
        for h in range(heads.sizes["head"]):
            out[Site("attn_head", layer, head=h).label] = float(abs(heads.isel(layer=layer, head=h)))
    if "mlp_post" in p.components:
        neurons = mediate(model, p.pairs, neurons=list(range(model.shape.d_mlp)), **kw).values
        for layer in range(neurons.sizes["layer"]):
            for n in range(neurons.sizes["neuron"]):
                out[Site("mlp_post", layer, neuron=n).label] = float(abs(neurons.isel(layer=layer, neuron=n)))
    else:
        mlps = mediate(model, p.pairs, components=("mlp_out",), **kw).values.squeeze("component", drop=True)
        for layer in range(mlps.sizes["layer"]):
            out[Site("mlp_out", layer).label] = float(abs(mlps.isel(layer=layer)))
    return out


def _dla_scores(p: Planted) -> dict[str, float] | None:
    if p.answer != "single":
        return None  # DLA reads one answer token
    res = direct_logit_attribution(p.model, p.prompts, against=p.pairs.corrupt)
    mean = res.values.mean("prompt")
    labels = [str(c) for c in mean.coords["component"].values]
    by_label = dict(zip(labels, mean.values.tolist()))
    out = {x: abs(v) for x, v in by_label.items() if x in set(p.labels)}
    if "mlp_out" in p.components:
        for layer in range(p.model.shape.n_layers):
            prefix = f"L{layer}N"
            out[Site("mlp_out", layer).label] = abs(sum(v for x, v in by_label.items()
                                                        if x.startswith(prefix) or x == f"L{layer} mlp bias"))
    return out


def _circuit_ranking(p: Planted, grow: str) -> tuple[dict[str, float], list[str]]:
    res = p.discover(grow=grow, ablation=DISCOVERY_ABLATION)
    order = [str(x) for x in res.values.coords["component"].values]
    # Rank scores: the grown order first, then the rest by score.
    return {x: float(len(order) - i) for i, x in enumerate(order)}, list(res.circuit)


#: Attribution patching beyond plain AtP (``shared/METHODS.md`` §16), as ``attribution_patch`` options.
_ATTRIBUTION_VARIANTS: dict[str, dict] = {
    "atp_frozen_norm": {"freeze_norm": True},
    "atp_star": {"method": "atp_star"},
    "relp": {"method": "relp"},
    "ig_activations": {"method": "ig_activations"},
}


def component_scores(p: Planted, method: str) -> tuple[dict[str, float] | None, list[str] | None]:
    """Each component's importance by ``method`` (higher = more important; ``None``: the
    method does not apply to this model), and the circuit it returned (discovery only)."""
    if method == "patching":
        return _sweep_scores(p, patch_activations, lambda r: r.values), None
    if method == "attribution":
        return _sweep_scores(p, attribution_patch, lambda r: r.effect), None
    if method in _ATTRIBUTION_VARIANTS:
        return _sweep_scores(p, partial(attribution_patch, **_ATTRIBUTION_VARIANTS[method]), lambda r: r.effect), None
    if method == "edge_attribution":
        return _edge_scores(p), None
    if method == "mediation":
        return _mediation_scores(p), None
    if method == "dla":
        return _dla_scores(p), None
    if method in ("circuit_topk", "circuit_greedy"):
        return _circuit_ranking(p, method.removeprefix("circuit_"))
    raise ConfigError(f"unknown graded method {method!r}; valid: {', '.join(GRADED_METHODS)}")


# ---- grades -----------------------------------------------------------------------------


#: Scores closer than this fraction of a method's largest score are ties: a method gets no
#: credit for an order its scores do not resolve (float noise, a LayerNorm side effect).
TIE_TOLERANCE = 1e-3


def resolved(scores: Mapping[str, float], labels: Sequence[str]) -> np.ndarray:
    """``|score|`` of each label (0 when unscored), rounded to :data:`TIE_TOLERANCE` of the largest."""
    s = np.abs(np.array([scores.get(x, 0.0) for x in labels], dtype=float))
    step = TIE_TOLERANCE * float(s.max()) if s.size and s.max() > 0 else 1.0
    return np.floor(s / step + 0.5) * step


def auroc(scores: Mapping[str, float], truth: frozenset[str] | set[str], labels: Sequence[str]) -> float:
    """AUROC of the resolved ``scores`` (:func:`resolved`) against membership of ``truth``
    (a tie between a member and a non-member counts half)."""
    y = np.array([x in truth for x in labels])
    return float(roc_auc_score(y, resolved(scores, labels)))


def pessimistic_ranking(scores: Mapping[str, float], truth: frozenset[str] | set[str],
                        labels: Sequence[str]) -> list[str]:
    """Labels by resolved score, best first; within a tie the non-members come first."""
    s = resolved(scores, labels)
    return [labels[i] for i in sorted(range(len(labels)), key=lambda i: (-s[i], labels[i] in truth, i))]


def curve(p: Planted, scores: Mapping[str, float], *, fractions: Sequence[float] = MIB_FRACTIONS):
    """MIB's faithfulness curve of a method's scores (:func:`~arithinterp.methods.mib.mib_curve`):
    every component of the model is an item, ranked by :func:`pessimistic_ranking`; everything
    outside the kept top is ablated by :data:`CURVE_ABLATION`, faithfulness by :data:`CURVE_METRIC`."""
    ranking = pessimistic_ranking(scores, p.truth, p.labels)
    return mib_curve(p.model, p.pairs, ranking, ablation=CURVE_ABLATION, metric=CURVE_METRIC, answer=p.answer,
                     fractions=fractions)


def grade_model(p: Planted, methods: Sequence[str] = GRADED_METHODS) -> list[dict]:
    """One row per method: AUROC, CPR, CMD, ``f_at_truth`` (faithfulness of the top
    ``len(truth)`` components; NaN where the method does not apply) and ``exact`` (discovery)."""
    labels, rows = p.labels, []
    for method in methods:
        scores, circuit = component_scores(p, method)
        row = {"model": p.name, "method": method, "auroc": np.nan, "cpr": np.nan, "cmd": np.nan,
               "f_at_truth": np.nan, "exact": None}
        if scores is not None:
            row["auroc"] = auroc(scores, p.truth, labels)
            mib = curve(p, scores)
            row["cpr"], row["cmd"] = mib.cpr, mib.cmd
            # MIB keeps int(fraction * n) items: this fraction keeps exactly len(truth).
            top = min(1.0, (len(p.truth) + 0.5) / len(labels))
            row["f_at_truth"] = float(curve(p, scores, fractions=(top,)).values[0])
        if circuit is not None:
            row["exact"] = set(circuit) == set(p.truth)
        rows.append(row)
    return rows


def grade(names: Sequence[str] = PLANTED, methods: Sequence[str] = GRADED_METHODS, *,
          backend: str = "transformer_lens") -> pd.DataFrame:
    """The grade table: one row per (planted model, method)."""
    bad = [m for m in methods if m not in GRADED_METHODS]
    if bad:
        raise ConfigError(f"unknown graded methods {bad}; valid: {', '.join(GRADED_METHODS)}")
    rows = []
    for name in names:
        rows += grade_model(planted(name, backend), methods)
    return pd.DataFrame(rows)


# ---- recorded grades --------------------------------------------------------------------

#: Grades a method must keep: higher is better for these ...
HIGHER_IS_BETTER = ("auroc", "cpr", "f_at_truth")
#: ... and lower for these.
LOWER_IS_BETTER = ("cmd",)


def grade_records(table: pd.DataFrame) -> dict[str, dict[str, dict]]:
    """``{model: {method: {grade: value}}}`` (NaN grades left out), as recorded in JSON."""
    out: dict[str, dict[str, dict]] = {}
    for row in table.to_dict("records"):
        grades = {k: round(float(row[k]), 6) for k in (*HIGHER_IS_BETTER, *LOWER_IS_BETTER)
                  if row[k] is not None and not np.isnan(row[k])}
        if row.get("exact") is not None:
            grades["exact"] = bool(row["exact"])
        out.setdefault(str(row["model"]), {})[str(row["method"])] = grades
    return out


def regressions(table: pd.DataFrame, recorded: Mapping[str, Mapping[str, Mapping]], *,
                tol: float = 1e-3) -> list[str]:
    """Every grade of ``table`` worse than its recorded value by more than ``tol`` (and every
    recorded exact circuit no longer exact), as readable lines; empty when none dropped."""
    measured = grade_records(table)
    out = []
    for model, by_method in measured.items():
        for method, grades in by_method.items():
            old = recorded.get(model, {}).get(method)
            if old is None:
                continue
            for key in HIGHER_IS_BETTER:
                if key in old and grades.get(key, -np.inf) < old[key] - tol:
                    out.append(f"{model} / {method}: {key} {grades.get(key)} < recorded {old[key]}")
            for key in LOWER_IS_BETTER:
                if key in old and grades.get(key, np.inf) > old[key] + tol:
                    out.append(f"{model} / {method}: {key} {grades.get(key)} > recorded {old[key]}")
            if old.get("exact") and not grades.get("exact"):
                out.append(f"{model} / {method}: the circuit is no longer exactly the planted one")
    return out


def markdown_table(table: pd.DataFrame) -> str:
    """The grade table as markdown: one row per (model, method); ``–`` where not applicable."""

    def cell(value, digits=3):
        if value is None or (isinstance(value, float) and np.isnan(value)):
            return "–"
        if isinstance(value, (bool, np.bool_)):
            return "yes" if value else "no"
        return f"{value + 0.0:.{digits}f}"  # + 0.0: no "-0.000"

    lines = ["| model | method | AUROC ↑ | CPR ↑ | CMD ↓ | f at truth size ↑ | exact circuit |",
             "|---|---|---|---|---|---|---|"]
    for row in table.to_dict("records"):
        lines.append(f"| {row['model']} | {row['method']} | {cell(row['auroc'])} | {cell(row['cpr'])} | "
                     f"{cell(row['cmd'])} | {cell(row['f_at_truth'])} | {cell(row['exact'])} |")
    return "\n".join(lines)
