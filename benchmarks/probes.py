"""Benchmark: batched linear probes against a scikit-learn loop.

On a zoo model (default ``zoo:add-5d``) it caches the residual stream (resid_pre
and resid_mid of every layer, the final resid_post) at every position, then
fits one probe per (target, site, position), in one process:

- ours: binary logistic probes with ``LinearProbe`` on all problems of a target at once
  (damped Newton with lagged Hessians); ridge probes with ``fit_ridge_targets``, all
  problems and all targets in one call (one float64 Gram matrix and one Cholesky
  factorisation per problem, shared by the targets, the standardisation folded in,
  problems processed in cache-sized chunks);
- the peer: a loop of scikit-learn fits (``StandardScaler`` + ``LogisticRegression`` or
  ``Ridge``), one per (target, site, position), with the same penalty (``C = 1 / (l2 n)``,
  ``alpha = l2 n``), the same data and the same split; ``tol=1e-8`` so
  scikit-learn's lbfgs reaches the optimum (at its default ``tol=1e-4`` it stops
  up to 8 accuracy points away on weakly penalised problems).

Targets: ``--targets`` (comma-separated columns of the task); by default ``SC_2`` for
logistic probes and, for ridge, the targets the report probes (the answer digits and the
carries, ``probe_targets``). For ridge it also times scikit-learn's own multi-output
``Ridge`` (one fit per (site, position) for all targets, which shares its factorisation
too) and prints that ratio beside the loop's.

Both sides get the same train/test arrays (the split is taken once, outside
the timings), run on one thread (torch and, through threadpoolctl, the BLAS
that numpy/scipy use: with its default threads on a shared 2-core machine
scikit-learn's BLAS oversubscribes and slows by an order of magnitude, which
would flatter the ratio), and alternate for ``--repeats`` rounds. It prints
each round's CPU times and the median ratio, and the largest difference in
held-out accuracy (or R²). Absolute times on a shared machine are noise; read
the ratio.

    python benchmarks/probes.py [--model zoo:add-5d] [--n 2000] [--targets SC_2] [--kind logistic]

Measured numbers are in docs/methods/representations.md.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.metrics import r2_score
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from arithinterp.methods.probe_analyses import probe_targets
from arithinterp.methods.probe_sweep import cache_resid, resid_sites, split_prompts
from arithinterp.methods.probes import LinearProbe, fit_ridge_targets, score_predictions
from arithinterp.models import load_model
from arithinterp.tasks import TaskSpec, generate, tokenize


def sklearn_loop(X_train, Y_train, X_test, Y_test, kind: str, l2: float) -> np.ndarray:
    """Scores ``[target, site, pos]``: one scikit-learn fit per (target, site, position)."""
    out = np.empty((Y_train.shape[1], *X_train.shape[:2]))
    n = X_train.shape[2]
    for t in range(Y_train.shape[1]):
        for i in range(X_train.shape[0]):
            for j in range(X_train.shape[1]):
                scaler = StandardScaler().fit(X_train[i, j])
                Xtr, Xte = scaler.transform(X_train[i, j]), scaler.transform(X_test[i, j])
                if kind == "logistic":
                    est = LogisticRegression(C=1 / (l2 * n), tol=1e-8, max_iter=10_000).fit(Xtr, Y_train[:, t])
                else:
                    est = Ridge(alpha=l2 * n).fit(Xtr, Y_train[:, t])
                out[t, i, j] = est.score(Xte, Y_test[:, t])
    return out


def sklearn_multi_output(X_train, Y_train, X_test, Y_test, kind: str, l2: float) -> np.ndarray:
    """Ridge only: one multi-output scikit-learn ``Ridge`` per (site, position) for all targets."""
    out = np.empty((Y_train.shape[1], *X_train.shape[:2]))
    n = X_train.shape[2]
    for i in range(X_train.shape[0]):
        for j in range(X_train.shape[1]):
            scaler = StandardScaler().fit(X_train[i, j])
            est = Ridge(alpha=l2 * n).fit(scaler.transform(X_train[i, j]), Y_train)
            pred = est.predict(scaler.transform(X_test[i, j]))
            out[:, i, j] = r2_score(Y_test, pred, multioutput="raw_values")
    return out


def batched(X_train, Y_train, X_test, Y_test, kind: str, l2: float) -> np.ndarray:
    if kind == "ridge":
        probes = fit_ridge_targets(X_train, list(Y_train.T), l2=l2)
    else:
        probes = [LinearProbe(kind, l2=l2).fit(X_train, y) for y in Y_train.T]
    return np.stack([probe.score(X_test, y) for probe, y in zip(probes, Y_test.T)])


def streamed(X_train, Y_train, X_test, Y_test, kind: str, l2: float) -> np.ndarray:
    """Ridge from sufficient statistics (float32 Gram, one factorisation; probe_stream.py)."""
    from arithinterp.methods.probe_stream import GramRidge

    x, y = X_train.flatten(0, 1), torch.as_tensor(Y_train).unsqueeze(0)
    stats = GramRidge()
    for start in range(0, x.shape[1], 1024):  # in chunks of samples, as StreamedProbe does
        stats.update(x[:, start:start + 1024], y[:, start:start + 1024])
    pred = stats.solve(l2).predict(X_test.flatten(0, 1))
    return np.stack([score_predictions(pred[..., t].numpy(), Y_test[:, t], "ridge").reshape(X_train.shape[:2])
                     for t in range(Y_train.shape[1])])


def _timed(fn, *args) -> tuple[np.ndarray, float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn(*args)
    return out, time.process_time() - cpu, time.perf_counter() - wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="zoo:add-5d")
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--digits", type=int, default=5)
    parser.add_argument("--targets", default=None,
                        help="comma-separated task columns (default: SC_2 for logistic, the report's probe "
                             "targets for ridge)")
    parser.add_argument("--kind", choices=["logistic", "ridge"], default="logistic")
    parser.add_argument("--l2", type=float, default=1e-3)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)

    model = load_model(args.model)
    prompts = generate(TaskSpec(operation="add", digits=args.digits, format="fixed", n=args.n, seed=0))
    tokens = tokenize(prompts, model.tokenizer).tokens
    sites, labels = resid_sites(model)
    X = cache_resid(model, tokens, sites, range(tokens.shape[1])).double().numpy()
    targets = args.targets.split(",") if args.targets else (["SC_2"] if args.kind == "logistic"
                                                              else probe_targets(prompts))
    Y = prompts.frame[targets].to_numpy()
    Y = Y.astype(np.int64) if args.kind == "logistic" else Y.astype(float)
    train, test = split_prompts(prompts, test_fraction=0.25, split="random", seed=0)
    data = (np.ascontiguousarray(X[:, :, train]), Y[train], np.ascontiguousarray(X[:, :, test]), Y[test],
            args.kind, args.l2)
    print(f"{args.model}: {len(targets)} targets x {X.shape[0]} sites x {X.shape[1]} positions = "
          f"{len(targets) * X.shape[0] * X.shape[1]} probes, {len(train)} train / {len(test)} test prompts, "
          f"d = {X.shape[-1]}, {args.kind}, one thread; targets {', '.join(targets)}")

    ratios, multi_ratios, gram_ratios = [], [], []
    # the streamed fit reads float32 activations as they come from the model
    stream_data = (torch.as_tensor(data[0]).float(), data[1], torch.as_tensor(data[2]).float(), *data[3:])
    with threadpool_limits(1):
        for r in range(args.repeats):
            ours, c_ours, w_ours = _timed(batched, *data)
            oracle, c_sk, w_sk = _timed(sklearn_loop, *data)
            ratios.append(c_sk / c_ours)
            print(f"round {r}: batched {c_ours:6.2f} s cpu ({w_ours:6.2f} wall)   scikit-learn loop "
                  f"{c_sk:6.2f} s cpu ({w_sk:6.2f} wall)   ratio {ratios[-1]:5.1f}x")
            if args.kind == "ridge":
                multi, c_multi, _ = _timed(sklearn_multi_output, *data)
                multi_ratios.append(c_multi / c_ours)
                gram, c_gram, _ = _timed(streamed, *stream_data)
                gram_ratios.append(c_sk / c_gram)
                print(f"         scikit-learn multi-output Ridge {c_multi:6.2f} s cpu   ratio "
                      f"{multi_ratios[-1]:5.1f}x   max |score diff| {np.abs(multi - oracle).max():.1e}")
                print(f"         streamed Gram ridge {c_gram:6.2f} s cpu   ratio {gram_ratios[-1]:5.1f}x   "
                      f"max |score diff| vs scikit-learn {np.abs(gram - oracle).max():.1e}")
    print(f"speed-up (median cpu) : {np.median(ratios):5.1f}x  (rounds: "
          f"{', '.join(f'{x:.1f}' for x in ratios)}; target >= 10x)")
    if multi_ratios:
        print(f"vs multi-output Ridge : {np.median(multi_ratios):5.1f}x  (rounds: "
              f"{', '.join(f'{x:.1f}' for x in multi_ratios)})")
        print(f"streamed Gram ridge   : {np.median(gram_ratios):5.1f}x  (rounds: "
              f"{', '.join(f'{x:.1f}' for x in gram_ratios)})")
    print(f"max |score diff|      : {np.abs(ours - oracle).max():.1e}")
    cell = np.unravel_index(ours.argmax(), ours.shape)
    print(f"best cell             : {targets[cell[0]]} at {labels[cell[1]]} pos {cell[2]}, score {ours.max():.3f}")


if __name__ == "__main__":
    main()
