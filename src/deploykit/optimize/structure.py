"""Which weights can be pruned, and the masks of each sparsity structure (NumPy only).

Both pruning paths share these rules so that a Keras 3 model and the same
architecture in tf_keras are pruned alike:

* **Prunable weights** follow tfmot 0.8.1's ``PruneRegistry`` for built-in
  layers: ``kernel`` of Dense, Conv1D/2D/3D and Conv2D/3DTranspose,
  ``pointwise_kernel`` of SeparableConv1D/2D, ``embeddings`` of Embedding,
  the cell's ``kernel`` and ``recurrent_kernel`` of LSTM, GRU and SimpleRNN
  (the converters here keep each one whole: a MatMul constant in TFLite, the
  W and R inputs, gates reordered, of ONNX's LSTM/GRU/RNN), or
  whatever a layer's own ``get_prunable_weights()`` returns. DepthwiseConv2D
  stays dense, as in tfmot: its kernel is tiny and each filter sees a single
  channel, so zeros there cost accuracy and save almost nothing. Subclasses of
  built-in layers (custom layers) and preprocessing layers are never pruned.
* **unstructured** keeps the ``k = max(round(size * (1 - s)), 1)`` largest
  magnitudes (tfmot's count; ``round`` is half-to-even in both). tfmot keeps
  every weight tied with the k-th largest; we keep exactly ``k`` (ties broken by
  position), so the achieved count always equals the requested one.
* **2:4** (tfmot ``sparsity_m_by_n=(2, 4)``): tfmot rearranges a rank-2 kernel
  ``[in, out]`` to ``[out, in]`` and a rank-4 kernel ``[h, w, in, out]`` to
  ``[out*h*w, in]`` (TFLite's layout) and zeroes the 2 smallest magnitudes of
  every 4 consecutive values along the last axis: the input channels. Other
  ranks make tfmot fail, and an input-channel count that is not a multiple of
  4 leaves a padded, partial group (a 1-channel conv would keep every weight),
  so such kernels stay dense and are reported.
* **block** (tfmot ``block_size``): only rank-2 kernels (tfmot refuses others);
  block scores are the mean magnitude of the block's weights (tfmot's AVG
  pooling with SAME padding, see :func:`block_mask` for its edge quirk); the
  ``max(round(blocks * (1 - s)), 1)`` highest-scoring blocks are kept.
"""

from __future__ import annotations

import numpy as np

from deploykit.errors import UserError

STRUCTURES = ("unstructured", "2:4", "block")
M_BY_N = (2, 4)

# tfmot 0.8.1 PruneRegistry, built-in layers with prunable weights.
PRUNABLE_WEIGHTS: dict[str, tuple[str, ...]] = {
    "Dense": ("kernel",),
    "Conv1D": ("kernel",),
    "Conv2D": ("kernel",),
    "Conv3D": ("kernel",),
    "Conv2DTranspose": ("kernel",),
    "Conv3DTranspose": ("kernel",),
    "SeparableConv1D": ("pointwise_kernel",),
    "SeparableConv2D": ("pointwise_kernel",),
    "Embedding": ("embeddings",),
    # tfmot prunes a recurrent layer's cell kernels (input and recurrent), not its bias
    "LSTM": ("kernel", "recurrent_kernel"),
    "GRU": ("kernel", "recurrent_kernel"),
    "SimpleRNN": ("kernel", "recurrent_kernel"),
}
# Layers whose prunable weights live on their ``cell``.
RECURRENT = ("LSTM", "GRU", "SimpleRNN")
# Kernels that stay dense on purpose, with the reason the report gives.
DENSE_ON_PURPOSE = {
    "DepthwiseConv2D": "depthwise kernels stay dense (as in tfmot): few weights, one channel per filter",
    "MultiHeadAttention": "attention layers are not pruned by deploykit",
    "LocallyConnected1D": "locally connected layers are not pruned by deploykit",
    "LocallyConnected2D": "locally connected layers are not pruned by deploykit",
}


def check_structure(structure: str, block_size: tuple[int, int]) -> tuple[int, int]:
    """Validate the structure name and block size; return the block size as a tuple of ints."""
    if structure not in STRUCTURES:
        raise UserError(f"unknown pruning structure {structure!r}; choose one of: {', '.join(STRUCTURES)}")
    try:
        bs = tuple(int(b) for b in block_size)
    except (TypeError, ValueError):
        raise UserError(f"block_size must be two positive integers like (1, 4), got {block_size!r}") from None
    if len(bs) != 2 or min(bs) < 1:
        raise UserError(f"block_size must be two positive integers like (1, 4), got {block_size!r}")
    if structure == "block" and bs == (1, 1):
        raise UserError("block_size (1, 1) is unstructured pruning; pass structure='unstructured' or a larger block like (1, 4)")
    return bs  # type: ignore[return-value]


# Keras stores transposed-convolution kernels [h, w, out, in]; their input channels are the last axis.
TRANSPOSED_KERNELS = ("Conv2DTranspose",)


def structure_problem(shape: tuple[int, ...], structure: str, block_size: tuple[int, int],
                      transposed: bool = False) -> str | None:
    """Why a kernel of this shape cannot take the structure (None when it can)."""
    if structure == "2:4":
        if len(shape) not in (2, 4):
            return f"2:4 needs a rank-2 (Dense) or rank-4 (Conv2D) kernel, this one has shape {tuple(shape)}"
        channels = shape[0] if len(shape) == 2 else shape[3 if transposed else 2]
        if channels % M_BY_N[1]:
            return f"2:4 needs the input-channel count divisible by 4, this kernel has {channels}"
    if structure == "block" and len(shape) != 2:
        return f"block sparsity needs a rank-2 (Dense) kernel, this one has shape {tuple(shape)}"
    if structure == "block" and (block_size[0] > shape[0] or block_size[1] > shape[1]):
        # One (padded) block would cover the kernel: it is kept whole and nothing is pruned.
        return f"block {block_size[0]}x{block_size[1]} is larger than this kernel {tuple(shape)}"
    return None


def keep_count(size: int, sparsity: float) -> int:
    """How many weights tfmot keeps at this sparsity: ``max(round(size * (1 - s)), 1)`` in float32."""
    kept = np.float32(size) * (np.float32(1.0) - np.float32(sparsity))
    return int(max(np.round(kept), 1))


def unstructured_mask(weights: np.ndarray, sparsity: float) -> np.ndarray:
    """Mask (same shape, weights' dtype) keeping exactly ``keep_count`` largest magnitudes."""
    flat = np.abs(np.asarray(weights)).reshape(-1)
    k = keep_count(flat.size, sparsity)
    order = np.argsort(-flat, kind="stable")
    mask = np.zeros(flat.size, dtype=weights.dtype)
    mask[order[:k]] = 1
    return mask.reshape(weights.shape)


def _to_rows(weights: np.ndarray) -> np.ndarray:
    if weights.ndim == 2:
        return weights.T
    return np.transpose(weights, (3, 0, 1, 2)).reshape(-1, weights.shape[2])


def _from_rows(rows: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    if len(shape) == 2:
        return rows.T
    return np.transpose(rows.reshape(shape[3], shape[0], shape[1], shape[2]), (1, 2, 3, 0))


def m_by_n_mask(weights: np.ndarray, m_by_n: tuple[int, int] = M_BY_N, transposed: bool = False) -> np.ndarray:
    """tfmot's m-by-n mask: in every ``n`` consecutive input-channel weights, zero the ``m`` smallest.

    ``transposed``: a [h, w, out, in] kernel (Conv2DTranspose), grouped along its input channels
    too, as TFLite's TRANSPOSE_CONV reduces over them (tfmot groups the output channels there).
    """
    if transposed:
        swapped = np.swapaxes(np.asarray(weights), 2, 3)
        return np.swapaxes(m_by_n_mask(swapped, m_by_n), 2, 3)
    zeros, n = m_by_n
    rows = np.abs(_to_rows(np.asarray(weights)))
    if rows.shape[1] % n:
        raise ValueError(f"input channels ({rows.shape[1]}) not divisible by {n}")
    groups = rows.reshape(-1, n)
    keep = np.argsort(-groups, axis=1, kind="stable")[:, : n - zeros]
    mask = np.zeros_like(groups, dtype=weights.dtype)
    np.put_along_axis(mask, keep, 1, axis=1)
    return _from_rows(mask.reshape(rows.shape), tuple(weights.shape)).astype(weights.dtype)


def _same_windows(n: int, k: int) -> list[tuple[int, int]]:
    """Windows of TF's SAME pooling with stride == window: padding is split, the extra at the end."""
    out = -(-n // k)
    pad_before = max((out - 1) * k + k - n, 0) // 2
    return [(max(0, j * k - pad_before), min(n, j * k - pad_before + k)) for j in range(out)]


def block_mask(weights: np.ndarray, sparsity: float, block_size: tuple[int, int]) -> np.ndarray:
    """tfmot's block mask of a rank-2 kernel.

    tfmot scores blocks with AVG pooling of the magnitudes, SAME padding, stride =
    block; when a dimension is not a multiple of the block, TF puts half of the
    padding *before* the data, so the scoring windows are shifted against the
    blocks the mask is then expanded to (from index 0). We reproduce that exactly,
    quirk included, so both paths prune the same weights.
    """
    w = np.abs(np.asarray(weights, dtype=np.float64))
    bh, bw = block_size
    rows, cols = w.shape
    row_win, col_win = _same_windows(rows, bh), _same_windows(cols, bw)
    scores = np.array([[w[r0:r1, c0:c1].mean() for c0, c1 in col_win] for r0, r1 in row_win])
    block_keep = unstructured_mask(scores.astype(np.float32), sparsity)
    full = np.kron(block_keep, np.ones((bh, bw), dtype=np.float32))[:rows, :cols]
    return full.astype(weights.dtype)


def make_mask(weights: np.ndarray, sparsity: float, structure: str, block_size: tuple[int, int],
              transposed: bool = False) -> np.ndarray:
    """The mask of one kernel for the given structure (2:4 ignores ``sparsity``: it is 50 %)."""
    if structure == "2:4":
        return m_by_n_mask(weights, transposed=transposed)
    if structure == "block":
        return block_mask(weights, sparsity, block_size)
    return unstructured_mask(weights, sparsity)
