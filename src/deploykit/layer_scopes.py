"""Which Keras layer a node of the exported graph belongs to.

Keras's ``model.export`` traces the model in name scopes that TensorFlow numbers to keep them unique:
the layer ``dense`` computes under ``functional_1/dense_2`` and the layer ``dense_1`` under
``functional_1/dense_1_1``. Messages that printed the scope as a layer name sent users to another layer
that exists (a flash-budget hint named the 650-parameter ``dense_1`` for the 4160-parameter ``dense``).

The SavedModel says it exactly: each traced function lists the variables it captures
(``bound_inputs``), and a layer reads its variables (``ReadVariableOp``) inside its own scope; a
variable's name ends in ``<layer>/<weight>``. A layer without variables leaves no such trace; its scope
is then read as a layer name only where that name is not known to compute elsewhere.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

# Ops that read a captured variable inside the layer that owns it.
_READS = {"ReadVariableOp", "ResourceGather", "ResourceGatherNd"}


def export_scopes(saved_model_dir: Path | str, layer_names: set[str] | None = None) -> dict[str, str]:
    """``{scope: layer name}`` for the layers whose variables the SavedModel's functions read; {} if unreadable.

    A variable's path names the layer that owns it last (``attn/query/kernel``: MultiHeadAttention's query
    projection; ``rnn/lstm_cell/kernel``): the model's own layer is the last part of the path that is one of
    ``layer_names`` (``attn``), else the owner."""
    try:
        from tensorflow.python.tools import saved_model_utils

        meta = saved_model_utils.get_meta_graph_def(str(saved_model_dir), "serve")
    except Exception:  # noqa: BLE001 - names in messages are a courtesy; the run reports real failures itself
        return {}
    nodes = meta.object_graph_def.nodes
    functions = {f.signature.name: f for f in meta.graph_def.library.function}
    scopes: dict[str, str] = {}
    for name, concrete in meta.object_graph_def.concrete_functions.items():
        function = functions.get(name)
        if function is None or not concrete.bound_inputs:
            continue
        captured = [a.name for a in function.signature.input_arg][-len(concrete.bound_inputs):]
        variable_of = {arg: nodes[i].variable.name for arg, i in zip(captured, concrete.bound_inputs)
                       if 0 <= i < len(nodes) and nodes[i].HasField("variable")}
        for node in function.node_def:
            if node.op not in _READS or not node.input or (var := variable_of.get(node.input[0].split(":")[0])) is None:
                continue
            owners = var.split("/")[:-1]  # the weight's own name aside
            layer = next((p for p in reversed(owners) if p in layer_names), "") if layer_names else ""
            layer = layer or (owners[-1] if owners else "")
            if not layer:
                continue
            # the layer's scope: the last component of the read's name that is the layer's, numbered or not
            parts = node.name.split("/")
            numbered = re.compile(re.escape(layer) + r"(_\d+)*")
            at = max((i for i, p in enumerate(parts[:-1]) if numbered.fullmatch(p)), default=None)
            if at is not None:
                scopes.setdefault("/".join(parts[: at + 1]), layer)
    return scopes


def _plain(name: str) -> list[str]:
    """A node or tensor name's scope components, without the call wrappers the freezing added."""
    first = name.split(";")[0].split(":")[0]
    return [p for p in first.split("/") if p and not p.startswith(("StatefulPartitionedCall", "PartitionedCall", "serving_default"))]


def layer_at(name: str, scopes: dict[str, str], layer_names: set[str] | None = None) -> str:
    """The Keras layer that computes node or tensor ``name`` (a TFLite tensor may join several names with
    ';': the first is read); else its scope as the export wrote it, a numbering suffix dropped where that
    gives a layer name no known scope claims; '' when the name has no scope."""
    parts = _plain(name)
    for end in range(len(parts) - 1, 0, -1):  # the longest known scope first
        if (layer := scopes.get("/".join(parts[:end]))) is not None:
            return layer
    scope = parts[1] if len(parts) >= 3 else parts[0] if parts else ""  # model/layer/op, or layer/op
    if not scope or layer_names is None:
        return scope
    placed = set(scopes.values())  # layers known to compute under another scope are not this one
    for part in reversed(parts[1:-1] if len(parts) >= 3 else parts[:1]):  # innermost first: a nested model's layer
        for candidate in (part, re.sub(r"_\d+$", "", part)):
            if candidate in layer_names and candidate not in placed:
                return candidate
    return scope
