"""One registry of analysis methods, read by the pipeline, the report, the dashboard and the tests.

A method is declared once, beside its function, with :func:`register`::

    register(MethodSpec(
        name="patching", function=patch_activations, inputs="pairs", result=PatchingResult,
        options=PatchingOptions,                       # or None: generated from the signature
        report=ReportView(run=..., columns=(...), figures={...}),
        panels=(Panel("patching_heads", "Activation patching"),),
    ))

and every orchestration layer reads that declaration:

- the pipeline: ``{kind: patching, ...}`` in a YAML validates against ``spec.options``
  and runs ``spec.run(ctx, options)`` (:mod:`arithinterp.pipeline`);
- the report: ``build_report(methods=[...])`` runs ``spec.report.run(ctx)``, adds
  ``spec.report.columns`` to its head/neuron tables and ``spec.report.figures`` to its page;
- the dashboard: ``spec.panels`` in a component's detail;
- the conformance tests: every ``spec.result`` class.

A :class:`RunContext` carries what every method runs on (model, task, prompts, pairs, seed)
and memoises tokenization and results, so one report or pipeline run tokenizes each prompt
set once and reuses a sweep another method already ran.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, create_model

from arithinterp.errors import ArithInterpError, ConfigError
from arithinterp.methods.metrics import tokenize_pairs
from arithinterp.models import Model, Site
from arithinterp.tasks import PromptPairs, PromptSet, TaskSpec, generate, tokenize

__all__ = [
    "CONTEXT_PARAMETERS",
    "MethodSpec",
    "NotApplicable",
    "Options",
    "Panel",
    "ReportColumn",
    "ReportView",
    "RunContext",
    "check_layer",
    "check_options",
    "get_method",
    "method_names",
    "methods",
    "options_model",
    "register",
    "registered",
    "read_extra",
    "site_values",
    "unregister",
]

InputKind = Literal["prompts", "pairs", "grid", "model"]
"""What a method runs on: the task's prompts, clean/corrupt pairs, the whole operand grid
(every ``(a, b)`` of a small domain), or the model's weights alone."""

#: Names a pipeline step uses itself (``kind: patching``, ``name:``, ``task:``, ``pairs:``).
RESERVED_OPTIONS = frozenset({"kind", "name", "task", "pairs"})

#: Parameters orchestration fills from the :class:`RunContext`, never options.
CONTEXT_PARAMETERS = frozenset({"model", "pairs", "prompts", "spec", "task", "seed", "progress", "executor"})


class Options(BaseModel):
    """Base of a method's options model: unknown options are errors, values are frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class NotApplicable(ArithInterpError):
    """A method does not apply to this model or task (``args[0]`` says why); a report skips it."""


# -- the context a method runs in -----------------------------------------------------------------


@dataclass
class RunContext:
    """What a method runs on, shared by the methods of one pipeline run or report.

    ``results`` holds what methods already computed in this run (by result name), so a
    method can reuse another's sweep; :meth:`batch` and :meth:`tokens` tokenize once.
    ``params`` are the caller's settings a method may read (the report's circuit ``target``).
    ``executor`` (an :class:`~arithinterp.distributed.Executor`, ``None``: here) is passed to
    methods that take one, so their pair sweeps shard over workers.

    ``spec`` and ``prompts`` default to each other (the prompts' spec; the spec generated), and
    both to the model's own task (``model.default_task``, a zoo model's training format), so
    ``RunContext(model=model)`` runs any method on a zoo model; a model without a default task
    gets a :class:`~arithinterp.errors.ConfigError` asking for a task.
    """

    model: Model
    spec: TaskSpec | None = None
    prompts: PromptSet | None = None
    pairs: PromptPairs | None = None
    seed: int = 0
    progress: bool = True
    model_spec: str | None = None
    executor: Any = None
    params: dict[str, Any] = field(default_factory=dict)
    results: dict[str, Any] = field(default_factory=dict)
    _memo: dict[Any, Any] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.prompts is None:
            if self.spec is None:
                self.spec = _default_spec(self.model)
            self.prompts = generate(self.spec)
        elif self.spec is None:
            self.spec = self.prompts.spec

    def memo(self, key: Any, make: Callable[[], Any]) -> Any:
        """``make()`` once per ``key`` in this context."""
        if key not in self._memo:
            self._memo[key] = make()
        return self._memo[key]

    def recall(self, key: Any) -> Any:
        """What :meth:`memo` holds for ``key`` (``None`` if nothing was made yet)."""
        return self._memo.get(key)

    def tokens(self, answer: str = "multi", prompts: PromptSet | None = None):
        """The prompts tokenized (:func:`arithinterp.tasks.tokenize`), once per answer mode."""
        prompts = self.prompts if prompts is None else prompts
        return self.memo(("tokens", prompts.hash, answer), lambda: tokenize(prompts, self.model.tokenizer,
                                                                              answer=answer))

    def batch(self, answer: str = "multi"):
        """The pairs tokenized (:func:`arithinterp.methods.tokenize_pairs`), once per answer mode."""
        pairs = self.require_pairs()
        return self.memo(("pairs", answer), lambda: tokenize_pairs(pairs, self.model.tokenizer, answer=answer))

    @property
    def answer(self) -> str:
        """``"single"`` when every answer is one token of this model, else ``"multi"``."""
        return "single" if self.tokens("multi").answer_len == 1 else "multi"

    def require_pairs(self) -> PromptPairs:
        if self.pairs is None:
            raise ConfigError("this method needs clean/corrupt pairs; give the step `pairs:`")
        return self.pairs


def _default_spec(model: Model) -> TaskSpec:
    """The model's own task, for a context given neither a spec nor prompts."""
    if getattr(model, "default_task", None) is None:
        raise ConfigError(
            f"no task given, and model {getattr(model, 'spec', None) or model.name!r} has no default task "
            "(only zoo models carry the task they were trained on); pass spec= (a TaskSpec) or prompts="
        )
    return model.default_task


def check_layer(model: Model, layer: int | None, what: str = "layer") -> None:
    """``SiteError`` unless ``layer`` (an option named ``what``) is ``None`` or a layer of ``model``."""
    from arithinterp.errors import SiteError

    n = model.shape.n_layers
    if layer is not None and not 0 <= layer < n:
        raise SiteError(f"{what}: {layer} is not a layer of this model; valid: 0..{n - 1}")


# -- how a method shows in a report and the dashboard ---------------------------------------------


def site_values(array: Any, sites: list[Site]) -> np.ndarray:
    """Values of a ``(layer, head)`` or ``(layer, neuron)`` array at each site (NaN where absent).

    The common reader of report columns: ``array`` is an xarray DataArray with a ``layer``
    dim and a ``head`` or ``neuron`` dim; ``sites`` are one kind (heads or neurons).
    """
    out = np.full(len(sites), np.nan)
    if not sites:
        return out
    inner = "head" if sites[0].head is not None else "neuron"
    if "layer" not in array.dims or inner not in array.dims:
        return out
    arr = array.transpose("layer", inner, ...)
    while arr.ndim > 2:
        arr = arr.isel({arr.dims[-1]: 0})
    layers = {int(v): i for i, v in enumerate(arr.coords["layer"].values)}
    inners = {int(v): i for i, v in enumerate(arr.coords[inner].values)}
    data = np.asarray(arr.values, dtype=float)
    for i, site in enumerate(sites):
        j, k = layers.get(site.layer), inners.get(getattr(site, inner))
        if j is not None and k is not None:
            out[i] = data[j, k]
    return out


@dataclass(frozen=True)
class ReportColumn:
    """One column of a report table, read from one result.

    ``read(result, sites) -> values`` gives one value per row (``sites``: one
    :class:`Site` per head or neuron); the default reads the result's ``values`` with
    :func:`site_values`. ``missing`` fills the column when the result is absent.
    """

    name: str
    table: Literal["heads", "neurons"]
    result: str
    read: Callable[[Any, list[Site]], Any] | None = None
    description: str = ""
    missing: Any = float("nan")

    @classmethod
    def pair(cls, name: str, heads: str, neurons: str, read: Callable[[Any, list[Site]], Any] | None = None,
             description: str = "", missing: Any = float("nan")) -> tuple[ReportColumn, ReportColumn]:
        """The same column in both tables, read from the results ``heads`` and ``neurons``."""
        return (cls(name, "heads", heads, read, description, missing),
                cls(name, "neurons", neurons, read, description, missing))

    def values(self, results: Mapping[str, Any], sites: list[Site]) -> Any:
        """The column for ``sites``, or ``None`` when the result is absent."""
        result = results.get(self.result)
        if result is None:
            return None
        return self.read(result, sites) if self.read is not None else site_values(result.values, sites)


def read_extra(name: str) -> Callable[[Any, list[Site]], np.ndarray]:
    """A column reader of ``result.extras[name]`` (see :func:`site_values`)."""
    def read(result: Any, sites: list[Site]) -> np.ndarray:
        return site_values(result.extras[name], sites)

    return read


@dataclass(frozen=True)
class ReportView:
    """How a method shows in the attribution report.

    ``run(ctx) -> {result name: Result}`` computes it on the report's context (raise
    :class:`NotApplicable` to skip with a reason); ``results`` names what it returns (saved as
    ``results/<name>``; extra names are allowed); ``columns`` are added to the head / neuron
    tables; ``figures`` maps result names to page section titles (``result.plot()``); ``order``
    places it among the report's methods (lower runs first).
    """

    run: Callable[[RunContext], dict[str, Any]]
    results: tuple[str, ...] = ()
    columns: tuple[ReportColumn, ...] = ()
    figures: Mapping[str, str] = field(default_factory=dict)
    order: int = 100

    def result_names(self) -> tuple[str, ...]:
        """Every result name this view declares (``results``, figures and columns)."""
        return tuple(dict.fromkeys([*self.results, *self.figures, *(c.result for c in self.columns)]))


@dataclass(frozen=True)
class Panel:
    """A dashboard panel of a component's detail, read from one saved result.

    ``render(result, site)`` returns a plotly Figure, a pandas DataFrame (shown as a table)
    or a string (shown as "not available: ..."); the default shows the rows of the result's
    ``to_frame()`` at the component's layer and head / neuron.
    """

    result: str
    title: str
    render: Callable[[Any, Site], Any] | None = None


# -- the declaration ------------------------------------------------------------------------------


@dataclass(frozen=True)
class MethodSpec:
    """A method, declared once.

    Args:
        name: the pipeline step kind and the report's method name (``"patching"``).
        function: the public method.
        inputs: what it runs on (:data:`InputKind`).
        result: the Result class (or classes) it returns.
        options: a pydantic model of its options; ``None`` generates one from the function's
            keyword-only parameters (:func:`options_model`). Field names are the function's
            keywords, except those renamed in ``aliases`` (option -> keyword) and the
            ``step_only`` ones the ``run`` callable consumes itself.
        run: ``run(ctx, options) -> Result | {part: Result}`` for a pipeline step; the default
            calls ``function`` with the context's inputs and the options as keywords.
        check: ``check(ctx, options)``, run before any step starts; raises on a bad option.
        task_check: ``task_check(options, task_spec)``, run when a pipeline config validates;
            raises ``ValueError("option: what is wrong")`` when the task cannot serve the options.
        report: how it shows in the attribution report (:class:`ReportView`), if at all.
        panels: its dashboard panels (:class:`Panel`).
        summary: one line for listings (default: the function's docstring's first line).
    """

    name: str
    function: Callable[..., Any]
    inputs: InputKind
    result: type | tuple[type, ...]
    options: type[BaseModel] | None = None
    aliases: Mapping[str, str] = field(default_factory=dict)
    step_only: frozenset[str] = frozenset()
    run: Callable[[RunContext, Any], Any] | None = None
    check: Callable[[RunContext, Any], None] | None = None
    task_check: Callable[[Any, TaskSpec], None] | None = None
    report: ReportView | None = None
    panels: tuple[Panel, ...] = ()
    summary: str = ""

    def __post_init__(self) -> None:
        if not self.name.isidentifier():
            raise ConfigError(f"method name {self.name!r} must be an identifier (letters, digits, _)")
        if self.inputs not in typing.get_args(InputKind):
            raise ConfigError(f"inputs must be one of {typing.get_args(InputKind)}, got {self.inputs!r}")
        if self.options is None:
            object.__setattr__(self, "options", options_model(self.function, self.name))
        clash = RESERVED_OPTIONS & set(self.options.model_fields)  # type: ignore[union-attr]
        if clash:
            raise ConfigError(f"method {self.name!r}: options {sorted(clash)} are reserved for pipeline steps; "
                              f"rename them (aliases= maps an option to the function's keyword)")
        if not self.summary:
            doc = inspect.getdoc(self.function) or ""
            object.__setattr__(self, "summary", doc.split("\n", 1)[0])

    @property
    def result_classes(self) -> tuple[type, ...]:
        return self.result if isinstance(self.result, tuple) else (self.result,)

    def validate_options(self, options: Mapping[str, Any] | BaseModel | None = None) -> BaseModel:
        """The options validated by :attr:`options` (``ConfigError`` naming what is wrong).

        An instance of :attr:`options` (or of a subclass: a pipeline step) is returned as is.
        """
        from pydantic import ValidationError

        cls = self.options
        if isinstance(options, cls):  # type: ignore[arg-type]
            return options
        if isinstance(options, BaseModel):
            options = options.model_dump()
        try:
            return cls.model_validate(dict(options or {}))  # type: ignore[union-attr]
        except ValidationError as err:
            lines = [f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors()]
            raise ConfigError(f"options of {self.name} do not validate:\n" + "\n".join(lines)) from None

    def keywords(self, options: BaseModel) -> dict[str, Any]:
        """The options as the function's keyword arguments (aliases applied, step-only dropped)."""
        return {self.aliases.get(k, k): getattr(options, k) for k in self.options.model_fields  # type: ignore[union-attr]
                if k not in self.step_only}

    def call(self, ctx: RunContext, options: Mapping[str, Any] | BaseModel | None = None) -> Any:
        """Run the method on ``ctx`` with ``options`` (validated here): what a pipeline step does."""
        opts = self.validate_options(options)
        if self.run is not None:
            return self.run(ctx, opts)
        return call_function(self.function, self.inputs, ctx, self.keywords(opts))

    def precheck(self, ctx: RunContext, options: Mapping[str, Any] | BaseModel | None = None) -> None:
        """Everything that can fail before the method runs (``check``, else nothing)."""
        if self.check is not None:
            self.check(ctx, self.validate_options(options))


def call_function(function: Callable[..., Any], inputs: InputKind, ctx: RunContext,
                  keywords: Mapping[str, Any]) -> Any:
    """Call ``function(model, <inputs>, **keywords)`` filling ``seed`` / ``progress`` from ``ctx``."""
    params = inspect.signature(function).parameters
    kwargs = dict(keywords)
    for name in ("seed", "progress", "executor"):
        if name in params and name not in kwargs:
            kwargs[name] = getattr(ctx, name)
    first = {"prompts": ctx.prompts, "pairs": ctx.pairs, "grid": ctx.spec, "model": None}[inputs]
    if inputs == "pairs":
        first = ctx.require_pairs()
    args = (ctx.model,) if inputs == "model" else (ctx.model, first)
    return function(*args, **kwargs)


def _type_hints(function: Callable[..., Any]) -> dict[str, Any]:
    try:
        return typing.get_type_hints(function)
    except Exception:  # noqa: BLE001 - a forward reference that cannot be resolved: no type then
        return {}


def options_model(function: Callable[..., Any], name: str) -> type[BaseModel]:
    """A strict pydantic model of ``function``'s keyword-only options (names, types, defaults).

    Parameters orchestration fills (:data:`CONTEXT_PARAMETERS`) are left out.
    """
    hints = _type_hints(function)
    fields: dict[str, Any] = {}
    for p in inspect.signature(function).parameters.values():
        if p.kind is not inspect.Parameter.KEYWORD_ONLY or p.name in CONTEXT_PARAMETERS:
            continue
        if p.name in RESERVED_OPTIONS:
            raise ConfigError(f"{function.__name__}: keyword {p.name!r} clashes with a pipeline step's own "
                              f"field; give MethodSpec an options model that renames it (with aliases=)")
        default = ... if p.default is inspect.Parameter.empty else p.default
        fields[p.name] = (hints.get(p.name, Any), default)
    camel = "".join(part.title() for part in name.split("_"))
    config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)
    return create_model(f"{camel}Options", __config__=config, **fields)


def check_options(spec: MethodSpec) -> list[str]:
    """Where ``spec.options`` disagrees with its function's keywords: unknown names, other defaults.

    Every option (after ``aliases``) must be a keyword-only parameter of the function with the
    same default, unless it is ``step_only``. An empty list means they match.
    """
    params = inspect.signature(spec.function).parameters
    problems = []
    for option, info in spec.options.model_fields.items():  # type: ignore[union-attr]
        if option in spec.step_only:
            continue
        keyword = spec.aliases.get(option, option)
        p = params.get(keyword)
        if p is None or p.kind is not inspect.Parameter.KEYWORD_ONLY:
            problems.append(f"{spec.name}.{option}: {spec.function.__name__} has no keyword {keyword!r}")
            continue
        default = info.get_default(call_default_factory=True)
        if p.default is inspect.Parameter.empty or not _same(default, p.default):
            problems.append(f"{spec.name}.{option}: default {default!r} but "
                            f"{spec.function.__name__}(..., {keyword}={p.default!r})")
    return problems


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b if not isinstance(a, float) else a == b


# -- the registry ---------------------------------------------------------------------------------

_REGISTRY: dict[str, MethodSpec] = {}
_VERSION = [0]


def register(spec: MethodSpec, *, replace: bool = False) -> MethodSpec:
    """Add ``spec`` to the registry (``ConfigError`` if the name is taken, unless ``replace``)."""
    if spec.name in _REGISTRY and not replace and _REGISTRY[spec.name] is not spec:
        raise ConfigError(f"a method named {spec.name!r} is already registered "
                          f"({_REGISTRY[spec.name].function.__module__}); pick another name")
    _REGISTRY[spec.name] = spec
    _VERSION[0] += 1
    return spec


def unregister(name: str) -> None:
    """Remove a method (a test's toy method, say)."""
    _REGISTRY.pop(name, None)
    _VERSION[0] += 1


@contextmanager
def registered(spec: MethodSpec) -> Iterator[MethodSpec]:
    """Register ``spec`` for the ``with`` block only."""
    register(spec)
    try:
        yield spec
    finally:
        unregister(spec.name)


def _load_builtins() -> None:
    # The built-in methods register on import of their modules.
    import arithinterp.methods  # noqa: F401


def methods() -> dict[str, MethodSpec]:
    """Every registered method, in registration order."""
    _load_builtins()
    return dict(_REGISTRY)


def method_names() -> tuple[str, ...]:
    return tuple(methods())


def get_method(name: str) -> MethodSpec:
    """The method named ``name`` (``ConfigError`` listing the valid names)."""
    found = methods().get(name)
    if found is None:
        raise ConfigError(f"no method named {name!r}; registered: {', '.join(_REGISTRY)}")
    return found


def registry_version() -> int:
    """Changes whenever a method is registered or removed (for caches built from the registry)."""
    return _VERSION[0]
