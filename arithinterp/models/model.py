"""The :class:`Model` handle: one API over every backend.

Methods talk to a :class:`Model` in terms of :class:`Site`; the backend below
only knows how to call a function on a whole site's activation during a
forward pass. Selections (head, neuron, position), caching, patching with
values or functions, and gradients are implemented here once, so the
TransformerLens and nnsight backends cannot drift apart in semantics.
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from arithinterp.errors import MethodError, SiteError, TokenizationError
from arithinterp.models.backends.base import Backend, HookFn, Weights, execution_order
from arithinterp.models.site import ModelShape, Site, all_sites, as_site

if TYPE_CHECKING:
    from arithinterp.tasks import TaskSpec

Patch = torch.Tensor | Callable[[torch.Tensor], torch.Tensor]
"""A patch for a site: a tensor (broadcast onto the selected activation) or a
function from the selected activation to its replacement."""


# Which Site field selects along each activation dim (SiteKindInfo.layout); a pattern's
# position selects its query position.
_SELECTED_BY = {"pos": "pos", "q_pos": "pos", "head": "head", "neuron": "neuron"}


def _index(site: Site) -> tuple:
    """The index that selects ``site``'s head / neuron / position from its whole activation."""
    return tuple(
        _or_all(getattr(site, _SELECTED_BY[dim])) if dim in _SELECTED_BY else slice(None)
        for dim in site.info.layout
    )


def _or_all(i: int | None) -> int | slice:
    return slice(None) if i is None else i


def select(activation: torch.Tensor, site: Site) -> torch.Tensor:
    """Select ``site``'s part of its whole activation (dropping fixed dims)."""
    return activation[_index(site)]


def _apply_patch(activation: torch.Tensor, site: Site, patch: Patch) -> torch.Tensor:
    index = _index(site)
    current = activation[index]
    new = patch(current) if callable(patch) else patch
    new = torch.as_tensor(new, dtype=activation.dtype, device=activation.device)
    try:
        new = new.expand_as(current)
    except RuntimeError as err:
        raise SiteError(
            f"patch for {site.label} has shape {tuple(new.shape)}, which does not broadcast to "
            f"the site's activation shape {tuple(current.shape)}"
        ) from err
    # Clone before writing: the backend may hand us a view of a tensor that the
    # model still reads (the residual stream), and autograd forbids in-place
    # edits of tensors it saved.
    patched = activation.clone()
    patched[index] = new
    return patched


@dataclass
class ActivationCache(Mapping[Site, torch.Tensor]):
    """Activations keyed by :class:`Site`, as asked for (selections applied)."""

    activations: dict[Site, torch.Tensor] = field(default_factory=dict)

    def __getitem__(self, site: Site) -> torch.Tensor:
        try:
            return self.activations[site]
        except KeyError:
            cached = ", ".join(s.label for s in self.activations) or "nothing"
            raise SiteError(f"{site.label} was not cached; the cache holds: {cached}") from None

    def __iter__(self) -> Iterator[Site]:
        return iter(self.activations)

    def __len__(self) -> int:
        return len(self.activations)

    def __repr__(self) -> str:
        body = ", ".join(f"{s.label}: {tuple(t.shape)}" for s, t in self.activations.items())
        return f"ActivationCache({body})"


@dataclass(frozen=True)
class Gradients:
    """A metric's value and its gradients with respect to chosen sites."""

    value: torch.Tensor
    activations: ActivationCache
    gradients: ActivationCache


class Model:
    """A loaded model and the backend that runs it.

    Build one with :func:`arithinterp.load_model`.

    A zoo model (or any directory with a zoo ``card.json``) carries the prompt format it was
    trained on: :attr:`default_task` is that :class:`~arithinterp.tasks.TaskSpec`, and
    ``generate(model=model)`` writes prompts in it. A model trained on several operators
    (``addsub``, ``ops_tok``) has one task per operator in :attr:`default_tasks`, and
    :attr:`default_task` is the first (addition). Other models have none.
    """

    def __init__(self, backend: Backend, *, name: str, spec: str, default_tasks: Sequence[TaskSpec] = ()):
        self.backend = backend
        self.name = name
        self.spec = spec
        self._default_tasks = tuple(default_tasks)

    # -- description -----------------------------------------------------
    @property
    def shape(self) -> ModelShape:
        return self.backend.shape

    @property
    def default_tasks(self) -> tuple[TaskSpec, ...]:
        """The tasks the model was trained on, from its zoo card (``()`` for other models)."""
        return self._default_tasks

    @property
    def default_task(self) -> TaskSpec | None:
        """The task the model was trained on (the first of :attr:`default_tasks`), or ``None``
        for a model without a zoo card (a hub model, a planted model, a config dict)."""
        return self._default_tasks[0] if self._default_tasks else None

    @property
    def tokenizer(self):
        return self.backend.tokenizer

    @property
    def backend_name(self) -> str:
        return self.backend.name

    @property
    def dtype(self) -> torch.dtype:
        return self.backend.dtype

    @property
    def device(self) -> torch.device:
        return self.backend.device

    def __repr__(self) -> str:
        s = self.shape
        return (
            f"Model({self.name!r}, backend={self.backend_name}, layers={s.n_layers}, "
            f"heads={s.n_heads}, d_model={s.d_model}, d_mlp={s.d_mlp}, vocab={s.d_vocab})"
        )

    def sites(self, kind: str, **kwargs) -> list[Site]:
        """Every site of ``kind`` in this model (see :func:`arithinterp.models.site.all_sites`)."""
        return all_sites(self.shape, kind, **kwargs)

    def validate(self, sites: Iterable[Site], seq_len: int | None = None) -> list[Site]:
        """Check every site exists in this model (and fits ``seq_len``); return them.

        A site label string is read as its Site; anything else that is not a Site (a hook
        name, a tuple) raises :class:`SiteError` saying what to write."""
        return [as_site(site).validate(self.shape, seq_len) for site in sites]

    # -- tokens ----------------------------------------------------------
    def to_tokens(self, texts: str | Sequence[str]) -> torch.Tensor:
        """Tokenize prompts of equal token length into ``[batch, pos]``."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        ids = [self.tokenizer(t)["input_ids"] for t in texts]
        lengths = sorted({len(i) for i in ids})
        if len(lengths) != 1:
            raise TokenizationError(
                f"prompts tokenize to different lengths {lengths}; batch prompts of one length "
                "(a fixed-width task format, or arithinterp.tasks.group_by_length)"
            )
        return torch.tensor(ids, dtype=torch.long, device=self.device)

    def to_str_tokens(self, tokens: torch.Tensor) -> list[str]:
        """The token strings of one sequence ``[pos]``."""
        return self.tokenizer.convert_ids_to_tokens(tokens.tolist())

    # -- running ---------------------------------------------------------
    def logits(
        self, tokens: torch.Tensor, patches: Mapping[Site, Patch] | None = None, *, grad: bool = False
    ) -> torch.Tensor:
        """Logits ``[batch, pos, d_vocab]``, with optional patches applied.

        ``grad=True`` keeps the autograd graph, so a loss on the logits can train the
        parameters of a patch function (DAS's rotation); freeze the model's own parameters
        with :meth:`enabled` (``requires_grad=False``).
        """
        return self._run(tokens, patches or {}, cache_sites=(), keep={}, grad=grad)

    def run_with_cache(
        self,
        tokens: torch.Tensor,
        sites: Iterable[Site],
        patches: Mapping[Site, Patch] | None = None,
    ) -> tuple[torch.Tensor, ActivationCache]:
        """Run once and cache exactly ``sites`` (after any patches)."""
        keep: dict[Site, torch.Tensor] = {}
        logits = self._run(tokens, patches or {}, cache_sites=list(sites), keep=keep, grad=False)
        return logits, ActivationCache(keep)

    def run_with_patches(self, tokens: torch.Tensor, patches: Mapping[Site, Patch]) -> torch.Tensor:
        """Run with each site's activation replaced (a value, or a function of it)."""
        return self.logits(tokens, patches)

    def gradients(
        self,
        tokens: torch.Tensor,
        sites: Iterable[Site],
        metric: Callable[[torch.Tensor], torch.Tensor],
        patches: Mapping[Site, Patch] | None = None,
    ) -> Gradients:
        """Gradients of a scalar ``metric(logits)`` with respect to each site's activation."""
        sites = list(sites)
        keep: dict[Site, torch.Tensor] = {}
        wholes = list(dict.fromkeys(s.whole() for s in sites))

        def backward(logits: torch.Tensor, kept: dict) -> tuple[torch.Tensor, tuple]:
            # Runs where the forward pass ran (on NDIF for a remote model), while its graph exists.
            value = metric(logits)
            if value.ndim != 0:
                raise MethodError(f"metric must return a scalar, got shape {tuple(value.shape)}")
            grads = torch.autograd.grad(value, [kept[w] for w in wholes], allow_unused=True)
            return value.detach(), grads

        with self.enabled(requires_grad=False):
            _, (value, grads) = self._run(tokens, patches or {}, cache_sites=sites, keep=keep, grad=True,
                                          leaf=True, after=backward)
        by_whole = {
            w: torch.zeros_like(keep[w]) if g is None else g for w, g in zip(wholes, grads)
        }
        acts = {s: select(keep[s.whole()], s).detach() for s in sites}
        grad_sel = {s: select(by_whole[s.whole()], s) for s in sites}
        return Gradients(value.detach(), ActivationCache(acts), ActivationCache(grad_sel))

    def _run(
        self,
        tokens: torch.Tensor,
        patches: Mapping[Site, Patch],
        *,
        cache_sites: Sequence[Site],
        keep: dict[Site, torch.Tensor],
        grad: bool,
        leaf: bool = False,
        after: Callable[[torch.Tensor, dict], Any] | None = None,
    ) -> Any:
        """The logits (with ``after``: the logits and ``after(logits, keep)``); the hooks fill ``keep``."""
        if tokens.ndim != 2:
            raise TokenizationError(f"tokens must be [batch, pos], got shape {tuple(tokens.shape)}")
        seq_len = tokens.shape[1]
        if seq_len > self.shape.n_ctx:  # torch's embedding lookup would fail 28 frames down
            raise TokenizationError(
                f"the tokens are {seq_len} positions long but {self.name}'s context holds "
                f"{self.shape.n_ctx}; use shorter prompts (fewer digits or few-shot examples)"
            )
        self.validate(list(patches) + list(cache_sites), seq_len)
        per_whole: dict[Site, list[HookFn]] = defaultdict(list)
        for site, patch in patches.items():
            per_whole[site.whole()].append(_patch_fn(site, patch))
        for whole in dict.fromkeys(s.whole() for s in cache_sites):
            per_whole[whole].append(_keep_fn(whole, keep, leaf=leaf))
        hooks = {
            whole: _compose(fns)
            for whole, fns in sorted(per_whole.items(), key=lambda kv: execution_order(kv[0]))
        }
        logits, extra = self.backend.run_collect(tokens, hooks, grad=grad, keep=keep, after=after)
        if not leaf:
            for site in cache_sites:
                keep[site] = select(keep[site.whole()], site)
            for whole in [w for w in keep if w not in cache_sites]:
                del keep[whole]
        return logits if after is None else (logits, extra)

    # -- weights ---------------------------------------------------------
    def weights(self) -> Weights:
        """``W_U, b_U, W_E, W_O, W_in, W_out`` in TransformerLens layout."""
        return self.backend.weights()

    def final_norm(self, resid: torch.Tensor) -> torch.Tensor:
        """The model's final normalisation applied to residual-stream vectors."""
        return self.backend.final_norm(resid)

    def unembed(self, resid: torch.Tensor, *, normalize: bool = True) -> torch.Tensor:
        """Map residual-stream vectors to logits (through the final norm unless told not to)."""
        w = self.weights()
        x = self.final_norm(resid) if normalize else resid
        return x @ w.W_U + w.b_U

    # -- flags -----------------------------------------------------------
    @contextlib.contextmanager
    def enabled(self, *, train: bool | None = None, requires_grad: bool | None = None):
        """Temporarily set the module's training mode and parameters' ``requires_grad``.

        Both are restored in ``finally``, whatever happens inside the block.
        """
        module = self.backend.module()
        was_training = module.training
        params = list(module.parameters())
        old_flags = [p.requires_grad for p in params]
        try:
            if train is not None:
                module.train(train)
            if requires_grad is not None:
                for p in params:
                    p.requires_grad_(requires_grad)
            yield self
        finally:
            module.train(was_training)
            for p, flag in zip(params, old_flags):
                p.requires_grad_(flag)


def _compose(fns: list[HookFn]) -> HookFn:
    if len(fns) == 1:
        return fns[0]

    def composed(activation: torch.Tensor) -> torch.Tensor | None:
        current, changed = activation, False
        for fn in fns:
            new = fn(current)
            if new is not None:
                current, changed = new, True
        return current if changed else None

    return composed


def _patch_fn(site: Site, patch: Patch) -> HookFn:
    def fn(activation: torch.Tensor) -> torch.Tensor:
        return _apply_patch(activation, site, patch)

    return fn


def _keep_fn(whole: Site, keep: dict[Site, torch.Tensor], *, leaf: bool) -> HookFn:
    def fn(activation: torch.Tensor) -> torch.Tensor | None:
        if not leaf:
            keep[whole] = activation.detach()
            return None
        # For gradients the stored tensor must be part of the graph. With
        # parameters frozen nothing upstream requires grad, so the activation
        # is made a leaf; downstream sites still depend on it.
        tracked = activation if activation.requires_grad else activation.detach().requires_grad_(True)
        keep[whole] = tracked
        return tracked

    return fn
