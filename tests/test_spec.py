import numpy as np
import pytest

from pipeline import params, spec
from tests.conftest import raw_params

P = params.parse(raw_params())


def test_default_cnn_matches_the_classic_mnist_cnn():
    s = spec.from_params(P, "cnn", (28, 28, 1))
    # conv 5x5x1x32, conv 5x5x32x64, dense 7*7*64 -> 1024, dense 1024 -> 10 (weights + biases)
    assert s.layer_param_counts() == [5 * 5 * 32 + 32, 5 * 5 * 32 * 64 + 64, 3136 * 1024 + 1024, 1024 * 10 + 10]
    assert s.param_count() == 3_274_634
    # 2 * MACs: conv1 at 28x28, conv2 at 14x14, then the two dense layers
    assert s.flops_per_sample() == 2 * (25 * 32 * 784 + 25 * 32 * 64 * 196 + 3136 * 1024 + 1024 * 10)
    assert 27e6 < s.flops_per_sample() < 29e6


def test_default_mlp_counts():
    s = spec.from_params(P, "mlp", (28, 28, 1))
    assert s.param_count() == 784 * 512 + 512 + 512 * 256 + 256 + 256 * 10 + 10
    assert [l[0] for l in s.layers] == ["flatten", "dense", "relu", "dropout", "dense", "relu", "dropout", "dense"]


def test_init_weights_are_seeded_shaped_and_scaled():
    s = spec.from_params(P, "cnn", (8, 8, 1))
    a, b, c = spec.init_weights(s, 0), spec.init_weights(s, 0), spec.init_weights(s, 1)
    assert [w.shape for w in a] == s.param_shapes()
    assert spec.digest(a) == spec.digest(b) != spec.digest(c)
    assert all(w.dtype == np.float32 for w in a)
    assert np.abs(a[0]).max() <= np.sqrt(6 / 25) and np.abs(a[0]).max() > 0.9 * np.sqrt(6 / 25)  # He, fan_in 25
    assert np.all(a[1] == 0)


def test_batch_order_is_a_permutation_fixed_by_seed_and_epoch():
    o = spec.batch_order(100, 0, 0)
    assert sorted(o) == list(range(100))
    np.testing.assert_array_equal(o, spec.batch_order(100, 0, 0))
    assert not np.array_equal(o, spec.batch_order(100, 0, 1))


def test_too_deep_cnn_for_the_image_is_a_params_error():
    with pytest.raises(params.ParamsError, match="3 conv blocks need 3 2x2 poolings, but a 4x4 image allows only 2"):
        spec.cnn((4, 4, 1), 10, [8, 8, 8], 3, 16, 0.5)
