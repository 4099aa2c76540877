"""Classification: every tensor of a checkpoint is a parameter (trainable, frozen or unknown) or a buffer.

With a model, its ``named_parameters()`` (trainable = ``requires_grad``) and ``named_buffers()`` decide; without
``--model``, a Hugging Face ``config.json`` beside the weights builds one (:mod:`ckptboard.core.hf_model`). Without
any, in order: quantized layouts (packed weights and their scales are frozen parameters, index tensors buffers),
exact buffer rules by suffix and structure (BatchNorm statistics, frozen BatchNorm, spectral-norm ``_u``/``_v``,
quantization observers, attention masks, position ids, rotary caches, the table of known architecture buffers), then
non-float dtypes are buffers, then the remaining floating-point entries are parameters whose ``trainable`` comes
from the optimizer state when it lines up with them (held: trainable, not held: frozen). Every verdict names its
:class:`Rule` in ``TensorInfo.source``. No substring guessing: names are compared whole, component by component.
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from ckptboard.core.errors import ModelSpecError
from ckptboard.core.model_report import ModelReport, build_report, index_model, match_group
from ckptboard.core.records import OptimizerState, StrEnum, TensorGroup, TensorInfo, TensorKind, Trainable

__all__ = [
    "Rule",
    "Verdict",
    "Classification",
    "KnownBuffer",
    "KNOWN_BUFFERS",
    "classify",
    "classify_tensors",
    "buffer_rule",
    "quantized_rule",
    "is_floating_dtype",
    "OPTIMIZER_STATE_NAMES",
]


class Rule(StrEnum):
    """What decided a tensor's verdict (``TensorInfo.source``)."""

    MODEL_PARAMETER = "model:named_parameters"
    MODEL_BUFFER = "model:named_buffers"
    OPTIMIZER_HELD = "optimizer:held"
    OPTIMIZER_HELD_WITHOUT_STATE = "optimizer:held-without-state"  # no state while its param group has some
    OPTIMIZER_NOT_HELD = "optimizer:not-held"
    OPTIMIZER_AMBIGUOUS = "optimizer:ambiguous"  # equal shapes in a row: held or not cannot be told apart
    MODEL_CONFIG = "model:config.json"  # the model built from the checkpoint's config.json on meta
    BATCHNORM_RUNNING_STATS = "rule:batchnorm-running-stats"
    FROZEN_BATCHNORM = "rule:frozen-batchnorm"  # weight/bias of a norm with running stats, no num_batches_tracked
    NUM_BATCHES_TRACKED = "rule:num-batches-tracked"
    SPECTRAL_NORM_UV = "rule:spectral-norm-uv"
    QUANT_OBSERVER = "rule:quant-observer"
    ATTENTION_MASK = "rule:attention-mask"
    POSITION_IDS = "rule:position-ids"
    ROTARY_CACHE = "rule:rotary-cache"
    FINAL_LOGITS_BIAS = "rule:final-logits-bias"  # BART/mBART/Marian/Pegasus/Blenderbot
    CAUSAL_MASK = "rule:causal-mask"  # nanoGPT / GPT-2 ``attn.bias`` of shape (1, 1, T, T)
    GPTQ_AWQ = "rule:gptq-awq"  # qweight/qzeros/scales (+ bias) frozen, g_idx a buffer
    BNB_INT8 = "rule:bitsandbytes-int8"  # weight int8 + SCB frozen, weight_format a buffer
    BNB_4BIT = "rule:bitsandbytes-4bit"  # weight + absmax/quant_map/nested_* frozen, quant_state.* buffers
    SCALED_WEIGHT = "rule:scaled-weight"  # fp8/int8 weight + weight_scale(_inv) frozen, activation scales buffers
    NORM_LAYER = "structure:norm-layer"
    NON_FLOAT = "dtype:non-float"
    FLOAT_PARAMETER = "default:float-parameter"


@dataclass(frozen=True)
class Verdict:
    """What classification decided for one tensor."""

    group: str
    name: str
    kind: str  # TensorKind value
    trainable: str  # Trainable value
    source: str  # the Rule value that decided

    @property
    def is_trainable(self) -> bool | None:
        """``True``/``False``, ``None`` when unknown."""
        return Trainable(self.trainable).to_json()


@dataclass
class Classification:
    """What classification decided: a verdict per tensor, the model report (with a model), notes.

    ``model_source`` says which model decided, if any: ``"--model"``, ``"pickled module"`` or ``"config.json
    (PATH)"``.
    """

    report: ModelReport | None = None
    notes: list[str] = field(default_factory=list)
    verdicts: list[Verdict] = field(default_factory=list)
    model_source: str | None = None
    model: nn.Module | None = field(default=None, repr=False)  # the model that decided (meta), if any

    def counts(self) -> dict[str, int]:
        """Tensors per outcome: ``buffer``, ``trainable``, ``frozen``, ``unknown`` (parameters by trainable)."""
        out = {"buffer": 0, "trainable": 0, "frozen": 0, "unknown": 0}
        for v in self.verdicts:
            if v.kind == TensorKind.BUFFER:
                out["buffer"] += 1
            else:
                out[{True: "trainable", False: "frozen", None: "unknown"}[v.is_trainable]] += 1
        return out


def classify(
    ckpt: Any, model: nn.Module | None = None, *, from_config: bool = True, trust: bool = False
) -> Classification:
    """Classify every tensor of ``ckpt`` in place and return the verdicts.

    The model, in order: ``model``; a trusted pickled module; with ``from_config``, the Hugging Face model that the
    checkpoint's ``config.json`` describes, built on meta when ``transformers`` is installed (``trust``: allow the
    config's own code). Notes (an optimizer that does not line up, which config was used) go to ``ckpt.notes`` too.
    """
    source = "--model" if model is not None else None
    config_rule: Rule | None = None
    notes: list[str] = []
    if model is None and getattr(ckpt, "module", None) is not None:
        model, source = ckpt.module, "pickled module"
    if model is None and from_config:
        from ckptboard.core.hf_model import model_for_checkpoint

        built = model_for_checkpoint(ckpt, trust=trust)
        notes += built.notes
        if built.model is not None:
            model, source, config_rule = built.model, f"config.json ({built.config_path})", Rule.MODEL_CONFIG
    result = classify_tensors(ckpt.groups, ckpt.optimizers, model, model_rule=config_rule)
    if config_rule is not None and result.report is not None and result.report.matched == 0:
        # Not this checkpoint's model after all (a config.json beside unrelated files): the rules' verdicts stand.
        result.notes = [n for n in result.notes if not n.startswith("the model matched none")]
        notes = [f"config.json not used: its {type(model).__name__} matches none of the checkpoint's names"]
        model, source, result.report = None, None, None
    result.notes[:0] = notes
    result.model_source, result.model = source, model
    ckpt.notes.extend(n for n in result.notes if n not in ckpt.notes)
    return result


def classify_tensors(
    groups: Sequence[TensorGroup],
    optimizers: Sequence[OptimizerState] = (),
    model: nn.Module | None = None,
    *,
    model_rule: Rule | None = None,
) -> Classification:
    """Set ``kind``/``trainable``/``source`` of every tensor of ``groups``; the pure core of :func:`classify`.

    ``model_rule=Rule.MODEL_CONFIG``: ``model`` was built from a config, so its ``requires_grad`` is only the
    default; where the optimizer state lined up, its verdict on trainable stands.
    """
    result = Classification()
    optimizer_verdicts: dict[int, str] = {}
    for group in groups:
        _classify_by_rules(group)
    by_name = [opt for opt in optimizers if opt.by_name]
    for gi, verdicts in _align_optimizers(groups, [o for o in optimizers if not o.by_name], result.notes).items():
        for info, rule in zip(_candidates(groups[gi]), verdicts):
            _set_optimizer_verdict(info, rule)
            optimizer_verdicts[id(info)] = rule
    for info, rule in _match_by_name(groups, by_name, result.notes):
        _set_optimizer_verdict(info, rule)
        optimizer_verdicts[id(info)] = rule
    for group in groups:
        _copy_tied(group)
    if model is not None:
        result.report = _classify_by_model(groups, model, optimizer_verdicts, model_rule)
        if result.report.matched == 0:
            result.notes.append(
                f"the model matched none of the checkpoint's names ({len(result.report.missing_keys)} model keys); "
                "is --model the network this checkpoint was saved from?"
            )
    result.verdicts = [
        Verdict(i.group, i.name, str(i.kind), str(i.trainable), str(i.source)) for g in groups for i in g.tensors
    ]
    return result


# -- exact rules -------------------------------------------------------------------------------------------------

_QUANT_MODULE_FLAGS = frozenset({"fake_quant_enabled", "observer_enabled", "scale", "zero_point"})
_OBSERVER_LEAVES = frozenset({"min_val", "max_val", "eps", "histogram"})
_ATTENTION_MASKS = frozenset({"mask", "attn_mask", "causal_mask", "masked_bias"})
_ROTARY = frozenset({"inv_freq", "cos_cached", "sin_cached", "_cos_cached", "_sin_cached", "freqs_cis"})
_FLOAT_PREFIXES = ("float", "bfloat", "complex")


def is_floating_dtype(dtype: str) -> bool:
    """``float32``, ``bfloat16``, ``float8_e4m3fn``, ``complex64``: true; integer, bool and quantized: false."""
    return dtype.startswith(_FLOAT_PREFIXES) or dtype in {"half", "double"}


def buffer_rule(info: TensorInfo, leaves: set[str]) -> Rule | None:
    """The exact rule saying ``info`` is a buffer of a known module type, or ``None``.

    ``leaves`` holds the last name components of every tensor of the same module (its siblings and itself).
    """
    parts = info.name.split(".")
    leaf = parts[-1]
    if leaf == "num_batches_tracked":
        return Rule.NUM_BATCHES_TRACKED
    if leaf in ("running_mean", "running_var") and {"running_mean", "running_var"} <= leaves:
        return Rule.BATCHNORM_RUNNING_STATS
    if leaf in ("weight", "bias") and {"running_mean", "running_var"} <= leaves and "num_batches_tracked" not in leaves:
        # FrozenBatchNorm2d (torchvision, detectron2, DETR) registers all four as buffers; nn.BatchNorm* and
        # InstanceNorm with running stats always save num_batches_tracked beside them.
        return Rule.FROZEN_BATCHNORM
    if _is_spectral_uv(parts, leaves):
        return Rule.SPECTRAL_NORM_UV
    if _is_quant(parts, leaves):
        return Rule.QUANT_OBSERVER
    if leaf in _ATTENTION_MASKS or (
        # GPT-2 style attention keeps its causal mask as ``attn.bias``, a bool/uint8 (1, 1, n, n) tensor.
        leaf == "bias" and info.dtype in ("bool", "uint8") and len(info.shape) == 4 and info.shape[-1] == info.shape[-2]
    ):
        return Rule.ATTENTION_MASK
    if leaf in ("position_ids", "token_type_ids") and not is_floating_dtype(info.dtype):
        return Rule.POSITION_IDS
    if leaf in _ROTARY:
        return Rule.ROTARY_CACHE
    for known in KNOWN_BUFFERS:
        if known.matches(parts, tuple(info.shape)):
            return known.rule
    return None


@dataclass(frozen=True)
class KnownBuffer:
    """A persistent buffer of a known architecture, recognised by its exact last name parts and its shape."""

    suffix: tuple[str, ...]  # the name's last components, compared whole
    shape: str  # "1,V": (1, n); "1,1,T,T": (1, 1, n, n)
    rule: Rule
    architectures: str  # where it comes from (documentation)

    def matches(self, parts: Sequence[str], shape: tuple[int, ...]) -> bool:
        if tuple(parts[-len(self.suffix):]) != self.suffix:
            return False
        if self.shape == "1,V":
            return len(shape) == 2 and shape[0] == 1
        return len(shape) == 4 and shape[:2] == (1, 1) and shape[2] == shape[3]


# Float buffers no dtype rule can see. Shapes are part of the key: a Linear's ``bias`` is 1-D, never (1, 1, T, T).
KNOWN_BUFFERS: tuple[KnownBuffer, ...] = (
    KnownBuffer(("final_logits_bias",), "1,V", Rule.FINAL_LOGITS_BIAS,
                "BART, mBART, Marian, Pegasus, Blenderbot, PLBart (register_buffer in *ForConditionalGeneration)"),
    KnownBuffer(("attn", "bias"), "1,1,T,T", Rule.CAUSAL_MASK,
                "nanoGPT CausalSelfAttention (float tril mask), GPT-2/GPT-J style attention"),
    KnownBuffer(("attention", "bias"), "1,1,T,T", Rule.CAUSAL_MASK, "GPT-Neo GPTNeoSelfAttention"),
)


# -- quantized layouts -------------------------------------------------------------------------------------------

_GPTQ_FROZEN = frozenset({"qweight", "qzeros", "scales", "bias"})
_GPTQ_INDEX = frozenset({"g_idx"})
_BNB4_FROZEN = frozenset({"absmax", "quant_map", "nested_absmax", "nested_quant_map"})
_BNB4_STATE = ("bitsandbytes__nf4", "bitsandbytes__fp4")
_WEIGHT_SCALES = frozenset({"weight_scale", "weight_scale_inv"})
_SCALED_FROZEN = frozenset({"weight", "weight_zero_point"}) | _WEIGHT_SCALES
_ACTIVATION_SCALES = frozenset({"input_scale", "output_scale", "k_scale", "v_scale", "weight_g_idx"})


def quantized_rule(info: TensorInfo, leaves: set[str], bnb4_weights: set[str]) -> tuple[TensorKind, Rule] | None:
    """The kind of a tensor of a quantized layer (always frozen), by its layout's documented names, or ``None``.

    ``bnb4_weights``: names ``W`` of the group that have a ``W.quant_state.bitsandbytes__nf4/fp4`` entry.
    """
    parts = info.name.split(".")
    leaf = parts[-1]
    # AutoGPTQ/GPTQModel QuantLinear and AutoAWQ WQLinear: int32-packed weights and zeros, float scales.
    if {"qweight", "qzeros", "scales"} <= leaves:
        if leaf in _GPTQ_FROZEN:
            return TensorKind.PARAMETER, Rule.GPTQ_AWQ
        if leaf in _GPTQ_INDEX:
            return TensorKind.BUFFER, Rule.GPTQ_AWQ
    # bitsandbytes Linear8bitLt: int8 ``weight`` with its row scales ``SCB`` (and an older ``weight_format`` flag).
    if "SCB" in leaves and "weight" in leaves:
        if leaf in ("weight", "SCB"):
            return TensorKind.PARAMETER, Rule.BNB_INT8
        if leaf == "weight_format":
            return TensorKind.BUFFER, Rule.BNB_INT8
    # bitsandbytes Linear4bit: packed uint8 ``W``, and ``W.absmax`` … ``W.quant_state.bitsandbytes__nf4``.
    if info.name in bnb4_weights or (info.module in bnb4_weights and leaf in _BNB4_FROZEN):
        return TensorKind.PARAMETER, Rule.BNB_4BIT
    if len(parts) >= 3 and parts[-2] == "quant_state" and ".".join(parts[:-2]) in bnb4_weights:
        return TensorKind.BUFFER, Rule.BNB_4BIT
    # fp8 / int8 weights with a scale (compressed-tensors, FBGEMM fp8, finegrained fp8, torchao float8 exports).
    if leaves & _WEIGHT_SCALES and "weight" in leaves:
        if leaf in _SCALED_FROZEN:
            return TensorKind.PARAMETER, Rule.SCALED_WEIGHT
        if leaf in _ACTIVATION_SCALES:
            return TensorKind.BUFFER, Rule.SCALED_WEIGHT
    return None


def _bnb4_weights(group: TensorGroup) -> set[str]:
    out = set()
    for info in group.tensors:
        parts = info.name.split(".")
        if len(parts) >= 3 and parts[-2] == "quant_state" and parts[-1] in _BNB4_STATE:
            out.add(".".join(parts[:-2]))
    return out


_FROZEN_BY_RULE = frozenset({Rule.GPTQ_AWQ, Rule.BNB_INT8, Rule.BNB_4BIT, Rule.SCALED_WEIGHT})


def _is_spectral_uv(parts: list[str], leaves: set[str]) -> bool:
    leaf = parts[-1]
    # torch.nn.utils.spectral_norm: ``weight_orig`` (parameter) beside ``weight_u``/``weight_v`` (buffers); the
    # sibling test keeps weight_norm's ``weight_v`` (a parameter, beside ``weight_g``) out.
    if leaf.endswith(("_u", "_v")) and f"{leaf[:-2]}_orig" in leaves:
        return True
    # torch.nn.utils.parametrizations.spectral_norm: ``<module>.parametrizations.<name>.<i>._u``.
    return leaf in ("_u", "_v") and len(parts) >= 4 and parts[-4] == "parametrizations" and parts[-2].isdigit()


def _is_quant(parts: list[str], leaves: set[str]) -> bool:
    leaf, modules = parts[-1], parts[:-1]
    # prepare/prepare_qat name their observers and fake-quant modules exactly so.
    if any(m == "activation_post_process" or m.startswith("activation_post_process_") for m in modules):
        return True
    if any(m.endswith("_fake_quant") for m in modules):
        return True
    if leaf in _QUANT_MODULE_FLAGS and {"scale", "zero_point"} <= leaves:
        return True
    return leaf in _OBSERVER_LEAVES and {"min_val", "max_val"} <= leaves


def _leaves_by_module(group: TensorGroup) -> dict[str, set[str]]:
    leaves: dict[str, set[str]] = defaultdict(set)
    for info in group.tensors:
        leaves[info.module].add(info.name.rpartition(".")[2])
    return leaves


def _set(info: TensorInfo, kind: TensorKind, trainable: Trainable, rule: Rule) -> None:
    info.kind, info.trainable, info.source = kind, trainable, rule


def _is_layout_verdict(info: TensorInfo) -> bool:
    """A verdict the checkpoint's layout states exactly (``peft:adapter``, ``deepspeed:…``): kept as it is."""
    return bool(info.source) and info.source not in _RULE_VALUES


_RULE_VALUES = frozenset(r.value for r in Rule)


def _classify_by_rules(group: TensorGroup) -> None:
    leaves = _leaves_by_module(group)
    bnb4 = _bnb4_weights(group)
    for info in group.tensors:
        if _is_layout_verdict(info):
            continue
        module_leaves = leaves[info.module]
        quantized = quantized_rule(info, module_leaves, bnb4)
        rule = buffer_rule(info, module_leaves) if quantized is None else None
        if quantized is not None:
            _set(info, quantized[0], Trainable.FALSE, quantized[1])
        elif rule is not None:
            _set(info, TensorKind.BUFFER, Trainable.FALSE, rule)
        elif not is_floating_dtype(info.dtype):
            _set(info, TensorKind.BUFFER, Trainable.FALSE, Rule.NON_FLOAT)
        elif info.name.rpartition(".")[2] in ("weight", "bias") and {"running_mean", "running_var"} <= module_leaves:
            _set(info, TensorKind.PARAMETER, Trainable.UNKNOWN, Rule.NORM_LAYER)
        else:
            _set(info, TensorKind.PARAMETER, Trainable.UNKNOWN, Rule.FLOAT_PARAMETER)


def _copy_tied(group: TensorGroup) -> None:
    """A tensor viewing another's storage (tied weights) gets the verdict of the first one."""
    by_name = {info.name: info for info in group.tensors}
    for info in group.tensors:
        target = by_name.get(info.tied_to or "")
        if target is not None and target is not info:
            info.kind, info.trainable, info.source = target.kind, target.trainable, target.source


# -- optimizer state ---------------------------------------------------------------------------------------------

# Optimizer states with the parameter's own shape (torch.optim: Adam/AdamW/NAdam/RAdam/Adamax/SGD/RMSprop/Adagrad/
# Adadelta/ASGD/Rprop). ``step`` and other scalars say nothing about the parameter's shape.
_PARAM_SHAPED_STATES = (
    "exp_avg", "exp_avg_sq", "max_exp_avg_sq", "momentum_buffer", "square_avg", "grad_avg", "acc_delta", "sum",
    "exp_inf", "ax", "prev", "step_size",
)


@dataclass
class _Slot:
    """One parameter an optimizer holds, as far as its state tells."""

    shape: tuple[int, ...] | None  # None: no parameter-shaped state, matches any entry
    stateless_among_stateful: bool  # no state while others in its param group have some


OPTIMIZER_STATE_NAMES = frozenset(_PARAM_SHAPED_STATES) | {"step"}


def _candidates(group: TensorGroup) -> list[TensorInfo]:
    """The entries an optimizer may hold: floating-point, not a buffer by an exact rule, not a tied view, not a
    quantized (frozen) weight, not decided by the layout."""
    return [i for i in group.tensors if i.kind == TensorKind.PARAMETER and not i.tied_to
            and i.source not in _FROZEN_BY_RULE and not _is_layout_verdict(i)]


def _match_by_name(
    groups: Sequence[TensorGroup], optimizers: Sequence[OptimizerState], notes: list[str]
) -> list[tuple[TensorInfo, Rule]]:
    """Optimizers that name their parameters (DCP): held when named, else not held, in each group they name."""
    held = {str(p.param_id) for opt in optimizers for p in opt.params if p.state_shapes}
    if not held:
        return []
    out = []
    matched = 0
    for group in groups:
        cands = _candidates(group)
        names = {id(c) for c in cands if c.name in held or c.raw_name in held}
        if not names:
            continue
        matched += len(names)
        out += [(c, Rule.OPTIMIZER_HELD if id(c) in names else Rule.OPTIMIZER_NOT_HELD) for c in cands]
    if matched < len(held):
        notes.append(f"{len(held) - matched} parameters named by the optimizer state are in no group; trainable of "
                     "the others follows the names found")
    return out


def _slots(optimizer: OptimizerState) -> list[list[_Slot]]:
    """The optimizer's parameters, one list per param group in param_groups order."""
    by_group: dict[int, list] = defaultdict(list)
    for p in optimizer.params:
        by_group[p.group_index].append(p)
    units = []
    for _, params in sorted(by_group.items()):
        any_state = any(p.state_shapes for p in params)
        units.append([
            _Slot(
                next((tuple(p.state_shapes[s]) for s in _PARAM_SHAPED_STATES if s in p.state_shapes), None),
                any_state and not p.state_shapes,
            )
            for p in params
        ])
    return units


def _matches(slot: _Slot, info: TensorInfo) -> bool:
    return slot.shape is None or tuple(slot.shape) == tuple(info.shape)


def _embedding_bounds(slots: Sequence[_Slot], cands: Sequence[TensorInfo]) -> tuple[list[int], list[int]] | None:
    """Leftmost and rightmost in-order placements of ``slots`` among ``cands``; ``None`` when none exists.

    Every placement lies position-wise between the two, so a slot whose bounds agree is placed there in all.
    """
    left, j = [], 0
    for slot in slots:
        while j < len(cands) and not _matches(slot, cands[j]):
            j += 1
        if j == len(cands):
            return None
        left.append(j)
        j += 1
    right, j = [], len(cands) - 1
    for slot in reversed(slots):
        while j >= 0 and not _matches(slot, cands[j]):
            j -= 1
        right.append(j)
        j -= 1
    return left, right[::-1]


@dataclass
class _Placement:
    """Per candidate position: held for sure (and by which slot), or possibly held.

    ``possible`` is built from the slots' ranges in one sweep (a difference array for shapeless slots, merged
    ranges per shape otherwise), so a placement costs O(n log n) even when every range spans most candidates.
    """

    certain: dict[int, _Slot] = field(default_factory=dict)
    possible: set[int] = field(default_factory=set)
    by_shape: bool = False  # placed by shape counts, not in order

    def add(self, slots: Sequence[_Slot], cands: Sequence[TensorInfo], bounds: tuple[list[int], list[int]]) -> None:
        anywhere = [0] * (len(cands) + 1)
        ranges: dict[tuple[int, ...], list[tuple[int, int]]] = defaultdict(list)
        for slot, lo, hi in zip(slots, *bounds):
            if lo == hi:
                self.certain[lo] = slot
            if slot.shape is None:
                anywhere[lo] += 1
                anywhere[hi + 1] -= 1
            else:
                ranges[tuple(slot.shape)].append((lo, hi))
        covered = 0
        for j in range(len(cands)):
            covered += anywhere[j]
            if covered:
                self.possible.add(j)
        if not ranges:
            return
        positions: dict[tuple[int, ...], list[int]] = defaultdict(list)
        for j, info in enumerate(cands):
            positions[tuple(info.shape)].append(j)
        for shape, spans in ranges.items():
            where = positions.get(shape, [])
            for lo, hi in _merged(spans):
                self.possible.update(where[bisect.bisect_left(where, lo) : bisect.bisect_right(where, hi)])


def _merged(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Overlapping or touching ``[lo, hi]`` ranges joined."""
    out: list[tuple[int, int]] = []
    for lo, hi in sorted(spans):
        if out and lo <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return out


def _place(optimizer: OptimizerState, cands: Sequence[TensorInfo]) -> _Placement | None:
    """Line the optimizer's parameters up with ``cands``: all groups in a row, else group by group, else (files that
    sort their keys, such as safetensors, lose the model's order) by shape counts."""
    units = _slots(optimizer)
    placement = _Placement()
    bounds = _embedding_bounds([s for u in units for s in u], cands)
    if bounds is not None:
        placement.add([s for u in units for s in u], cands, bounds)
        return placement
    if len(units) >= 2:
        # Param groups split across the model (e.g. weight decay on weights, none on biases and norms).
        for unit in units:
            bounds = _embedding_bounds(unit, cands)
            if bounds is None:
                break
            placement.add(unit, cands, bounds)
        else:
            return placement
    return _place_by_shape([s for u in units for s in u], cands)


def _place_by_shape(slots: Sequence[_Slot], cands: Sequence[TensorInfo]) -> _Placement | None:
    """Order-free placement: a shape held as often as it occurs is held everywhere, one never held nowhere, any
    other count is ambiguous; slots without a parameter-shaped state make every uncertain entry ambiguous."""
    by_shape: dict[tuple[int, ...], list[_Slot]] = defaultdict(list)
    wildcards = 0
    for slot in slots:
        if slot.shape is None:
            wildcards += 1
        else:
            by_shape[tuple(slot.shape)].append(slot)
    positions: dict[tuple[int, ...], list[int]] = defaultdict(list)
    for j, info in enumerate(cands):
        positions[tuple(info.shape)].append(j)
    if any(len(held) > len(positions.get(shape, ())) for shape, held in by_shape.items()):
        return None
    if len(slots) > len(cands):
        return None
    placement = _Placement(by_shape=True)
    for shape, where in positions.items():
        held = by_shape.get(shape, [])
        if held and len(held) == len(where):
            placement.certain.update(zip(where, held))
        elif held or wildcards:
            placement.possible.update(where)
    return placement


def _align_optimizers(
    groups: Sequence[TensorGroup], optimizers: Iterable[OptimizerState], notes: list[str]
) -> dict[int, list[Rule]]:
    """Per group index an optimizer lined up with: the rule of each candidate, in :func:`_candidates` order."""
    placements: dict[int, list[_Placement]] = defaultdict(list)
    for opt in optimizers:
        if not opt.params:
            continue
        fits = []
        for gi, group in enumerate(groups):
            cands = _candidates(group)
            placement = _place(opt, cands)
            if placement is not None:
                fits.append((len(cands) != len(opt.params), gi, placement))
        label = f"optimizer {opt.key_path or '<root>'!r} ({len(opt.params)} parameters)"
        if not fits:
            notes.append(
                f"{label} does not line up with the floating-point entries of any group (shapes or order differ); "
                "trainable left unknown"
            )
            continue
        # Its own group first (same first key-path component: a model-parallel rank's file), then in order, then
        # exact cover, then file order.
        home = opt.key_path.partition("/")[0]
        fits.sort(key=lambda f: (groups[f[1]].name.partition("/")[0] != home, f[2].by_shape, f[0], f[1]))
        _, gi, placement = fits[0]
        if placement.by_shape:
            notes.append(f"{label} placed by shape counts: the file's key order is not the optimizer's")
        if len(fits) > 1 and groups[gi].name.partition("/")[0] != home:
            others = ", ".join(repr(groups[f[1]].name) for f in fits[1:])
            notes.append(f"{label} also lines up with group(s) {others}; used for group {groups[gi].name!r}")
        placements[gi].append(placement)
    out = {}
    for gi, group_placements in placements.items():
        group = groups[gi]
        verdicts = [_verdict(j, group_placements) for j in range(len(_candidates(group)))]
        ambiguous = verdicts.count(Rule.OPTIMIZER_AMBIGUOUS)
        if ambiguous:
            notes.append(
                f"group {group.name!r}: {ambiguous} entries may or may not be held by the optimizer (equal shapes in "
                "a row or no parameter-shaped state); their trainable is unknown"
            )
        out[gi] = verdicts
    return out


def _verdict(j: int, placements: Sequence[_Placement]) -> Rule:
    slots = [p.certain[j] for p in placements if j in p.certain]
    if slots:
        if all(s.stateless_among_stateful for s in slots):
            return Rule.OPTIMIZER_HELD_WITHOUT_STATE
        return Rule.OPTIMIZER_HELD
    if any(j in p.possible for p in placements):
        return Rule.OPTIMIZER_AMBIGUOUS
    return Rule.OPTIMIZER_NOT_HELD


_TRAINABLE_BY_RULE = {
    Rule.OPTIMIZER_HELD: Trainable.TRUE,
    Rule.OPTIMIZER_HELD_WITHOUT_STATE: Trainable.FALSE,  # frozen after the optimizer was built, or never got a grad
    Rule.OPTIMIZER_NOT_HELD: Trainable.FALSE,
    Rule.OPTIMIZER_AMBIGUOUS: Trainable.UNKNOWN,
}


def _set_optimizer_verdict(info: TensorInfo, rule: str) -> None:
    _set(info, TensorKind.PARAMETER, _TRAINABLE_BY_RULE[Rule(rule)], Rule(rule))


# -- with the model ----------------------------------------------------------------------------------------------


def _classify_by_model(
    groups: Sequence[TensorGroup], model: nn.Module, optimizer_verdicts: dict[int, str], model_rule: Rule | None = None
) -> ModelReport:
    from ckptboard.core.hf_model import saved_key_renamer

    try:
        index = index_model(model, saved_key_renamer(model))
    except Exception as e:  # a user's module whose state_dict()/named_parameters() fails
        raise ModelSpecError(
            f"the model's state_dict()/named_parameters() raised {type(e).__name__}: {e}; check the model class"
        ) from e
    matches = [match_group(g, index) for g in groups] or [match_group(TensorGroup(""), index)]
    best = max(matches, key=lambda m: len(m.mapping))  # first on a tie: file order
    others = []
    disagreements = []
    for match in matches:
        # Another group (an EMA copy, say) is classified by the model only where names and shapes both agree.
        same_shape_only = match is not best
        used = False
        for info in match.group.tensors:
            key = match.mapping.get(info.name)
            if key is None:
                continue
            if key in index.params:
                shape, requires_grad = index.params[key]
                if same_shape_only and shape != tuple(info.shape):
                    continue
                trainable = Trainable.TRUE if requires_grad else Trainable.FALSE
                said = optimizer_verdicts.get(id(info))
                if said in (Rule.OPTIMIZER_HELD, Rule.OPTIMIZER_NOT_HELD) and _TRAINABLE_BY_RULE[Rule(said)] != trainable:
                    if model_rule is Rule.MODEL_CONFIG:
                        trainable = _TRAINABLE_BY_RULE[Rule(said)]  # a config only knows the default requires_grad
                    else:
                        disagreements.append(f"{info.name}: requires_grad={requires_grad} but {said}")
                _set(info, TensorKind.PARAMETER, trainable, model_rule or Rule.MODEL_PARAMETER)
                used = True
            elif key in index.buffers:
                if same_shape_only and index.buffers[key] != tuple(info.shape):
                    continue
                _set(info, TensorKind.BUFFER, Trainable.FALSE, model_rule or Rule.MODEL_BUFFER)
                used = True
        if used and match is not best:
            others.append(match.group.name)
    report = build_report(best, index, others)
    report.trainable_disagreements = sorted(disagreements)
    return report
