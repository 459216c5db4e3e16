"""Tests for network.py: output shapes, the SCN's leave-one-out spatial part, the custom layers and saving."""

import keras
import numpy as np
import pytest
from scipy.signal import correlate

import network
from network import LeaveOneOutConv, LinearUpSampling3D, build_network, heatmap_factor

SMALL = {"num_filters": 2}  # shape tests: few filters keep every network cheap
INPUT_SHAPES = {2: (64, 64, 1), 3: (32, 32, 32, 1)}


def _numpy(tensor) -> np.ndarray:
    return keras.ops.convert_to_numpy(tensor)


@pytest.mark.parametrize("dim", [2, 3])
@pytest.mark.parametrize("name", network.NETWORKS)
def test_output_shapes(name, dim):
    input_shape = INPUT_SHAPES[dim]
    model = build_network(name, input_shape, num_landmarks=3, **SMALL)
    heatmaps = model(np.zeros((2, *input_shape), dtype="float32"))
    factor = heatmap_factor(name)
    assert model.name == name
    assert tuple(heatmaps.shape) == (2, *(n // factor for n in input_shape[:-1]), 3)


def test_heatmap_factor():
    assert {name: heatmap_factor(name) for name in network.NETWORKS} == {
        "scn": 1,
        "unet": 1,
        "downsampling_net": 4,
        "conv_only": 1,
        "scn_unet": 1,
    }
    assert heatmap_factor("downsampling_net", num_levels=4) == 8


def test_unknown_name_and_option_are_rejected_with_valid_choices():
    with pytest.raises(ValueError, match=r"unknown network 'resnet'.*scn, unet, downsampling_net"):
        build_network("resnet", (64, 64, 1), 3)
    with pytest.raises(ValueError, match=r"unknown option\(s\) num_filter .*valid options: num_filters"):
        build_network("unet", (64, 64, 1), 3, num_filter=8)
    with pytest.raises(ValueError, match=r"input_shape=\(60, 64, 1\) must be divisible by 8"):
        build_network("scn", (60, 64, 1), 3)
    with pytest.raises(ValueError, match="num_landmarks must be an int >= 2, received 1"):
        build_network("scn", (64, 64, 1), 1)
    with pytest.raises(ValueError, match="kernel_size must be an int >= 1, received 0"):
        build_network("conv_only", (64, 64, 1), 3, kernel_size=0)


def test_paper_defaults_and_initialisation():
    model = build_network("scn", (256, 256, 1), 37)
    assert model.get_layer("local_conv0").kernel.shape == (5, 5, 1, 128)
    assert model.get_layer("local_heatmaps").kernel.shape == (5, 5, 128, 37)
    spatial_kernel = _numpy(model.get_layer("spatial_heatmaps_downsampled").kernel)
    assert spatial_kernel.shape == (15, 15, 37, 37)
    assert model.get_layer("local_heatmaps_downsampled").output.shape == (None, 32, 32, 37)
    # heatmap layers start at std 1e-4 (truncated normal), the masked diagonal at exactly zero
    local_kernel = _numpy(model.get_layer("local_heatmaps").kernel)
    assert 0.5e-4 < local_kernel.std() < 1e-4
    assert np.all(spatial_kernel[:, :, np.arange(37), np.arange(37)] == 0)
    hidden = _numpy(model.get_layer("local_conv1").kernel)
    assert hidden.std() == pytest.approx(np.sqrt(2 / (5 * 5 * 128)), rel=0.15)  # He


def test_parameter_and_flop_counts_known_answer():
    # SCN 2D, 2 filters, 3 landmarks: local convs 5*5*1*2+2, 2 x (5*5*2*2+2), heatmaps 5*5*2*3+3,
    # spatial 15*15*3*3+3
    model = build_network("scn", (64, 64, 1), 3, num_filters=2)
    assert model.count_params() == 52 + 2 * 102 + 153 + 2028
    # one 3x3 conv 1->2 and a 1x1 heatmap layer 2->3 on 8x8 pixels: 2 * (9*1*2 + 2*3) * 64
    model = build_network("conv_only", (8, 8, 1), 3, num_filters=2, num_convs=1, kernel_size=3)
    assert network.count_flops(model) == 2 * (18 + 6) * 64


def test_weight_decay_is_half_sum_of_squared_kernels():
    model = build_network("conv_only", (8, 8, 1), 3, num_filters=2, num_convs=2, weight_decay=0.1)
    kernels = [layer.kernel for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    expected = 0.1 / 2 * sum(float(np.sum(_numpy(k) ** 2)) for k in kernels)
    assert float(sum(_numpy(loss) for loss in model.losses)) == pytest.approx(expected, rel=1e-5)
    assert not build_network("conv_only", (8, 8, 1), 3, num_filters=2, weight_decay=0.0).losses


def _spatial_part(model):
    """The SCN's spatial configuration part as a function of the local heatmaps."""
    pool, conv, upsample = (
        model.get_layer(name)
        for name in ("local_heatmaps_downsampled", "spatial_heatmaps_downsampled", "spatial_heatmaps")
    )
    return lambda local: _numpy(upsample(conv(pool(local))))


@pytest.mark.parametrize("dim", [2, 3])
def test_scn_spatial_heatmap_i_ignores_local_i_and_uses_all_others(dim):
    num_landmarks = 4
    input_shape = (32,) * dim + (1,)
    model = build_network("scn", input_shape, num_landmarks, num_filters=2, spatial_kernel_size=3)
    conv = model.get_layer("spatial_heatmaps_downsampled")
    rng = np.random.default_rng(0)
    # a full random kernel, diagonal included: the layer itself must ignore kernel[..., i, i]
    conv.kernel.assign(rng.normal(size=conv.kernel.shape).astype("float32"))
    spatial = _spatial_part(model)
    local = rng.normal(size=(1, *input_shape[:-1], num_landmarks)).astype("float32")
    reference = spatial(local)
    for j in range(num_landmarks):
        perturbed = local.copy()
        perturbed[..., j] += rng.normal(size=input_shape[:-1])
        change = np.abs(spatial(perturbed) - reference).reshape(-1, num_landmarks).max(axis=0)
        assert change[j] == 0.0
        assert np.all(np.delete(change, j) > 1e-3)


def _separate_convolutions(inputs, kernel, bias):
    """Reference: output channel i = sum over j != i of channel j cross-correlated with kernel[..., j, i]."""
    channels = inputs.shape[-1]
    outputs = np.zeros(inputs.shape, dtype="float64")
    for b in range(inputs.shape[0]):
        for i in range(channels):
            others = [j for j in range(channels) if j != i]
            outputs[b, ..., i] = bias[i] + sum(
                correlate(inputs[b, ..., j], kernel[..., j, i], mode="same") for j in others
            )
    return outputs


@pytest.mark.parametrize("kernel_size", [(3, 5), (3, 3, 5)])
def test_leave_one_out_conv_equals_separate_convolutions(kernel_size):
    rng = np.random.default_rng(2)
    channels = 3
    inputs = rng.normal(size=(2, *(6,) * len(kernel_size), channels)).astype("float32")
    layer = LeaveOneOutConv(kernel_size)
    layer.build(inputs.shape)
    kernel = rng.normal(size=layer.kernel.shape).astype("float32")
    bias = rng.normal(size=channels).astype("float32")
    layer.set_weights([kernel, bias])
    np.testing.assert_allclose(
        _numpy(layer(inputs)), _separate_convolutions(inputs, kernel, bias), rtol=1e-4, atol=1e-4
    )


def test_layer_arguments_are_checked():
    with pytest.raises(ValueError, match="kernel_size must be a positive int .* received 0"):
        LeaveOneOutConv(0)
    with pytest.raises(ValueError, match="at least 2 channels"):
        LeaveOneOutConv(3)(np.zeros((1, 4, 4, 1), dtype="float32"))
    with pytest.raises(ValueError, match=r"size must be an int or a tuple of 3 ints, received size=\(2, 2\)"):
        LinearUpSampling3D((2, 2))


def test_linear_upsampling_3d_known_answer_and_matches_bilinear_2d():
    ramp = np.zeros((1, 2, 1, 1, 1), dtype="float32")
    ramp[0, 1] = 1.0
    # output z samples sit at input z = -0.25, 0.25, 0.75, 1.25 (clamped to [0, 1])
    np.testing.assert_allclose(_numpy(LinearUpSampling3D(2)(ramp))[0, :, 0, 0, 0], [0, 0.25, 0.75, 1])

    image = np.random.default_rng(3).normal(size=(1, 3, 4, 2)).astype("float32")
    volume = np.repeat(image[:, None], 2, axis=1)  # constant along z
    upsampled = _numpy(LinearUpSampling3D(4)(volume))
    bilinear = _numpy(keras.layers.UpSampling2D(4, interpolation="bilinear")(image))
    assert upsampled.shape == (1, 8, 12, 16, 2)
    for z in range(8):
        np.testing.assert_allclose(upsampled[:, z], bilinear, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("input_shape", [(32, 32, 1), (16, 16, 16, 1)])
def test_serialisation_round_trip(input_shape, tmp_path):
    model = build_network("scn", input_shape, 3, num_filters=2, spatial_kernel_size=3)
    conv = model.get_layer("spatial_heatmaps_downsampled")
    conv.kernel.assign(np.random.default_rng(4).normal(size=conv.kernel.shape).astype("float32"))
    images = np.random.default_rng(5).normal(size=(2, *input_shape)).astype("float32")
    expected = _numpy(model(images))

    from_json = keras.models.model_from_json(model.to_json())
    from_json.set_weights(model.get_weights())
    np.testing.assert_allclose(_numpy(from_json(images)), expected, rtol=1e-6, atol=1e-12)

    path = tmp_path / "scn.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert loaded.name == "scn"
    np.testing.assert_array_equal(_numpy(loaded(images)), expected)
