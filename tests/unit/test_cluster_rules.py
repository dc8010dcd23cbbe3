"""Weight clustering rules without TensorFlow: 1-D k-means, assignment, settings, the artifact check."""

from __future__ import annotations

import numpy as np
import pytest

from deploykit.errors import UserError
from deploykit.optimize.cluster import assign, centroids_1d, check_settings
from deploykit.optimize.sparsity import check_clusters_survived, shared_values


def test_centroids_fit_the_modes_and_never_exceed_the_distinct_values():
    rng = np.random.default_rng(0)
    modes = np.array([-0.5, -0.1, 0.2, 0.7])
    values = modes[rng.integers(0, 4, 4000)] + rng.normal(0, 0.01, 4000)
    c = centroids_1d(values, 4)
    assert np.allclose(np.sort(c), modes, atol=0.01)
    assert list(centroids_1d(np.array([1.0, 1.0, 2.0]), 16)) == [1.0, 2.0]
    assert np.array_equal(centroids_1d(values, 8), centroids_1d(values, 8))  # deterministic


def test_assignment_keeps_zeros_in_their_own_cluster():
    c = np.array([-0.3, 0.1, 0.4])
    w = np.array([[0.0, -0.31, 0.12], [0.39, 0.0, -0.01]])
    idx = assign(w, c)
    assert idx.tolist() == [[0, 1, 2], [3, 0, 2]]  # -0.01 is not zero: its nearest centroid, 0.1
    assert np.array_equal(np.r_[0.0, c][idx] == 0, w == 0)


@pytest.mark.parametrize("bad", [1, 0, 257, True, 16.0, "16", None])
def test_bad_cluster_counts_are_refused(bad):
    with pytest.raises(UserError, match="clusters must be a whole number from 2 to 256"):
        check_settings(clusters=bad)


def test_other_settings_are_checked():
    assert check_settings(clusters=8, epochs=0) == 8  # 0 epochs: cluster without fine-tuning
    with pytest.raises(UserError, match="epochs"):
        check_settings(epochs=-1)
    with pytest.raises(UserError, match="learning_rate"):
        check_settings(learning_rate=float("inf"))


def _clustered(shape, k, rng, sparsity=0.0):
    values = rng.normal(size=k)
    w = values[rng.integers(0, k, shape)]
    w[rng.random(shape) < sparsity] = 0
    return w


def test_shared_values_per_channel_on_either_axis():
    rng = np.random.default_rng(1)
    w = _clustered((64, 512), 8, rng, 0.8)
    scaled = w * rng.uniform(0.5, 2, (64, 1))  # a per-channel factor (BatchNorm fold, int8 scale)
    assert shared_values(scaled)[0][0] == 8 and shared_values(scaled)[1][0] > 8
    assert shared_values(scaled.T)[1][0] == 8  # channels last (TF.js, ONNX MatMul)
    q = np.round(scaled / np.abs(scaled).max(axis=1, keepdims=True) * 127).astype(np.int8)
    assert shared_values(q)[0][0] <= 8
    assert shared_values(q + 5, 5)[0][0] <= 8  # values equal to the zero point are the zeros


def test_check_claims_one_tensor_per_kernel_and_names_the_lost_one():
    rng = np.random.default_rng(2)
    report = {"layers": [{"name": "a", "weight": "kernel", "size": 4096, "distinct_nonzero_after": 16},
                         {"name": "b", "weight": "kernel", "size": 4096, "distinct_nonzero_after": 16},
                         {"name": "c", "weight": "kernel", "size": 40, "distinct_nonzero_after": 16}]}
    kept = _clustered((64, 64), 16, rng)
    dense = rng.normal(size=(64, 64))
    tiny = _clustered((4, 10), 16, rng)
    counts = {"format": "tflite", "tensors": [
        {"size": 4096, "shared_values": shared_values(kept)},
        {"size": 4096, "shared_values": shared_values(dense)},
        {"size": 40, "shared_values": shared_values(tiny)}]}
    lost, unproven = check_clusters_survived(report, counts)
    assert len(lost) == 1 and "was not stored as shared values in the tflite artifact" in lost[0]
    assert "64 distinct values" in lost[0]
    assert unproven == ["c/kernel"]  # 10 values per channel cannot show 16 shared ones
    counts["tensors"][1]["shared_values"] = shared_values(_clustered((64, 64), 16, rng))
    assert check_clusters_survived(report, counts)[0] == []


def test_onnx_conv_transpose_channels_are_on_the_second_axis():
    """ONNX stores ConvTranspose weights (in, out, kh, kw), quantized per channel on axis 1."""
    rng = np.random.default_rng(3)
    w = _clustered((16, 8, 3, 3), 8, rng)  # (in, out, kh, kw)
    scaled = w * rng.uniform(0.5, 2, (1, 8, 1, 1))
    report = {"clusters": 8, "layers": [{"name": "ct", "weight": "kernel", "size": scaled.size,
                                         "distinct_nonzero_after": 8}]}
    counts = {"tensors": [{"size": scaled.size, "shared_values": shared_values(scaled)}]}
    assert check_clusters_survived(report, counts) == ([], [])


def test_the_bound_is_the_requested_clusters_not_what_the_kernel_holds():
    """A kernel the clustering missed (thousands of values) must fail, not set its own bound."""
    rng = np.random.default_rng(4)
    dense = rng.normal(size=(64, 64))
    report = {"clusters": 16, "layers": [{"name": "fc", "weight": "kernel", "size": 4096,
                                          "distinct_nonzero_after": 4096}]}
    lost, _ = check_clusters_survived(report, {"tensors": [{"size": 4096, "shared_values": shared_values(dense)}]})
    assert len(lost) == 1 and "16 shared values" in lost[0]
