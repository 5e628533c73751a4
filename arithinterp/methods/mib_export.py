"""Export learned causal-variable subspaces in the layout of MIB's causal-variable track.

A submission to MIB's causal variable localization track (Mueller et al. 2025) is one folder per
(task, model, variable), ``<task>_<ModelClass>_<variable>/``, holding three files per
intervened site, named after the site (``ResidualStream(Layer-1,Token-11)``):

* ``<site>_featurizer``: the map from the site's activation to the feature space;
* ``<site>_inverse_featurizer``: the map back;
* ``<site>_indices``: the feature dims that hold the variable (JSON list).

MIB's own baselines save the featurizers as torch modules (pickle); this export writes them as
safetensors (``weight``: the matrix, ``f = h @ weight.T`` forward and ``h = f @ weight.T``
inverse; the header's metadata records the site, position, variable and IIA) and the indices
as JSON, so a user can load them into MIB's featurizer classes (a rotation and its transpose)
without unpickling anything. The learned ``[d, width]`` DAS rows are completed to a full
orthogonal matrix ``R`` whose first ``d`` rows they are, so ``indices = [0 .. d-1]``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from arithinterp.errors import MethodError
from arithinterp.methods.das import DASResult
from arithinterp.models import Model, Site
from arithinterp.results.io import atomic_dir
from arithinterp.tasks.causal import MIB_ADDITION_NAMES

__all__ = ["complete_rotation", "export_mib", "mib_site_name"]

_MIB_NAME = {ours: theirs for theirs, ours in MIB_ADDITION_NAMES.items()}
_KIND = {"resid_pre": "ResidualStream", "resid_post": "ResidualStream", "resid_mid": "ResidualStream",
         "attn_head": "AttentionHead"}


def mib_site_name(site: Site, n_layers: int) -> str:
    """MIB's name of a site: ``ResidualStream(Layer-L,Token-P)`` (``L`` the block whose output it
    is, as MIB counts: ``resid_pre`` of block ``k`` is layer ``k - 1``'s output, -1 the embeddings)
    or ``AttentionHead(Layer-L,Head-H,Token-P)``."""
    if site.kind not in _KIND or site.pos is None:
        raise MethodError(f"{site.label}: MIB's layout names residual-stream and attention-head sites at a position")
    if site.kind == "attn_head":
        return f"AttentionHead(Layer-{site.layer},Head-{site.head},Token-{site.pos})"
    layer = site.layer if site.kind == "resid_post" else site.layer - 1  # type: ignore[operator]
    if site.kind == "resid_mid":
        raise MethodError(f"{site.label}: MIB's residual stream is the block output; use resid_pre / resid_post")
    return f"ResidualStream(Layer-{layer},Token-{site.pos})"


def complete_rotation(rows: torch.Tensor) -> torch.Tensor:
    """An orthogonal ``[width, width]`` matrix whose first rows are ``rows`` (``[d, width]``, orthonormal)."""
    d, width = rows.shape
    gen = torch.Generator().manual_seed(0)
    extra = torch.randn(width, width - d, generator=gen, dtype=torch.float64)
    q, r = torch.linalg.qr(torch.cat([rows.double().T, extra], 1))
    q = q * torch.sign(torch.diagonal(r))  # keep the given rows' signs
    return q.T.contiguous().float()


def export_mib(result: DASResult, model: Model, out_dir: str | Path, *, task: str = "arithmetic") -> Path:
    """Write ``result``'s subspace as ``out_dir/<task>_<ModelClass>_<variable>/`` (see the module doc).

    The variable takes MIB's name where it has one (``carry_in_1`` -> ``ones_carry``). Files of
    other sites already in the folder are kept; this site's three files are replaced atomically.
    """
    from safetensors.torch import save_file

    site = Site.from_label(result.site)
    name = mib_site_name(site, model.shape.n_layers)
    hf = model.backend.hf_model()
    arch = (getattr(getattr(hf, "config", None), "architectures", None) or [type(hf).__name__ if hf else "Model"])[0]
    variable = _MIB_NAME.get(result.variable, result.variable)
    folder = Path(out_dir) / f"{task}_{arch}_{variable}"
    rotation = complete_rotation(torch.tensor(result.basis, dtype=torch.float32))
    meta = {"variable": result.variable, "mib_variable": variable, "site": result.site, "model": model.name,
            "dim": str(result.dim), "iia": f"{result.iia:.6f}", "layout": "f = h @ weight.T"}
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_dir(folder / f".{name}.tmp") as tmp:
        save_file({"weight": rotation}, str(tmp / "featurizer"), metadata=meta)
        save_file({"weight": rotation.T.contiguous()}, str(tmp / "inverse_featurizer"),
                  metadata={**meta, "layout": "h = f @ weight.T"})
        (tmp / "indices").write_text(json.dumps(list(range(result.dim))))
    staged = folder / f".{name}.tmp"
    for part in ("featurizer", "inverse_featurizer", "indices"):
        (staged / part).replace(folder / f"{name}_{part}")
    staged.rmdir()
    return folder
