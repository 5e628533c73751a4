"""High-level causal models of the arithmetic tasks: :func:`causal_model` and :class:`CausalModel`.

A causal model is a set of named variables, each computed from its parents by a mechanism,
from the operands down to the answer (Geiger et al.'s causal abstraction; ``shared/METHODS.md``
§17). Evaluated on a prompt with no intervention, every variable equals the task annotation
of the same name (:mod:`arithinterp.tasks.arithmetic`); with an intervention some variables
are set to other values and everything downstream is recomputed, which answers "what is the
output if this variable is set from another input" (the counterfactual label of an
interchange intervention).

Variables, all indexed from the least significant column (``i = 0`` the units):

===========  ===========================================================================
``add``      ``a_digit_i``, ``b_digit_i`` -> ``carry_in_i`` (i >= 1: the carry into
             column i) -> ``answer_digit_i`` (``(a_i + b_i + carry_in_i) mod 10``; the top
             one is the last carry)
``sub``      ``a_digit_i``, ``b_digit_i`` -> ``negative`` (a < b) -> ``borrow_i`` (of
             ``max - min``) -> ``answer_digit_i`` (digits of ``|a - b|``; the sign is
             ``negative``)
``mul``      ``a_digit_i``, ``b_digit_j`` -> ``pp_i_j`` -> ``s_k`` -> ``c_hat_k`` (Bai et
             al.'s running sums) -> ``answer_digit_k = c_hat_k mod 10``
``modadd``   ``operand_a``, ``operand_b`` -> ``raw_sum`` -> ``answer`` (``raw_sum mod p``)
===========  ===========================================================================

MIB's names for 2-digit addition (Mueller et al. 2025) are accepted as aliases
(:data:`MIB_ADDITION_NAMES`: ``op1_ones`` is ``a_digit_0``, ``ones_carry`` is
``carry_in_1``, ``tens_out`` is ``answer_digit_1``...).

:meth:`CausalModel.make_pairs` draws (base, source) pairs for a variable: ``pairs.clean``
is the base input (the run that is intervened on) and ``pairs.corrupt`` the source (whose
value is patched in), every pair changing the variable and the answer.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal

import numpy as np

from arithinterp.errors import MethodError, TaskError
from arithinterp.tasks.formats import answer_text
from arithinterp.tasks.pairs import PromptPairs
from arithinterp.tasks.promptset import PromptSet
from arithinterp.tasks.spec import TaskSpec

__all__ = ["MIB_ADDITION_NAMES", "CausalModel", "CausalVariable", "causal_model"]

Role = Literal["input", "intermediate", "output"]
Values = dict[str, np.ndarray]
Mechanism = Callable[[Values], np.ndarray]

#: MIB's causal-variable names for 2-digit addition -> this package's variable names.
MIB_ADDITION_NAMES: dict[str, str] = {
    "op1_ones": "a_digit_0", "op1_tens": "a_digit_1", "op2_ones": "b_digit_0", "op2_tens": "b_digit_1",
    "ones_carry": "carry_in_1", "ones_out": "answer_digit_0", "tens_out": "answer_digit_1",
    "hundreds_out": "answer_digit_2",
}  # fmt: skip


@dataclass(frozen=True)
class CausalVariable:
    """One variable: its name, parents, role and what it means."""

    name: str
    parents: tuple[str, ...]
    role: Role
    description: str


@dataclass(frozen=True, eq=False)
class CausalModel:
    """Variables with their mechanisms, in an order where parents come first.

    ``answer`` maps every variable's values to the integer answer; ``aliases`` maps other names
    (MIB's) to variables.
    """

    spec: TaskSpec
    variables: tuple[CausalVariable, ...]
    mechanisms: Mapping[str, Mechanism]
    answer: Mechanism
    aliases: Mapping[str, str]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(v.name for v in self.variables)

    def __repr__(self) -> str:
        roles = {r: [v.name for v in self.variables if v.role == r] for r in ("input", "intermediate", "output")}
        body = "; ".join(f"{r}: {', '.join(n)}" for r, n in roles.items() if n)
        return f"CausalModel({self.spec.operation}, {body})"

    def resolve(self, variable: str) -> str:
        """The variable's name (an alias resolved); ``MethodError`` listing the valid ones."""
        name = self.aliases.get(variable, variable)
        if name not in self.names:
            alias = f" or the aliases {', '.join(self.aliases)}" if self.aliases else ""
            raise MethodError(f"the {self.spec.operation} causal model has no variable {variable!r}; "
                              f"valid: {', '.join(self.names)}{alias}")
        return name

    def variable(self, name: str) -> CausalVariable:
        name = self.resolve(name)
        return next(v for v in self.variables if v.name == name)

    def inputs(self, prompts: PromptSet) -> Values:
        """The input variables of each prompt (operand digits, or operands for modadd)."""
        frame = prompts.frame
        return {v.name: frame[v.name].to_numpy(np.int64) for v in self.variables if v.role == "input"}

    def run(self, prompts: PromptSet, interventions: Mapping[str, np.ndarray] | None = None) -> Values:
        """Every variable of every prompt, with ``interventions`` (name -> values) set."""
        interventions = {self.resolve(k): np.asarray(v, dtype=np.int64) for k, v in (interventions or {}).items()}
        values = self.inputs(prompts)
        for var in self.variables:
            if var.name in interventions:
                values[var.name] = np.broadcast_to(interventions[var.name], (len(prompts),)).copy()
            elif var.role != "input":
                values[var.name] = np.asarray(self.mechanisms[var.name](values), dtype=np.int64)
        values["answer"] = np.asarray(self.answer(values), dtype=np.int64)
        return values

    def values(self, prompts: PromptSet, variable: str) -> np.ndarray:
        """One variable's values on ``prompts``."""
        return self.run(prompts)[self.resolve(variable)]

    def counterfactual(self, base: PromptSet, source: PromptSet, variable: str | tuple[str, ...]) -> np.ndarray:
        """The answer of each base prompt with ``variable`` set to its value on the source prompt."""
        names = (variable,) if isinstance(variable, str) else tuple(variable)
        if len(base) != len(source):
            raise MethodError(f"{len(base)} base but {len(source)} source prompts")
        src = self.run(source)
        return self.run(base, {n: src[self.resolve(n)] for n in names})["answer"]

    def answer_texts(self, answers: np.ndarray) -> list[str]:
        """The answer texts the task's format writes for integer answers."""
        return [answer_text(int(y), self.spec) for y in answers]

    def counterfactual_prompts(self, pairs: PromptPairs, variable: str) -> PromptSet:
        """The base prompts with the counterfactual answers (their text and value) in place of their own."""
        answers = self.counterfactual(pairs.clean, pairs.corrupt, variable)
        frame = pairs.clean.to_frame()
        frame["answer"] = answers
        frame["answer_text"] = self.answer_texts(answers)
        return PromptSet.from_frame(pairs.clean.spec, frame)

    def changes(self, pairs: PromptPairs, variable: str) -> np.ndarray:
        """Whether each pair changes ``variable`` (its value differs between base and source)."""
        name = self.resolve(variable)
        return self.values(pairs.clean, name) != self.values(pairs.corrupt, name)

    def make_pairs(self, prompts: PromptSet, variable: str, *, seed: int = 0, tries: int = 64) -> PromptPairs:
        """(base, source) pairs from ``prompts`` that change ``variable`` and the answer.

        Each prompt is a base; its source is drawn from the same set by seeded permutations,
        the first that changes both the variable and the counterfactual answer. Bases with no
        such source in ``tries`` draws are dropped (their ``prompt_id`` in ``pairs.dropped``).
        """
        name = self.resolve(variable)
        if self.variable(name).role == "input" and name not in prompts.frame:
            raise MethodError(f"the prompts have no column {name!r}")
        vals = self.run(prompts)
        rng = np.random.default_rng(seed)
        n = len(prompts)
        source = np.full(n, -1)
        for _ in range(tries):
            todo = np.flatnonzero(source < 0)
            if not len(todo):
                break
            cand = rng.integers(0, n, size=len(todo))
            cf = self.run(prompts[todo], {name: vals[name][cand]})["answer"]
            ok = (vals[name][cand] != vals[name][todo]) & (cf != vals["answer"][todo])
            source[todo[ok]] = cand[ok]
        kept = np.flatnonzero(source >= 0)
        if not len(kept):
            raise MethodError(f"no two prompts of this set differ in {name!r} (and in the answer it gives); "
                              "use more prompts or another variable")
        dropped = tuple(int(i) for i in prompts.frame["prompt_id"].to_numpy()[source < 0])
        return PromptPairs(prompts[kept], prompts[source[kept]], "random", dropped=dropped)


# -- the task models ---------------------------------------------------------------------------------


def _var(name: str, parents: tuple[str, ...], role: Role, description: str) -> CausalVariable:
    return CausalVariable(name, parents, role, description)


def _digit_inputs(w: int) -> list[CausalVariable]:
    return [_var(f"{o}_digit_{i}", (), "input", f"digit {i} of operand {o} (0 = units)")
            for o in ("a", "b") for i in range(w)]


def _place_value(digits: list[np.ndarray]) -> np.ndarray:
    return sum((d * 10**i for i, d in enumerate(digits)), np.zeros_like(digits[0]))


def _addition(spec: TaskSpec) -> CausalModel:
    w = spec.operand_width
    variables = _digit_inputs(w)
    mech: dict[str, Mechanism] = {}

    def carry(i: int) -> Mechanism:
        prev = (lambda v: 0) if i == 1 else (lambda v: v[f"carry_in_{i - 1}"])
        return lambda v: (v[f"a_digit_{i - 1}"] + v[f"b_digit_{i - 1}"] + prev(v)) >= 10

    def digit(i: int) -> Mechanism:
        cin = (lambda v: 0) if i == 0 else (lambda v: v[f"carry_in_{i}"])
        return lambda v: (v[f"a_digit_{i}"] + v[f"b_digit_{i}"] + cin(v)) % 10

    for i in range(1, w + 1):
        parents = (f"a_digit_{i - 1}", f"b_digit_{i - 1}") + ((f"carry_in_{i - 1}",) if i > 1 else ())
        variables.append(_var(f"carry_in_{i}", parents, "intermediate", f"the carry into column {i}"))
        mech[f"carry_in_{i}"] = carry(i)
    for i in range(w):
        parents = (f"a_digit_{i}", f"b_digit_{i}") + ((f"carry_in_{i}",) if i else ())
        variables.append(_var(f"answer_digit_{i}", parents, "output", f"answer digit {i}"))
        mech[f"answer_digit_{i}"] = digit(i)
    variables.append(_var(f"answer_digit_{w}", (f"carry_in_{w}",), "output", f"answer digit {w} (the last carry)"))
    mech[f"answer_digit_{w}"] = lambda v: v[f"carry_in_{w}"]
    answer = lambda v: _place_value([v[f"answer_digit_{i}"] for i in range(w + 1)])  # noqa: E731
    aliases = {k: n for k, n in MIB_ADDITION_NAMES.items() if n in {x.name for x in variables}}
    return CausalModel(spec, tuple(variables), mech, answer, aliases)


def _subtraction(spec: TaskSpec) -> CausalModel:
    w = spec.operand_width
    variables = _digit_inputs(w)
    digits = [f"{o}_digit_{i}" for o in ("a", "b") for i in range(w)]
    mech: dict[str, Mechanism] = {}

    def value(v: Values, o: str) -> np.ndarray:
        return _place_value([v[f"{o}_digit_{i}"] for i in range(w)])

    def ms(v: Values, i: int) -> tuple[np.ndarray, np.ndarray]:
        neg = v["negative"].astype(bool)
        a, b = v[f"a_digit_{i}"], v[f"b_digit_{i}"]
        return np.where(neg, b, a), np.where(neg, a, b)

    def column(v: Values, i: int) -> np.ndarray:
        m, s = ms(v, i)
        return m - s - (v[f"borrow_{i - 1}"] if i else 0)

    variables.append(_var("negative", tuple(digits), "intermediate", "a < b (the answer's sign)"))
    mech["negative"] = lambda v: value(v, "a") < value(v, "b")
    for i in range(w):
        parents = (f"a_digit_{i}", f"b_digit_{i}", "negative") + ((f"borrow_{i - 1}",) if i else ())
        variables.append(_var(f"borrow_{i}", parents, "intermediate",
                              f"column {i} of max - min borrows from column {i + 1}"))
        mech[f"borrow_{i}"] = lambda v, i=i: column(v, i) < 0
    for i in range(w):
        parents = (f"a_digit_{i}", f"b_digit_{i}", "negative") + ((f"borrow_{i - 1}",) if i else ())
        variables.append(_var(f"answer_digit_{i}", parents, "output", f"digit {i} of |a - b|"))
        mech[f"answer_digit_{i}"] = lambda v, i=i: column(v, i) % 10

    def answer(v: Values) -> np.ndarray:
        magnitude = _place_value([v[f"answer_digit_{i}"] for i in range(w)])
        return np.where(v["negative"].astype(bool), -magnitude, magnitude)

    return CausalModel(spec, tuple(variables), mech, answer, {})


def _multiplication(spec: TaskSpec) -> CausalModel:
    w, width = spec.operand_width, spec.answer_width
    variables = _digit_inputs(w)
    mech: dict[str, Mechanism] = {}
    for i in range(w):
        for j in range(w):
            variables.append(_var(f"pp_{i}_{j}", (f"a_digit_{i}", f"b_digit_{j}"), "intermediate",
                                  f"partial product a_{i} b_{j}"))
            mech[f"pp_{i}_{j}"] = lambda v, i=i, j=j: v[f"a_digit_{i}"] * v[f"b_digit_{j}"]
    for k in range(width):
        terms = tuple(f"pp_{i}_{k - i}" for i in range(w) if 0 <= k - i < w)
        variables.append(_var(f"s_{k}", terms, "intermediate", f"column sum of the partial products of column {k}"))
        mech[f"s_{k}"] = lambda v, terms=terms: sum((v[t] for t in terms), np.zeros_like(v["a_digit_0"]))
    for k in range(width):
        parents = (f"s_{k}",) + ((f"c_hat_{k - 1}",) if k else ())
        variables.append(_var(f"c_hat_{k}", parents, "intermediate", f"running sum of column {k}"))
        mech[f"c_hat_{k}"] = lambda v, k=k: v[f"s_{k}"] + (v[f"c_hat_{k - 1}"] // 10 if k else 0)
    for k in range(width):
        variables.append(_var(f"answer_digit_{k}", (f"c_hat_{k}",), "output", f"answer digit {k}"))
        mech[f"answer_digit_{k}"] = lambda v, k=k: v[f"c_hat_{k}"] % 10

    def answer(v: Values) -> np.ndarray:
        digits = [v[f"answer_digit_{k}"] for k in range(width)]
        return _place_value(digits) + (v[f"c_hat_{width - 1}"] // 10) * 10**width

    return CausalModel(spec, tuple(variables), mech, answer, {})


def _modular_addition(spec: TaskSpec) -> CausalModel:
    p = spec.p
    variables = (
        _var("operand_a", (), "input", "the first operand"),
        _var("operand_b", (), "input", "the second operand"),
        _var("raw_sum", ("operand_a", "operand_b"), "intermediate", "a + b before the reduction"),
        _var("answer_mod", ("raw_sum",), "output", f"(a + b) mod {p}"),
    )
    mech: dict[str, Mechanism] = {"raw_sum": lambda v: v["operand_a"] + v["operand_b"],
                                  "answer_mod": lambda v: v["raw_sum"] % p}
    return CausalModel(spec, variables, mech, lambda v: v["answer_mod"], {})


_BUILDERS: dict[str, Callable[[TaskSpec], CausalModel]] = {
    "add": _addition, "sub": _subtraction, "mul": _multiplication, "modadd": _modular_addition,
}


def causal_model(spec: TaskSpec | Mapping[str, object]) -> CausalModel:
    """The high-level causal model of a task spec (``add``, ``sub``, ``mul``, ``modadd``)."""
    spec = TaskSpec.parse(spec)
    if spec.operation not in _BUILDERS:
        raise TaskError(f"no causal model for operation {spec.operation!r}; defined for {', '.join(_BUILDERS)}")
    return _BUILDERS[spec.operation](spec)
