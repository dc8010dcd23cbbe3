"""What a run's fine-tunes (pruning, clustering, QAT) are asked for, checked before any work:
known settings with valid values, labelled training data, a model QAT can take, the output the
labels train and the loss the fine-tune uses.

The settings arrive as the CLI's flags or the Python API's arguments (a number or a dict); each
check returns the dict the optimize step takes, or None when that step was not asked for.
"""

from __future__ import annotations

import numbers
from typing import Any, Callable, Sequence

from deploykit.errors import DataError, UserError

PRUNE_SETTINGS = ("sparsity", "schedule", "structure", "block_size", "epochs", "batch_size", "patience",
                  "learning_rate", "loss", "validation_split", "seed")


def fine_tune_loss(model: Any, options: Sequence[dict[str, Any] | None], index: int | None = None,
                   keys: Sequence[str] | None = None) -> Any:
    """The loss a fine-tune of this run uses: its ``loss`` option, else the model's compiled loss; of a
    loss compiled per output, the labelled output's (``index``, the --label-output), None when unnamed."""
    from deploykit.optimize.heads import compiled_loss_of, is_per_output, lone_loss
    from deploykit.optimize.qat import compile_config_of

    for opts in options:
        if opts and opts.get("loss") is not None:
            return opts["loss"]
    loss = lone_loss((compile_config_of(model) or {}).get("loss"))
    if is_per_output(loss):
        return None if index is None or keys is None else compiled_loss_of(loss, index, keys)
    return loss


def check_prune(prune: Any, train_data: Any, tuned: bool = False) -> dict[str, Any] | None:
    """Pruning settings checked before any work (None: no pruning). ``tuned``: clustering or QAT
    use the train data too."""
    if prune is None:
        if train_data is not None and not tuned:
            raise UserError("train data is only used to fine-tune while pruning, clustering or for QAT; pass --prune 0.8 "
                            "(prune=0.8), --cluster 16 (cluster=16) or --qat (qat=True), or drop --train-data")
        return None
    if isinstance(prune, numbers.Real) and not isinstance(prune, bool):
        prune = {"sparsity": prune}
    if not isinstance(prune, dict):
        raise UserError(f"prune must be a sparsity like 0.8 or a dict of settings, got {type(prune).__name__}")
    from deploykit.optimize.prune import check_settings

    return _settings(prune, PRUNE_SETTINGS, "pruning", check_settings, train_data)


def _settings(settings: dict[str, Any], known: Sequence[str], what: str, check: Callable[..., Any],
              train_data: Any) -> dict[str, Any]:
    """A fine-tune's settings (pruning, clustering, QAT) checked before any work: known names,
    valid values (``check``), and labelled training data to fine-tune on."""
    unknown = sorted(set(settings) - set(known))
    if unknown:
        raise UserError(f"unknown {what} setting(s) {', '.join(unknown)}; choose from: {', '.join(known)}")
    check(**settings)
    if train_data is None:
        raise DataError(f"{what} fine-tunes the model and needs labelled training data; pass --train-data train.npz (x and y)")
    return dict(settings)


def label_output_index(name: str | None, outputs: Sequence[Any], aliases: Sequence[set[str]] | None = None) -> int | None:
    """Index of the output ``label_output`` names (artifact name, Keras name, or a Keras model's dict key
    or layer name: ``aliases``); None when not given."""
    if name is None:
        return None
    for i, o in enumerate(outputs):
        if name in (o.name, getattr(o, "keras_name", "")) or (aliases is not None and name in aliases[i]):
            return i
    known = ", ".join(o.name + (f" ({o.keras_name})" if getattr(o, "keras_name", "") else "") for o in outputs)
    raise UserError(f"--label-output {name!r} is not an output of this model; its outputs: {known}")


CLUSTER_SETTINGS = ("clusters", "epochs", "batch_size", "patience", "learning_rate", "loss", "validation_split", "seed")


def check_cluster(cluster: Any, train_data: Any) -> dict[str, Any] | None:
    """Clustering settings checked before any work (None: no clustering)."""
    if cluster is None:
        return None
    if isinstance(cluster, numbers.Integral) and not isinstance(cluster, bool):
        cluster = {"clusters": cluster}
    if not isinstance(cluster, dict):
        raise UserError(f"cluster must be a number of shared values like 16 or a dict of settings, got {cluster!r}")
    from deploykit.optimize.cluster import check_settings

    return _settings(cluster, CLUSTER_SETTINGS, "clustering", check_settings, train_data)


QAT_SETTINGS = ("epochs", "batch_size", "patience", "learning_rate", "loss", "validation_split", "seed")


def check_qat(qat: Any, train_data: Any) -> dict[str, Any] | None:
    """QAT settings checked before any work (None: no QAT)."""
    if qat is None or qat is False:
        return None
    if qat is True:
        qat = {}
    if not isinstance(qat, dict):
        raise UserError(f"qat must be True or a dict of settings, got {type(qat).__name__}")
    from deploykit.optimize.qat import check_settings

    return _settings(qat, QAT_SETTINGS, "QAT", check_settings, train_data)


def check_qat_model(loaded: Any) -> None:
    """QAT takes a tf_keras Sequential/functional model: refuse anything else before any work."""
    from deploykit.optimize.qat import check_model

    if loaded.keras_model is None:
        raise UserError(f"{loaded.source}: QAT fine-tunes a tf_keras model; pass the .keras/.h5 file, not a SavedModel")
    check_model(loaded.keras_model)
