"""The directions a probe sweep found: one weight vector per (target, site, position, output).

:func:`~arithinterp.methods.probe_sweep.fit_probes` with ``directions=True`` keeps the fitted
:class:`~arithinterp.methods.probes.LinearProbe`\\ s' ``coef_`` and ``intercept_`` as a
:class:`ProbeDirections` (``ProbeResult.directions``): numpy arrays, in the input space of the
probed activations, so ``acts @ direction + intercept`` is the probe's decision.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import xarray as xr

from arithinterp.methods._common import make_meta
from arithinterp.methods.probes import LinearProbe
from arithinterp.results import Result, ResultMeta

__all__ = ["ProbeDirections", "probe_directions"]


class ProbeDirections(Result):
    """Fitted probe directions.

    ``values``: dims ``(target, site, pos, output, feature)``: the weight of each activation
    coordinate (``feature``) in each probe output. ``output`` labels are ``logit`` (two
    classes: the logit of the second class over the first, labels in the ``target``
    coordinate ``classes``), the class label (more classes), ``value`` (ridge) or ``cos`` /
    ``sin`` (circular); a target without an output is NaN there. Extra ``intercept``:
    ``(target, site, pos, output)``. Coordinates as on the :class:`ProbeResult` they come with.
    """

    metric_name = "weight"

    @classmethod
    def example(cls) -> ProbeDirections:
        rng = np.random.default_rng(0)
        probes = {
            "SC_0": LinearProbe().fit(rng.normal(size=(2, 3, 40, 4)), np.arange(40) % 2),
            "c_hat_1": LinearProbe("ridge").fit(rng.normal(size=(2, 3, 40, 4)), rng.normal(size=40)),
        }
        coords = {
            "site": np.array(["L0 pre", "L0 post"]),
            "pos": np.arange(3),
            "pos_token": ("pos", np.array(["1", "+", "2"])),
        }
        return probe_directions(probes, coords, make_meta("fit_probes", None))


def _outputs(name: str, probe: LinearProbe) -> list[str]:
    if probe.kind == "ridge":
        return ["value"]
    if probe.kind == "circular":
        return ["cos", "sin"]
    return ["logit"] if len(probe.classes_) == 2 else [str(c) for c in probe.classes_]


def probe_directions(
    probes: Mapping[str, LinearProbe], coords: Mapping[str, object], meta: ResultMeta
) -> ProbeDirections:
    """Stack fitted batched probes (each over ``[site, pos]`` problems) into one result.

    ``coords`` label ``site`` and ``pos`` (with any coordinates on them); ``meta`` is the
    probe sweep's."""
    per_target = {name: _outputs(name, probe) for name, probe in probes.items()}
    outputs: list[str] = []
    for names in per_target.values():
        outputs += [o for o in names if o not in outputs]
    first = next(iter(probes.values()))
    n_site, n_pos, d = first.mean_.shape
    weights = np.full((len(probes), n_site, n_pos, len(outputs), d), np.nan)
    intercepts = np.full(weights.shape[:-1], np.nan)
    for t, (name, probe) in enumerate(probes.items()):
        coef = probe.coef_[..., None, :] if probe.kind == "ridge" else probe.coef_
        intercept = np.asarray(probe.intercept_)[..., None] if probe.kind == "ridge" else probe.intercept_
        slots = [outputs.index(o) for o in per_target[name]]
        weights[t][:, :, slots] = coef
        intercepts[t][:, :, slots] = intercept
    classes: Sequence[str] = [
        ", ".join(map(str, p.classes_)) if p.kind == "logistic" else "" for p in probes.values()
    ]
    all_coords = {
        **coords,
        "target": np.array(list(probes)),
        "classes": ("target", np.array(classes)),
        "output": np.array(outputs),
        "feature": np.arange(d),
    }
    values = xr.DataArray(weights, dims=("target", "site", "pos", "output", "feature"),
                          coords=all_coords)
    intercept = xr.DataArray(intercepts, dims=("target", "site", "pos", "output"),
                             coords={k: v for k, v in all_coords.items() if k != "feature"})
    return ProbeDirections(values=values, meta=meta, extras={"intercept": intercept})
