import numpy as np
import pytest

from pipeline import params, spec
from tests.conftest import raw_params

P = params.parse(raw_params())


def test_default_cnn_matches_the_classic_mnist_cnn():
    s = params.model_spec(P, "cnn", (28, 28, 1))
    # conv 5x5x1x32, conv 5x5x32x64, dense 7*7*64 -> 1024, dense 1024 -> 10 (weights + biases)
    assert s.layer_param_counts() == [5 * 5 * 32 + 32, 5 * 5 * 32 * 64 + 64, 3136 * 1024 + 1024, 1024 * 10 + 10]
    assert s.param_count() == 3_274_634
    # 2 * MACs: conv1 at 28x28, conv2 at 14x14, then the two dense layers
    assert s.flops_per_sample() == 2 * (25 * 32 * 784 + 25 * 32 * 64 * 196 + 3136 * 1024 + 1024 * 10)
    assert 27e6 < s.flops_per_sample() < 29e6


def test_default_mlp_counts():
    s = params.model_spec(P, "mlp", (28, 28, 1))
    assert s.param_count() == 784 * 512 + 512 + 512 * 256 + 256 + 256 * 10 + 10
    assert s.layers == (spec.Flatten(28, 28, 1), spec.Dense(784, 512), spec.Act("relu"), spec.Dropout(0.2),
                        spec.Dense(512, 256), spec.Act("relu"), spec.Dropout(0.2), spec.Dense(256, 10))


def test_init_weights_are_seeded_shaped_and_scaled():
    s = params.model_spec(P, "cnn", (8, 8, 1))
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


def test_too_deep_cnn_for_the_image_is_a_value_error_in_spec_and_a_params_error_from_params():
    with pytest.raises(ValueError, match="^3 conv blocks need 3 2x2 poolings, but a 4x4 image allows only 2$"):
        spec.cnn((4, 4, 1), 10, [8, 8, 8], 3, 16, 0.5)
    with pytest.raises(params.ParamsError, match="^params.yaml: cnn.channels: 3 conv blocks need 3 2x2 poolings, "
                                                 "but a 4x4 image allows only 2$"):
        params.model_spec(params.parse(raw_params(**{"cnn.channels": [8, 8, 8]})), "cnn", (4, 4, 1))


def test_spec_imports_no_params_code():
    import subprocess
    import sys

    from tests.conftest import ROOT

    code = "import sys, pipeline.spec; print(sorted(m for m in sys.modules if m.startswith('pipeline')))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "['pipeline', 'pipeline.spec']"


def test_learning_rate_schedule_maths():
    o = spec.Optim("adam", 1.0, 0.9, 0.9, 0.999, 1e-8, warmup=0.5, decay="cosine")
    lrs = [spec.lr_at(o, k, 13, per_epoch=8) for k in range(13)]  # half an epoch = 4 warmup steps, 9 decay steps
    assert lrs[:4] == [0.25, 0.5, 0.75, 1.0]  # linear warmup, reaching the peak on its last step
    assert lrs[4] == 1.0 and lrs[-1] == pytest.approx(0.0, abs=1e-12)  # cosine from the peak down to 0
    assert lrs[8] == pytest.approx(0.5)  # halfway through the decay
    assert all(a >= b for a, b in zip(lrs[3:], lrs[4:]))
    lin = spec.Optim("sgd", 2.0, 0.0, 0.9, 0.999, 1e-8, warmup=0, decay="linear")
    assert [spec.lr_at(lin, k, 5, 5) for k in range(5)] == [2.0, 1.5, 1.0, 0.5, 0.0]
    const = spec.Optim("sgd", 0.1, 0.0, 0.9, 0.999, 1e-8)
    assert const.constant() and spec.lr_at(const, 7, 10, 5) == 0.1 and not o.constant()
