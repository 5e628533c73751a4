"""Streamed probes: ridge and circular probes from sufficient statistics equal LinearProbe's
fit, the site-by-site sweep equals the all-at-once sweep, and its peak memory grows with one
site's activations, not with all of them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from arithinterp.methods import fit_probes
from arithinterp.methods.probe_stream import GramRidge, StreamedProbe
from arithinterp.methods.probes import LinearProbe
from arithinterp.models import load_model
from arithinterp.tasks import TaskSpec, generate


def _problems(seed: int = 0, p: int = 6, n: int = 700, d: int = 24):
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(p, d, d, generator=g) / d**0.5
    x = (torch.randn(p, n, d, generator=g) @ mix) * 3 + 5 * torch.randn(p, 1, d, generator=g)
    x[:, :, 3] = 7.0  # a constant feature keeps scale 1, as in LinearProbe
    w = torch.randn(p, d, generator=g)
    y = (x @ w.unsqueeze(-1)).squeeze(-1) + torch.randn(p, n, generator=g)
    return x.float(), y.double()


@pytest.mark.parametrize("chunk", [64, 700])
def test_gram_ridge_equals_linear_probe(chunk):
    x, y = _problems()
    ours = StreamedProbe("ridge", l2=1e-2, chunk=chunk).fit(x[:, :500], y[:, :500])
    ref = LinearProbe("ridge", l2=1e-2).fit(x[:, :500].double(), y[:, :500])
    torch.testing.assert_close(ours.fit_.mean, torch.as_tensor(ref.mean_), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(ours.fit_.scale, torch.as_tensor(ref.scale_), rtol=1e-5, atol=1e-8)
    # the Gram matrix is formed in float32: coefficients agree to float32 rounding times conditioning;
    # LinearProbe's coef_ is in the input space (scikit-learn's), the streamed fit's standardised
    ref_coef = torch.as_tensor(ref.coef_)
    torch.testing.assert_close(ours.fit_.coef[..., 0] / ours.fit_.scale, ref_coef, rtol=0,
                               atol=1e-3 * float(ref_coef.abs().max()))
    pred, want = ours.predict(x[:, 500:]), ref.predict(x[:, 500:].double())
    np.testing.assert_allclose(pred, want, rtol=1e-5, atol=1e-4 * np.abs(want).max())


def test_one_factorisation_serves_every_target():
    x, y = _problems(1)
    both = torch.stack([y, -2 * y + 1], -1)
    stats = GramRidge()
    stats.update(x, both)
    fit = stats.solve(1e-3)
    single = GramRidge()
    single.update(x, y.unsqueeze(-1))
    torch.testing.assert_close(fit.coef[..., :1], single.solve(1e-3).coef)
    torch.testing.assert_close(fit.coef[..., 1], -2 * fit.coef[..., 0])


def test_circular_probe_equals_linear_probe():
    x, _ = _problems(2)
    y = np.random.default_rng(0).integers(0, 10, size=700)
    x = x + torch.as_tensor(np.stack([np.cos(2 * np.pi * y / 10), np.sin(2 * np.pi * y / 10)], -1)
                            ).float().repeat(1, 12).unsqueeze(0) * 4
    ours = StreamedProbe("circular", period=10).fit(x[:, :500], y[:500]).predict(x[:, 500:])
    ref = LinearProbe("circular", period=10).fit(x[:, :500].double(), y[:500]).predict(x[:, 500:].double())
    assert (ours == ref).mean() > 0.995


@pytest.fixture(scope="module")
def model():
    return load_model("zoo:add-5d")


def test_the_streamed_sweep_equals_the_default_one(model, one_intra_op_thread):
    prompts = generate(TaskSpec(operation="add", digits=5, format="fixed", n=160, seed=4))
    common = dict(targets=["SC_2", "operand_a"], positions=[4, 5, 11], n_boot=30, progress=False)
    default = fit_probes(model, prompts, **common)
    streamed = fit_probes(model, prompts, stream=True, **common)
    logistic = {"target": "SC_2"}
    for name in ("ci_low", "ci_high", "control", "selectivity"):
        np.testing.assert_array_equal(streamed.extras[name].sel(logistic).values,
                                      default.extras[name].sel(logistic).values)
    np.testing.assert_array_equal(streamed.values.sel(logistic).values, default.values.sel(logistic).values)
    # ridge R^2 through the float32 Gram matrix: equal to float32 rounding (120 training prompts
    # for 96 features is a badly conditioned problem, the worst case for it)
    np.testing.assert_allclose(streamed.values.values, default.values.values, rtol=0, atol=2e-4)
    np.testing.assert_allclose(streamed.extras["control"].values, default.extras["control"].values, atol=2e-4)
    assert float(streamed.values.sel(target="operand_a").max()) > 0.5  # a real fit, not noise


_MEMORY = textwrap.dedent('''
    import contextlib, json, sys, torch
    torch.set_num_threads(1)
    from arithinterp.methods import fit_probes
    from arithinterp.models import load_model
    from arithinterp.tasks import TaskSpec, generate, shared_tokenization

    def status(key):
        for line in open("/proc/self/status"):
            if line.startswith(key):
                return int(line.split()[1]) * 1024

    stream, n = sys.argv[1] == "stream", int(sys.argv[2])
    positions = [int(p) for p in sys.argv[3].split(",")]
    model = load_model("zoo:add-5d")
    with shared_tokenization():
        prompts = generate(TaskSpec(operation="add", digits=5, format="fixed", n=n, seed=0))
        common = dict(targets=["operand_a"], positions=positions, control=False, n_boot=0, progress=False)
        warm = generate(TaskSpec(operation="add", digits=5, format="fixed", n=300, seed=1))
        fit_probes(model, warm, stream=stream, **common)
        from arithinterp.tasks import tokenize
        tokenize(prompts, model.tokenizer, answer="multi")
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM, the peak resident set, to the current one
        base = status("VmRSS")
        fit_probes(model, prompts, stream=stream, **common)
        peak = status("VmHWM")
    print(json.dumps({"layer": n * len(positions) * model.shape.d_model * 4, "peak": peak - base}))
''')


def _peak(mode: str, n: int, positions: str) -> dict:
    # glibc serves every allocation over 128 KiB by mmap and returns it on free (a fixed threshold
    # turns off its adaptive one), so the resident set follows live memory, not what the allocator
    # happened to keep from earlier work; the hash seed fixes the rest of the run
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_TRIM_THRESHOLD_": "131072",
           "PYTHONHASHSEED": "0"}
    out = subprocess.run([sys.executable, "-c", _MEMORY, mode, str(n), positions], capture_output=True,
                         text=True, env=env, timeout=600, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="needs Linux's peak-RSS reset")
def test_streamed_peak_memory_grows_with_one_layer_not_all():
    """Peak resident memory above the loaded model, for 6,000 prompts, 1 and then 8 positions:
    the extra positions add one site's activations (plus what the chunks cost), at most 2x
    that; the all-at-once sweep adds every site's activations, in float32 and float64."""
    small, large = _peak("stream", 6000, "5"), _peak("stream", 6000, "5,6,10,11,12,13,14,15")
    grown = large["layer"] - small["layer"]
    assert large["peak"] - small["peak"] <= 2 * grown, (small, large)
    full = _peak("full", 6000, "5,6,10,11,12,13,14,15")
    assert full["peak"] - small["peak"] > 6 * grown, full  # 5 sites x (1 float32 + 2 float64 copies)
