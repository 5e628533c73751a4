"""GPU smoke test: the main job and two sweeps of GPT-2-small size on one accelerator.

Run on a machine with one GPU (about 5 minutes at most; it prints its numbers as it goes):

    python benchmarks/gpu_smoke.py               # device cuda when available, else the CPU fallback
    python benchmarks/gpu_smoke.py --cpu-fallback  # the tiny CPU version CI runs

1. **The main job**: ``experiments/quickstart.yaml`` (the shipped 5-digit adder: evaluation,
   logit lens, the attribution report with its circuit) with ``device`` set, on both
   backends' default (TransformerLens).
2. **An exact head x position sweep** of a GPT-2-small-sized model (12 layers, d_model 768,
   12 heads, d_mlp 3072, random weights, a word-level vocabulary; nothing is downloaded) on
   both backends: activation patching of every head at every position.
3. **AtP over all neurons** of the same model (12 x 3072 neurons x positions), both backends.

For each it prints the seconds, the device, and for the sweeps the largest difference
between the backends (they must agree) and the cells per second. The CPU fallback runs
the same code on a 2-layer, 64-wide model and a 100-prompt quickstart, so CI checks that
the script runs; its times mean nothing.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from arithinterp.methods import attribution_patch, patch_activations
from arithinterp.methods.metrics import PairBatch
from arithinterp.models import load_model
from arithinterp.pipeline import load_config, run_pipeline

ROOT = Path(__file__).resolve().parent.parent
VOCAB, SEQ = 512, 16
SIZES = {  # n_layer, n_embd, n_head, n_inner, pairs
    "gpt2-small": (12, 768, 12, 3072, 64),
    "tiny": (2, 64, 4, 256, 8),
}


def build_model(path: Path, size: str) -> None:
    """A random GPT-2 of ``size`` with a word-level tokenizer, saved as a Hugging Face directory."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    n_layer, n_embd, n_head, n_inner, _ = SIZES[size]
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=VOCAB, n_positions=64, n_embd=n_embd, n_layer=n_layer, n_head=n_head,
                     n_inner=n_inner, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                     bos_token_id=0, eos_token_id=0)
    GPT2LMHeadModel(cfg).save_pretrained(path)
    tok = Tokenizer(models.WordLevel(vocab={f"t{i}": i for i in range(VOCAB)}, unk_token="t0"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="t0").save_pretrained(path)


def make_batch(n: int, device: str) -> PairBatch:
    g = torch.Generator().manual_seed(n)
    clean = torch.randint(0, VOCAB, (n, SEQ), generator=g)
    corrupt = clean.clone()
    corrupt[:, 3] = torch.randint(0, VOCAB, (n,), generator=g)
    answers = torch.randint(0, VOCAB, (n, 2), generator=g)
    return PairBatch(clean.to(device), corrupt.to(device), answers[:, :1].to(device), answers[:, 1:].to(device),
                     torch.tensor([SEQ - 1]), tuple(f"t{i}" for i in clean[0].tolist()))


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(device: str, fn):
    sync(device)
    start = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - start, out


def main_job(device: str, fallback: bool, runs: Path) -> None:
    overrides = [f"device={device}"] + (["task.n=100"] if fallback else [])
    config = load_config(ROOT / "experiments" / "quickstart.yaml", overrides)
    seconds, summary = timed(device, lambda: run_pipeline(config, runs_dir=runs, progress=False,
                                                          log=lambda _: None))
    print(f"main job (quickstart, {config.task.n if config.task else '?'} prompts): {seconds:.1f} s on "
          f"{device}; {len(summary.results)} results", flush=True)


def sweeps(device: str, size: str, directory: Path) -> None:
    build_model(directory, size)
    batch = make_batch(SIZES[size][4], device)
    outs = {}
    for backend in ("transformer_lens", "nnsight"):
        model = load_model(str(directory), backend=backend, device=device)
        exact_s, exact = timed(device, lambda m=model: patch_activations(
            m, batch, kind="attn_head", per_position=True, normalize=False, n_boot=1,
            batch_size=len(batch), progress=False))
        atp_s, atp = timed(device, lambda m=model: attribution_patch(
            m, batch, kind="mlp_post", per_position=True, normalize=False, n_boot=1, progress=False))
        outs[backend] = (exact, atp)
        print(f"{size} on {device}, {backend}: exact head x position sweep ({exact.values.size} cells, "
              f"{len(batch)} pairs) {exact_s:.1f} s = {exact.values.size / exact_s:.0f} cells/s; "
              f"AtP over all neurons ({atp.values.size} cells) {atp_s:.1f} s", flush=True)
        del model
    (e_tl, a_tl), (e_nn, a_nn) = outs["transformer_lens"], outs["nnsight"]
    print(f"backends agree: exact max|diff| {abs(e_tl.values - e_nn.values).max().item():.2e}, "
          f"AtP max|diff| {abs(a_tl.values - a_nn.values).max().item():.2e}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu-fallback", action="store_true", help="the tiny CPU version (what CI runs)")
    args = parser.parse_args()
    fallback = args.cpu_fallback or not torch.cuda.is_available()
    device = "cpu" if fallback else "cuda"
    if fallback:
        print("no GPU (or --cpu-fallback): the tiny CPU version; its times mean nothing", flush=True)
    else:
        print(f"GPU: {torch.cuda.get_device_name(0)}", flush=True)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        main_job(device, fallback, Path(tmp) / "runs")
        sweeps(device, "tiny" if fallback else "gpt2-small", Path(tmp) / "model")
    print(f"total {time.perf_counter() - start:.1f} s", flush=True)


if __name__ == "__main__":
    main()
