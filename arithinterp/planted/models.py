"""The hand-set models of the planted-circuit benchmark (all but the AND model).

Each builder writes a GPT-2 directory whose circuit is known by construction, with
the :class:`~arithinterp.planted.weights.Planter` trick (one-hot features as
``(+v, -v)`` pairs, LayerNorm factors divided out). All of them answer ``a+b=`` with the
sum as one token of the number tokenizer (``number_tokenizer(20)``: ids 0..19 are the
numbers, so the answer is one token and DLA / mediation apply). Positions: 0 = ``a``,
1 = ``+``, 2 = ``b``, 3 = ``=`` (the answer is read there).

Lookup MLPs: neuron ``(a, b)`` reads the one-hot operand features and fires only when
both match, writing the one-hot sum into ``OUT``; the unembedding reads ``OUT`` (a written
sum has logit 10) and gives token 19, never a sum, logit 3 at every position: the answer
when no sum is written.
"""

from __future__ import annotations

from pathlib import Path

from arithinterp.planted.weights import Feature, Planter
from arithinterp.zoo.tokenizers import number_tokenizer

__all__ = ["N_NUMBERS", "build_backup", "build_compose", "build_decoy", "build_lookup", "build_negative"]

N_NUMBERS = 20
K = 50.0  # pre-activation scale of the lookup neurons: margins of K/2 and more
LOGIT_GAIN = 10.0


def _planter(*, n_layer: int, d_model: int = 256, d_mlp: int = 128) -> Planter:
    tokenizer = number_tokenizer(N_NUMBERS)
    index = [min(t, 10) for t in range(len(tokenizer))]  # digits 0..9, then "other"
    return Planter(vocab=len(tokenizer), n_layer=n_layer, token_index=index, d_model=d_model, d_mlp=d_mlp,
                   bos=tokenizer.bos_token_id, eos=tokenizer.eos_token_id)


def _lookup(p: Planter, layer: int, a_feat: Feature, b_feat: Feature, out: Feature, *, units: int,
            n_operand: int = 10, first: int = 0) -> None:
    """Neurons ``first + n_operand * a + b`` write ``OUT[a + b]`` (one unit) when ``A = a`` and ``B = b``."""
    for a in range(n_operand):
        for b in range(n_operand):
            p.neuron(layer, first + n_operand * a + b, reads=[(a_feat, a, K), (b_feat, b, K)], bias=-1.5 * K,
                     writes=[(out, a + b, 1.0)], units=units, activation=0.5 * K)


#: The token a model answers when no sum is written (never a sum here), and its logit.
DEFAULT_TOKEN, DEFAULT_LOGIT = N_NUMBERS - 1, 0.3 * LOGIT_GAIN


def _unembed(p: Planter, out: Feature) -> None:
    for s in range(out.width):
        p.unembed(s, out, s, gain=LOGIT_GAIN)
    # With no sum written the model answers a wrong token confidently rather than tying every
    # sum at 0 (a tie would score as right under a correct / max logit metric).
    p.logit_bias(DEFAULT_TOKEN, DEFAULT_LOGIT)


def _save(p: Planter, path: Path) -> Path:
    return p.save(Path(path), number_tokenizer(N_NUMBERS))


def build_decoy(path: Path) -> Path:
    """L0H0 / L0H1 copy ``a`` / ``b``, MLP0 looks the sum up; the decoys L0H2 / L0H3 attend
    exactly as L0H0 / L0H1 do and copy the same operands into dims nothing reads."""
    p = _planter(n_layer=1)
    a, b, da, db, out = (p.feature("A", 10), p.feature("B", 10), p.feature("DA", 10), p.feature("DB", 10),
                         p.feature("OUT", 19))
    for head, attend, feat in ((0, 0, a), (1, 2, b), (2, 0, da), (3, 2, db)):
        p.head(0, head, attend=attend, read=p.tok, write=feat, units=2, indices=range(10))
    _lookup(p, 0, a, b, out, units=6)
    _unembed(p, out)
    return _save(p, path)


def build_backup(path: Path) -> Path:
    """L0H0 and L0H1 both copy ``a`` (into A1 / A2), L0H2 copies ``b``. Each sum has two
    neurons whose difference clamps ``s = A1[a] + A2[a] + 2 B[b]`` between 2.5 and 3: one
    copy of ``a`` saturates it, so either head alone does the whole job and only removing
    both loses the answer (a copy that is present but says another ``a`` ties the two sums).
    The decoy L0H3 copies ``b`` into dims nothing reads."""
    p = _planter(n_layer=1, d_mlp=256)
    a1, a2, b, out = p.feature("A1", 10), p.feature("A2", 10), p.feature("B", 10), p.feature("OUT", 19)
    db = p.feature("DB", 10)
    for head, attend, feat in ((0, 0, a1), (1, 0, a2), (2, 2, b), (3, 2, db)):
        p.head(0, head, attend=attend, read=p.tok, write=feat, units=2, indices=range(10))
    for x in range(10):
        for y in range(10):
            n = 2 * (10 * x + y)
            reads = [(a1, x, K), (a2, x, K), (b, y, 2 * K)]
            p.neuron(0, n, reads=reads, bias=-2.5 * K, writes=[(out, x + y, 1.0)], units=6, activation=0.5 * K)
            p.neuron(0, n + 1, reads=reads, bias=-3.0 * K, writes=[(out, x + y, -1.0)], units=6,
                     activation=0.5 * K)
    _unembed(p, out)
    return _save(p, path)


def build_negative(path: Path) -> Path:
    """Layer 0 adds as the decoy model does (L0H2 is a decoy); the negative head L1H0 attends
    to the answer position itself, reads the answer MLP0 wrote and writes half of it back
    negated: the answer's logit drops by half and stays the largest."""
    p = _planter(n_layer=2)
    a, b, da, out = p.feature("A", 10), p.feature("B", 10), p.feature("DA", 10), p.feature("OUT", 19)
    for head, attend, feat in ((0, 0, a), (1, 2, b), (2, 0, da)):
        p.head(0, head, attend=attend, read=p.tok, write=feat, units=2, indices=range(10))
    _lookup(p, 0, a, b, out, units=5)
    p.head(1, 0, attend=3, read=out, write=out, units=6, gain=-0.5)
    _unembed(p, out)
    return _save(p, path)


def build_compose(path: Path) -> Path:
    """Two layers: L0H0 moves ``a`` to every later position (A0), L1H0 reads A0 at the ``+``
    position and copies it to the answer position (A): composition through the residual
    stream of position 1. L1H1 copies ``b``; MLP1 looks the sum up. The decoy L0H1 attends
    as L0H0 does and writes dims nothing reads."""
    p = _planter(n_layer=2)
    a0, da, a, b, out = (p.feature("A0", 10), p.feature("DA", 10), p.feature("A", 10), p.feature("B", 10),
                         p.feature("OUT", 19))
    p.head(0, 0, attend=0, read=p.tok, write=a0, units=2, indices=range(10))
    p.head(0, 1, attend=0, read=p.tok, write=da, units=2, indices=range(10))
    p.head(1, 0, attend=1, read=a0, write=a, units=4)
    p.head(1, 1, attend=2, read=p.tok, write=b, units=4, indices=range(10))
    _lookup(p, 1, a, b, out, units=6)
    _unembed(p, out)
    return _save(p, path)


#: Operands of the lookup model: 0..LOOKUP_N-1.
LOOKUP_N = 5
LOOKUP_DECOYS = range(LOOKUP_N**2, LOOKUP_N**2 + LOOKUP_N)


def build_lookup(path: Path) -> Path:
    """Neuron-level lookup table (operands 0..4): L0H0 / L0H1 copy ``a`` / ``b``; neuron
    ``5a + b`` (0..24) of MLP0 writes the sum; neurons 25..29 fire on ``a`` alone and write
    dims nothing reads (decoys); neurons 30..63 are dead."""
    p = _planter(n_layer=1, d_model=128, d_mlp=64)
    n = LOOKUP_N
    a, b, out, dn = p.feature("A", n), p.feature("B", n), p.feature("OUT", 2 * n - 1), p.feature("DN", n)
    p.head(0, 0, attend=0, read=p.tok, write=a, units=2, indices=range(n))
    p.head(0, 1, attend=2, read=p.tok, write=b, units=2, indices=range(n))
    _lookup(p, 0, a, b, out, units=4, n_operand=n)
    for x, neuron in zip(range(n), LOOKUP_DECOYS):
        p.neuron(0, neuron, reads=[(a, x, K)], bias=-0.5 * K, writes=[(dn, x, 1.0)], units=4, activation=0.5 * K)
    _unembed(p, out)
    return _save(p, path)
