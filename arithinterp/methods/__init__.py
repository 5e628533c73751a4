"""Analysis methods: pure functions of (model, prompts, options) returning a Result.

Methods never import transformer_lens or nnsight; they address activations by
:class:`arithinterp.Site` through :class:`arithinterp.Model`.
"""

# The built-in methods register on import, in this order (pipeline listings, report columns).
# isort: off
import arithinterp.methods.evaluate
import arithinterp.methods.digit_confidence
import arithinterp.methods.lens
import arithinterp.methods.tuned_lens
import arithinterp.methods.patching
import arithinterp.methods.attribution
import arithinterp.methods.edge_attribution
import arithinterp.methods.peap
import arithinterp.methods.mediation
import arithinterp.methods.components
import arithinterp.methods.cna
import arithinterp.methods.probe_analyses
import arithinterp.methods.fourier_analyses
import arithinterp.methods.helix
import arithinterp.methods.neurons
import arithinterp.methods.operand_maps
import arithinterp.methods.circuits
import arithinterp.methods.attention
import arithinterp.methods.localize  # noqa: F401
# isort: on
from arithinterp.methods.ablation import PathPatchingResult, ablate, path_patch
from arithinterp.methods.attention import AttentionResult, attention_patterns
from arithinterp.methods.attribution import AttributionResult, attribution_patch, compare_with_exact
from arithinterp.methods.attribution_calibration import calibrate_attribution
from arithinterp.methods.circuits import CircuitResult, circuit_figure, discover_circuit
from arithinterp.methods.cna import find_cna, head_scan
from arithinterp.methods.components import (
    CNAResult,
    DLAResult,
    comparative_neuron_analysis,
    direct_logit_attribution,
)
from arithinterp.methods.das import DASResult, das
from arithinterp.methods.digit_confidence import (
    DigitConfidenceResult,
    DigitRecords,
    digit_confidence,
)
from arithinterp.methods.edge_attribution import EdgeAttributionResult, edge_attribution_patch
from arithinterp.methods.edge_circuits import mib_edge_curve, run_with_edges
from arithinterp.methods.evaluate import EvalResult, evaluate
from arithinterp.methods.faithfulness import FaithfulnessResult, faithfulness
from arithinterp.methods.fourier import (
    KeyFrequencyResult,
    SpectrumResult,
    activation_spectrum,
    digit_basis,
    embedding_spectrum,
    fourier_basis,
    fourier_spectrum,
    head_key_frequencies,
    key_frequencies,
)
from arithinterp.methods.fourier_analyses import FourierOptions
from arithinterp.methods.grid import grid_activations, operand_grid, operand_grid_spec
from arithinterp.methods.helix import (
    FourierFilterResult,
    HelixFit,
    HelixPatchResult,
    fit_helix,
    fourier_filter,
    fourier_filter_ablation,
    helix_baselines,
    patch_with_fit,
)
from arithinterp.methods.interchange import Featurizer, InterchangeResult, interchange_intervention
from arithinterp.methods.lens import (
    LensResult,
    NumberLensResult,
    logit_lens,
    number_lens,
    number_token_ids,
)
from arithinterp.methods.localize import LocalizationResult, localize_variables
from arithinterp.methods.mediation import MediationResult, mediate
from arithinterp.methods.metrics import METRICS, PairBatch, tokenize_pairs
from arithinterp.methods.mib import (
    MIB_FRACTIONS,
    MIBCurveResult,
    area_under_curve,
    export_mib_graph,
    mib_curve,
    to_mib_graph,
)
from arithinterp.methods.neurons import (
    HeuristicResult,
    NeuronMaps,
    classify_neurons,
    find_heuristics,
    heuristic_knockout,
    neuron_maps,
    neuron_maps_from_activations,
)
from arithinterp.methods.operand_maps import OperandMapResult, classify_operand_map, operand_maps
from arithinterp.methods.patching import PatchingResult, patch_activations
from arithinterp.methods.peap import PositionEdgeResult, position_edge_attribution
from arithinterp.methods.probe_directions import ProbeDirections
from arithinterp.methods.probe_sweep import ProbeResult, answer_visible, control_columns, fit_probes
from arithinterp.methods.probes import LinearProbe
from arithinterp.methods.progress import (
    ProgressResult,
    excluded_loss,
    progress_measures,
    restricted_loss,
)
from arithinterp.methods.registry import (
    MethodSpec,
    NotApplicable,
    Options,
    Panel,
    ReportColumn,
    ReportView,
    RunContext,
    get_method,
    method_names,
    methods,
    register,
    registered,
    unregister,
)
from arithinterp.methods.tuned_lens import (
    LensKLResult,
    TunedLens,
    lens_kl,
    train_tuned_lens,
    tuned_lens,
)

__all__ = [
    # the registry
    "MethodSpec",
    "NotApplicable",
    "Options",
    "Panel",
    "ReportColumn",
    "ReportView",
    "RunContext",
    "get_method",
    "method_names",
    "methods",
    "register",
    "registered",
    "unregister",
    "METRICS",
    "AttentionResult",
    "AttributionResult",
    "attention_patterns",
    "CNAResult",
    "DLAResult",
    "EdgeAttributionResult",
    "EvalResult",
    "DigitConfidenceResult",
    "DigitRecords",
    "FaithfulnessResult",
    "LensResult",
    "MediationResult",
    "PairBatch",
    "PatchingResult",
    "PathPatchingResult",
    "ablate",
    "attribution_patch",
    "calibrate_attribution",
    "compare_with_exact",
    "comparative_neuron_analysis",
    "find_cna",
    "head_scan",
    "direct_logit_attribution",
    "edge_attribution_patch",
    "evaluate",
    "digit_confidence",
    "faithfulness",
    "logit_lens",
    "mediate",
    "patch_activations",
    "path_patch",
    "tokenize_pairs",
    "LinearProbe",
    "ProbeDirections",
    "ProbeResult",
    "answer_visible",
    "control_columns",
    "fit_probes",
    # fourier
    "KeyFrequencyResult",
    "ProgressResult",
    "SpectrumResult",
    "activation_spectrum",
    "digit_basis",
    "embedding_spectrum",
    "excluded_loss",
    "fourier_basis",
    "fourier_spectrum",
    "key_frequencies",
    "progress_measures",
    "restricted_loss",
    "LensKLResult",
    "NumberLensResult",
    "TunedLens",
    "lens_kl",
    "number_lens",
    "number_token_ids",
    "train_tuned_lens",
    "tuned_lens",
    # circuits
    "CircuitResult",
    "circuit_figure",
    "discover_circuit",
    "MIB_FRACTIONS",
    "MIBCurveResult",
    "area_under_curve",
    "export_mib_graph",
    "mib_curve",
    "mib_edge_curve",
    "run_with_edges",
    "to_mib_graph",
    "PositionEdgeResult",
    "position_edge_attribution",
    # helix
    "FourierFilterResult",
    "HelixFit",
    "HelixPatchResult",
    "fit_helix",
    "fourier_filter",
    "fourier_filter_ablation",
    "helix_baselines",
    "patch_with_fit",
    "HeuristicResult",
    "NeuronMaps",
    "classify_neurons",
    "find_heuristics",
    "FourierOptions",
    "head_key_frequencies",
    "heuristic_knockout",
    "neuron_maps",
    "neuron_maps_from_activations",
    # operand maps (any feature over the (a, b) grid, classified)
    "OperandMapResult",
    "classify_operand_map",
    "operand_maps",
    # causal variables
    "DASResult",
    "Featurizer",
    "InterchangeResult",
    "LocalizationResult",
    "das",
    "interchange_intervention",
    "localize_variables",
    # operand grids
    "grid_activations",
    "operand_grid",
    "operand_grid_spec",
]
