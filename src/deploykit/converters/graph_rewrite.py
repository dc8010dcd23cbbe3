"""Rewrites of a frozen GraphDef before it is handed to another format's converter.

1. Inline function calls left in a frozen GraphDef.

Freezing (``convert_variables_to_constants_v2`` with aggressive inlining)
leaves calls to functions marked ``_XlaMustCompile`` in place: Keras 3 wraps
some depthwise convolutions in ``tf.function(jit_compile=True)`` (ConvNeXt
here). tf2onnx then emits a ``StatefulPartitionedCall`` node that ONNX
Runtime refuses, and a TF.js or other graph consumer cannot run either. This
module splices each called function's body into the graph, renaming its
nodes under the call's name, until no call remains.

2. Express ops other formats lack through ops they have (``Erfc(x) = 1 - Erf(x)``:
Keras 3's exact GELU emits Erfc, which tf2onnx 1.17 passes through unconverted
and ONNX Runtime then refuses; ``Bucketize`` as a count of boundaries, for TF.js
and tf2onnx, which have none).
"""

from __future__ import annotations

from typing import Any, Callable

CALL_OPS = {"StatefulPartitionedCall", "PartitionedCall"}


def _output_offsets(node_def: Any) -> dict[str, int]:
    """Flat output index of each output arg of a node (op defs give arg lists)."""
    from tensorflow.python.framework import op_def_registry

    op_def = op_def_registry.get(node_def.op)
    if op_def is None:
        return {}
    offsets, pos = {}, 0
    for arg in op_def.output_arg:
        offsets[arg.name] = pos
        if arg.number_attr:
            pos += node_def.attr[arg.number_attr].i
        elif arg.type_list_attr:
            pos += len(node_def.attr[arg.type_list_attr].list.type)
        else:
            pos += 1
    return offsets


def _graph_ref(ref: str, prefix: str, args: dict[str, str], body: dict[str, Any]) -> str:
    """Translate a function-body tensor reference into a graph tensor reference."""
    control = ref.startswith("^")
    name = ref[1:] if control else ref
    parts = name.split(":")
    if parts[0] in args and len(parts) == 1:
        target = args[parts[0]]
        if control:
            return "^" + target.lstrip("^").split(":")[0]
        return target
    node = body[parts[0]]
    if control or len(parts) == 1:
        return ("^" if control else "") + f"{prefix}/{parts[0]}"
    if len(parts) == 3:
        offset = _output_offsets(node).get(parts[1], 0) + int(parts[2])
    else:
        offset = int(parts[1])
    return f"{prefix}/{parts[0]}" + (f":{offset}" if offset else "")


def inline_function_calls(graph_def: Any, max_rounds: int = 20) -> Any:
    """Return a copy of ``graph_def`` with every function call inlined."""
    from tensorflow.core.framework import graph_pb2

    gd = graph_pb2.GraphDef()
    gd.CopyFrom(graph_def)
    functions = {f.signature.name: f for f in gd.library.function}
    for _ in range(max_rounds):
        calls = [n for n in gd.node if n.op in CALL_OPS and n.attr["f"].func.name in functions]
        if not calls:
            break
        call_names = {c.name for c in calls}
        replacements: dict[str, str] = {}  # "call" / "call:i" -> graph tensor
        new_nodes = []
        for node in gd.node:
            if node.name not in call_names:
                new_nodes.append(node)
                continue
            fn = functions[node.attr["f"].func.name]
            data_inputs = [i for i in node.input if not i.startswith("^")]
            controls = [i for i in node.input if i.startswith("^")]
            args = {a.name: data_inputs[k] for k, a in enumerate(fn.signature.input_arg)}
            body = {n.name: n for n in fn.node_def}
            for inner in fn.node_def:
                copy = type(inner)()
                copy.CopyFrom(inner)
                copy.name = f"{node.name}/{inner.name}"
                copy.ClearField("input")
                copy.input.extend(_graph_ref(i, node.name, args, body) for i in inner.input)
                if not inner.input:  # constants etc.: keep the call's control dependencies
                    copy.input.extend(controls)
                copy.device = node.device
                new_nodes.append(copy)
            for k, out in enumerate(fn.signature.output_arg):
                resolved = _graph_ref(fn.ret[out.name], node.name, args, body)
                replacements[node.name if k == 0 else f"{node.name}:{k}"] = resolved
                if k == 0:
                    replacements[f"{node.name}:0"] = resolved
            replacements["^" + node.name] = "^" + replacements[node.name].split(":")[0].lstrip("^")
        del gd.node[:]
        for node in new_nodes:
            rewired = [replacements.get(i, i) for i in node.input]
            del node.input[:]
            node.input.extend(rewired)
            gd.node.append(node)
        # Outputs referencing a replaced call through Identity chains are rewired above.
    used = _referenced_functions(gd)
    keep = [f for f in gd.library.function if f.signature.name in used]
    del gd.library.function[:]
    gd.library.function.extend(keep)
    return gd


def functions_named_by(nodes: Any) -> set[str]:
    """Library functions a node list refers to through any attribute (calls, While/If bodies...)."""
    names: set[str] = set()
    for node in nodes:
        for value in node.attr.values():
            if value.HasField("func"):
                names.add(value.func.name)
            elif value.HasField("list"):
                names.update(f.name for f in value.list.func)
    return names


def _referenced_functions(graph_def: Any) -> set[str]:
    """Every library function reachable from the graph's nodes (loop and branch bodies included)."""
    library = {f.signature.name: f for f in graph_def.library.function}
    return reachable_functions(library, functions_named_by(graph_def.node))


def reachable_functions(library: dict[str, Any], start: set[str]) -> set[str]:
    """The functions of ``library`` (name -> FunctionDef) that ``start`` reaches, with those they call
    through attributes or as a node's op, transitively."""
    todo = set(start)
    seen: set[str] = set()
    while todo:
        name = todo.pop()
        if name in seen or name not in library:
            continue
        seen.add(name)
        nodes = library[name].node_def
        todo |= functions_named_by(nodes) | {n.op for n in nodes if n.op in library}
    return seen


def const_node(name: str, value: Any, device: str = "") -> Any:
    """A ``Const`` NodeDef holding ``value`` (a NumPy array or scalar), dtype taken from it."""
    import numpy as np
    import tensorflow as tf
    from tensorflow.core.framework import node_def_pb2

    value = np.asarray(value)
    node = node_def_pb2.NodeDef(name=name, op="Const", device=device)
    node.attr["dtype"].type = tf.as_dtype(value.dtype).as_datatype_enum
    node.attr["value"].tensor.CopyFrom(tf.make_tensor_proto(value))
    return node


def has_function_calls(graph_def: Any) -> bool:
    """True when the graph still calls library functions."""
    return any(n.op in CALL_OPS for n in graph_def.node)


def _replace_ops(graph_def: Any, op: str, expand: Callable[[Any], list[Any]]) -> Any:
    """A copy of ``graph_def`` with each ``op`` node replaced by the nodes ``expand(node)`` returns (the
    last of them takes the node's name, so its consumers read it as before); the graph itself when it
    has no such node."""
    from tensorflow.core.framework import graph_pb2

    if not any(n.op == op for n in graph_def.node):
        return graph_def
    gd = graph_pb2.GraphDef()
    gd.CopyFrom(graph_def)
    new_nodes = []
    for node in gd.node:
        new_nodes += expand(node) if node.op == op else [node]
    del gd.node[:]
    gd.node.extend(new_nodes)
    return gd


def _node(template: Any, name: str, kind: str, inputs: list[str], **types: Any) -> Any:
    """A NodeDef on ``template``'s device, with its type attributes (``T=tf.float32``...)."""
    from tensorflow.core.framework import node_def_pb2

    made = node_def_pb2.NodeDef(name=name, op=kind, input=inputs, device=template.device)
    for attr, t in types.items():
        made.attr[attr].type = t.as_datatype_enum
    return made


def expand_unsupported_math(graph_def: Any) -> Any:
    """Return a copy with Erfc rewritten as ``1 - Erf``; node names (and so consumers) are kept."""
    import numpy as np
    import tensorflow as tf

    def one_minus_erf(node: Any) -> list[Any]:
        dtype = tf.dtypes.as_dtype(node.attr["T"].type)
        controls = [i for i in node.input[1:] if i.startswith("^")]
        one = const_node(f"{node.name}/one", np.array(1, dtype=dtype.as_numpy_dtype), device=node.device)
        erf = _node(node, f"{node.name}/erf", "Erf", [node.input[0]], T=dtype)
        return [one, erf, _node(node, node.name, "Sub", [one.name, erf.name] + controls, T=dtype)]

    return _replace_ops(graph_def, "Erfc", one_minus_erf)


def expand_bucketize(graph_def: Any) -> Any:
    """Return a copy with each ``Bucketize`` (Keras's Discretization) written as the count of boundaries
    the value is not below: ``Sum(Cast(LogicalNot(Less(ExpandDims(x, -1), boundaries)), int32), -1)``.

    TF.js has no Bucketize kernel and tf2onnx none for it: a tabular model with a Discretization
    layer failed both formats. TensorFlow's kernel counts the boundaries ``x < b`` does not hold for,
    so NaN (a missing value) lands in the last bucket; a count of ``x >= b`` put it in the first.
    Integer inputs are compared as float32, as its kernel does. The node's name stays on the Sum,
    so its consumers are untouched.
    """
    import numpy as np
    import tensorflow as tf

    def count(node: Any) -> list[Any]:
        dtype = tf.dtypes.as_dtype(node.attr["T"].type)
        compare = tf.float64 if dtype == tf.float64 else tf.float32
        x, controls, name = node.input[0], [i for i in node.input[1:] if i.startswith("^")], node.name
        made = []
        if dtype != compare:
            made.append(_node(node, f"{name}/as_float", "Cast", [x], SrcT=dtype, DstT=compare))
            x = made[-1].name
        bounds = np.asarray(list(node.attr["boundaries"].list.f), dtype=compare.as_numpy_dtype)
        made += [const_node(f"{name}/boundaries", bounds, device=node.device),
                 const_node(f"{name}/last_axis", np.array(-1, np.int32), device=node.device),
                 _node(node, f"{name}/expand", "ExpandDims", [x, f"{name}/last_axis"], T=compare, Tdim=tf.int32),
                 _node(node, f"{name}/below", "Less", [f"{name}/expand", f"{name}/boundaries"], T=compare),
                 _node(node, f"{name}/not_below", "LogicalNot", [f"{name}/below"]),
                 _node(node, f"{name}/as_int", "Cast", [f"{name}/not_below"], SrcT=tf.bool, DstT=tf.int32),
                 _node(node, name, "Sum", [f"{name}/as_int", f"{name}/last_axis"] + controls, T=tf.int32, Tidx=tf.int32)]
        made[-1].attr["keep_dims"].b = False
        return made

    return _replace_ops(graph_def, "Bucketize", count)


def guard_one_hot_negatives(graph_def: Any) -> Any:
    """Return a copy where each ``OneHot``'s negative indices become ``depth`` (out of range: an all-off row).

    TensorFlow gives a negative id (-1, the usual "missing") an all-zero row; ONNX's OneHot counts it
    from the end, so tf2onnx's file read -1 as the last category and passed verification, whose data
    held no negative id. The OneHot keeps its name and its other inputs. OneHots inside function
    bodies (a ``tf.while_loop``'s, which inlining leaves as functions) are guarded too.
    """
    from tensorflow.core.framework import graph_pb2

    if not any(n.op == "OneHot" for n in graph_def.node) and \
            not any(n.op == "OneHot" for f in graph_def.library.function for n in f.node_def):
        return graph_def
    gd = graph_pb2.GraphDef()
    gd.CopyFrom(graph_def)
    _guard_one_hots(gd.node, lambda name, out: name)
    for function in gd.library.function:  # a function body names a node's output "node:arg:index"
        _guard_one_hots(function.node_def, lambda name, out: f"{name}:{out}:0")
    return gd


def _guard_one_hots(nodes: Any, ref: Callable[[str, str], str]) -> None:
    """Guard each OneHot among ``nodes`` (a repeated NodeDef field, extended in place); ``ref(node, output arg)``
    names a node's first output as that container does."""
    from tensorflow.core.framework import node_def_pb2
    import numpy as np
    import tensorflow as tf

    added = []
    for node in nodes:
        if node.op != "OneHot" or tf.dtypes.as_dtype(node.attr["TI"].type).is_unsigned:  # no negative id there
            continue
        ti = tf.dtypes.as_dtype(node.attr["TI"].type)
        indices, depth = node.input[0], node.input[1]
        zero = const_node(f"{node.name}/no_id", np.array(0, ti.as_numpy_dtype), device=node.device)
        negative = node_def_pb2.NodeDef(name=f"{node.name}/negative_id", op="Less", input=[indices, ref(zero.name, "output")],
                                        device=node.device)
        negative.attr["T"].type = ti.as_datatype_enum
        added += [zero, negative]
        if ti != tf.int32:  # depth is an int32 scalar
            cast = node_def_pb2.NodeDef(name=f"{node.name}/depth_as_index", op="Cast", input=[depth], device=node.device)
            cast.attr["SrcT"].type = tf.int32.as_datatype_enum
            cast.attr["DstT"].type = ti.as_datatype_enum
            added.append(cast)
            depth = ref(cast.name, "y")
        guarded = node_def_pb2.NodeDef(name=f"{node.name}/guarded_id", op="SelectV2",
                                       input=[ref(negative.name, "z"), depth, indices], device=node.device)
        guarded.attr["T"].type = ti.as_datatype_enum
        added.append(guarded)
        node.input[0] = ref(guarded.name, "output")
    nodes.extend(added)


def prepare_for_export(graph_def: Any, onnx: bool = False) -> Any:
    """Inline function calls, then expand ops other formats lack; for ONNX (``onnx``), guard OneHot's
    negative ids too (TF.js gives them all-off rows itself, and holds no int8/uint8 constant for a guard)."""
    graph_def = expand_bucketize(expand_unsupported_math(inline_function_calls(graph_def)))
    return guard_one_hot_negatives(graph_def) if onnx else graph_def
