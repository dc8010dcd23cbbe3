"""Keras-level optimization before conversion.

* :mod:`deploykit.optimize.prune` — pruning-aware fine-tuning (``prune()``, ``PruneResult``);
* :mod:`deploykit.optimize.cluster` — weight clustering (shared values per kernel, zeros kept)
  (``cluster()``, ``ClusterResult``);
* :mod:`deploykit.optimize.qat` — quantization-aware training of tf_keras models, PQAT after pruning
  (``quantize_aware()``, ``QATResult``);
* :mod:`deploykit.optimize.settings` — a run's fine-tune settings, checked before any work;
* :mod:`deploykit.optimize.sparsity` — zeros counted in converted artifacts, survival check;
* :mod:`deploykit.optimize.schedule`, :mod:`deploykit.optimize.structure` — tfmot's rules in NumPy.

Nothing is re-exported here: ``prune`` is both a submodule and its main function,
and importing this package must stay free of TensorFlow.
"""
