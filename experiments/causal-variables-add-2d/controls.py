"""DAS with its controls at each variable's best site of the causal_variables sweep.

    python experiments/causal-variables-add-2d/controls.py runs/causal-variables-add-2d [--steps 200]

For every variable of the saved sweep, trains a DAS subspace (the sweep's dimension) at the
(layer, position) where the sweep's IIA was highest, on fresh pairs, and prints held-out IIA of
the learned subspace, a random subspace, the full vector and the probe direction.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from arithinterp.methods import das
from arithinterp.models import Site, load_model
from arithinterp.models.site import depth_site
from arithinterp.results import Result
from arithinterp.tasks import TaskSpec, causal_model


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("run", type=Path)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--n-pairs", type=int, default=1024)
    args = parser.parse_args()
    torch.set_num_threads(1)
    sweep = Result.load(args.run / "causal_variables")
    model = load_model(sweep.meta.model if ":" in sweep.meta.model else f"zoo:{sweep.meta.model}")
    spec = TaskSpec(operation="add", operand_range=(0, 99), format="fixed")
    cm = causal_model(spec)
    n = model.shape.n_layers
    print(f"{'variable':<14} {'site':<12} {'dim':>3}  {'das':>5} {'random':>6} {'full':>5} {'probe':>5}  probe acc")
    for row in sweep.best().itertuples():
        site = depth_site(row.layer, n).at(row.pos)
        res = das(model, cm, variable=row.target, site=Site.from_label(site.label), dim=sweep.dim,
                  steps=args.steps, n_pairs=args.n_pairs)
        v = res.values.to_series()
        print(f"{row.target:<14} {site.label:<12} {res.dim:>3}  {v['das']:5.3f} {v['random_rotation']:6.3f} "
              f"{v['full_vector']:5.3f} {v['probe_direction']:5.3f}  {row.probe_at_best:.3f}")


if __name__ == "__main__":
    main()
