"""Tests for network.py: output shapes, parameter counts, the SCN's leave-one-out spatial part, the MIA 2019
SCN (dropout, cubic upsampling), the custom layers and saving."""

import keras
import numpy as np
import pytest
from scipy.signal import correlate

import network
from network import CubicUpSampling, LeaveOneOutConv, LinearUpSampling3D, build_network, heatmap_factor

SMALL = {"num_filters": 2}  # shape tests: few filters keep every network cheap
INPUT_SHAPES = {2: (64, 64, 1), 3: (32, 32, 32, 1)}
SMALL_MIA = {"num_filters": 4, "downsampling_factor": 4, "spatial_kernel_size": 3}  # scn_mia on 32 x 32


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
        "scn_mia": 1,
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


def test_scn_local_kernels_are_5x5_in_2d_and_3x3x3_in_3d():
    # 3x3x3 in 3D: 5x5x5 kernels keep the 3D SCN on the all-zero plateau with Adam (issue 15)
    assert build_network("scn", (16, 16, 1), 3, num_filters=2).get_layer("local_heatmaps").kernel.shape == (
        5, 5, 2, 3,
    )  # fmt: skip
    volume = build_network("scn", (16, 16, 16, 1), 3, num_filters=2)
    assert volume.get_layer("local_conv0").kernel.shape == (3, 3, 3, 1, 2)
    assert volume.get_layer("local_heatmaps").kernel.shape == (3, 3, 3, 2, 3)
    chosen = build_network("scn", (16, 16, 16, 1), 3, num_filters=2, kernel_size=5)
    assert chosen.get_layer("local_heatmaps").kernel.shape == (5, 5, 5, 2, 3)


def test_parameter_and_flop_counts_known_answer():
    # SCN 2D, 2 filters, 3 landmarks: local convs 5*5*1*2+2, 2 x (5*5*2*2+2), heatmaps 5*5*2*3+3,
    # spatial 15*15*3*3+3
    model = build_network("scn", (64, 64, 1), 3, num_filters=2)
    assert model.count_params() == 52 + 2 * 102 + 153 + 2028
    # one 3x3 conv 1->2 and a 1x1 heatmap layer 2->3 on 8x8 pixels: 2 * (9*1*2 + 2*3) * 64
    model = build_network("conv_only", (8, 8, 1), 3, num_filters=2, num_convs=1, kernel_size=3)
    assert network.count_flops(model) == 2 * (18 + 6) * 64


def _conv_params(kernel_volume, inputs, outputs):
    """Kernel + bias sizes of one convolution."""
    return kernel_volume * inputs * outputs + outputs


def test_unet_has_the_authors_parameter_count_and_layout():
    # UnetClassic2D, 128 filters, 4 levels, 1 input channel, 37 landmarks: contracting side 2 convs per level
    # (the first from the image), expanding side 2 convs per level INCLUDING the deepest one, whose first conv
    # takes the concatenation (skip + upsampled, 256 channels) except at the deepest level; 1x1 heatmaps.
    contracting = _conv_params(9, 1, 128) + 7 * _conv_params(9, 128, 128)
    deepest_expanding = 2 * _conv_params(9, 128, 128)
    expanding = 3 * (_conv_params(9, 256, 128) + _conv_params(9, 128, 128))
    heatmaps = _conv_params(1, 128, 37)
    expected = contracting + deepest_expanding + expanding + heatmaps
    assert expected == 2_662_181  # the authors' count
    model = build_network("unet", (64, 64, 1), 37)
    assert model.count_params() == expected
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    assert len(convs) == 16 + 1
    pools = [layer for layer in model.layers if isinstance(layer, keras.layers.MaxPooling2D)]
    upsamplings = [layer for layer in model.layers if isinstance(layer, keras.layers.UpSampling2D)]
    assert len(pools) == len(upsamplings) == 3
    assert all(layer.interpolation == "nearest" for layer in upsamplings)
    volume = build_network("unet", (16, 16, 16, 1), 3, num_filters=2)
    assert sum(isinstance(layer, keras.layers.MaxPooling3D) for layer in volume.layers) == 3
    assert sum(isinstance(layer, keras.layers.UpSampling3D) for layer in volume.layers) == 3


def test_scn_mia_parameter_counts():
    # 2D, F filters, N landmarks, K x K spatial kernels: conv0 3x3 1->F; local U-Net of 4 levels with two
    # 3x3 convs per contracting block and one 3x3 conv per parallel block (12 convs F->F); local heatmaps
    # 3x3 F->N; spatial convs K x K N->F, F->F, F->F and F->N.
    def expected(filters, landmarks, spatial_kernel):
        k2 = spatial_kernel**2
        return (
            _conv_params(9, 1, filters)
            + 12 * _conv_params(9, filters, filters)
            + _conv_params(9, filters, landmarks)
            + _conv_params(k2, landmarks, filters)
            + 2 * _conv_params(k2, filters, filters)
            + _conv_params(k2, filters, landmarks)
        )

    small = build_network("scn_mia", (32, 32, 1), 3, **SMALL_MIA)
    assert small.count_params() == expected(4, 3, 3) == 40 + 12 * 148 + 111 + 112 + 2 * 148 + 111
    paper = build_network("scn_mia", (64, 64, 1), 37)  # the defaults of 2D: 128 filters, 11 x 11
    assert paper.count_params() == expected(128, 37, 11) == 6_926_410
    # 3D defaults: 64 filters, 7x7x7 spatial kernels, factor 8, heatmap layers at std 1e-3
    volume = build_network("scn_mia", (16, 16, 16, 1), 3)
    assert volume.get_layer("conv0").kernel.shape == (3, 3, 3, 1, 64)
    assert volume.get_layer("spatial_heatmaps_downsampled").kernel.shape == (7, 7, 7, 64, 3)
    assert volume.get_layer("local_heatmaps_downsampled").output.shape == (None, 2, 2, 2, 3)
    local_kernel = _numpy(volume.get_layer("local_heatmaps").kernel)
    assert 0.5e-3 < local_kernel.std() < 1e-3
    assert 0.5e-4 < _numpy(paper.get_layer("local_heatmaps").kernel).std() < 1e-4


def test_scn_mia_layout_and_activations():
    model = build_network("scn_mia", (32, 32, 1), 3, **SMALL_MIA)
    leaky = [layer for layer in model.layers if isinstance(layer, keras.layers.LeakyReLU)]
    assert len(leaky) == 1 + 12 + 3 and all(layer.negative_slope == pytest.approx(0.1) for layer in leaky)
    assert sum(isinstance(layer, keras.layers.Add) for layer in model.layers) == 3
    assert sum(isinstance(layer, keras.layers.Dropout) for layer in model.layers) == 4
    assert not any(isinstance(layer, keras.layers.Concatenate) for layer in model.layers)
    assert model.get_layer("local_heatmaps").activation is keras.activations.linear
    assert model.get_layer("spatial_heatmaps_downsampled").activation is keras.activations.tanh
    assert isinstance(model.get_layer("spatial_heatmaps"), CubicUpSampling)
    assert model.get_layer("local_heatmaps_downsampled").output.shape == (None, 8, 8, 3)


def test_scn_mia_dropout_only_in_training():
    model = build_network("scn_mia", (32, 32, 1), 3, **SMALL_MIA)
    for name in ("local_heatmaps", "spatial_heatmaps_downsampled"):  # visible outputs instead of ~1e-8
        layer = model.get_layer(name)
        layer.kernel.assign(np.random.default_rng(6).normal(size=layer.kernel.shape).astype("float32"))
    images = np.random.default_rng(7).normal(size=(2, 32, 32, 1)).astype("float32")
    inference = [_numpy(model(images, training=False)) for _ in range(2)]
    training = [_numpy(model(images, training=True)) for _ in range(2)]
    np.testing.assert_array_equal(inference[0], inference[1])
    assert np.abs(training[0] - training[1]).max() > 1e-3 * np.abs(inference[0]).max()
    assert np.abs(training[0] - inference[0]).max() > 1e-3 * np.abs(inference[0]).max()
    no_dropout = build_network("scn_mia", (32, 32, 1), 3, **SMALL_MIA, dropout_rate=0.0)
    np.testing.assert_array_equal(
        _numpy(no_dropout(images, training=True)), _numpy(no_dropout(images, training=False))
    )


def test_scn_mia_arguments_are_checked():
    with pytest.raises(ValueError, match=r"dropout_rate must be in \[0, 1\), received 1.0"):
        build_network("scn_mia", (32, 32, 1), 3, dropout_rate=1.0)
    with pytest.raises(ValueError, match="heatmap_init_stddev must be > 0, received 0"):
        build_network("scn_mia", (32, 32, 1), 3, heatmap_init_stddev=0)
    with pytest.raises(ValueError, match="spatial_kernel_size must be an int >= 1, received 0"):
        build_network("scn_mia", (32, 32, 1), 3, spatial_kernel_size=0)
    with pytest.raises(ValueError, match=r"input_shape=\(40, 40, 1\) must be divisible by 16"):
        build_network("scn_mia", (40, 40, 1), 3)  # 2D default factor 16


def _catmull_rom(p0, p1, p2, p3, u):
    """Catmull-Rom spline between p1 (u = 0) and p2 (u = 1), in its polynomial form."""
    return 0.5 * (
        2 * p1 + (p2 - p0) * u + (2 * p0 - 5 * p1 + 4 * p2 - p3) * u**2 + (3 * p1 - p0 - 3 * p2 + p3) * u**3
    )


def _cubic_upsample_axis(values, factor, axis):
    """Direct cubic interpolation along ``axis`` at half-pixel output centres; NaN where a tap is outside."""
    values = np.moveaxis(values, axis, -1)
    length = values.shape[-1]
    outputs = np.full((*values.shape[:-1], length * factor), np.nan)
    for o in range(length * factor):
        t = (o + 0.5) / factor - 0.5
        k = int(np.floor(t))
        if k - 1 >= 0 and k + 2 <= length - 1:
            outputs[..., o] = _catmull_rom(*(values[..., k + j] for j in (-1, 0, 1, 2)), t - k)
    return np.moveaxis(outputs, -1, axis)


@pytest.mark.parametrize(("shape", "factors"), [((1, 6, 7, 2), (4, 3)), ((1, 7, 8, 7, 1), (2, 3, 2))])
def test_cubic_upsampling_is_cubic_interpolation_inside(shape, factors):
    values = np.random.default_rng(8).normal(size=shape).astype("float32")
    expected = values.astype("float64")
    for axis, factor in enumerate(factors, start=1):
        expected = _cubic_upsample_axis(expected, factor, axis)
    upsampled = _numpy(CubicUpSampling(factors)(values))
    assert upsampled.shape == expected.shape
    inside = np.isfinite(expected)
    assert inside.sum() > 0.15 * inside.size
    np.testing.assert_allclose(upsampled[inside], expected[inside], rtol=1e-5, atol=1e-5)
    # a quadratic is reproduced exactly inside; the cubic kernel keeps a constant and sums to 1 there
    x = np.arange(8, dtype="float32")
    quadratic = np.broadcast_to(0.3 * x**2 - x + 2, (1, 4, 8))[..., None]
    centres = (np.arange(8 * 4) + 0.5) / 4 - 0.5
    row = _numpy(CubicUpSampling((1, 4))(quadratic))[0, 0, :, 0]  # factor 1: the identity along y
    np.testing.assert_allclose(row[6:-6], (0.3 * centres**2 - centres + 2)[6:-6], rtol=1e-5)


def _authors_transposed_cubic(values, factor):
    """The authors' 'valid_cropped' cubic upsampling of a 1D signal, re-enacted in NumPy: a transposed
    convolution (stride = factor) with the cubic kernel sampled at 4 * factor - factor % 2 points, then a crop
    of (kernel size - factor) / 2 on each side."""
    size = 4 * factor - factor % 2
    centre = (size - 1) / 2
    taps = np.arange(size)
    d = np.abs((taps - centre) / factor)
    far = np.where(d < 2, -0.5 * d**3 + 2.5 * d**2 - 4 * d + 2, 0)
    kernel = np.where(d <= 1, 1.5 * d**3 - 2.5 * d**2 + 1, far)
    full = np.zeros(len(values) * factor + size - factor)
    for i, value in enumerate(values):
        full[i * factor : i * factor + size] += value * kernel
    crop = (size - factor) // 2
    return full[crop : crop + len(values) * factor]


@pytest.mark.parametrize("factor", [2, 3, 8])
def test_cubic_upsampling_border_is_the_authors_zero_extension(factor):
    values = np.random.default_rng(9).normal(size=6)
    upsampled = _numpy(CubicUpSampling((1, factor))(values.reshape(1, 1, 6, 1).astype("float32")))[0, 0, :, 0]
    np.testing.assert_allclose(upsampled, _authors_transposed_cubic(values, factor), rtol=1e-5, atol=1e-6)
    ones = _numpy(CubicUpSampling((1, 2))(np.ones((1, 1, 5, 1), dtype="float32")))[0, 0, :, 0]
    # factor 2: the first output pixels miss the taps at -2 and -1 (weights -9/128 and -3/128)
    edge = [51 / 64, 137 / 128, 131 / 128]
    np.testing.assert_allclose(ones, [*edge, 1, 1, 1, 1, *edge[::-1]], rtol=1e-6)


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
    with pytest.raises(ValueError, match="size must be a positive int .* received 0"):
        CubicUpSampling(0)
    with pytest.raises(ValueError, match=r"size=\(2, 2\) does not match the 3 spatial axes"):
        CubicUpSampling((2, 2))(np.zeros((1, 2, 2, 2, 1), dtype="float32"))


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
@pytest.mark.parametrize(
    ("name", "options"), [("scn", {"num_filters": 2, "spatial_kernel_size": 3}), ("scn_mia", SMALL_MIA)]
)
def test_serialisation_round_trip(name, options, input_shape, tmp_path):
    model = build_network(name, input_shape, 3, **options)
    for layer_name in ("local_heatmaps", "spatial_heatmaps_downsampled"):  # outputs well above rounding
        layer = model.get_layer(layer_name)
        layer.kernel.assign(np.random.default_rng(4).normal(size=layer.kernel.shape).astype("float32"))
    images = np.random.default_rng(5).normal(size=(2, *input_shape)).astype("float32")
    expected = _numpy(model(images))

    from_json = keras.models.model_from_json(model.to_json())
    from_json.set_weights(model.get_weights())
    np.testing.assert_allclose(_numpy(from_json(images)), expected, rtol=1e-5, atol=1e-6)

    path = tmp_path / f"{name}.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert loaded.name == name
    np.testing.assert_array_equal(_numpy(loaded(images)), expected)
