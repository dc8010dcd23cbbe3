"""Freeze a SavedModel's serving function and optimize the GraphDef for a graph runtime.

Used by the TF.js writer (and open to any format that consumes a TensorFlow
GraphDef). Three steps, each with TensorFlow's own tools where they exist:

1. ``freeze_serving``: ``convert_variables_to_constants_v2`` on the
   ``serving_default`` function, then the shared rewrites of
   :mod:`graph_rewrite` (nested function calls inlined, Erfc expanded).
2. ``run_grappler``: constant folding, arithmetic simplification, dependency
   and pruning passes (the passes the official TF.js converter runs). Grappler
   already folds a BatchNorm scale that follows a ``Conv2D`` into its filter.
3. ``fuse_for_runtime``: our own fusion of ``Conv2D`` / ``DepthwiseConv2dNative``
   / ``MatMul`` with a following per-channel scale, a per-channel bias and an
   activation into ``_FusedConv2D`` / ``FusedDepthwiseConv2dNative`` /
   ``_FusedMatMul``. We do not use Grappler's ``remap`` pass for this: the
   official converter does, and on Keras 3 models it produces fused ops whose
   "bias" is a rank-4 or rank-0 tensor, which the TF.js runtime refuses
   ("FusedConv2D only supports rank-1 bias"). Here a fusion happens only when
   every absorbed operand is a constant that reshapes to exactly one value per
   output channel, so the runtime always gets a rank-1 bias.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from deploykit._quiet import import_tensorflow, native_stderr_captured
from deploykit.converters.graph_rewrite import const_node, prepare_for_export

GRAPPLER_PASSES = ("debug_stripper", "pruning", "constfold", "dependency", "pruning", "constfold", "dependency")

# Activations the TF.js fused kernels apply (tfjs-core fused_util / the wasm FusableActivation enum).
FUSABLE_ACTIVATIONS = {"Relu": "Relu", "Relu6": "Relu6", "Elu": "Elu", "LeakyRelu": "LeakyRelu", "Sigmoid": "Sigmoid"}
FUSED_OP = {"Conv2D": "_FusedConv2D", "DepthwiseConv2dNative": "FusedDepthwiseConv2dNative", "MatMul": "_FusedMatMul"}
ADD_OPS = ("BiasAdd", "Add", "AddV2")


@dataclass
class FrozenGraph:
    """A frozen serving function: its GraphDef and the signature's tensor names."""

    graph_def: Any
    inputs: dict[str, tuple[str, Any]]  # signature key -> (tensor name, TensorSpec)
    outputs: dict[str, tuple[str, Any]]
    fusions: dict[str, int] = field(default_factory=dict)

    @property
    def output_nodes(self) -> list[str]:
        return [t.split(":")[0] for t, _ in self.outputs.values()]

    def rewritten(self, graph_def: Any, counts: dict[str, int]) -> "FrozenGraph":
        """The same signature over a rewritten graph (constants left unused dropped), with the rewrite counts added."""
        fusions = dict(self.fusions)
        for k, v in counts.items():
            fusions[k] = fusions.get(k, 0) + v
        return FrozenGraph(_drop_dead_constants(graph_def), self.inputs, self.outputs, fusions)


def freeze_serving(saved_model_dir: Any) -> FrozenGraph:
    """Freeze the SavedModel's ``serving_default`` function into a constant GraphDef."""
    tf = import_tensorflow()
    from tensorflow.python.framework import convert_to_constants

    with native_stderr_captured():
        module = tf.saved_model.load(str(saved_model_dir))
        fn = module.signatures["serving_default"]
        # Loops stay functional (While + body/cond functions), which TF.js executes; lowering them
        # to Enter/Exit/Merge/Switch frames leaves Placeholders its executor waits for.
        frozen = convert_to_constants.convert_variables_to_constants_v2(fn, lower_control_flow=False)
    specs = fn.structured_input_signature[1]
    placeholders = [t for t in frozen.inputs if t.dtype != tf.resource]
    keys = sorted(specs)  # flattened order of a dict structure
    inputs = {k: (t.name, specs[k]) for k, t in zip(keys, placeholders)}
    outs = frozen.structured_outputs
    if not isinstance(outs, dict):
        # The frozen function hands back a list; the signature's dict says which name each one has
        # (flattened in sorted-key order): 'probs', 'cls' as in the TFLite and ONNX artifacts.
        names = sorted(fn.structured_outputs) if isinstance(fn.structured_outputs, dict) else []
        flat = tf.nest.flatten(outs)
        if len(names) != len(flat):
            names = [f"output_{i}" for i in range(len(flat))]
        outs = dict(zip(names, flat))
    outputs = {k: (t.name, tf.TensorSpec(t.shape, t.dtype, k)) for k, t in outs.items()}
    graph_def = prepare_for_export(frozen.graph.as_graph_def())
    return FrozenGraph(graph_def, inputs, outputs)


def run_grappler(frozen: FrozenGraph, passes: tuple[str, ...] = GRAPPLER_PASSES) -> FrozenGraph:
    """Constant-fold and simplify the graph with Grappler; signature tensors are kept."""
    import_tensorflow()
    from tensorflow.core.protobuf import config_pb2, meta_graph_pb2
    from tensorflow.python.grappler import tf_optimizer

    meta = meta_graph_pb2.MetaGraphDef()
    meta.graph_def.CopyFrom(frozen.graph_def)
    # Grappler keeps what the "train_op" collection names: the outputs.
    meta.collection_def["train_op"].node_list.value.extend(frozen.output_nodes)
    config = config_pb2.ConfigProto()
    config.graph_options.rewrite_options.optimizers[:] = list(passes)
    with native_stderr_captured():
        optimized = tf_optimizer.OptimizeGraph(config, meta)
    return FrozenGraph(optimized, frozen.inputs, frozen.outputs, dict(frozen.fusions))


# ---------------------------------------------------------------------------------------------
def _node_of(ref: str) -> str:
    return ref.lstrip("^").split(":")[0]


def _is_output0(ref: str) -> bool:
    return not ref.startswith("^") and (":" not in ref or ref.endswith(":0"))


def _const(nodes: dict[str, Any], ref: str) -> np.ndarray | None:
    node = nodes.get(_node_of(ref))
    if node is None or node.op != "Const" or not _is_output0(ref):
        return None
    tf = import_tensorflow()
    return tf.make_ndarray(node.attr["value"].tensor)


def _per_channel(value: np.ndarray | None, channels: int) -> np.ndarray | None:
    """``value`` as one float per output channel, or None when it is not such a vector.

    Accepts shapes ``()``, ``(1,)``, ``(C,)`` and ``(1, ..., 1, C)``: anything that
    broadcasts along the last axis only. A rank-4 (1,1,1,C) add is exactly what
    the official converter fuses *without* this reshape, and the runtime refuses.
    """
    if value is None or value.dtype != np.float32:
        return None
    if value.size == 1:
        return np.full(channels, value.reshape(()), dtype=np.float32)
    if value.size == channels and value.shape[-1] == channels and all(d == 1 for d in value.shape[:-1]):
        return value.reshape(channels).astype(np.float32)
    return None


def _out_channels(op: Any, w: np.ndarray) -> int:
    if op.op == "Conv2D":
        return int(w.shape[3])
    if op.op == "DepthwiseConv2dNative":
        return int(w.shape[2] * w.shape[3])
    return int(w.shape[0] if op.attr["transpose_b"].b else w.shape[1])


def _scale_weights(op: Any, w: np.ndarray, scale: np.ndarray) -> np.ndarray:
    if op.op == "DepthwiseConv2dNative":
        return (w * scale.reshape(w.shape[2], w.shape[3])).astype(np.float32)
    if op.op == "MatMul" and op.attr["transpose_b"].b:
        return (w * scale[:, None]).astype(np.float32)
    return (w * scale).astype(np.float32)


def fuse_for_runtime(frozen: FrozenGraph, activations: dict[str, str] | None = None) -> FrozenGraph:
    """Fuse conv/matmul + per-channel scale + rank-1 bias + activation into fused ops.

    A fused node takes the name of the last node it absorbs, so every consumer
    keeps its input reference. Nodes that are signature outputs or feed more
    than one consumer end a chain. Counts of fusions are recorded in ``fusions``.
    """
    tf = import_tensorflow()
    from tensorflow.core.framework import graph_pb2, node_def_pb2

    activations = FUSABLE_ACTIVATIONS if activations is None else activations
    gd = graph_pb2.GraphDef()
    gd.CopyFrom(frozen.graph_def)
    nodes = {n.name: n for n in gd.node}
    consumers: dict[str, list[str]] = {}
    for n in gd.node:
        for ref in n.input:
            consumers.setdefault(_node_of(ref), []).append(n.name)
    protected = set(frozen.output_nodes)

    def sole_consumer(name: str) -> Any:
        users = consumers.get(name, [])
        if len(users) != 1 or name in protected:
            return None
        user = nodes[users[0]]
        data_refs = [r for r in user.input if not r.startswith("^")]
        if sum(_node_of(r) == name for r in data_refs) != 1 or any(r.startswith("^") and _node_of(r) == name for r in user.input):
            return None
        if any(_node_of(r) == name and not _is_output0(r) for r in data_refs):
            return None
        return user

    def other_input(node: Any, name: str) -> str | None:
        data_refs = [r for r in node.input if not r.startswith("^")]
        if len(data_refs) != 2:
            return None
        if node.op == "BiasAdd":  # BiasAdd(value, bias): the bias is always the second operand
            return data_refs[1] if _node_of(data_refs[0]) == name else None
        return data_refs[1] if _node_of(data_refs[0]) == name else data_refs[0]

    removed: set[str] = set()
    new_nodes: list[Any] = []
    counts: dict[str, int] = {}
    for op in list(gd.node):
        if op.op not in FUSED_OP or op.name in removed:
            continue
        if op.attr["T"].type != tf.float32.as_datatype_enum:
            continue
        if op.op != "MatMul" and op.attr["data_format"].s not in (b"NHWC", b""):
            continue
        if op.op == "MatMul" and op.attr["transpose_a"].b:
            continue
        w = _const(nodes, op.input[1])
        if w is None or w.dtype != np.float32:
            continue
        channels = _out_channels(op, w)
        chain, cur = [op], op
        scale = bias = None
        act = None
        nxt = sole_consumer(cur.name)
        if nxt is not None and nxt.op == "Mul":
            s = _per_channel(_const(nodes, other_input(nxt, cur.name) or ""), channels)
            if s is not None:
                scale, cur = s, nxt
                chain.append(nxt)
                nxt = sole_consumer(cur.name)
        if nxt is not None and nxt.op in ADD_OPS:
            if nxt.op != "BiasAdd" or nxt.attr["data_format"].s in (b"NHWC", b""):
                b = _per_channel(_const(nodes, other_input(nxt, cur.name) or ""), channels)
                if b is not None:
                    bias, cur = b, nxt
                    chain.append(nxt)
                    nxt = sole_consumer(cur.name)
        if nxt is not None and nxt.op in activations:
            act, cur = nxt, nxt
            chain.append(nxt)
        if len(chain) == 1:
            continue
        if scale is not None:
            w = _scale_weights(op, w, scale)
        base = cur.name
        filt = const_node(f"{base}/fused_weights", w.astype(np.float32))
        new_nodes.append(filt)
        fused = node_def_pb2.NodeDef(name=base, device=op.device)
        for key in op.attr:
            if not key.startswith("_"):
                fused.attr[key].CopyFrom(op.attr[key])
        if bias is None and act is None:  # only a scale folded: the plain op with new weights
            fused.op = op.op
            fused.input.extend([op.input[0], filt.name])
        else:
            if bias is None:  # the fused kernels need a bias operand to apply the activation
                bias = np.zeros(channels, np.float32)
            bnode = const_node(f"{base}/fused_bias", bias.astype(np.float32))
            new_nodes.append(bnode)
            fused.op = FUSED_OP[op.op]
            fused.input.extend([op.input[0], filt.name, bnode.name])
            ops = [b"BiasAdd"] + ([activations[act.op].encode()] if act is not None else [])
            fused.attr["fused_ops"].list.s.extend(ops)
            fused.attr["num_args"].i = 1
            fused.attr["TArgs"].list.type.append(tf.float32.as_datatype_enum)
            fused.attr["epsilon"].f = 0.0
            if act is not None and act.op == "LeakyRelu":
                fused.attr["leakyrelu_alpha"].f = act.attr["alpha"].f
        # control dependencies of absorbed nodes move to the fused node
        fused.input.extend(sorted({r for n in chain for r in n.input if r.startswith("^")}))
        removed.update(n.name for n in chain)
        new_nodes.append(fused)
        counts[fused.op] = counts.get(fused.op, 0) + 1
    kept = [n for n in gd.node if n.name not in removed]
    del gd.node[:]
    gd.node.extend(kept + new_nodes)
    return frozen.rewritten(gd, counts)


def _static_shapes(graph_def: Any, refs: list[str]) -> dict[str, list[int | None] | None]:
    """Static shape of each tensor reference (None where the rank is unknown), by importing the graph."""
    tf = import_tensorflow()
    graph = tf.Graph()
    with graph.as_default(), native_stderr_captured():
        tf.graph_util.import_graph_def(graph_def, name="")
    out: dict[str, list[int | None] | None] = {}
    for ref in refs:
        shape = graph.get_tensor_by_name(ref if ":" in ref else ref + ":0").shape
        out[ref] = None if shape.rank is None else [None if d is None else int(d) for d in shape]
    return out


def _channels_of(graph_def: Any, refs: list[str]) -> dict[str, int | None]:
    """Static last-dimension size of each tensor reference (None when unknown)."""
    return {r: (s[-1] if s else None) for r, s in _static_shapes(graph_def, refs).items()}


def lower_einsum(frozen: FrozenGraph) -> FrozenGraph:
    """Rewrite two-operand ``Einsum`` as Transpose/Reshape/BatchMatMulV2/Reshape/Transpose.

    Keras 3's attention layers emit Einsum (``BTNH,BSNH->BNTS``); TF.js's wasm backend has
    no Einsum kernel ("Kernel 'Einsum' not registered for backend 'wasm'"). Equations
    with ellipses, repeated labels, labels summed away from one operand, or more than one
    unknown batch dimension are left as they are.
    """
    tf = import_tensorflow()
    from tensorflow.core.framework import graph_pb2, node_def_pb2

    einsums = [n for n in frozen.graph_def.node if n.op == "Einsum" and len([r for r in n.input if not r.startswith("^")]) == 2]
    if not einsums:
        return frozen
    shapes = _static_shapes(frozen.graph_def, [r for n in einsums for r in n.input[:2]])
    gd = graph_pb2.GraphDef()
    gd.CopyFrom(frozen.graph_def)
    by_name = {n.name: n for n in gd.node}
    new_nodes: list[Any] = []
    count = 0

    def add(name: str, op: str, inputs: list[str], T: Any, **attrs: Any) -> str:
        node = node_def_pb2.NodeDef(name=name, op=op, input=inputs)
        node.attr["T"].CopyFrom(T)
        for key, value in attrs.items():
            node.attr[key].type = value
        new_nodes.append(node)
        return name

    def const(name: str, values: list[int]) -> str:
        new_nodes.append(const_node(name, np.asarray(values, np.int32)))
        return name

    for src in einsums:
        eq = src.attr["equation"].s.decode().replace(" ", "")
        if "..." in eq or "->" not in eq:
            continue
        lhs, out = eq.split("->")
        parts = lhs.split(",")
        x_ref, y_ref = src.input[0], src.input[1]
        xs, ys = shapes.get(x_ref), shapes.get(y_ref)
        if len(parts) != 2 or xs is None or ys is None:
            continue
        xl, yl = parts
        if len(xl) != len(xs) or len(yl) != len(ys) or any(len(set(t)) != len(t) for t in (xl, yl, out)):
            continue
        size = {**{c: d for c, d in zip(yl, ys)}, **{c: d for c, d in zip(xl, xs)}}
        batch = [c for c in out if c in xl and c in yl]
        contr = [c for c in xl if c in yl and c not in out]
        xfree = [c for c in out if c in xl and c not in yl]
        yfree = [c for c in out if c in yl and c not in xl]
        if set(xl) != set(batch + contr + xfree) or set(yl) != set(batch + contr + yfree) or set(out) != set(batch + xfree + yfree):
            continue  # a label summed away from one operand only
        if any(size[c] is None for c in contr + xfree + yfree) or sum(size[c] is None for c in batch) > 1:
            continue
        if any(xs[xl.index(c)] != ys[yl.index(c)] for c in batch + contr if xs[xl.index(c)] and ys[yl.index(c)]):
            continue  # broadcasting batch labels: leave it to Einsum
        base, T = src.name, src.attr["T"]
        bdims = [-1 if size[c] is None else size[c] for c in batch]
        prod = lambda labels: int(np.prod([size[c] for c in labels])) if labels else 1  # noqa: E731

        def arrange(ref: str, labels: str, order: list[str], tag: str, rows: list[str], cols: list[str]) -> str:
            perm = [labels.index(c) for c in order]
            if perm != list(range(len(labels))):
                ref = add(f"{base}/{tag}_transpose", "Transpose", [ref, const(f"{base}/{tag}_perm", perm)], T,
                          Tperm=tf.int32.as_datatype_enum)
            if len(rows) != 1 or len(cols) != 1:
                ref = add(f"{base}/{tag}_reshape", "Reshape", [ref, const(f"{base}/{tag}_shape", bdims + [prod(rows), prod(cols)])],
                          T, Tshape=tf.int32.as_datatype_enum)
            return ref

        a = arrange(x_ref, xl, batch + xfree + contr, "x", xfree, contr)
        b = arrange(y_ref, yl, batch + contr + yfree, "y", contr, yfree)
        mm = node_def_pb2.NodeDef(name=f"{base}/matmul", op="BatchMatMulV2", input=[a, b])
        mm.attr["T"].CopyFrom(T)
        mm.attr["adj_x"].b = mm.attr["adj_y"].b = False
        new_nodes.append(mm)
        result, produced = mm.name, batch + xfree + yfree
        if len(xfree) != 1 or len(yfree) != 1:
            result = add(f"{base}/unmerge", "Reshape", [result, const(f"{base}/unmerge_shape", bdims + [size[c] for c in xfree + yfree])],
                         T, Tshape=tf.int32.as_datatype_enum)
        perm = [produced.index(c) for c in out]
        node = by_name[src.name]
        controls = [r for r in node.input if r.startswith("^")]
        node.ClearField("attr")
        node.attr["T"].CopyFrom(T)
        del node.input[:]
        if perm == list(range(len(out))):
            node.op = "Identity"
            node.input.extend([result] + controls)
        else:
            node.op = "Transpose"
            node.attr["Tperm"].type = tf.int32.as_datatype_enum
            node.input.extend([result, const(f"{base}/out_perm", perm)] + controls)
        count += 1
    if not count:
        return frozen
    gd.node.extend(new_nodes)
    return frozen.rewritten(gd, {"Einsum lowered to BatchMatMul": count})


def lower_band_part(frozen: FrozenGraph) -> FrozenGraph:
    """Rewrite ``MatrixBandPart`` (tril/triu, attention's causal mask) as SelectV2 (LogicalAnd for bool) with a constant band mask.

    TF.js 4.22 reads ``num_upper`` from the wrong input and keeps the whole upper triangle (measured:
    ``keras.ops.tril`` unmasked on the cpu backend, "Aborted()" on wasm). Needs constant band limits
    and static last two dimensions; the op is left for :func:`deploykit.converters.tfjs.check_ops`
    to refuse otherwise.
    """
    tf = import_tensorflow()
    from tensorflow.core.framework import graph_pb2

    nodes = {n.name: n for n in frozen.graph_def.node}
    bands = [n for n in frozen.graph_def.node if n.op == "MatrixBandPart"]
    if not bands:
        return frozen
    shapes = _static_shapes(frozen.graph_def, [n.input[0] for n in bands])
    gd = graph_pb2.GraphDef()
    gd.CopyFrom(frozen.graph_def)
    by_name = {n.name: n for n in gd.node}
    new_nodes: list[Any] = []
    count = 0
    for src in bands:
        shape = shapes.get(src.input[0])
        lower, upper = _const(nodes, src.input[1]), _const(nodes, src.input[2])
        if not shape or len(shape) < 2 or None in shape[-2:] or lower is None or upper is None:
            continue
        rows, cols = shape[-2:]
        i, j = np.arange(rows)[:, None], np.arange(cols)[None, :]
        keep = ((int(lower) < 0) | (i - j <= int(lower))) & ((int(upper) < 0) | (j - i <= int(upper)))
        dtype = tf.as_dtype(src.attr["T"].type)
        new_nodes.append(const_node(f"{src.name}/band_mask", keep))
        node = by_name[src.name]
        controls = [r for r in node.input if r.startswith("^")]
        data = node.input[0]
        del node.input[:]
        node.ClearField("attr")
        if dtype == tf.bool:  # a boolean mask (ones_like -> tril): wasm's SelectV2 aborts on bool values
            node.op = "LogicalAnd"
            node.input.extend([f"{src.name}/band_mask", data] + controls)
        else:
            new_nodes.append(const_node(f"{src.name}/band_zero", np.zeros((), dtype.as_numpy_dtype)))
            node.op = "SelectV2"
            node.input.extend([f"{src.name}/band_mask", data, f"{src.name}/band_zero"] + controls)
            node.attr["T"].type = dtype.as_datatype_enum
        count += 1
    if not count:
        return frozen
    gd.node.extend(new_nodes)
    return frozen.rewritten(gd, {"MatrixBandPart rewritten with a constant band mask": count})


def _rewrite_bool_ops(frozen: FrozenGraph, op: str, rewrite: Any, label: str) -> FrozenGraph:
    """Rewrite each ``op`` node on booleans in place with ``rewrite(node)``, which returns the nodes it adds
    (the node keeps its name, so its consumers read it as before)."""
    tf = import_tensorflow()
    from tensorflow.core.framework import graph_pb2

    found = [n.name for n in frozen.graph_def.node if n.op == op and n.attr["T"].type == tf.bool.as_datatype_enum]
    if not found:
        return frozen
    gd = graph_pb2.GraphDef()
    gd.CopyFrom(frozen.graph_def)
    by_name = {n.name: n for n in gd.node}
    added = [new for name in found for new in rewrite(by_name[name])]
    gd.node.extend(added)
    return frozen.rewritten(gd, {label: len(found)})


def lower_bool_select(frozen: FrozenGraph) -> FrozenGraph:
    """Rewrite ``SelectV2`` on boolean values as ``(c AND a) OR (NOT c AND b)``.

    TF.js 4.22's wasm backend faults on a boolean select ("memory access out of bounds" at load;
    measured on ``keras.ops.tril(ones_like(x, "bool"), -1)``), while its logical ops broadcast
    the same way SelectV2 does. SelectV2 only: v1 Select picks whole rows with a vector condition,
    which logical ops would not.
    """
    from tensorflow.core.framework import node_def_pb2

    def as_logic(node: Any) -> list[Any]:
        cond, a, b = node.input[:3]
        controls = [r for r in node.input if r.startswith("^")]
        added = [node_def_pb2.NodeDef(name=name, op=op, input=inputs)
                 for name, op, inputs in ((f"{node.name}/then", "LogicalAnd", [cond, a]),
                                          (f"{node.name}/not_cond", "LogicalNot", [cond]),
                                          (f"{node.name}/else", "LogicalAnd", [f"{node.name}/not_cond", b]))]
        node.op = "LogicalOr"
        node.ClearField("attr")
        del node.input[:]
        node.input.extend([f"{node.name}/then", f"{node.name}/else"] + controls)
        return added

    return _rewrite_bool_ops(frozen, "SelectV2", as_logic, "boolean Select rewritten as logical ops")


def lower_bool_reverse(frozen: FrozenGraph) -> FrozenGraph:
    """Reverse a boolean tensor as int32: ``Cast -> ReverseV2 -> Cast``.

    TF.js 4.22's wasm backend reverses booleans wrongly: a masked recurrent layer that runs backwards
    (``go_backwards``, the backward half of ``Bidirectional`` over ``Embedding(mask_zero=True)``)
    reverses its mask, and its file came out 0.18 off at batch 1 and faulted ("memory access out of
    bounds") at batch 2, where the cpu backend matched the model.
    """
    tf = import_tensorflow()
    from tensorflow.core.framework import node_def_pb2

    def as_int32(node: Any) -> list[Any]:
        data, axis = node.input[:2]
        controls = [r for r in node.input if r.startswith("^")]
        as_int = node_def_pb2.NodeDef(name=f"{node.name}/as_int32", op="Cast", input=[data])
        as_int.attr["SrcT"].type = tf.bool.as_datatype_enum
        as_int.attr["DstT"].type = tf.int32.as_datatype_enum
        reversed_int = node_def_pb2.NodeDef(name=f"{node.name}/int32", op="ReverseV2", input=[as_int.name, axis] + controls)
        for key in node.attr:
            reversed_int.attr[key].CopyFrom(node.attr[key])
        reversed_int.attr["T"].type = tf.int32.as_datatype_enum
        node.op = "Cast"
        node.ClearField("attr")
        node.attr["SrcT"].type = tf.int32.as_datatype_enum
        node.attr["DstT"].type = tf.bool.as_datatype_enum
        del node.input[:]
        node.input.append(reversed_int.name)
        return [as_int, reversed_int]

    return _rewrite_bool_ops(frozen, "ReverseV2", as_int32, "boolean ReverseV2 done as int32")


def one_hot_on_last_axis(frozen: FrozenGraph) -> FrozenGraph:
    """Write a ``OneHot`` on an axis other than the last as ``OneHot`` on the last axis, then ``Transpose``.

    TF.js's oneHot has no axis: it reads the attribute and puts the categories last anyway, so
    ``tf.one_hot(ids, n, axis=1)`` gave a tensor of the same size in another layout, and the file failed
    verification with nothing naming why. A OneHot whose ids have no static rank is left as it is.
    """
    from tensorflow.core.framework import graph_pb2, node_def_pb2

    tf = import_tensorflow()
    moved = [n for n in frozen.graph_def.node if n.op == "OneHot" and n.attr["axis"].i != -1]
    if not moved:
        return frozen
    ranks = {r: (None if s is None else len(s)) for r, s in _static_shapes(frozen.graph_def, [n.input[0] for n in moved]).items()}
    gd = graph_pb2.GraphDef()
    gd.CopyFrom(frozen.graph_def)
    nodes = {n.name: n for n in gd.node}
    count = 0
    for found in moved:
        node, rank, axis = nodes[found.name], ranks[found.input[0]], found.attr["axis"].i
        if rank is None:
            continue
        count += 1
        node.attr["axis"].i = -1
        if axis == rank:  # already the last axis, said by its index
            continue
        name = node.name
        node.name = f"{name}/categories_last"
        perm = [*range(axis), rank, *range(axis, rank)]  # the categories (last, at index rank) go to `axis`
        transpose = node_def_pb2.NodeDef(name=name, op="Transpose", input=[node.name, f"{name}/perm"], device=node.device)
        transpose.attr["T"].type = node.attr["T"].type
        transpose.attr["Tperm"].type = tf.int32.as_datatype_enum
        gd.node.extend([const_node(f"{name}/perm", np.array(perm, np.int32)), transpose])
    return frozen.rewritten(gd, {"OneHot on another axis written on the last, then transposed": count}) if count else frozen


def lower_float_one_hot(frozen: FrozenGraph) -> FrozenGraph:
    """Compute ``OneHot`` of float values as int32 one-hot rows, cast: ``Cast(OneHot_int32) * (on - off) + off``.

    TF.js 4.22's wasm kernel writes its on and off values as int32 whatever the dtype: a float one-hot
    (Keras's CategoryEncoding) came out as 1e-45 (the bits of int 1 read as a float) where the model
    has 1.0, and every such file failed verification; the cpu backend was right. With on/off 1 and 0
    (CategoryEncoding's) the Cast alone is the answer.
    """
    tf = import_tensorflow()
    from tensorflow.core.framework import graph_pb2, node_def_pb2

    found = [n.name for n in frozen.graph_def.node if n.op == "OneHot" and n.attr["T"].type != tf.int32.as_datatype_enum]
    if not found:
        return frozen
    gd = graph_pb2.GraphDef()
    gd.CopyFrom(frozen.graph_def)
    nodes = {n.name: n for n in gd.node}
    for name in found:
        node = nodes[name]
        indices, depth, on, off = node.input[:4]
        controls = [r for r in node.input if r.startswith("^")]
        real = node.attr["T"].type
        on_value, off_value = _const(nodes, on), _const(nodes, off)
        unit = on_value is not None and off_value is not None and on_value.size == off_value.size == 1 \
            and float(on_value) == 1.0 and float(off_value) == 0.0
        gd.node.extend([const_node(f"{name}/int_on", np.array(1, np.int32)),
                        const_node(f"{name}/int_off", np.array(0, np.int32))])
        as_int = node_def_pb2.NodeDef(name=f"{name}/int32", op="OneHot",
                                      input=[indices, depth, f"{name}/int_on", f"{name}/int_off"] + controls)
        for key in node.attr:
            as_int.attr[key].CopyFrom(node.attr[key])
        as_int.attr["T"].type = tf.int32.as_datatype_enum
        cast = node_def_pb2.NodeDef(name=name if unit else f"{name}/as_float", op="Cast", input=[as_int.name])
        cast.attr["SrcT"].type = tf.int32.as_datatype_enum
        cast.attr["DstT"].type = real
        added = [as_int, cast]
        if not unit:  # on and off as they are: scaled from 0/1
            span = node_def_pb2.NodeDef(name=f"{name}/span", op="Sub", input=[on, off])
            scaled = node_def_pb2.NodeDef(name=f"{name}/scaled", op="Mul", input=[cast.name, span.name])
            shifted = node_def_pb2.NodeDef(name=name, op="AddV2", input=[scaled.name, off])
            for made in (span, scaled, shifted):
                made.attr["T"].type = real
            added += [span, scaled, shifted]
        gd.node.remove(node)
        gd.node.extend(added)
    return frozen.rewritten(gd, {"float OneHot computed as int32 and cast": len(found)})


# The name of each group's kernel a grouped Conv2D is split into (ungroup_convolutions): the pruning and
# clustering checks join them back into the layer's one kernel, and no rewrite may merge them.
GROUP_KERNEL = re.compile(r"(.+)/group_(\d+)_weights")


def ungroup_convolutions(frozen: FrozenGraph) -> FrozenGraph:
    """Rewrite grouped ``Conv2D`` (input channels = groups x filter in-channels) for TF.js.

    TensorFlow runs a Conv2D whose filter has fewer input channels than its input
    as a grouped convolution; Keras 3 emits it for depthwise layers built as
    ``Conv2D(groups=C)`` (ConvNeXt). TF.js's conv2d refuses it ("depth of input
    must match"). One group per input channel becomes ``DepthwiseConv2dNative``
    (same weights, reshaped); other group counts become Split -> Conv2D per
    group -> ConcatV2.
    """
    tf = import_tensorflow()
    from tensorflow.core.framework import graph_pb2, node_def_pb2

    convs = [n for n in frozen.graph_def.node if n.op == "Conv2D" and n.attr["data_format"].s in (b"NHWC", b"")]
    if not convs:
        return frozen
    nodes = {n.name: n for n in frozen.graph_def.node}
    channels = _channels_of(frozen.graph_def, [c.input[0] for c in convs])
    gd = graph_pb2.GraphDef()
    gd.CopyFrom(frozen.graph_def)
    by_name = {n.name: n for n in gd.node}
    new_nodes: list[Any] = []
    count = 0

    def add_const(name: str, value: np.ndarray) -> Any:
        node = const_node(name, value)
        new_nodes.append(node)
        return node

    for conv in convs:
        w = _const(nodes, conv.input[1])
        c_in = channels.get(conv.input[0])
        if w is None or c_in is None or w.ndim != 4 or c_in == w.shape[2] or c_in % w.shape[2]:
            continue
        groups = c_in // w.shape[2]
        node = by_name[conv.name]
        strides = list(node.attr["strides"].list.i)
        if w.shape[2] == 1 and strides[1] == strides[2]:
            filt = add_const(f"{conv.name}/depthwise_weights", w.reshape(w.shape[0], w.shape[1], c_in, w.shape[3] // c_in))
            node.op = "DepthwiseConv2dNative"
            node.input[1] = filt.name
            for key in ("use_cudnn_on_gpu",):
                if key in node.attr:
                    del node.attr[key]
        else:
            per = w.shape[3] // groups
            axis = add_const(f"{conv.name}/group_axis", np.array(3, np.int32))
            split = node_def_pb2.NodeDef(name=f"{conv.name}/groups", op="Split", input=[axis.name, conv.input[0]])
            split.attr["T"].CopyFrom(node.attr["T"])
            split.attr["num_split"].i = groups
            new_nodes.append(split)
            parts = []
            for g in range(groups):
                filt = add_const(f"{conv.name}/group_{g}_weights", np.ascontiguousarray(w[..., g * per : (g + 1) * per]))
                part = node_def_pb2.NodeDef(name=f"{conv.name}/group_{g}", op="Conv2D",
                                            input=[f"{split.name}:{g}" if g else split.name, filt.name])
                for key in node.attr:
                    part.attr[key].CopyFrom(node.attr[key])
                new_nodes.append(part)
                parts.append(part.name)
            concat_axis = add_const(f"{conv.name}/concat_axis", np.array(3, np.int32))
            controls = [r for r in node.input if r.startswith("^")]
            node.op = "ConcatV2"
            t = node.attr["T"].type
            node.ClearField("attr")
            node.attr["T"].type = t
            node.attr["N"].i = groups
            node.attr["Tidx"].type = tf.int32.as_datatype_enum
            del node.input[:]
            node.input.extend(parts + [concat_axis.name] + controls)
        count += 1
    if not count:
        return frozen
    gd.node.extend(new_nodes)
    return frozen.rewritten(gd, {"grouped Conv2D rewritten": count})


def fold_pads(frozen: FrozenGraph) -> FrozenGraph:
    """Fold a zero ``Pad`` that feeds a VALID conv into the conv's explicit padding.

    Keras' ZeroPadding2D before a strided conv (MobileNet, ResNet, EfficientNet)
    otherwise costs a full copy of the activation per block; TF.js convolutions
    (fused ones included) take ``padding: EXPLICIT`` with ``explicit_paddings``.
    """
    from tensorflow.core.framework import graph_pb2

    gd = graph_pb2.GraphDef()
    gd.CopyFrom(frozen.graph_def)
    nodes = {n.name: n for n in gd.node}
    users: dict[str, int] = {}
    for n in gd.node:
        for ref in n.input:
            users[_node_of(ref)] = users.get(_node_of(ref), 0) + 1
    protected = set(frozen.output_nodes)
    removed: set[str] = set()
    for conv in gd.node:
        if conv.op not in ("Conv2D", "DepthwiseConv2dNative") or conv.attr["padding"].s != b"VALID":
            continue
        if conv.attr["data_format"].s not in (b"NHWC", b""):
            continue
        pad = nodes.get(_node_of(conv.input[0]))
        if pad is None or pad.op not in ("Pad", "PadV2") or pad.name in protected or users.get(pad.name) != 1:
            continue
        if not _is_output0(conv.input[0]):
            continue
        data_refs = [r for r in pad.input if not r.startswith("^")]
        paddings = _const(nodes, data_refs[1])
        if paddings is None or paddings.shape != (4, 2) or np.any(paddings[0] != 0) or np.any(paddings[3] != 0):
            continue
        if pad.op == "PadV2":
            value = _const(nodes, data_refs[2])
            if value is None or value.size != 1 or float(value.reshape(())) != 0.0:
                continue
        conv.input[0] = data_refs[0]
        conv.input.extend(r for r in pad.input if r.startswith("^"))
        conv.attr["padding"].s = b"EXPLICIT"
        conv.attr["explicit_paddings"].list.Clear()
        conv.attr["explicit_paddings"].list.i.extend(int(v) for v in paddings.reshape(-1))
        removed.add(pad.name)
    if not removed:
        return frozen
    kept = [n for n in gd.node if n.name not in removed]
    del gd.node[:]
    gd.node.extend(kept)
    return frozen.rewritten(gd, {"Pad folded into conv": len(removed)})


def _drop_dead_constants(gd: Any) -> Any:
    """Remove Const nodes nothing reads any more (weights replaced by fused copies)."""
    used = {_node_of(r) for n in gd.node for r in n.input}
    keep = [n for n in gd.node if n.op != "Const" or n.name in used]
    del gd.node[:]
    gd.node.extend(keep)
    return gd


def optimize(saved_model_dir: Any, fuse: bool = True) -> FrozenGraph:
    """Freeze, run Grappler, rewrite grouped convolutions, and (optionally) fuse for the runtime."""
    frozen = lower_float_one_hot(one_hot_on_last_axis(lower_bool_reverse(lower_bool_select(lower_band_part(lower_einsum(ungroup_convolutions(
        run_grappler(freeze_serving(saved_model_dir)))))))))
    return fuse_for_runtime(fold_pads(frozen)) if fuse else frozen
