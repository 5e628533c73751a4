"""Linear probes as one method: the pipeline's ``probes`` step (options checked against the task
and the model before anything runs) and the report's probe evidence per component.

The report probes the answer digits and carries / borrows / partial carries
(:func:`probe_targets`) at the positions that predict answer tokens, on at least
:data:`PROBE_MIN_PROMPTS` prompts; a target counts as evidence for a component when it is
decodable (:data:`PROBE_DECODABLE`, beating the majority baseline and the Hewitt-Liang control
by :data:`PROBE_MARGIN`) in the residual stream right after the component's layer, at a position
whose teacher-forced input does not already show it (:func:`~arithinterp.methods.answer_visible`).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field

from arithinterp.errors import ConfigError
from arithinterp.methods.probe_sweep import (
    FitKind,
    ProbeResult,
    Split,
    fit_probes,
)
from arithinterp.methods.registry import (
    MethodSpec,
    NotApplicable,
    Options,
    ReportColumn,
    ReportView,
    RunContext,
    check_layer,
    register,
)
from arithinterp.models import Site
from arithinterp.tasks import PromptSet

ResidKind = Literal["resid_pre", "resid_mid", "resid_post"]
#: Probes are fit on at least this many prompts in a report (a fresh draw of the task).
PROBE_MIN_PROMPTS = 256
#: A probe target is decodable at a site when its held-out score reaches this and beats
#: the majority / mean baseline and the control task by at least :data:`PROBE_MARGIN`.
PROBE_DECODABLE = 0.9
PROBE_MARGIN = 0.1


class SiteRef(Options):
    """A residual-stream site named in YAML: ``{kind: resid_mid, layer: 0}``."""

    kind: ResidKind
    layer: int = Field(ge=0)


class ProbesOptions(Options):
    """Options of :func:`fit_probes`: ``targets`` are columns of the task's prompt frame
    (``SC_2``, ``c_hat_3`` ...); ``probe`` is the function's ``kind`` (``auto``: logistic for few
    classes, else ridge); ``control_by`` is Hewitt & Liang's input type of the control task."""

    targets: list[str] = Field(min_length=1)
    sites: Literal["resid"] | list[SiteRef] = "resid"
    positions: list[int] | None = None
    probe: FitKind = "auto"
    periods: list[int] = Field(default_factory=lambda: [2, 5, 10])
    test_fraction: float = Field(0.25, gt=0, lt=1)
    split: Split = "random"
    control: bool = True
    control_by: Literal["auto", "operands", "token"] | list[str] = "auto"
    n_boot: int = Field(200, ge=0)
    l2: float = Field(1e-3, gt=0)
    batch_size: int = Field(256, ge=1)
    stream: bool = False


def _probe_sites(ctx: RunContext, options: ProbesOptions) -> str | list[Site]:
    if options.sites == "resid":
        return "resid"
    for ref in options.sites:
        check_layer(ctx.model, ref.layer, "sites")
    return [Site(ref.kind, ref.layer) for ref in options.sites]


def _check_probes(ctx: RunContext, options: ProbesOptions) -> None:
    _probe_sites(ctx, options)
    missing = [t for t in options.targets if t not in ctx.prompts.frame.columns]
    if missing:
        raise ConfigError(f"targets: {missing} are not annotations of this task; valid: "
                               f"{sorted(ctx.prompts.frame.columns)}")
    length = ctx.tokens("multi").tokens.shape[1]
    bad = [p for p in options.positions or [] if not -length <= p < length]
    if bad:
        raise ConfigError(f"positions: {bad} outside the prompts' {length} positions")
    if isinstance(options.control_by, list):
        missing = [c for c in options.control_by if c not in ctx.prompts.frame.columns]
        if missing:
            raise ConfigError(f"control_by: {missing} are not annotations of this task; "
                                   f"valid: {sorted(ctx.prompts.frame.columns)}")


#: Columns of a task's prompt frame that are not annotations to probe.
_NOT_TARGETS = ("prompt", "query", "answer_text", "operator", "operation", "complexity")


def _probes_task_check(options: ProbesOptions, spec) -> None:
    from arithinterp.tasks import generate

    columns = list(generate(spec.model_copy(update={"n": min(spec.n, 2)})).frame.columns)
    missing = [t for t in options.targets if t not in columns]
    if missing:
        raise ValueError(f"targets: {missing} are not annotations of this task; valid: "
                         f"{[c for c in columns if c not in _NOT_TARGETS]}")


def _run_probes(ctx: RunContext, options: ProbesOptions) -> ProbeResult:
    keywords = {k: getattr(options, k) for k in ProbesOptions.model_fields if k not in ("targets", "sites", "probe")}
    return fit_probes(ctx.model, ctx.prompts, options.targets, sites=_probe_sites(ctx, options), kind=options.probe,
                      seed=ctx.seed, progress=ctx.progress, executor=ctx.executor, **keywords)


def probe_targets(prompts: PromptSet) -> list[str]:
    """The annotations a report probes: answer digits, and carries / borrows / partial carries."""
    frame = prompts.frame
    patterns = ("answer_digit_", "carry_in_", "borrow_", "c_hat_")
    cols = [c for c in frame.columns if c.startswith(patterns)]
    return [c for c in cols if frame[c].nunique() > 1][:12]


def _report_probes(ctx: RunContext) -> dict:
    prompts = ctx.prompts
    if len(prompts) < PROBE_MIN_PROMPTS:
        from arithinterp.tasks import generate

        prompts = generate(prompts.spec.model_copy(update={"n": PROBE_MIN_PROMPTS, "seed": ctx.seed + 1}))
    targets = probe_targets(prompts)
    if not targets:
        raise NotApplicable("the task has no varying annotation to probe (answer digits, carries, borrows, "
                            "partial carries)")
    # The positions that predict answer tokens (the prompt's last, then the teacher-forced
    # answer's): where the answer is computed, and a fraction of the cost of every position.
    tok = ctx.tokens("multi", prompts)
    positions = [tok.prompt_len - 1 + i for i in range(tok.answer_len)]
    # fit_probes marks the positions whose input shows the target (extras["answer_visible"]).
    return {"probes": fit_probes(ctx.model, prompts, targets, positions=positions, n_boot=100, seed=ctx.seed,
                                 progress=ctx.progress, executor=ctx.executor)}


def _probe_site(kind: str, layer: int, labels: list[str]) -> str | None:
    """The residual-stream site (a ``site`` label) right after a component of ``layer`` writes."""
    if kind == "attn_head":
        wanted = [Site("resid_mid", layer).label]
    else:
        wanted = [Site("resid_pre", layer + 1).label, Site("resid_post", layer).label]
    return next((w for w in wanted if w in labels), None)


def probe_evidence(result: ProbeResult, kind: str, layer: int, n_layers: int | None = None) -> tuple[str, float]:
    """Targets decodable at the site after ``kind`` of ``layer`` (at any position), and the best score."""
    v = result.values
    labels = [str(x) for x in v.coords["site"].values]
    site = _probe_site(kind, layer, labels)
    if site is None:
        return "", float("nan")
    at = v.sel(site=site)  # (target, pos)
    if "answer_visible" in result.extras:  # positions where the target is read off the input: not evidence
        at = at.where(~result.extras["answer_visible"].astype(bool))
    control = result.extras["control"].sel(site=site)
    majority = result.extras["majority"]
    score = at.max("pos")
    margin = (at - control).where(at == at.max("pos")).max("pos")
    decodable = []
    for t in at.coords["target"].values:
        s = float(score.sel(target=t))
        if not np.isfinite(s):
            continue
        base = float(majority.sel(target=t)) if majority.ndim else float(majority)
        kind_t = str(at.coords["score_kind"].sel(target=t).values)
        base_gap = s - base if kind_t == "accuracy" else s  # R² is already relative to the mean
        if s >= PROBE_DECODABLE and base_gap >= PROBE_MARGIN and float(margin.sel(target=t)) >= PROBE_MARGIN:
            decodable.append(str(t))
    best = score.values[np.isfinite(score.values)]
    return ",".join(decodable), float(best.max()) if best.size else float("nan")


def _evidence(result: ProbeResult, sites: list[Site]) -> list[tuple[str, float]]:
    memo: dict[tuple[str, int], tuple[str, float]] = {}
    for s in sites:
        key = ("attn_head" if s.head is not None else "mlp_post", s.layer)
        if key not in memo:
            memo[key] = probe_evidence(result, *key)
    return [memo[("attn_head" if s.head is not None else "mlp_post", s.layer)] for s in sites]


def _read_probe_targets(result: ProbeResult, sites: list[Site]) -> list[str]:
    return [targets for targets, _ in _evidence(result, sites)]


def _read_probe_best(result: ProbeResult, sites: list[Site]) -> np.ndarray:
    return np.array([best for _, best in _evidence(result, sites)], dtype=float)


register(MethodSpec(
    name="probes", function=fit_probes, inputs="prompts", result=ProbeResult, options=ProbesOptions,
    aliases={"probe": "kind"}, step_only=frozenset({"targets"}), run=_run_probes, check=_check_probes,
    task_check=_probes_task_check,
    report=ReportView(
        run=_report_probes,
        columns=(*ReportColumn.pair("probe_targets", "probes", "probes", _read_probe_targets,
                                    "annotations decodable right after the component's layer", missing=None),
                 *ReportColumn.pair("probe_best", "probes", "probes", _read_probe_best,
                                    "best held-out probe score at that site")),
        figures={"probes": "Linear probes"},
        order=50,
    ),
))
