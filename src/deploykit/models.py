"""Load any supported model input safely and describe it.

Inputs: a Keras 3 ``.keras`` file (TF >= 2.16's default), a tf_keras
``.keras``/``.h5`` file, a SavedModel directory, or an in-memory Keras model.

Safety: Keras ``safe_mode`` stays on. Before anything is deserialized we read
the model's config (JSON inside the zip or the HDF5 attributes) and refuse
layers that carry code — ``Lambda`` (marshalled Python bytecode) and
``TFSMLayer`` (loads another SavedModel) — unless the caller trusts the model.

Every model is seen through one interface, :class:`LoadedModel`: input and
output specs named as in the SavedModel serving signature (the names every
converted artifact keeps), ``predict`` for reference outputs, and
``saved_model_dir`` which exports once per run and is shared by all targets.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import threading
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from deploykit._quiet import import_tensorflow, logs_muted, native_stderr_captured, python_stdout_quiet
from deploykit.errors import DataError, ModelLoadError, UntrustedModelError, at_api_boundary, missing
from deploykit.random_state import keeps_global_rng
from deploykit.tmpdirs import TempDir

CODE_CARRYING_LAYERS = {
    "Lambda": "runs marshalled Python bytecode",
    "TFSMLayer": "loads and runs another SavedModel",
}


# One SavedModel export at a time in this process: TensorFlow's saver sets absl's verbosity to FATAL
# and back around each export, and two exports in two threads left it at FATAL for the caller.
_EXPORT_LOCK = threading.RLock()


@dataclass(frozen=True)
class TensorSpec:
    """Name, shape (None for dynamic dims) and dtype of one model input or output."""

    name: str
    shape: tuple[int | None, ...]
    dtype: str
    # An output's Keras name when the artifacts call it otherwise: Keras 3's export names a list of
    # outputs output_0, output_1..., and the user's 'cls'/'value' heads were told apart by nothing.
    keras_name: str = ""

    def to_dict(self) -> dict[str, Any]:
        out = {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}
        if self.keras_name and self.keras_name != self.name:
            out["keras_name"] = self.keras_name
        return out


@dataclass
class ModelInfo:
    """What `deploy inspect` prints and the manifest records about the source model."""

    kind: str  # keras3 | tf_keras | saved_model
    source: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    layers: list[dict[str, str]] = field(default_factory=list)
    preprocessing_layers: list[dict[str, str]] = field(default_factory=list)
    params: int | None = None
    name: str = ""

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["inputs"] = [s.to_dict() for s in self.inputs]
        data["outputs"] = [s.to_dict() for s in self.outputs]
        return data


def op_error_summary(exc: Exception) -> str:
    """One line of a TensorFlow op error: what went wrong and at which node, without the Python frames."""
    text = getattr(exc, "message", None) or str(exc)
    node = re.search(r"\{\{node ([^}]+)\}\}", text)
    lines = [l.strip() for l in text.splitlines()
             if l.strip() and not l.startswith((" ", "\t", "[[")) and not l.startswith(("Graph execution error", "Detected at node"))]
    what = lines[-1] if lines else text.strip().splitlines()[0]
    return f"{what} (node {node.group(1)})" if node else what


def natural_key(name: str) -> tuple:
    """Sort key that puts output_2 before output_10 (signature names are numbered)."""
    import re

    return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name))


def _walk_configs(node: Any) -> Iterator[dict]:
    if isinstance(node, dict):
        if "class_name" in node:
            yield node
        for value in node.values():
            yield from _walk_configs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _walk_configs(value)


def _check_config_safe(config: Any, path: Path) -> None:
    for node in _walk_configs(config):
        cls = node.get("class_name")
        if cls in CODE_CARRYING_LAYERS:
            layer = node.get("config", {}).get("name", "?") if isinstance(node.get("config"), dict) else "?"
            raise UntrustedModelError(
                f"{path}: layer {layer!r} is a {cls}, which {CODE_CARRYING_LAYERS[cls]}; refused because "
                "Keras safe_mode is on. If you trust this file, pass --trust-model (trust_model=True), "
                "or replace the layer with built-in layers"
            )


def _read_keras_zip(path: Path) -> tuple[dict, dict]:
    try:
        with zipfile.ZipFile(path) as zf:
            names = set(zf.namelist())
            if "config.json" not in names:
                raise ModelLoadError(f"{path}: not a Keras model archive (no config.json inside); re-save it with model.save('model.keras')")
            config = json.loads(zf.read("config.json"))
            if not isinstance(config, dict) or "class_name" not in config:
                raise ModelLoadError(f"{path}: config.json inside the archive is not a Keras model config (no class_name); "
                                     "the file is corrupt or not a model: re-save it with model.save('model.keras')")
            meta = json.loads(zf.read("metadata.json")) if "metadata.json" in names else {}
            if not isinstance(meta, dict):
                raise ModelLoadError(f"{path}: metadata.json inside the archive is not a JSON object; the file is corrupt, re-save it")
            bad = zf.testzip()
            if bad is not None:
                raise ModelLoadError(f"{path}: corrupt entry {bad!r} in the model archive; re-save or re-download the model")
    except ModelLoadError:
        raise
    except (zipfile.BadZipFile, EOFError, OSError) as exc:
        if _magic(path) == "h5":
            raise ModelLoadError(f"{path}: this is an HDF5 (.h5) model file, not a .keras archive; rename it to "
                                 f"{path.with_suffix('.h5').name}") from None
        raise ModelLoadError(f"{path}: not a readable .keras file ({exc}); the file is truncated or corrupt, re-save it") from None
    except (ValueError, RecursionError):  # JSONDecodeError, UnicodeDecodeError; nesting deeper than any model
        raise ModelLoadError(f"{path}: the model config inside the archive is not valid JSON; the file is corrupt, re-save it") from None
    return config, meta


def _magic(path: Path) -> str | None:
    """The format a model file's first bytes give ("h5", "zip"), for a file saved under the other suffix:
    told apart from one that is truncated or corrupt."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(8)
    except OSError:
        return None
    return "h5" if head == b"\x89HDF\r\n\x1a\n" else "zip" if head[:4] == b"PK\x03\x04" else None


def _read_h5(path: Path) -> tuple[dict, str]:
    import h5py

    try:
        with h5py.File(path, "r") as fh:
            raw = fh.attrs.get("model_config")
            version = fh.attrs.get("keras_version", "")
    except OSError as exc:
        if _magic(path) == "zip":
            raise ModelLoadError(f"{path}: this is a .keras (zip) model archive, not an HDF5 file; rename it to "
                                 f"{path.with_suffix('.keras').name}") from None
        raise ModelLoadError(f"{path}: not a readable HDF5 model ({exc}); the file is truncated or corrupt") from None
    if raw is None:
        raise ModelLoadError(f"{path}: HDF5 file holds no model_config (weights only?); save the whole model with model.save()")
    try:
        config = json.loads(raw.decode() if isinstance(raw, bytes) else raw)
    except (ValueError, TypeError, RecursionError):  # not JSON, not text, absurdly nested
        config = None
    if not isinstance(config, dict) or "class_name" not in config:
        raise ModelLoadError(f"{path}: the HDF5 file's model_config is not a Keras model config; the file is corrupt, re-save it")
    if isinstance(version, bytes):
        version = version.decode(errors="replace")
    return config, str(version)


def _spec_name(tensor: Any, index: int, prefix: str) -> str:
    name = getattr(tensor, "name", None) or f"{prefix}_{index}"
    if type(tensor).__module__.startswith("keras."):
        # Keras 3 names a tensor as its layer, ':' and all: keras.Input(name="x:0") was read as 'x', so the
        # name check passed it and the export failed with TensorFlow's "non-flat/non-unique argument names"
        return name
    return name.split(":")[0]  # tf_keras: a graph tensor's name, 'x:0


def model_call_arg(model: Any, xs: Sequence[Any]) -> Any:
    """``xs`` (arrays in ``model.inputs`` order) in the structure the Keras model is called with.

    One array for a single input, a list for several, and a dict for a model built with a dict of
    inputs: Keras 3 refuses a list there ("The structure of inputs doesn't match"). The dict's keys
    may differ from the Input names, so each key is matched to its tensor, not its name.
    """
    struct = getattr(model, "_inputs_struct", None)
    if isinstance(struct, dict):
        order = [id(t) for t in model.inputs]
        return {key: xs[order.index(id(tensor))] for key, tensor in struct.items()}
    return xs[0] if len(xs) == 1 else list(xs)


def _has_random_state(layer: Any) -> bool:
    # Keras 3's preprocessing (data) layers keep their seed in ``generator`` and draw from it in
    # inference too; Dropout/GaussianNoise (``seed_generator``) skip it in Python when not
    # training, so their graphs are already clean and they are left alone.
    return type(getattr(layer, "generator", None)).__name__ == "SeedGenerator"


def _is_identity_at_inference(layer: Any) -> bool:
    """True when ``layer(x, training=False)`` returns ``x`` exactly, on a random probe of its input shape."""
    try:
        if tuple(layer.output.shape) != tuple(layer.input.shape):  # e.g. RandomCrop: declared to change the shape
            return False
        shape = [2] + [16 if d is None else int(d) for d in tuple(layer.input.shape)[1:]]
        dtype = str(getattr(layer, "compute_dtype", None) or "float32")
        probe = np.random.default_rng(0).uniform(0, 1, shape).astype(dtype)
        out = np.asarray(layer(probe, training=False))
    except Exception:  # noqa: BLE001 - unknown input structure: keep the layer
        return False
    return out.shape == probe.shape and np.array_equal(out, probe)


def export_copy(model: Any) -> tuple[Any, list[dict[str, str]]]:
    """A Keras 3 (or tf_keras) model with the layers no target can take replaced, and what was replaced.

    - Random augmentation layers become Identity. RandomFlip, RandomRotation, RandomContrast... pass
      their input through at inference, but Keras 3 still draws their random numbers and updates their
      seed variable in the traced graph. Those stateful ops (StatelessRandom*, ImageProjectiveTransformV3,
      AssignVariableOp) survive graph pruning and no converter takes them, so every target failed. Only
      layers that hold a random seed and return their input exactly on a probe are replaced.
    - IntegerLookup, CategoryEncoding and encoded Discretization layers become the same computation in
      ops every target has (see ``export_layers``); for a tf_keras model, only these.

    The clone shares every other layer (and its weights) with ``model``, which stays untouched and
    computes the reference outputs. Subclassed models cannot be cloned and are returned as they are.
    Each entry of the list names the layer, its class and what it became (``as``).
    """
    from deploykit.export_layers import for_export

    if _is_keras_model(model) == "tf_keras":
        return _tf_keras_export_copy(model)
    import keras

    replacements: dict[int, tuple[Any, str]] = {}
    for layer in _flat_layers(model):
        if _has_random_state(layer) and _is_identity_at_inference(layer):
            replacements[id(layer)] = (keras.layers.Identity(name=layer.name, dtype=layer.dtype_policy), "Identity")
        elif (rewritten := for_export(layer)) is not None:
            replacements[id(layer)] = rewritten
    if not replacements or not (isinstance(model, keras.Sequential) or hasattr(model, "_inputs_struct")):
        return model, []  # nothing to replace, or a subclassed model (clone_model cannot rebuild it)

    def clone(layer: Any) -> Any:
        return replacements[id(layer)][0] if id(layer) in replacements else layer

    try:
        copy = keras.models.clone_model(model, clone_function=clone, recursive=True)
    except Exception:  # noqa: BLE001 - a structure clone_model cannot rebuild with them all
        # (a CategoryEncoding called with count_weights): the augmentation layers alone, as before the rewrites
        replacements = {k: v for k, v in replacements.items() if v[1] == "Identity"}
        try:
            copy = keras.models.clone_model(model, clone_function=clone, recursive=True) if replacements else model
        except Exception:  # noqa: BLE001 - export as it is
            return model, []
        if copy is model:
            return model, []
    return copy, [{"name": layer.name, "class": type(layer).__name__, "as": replacements[id(layer)][1]}
                  for layer in _flat_layers(model) if id(layer) in replacements]


def _tf_keras_export_copy(model: Any) -> tuple[Any, list[dict[str, str]]]:
    """:func:`export_copy` for a tf_keras model: its lookup and encoding layers replaced (tf_keras exports
    its augmentation layers as the identity at inference already). tf_keras's clone_model does not go
    into nested models itself: a nested model holding a replaced layer is cloned the same way."""
    import tf_keras

    from deploykit.export_layers import for_export

    replacements = {id(layer): made for layer in _flat_layers(model) if (made := for_export(layer)) is not None}
    graph = lambda m: isinstance(m, tf_keras.Sequential) or getattr(m, "_is_graph_network", False)  # noqa: E731
    if not replacements or not graph(model):
        return model, []

    def clone(layer: Any) -> Any:
        if id(layer) in replacements:
            return replacements[id(layer)][0]
        if isinstance(layer, tf_keras.Model) and graph(layer) and any(id(i) in replacements for i in _flat_layers(layer)):
            return tf_keras.models.clone_model(layer, clone_function=clone)
        return layer

    try:
        copy = tf_keras.models.clone_model(model, clone_function=clone)
    except Exception:  # noqa: BLE001 - a structure clone_model cannot rebuild with them: export as it is
        return model, []
    return copy, [{"name": layer.name, "class": type(layer).__name__, "as": replacements[id(layer)][1]}
                  for layer in _flat_layers(model) if id(layer) in replacements]


def copy_state(src: Any, dst: Any) -> None:
    """Give ``dst``, a clone of the Keras 3 model ``src``, all of ``src``'s state.

    ``set_weights`` copies the variables, but Keras 3 preprocessing layers rebuild what they compute
    with only when loaded from a file: an adapted Normalization keeps using mean 0 and variance 1
    until ``load_own_variables`` finalizes it, and an adapted lookup's vocabulary lives in its
    assets. Each such layer is handed its state the way Keras saving does (own variables, assets).
    """
    dst.set_weights(src.get_weights())
    if not (hasattr(src, "_flatten_layers") and hasattr(dst, "_flatten_layers")):
        return
    for a, b in zip(src._flatten_layers(include_self=False), dst._flatten_layers(include_self=False)):
        if ".preprocessing." not in type(b).__module__ or type(a) is not type(b):
            continue
        store: dict[str, Any] = {}
        a.save_own_variables(store)
        b.load_own_variables(store)
        if hasattr(a, "save_assets") and hasattr(b, "load_assets"):
            with TempDir("assets") as assets:
                a.save_assets(assets)
                b.load_assets(assets)


@keeps_global_rng  # clone_model's new layers draw initializer seeds from Python's random
def float32_twin(model: Any) -> tuple[Any, str | None]:
    """A Keras 3 model that computes in float16/bfloat16 (mixed precision policy) or float64
    (``keras.config.set_floatx("float64")``), rebuilt in float32.

    Returns ``(model, None)`` when every layer computes in float32, else ``(twin, policies)``: the
    same architecture with float32 layers and the same weights (mixed precision keeps its variables
    in float32; float64 weights are rounded to float32). TFLite's builtin kernels, TF.js weights and
    ONNX Runtime take no float16 or float64 compute graph (every target failed on one, naming ops
    rather than the dtype), and float32 is what devices run; the targets' own float16/int8 profiles
    quantize from there. Float64 inputs become float32 inputs (the data is cast).

    Raises:
        ModelLoadError: a model clone_model cannot rebuild (subclassed, a custom layer without
            from_config): its float16 ops failed the targets with messages naming ops, not the dtype.
    """
    import keras

    low = _low_precision_policies(model)
    if not low:
        return model, None
    if not (isinstance(model, keras.Sequential) or hasattr(model, "_inputs_struct")):
        refuse_low_precision(model, ", ".join(low), _UNCLONABLE)

    def build() -> Any:
        inputs = None
        if any(str(t.dtype) == "float64" for t in model.inputs):
            def float32_input(t: Any) -> Any:
                return keras.Input(batch_shape=t.shape, dtype="float32" if str(t.dtype) == "float64" else t.dtype,
                                   name=getattr(t, "name", None))

            # In the model's own structure (one tensor, a list, a dict): clone_model refuses another.
            struct = getattr(model, "_inputs_struct", None)  # a tensor has no truth value: no `or` here
            inputs = keras.tree.map_structure(float32_input, model.inputs[0] if struct is None else struct)
        with _float32_policy(keras.mixed_precision, keras.config):
            twin = keras.models.clone_model(model, input_tensors=inputs, recursive=True,
                                            clone_function=lambda layer: _float32_layer(layer, keras.layers.InputLayer))
        copy_state(model, twin)
        return twin

    return _checked_twin(model, low, build)


def _float32_layer(layer: Any, input_layer: type) -> Any:
    """A new layer like ``layer``, computing in float32 (an input layer keeps its dtype)."""
    config = layer.get_config()
    if "dtype" in config and not isinstance(layer, input_layer):
        config["dtype"] = "float32"
    return layer.__class__.from_config(config)


def _checked_twin(model: Any, low: list[str], build: Callable[[], Any]) -> tuple[Any, str]:
    """``build()``'s float32 twin of ``model`` and the policies it had; refused in one line when it cannot
    be built (the converters would name float16 ops, not the dtype) or a layer kept its policy."""
    try:
        twin = build()
    except Exception:  # noqa: BLE001
        refuse_low_precision(model, ", ".join(low), _UNCLONABLE)
    if _low_precision_policies(twin):
        refuse_low_precision(model, ", ".join(low), "a layer kept its policy when cloned")
    return twin, ", ".join(low)


@contextlib.contextmanager
def _float32_policy(mixed_precision: Any, config: Any) -> Iterator[None]:
    """While open, the global dtype policy is float32 and floatx float32: a custom layer whose config has
    no ``dtype`` took the caller's global mixed_float16 when cloned, and the "float32" rebuild still
    computed in float16 (its TFLite file failed naming ``Mul``; its ONNX file kept float16 Casts).
    ``mixed_precision``/``config``: Keras 3's modules, or tf_keras's (``backend`` holds its floatx)."""
    policy, floatx = mixed_precision.global_policy(), config.floatx()
    mixed_precision.set_global_policy("float32")
    config.set_floatx("float32")
    try:
        yield
    finally:
        config.set_floatx(floatx)
        mixed_precision.set_global_policy(policy)


_UNCLONABLE = "it cannot be cloned from its config: subclassed, or a custom layer without from_config"


def _low_precision_policies(model: Any) -> list[str]:
    """The dtype policies of layers that compute in float16, bfloat16 or float64 (Keras 3 or tf_keras)."""
    return sorted({getattr(layer.dtype_policy, "name", str(layer.dtype_policy)) for layer in _flat_layers(model)
                   if getattr(layer, "compute_dtype", "float32") in ("float16", "bfloat16", "float64")})


def refuse_low_precision(model: Any, policies: str, why: str) -> None:
    """ModelLoadError: a model computing in ``policies`` that cannot be rebuilt in float32 (``why``)."""
    keras = "tf_keras" if type(model).__module__.startswith("tf_keras") else "keras"
    floatx = "tf_keras.backend.set_floatx" if keras == "tf_keras" else "keras.config.set_floatx"
    raise ModelLoadError(
        f"the model computes in {policies}, not float32, and cannot be rebuilt in float32 here ({why}): TFLite, "
        "TF.js and ONNX Runtime take no float16/float64 compute graph; build it with the float32 policy "
        f"({keras}.mixed_precision.set_global_policy('float32'), or {floatx}('float32')), copy the weights "
        "with new_model.set_weights(model.get_weights()) and pass that")


@keeps_global_rng
def float32_twin_tf_keras(model: Any) -> tuple[Any, str | None]:
    """:func:`float32_twin` for a tf_keras model (mixed_float16 policy, or set_floatx("float64")):
    a Functional or Sequential model is cloned layer by layer with float32 layers (nested models
    too) and given the same weights, cast to float32."""
    import tf_keras

    low = _low_precision_policies(model)
    if not low:
        return model, None
    if not (isinstance(model, tf_keras.Sequential) or getattr(model, "_is_graph_network", False)):
        refuse_low_precision(model, ", ".join(low), _UNCLONABLE)

    def clone(layer: Any) -> Any:  # tf_keras's clone_model does not go into nested models itself
        return twin_of(layer) if isinstance(layer, tf_keras.Model) else _float32_layer(layer, tf_keras.layers.InputLayer)

    def twin_of(m: Any) -> Any:
        inputs = None
        if any(t.dtype == "float64" for t in m.inputs):
            inputs = [tf_keras.Input(batch_shape=tuple(t.shape), name=t.name.split(":")[0],
                                     dtype="float32" if t.dtype == "float64" else t.dtype) for t in m.inputs]
        if isinstance(m, tf_keras.Sequential) and inputs is not None:
            return tf_keras.Sequential([inputs[0]] + [clone(layer) for layer in m.layers], name=m.name)
        return tf_keras.models.clone_model(m, input_tensors=inputs, clone_function=clone)

    def build() -> Any:
        with _float32_policy(tf_keras.mixed_precision, tf_keras.backend):
            twin = twin_of(model)
        twin.set_weights([np.asarray(w, np.float32) if np.asarray(w).dtype in (np.float16, np.float64) else w
                          for w in model.get_weights()])
        return twin

    return _checked_twin(model, low, build)


@contextlib.contextmanager
def _portable_keras_ops() -> Iterator[None]:
    """While tracing for export: Keras 3 ops whose TF lowering no converter takes, in portable form.

    ``keras.ops.argmax``/``argmin`` on floats (Keras >= 3.6) first map -0.0 to -tiny, finding the
    zero's sign with ``Bitcast`` to int32 & ``BitwiseAnd``: TFLite, tf2onnx and TF.js all refuse
    those ops, so a model ending in argmax failed every target. Here they are plain
    ``tf.argmax``/``tf.argmin``, which differ only in ranking -0.0 below +0.0 (the runtimes
    compare them equal; probabilities are never -0.0). ``keras.ops.take`` (every Embedding) is a
    plain gather, without Keras's wrap of negative ids. Restored on exit.
    """
    try:
        from keras.src.backend.tensorflow import numpy as knp
    except ImportError:  # another Keras layout: nothing to replace
        yield
        return
    originals = {name: getattr(knp, name, None) for name in ("argmax", "argmin", "take")}
    if None in originals.values() or not hasattr(knp, "_keepdims"):
        yield
        return
    tf = import_tensorflow()

    def plain(tf_fn: Any) -> Any:
        def arg(x: Any, axis: Any = None, keepdims: bool = False) -> Any:
            x = knp.convert_to_tensor(x)
            y = tf_fn(tf.reshape(x, [-1]) if axis is None else x, axis=axis, output_type="int32")
            return knp._keepdims(x, y, axis) if keepdims else y

        return arg

    def take(x: Any, indices: Any, axis: Any = None) -> Any:
        # Keras wraps negative indices first (LESS, ADD, SELECT_V2 on int32 ids): TFLite Micro has no
        # int32 SELECT_V2, so no Keras 3 Embedding model ran there. Ids index from 0 (an Embedding's
        # contract); a negative id, which Keras would wrap, is out of range in the exported graph.
        if isinstance(indices, (tf.SparseTensor, tf.RaggedTensor)):
            return originals["take"](x, indices, axis)
        x = knp.convert_to_tensor(x)
        if axis is None:
            x, axis = tf.reshape(x, (-1,)), 0
        return tf.gather(x, knp.convert_to_tensor(indices), axis=axis)

    knp.argmax, knp.argmin, knp.take = plain(tf.argmax), plain(tf.argmin), take
    try:
        yield
    finally:
        knp.argmax, knp.argmin, knp.take = originals["argmax"], originals["argmin"], originals["take"]


def _export_keras3(model: Any, path: Path) -> Any:
    """``model.export(path)`` done by hand, keeping the traced serving endpoint.

    Same steps as Keras 3's ``export_saved_model`` (ExportArchive, the model's input
    signature, one ``serve`` endpoint); the endpoint it returns computes the reference
    outputs without tracing the model again.
    """
    from keras.export import ExportArchive

    try:
        from keras.src.export.export_utils import get_input_signature
    except ImportError:  # a Keras without this helper: plain export, reference traced separately
        with _portable_keras_ops():
            model.export(str(path), format="tf_saved_model", verbose=False)
        return None
    archive = ExportArchive()
    with _portable_keras_ops():  # the endpoint is traced when written out
        archive.track(model)
        fn = archive.add_endpoint("serve", inference_call(model), get_input_signature(model))
        archive.write_out(str(path), verbose=False)
    return fn


def signature_key(name: str) -> str:
    """The SavedModel signature key tf.function gives a Keras input name: every character that is
    not a letter or digit becomes '_', and a name not starting with a letter gets an 'arg_' prefix."""
    swapped = "".join(c if c.isalnum() else "_" for c in name)
    return swapped if swapped[:1].isalpha() else "arg_" + swapped


def placeholder_name(name: str) -> str:
    """The graph placeholder name a SavedModel gives a Keras input name (what tf2onnx names the ONNX
    input): lower case, every other character '_'. Two inputs must not share one."""
    return re.sub(r"[^0-9a-z]", "_", name.lower())


def inference_call(model: Any) -> Any:
    """``model`` called with ``training=False``, for tracing a serving endpoint.

    Keras 3's own export traces ``model.__call__`` with no training flag, and its Resizing and
    CenterCrop layers record ``training=True`` in a functional model's graph: every BatchNormalization
    after them then ran on batch statistics (and tried to update its moving averages) in the exported
    graph, so the artifacts' outputs depended on the rest of the batch, unlike ``model.predict``.
    """

    def serve(*args: Any) -> Any:
        return model(*args, training=False)

    return serve


@contextlib.contextmanager
def _recurrent_unfused(model: Any) -> Iterator[None]:
    """While open, a tf_keras model's LSTM/GRU layers trace their plain loop instead of the function
    that says it implements an LSTM (``api_implements``, there for cuDNN): TFLite fuses that one into
    UNIDIRECTIONAL_SEQUENCE_LSTM, whose state persists between invocations (tensorflow#47813), while
    the plain loop becomes a stateless WHILE, exact to 3e-8 on a 16-unit LSTM. Restored on exit."""
    # Every sublayer: a Bidirectional's forward/backward LSTMs and a TimeDistributed's layer too.
    layers = model._flatten_layers(include_self=False, recursive=True)
    flagged = [l for l in layers if getattr(l, "_could_use_gpu_kernel", False)]
    for layer in flagged:
        layer._could_use_gpu_kernel = False
    try:
        yield
    finally:
        for layer in flagged:
            layer._could_use_gpu_kernel = True


def _export_fixed_batch(model: Any, kind: str, path: Path, batch: int | None, unfused: bool = False) -> None:
    """Export ``model`` like :func:`_export_keras3` / tf_keras ``export``, with ``batch`` fixed in the signature
    (None: left free, whatever batch size the model's inputs declare; ``unfused``: a tf_keras model's
    recurrent layers as plain loops, see :func:`_recurrent_unfused`)."""
    tf = import_tensorflow()

    def fixed(spec: Any) -> Any:
        return tf.TensorSpec((batch,) + tuple(spec.shape[1:]), spec.dtype, name=getattr(spec, "name", None))

    if kind == "keras3":
        from keras.export import ExportArchive
        from keras.src.export.export_utils import get_input_signature

        archive = ExportArchive()
        with _portable_keras_ops():
            archive.track(model)
            archive.add_endpoint("serve", inference_call(model), tf.nest.map_structure(fixed, get_input_signature(model)))
            archive.write_out(str(path), verbose=False)
        return
    from tf_keras.src.export.export_lib import ExportArchive

    signature = tf.nest.map_structure(fixed, model.inputs)
    if isinstance(signature, list) and len(signature) > 1:
        signature = [signature]
    archive = ExportArchive()
    with _recurrent_unfused(model) if unfused else contextlib.nullcontext():  # traced as late as write_out
        archive.track(model)
        archive.add_endpoint("serve", inference_call(model), signature)
        archive.write_out(str(path))


class LoadedModel:
    """A model ready for reference inference and export, whatever its source."""

    def __init__(self, kind: str, source: str, keras_model: Any = None, saved_model_path: Path | None = None):
        self.kind = kind
        self.source = source
        self.keras_model = keras_model
        self._saved_model_path = saved_model_path
        self._owned_tmp: TempDir | None = None
        self._signature: dict | None = None
        self._sm_fn = None
        self._keras_fn = None
        self._serve_fn = None  # Keras 3: the exported endpoint, already traced with a dynamic batch
        self._stripped: tuple[Any, list[dict[str, str]]] | None = None  # (export model, replaced layers)
        self._scopes: tuple[dict[str, str], set[str] | None] | None = None  # (scope -> layer, layer names): layer_at
        self.float32_from_policy: str | None = None  # set when a float16-compute model was rebuilt in float32
        # The Keras output names of the model the user gave, when this is its fine-tuned copy: tfmot's
        # QAT wraps each layer as quant_<name>, a name the user never chose.
        self.output_keras_names: list[str] | None = None

    # -- SavedModel (shared by every converter) -----------------------------------------
    def _export_model(self) -> Any:
        """The Keras model that is exported: the user's, with the layers no target takes replaced (``export_copy``)."""
        if self._stripped is None:
            if self.kind in ("keras3", "tf_keras"):
                self._stripped = export_copy(self.keras_model)
            else:
                self._stripped = (self.keras_model, [])
        return self._stripped[0]

    @property
    def replaced_for_export(self) -> list[dict[str, str]]:
        """Layers replaced in the exported graph (see ``export_copy``): name, class, and what they became (``as``)."""
        return [] if self._stripped is None else self._stripped[1]

    def saved_model_dir(self) -> Path:
        """A SavedModel with a ``serving_default`` signature, exported once and reused."""
        if self._saved_model_path is None:
            self._owned_tmp = TempDir("sm")
            path = Path(self._owned_tmp.name) / "saved_model"
            with _EXPORT_LOCK, native_stderr_captured() as cap:
                try:
                    if self.kind == "keras3":
                        export_model = self._export_model()
                        serve_fn = _export_keras3(export_model, path)
                        # The endpoint of a stripped clone is not the user's model: the reference
                        # outputs then come from the model itself.
                        self._serve_fn = serve_fn if export_model is self.keras_model else None
                    elif any(getattr(i, "shape", (None,))[0] is not None for i in self.keras_model.inputs):
                        # A batch size declared in keras.Input(batch_size=8): tf_keras's export kept it,
                        # and the ONNX and TF.js files then refused any other batch (verification's batch
                        # of 1 failed with a raw runtime error); Keras 3's export leaves the batch free.
                        with python_stdout_quiet():
                            _export_fixed_batch(self._export_model(), self.kind, path, None)
                    else:
                        with python_stdout_quiet():
                            self._export_model().export(str(path))
                except Exception as exc:  # export failures are conversion failures of every target
                    from deploykit.errors import ConversionError, disk_full

                    if (full := disk_full(exc)) is not None:
                        raise full from None
                    raise ConversionError(f"exporting the model to a SavedModel failed: {exc}. {cap.tail(2)}") from exc
            self._saved_model_path = path
        return self._saved_model_path

    def fixed_batch_saved_model_dir(self, batch: int = 1, unfused: bool = False) -> Path:
        """The model exported again with ``batch`` fixed in its signature (exported once, reused).

        Shapes are then static throughout the graph: TFLite lowers the TensorList
        ops of recurrent loops (Keras 3 LSTM/GRU) to builtin WHILE loops only then.
        ``unfused``: a tf_keras model's LSTM/GRU traced as plain loops (see ``_recurrent_unfused``).
        Needs the Keras model: a SavedModel's traced graph cannot be re-traced.
        """
        from deploykit.errors import ConversionError, disk_full

        if self.keras_model is None:
            raise ConversionError(f"{self.source}: only a Keras model can be re-exported with a fixed batch size")
        self.saved_model_dir()  # the temp dir this export lives beside
        if self._owned_tmp is None:
            self._owned_tmp = TempDir("sm")
        path = Path(self._owned_tmp.name) / f"saved_model_batch{batch}{'_unfused' if unfused else ''}"
        if not path.exists():
            with _EXPORT_LOCK, native_stderr_captured() as cap:
                try:
                    with python_stdout_quiet():
                        _export_fixed_batch(self._export_model(), self.kind, path, batch, unfused)
                except Exception as exc:
                    if (full := disk_full(exc)) is not None:
                        raise full from None
                    raise ConversionError(f"exporting the model with batch size {batch} failed: "
                                          f"{' '.join(str(exc).split())[:300]}. {cap.tail(2)}") from None
        return path

    def signature(self) -> dict:
        """Serving signature: {'inputs': [TensorSpec], 'outputs': [TensorSpec]} (sorted output names)."""
        if self._signature is None:
            import_tensorflow()
            from tensorflow.python.tools import saved_model_utils

            meta = saved_model_utils.get_meta_graph_def(str(self.saved_model_dir()), "serve")
            if "serving_default" not in meta.signature_def:
                raise ModelLoadError(
                    f"{self.source}: SavedModel has no 'serving_default' signature "
                    f"(has: {', '.join(k for k in meta.signature_def if not k.startswith('__')) or 'none'}); "
                    "export it with one: tf.saved_model.save(obj, path, signatures={'serving_default': fn})"
                )
            sig = meta.signature_def["serving_default"]
            import tensorflow as tf

            def specs(items) -> list[TensorSpec]:
                out = []
                for key in sorted(items, key=natural_key):
                    info = items[key]
                    shape = tuple(None if d.size < 0 else int(d.size) for d in info.tensor_shape.dim)
                    out.append(TensorSpec(key, shape, tf.dtypes.as_dtype(info.dtype).name))
                return out

            self._signature = {"inputs": specs(sig.inputs), "outputs": specs(sig.outputs)}
        return self._signature

    def layer_at(self, name: str) -> str:
        """The Keras layer that computes node or tensor ``name`` of the exported graph (see ``layer_scopes``)."""
        from deploykit.layer_scopes import export_scopes, layer_at

        if self._scopes is None:  # read once: info() probes layers, and a run asks for several names
            names = {entry["name"] for entry in self.info().layers} if self.keras_model is not None else None
            self._scopes = (export_scopes(self.saved_model_dir(), names), names)
        return layer_at(name, *self._scopes)

    # -- description ----------------------------------------------------------------------
    @property
    def inputs(self) -> list[TensorSpec]:
        """Input specs in the order ``predict`` takes them."""
        if self.keras_model is not None:
            return [
                TensorSpec(_spec_name(t, i, "input"), tuple(t.shape), _dtype_name(t.dtype))
                for i, t in enumerate(self.keras_model.inputs)
            ]
        return self.signature()["inputs"]

    def info(self) -> ModelInfo:
        """Inputs, outputs, layers, embedded preprocessing layers and parameter count."""
        if self.keras_model is None:
            sig = self.signature()
            return ModelInfo(self.kind, self.source, sig["inputs"], sig["outputs"], name=Path(self.source).name,
                             params=_saved_model_params(Path(self.source)))
        m = self.keras_model
        struct = getattr(m, "_outputs_struct", None)  # Keras 3; tf_keras keeps it as _nested_outputs
        if not isinstance(struct, dict):
            struct = getattr(m, "_nested_outputs", None)
        if isinstance(struct, dict):  # exported under their keys, in sorted order (what the signature holds)
            pairs = sorted(struct.items(), key=lambda kv: natural_key(kv[0]))
            outputs = [TensorSpec(k, tuple(t.shape), _dtype_name(t.dtype)) for k, t in pairs]
        else:
            names = list(getattr(m, "output_names", None) or [])
            if not names and type(m).__name__ == "Sequential" and m.layers:
                # Keras 3's Sequential has no output_names: its one output is its last layer's
                names = [m.layers[-1].name]
            if self.output_keras_names is not None and len(self.output_keras_names) == len(m.outputs):
                names = self.output_keras_names
            names = names if len(names) == len(m.outputs) else [""] * len(m.outputs)
            outputs = [
                TensorSpec(f"output_{i}", tuple(t.shape), _dtype_name(t.dtype), keras_name=str(k))
                for i, (t, k) in enumerate(zip(m.outputs, names))
            ]
        layers, pre = [], []
        for layer in _flat_layers(m):
            if type(layer).__name__ == "InputLayer":  # a functional model lists its inputs as layers, a Sequential not
                continue
            entry = {"name": layer.name, "class": type(layer).__name__}
            layers.append(entry)
            if ".preprocessing." in type(layer).__module__:
                pre.append(entry)
                if self.kind == "keras3" and _has_random_state(layer) and _is_identity_at_inference(layer):
                    entry = pre[-1] = {**entry, "at_inference": "identity"}  # augmentation: removed at export
        return ModelInfo(self.kind, self.source, self.inputs, outputs, layers, pre, int(m.count_params()), m.name)

    # -- reference inference ----------------------------------------------------------------
    def predict(self, inputs: Sequence[np.ndarray], batch_size: int = 8) -> list[np.ndarray]:
        """Reference outputs, as a list in ``output_names`` order.

        Batches of 8: as fast as 64 in graph mode, and MobileNetV2's reference step
        peaked at 1.0 GB instead of 6.2 GB (measured).
        """
        n = len(inputs[0])
        chunks: list[list[np.ndarray]] = []
        op_error = import_tensorflow().errors.OpError
        # TensorFlow's runtime logs at ERROR level from C++ about kernels it picks (a recurrent layer's mask:
        # "oneDNN supports DT_BOOL only on platforms with AVX-512"), in the middle of the CLI's output; an op
        # that fails raises, and its message is what we report.
        with native_stderr_captured():
            for start in range(0, n, batch_size):
                batch = [x[start : start + batch_size] for x in inputs]
                try:
                    chunks.append(self._predict_batch(batch))
                except op_error as exc:  # the data's values, or sizes a dimension of any size allowed
                    end = min(start + batch_size, n) - 1
                    why = op_error_summary(exc)
                    fix = ("the samples are too small for the model's convolutions or pooling: pass larger ones "
                           f"(shape {tuple(batch[0].shape[1:])} here)" if "output size would be negative" in why else
                           "check the data's values (e.g. token ids outside an Embedding's vocabulary)")
                    raise DataError(f"the model cannot run on samples {start}..{end} of the data: {why}; {fix}") from None
        return [np.concatenate([c[i] for c in chunks]) for i in range(len(chunks[0]))]

    def _predict_batch(self, batch: list[np.ndarray]) -> list[np.ndarray]:
        if self.keras_model is not None:
            if self._serve_fn is not None:
                # The SavedModel's own endpoint: the graph every artifact is converted from, traced
                # once at export with a dynamic batch (a second trace here cost MobileNetV2 ~1.3 s).
                fn = self._serve_fn
            else:
                if self._keras_fn is None:
                    # Graph mode: an eager Keras call dispatches op by op and was 3.5x slower on
                    # MobileNetV2 here (17 s vs 5 s for 100 images, tracing included).
                    tf = import_tensorflow()
                    model = self.keras_model
                    self._keras_fn = tf.function(lambda a: model(a, training=False), reduce_retracing=True)
                fn = self._keras_fn
            arg = model_call_arg(self.keras_model, batch)
            try:
                out = fn(arg)
            except (TypeError, ValueError):
                if fn is not self._serve_fn:
                    raise
                self._serve_fn = None  # an input structure the endpoint's signature does not take: trace the model
                return self._predict_batch(batch)
            if isinstance(out, dict):
                return [np.asarray(out[k]) for k in sorted(out, key=natural_key)]
            if isinstance(out, (list, tuple)):
                return [np.asarray(o) for o in out]
            return [np.asarray(out)]
        if self._sm_fn is None:
            tf = import_tensorflow()
            self._sm_obj = tf.saved_model.load(str(self._saved_model_path))
            self._sm_fn = self._sm_obj.signatures["serving_default"]
        names = [s.name for s in self.signature()["inputs"]]
        out = self._sm_fn(**{name: x for name, x in zip(names, batch)})
        return [np.asarray(out[k]) for k in sorted(out, key=natural_key)]

    @property
    def output_names(self) -> list[str]:
        """Output names as the converted artifacts carry them (serving signature names)."""
        return [s.name for s in self.signature()["outputs"]]

    def release(self) -> None:
        """Drop the temporary SavedModel export and what converters cached from it."""
        self._serve_fn = None
        for cache in ("_onnx_fp32_cache", "_tfjs_graph_cache"):
            self.__dict__.pop(cache, None)
        if self._owned_tmp is not None:
            self._owned_tmp.cleanup()
            self._owned_tmp = None
            self._saved_model_path = None


def _dtype_name(dtype: Any) -> str:
    name = getattr(dtype, "name", dtype)
    return str(name)


def _flat_layers(model: Any) -> list[Any]:
    """Layers in order, nested models flattened (their layers are the model's layers too); a
    preprocessing layer that holds layers of its own stays one layer."""
    out, seen = [], set()
    for layer in getattr(model, "layers", []):
        if hasattr(layer, "layers") and getattr(layer, "layers", None) and not ".preprocessing." in type(layer).__module__:
            inner = _flat_layers(layer)
        else:
            inner = [layer]
        for one in inner:  # a layer shared by a nested model and the outer one is one layer
            if id(one) not in seen:
                seen.add(id(one))
                out.append(one)
    return out


def _is_keras_model(obj: Any) -> str | None:
    mod = type(obj).__module__
    try:
        import keras

        if isinstance(obj, keras.Model):
            return "keras3"
    except ImportError:  # pragma: no cover
        pass
    if mod.startswith("tf_keras") or "tf_keras" in str(type(obj).__mro__):
        return "tf_keras"
    return None


def load_model(source: Any, *, trust_model: bool = False) -> LoadedModel:
    """Load a model from a path or wrap an in-memory Keras model.

    Args:
        source: Path to a ``.keras``/``.h5`` file or SavedModel directory, or a
            Keras 3 / tf_keras model object.
        trust_model: Allow layers that carry code (Lambda, TFSMLayer) and turn
            off Keras safe_mode. Only for files you trust.

    Returns:
        A :class:`LoadedModel`.

    Raises:
        ModelLoadError: missing, truncated or corrupt file, unsupported kind, or
            unknown custom objects.
        UntrustedModelError: the model carries code and ``trust_model`` is False.

    Example:
        >>> model = load_model("model.keras")
        >>> model.info().params
    """
    if not isinstance(source, (str, Path)):
        kind = _is_keras_model(source)
        if kind is None:
            raise ModelLoadError(
                f"cannot use a {type(source).__name__} as a model; pass a Keras model, a .keras/.h5 file or a SavedModel directory"
            )
        import_tensorflow()
        return _loaded_keras(kind, f"<in-memory {type(source).__name__} {getattr(source, 'name', '')}>", source)

    path = Path(os.path.expanduser(source))  # "~/m.keras" from Python: no shell expanded it
    if not path.exists():
        raise ModelLoadError(f"model {path} {missing(path)}; check the path")
    if not path.is_dir() and not path.is_file():  # a device (/dev/zero) or a pipe would be read without end
        raise ModelLoadError(f"model {path} is not a regular file; pass a .keras/.h5 file or a SavedModel directory")
    if path.is_dir():
        if not (path / "saved_model.pb").exists() and not (path / "saved_model.pbtxt").exists():
            raise ModelLoadError(f"{path} is a directory without saved_model.pb; pass a SavedModel directory or a .keras/.h5 file")
        return _load_saved_model(path, trust_model)
    suffix = path.suffix.lower()
    if suffix == ".keras":
        config, meta = _read_keras_zip(path)
        if not trust_model:
            _check_config_safe(config, path)
        version = str(meta.get("keras_version", ""))
        kind = _kind_of_version(version, "keras3")
    elif suffix in (".h5", ".hdf5"):
        config, version = _read_h5(path)
        if not trust_model:
            _check_config_safe(config, path)
        kind = _kind_of_version(version, "tf_keras")  # an HDF5 file without a version predates Keras 3
    else:
        raise ModelLoadError(
            f"{path}: unsupported model file type {suffix or '(none)'!r}; pass a .keras or .h5 file or a SavedModel directory"
        )
    import_tensorflow()
    # Keras matches the suffix as written: M.KERAS was "File format not supported" (a SavedModel hint, cut
    # short). Loaded through a link with the lower-case suffix; the model keeps its own name everywhere else.
    link = TempDir("load") if path.suffix != suffix else None
    target = path
    if link is not None:
        target = Path(link.name) / f"model{suffix}"
        os.symlink(path.resolve(), target)
    with native_stderr_captured() as cap:
        try:
            if kind == "keras3":
                import keras

                model = keras.models.load_model(target, compile=False, safe_mode=not trust_model)
            else:
                import tf_keras

                kwargs = {"safe_mode": not trust_model} if suffix == ".keras" else {}
                model = tf_keras.models.load_model(target, compile=False, **kwargs)
        except Exception as exc:
            raise _explain_load_failure(path, exc, cap.tail(1), version, kind) from None
        finally:
            if link is not None:
                link.cleanup()
    return _loaded_keras(kind, str(path), model)


def _call_shapes(model: Any, kind: str) -> Any:
    """The input structure a subclassed model was built or first called with: ``(dims, dtype)`` per input,
    in a list or dict as it was called, or None when unknown."""
    if kind == "keras3":
        shapes = getattr(model, "_build_shapes_dict", None) or {}
        spec = next(iter(shapes.values())) if len(shapes) == 1 else None
        dtype = getattr(model, "input_dtype", None) or "float32"
    else:
        # tf_keras records the first call's TensorSpecs (dtypes too); build((None, ...)) only the shape
        spec = getattr(model, "_saved_model_inputs_spec", None)
        if spec is None:
            spec = getattr(model, "_build_input_shape", None)
        dtype = "float32"

    def leaf(s: Any) -> Any:
        dims = getattr(s, "shape", s)  # a TensorSpec's shape, or a TensorShape / tuple itself
        try:
            dims = dims.as_list() if hasattr(dims, "as_list") else dims
        except ValueError:  # unknown rank
            return None
        if isinstance(dims, (list, tuple)) and dims and all(d is None or isinstance(d, int) for d in dims):
            return tuple(dims), getattr(getattr(s, "dtype", None), "name", None) or dtype
        return None

    if spec is None:
        return None
    if leaf(spec) is not None:
        return leaf(spec)
    if isinstance(spec, dict):  # call(inputs) on a dict
        leaves = {k: leaf(s) for k, s in spec.items()}
        return leaves if leaves and all(v is not None for v in leaves.values()) else None
    if isinstance(spec, (list, tuple)):  # call(inputs) on a list
        leaves = [leaf(s) for s in spec]
        return leaves if leaves and all(v is not None for v in leaves) else None
    return None


def with_inputs(model: Any, kind: str, source: str) -> Any:
    """The model with symbolic inputs, which export, verification and pruning read.

    A built Keras 3 or tf_keras subclassed model (its input shape, or list or dict of shapes, known from
    build or a first call) is wrapped in a functional model around it: the same layers and weights,
    called on ``Input`` s of those shapes. A model whose input shape nobody knows is refused with the way out.
    """
    try:
        inputs = model.inputs
    except (AttributeError, ValueError):
        inputs = None
    if inputs:
        return model
    name = type(model).__name__
    k = "tf_keras" if kind == "tf_keras" else "keras"  # the module a wrap needs: Keras 3's Input cannot call a tf_keras model
    shape = _call_shapes(model, kind) if name != "Sequential" and kind in ("keras3", "tf_keras") else None
    if shape is not None:
        import importlib

        K = importlib.import_module(k)

        def symbolic(s: Any, input_name: str | None = None) -> Any:
            # s[0][0] is the batch it was first called with: any batch size here
            return K.Input(shape=tuple(s[0][1:]), dtype=s[1], name=input_name)

        # Named here: left to Keras, they took its session counter (keras_tensor_5, input_3), which the
        # artifacts' inputs are then called by, and another session's export renames.
        if isinstance(shape, dict):
            inp: Any = {key: symbolic(s, key) for key, s in shape.items()}
        elif isinstance(shape, list):
            inp = [symbolic(s, f"input{i}") for i, s in enumerate(shape)]
        else:
            inp = symbolic(shape, "input")
        try:
            return K.Model(inp, model(inp), name=model.name)
        except Exception:  # noqa: BLE001 - a call that cannot be traced symbolically: refused below
            pass
    if name == "Sequential":
        # an in-memory model was never saved: building it (or calling it once) is enough
        then = "and pass it again" if source.startswith("<in-memory") else "and save it again"
        raise ModelLoadError(
            f"{source}: the Sequential model was never built, so it has no input shape; start it with "
            f"{k}.Input(shape=...) (or call model.build((None, ...)) or call it once on a batch) {then}"
        )
    raise ModelLoadError(
        f"{source}: {name} is a subclassed model whose input shape is unknown (never built or called, or called "
        f"with several arguments); call it once on a batch, or wrap it (inp = {k}.Input(shape=...); "
        f"{k}.Model(inp, model(inp)))"
    )


def non_finite_weights(model: Any) -> list[tuple[str, int, int, int]]:
    """``(name, NaN count, inf count, size)`` of each float weight of a Keras model holding NaN or inf."""
    bad = []
    for w in getattr(model, "weights", []):
        try:
            value = np.asarray(w.numpy() if hasattr(w, "numpy") else w)
        except Exception:  # noqa: BLE001 - an unreadable variable is the converter's to report
            continue
        if value.dtype.kind == "f" and value.size:
            nan, inf = int(np.count_nonzero(np.isnan(value))), int(np.count_nonzero(np.isinf(value)))
            if nan or inf:
                bad.append((getattr(w, "path", None) or w.name, nan, inf, value.size))
    return bad


def check_finite_weights(model: Any, source: str) -> None:
    """Refuse a Keras model with NaN in its weights (a diverged training run, a bad checkpoint).

    Every artifact of it would compute NaN and fail its target with nothing to say why; the model
    is what is broken, so it is bad input. Infinities are left to the reference check: a layer may
    keep a -inf constant (a mask) on purpose.

    Raises:
        ModelLoadError: naming the first weight with NaN and how many it holds.
    """
    bad = [(name, nan, size) for name, nan, _, size in non_finite_weights(model) if nan]
    if bad:
        name, n, size = bad[0]
        more = f" (and {len(bad) - 1} more weight(s))" if len(bad) > 1 else ""
        raise ModelLoadError(
            f"{source}: weight {name!r} holds {n} NaN value(s) of {size}{more}: every artifact would compute NaN; "
            "the model itself is broken (a diverged training run?): retrain it or restore a checkpoint from before the NaNs"
        )


def check_stateless(model: Any, source: str) -> None:
    """Refuse a Keras model with ``stateful=True`` layers: their outputs depend on every call before.

    The reference is computed in batches of 8 (a stateful LSTM refuses any batch but its own) and
    each artifact is verified on each sample alone; a carried state makes either meaningless. The
    same weights in a stateless copy convert and verify like any model.

    Raises:
        ModelLoadError: naming the stateful layers and the fix.
    """
    flat = model._flatten_layers() if hasattr(model, "_flatten_layers") else getattr(model, "layers", [])
    # a (nested) model's own `stateful` says whether any of its layers is: the layers are named instead
    stateful = [layer.name for layer in flat
                if getattr(layer, "stateful", False) is True and not isinstance(getattr(layer, "layers", None), list)]
    if stateful:
        raise ModelLoadError(
            f"{source}: layer(s) {', '.join(repr(n) for n in stateful[:5])} are stateful (stateful=True: each call "
            "starts from the previous one's state), which per-sample verification cannot check; rebuild the model "
            "with stateful=False and copy the weights over (model.set_weights(old.get_weights())), then convert that")


def check_flat_outputs(model: Any, source: str) -> None:
    """Refuse a Keras model whose outputs nest (a list inside a dict, a tuple inside a list...).

    Every artifact names its outputs one by one (``output_0``... in Keras's flattened order, or
    a dict's keys) and the manifest maps each back to its ``keras_name``; a dict value that is a
    list has no such name, and describing the model crashed on it. Flattening here would invent
    names the user never chose, so the model is refused with the one-line way to flatten it.

    Raises:
        ModelLoadError: naming the first nested output and how to flatten the outputs.
    """
    struct = getattr(model, "_outputs_struct", None)  # Keras 3 functional
    if struct is None:
        struct = getattr(model, "_nested_outputs", None)  # tf_keras functional
    if isinstance(struct, dict):
        items, outer = list(struct.items()), "dict"
    elif isinstance(struct, (list, tuple)):
        items, outer = list(enumerate(struct)), type(struct).__name__
    else:
        return  # one tensor
    for key, value in items:
        if isinstance(value, (dict, list, tuple)):
            raise ModelLoadError(
                f"{source}: the model's outputs are nested (output {key!r} is a {type(value).__name__} inside a "
                f"{outer}); deploykit takes one output tensor, a flat list or a flat dict of tensors: rebuild it "
                "with flat outputs, e.g. keras.Model(model.inputs, model.outputs) (a flat list) or a dict with one "
                "key per tensor, and save that")


# The names TensorFlow takes for a graph scope (its own rules: a model's name is the root scope,
# layer and weight names nest under it). Keras 3 accepts any name but '/'.
_ROOT_SCOPE = re.compile(r"[A-Za-z0-9.][A-Za-z0-9_./>-]*")
_NESTED_SCOPE = re.compile(r"[A-Za-z0-9_./>-]*")


def check_exportable_names(model: Any, source: str) -> None:
    """Refuse a Keras 3 model whose model, layer or weight names TensorFlow cannot export.

    Keras 3 accepts names with spaces, brackets or accents ("Digit classifier"), but every export
    to a SavedModel, Keras's own included, stops on them ("not a valid root scope name"): each
    target failed after the work had started. The weights were created under those names, so
    renaming them here would not reach the variables; the way out is naming them where the model
    is built.

    Raises:
        ModelLoadError: naming the first such name and a form TensorFlow takes.
    """
    def refuse(what: str, name: str) -> None:
        fixed = re.sub(r"[^A-Za-z0-9_.>-]", "_", name)
        fixed = fixed if _ROOT_SCOPE.fullmatch(fixed) else "m" + fixed
        raise ModelLoadError(
            f"{source}: {what} {name!r} has characters TensorFlow cannot export (a SavedModel, which every target "
            f"is converted from, takes letters, digits and _ . - >); name it e.g. {fixed!r} where the model is built "
            "(the trained weights carry over with model.set_weights) and save it again")

    if not _ROOT_SCOPE.fullmatch(str(model.name)):
        refuse("the model's name", str(model.name))
    for layer in model._flatten_layers(include_self=False):
        # input names have their own check, with the signature's rules (pipeline._check_input_names)
        if layer.__class__.__name__ != "InputLayer" and not _NESTED_SCOPE.fullmatch(str(layer.name)):
            refuse(f"the name of layer {layer.__class__.__name__}", str(layer.name))
    for variable in model.weights:
        if not _NESTED_SCOPE.fullmatch(str(getattr(variable, "path", variable.name))):
            refuse("the weight", str(getattr(variable, "path", variable.name)))


def _loaded_keras(kind: str, source: str, model: Any) -> LoadedModel:
    model = with_inputs(model, kind, source)
    check_flat_outputs(model, source)
    if kind == "keras3":
        check_exportable_names(model, source)
    model, policy = float32_twin(model) if kind == "keras3" else float32_twin_tf_keras(model)
    loaded = LoadedModel(kind, source, keras_model=model)
    loaded.float32_from_policy = policy
    return loaded


def _kind_of_version(version: str, default: str) -> str:
    """Which Keras loads a file that says it was saved by Keras ``version``: tf_keras for 1.x/2.x
    (tf_keras is Keras 2), Keras 3 for anything else, newer majors included (a "9.9.0" file was
    sent to tf_keras, which then named a module it could not import); ``default`` when unsaid."""
    if not version:
        return default
    return "tf_keras" if version.startswith(("1.", "2.")) else "keras3"


def _major_minor(version: str) -> tuple[int, int] | None:
    match = re.match(r"(\d+)\.(\d+)", version or "")
    return (int(match.group(1)), int(match.group(2))) if match else None


def _installed_version(kind: str) -> str:
    try:
        if kind == "keras3":
            import keras
        else:
            import tf_keras as keras
        return str(keras.__version__)
    except (ImportError, AttributeError):  # pragma: no cover - the loader itself needs it
        return ""


def _unknown_keyword(text: str) -> str | None:
    """'layer 'dense_3' (Dense) has keyword(s) 'future_option'' from a Keras deserialization error
    whose root is a layer given a keyword its class does not take (what a newer Keras writes)."""
    match = re.search(r"Unrecognized keyword arguments? passed to (\w+): \{(.*?)\}", text)  # Keras 3
    if match:
        cls, keys = match.group(1), re.findall(r"'([^']+)':", match.group(2))
    else:
        match = re.search(r"Keyword argument not understood:'?,? '([^']+)'", text)  # tf_keras
        if not match:
            return None
        cls, keys = None, [match.group(1)]
    # the innermost "deserializing class 'Dense' using config={'name': 'dense_3'" is that layer's
    layers = re.findall(r"deserializing class '(\w+)' using config=\{'name': '([^']+)'", text)
    name = next((n for c, n in reversed(layers) if cls is None or c == cls), None)
    cls = cls or next((c for c, n in reversed(layers) if n == name), None)
    what = f"layer {name!r} ({cls})" if name and cls else f"a {cls} layer" if cls else "a layer"
    return f"{what} has keyword(s) {', '.join(repr(k) for k in keys)}"


def _explain_load_failure(path: Path, exc: Exception, native: str, saved: str = "", kind: str = "keras3") -> ModelLoadError:
    """The one line a failed Keras load becomes: what went wrong and how to fix it.

    ``saved``: the Keras version the file says wrote it; ``kind``: the Keras that tried to load it.
    A file saved by a newer Keras than the one installed is the usual reason a config does not
    load (a keyword or a layer class this one does not know): that is said first, with the fix.
    """
    text = " ".join(str(exc).split())
    package = "keras" if kind == "keras3" else "tf_keras"
    installed = _installed_version(kind)
    keyword = _unknown_keyword(text)
    have, want = _major_minor(installed), _major_minor(saved)
    name = "Keras" if kind == "keras3" else "tf_keras"
    match = re.search(r"(?:locate class|Unknown layer|Unknown object|deserialize object of type|Could not deserialize)"
                      r"[^'\"`]*['\"`]([^'\"`]+)['\"`]", text)
    # a class neither Keras knows nor it ever shipped: the user's own code, whatever version wrote the file
    custom = match is not None and not _is_builtin_keras_class(match.group(1))
    if have and want and want > have:
        newer = f"{path}: saved by {name} {saved}, newer than the installed {name} {installed}"
        upgrade = f"upgrade {package} (pip install -U {package})"
        if custom:  # a layer a newer Keras added, or the user's own class: either way out
            return ModelLoadError(
                f"{newer}, and it has no class {match.group(1)!r}: if that is a {name} layer, {upgrade}; if it is your "
                "own, load the model in Python with its class imported and pass the model object to deploykit.convert")
        detail = keyword or (f"{name} could not rebuild {match.group(1)!r}" if match else None)
        return ModelLoadError(newer + (f" ({detail})" if detail else "") + f": {upgrade}, or re-save it with "
                              f"{name} {installed} where the newer version is installed")
    if keyword:
        why = ("though the file says this version wrote it: its config was edited" if want and want == have else
               f"the file says {saved} wrote it, or its config was edited" if saved else
               "the file was written by another version, or its config was edited")
        return ModelLoadError(
            f"{path}: {keyword}, which the installed {name} {installed} does not take, {why}; re-save the model with "
            f"{name} {installed}, or load it with the version that wrote it")
    markers = ("Could not locate class", "Unknown layer", "Unknown object", "custom_objects", "Cannot deserialize object",
               "is not a KerasSaveable subclass")  # Keras 3.15's words for a class it does not know
    if any(m in text for m in markers):
        what = f" {match.group(1)!r}" if match else ""
        if match and _is_builtin_keras_class(match.group(1)):  # Keras's own class failed: the config is what is wrong
            return ModelLoadError(f"{path}: Keras could not rebuild its own {match.group(1)} from the model config: the "
                                  "config inside the file is malformed (edited or truncated); re-save the model")
        return ModelLoadError(
            f"{path}: unknown custom object{what}; deploykit cannot load custom code from a file. "
            "load it in Python with its classes imported (custom_objects=... or registered with "
            "register_keras_serializable) and pass the model object to deploykit.convert"
        )
    if "safe_mode" in text:
        return UntrustedModelError(f"{path}: the model carries code refused by Keras safe_mode; pass --trust-model if you trust it")
    # The archive's config read fine (checked before loading): its weights are what is missing or damaged.
    if re.search(r"Expected a model\.weights\.(h5|npz)|truncated file|file signature not found|Unable to (synchronously )?open", text):
        return ModelLoadError(f"{path}: the model's weights inside the file are missing or damaged ({text[:160]}); the file "
                              "was cut short or altered since it was saved: save the model again")
    return ModelLoadError(f"{path}: could not load the model: {text[:300]}")


def _is_builtin_keras_class(name: str) -> bool:
    """A class Keras itself provides (Functional, Sequential, Dense...), as opposed to user code."""
    import keras

    return name in ("Functional", "Sequential", "Model") or hasattr(keras.layers, name)


def _check_variables_present(path: Path, meta: Any) -> None:
    """Refuse a SavedModel whose saved_model.pb holds variables that its ``variables/`` folder lacks.

    saved_model.pb only describes the graph; the weights are in ``variables/variables.index`` and
    its ``variables.data-NNNNN-of-MMMMM`` shards. Copied without them (an upload that skipped the
    folder), the signature still read fine: ``inspect`` said nothing was wrong and ``convert`` died
    in TensorFlow's loader with a FileNotFoundError traceback.

    Raises:
        ModelLoadError: naming what is missing and that the whole directory must be copied.
    """
    count = sum(1 for node in meta.object_graph_def.nodes if node.HasField("variable"))
    if not count:  # nothing to restore (or a TF1 SavedModel without an object graph: its loader says)
        return
    folder = path / "variables"
    shards = sorted(folder.glob("variables.data-*-of-*")) if folder.is_dir() else []
    expected = max((int(m.group(1)) for m in (re.search(r"-of-(\d+)$", p.name) for p in shards) if m), default=0)
    if not folder.is_dir():
        missing = "variables/ is missing"
    elif not (folder / "variables.index").is_file():
        missing = "variables/variables.index is missing"
    elif not shards or len(shards) < expected:
        missing = (f"variables/ holds {len(shards)} of its {expected} variables.data-* shard(s)" if shards
                   else "variables/ holds no variables.data-* file")
    else:
        _check_variables_readable(path, folder)
        return
    raise ModelLoadError(f"{path}: saved_model.pb holds {count} variable(s) but {missing}: the directory is an "
                         "incomplete copy; copy the whole SavedModel directory (saved_model.pb with its variables/ "
                         "and assets/ folders)")


def _check_variables_readable(path: Path, folder: Path) -> None:
    """Read every value the checkpoint's index lists: a data shard cut short (an interrupted copy, a full
    disk) passed every check and crashed TensorFlow's loader later ("Read less bytes than requested",
    a traceback, exit 1). The loader reads them all anyway; here one at a time, before any work."""
    tf = import_tensorflow()
    try:
        reader = tf.train.load_checkpoint(str(folder / "variables"))
        for name, dtype in reader.get_variable_to_dtype_map().items():
            if dtype != tf.string:  # the object graph: read by the loader, not a weight
                reader.get_tensor(name)
    except Exception as exc:  # noqa: BLE001 - DataLossError, IndexError, OutOfRangeError...: all mean damaged
        raise ModelLoadError(f"{path}: the weights in variables/ cannot be read ({' '.join(str(exc).split())[:120]}): "
                             "the directory is an incomplete or damaged copy; copy the whole SavedModel directory "
                             "again") from None


def _saved_model_params(path: Path) -> int | None:
    """A SavedModel's parameter count as Keras counts it, read from its object graph (nothing is loaded).

    Keras (both versions) saves the model's weights as the root's ``variables`` list; the object graph also
    holds the optimizer's slots and step, and Keras 3 a Dropout's seed-generator state, which
    ``count_params`` leaves out, so they are left out here too. A SavedModel written from a plain
    ``tf.Module`` has no such list: every variable in its graph is counted, the optimizer's subtree aside.
    None when the graph cannot be read.
    """
    try:
        from tensorflow.python.tools import saved_model_utils

        graph = saved_model_utils.get_meta_graph_def(str(path), "serve").object_graph_def
    except Exception:  # noqa: BLE001 - the count is a courtesy; loading reports a damaged model on its own
        return None
    nodes = graph.nodes
    listed = [c.node_id for c in nodes[0].children if c.local_name == "variables"]
    if listed:
        ids = {c.node_id for c in nodes[listed[0]].children}
    else:
        ids, stack, seen = set(), [0], {0}
        while stack:
            for child in nodes[stack.pop()].children:
                if child.node_id not in seen and child.local_name != "optimizer":
                    seen.add(child.node_id)
                    stack.append(child.node_id)
        ids = seen
    total = 0
    for i in ids:
        var = nodes[i].variable if nodes[i].HasField("variable") else None
        if var is None or var.name.endswith("seed_generator_state"):
            continue
        total += int(np.prod([max(d.size, 0) for d in var.shape.dim], dtype=np.int64))
    return total


def _load_saved_model(path: Path, trust_model: bool = False) -> LoadedModel:
    import_tensorflow()
    model = LoadedModel("saved_model", str(path), saved_model_path=path)
    try:
        model.signature()
        from tensorflow.python.tools import saved_model_utils

        meta = saved_model_utils.get_meta_graph_def(str(path), "serve")
        _check_variables_present(path, meta)
        if not trust_model:  # before anything runs it: see graph_safety
            from deploykit.graph_safety import check_saved_model_safe

            check_saved_model_safe(path, meta)
    except ModelLoadError:
        raise
    except Exception as exc:
        raise ModelLoadError(f"{path}: not a readable SavedModel ({' '.join(str(exc).split())[:200]}); it is truncated or corrupt") from None
    return model


@logs_muted
def inspect_model(source: Any, *, trust_model: bool = False) -> ModelInfo:
    """Describe a model: inputs, outputs, layers, embedded preprocessing layers, parameters.

    Example:
        >>> info = deploykit.inspect("model.keras")
        >>> [l["class"] for l in info.preprocessing_layers]
        ['Resizing', 'Rescaling']
    """
    with at_api_boundary():
        return load_model(source, trust_model=trust_model).info()
