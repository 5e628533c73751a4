"""Arithmetic prompts with ground truth, counterfactual pairs and tokenization.

>>> from arithinterp.tasks import TaskSpec, generate, make_pairs
>>> ps = generate(TaskSpec(operation="add", digits=5, format="fixed", n=8))
>>> ps.prompts[0], ps.answers[0]
('86556+25774=', '112330')
>>> pairs = make_pairs(ps, "digit", column=0)

Column annotations are always indexed from the least significant digit
(``a_digit_0`` is the units digit), whatever order the format writes.
See :mod:`.spec` for formats, :mod:`.promptset` for the frame's columns,
:mod:`.arithmetic` for the carry / borrow / running-sum definitions,
:mod:`.sampling` for carry-balanced sampling, :mod:`.pairs` for
counterfactuals and :mod:`.tokenization` for tokenizer checks.
"""

from arithinterp.tasks.arithmetic import BORROW_CLASSES, COMPLEXITY_CLASSES
from arithinterp.tasks.causal import CausalModel, CausalVariable, causal_model
from arithinterp.tasks.pairs import PAIR_KINDS, PairKind, PromptPairs, make_pairs
from arithinterp.tasks.promptset import PromptSet, generate, model_task
from arithinterp.tasks.spec import (
    FORMATS,
    OPERATIONS,
    SYMBOLS,
    Format,
    Operation,
    Sampling,
    TaskSpec,
)
from arithinterp.tasks.tokenization import (
    NumberTokenInfo,
    NumberTokenization,
    TokenizedPrompts,
    answer_token_ids,
    detect_number_tokenization,
    group_by_length,
    shared_tokenization,
    single_token_id,
    tokenize,
)

__all__ = [
    "BORROW_CLASSES",
    "COMPLEXITY_CLASSES",
    "CausalModel",
    "CausalVariable",
    "causal_model",
    "FORMATS",
    "OPERATIONS",
    "PAIR_KINDS",
    "SYMBOLS",
    "Format",
    "NumberTokenInfo",
    "NumberTokenization",
    "Operation",
    "PairKind",
    "PromptPairs",
    "PromptSet",
    "Sampling",
    "TaskSpec",
    "TokenizedPrompts",
    "answer_token_ids",
    "detect_number_tokenization",
    "shared_tokenization",
    "generate",
    "model_task",
    "group_by_length",
    "make_pairs",
    "single_token_id",
    "tokenize",
]
