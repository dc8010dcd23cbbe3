"""Refuse SavedModels whose graphs reach outside the process (files, network, Python).

A SavedModel is a program. deploykit runs it (reference outputs, calibration) before any
converter sees it, and TensorFlow executes whatever ops its functions hold: ``WriteFile`` can
overwrite a file, ``ReadFile`` read one, ``PrintV2`` append to one. Keras files have safe_mode
for their code-carrying layers; this is the same rule for graphs: such ops are refused unless
the caller trusts the model (``--trust-model``). Stateful ops are allowed only from a list of
those a model's computation uses (:data:`SAFE_STATEFUL`); the few I/O ops TensorFlow does not
mark stateful (ReadFile, the debug ops) are named in :data:`OUTSIDE_OPS`.

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
    # Not marked stateful in TensorFlow's registry, yet they reach outside: the stateful rule below misses them.
    **dict.fromkeys(("DebugIdentity", "DebugNanCount", "DebugNumericSummary", "Copy", "CopyHost"),
                    "writes to debug URLs (file://)"),
    "ImmutableConst": "memory-maps a file",
    **dict.fromkeys(("DatasetFromGraph", "GetElementAtIndex"), "runs a graph hidden in a string"),
    **dict.fromkeys(("RegisterDataset", "RegisterDatasetV2"), "makes network calls"),
    **dict.fromkeys(("GenerateVocabRemapping", "DecodeProtoV2", "EncodeProto", "SnapshotDatasetReader",
                     "SnapshotNestedDatasetReader", "SnapshotChunkDataset"), "opens files by name"),
    **dict.fromkeys(("XlaCustomCall", "XlaCustomCallV2"), "calls native code by name"),
}
# Stateful ops a model's own computation uses (variables, control flow, lookup tables, random
# numbers, RNN kernels, tensor arrays). Any other stateful op is refused: statefulness is how
# TensorFlow marks ops with effects beyond their outputs, so new I/O ops cannot slip through a list.
SAFE_STATEFUL = {
    "VarHandleOp", "ReadVariableOp", "AssignVariableOp", "AssignAddVariableOp", "AssignSubVariableOp", "VarIsInitializedOp",
    "DisableCopyOnRead", "DestroyResourceOp", "ResourceGather", "ResourceGatherNd", "VariableV2", "Variable", "Assign",
    "AssignAdd", "AssignSub", "StatefulPartitionedCall", "While", "If", "Case", "BatchFunction",
    "HashTableV2", "HashTable", "MutableHashTableV2", "MutableDenseHashTableV2", "MutableHashTableOfTensorsV2",
    "AnonymousHashTable", "AnonymousMutableHashTable", "AnonymousMutableDenseHashTable", "LookupTableFindV2",
    "LookupTableFind", "LookupTableImportV2", "LookupTableSizeV2", "LookupTableExportV2", "LookupTableInsertV2",
    "LookupTableRemoveV2", "InitializeTableV2", "InitializeTable",
    "RandomUniform", "RandomUniformInt", "RandomStandardNormal", "TruncatedNormal", "ParameterizedTruncatedNormal",
    "RandomGamma", "RandomPoisson", "RandomPoissonV2", "Multinomial", "RandomShuffle", "StatefulUniform",
    "StatefulUniformInt", "StatefulUniformFullInt", "StatefulStandardNormalV2", "StatefulTruncatedNormal",
    "RngReadAndSkip", "RngSkip", "AnonymousSeedGenerator", "DummySeedGenerator", "DeleteSeedGenerator",
    "NonDeterministicInts", "SampleDistortedBoundingBox", "SampleDistortedBoundingBoxV2", "Timestamp",
    "CudnnRNN", "CudnnRNNV2", "CudnnRNNV3", "CudnnRNNBackprop", "CudnnRNNBackpropV2", "CudnnRNNBackpropV3",
    "CudnnRNNParamsToCanonical", "CudnnRNNParamsToCanonicalV2", "CudnnRNNCanonicalToParams", "CudnnRNNCanonicalToParamsV2",
    "TensorArrayV3", "TensorArrayReadV3", "TensorArrayWriteV3", "TensorArrayGatherV3", "TensorArrayScatterV3",
    "TensorArraySizeV3", "TensorArrayCloseV3", "TensorArraySplitV3", "TensorArrayConcatV3", "TensorArrayGradV3",
    "TensorArrayGradWithShape", "StackV2", "StackPushV2", "StackPopV2", "StackCloseV2",
    "MutexV2", "MutexLock", "ConsumeMutexLock", "Assert", "Print", "PrintV2", "CheckNumerics", "CheckNumericsV2",
    "StatefulRandomBinomial", "StatefulStandardNormal", "VariableShape", "ResourceStridedSliceAssign",
    "ResourceScatterUpdate", "ResourceScatterAdd", "ResourceScatterSub", "ResourceScatterMul", "ResourceScatterDiv",
    "ResourceScatterMin", "ResourceScatterMax", "ResourceScatterNdUpdate", "ResourceScatterNdAdd",
    "ResourceScatterNdSub", "ResourceScatterNdMin", "ResourceScatterNdMax",
    "IteratorGetNext",  # tf_keras saves an adapt_step(iterator) nobody calls; dataset sources are refused on their own
}
# Run when the model loads (asset vocabularies): fine there, refused in the serving function.
LOAD_TIME_OPS = {"InitializeTableFromTextFileV2": "reads a file", "InitializeTableFromTextFile": "reads a file"}
# The standard saver's checkpoint ops: fine in the saver's own save/restore path, a read or write anywhere else.
CHECKPOINT_OPS = {"Save": "writes files", "SaveSlices": "writes files", "SaveV2": "writes files",
                  "MergeV2Checkpoints": "writes files", "Restore": "reads files", "RestoreSlice": "reads files",
                  "RestoreV2": "reads files"}


def check_saved_model_safe(path: Path, meta_graph: Any, signature: str = "serving_default") -> None:
    """Raise :class:`UntrustedModelError` if the SavedModel's graph reaches outside the process.

    Args:
        path: The SavedModel directory (for the message).
        meta_graph: Its ``MetaGraphDef`` (tag ``serve``).
        signature: The signature deploykit calls.
    """
    functions = {f.signature.name: f for f in meta_graph.graph_def.library.function}
    found: list[tuple[str, str, str]] = []  # (op, what it does, where)

    from tensorflow.python.framework import op_def_registry

    def scan(nodes: Any, where: str, checkpoint_ok: Any, load_ok: Any) -> None:
        for node in nodes:
            what = OUTSIDE_OPS.get(node.op)
            if not what and node.op in CHECKPOINT_OPS:
                what = None if checkpoint_ok(node) else CHECKPOINT_OPS[node.op]
            elif not what and node.op in LOAD_TIME_OPS:
                what = None if load_ok(node) else LOAD_TIME_OPS[node.op]
            elif node.op == "PrintV2" and node.attr["output_stream"].s.startswith(b"file://"):
                what = "appends to a file"
            elif not what and node.op not in SAFE_STATEFUL:
                op_def = op_def_registry.get(node.op)  # None: a library function called as an op (scanned itself)
                if op_def is not None and op_def.is_stateful:
                    what = "is a stateful op deploykit does not know to be safe (it can act outside the model)"
            if what:
                found.append((node.op, what, where))

    for asset in meta_graph.asset_file_def:  # TensorFlow joins the name to assets/: an absolute one reads any file
        name = asset.filename
        if Path(name).is_absolute() or ".." in Path(name).parts:
            raise UntrustedModelError(
                f"{path}: the SavedModel's asset {name!r} lies outside its assets/ directory, and loading the model "
                "reads it; refused. If you trust this file, pass --trust-model (trust_model=True)")
    sig = meta_graph.signature_def.get(signature)
    served_nodes, served = _reach(meta_graph, functions, [t.name for t in sig.outputs.values()] if sig else [])
    saver = meta_graph.saver_def
    saver_nodes, saver_fns = _reach(meta_graph, functions, [saver.save_tensor_name, saver.restore_op_name])
    scan(meta_graph.graph_def.node, "the graph", lambda n: n.name in saver_nodes and n.name not in served_nodes,
         lambda n: n.name not in served_nodes)
    for name, fn in functions.items():
        scan(fn.node_def, name, lambda n, name=name: name in saver_fns and name not in served,
             lambda n, name=name: name not in served)
    if found:
        op, what, where = found[0]
        place = "the serving function" if where in served else f"function {where!r}" if where != "the graph" else where
        others = sorted({f[0] for f in found} - {op})
        more = f" (also: {', '.join(others)})" if others else ""
        raise UntrustedModelError(
            f"{path}: the SavedModel runs {op}, which {what}, in {place}{more}; deploykit runs the model to verify it, "
            "so it is refused. If you trust this file, pass --trust-model (trust_model=True)"
        )


def _reach(meta_graph: Any, functions: dict[str, Any], tensors: list[str]) -> tuple[set[str], set[str]]:
    """The graph nodes the given tensors depend on, and the library functions those nodes run
    (called, or as branches and loop bodies), transitively."""
    from deploykit.converters.graph_rewrite import functions_named_by, reachable_functions

    by_name = {n.name: n for n in meta_graph.graph_def.node}
    todo = deque(t.split(":")[0].lstrip("^") for t in tensors if t)
    reached: dict[str, Any] = {}
    while todo:
        name = todo.popleft()
        if name in reached or name not in by_name:
            continue
        reached[name] = node = by_name[name]
        todo.extend(i.split(":")[0].lstrip("^") for i in node.input)
    nodes = list(reached.values())
    return set(reached), reachable_functions(functions, functions_named_by(nodes) | {n.op for n in nodes if n.op in functions})
