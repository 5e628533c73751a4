"""The head and neuron tables of an attribution report, assembled from method results.

Each column is read from one method's result (nothing is recomputed here), so
the tables are an aggregation that the tests check cell by cell against the
methods called directly. See ``docs/report.md`` for every column.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from arithinterp.models import Model, Site
from arithinterp.results import Result

__all__ = [
    "AGREE_K",
    "HEAD_COLUMNS",
    "MAX_NEURONS",
    "NEURON_COLUMNS",
    "PROBE_DECODABLE",
    "head_table",
    "neuron_table",
]

#: Columns of the head table, in order (the contract's names).
HEAD_COLUMNS = (
    "component", "kind", "layer", "head", "rank", "patch_effect", "patch_ci_low", "patch_ci_high",
    "atp", "mediation_ie", "dla", "probe_targets", "probe_best", "fourier_key_freq",
    "fourier_explained", "in_circuit", "agree_atp", "agree_ie", "agree_dla", "agree",
)  # fmt: skip
#: Columns of the neuron table: ``neuron`` instead of ``head``, plus the heuristic columns.
NEURON_COLUMNS = tuple("neuron" if c == "head" else c for c in HEAD_COLUMNS) + ("heuristic", "heuristic_score")

#: "Top-k" of the agreement flags: this many components, or 5% of the table if more.
AGREE_K = 5
#: A probe target is decodable at a site when its held-out score reaches this and beats
#: the majority / mean baseline and the control task by at least :data:`PROBE_MARGIN`.
PROBE_DECODABLE = 0.9
PROBE_MARGIN = 0.1
#: Neuron tables of larger models keep the top-ranked rows only.
MAX_NEURONS = 5000


def _cells(model: Model, kind: str) -> list[Site]:
    s = model.shape
    if kind == "attn_head":
        return [Site(kind, layer, head=h) for layer in range(s.n_layers) for h in range(s.n_heads)]
    return [Site(kind, layer, neuron=n) for layer in range(s.n_layers) for n in range(s.d_mlp)]


def _inner(kind: str) -> str:
    return "head" if kind == "attn_head" else "neuron"


def _lookup(array, sites: list[Site], kind: str) -> np.ndarray:
    """Values of a ``(layer, head|neuron)`` array at each site; NaN where the array lacks one."""
    inner = _inner(kind)
    arr = array.transpose("layer", inner)
    layers = {int(v): i for i, v in enumerate(arr.coords["layer"].values)}
    inners = {int(v): i for i, v in enumerate(arr.coords[inner].values)}
    data = np.asarray(arr.values, dtype=float)
    out = np.full(len(sites), np.nan)
    for i, site in enumerate(sites):
        j, k = layers.get(site.layer), inners.get(getattr(site, inner))
        if j is not None and k is not None:
            out[i] = data[j, k]
    return out


def _dla(result: Result, sites: list[Site]) -> np.ndarray:
    mean = result.extras["mean"]
    labels = {str(c): i for i, c in enumerate(mean.coords["component"].values)}
    return np.array([float(mean.values[labels[s.label]]) if s.label in labels
                     else np.nan for s in sites])


def _probe_site(kind: str, layer: int, n_layers: int) -> str:
    """The residual-stream site (a ProbeResult ``site`` label) right after a component writes."""
    if kind == "attn_head":
        return Site("resid_mid", layer).label
    return Site("resid_pre", layer + 1).label if layer + 1 < n_layers else Site("resid_post", layer).label


def probe_evidence(result: Result, kind: str, layer: int, n_layers: int) -> tuple[str, float]:
    """Targets decodable at the site after ``kind`` of ``layer`` (at any position), and the best score."""
    v = result.values
    labels = [str(x) for x in v.coords["site"].values]
    site = _probe_site(kind, layer, n_layers)
    if site not in labels:
        return "", float("nan")
    at = v.sel(site=site)  # (target, pos)
    if "answer_visible" in result.extras:  # positions where the target is read off the input: not evidence
        at = at.where(~result.extras["answer_visible"].astype(bool))
    control = result.extras["control"].sel(site=site)
    majority = result.extras["majority"]
    score = at.max("pos")
    margin = (at - control).where(at == at.max("pos")).max("pos")
    decodable = []
    for t in at.coords["target"].values:
        s = float(score.sel(target=t))
        if not np.isfinite(s):
            continue
        base = float(majority.sel(target=t)) if majority.ndim else float(majority)
        kind_t = str(at.coords["score_kind"].sel(target=t).values)
        base_gap = s - base if kind_t == "accuracy" else s  # R² is already relative to the mean
        if s >= PROBE_DECODABLE and base_gap >= PROBE_MARGIN and float(margin.sel(target=t)) >= PROBE_MARGIN:
            decodable.append(str(t))
    best = score.values[np.isfinite(score.values)]
    return ",".join(decodable), float(best.max()) if best.size else float("nan")


def _top(values: np.ndarray, k: int) -> np.ndarray:
    finite = np.where(np.isfinite(values), np.abs(values), -np.inf)
    order = np.argsort(-finite, kind="stable")[:k]
    mask = np.zeros(len(values), dtype=bool)
    mask[order] = True
    return mask & np.isfinite(values)


def agreement(reference: np.ndarray, other: np.ndarray, *, same_sign: bool) -> np.ndarray:
    """Per row: whether ``other`` puts the row in its top-k exactly when ``reference`` does
    (and, with ``same_sign``, with the same sign when both do). ``None`` where ``other`` is NaN."""
    n = len(reference)
    k = min(n, max(AGREE_K, int(np.ceil(0.05 * n))))
    in_ref, in_other = _top(reference, k), _top(other, k)
    agree = in_ref == in_other
    if same_sign:
        both = in_ref & in_other
        agree = agree & ~(both & (np.sign(reference) != np.sign(other)))
    out = np.array(agree, dtype=object)
    out[~np.isfinite(other)] = None
    return out


def _table(model: Model, kind: str, results: Mapping[str, Result], circuit: Result | None) -> pd.DataFrame:
    sites = _cells(model, kind)
    part = "heads" if kind == "attn_head" else "neurons"
    inner = _inner(kind)
    n = len(sites)
    nan = np.full(n, np.nan)
    frame = pd.DataFrame({
        "component": [s.label for s in sites],
        "kind": "head" if kind == "attn_head" else "neuron",
        "layer": [s.layer for s in sites],
        inner: [getattr(s, inner) for s in sites],
    })
    patch = results.get(f"patching_{part}")
    frame["patch_effect"] = _lookup(patch.values, sites, kind) if patch is not None else nan
    frame["patch_ci_low"] = _lookup(patch.extras["ci_low"], sites, kind) if patch is not None else nan
    frame["patch_ci_high"] = _lookup(patch.extras["ci_high"], sites, kind) if patch is not None else nan
    atp = results.get(f"attribution_{part}")
    frame["atp"] = _lookup(atp.effect, sites, kind) if atp is not None else nan
    med = results.get("mediation" if kind == "attn_head" else "mediation_neurons")
    frame["mediation_ie"] = _lookup(med.values, sites, kind) if med is not None else nan
    dla = results.get("dla")
    frame["dla"] = _dla(dla, sites) if dla is not None else nan
    probes = results.get("probes")
    if probes is not None:
        evidence = {layer: probe_evidence(probes, kind, layer, model.shape.n_layers)
                    for layer in range(model.shape.n_layers)}
        frame["probe_targets"] = [evidence[s.layer][0] for s in sites]
        frame["probe_best"] = [evidence[s.layer][1] for s in sites]
    else:
        frame["probe_targets"] = None
        frame["probe_best"] = nan
    frame["fourier_key_freq"], frame["fourier_explained"] = _fourier(model, kind, results, sites)
    frame["in_circuit"] = _in_circuit(circuit, sites, kind)
    ref = frame["patch_effect"].to_numpy() if patch is not None else frame["atp"].to_numpy()
    frame["agree_atp"] = agreement(ref, frame["atp"].to_numpy(), same_sign=True) if patch is not None \
        else np.array([None] * n, dtype=object)
    frame["agree_ie"] = agreement(ref, frame["mediation_ie"].to_numpy(), same_sign=False)
    frame["agree_dla"] = agreement(ref, frame["dla"].to_numpy(), same_sign=False)
    if not np.isfinite(ref).any():
        for col in ("agree_atp", "agree_ie", "agree_dla"):
            frame[col] = np.array([None] * n, dtype=object)
    flags = frame[["agree_atp", "agree_ie", "agree_dla"]]
    frame["agree"] = [all(bool(x) for x in row if x is not None) if any(x is not None for x in row) else None
                      for row in flags.itertuples(index=False)]
    score = np.where(np.isfinite(ref), np.abs(ref), -np.inf)
    order = np.argsort(-score, kind="stable")
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(1, n + 1)
    frame["rank"] = rank
    if kind == "mlp_post":
        frame["heuristic"], frame["heuristic_score"] = _heuristics(results, sites)
    columns = HEAD_COLUMNS if kind == "attn_head" else NEURON_COLUMNS
    frame = frame[list(columns)].sort_values("rank", kind="stable").reset_index(drop=True)
    for col in ("in_circuit",):
        frame[col] = frame[col].astype(bool)
    return frame


def _fourier(model: Model, kind: str, results: Mapping[str, Result], sites: list[Site]):
    n = len(sites)
    freq, explained = np.full(n, np.nan), np.full(n, np.nan)
    if kind == "attn_head":
        res = results.get("key_frequencies_heads")
        if res is not None:
            freq = _lookup(res.extras["key_freq"], sites, kind)
            explained = _lookup(res.values, sites, kind)
        return freq, explained
    last = model.shape.n_layers - 1
    for layer in range(model.shape.n_layers):
        res = results.get("key_frequencies" if layer == last else f"key_frequencies_L{layer}")
        if res is None:
            continue
        rows = [i for i, s in enumerate(sites) if s.layer == layer]
        neurons = [sites[i].neuron for i in rows]
        freq[rows] = res.extras["key_freq"].sel(neuron=neurons).values
        explained[rows] = res.values.sel(neuron=neurons).values
    return freq, explained


def _heuristics(results: Mapping[str, Result], sites: list[Site]) -> tuple[list[str], np.ndarray]:
    names = [""] * len(sites)
    scores = np.full(len(sites), np.nan)
    heur = results.get("heuristics")
    if heur is None:
        return names, scores
    layer = int(heur.values.coords["layer"])
    best = heur.values.max("class")
    for i, s in enumerate(sites):
        if s.layer != layer or s.neuron not in best.coords["neuron"].values:
            continue
        scores[i] = float(best.sel(neuron=s.neuron))
        found = heur.neuron_heuristics(s.neuron)
        names[i] = found[0] if found else ""
    return names, scores


def _in_circuit(circuit: Result | None, sites: list[Site], kind: str) -> np.ndarray:
    """A head is in the circuit when it is a member; a neuron when it or its whole MLP is."""
    if circuit is None:
        return np.zeros(len(sites), dtype=bool)
    members = set(circuit.circuit)
    if kind == "attn_head":
        return np.array([s.label in members for s in sites])
    return np.array([s.label in members or Site("mlp_out", s.layer).label in members for s in sites])


def head_table(model: Model, results: Mapping[str, Result]) -> pd.DataFrame:
    """One row per attention head (see ``docs/report.md``), sorted by rank."""
    return _table(model, "attn_head", results, results.get("circuit"))


def neuron_table(model: Model, results: Mapping[str, Result]) -> tuple[pd.DataFrame, int]:
    """One row per MLP neuron (the top :data:`MAX_NEURONS` by rank), and the total count."""
    frame = _table(model, "mlp_post", results, results.get("circuit"))
    return frame.head(MAX_NEURONS).reset_index(drop=True), len(frame)
