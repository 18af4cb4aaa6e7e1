"""Load the PP-OCRv6-small recogniser shipped in the rapidocr wheel (ONNX) into transformers' PyTorch model.

The ONNX graph is walked in execution order into a list of weighted ops (conv, conv+BatchNorm, linear,
LayerNorm); ``PPOCRV6SmallRecForTextRecognition`` is walked in module order into the same kinds of slots; the
two lists are paired one for one with every shape checked. Paddle folded most BatchNorms into their conv
(the ONNX conv is followed by an ``Add`` of a bias): the model's BatchNorm then becomes an identity that
carries that bias (weight 1, bias b, mean 0, var 1 - eps). Linear weights are stored [in, out] in ONNX.
LayerNorm epsilons are read per op from the graph (1e-5 in the blocks, 1e-6 in the final norm).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from deepsynth.models.ppocr.charset import Charset

if TYPE_CHECKING:
    import onnx
    import torch
    from transformers import PPOCRV6SmallRecForTextRecognition

REC_ONNX = "PP-OCRv6_rec_small.onnx"
DET_ONNX = "PP-OCRv6_det_small.onnx"


def shipped_model_path(name: str = REC_ONNX) -> Path:
    """Path of a model file shipped inside the installed rapidocr wheel (never downloads)."""
    import importlib.util

    spec = importlib.util.find_spec("rapidocr")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the rapidocr package is not installed: pip install rapidocr==3.10.0")
    path = Path(next(iter(spec.submodule_search_locations))) / "models" / name
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: this rapidocr version does not ship {name}")
    return path


@dataclass
class OnnxOp:
    """One weighted op of the ONNX graph, in execution order."""

    kind: str  # "conv" (bias folded or own), "conv_bn", "linear", "layer_norm"
    node: str
    tensors: dict[str, np.ndarray] = field(default_factory=dict)
    eps: float | None = None


def _onnx_ops(model: onnx.ModelProto) -> list[OnnxOp]:
    from onnx import numpy_helper

    graph = model.graph
    inits = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    producer = {out: n for n in graph.node for out in n.output}
    consumers: dict[str, list[Any]] = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)

    def only_consumer(name: str) -> Any:
        cons = consumers.get(name, [])
        return cons[0] if len(cons) == 1 else None

    def init_input(node: Any) -> tuple[str | None, str | None]:
        """(initialiser input, other input) of a binary node."""
        a, b = node.input[0], node.input[1]
        if b in inits:
            return b, a
        if a in inits:
            return a, b
        return None, None

    ops: list[OnnxOp] = []
    for n in graph.node:
        if n.op_type == "Conv":
            weight = inits[n.input[1]]
            nxt = only_consumer(n.output[0])
            if len(n.input) > 2 and n.input[2]:
                ops.append(OnnxOp("conv", n.name, {"weight": weight, "bias": inits[n.input[2]]}))
            elif nxt is not None and nxt.op_type == "BatchNormalization":
                scale, bias, mean, var = (inits[x] for x in nxt.input[1:5])
                eps = next((a.f for a in nxt.attribute if a.name == "epsilon"), 1e-5)
                ops.append(
                    OnnxOp(
                        "conv_bn",
                        n.name,
                        {"weight": weight, "bn_weight": scale, "bn_bias": bias, "mean": mean, "var": var},
                        eps=eps,
                    )
                )
            elif nxt is not None and nxt.op_type == "Add" and init_input(nxt)[0] is not None:
                bias = inits[init_input(nxt)[0]].reshape(-1)
                ops.append(OnnxOp("conv", n.name, {"weight": weight, "bias": bias}))
            else:
                raise ValueError(f"ONNX conv {n.name}: cannot find its bias or BatchNorm")
        elif n.op_type == "MatMul" and n.input[1] in inits:
            nxt = only_consumer(n.output[0])
            bias_name = init_input(nxt)[0] if nxt is not None and nxt.op_type == "Add" else None
            if bias_name is None:
                raise ValueError(f"ONNX MatMul {n.name}: no bias Add follows")
            ops.append(OnnxOp("linear", n.name, {"weight": inits[n.input[1]].T, "bias": inits[bias_name]}))
        elif n.op_type == "Mul":
            # LayerNorm, decomposed: ... Add(var, eps) -> Sqrt -> Div(x - mean, .) -> Mul(., gamma) -> Add(., beta)
            gamma_name, other = init_input(n)
            div = producer.get(other) if other else None
            if gamma_name is None or div is None or div.op_type != "Div":
                continue
            sqrt = producer.get(div.input[1])
            if sqrt is None or sqrt.op_type != "Sqrt":
                continue
            eps_add = producer[sqrt.input[0]]
            eps_name, _ = init_input(eps_add)
            nxt = only_consumer(n.output[0])
            beta_name = init_input(nxt)[0] if nxt is not None and nxt.op_type == "Add" else None
            if eps_name is None or beta_name is None:
                raise ValueError(f"ONNX LayerNorm at {n.name}: cannot find eps or bias")
            ops.append(
                OnnxOp(
                    "layer_norm",
                    n.name,
                    {"weight": inits[gamma_name].reshape(-1), "bias": inits[beta_name].reshape(-1)},
                    eps=float(inits[eps_name]),
                )
            )
    return ops


def _model_slots(model: torch.nn.Module) -> list[tuple[str, str, list[torch.nn.Module]]]:
    """(kind, name, modules) for every weighted unit of the torch model, in execution order.

    Registration order is not execution order (an SVTR block registers attention before its first
    LayerNorm), so one dummy forward with hooks records the order in which the modules run.
    """
    import torch
    import torch.nn as nn

    slots: dict[str, tuple[str, str, list[nn.Module]]] = {}
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Conv2d):
            parent = model.get_submodule(name.rsplit(".", 1)[0])
            bn = getattr(parent, "normalization", None)
            if isinstance(bn, nn.BatchNorm2d) and getattr(parent, "convolution", None) is mod:
                slots[name] = ("conv_bn", name, [mod, bn])
            else:
                slots[name] = ("conv", name, [mod])
        elif isinstance(mod, nn.Linear):
            slots[name] = ("linear", name, [mod])
        elif isinstance(mod, nn.LayerNorm):
            slots[name] = ("layer_norm", name, [mod])
    order: list[str] = []
    handles = [
        model.get_submodule(name).register_forward_hook(
            lambda _m, _i, _o, name=name: order.append(name) if name not in order else None
        )
        for name in slots
    ]
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, 48, 64))
    finally:
        for h in handles:
            h.remove()
    if set(order) != set(slots):
        raise ValueError(f"modules never run in forward: {sorted(set(slots) - set(order))[:5]}")
    return [slots[name] for name in order]


def _encoder_neck_order(slots: list[tuple[str, str, list[Any]]], ops: list[OnnxOp], graph: Any) -> None:
    """Sanity check of the only ambiguous pairing: the SVTR neck's skip conv and reduce conv have the same
    shape; the reduce conv is the one whose (activated) output feeds the depthwise 1x7 conv."""
    names = [s[1] for s in slots]
    try:
        i_skip = next(i for i, n in enumerate(names) if n.endswith("encoder.conv_block.0.convolution"))
    except StopIteration:
        return
    skip_op, reduce_op, local_op = ops[i_skip], ops[i_skip + 1], ops[i_skip + 2]
    nodes = {n.name: n for n in graph.node}
    producer = {out: n for n in graph.node for out in n.output}
    # walk back from the depthwise conv's input through activation/BN nodes until a Conv is reached
    cur = producer.get(nodes[local_op.node].input[0])
    while cur is not None and cur.op_type != "Conv":
        cur = producer.get(cur.input[0])
    if cur is None or cur.name != reduce_op.node:
        raise ValueError(
            f"unexpected SVTR neck wiring: depthwise conv {local_op.node} is fed by "
            f"{cur.name if cur is not None else None}, expected {reduce_op.node} (skip conv {skip_op.node})"
        )


def build_config(num_classes: int, **overrides: Any) -> Any:
    from transformers import PPOCRV6SmallRecConfig

    return PPOCRV6SmallRecConfig(head_out_channels=num_classes, **overrides)


def load_onnx_into_model(onnx_path: str | Path) -> tuple[PPOCRV6SmallRecForTextRecognition, Charset]:
    """Convert the ONNX recogniser into ``PPOCRV6SmallRecForTextRecognition`` (eval mode) + its charset."""
    import onnx
    import torch
    from transformers import PPOCRV6SmallRecForTextRecognition

    proto = onnx.load(str(onnx_path))
    meta = {p.key: p.value for p in proto.metadata_props}
    if "character" not in meta:
        raise ValueError(
            f"{onnx_path}: no 'character' metadata; not a PP-OCR recogniser exported by paddle2onnx"
        )
    charset = Charset.from_onnx_metadata(meta["character"])
    ops = _onnx_ops(proto)
    head_op = ops[-1]
    if head_op.kind != "linear" or head_op.tensors["weight"].shape[0] != charset.num_classes:
        raise ValueError(
            f"{onnx_path}: final layer has {head_op.tensors['weight'].shape[0]} classes, "
            f"character list gives {charset.num_classes} (blank + {len(charset.chars)})"
        )
    model = PPOCRV6SmallRecForTextRecognition(build_config(charset.num_classes)).eval()
    slots = _model_slots(model)
    if len(slots) != len(ops):
        raise ValueError(f"ONNX has {len(ops)} weighted ops, the model {len(slots)} weighted modules")
    _encoder_neck_order(slots, ops, proto.graph)

    filled: set[str] = set()
    state = dict(model.state_dict())

    def put(module_name: str, attr: str, value: np.ndarray) -> None:
        key = f"{module_name}.{attr}" if module_name else attr
        target = state[key]
        if tuple(target.shape) != tuple(value.shape):
            raise ValueError(f"shape mismatch for {key}: model {tuple(target.shape)} vs ONNX {value.shape}")
        with torch.no_grad():
            target.copy_(torch.from_numpy(np.array(value, copy=True)).to(target.dtype))
        filled.add(key)

    name_of = {id(m): n for n, m in model.named_modules()}
    ln_eps: dict[str, float] = {}
    for (kind, name, mods), op in zip(slots, ops, strict=True):
        if kind == "conv_bn" and op.kind in ("conv", "conv_bn"):
            conv, bn = mods
            bn_name = name_of[id(bn)]
            put(name, "weight", op.tensors["weight"])
            if op.kind == "conv_bn":
                put(bn_name, "weight", op.tensors["bn_weight"])
                put(bn_name, "bias", op.tensors["bn_bias"])
                put(bn_name, "running_mean", op.tensors["mean"])
                put(bn_name, "running_var", op.tensors["var"])
                if np.float32(op.eps) != np.float32(bn.eps):  # not persisted by save_pretrained
                    raise ValueError(
                        f"ONNX BatchNorm {op.node}: eps {op.eps} differs from the model's {bn.eps}"
                    )
            else:  # folded: identity BatchNorm carrying the bias
                c = op.tensors["bias"].shape[0]
                put(bn_name, "weight", np.ones(c, np.float32))
                put(bn_name, "bias", op.tensors["bias"])
                put(bn_name, "running_mean", np.zeros(c, np.float32))
                put(bn_name, "running_var", np.full(c, 1.0 - bn.eps, np.float32))
            filled.add(f"{bn_name}.num_batches_tracked")
        elif kind == op.kind and kind in ("conv", "linear"):
            put(name, "weight", op.tensors["weight"])
            put(name, "bias", op.tensors["bias"])
        elif kind == op.kind == "layer_norm":
            put(name, "weight", op.tensors["weight"])
            put(name, "bias", op.tensors["bias"])
            ln_eps[name] = float(op.eps)
        else:
            raise ValueError(f"cannot pair model module {name} ({kind}) with ONNX {op.node} ({op.kind})")
    missing = sorted(set(state) - filled)
    if missing:
        raise ValueError(f"model tensors not filled from ONNX: {missing[:5]} ... ({len(missing)})")
    set_layer_norm_eps(model, ln_eps)
    return model, charset


def set_layer_norm_eps(model: torch.nn.Module, eps: dict[str, float]) -> None:
    """Set per-module LayerNorm eps and record it in the config so save/load keeps it."""
    for name, value in eps.items():
        model.get_submodule(name).eps = value
    model.config.deepsynth_layer_norm_eps = dict(eps)


def apply_saved_layer_norm_eps(model: torch.nn.Module) -> None:
    """Re-apply the per-module LayerNorm eps recorded in the config (after ``from_pretrained``)."""
    eps = getattr(model.config, "deepsynth_layer_norm_eps", None) or {}
    for name, value in eps.items():
        model.get_submodule(name).eps = float(value)


def convert_shipped(onnx_path: str | Path | None = None) -> tuple[Any, Charset, float]:
    """Convert the shipped recogniser; returns (model, charset, seconds)."""
    t0 = time.perf_counter()
    model, charset = load_onnx_into_model(onnx_path or shipped_model_path())
    return model, charset, time.perf_counter() - t0
