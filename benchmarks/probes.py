"""Benchmark: batched linear probes against a scikit-learn loop.

On a zoo model (default ``zoo:add-5d``) it caches the residual stream (resid_pre
and resid_mid of every layer, the final resid_post) at every position, then
fits one probe per (site, position) for one target, in one process:

- ``LinearProbe`` on all problems at once (one call; binary logistic by damped
  Newton with lagged Hessians, ridge by one float64 Gram matrix and Cholesky solve
  per problem with the standardisation folded in, problems processed in
  cache-sized chunks),
- a loop of scikit-learn fits (``StandardScaler`` + ``LogisticRegression`` or
  ``Ridge``), one per problem, with the same penalty (``C = 1 / (l2 n)``,
  ``alpha = l2 n``), the same data and the same split; ``tol=1e-8`` so
  scikit-learn's lbfgs reaches the optimum (at its default ``tol=1e-4`` it stops
  up to 8 accuracy points away on weakly penalised problems).

Both sides get the same train/test arrays (the split is taken once, outside
the timings), run on one thread (torch and, through threadpoolctl, the BLAS
that numpy/scipy use: with its default threads on a shared 2-core machine
scikit-learn's BLAS oversubscribes and slows by an order of magnitude, which
would flatter the ratio), and alternate for ``--repeats`` rounds. It prints
each round's CPU times and the median ratio, and the largest difference in
held-out accuracy (or R²). Absolute times on a shared machine are noise; read
the ratio.

    python benchmarks/probes.py [--model zoo:add-5d] [--n 2000] [--target SC_2] [--kind logistic]

Measured numbers are in docs/methods/representations.md.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from arithinterp.methods.probe_sweep import cache_resid, resid_sites, split_prompts
from arithinterp.methods.probes import LinearProbe
from arithinterp.models import load_model
from arithinterp.tasks import TaskSpec, generate, tokenize


def sklearn_loop(X_train, y_train, X_test, y_test, kind: str, l2: float) -> np.ndarray:
    out = np.empty(X_train.shape[:2])
    n = X_train.shape[2]
    for i in range(X_train.shape[0]):
        for j in range(X_train.shape[1]):
            scaler = StandardScaler().fit(X_train[i, j])
            Xtr, Xte = scaler.transform(X_train[i, j]), scaler.transform(X_test[i, j])
            if kind == "logistic":
                est = LogisticRegression(C=1 / (l2 * n), tol=1e-8, max_iter=10_000).fit(Xtr, y_train)
            else:
                est = Ridge(alpha=l2 * n).fit(Xtr, y_train)
            out[i, j] = est.score(Xte, y_test)
    return out


def batched(X_train, y_train, X_test, y_test, kind: str, l2: float) -> np.ndarray:
    return LinearProbe(kind, l2=l2).fit(X_train, y_train).score(X_test, y_test)


def streamed(X_train, y_train, X_test, y_test, kind: str, l2: float) -> np.ndarray:
    """Ridge from sufficient statistics (float32 Gram, one factorisation; probe_stream.py)."""
    from arithinterp.methods.probe_stream import StreamedProbe
    from arithinterp.methods.probes import score_predictions

    pred = StreamedProbe(kind, l2=l2).fit(X_train, y_train).predict(X_test)
    return score_predictions(pred, np.broadcast_to(y_test, pred.shape), kind)


def _timed(fn, *args) -> tuple[np.ndarray, float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn(*args)
    return out, time.process_time() - cpu, time.perf_counter() - wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="zoo:add-5d")
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--digits", type=int, default=5)
    parser.add_argument("--target", default="SC_2")
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
    y = prompts.frame[args.target].to_numpy()
    y = y.astype(np.int64) if args.kind == "logistic" else y.astype(float)
    train, test = split_prompts(prompts, test_fraction=0.25, split="random", seed=0)
    data = (np.ascontiguousarray(X[:, :, train]), y[train], np.ascontiguousarray(X[:, :, test]), y[test],
            args.kind, args.l2)
    print(f"{args.model}: {X.shape[0]} sites x {X.shape[1]} positions = {X.shape[0] * X.shape[1]} "
          f"probes, {len(train)} train / {len(test)} test prompts, d = {X.shape[-1]}, "
          f"target {args.target} ({args.kind}), one thread")

    ratios, gram_ratios = [], []
    # the streamed fit reads float32 activations as they come from the model
    stream_data = (torch.as_tensor(data[0]).float(), data[1], torch.as_tensor(data[2]).float(), *data[3:])
    with threadpool_limits(1):
        for r in range(args.repeats):
            ours, c_ours, w_ours = _timed(batched, *data)
            oracle, c_sk, w_sk = _timed(sklearn_loop, *data)
            ratios.append(c_sk / c_ours)
            print(f"round {r}: batched {c_ours:6.2f} s cpu ({w_ours:6.2f} wall)   scikit-learn "
                  f"{c_sk:6.2f} s cpu ({w_sk:6.2f} wall)   ratio {ratios[-1]:5.1f}x")
            if args.kind == "ridge":
                gram, c_gram, _ = _timed(streamed, *stream_data)
                gram_ratios.append(c_sk / c_gram)
                print(f"         streamed Gram ridge {c_gram:6.2f} s cpu   ratio {gram_ratios[-1]:5.1f}x   "
                      f"max |score diff| vs scikit-learn {np.abs(gram - oracle).max():.1e}")
    print(f"speed-up (median cpu) : {np.median(ratios):5.1f}x  (rounds: "
          f"{', '.join(f'{x:.1f}' for x in ratios)}; target >= 10x)")
    if gram_ratios:
        print(f"streamed Gram ridge   : {np.median(gram_ratios):5.1f}x  (rounds: "
              f"{', '.join(f'{x:.1f}' for x in gram_ratios)})")
    print(f"max |score diff|      : {np.abs(ours - oracle).max():.1e}")
    cell = np.unravel_index(ours.argmax(), ours.shape)
    print(f"best cell             : {labels[cell[0]]} pos {cell[1]}, score {ours.max():.3f}")


if __name__ == "__main__":
    main()
