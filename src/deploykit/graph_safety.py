"""Refuse SavedModels whose graphs reach outside the process (files, network, Python).

A SavedModel is a program. deploykit runs it (reference outputs, calibration) before any
converter sees it, and TensorFlow executes whatever ops its functions hold: ``WriteFile`` can
overwrite a file, ``ReadFile`` read one, ``PrintV2`` append to one. Keras files have safe_mode
for their code-carrying layers; this is the same rule for graphs: such ops are refused unless
the caller trusts the model (``--trust-model``).

What is scanned: every function of the SavedModel's library (loading alone runs some of them:
variable restore, table initializers) and the graph's own nodes. The checkpoint ops of the
standard saver (SaveV2, RestoreV2, MergeV2Checkpoints) live in its save/restore functions
and are allowed there; reached from the serving signature they are refused like any write.
"""

from __future__ import annotations

from collections import deque
from pathlib import Path
from typing import Any

from deploykit.errors import UntrustedModelError

# Ops that touch the file system, the network or the Python interpreter, by what they do.
OUTSIDE_OPS: dict[str, str] = {
    **dict.fromkeys(("WriteFile",), "writes a file"),
    **dict.fromkeys(("ReadFile", "MatchingFiles", "WholeFileReader", "WholeFileReaderV2", "TextLineReader",
                     "TextLineReaderV2", "TFRecordReader", "TFRecordReaderV2", "FixedLengthRecordReader",
                     "FixedLengthRecordReaderV2", "ReaderRead", "ReaderReadV2", "ReaderReadUpTo", "ReaderReadUpToV2"),
                    "reads files"),
    **dict.fromkeys(("TFRecordDataset", "TFRecordDatasetV2", "TextLineDataset", "FixedLengthRecordDataset",
                     "FixedLengthRecordDatasetV2", "CSVDataset", "CSVDatasetV2", "ExperimentalCSVDataset",
                     "LoadDataset", "SqlDataset", "ExperimentalSqlDataset"), "reads files"),
    **dict.fromkeys(("SaveDataset", "SaveDatasetV2", "ExperimentalSaveDataset", "SnapshotDataset", "SnapshotDatasetV2",
                     "CacheDataset", "CacheDatasetV2"), "writes files"),
    **dict.fromkeys(("CreateSummaryFileWriter", "CreateSummaryDbWriter", "WriteSummary", "WriteScalarSummary",
                     "WriteHistogramSummary", "WriteImageSummary", "WriteAudioSummary", "WriteGraphSummary",
                     "WriteRawProtoSummary", "ImportEvent", "FlushSummaryWriter"), "writes summary files"),
    **dict.fromkeys(("PyFunc", "PyFuncStateless", "EagerPyFunc"), "calls Python code"),
    **dict.fromkeys(("Rpc", "TryRpc", "RpcClient", "RpcCall", "RpcCheckStatus", "RpcServerStart"), "makes network calls"),
}
# The standard saver's checkpoint ops: fine in its own functions, a write anywhere else.
CHECKPOINT_OPS = {"Save": "writes files", "SaveSlices": "writes files", "SaveV2": "writes files",
                  "MergeV2Checkpoints": "writes files", "Restore": "reads files", "RestoreSlice": "reads files",
                  "RestoreV2": "reads files"}
_FUNC_ATTR_KEYS = ("f", "then_branch", "else_branch", "body", "cond", "branches")


def check_saved_model_safe(path: Path, meta_graph: Any, signature: str = "serving_default") -> None:
    """Raise :class:`UntrustedModelError` if the SavedModel's graph reaches outside the process.

    Args:
        path: The SavedModel directory (for the message).
        meta_graph: Its ``MetaGraphDef`` (tag ``serve``).
        signature: The signature deploykit calls.
    """
    functions = {f.signature.name: f for f in meta_graph.graph_def.library.function}
    found: list[tuple[str, str, str]] = []  # (op, what it does, where)

    def scan(nodes: Any, where: str, checkpoint_ok: bool) -> None:
        for node in nodes:
            what = OUTSIDE_OPS.get(node.op) or (None if checkpoint_ok else CHECKPOINT_OPS.get(node.op))
            if node.op == "PrintV2" and node.attr["output_stream"].s.startswith(b"file://"):
                what = "appends to a file"
            if what:
                found.append((node.op, what, where))

    scan(meta_graph.graph_def.node, "the graph", checkpoint_ok=True)
    served = _reachable_functions(meta_graph, functions, signature)
    for name, fn in functions.items():
        scan(fn.node_def, name, checkpoint_ok=name not in served)
    if found:
        op, what, where = found[0]
        place = "the serving function" if where in served else f"function {where!r}" if where != "the graph" else where
        others = sorted({f[0] for f in found} - {op})
        more = f" (also: {', '.join(others)})" if others else ""
        raise UntrustedModelError(
            f"{path}: the SavedModel runs {op}, which {what}, in {place}{more}; deploykit runs the model to verify it, "
            "so it is refused. If you trust this file, pass --trust-model (trust_model=True)"
        )


def _reachable_functions(meta_graph: Any, functions: dict[str, Any], signature: str) -> set[str]:
    """Names of the library functions the signature's outputs depend on (called, or as branches and loop bodies)."""
    sig = meta_graph.signature_def.get(signature)
    if sig is None:
        return set()
    by_name = {n.name: n for n in meta_graph.graph_def.node}
    todo = deque(t.name.split(":")[0].lstrip("^") for t in sig.outputs.values())
    seen_nodes: set[str] = set()
    reached: set[str] = set()
    pending_fns: deque[str] = deque()
    while todo:
        name = todo.popleft()
        if name in seen_nodes or name not in by_name:
            continue
        seen_nodes.add(name)
        node = by_name[name]
        todo.extend(i.split(":")[0].lstrip("^") for i in node.input)
        pending_fns.extend(_called(node) + [node.op])  # a node whose op is a library function calls it
    while pending_fns:
        fn = pending_fns.popleft()
        if fn in reached or fn not in functions:
            continue
        reached.add(fn)
        for node in functions[fn].node_def:
            pending_fns.extend(_called(node) + [node.op])
    return reached


def _called(node: Any) -> list[str]:
    """Functions a node calls: call ops, control flow branches and bodies, any function-valued attribute."""
    names = []
    for key, value in node.attr.items():
        if value.HasField("func"):
            names.append(value.func.name)
        elif value.HasField("list") and value.list.func:
            names.extend(f.name for f in value.list.func)
        elif key in _FUNC_ATTR_KEYS and value.HasField("s"):
            names.append(value.s.decode())
    return names
