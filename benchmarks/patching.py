"""Benchmark: our patching engine against ``transformer_lens.patching``.

Both run in this one process on the same model, prompts and metric: a head x
position sweep of attention-head outputs (384 cells), denoising, logit
difference at the last position. Model: GPT-2 architecture, 4 layers,
d_model 256, 8 heads, d_mlp 1024, random weights; prompts of 12 tokens.

Prints both times, their ratio, the maximum absolute difference, and our
cost in forward-pass equivalents (our time / one plain forward pass of the
same batch through the same backend). Absolute times on a shared machine are
noise; the ratio measured side by side is the number to read.

    python benchmarks/patching.py [--batch 32 1] [--repeats 3]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from transformer_lens import patching as tl_patching

from arithinterp.methods.metrics import PairBatch, logit_diff
from arithinterp.methods.patching import patch_activations
from arithinterp.models import load_model

SEQ = 12
VOCAB = 64


def build_model(path: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=VOCAB, n_positions=64, n_embd=256, n_layer=4, n_head=8, n_inner=1024,
                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0)
    GPT2LMHeadModel(cfg).save_pretrained(path)
    vocab = {f"t{i}": i for i in range(VOCAB)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="t0"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="t0").save_pretrained(path)


def make_batch(n: int, seed: int) -> PairBatch:
    g = torch.Generator().manual_seed(seed)
    clean = torch.randint(0, VOCAB, (n, SEQ), generator=g)
    corrupt = clean.clone()
    corrupt[:, 2] = torch.randint(0, VOCAB, (n,), generator=g)
    corrupt[:, 5] = torch.randint(0, VOCAB, (n,), generator=g)
    answers = torch.randint(0, VOCAB, (n, 2), generator=g)
    return PairBatch(clean, corrupt, answers[:, :1], answers[:, 1:], torch.tensor([SEQ - 1]),
                     tuple(f"t{i}" for i in clean[0].tolist()))


def timed(fn, repeats: int):
    best, out = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def run(batch_size: int, repeats: int, model) -> dict:
    batch = make_batch(batch_size, seed=batch_size)
    bridge = model.backend.bridge

    def metric(logits):
        return logit_diff(logits[:, batch.answer_positions], batch.clean_answer, batch.corrupt_answer).mean()

    def theirs():
        _, cache = bridge.run_with_cache(batch.clean)
        return tl_patching.get_act_patch_attn_head_out_by_pos(bridge, batch.corrupt, cache, metric)

    def ours():
        return patch_activations(model, batch, kind="attn_head", normalize=False, n_boot=1,
                                 batch_size=batch_size, progress=False)

    def one_forward():
        with torch.no_grad():
            return model.logits(batch.corrupt)

    t_tl, tl_out = timed(theirs, repeats)
    t_ours, our_out = timed(ours, repeats)
    t_fwd, _ = timed(one_forward, max(repeats, 5))
    diff = (torch.as_tensor(our_out.values.transpose("layer", "pos", "head").values) - tl_out.double()).abs().max()
    return {"batch": batch_size, "cells": tl_out.numel(), "tl_s": t_tl, "ours_s": t_ours,
            "speedup": t_tl / t_ours, "max_abs_diff": float(diff),
            "tl_forward_equivalents": t_tl / t_fwd, "our_forward_equivalents": t_ours / t_fwd}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, nargs="+", default=[32, 1])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        build_model(Path(tmp))
        model = load_model(tmp)
        print(f"{'batch':>5} {'cells':>5} {'TL s':>8} {'ours s':>8} {'speedup':>8} {'max|diff|':>10} "
              f"{'TL fwd-eq':>9} {'our fwd-eq':>10}")
        for b in args.batch:
            r = run(b, args.repeats, model)
            print(f"{r['batch']:>5} {r['cells']:>5} {r['tl_s']:>8.3f} {r['ours_s']:>8.3f} {r['speedup']:>7.1f}x "
                  f"{r['max_abs_diff']:>10.2e} {r['tl_forward_equivalents']:>9.0f} {r['our_forward_equivalents']:>10.1f}")


if __name__ == "__main__":
    main()
