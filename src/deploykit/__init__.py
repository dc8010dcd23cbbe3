"""deploykit: take a trained Keras/TensorFlow model to verified, benchmarked device artifacts.

Public API::

    import deploykit
    result = deploykit.convert("model.keras", targets=["tflite-fp32", "tflite-int8"],
                               data="calib.npz", out="build/")
    print(result.ok, result.report_path)

    pruned = deploykit.prune(keras_model, (x_train, y_train), sparsity=0.8).model
    smaller = deploykit.cluster(pruned, (x_train, y_train), clusters=16).model  # zeros kept

Heavy libraries (TensorFlow, LiteRT) are imported only inside the functions
that need them, so importing deploykit is cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = [
    "convert",
    "prune",
    "cluster",
    "bench",
    "inspect",
    "Pipeline",
    "Target",
    "get_target",
    "list_targets",
    "DeployError",
    "__version__",
]

from deploykit.errors import DeployError
from deploykit.targets import Target, get_target, list_targets

if TYPE_CHECKING:  # pragma: no cover
    from deploykit.pipeline import Pipeline


def __getattr__(name: str) -> Any:
    # Lazy attributes keep `import deploykit` (and `deploy --help`) free of TensorFlow.
    if name in {"convert", "Pipeline"}:
        from deploykit import pipeline

        return getattr(pipeline, name)
    if name == "prune":
        from deploykit.optimize.prune import prune

        return prune
    if name == "cluster":
        from deploykit.optimize.cluster import cluster

        return cluster
    if name == "bench":
        from deploykit.runtime_bench import bench

        return bench
    if name == "inspect":
        from deploykit.models import inspect_model

        return inspect_model
    raise AttributeError(f"module 'deploykit' has no attribute {name!r}")
