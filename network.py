"""Heatmap regression networks for landmark localisation (Payer et al., MICCAI 2016 and MedIA 2019).

Six networks, each for 2D and 3D inputs (decided by the rank of ``input_shape``), channels-last:

- ``scn``: SpatialConfiguration-Net, local convolutions x leave-one-out spatial part (MICCAI 2016);
- ``unet``: the authors' U-Net, 4 levels of 128 filters, max pooling, nearest-neighbour upsampling;
- ``downsampling_net``: 3 levels of two 5x5 convolutions with 2x average pooling; heatmaps at 1/4 per axis;
- ``conv_only``: six 11x11 convolutions and a 1x1 heatmap layer;
- ``scn_unet``: SCN whose local part is a U-Net with average pooling and linear upsampling (MMWHS variant);
- ``scn_mia``: the SpatialConfiguration-Net of MedIA 2019 (leaky ReLU, U-Net-like local part with dropout
  and additive skips, convolutional spatial part with tanh, cubic upsampling).

Every model maps an image ``(B, [z,] y, x, C)`` to heatmaps ``(B, [z,] y, x, N)`` (Downsampling-Net: each
spatial axis divided by :func:`heatmap_factor`). Hidden convolutions use ReLU (``scn_mia``: leaky ReLU),
'same' zero padding and He initialisation; heatmap output layers start from a truncated normal of standard
deviation 1e-4, as in the papers (``scn_mia`` in 3D: 1e-3, as the authors' spine CT setup), so that
untrained networks predict (almost) zero heatmaps. Every convolution kernel carries an L2
penalty ``weight_decay / 2 * sum(w ** 2)`` (gradient ``weight_decay * w``, the classic weight-decay
convention); Keras adds it to the training loss through ``model.losses``.

Only ``keras`` and ``keras.ops`` are used, so the networks run with ``KERAS_BACKEND`` tensorflow, jax or
torch.

Example::

    model = build_network("scn", (256, 256, 1), num_landmarks=37)
    heatmaps = model(images)  # (B, 256, 256, 37)
"""

import inspect
import math
from collections.abc import Callable, Sequence

import keras
import numpy as np

__all__ = [
    "NETWORKS",
    "LeaveOneOutConv",
    "CubicUpSampling",
    "LinearUpSampling3D",
    "build_network",
    "conv_only_net",
    "count_flops",
    "downsampling_net",
    "heatmap_factor",
    "scn_mia",
    "scn_unet",
    "spatial_configuration_net",
    "unet",
]

HEATMAP_INIT_STDDEV = 1e-4  # standard deviation of the truncated normal that initialises heatmap layers
WEIGHT_DECAY = 5e-5  # L2 weight decay of the papers (hand X-ray setup)
LEAKY_RELU_SLOPE = 0.1  # negative slope of the leaky ReLUs of the MIA 2019 SCN


def _kernel_size_tuple(kernel_size: int | Sequence[int], name: str) -> tuple[int, ...]:
    """Returns ``kernel_size`` as a tuple of positive ints, or raises ValueError naming ``name``."""
    sizes = (kernel_size,) if isinstance(kernel_size, int) else tuple(kernel_size)
    if not sizes or not all(isinstance(k, int) and k >= 1 for k in sizes):
        raise ValueError(
            f"{name} must be a positive int or a tuple of positive ints, received {kernel_size!r}"
        )
    return sizes


@keras.saving.register_keras_serializable(package="landmarks")
class LeaveOneOutConv(keras.layers.Layer):
    """Convolution from N to N channels in which output channel i ignores input channel i.

    This is the spatial-configuration convolution of the SpatialConfiguration-Net: the spatial heatmap of
    landmark i is a (large-kernel) convolution over the local heatmaps of all *other* landmarks. Instead of
    N separate convolutions over N - 1 channels each, it is one dense convolution whose kernel is multiplied
    by a mask that is zero on the diagonal ``kernel[..., i, i]``. The masked entries are also set to zero when
    the weights are created, so a kernel regulariser sees exactly the effective kernel and the masked entries
    receive zero gradient. Stride 1, 'same' zero padding, linear output (no activation), as in MICCAI 2016.

    Args:
        kernel_size: int or tuple of ints (one per spatial axis, NumPy order), in pixels of the input grid.
        use_bias: whether to add a bias per output channel.
        kernel_initializer: Keras initializer (or its name / config) for the kernel.
        bias_initializer: Keras initializer for the bias.
        kernel_regularizer: optional Keras regularizer applied to the (masked) kernel.
        **kwargs: base ``keras.layers.Layer`` arguments (``name``, ``dtype``, ...).

    Input shape:
        ``(batch, *spatial, N)`` with 1 to 3 spatial axes and N >= 2 channels, channels-last.

    Output shape:
        ``(batch, *spatial, N)``, same as the input.
    """

    def __init__(
        self,
        kernel_size: int | Sequence[int],
        use_bias: bool = True,
        kernel_initializer: str | dict | keras.initializers.Initializer = "he_normal",
        bias_initializer: str | dict | keras.initializers.Initializer = "zeros",
        kernel_regularizer: str | dict | keras.regularizers.Regularizer | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.kernel_size = _kernel_size_tuple(kernel_size, "kernel_size")
        self.use_bias = bool(use_bias)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)

    def build(self, input_shape):
        num_spatial = len(input_shape) - 2
        channels = input_shape[-1]
        if num_spatial not in (1, 2, 3):
            raise ValueError(
                f"LeaveOneOutConv expects 1 to 3 spatial axes, received input_shape={input_shape}"
            )
        if channels is None or channels < 2:
            raise ValueError(f"LeaveOneOutConv needs at least 2 channels, received input_shape={input_shape}")
        if len(self.kernel_size) not in (1, num_spatial):
            raise ValueError(
                f"kernel_size={self.kernel_size} does not match the {num_spatial} spatial axes of "
                f"input_shape={input_shape}"
            )
        spatial_kernel = self.kernel_size * num_spatial if len(self.kernel_size) == 1 else self.kernel_size
        self._mask = 1.0 - np.eye(channels, dtype="float32")  # (in, out): zero where input i feeds output i
        self.kernel = self.add_weight(
            name="kernel",
            shape=(*spatial_kernel, channels, channels),
            initializer=self.kernel_initializer,
            regularizer=self.kernel_regularizer,
        )
        self.kernel.assign(self.kernel * self._mask)
        self.bias = (
            self.add_weight(name="bias", shape=(channels,), initializer=self.bias_initializer)
            if self.use_bias
            else None
        )

    def call(self, inputs):
        mask = keras.ops.convert_to_tensor(self._mask, dtype=self.compute_dtype)
        kernel = keras.ops.multiply(keras.ops.cast(self.kernel, self.compute_dtype), mask)
        outputs = keras.ops.conv(inputs, kernel, strides=1, padding="same", data_format="channels_last")
        if self.use_bias:
            outputs = keras.ops.add(outputs, self.bias)
        return outputs

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "kernel_size": self.kernel_size,
                "use_bias": self.use_bias,
                "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
                "bias_initializer": keras.initializers.serialize(self.bias_initializer),
                "kernel_regularizer": keras.regularizers.serialize(self.kernel_regularizer),
            }
        )
        return config


def _linear_interpolation_matrix(length: int, factor: int) -> np.ndarray:
    """Matrix ``(length * factor, length)`` of 1D linear upsampling weights.

    Half-pixel convention (as ``keras.ops.image.resize`` and ``UpSampling2D(interpolation="bilinear")``):
    output sample o sits at input coordinate ``(o + 0.5) / factor - 0.5``, clamped to ``[0, length - 1]``.
    """
    source = np.clip((np.arange(length * factor) + 0.5) / factor - 0.5, 0.0, length - 1)
    lower = np.floor(source).astype(int)
    upper = np.minimum(lower + 1, length - 1)
    weight = source - lower
    matrix = np.zeros((length * factor, length), dtype="float32")
    rows = np.arange(length * factor)
    np.add.at(matrix, (rows, lower), 1.0 - weight)
    np.add.at(matrix, (rows, upper), weight)
    return matrix


@keras.saving.register_keras_serializable(package="landmarks")
class LinearUpSampling3D(keras.layers.Layer):
    """Trilinear upsampling of a volume by fixed integer factors (``UpSampling3D`` is nearest-neighbour only).

    Separable: linear interpolation along z, then y, then x, each a multiplication with a fixed
    ``(size * n, n)`` weight matrix. Same sampling convention as ``UpSampling2D(interpolation="bilinear")``
    (half-pixel centres, edge values repeated), so a volume constant along z upsamples like each 2D slice.

    Args:
        size: int or tuple of 3 ints, upsampling factor per spatial axis in NumPy order (z, y, x).
        **kwargs: base ``keras.layers.Layer`` arguments.

    Input shape:
        ``(batch, z, y, x, channels)`` with known spatial sizes.

    Output shape:
        ``(batch, z * size_z, y * size_y, x * size_x, channels)``.
    """

    def __init__(self, size: int | Sequence[int] = 2, **kwargs):
        super().__init__(**kwargs)
        sizes = _kernel_size_tuple(size, "size")
        if len(sizes) not in (1, 3):
            raise ValueError(f"size must be an int or a tuple of 3 ints, received size={size!r}")
        self.size = sizes * 3 if len(sizes) == 1 else sizes

    def build(self, input_shape):
        if len(input_shape) != 5 or any(n is None for n in input_shape[1:4]):
            raise ValueError(
                f"LinearUpSampling3D expects (batch, z, y, x, channels) with known z, y, x, "
                f"received input_shape={input_shape}"
            )
        self._matrices = [
            _linear_interpolation_matrix(n, f) for n, f in zip(input_shape[1:4], self.size, strict=True)
        ]

    def call(self, inputs):
        mz, my, mx = (keras.ops.convert_to_tensor(m, dtype=inputs.dtype) for m in self._matrices)
        outputs = keras.ops.einsum("bzyxc,Zz->bZyxc", inputs, mz)
        outputs = keras.ops.einsum("bzyxc,Yy->bzYxc", outputs, my)
        return keras.ops.einsum("bzyxc,Xx->bzyXc", outputs, mx)

    def compute_output_shape(self, input_shape):
        spatial = tuple(
            None if n is None else n * f for n, f in zip(input_shape[1:4], self.size, strict=True)
        )
        return (input_shape[0], *spatial, input_shape[4])

    def get_config(self):
        config = super().get_config()
        config.update({"size": self.size})
        return config


def _cubic_weight(distance: np.ndarray) -> np.ndarray:
    """Keys' cubic convolution kernel with a = -0.5 (the Catmull-Rom spline) at ``distance`` input pixels."""
    d = np.abs(distance)
    near = (1.5 * d - 2.5) * d * d + 1.0  # |d| <= 1
    far = ((-0.5 * d + 2.5) * d - 4.0) * d + 2.0  # 1 < |d| < 2
    return np.where(d <= 1.0, near, np.where(d < 2.0, far, 0.0))


def _cubic_interpolation_matrix(length: int, factor: int) -> np.ndarray:
    """Matrix ``(length * factor, length)`` of 1D cubic upsampling weights, zeros beyond the border.

    Output sample o sits at input coordinate ``t = (o + 0.5) / factor - 0.5`` (half-pixel centres) and takes
    ``sum_i w(t - i) * input[i]`` over the input samples i = 0 .. length - 1 with Keys' cubic weights w;
    the samples beyond the border count as zeros. This is what the authors' transposed convolution with a
    sampled cubic kernel and 'valid_cropped' padding computes.
    """
    source = (np.arange(length * factor) + 0.5) / factor - 0.5
    return _cubic_weight(source[:, None] - np.arange(length)[None, :]).astype("float32")


@keras.saving.register_keras_serializable(package="landmarks")
class CubicUpSampling(keras.layers.Layer):
    """Cubic upsampling of an image or a volume by fixed integer factors, as in the MIA 2019 SCN.

    Separable: along each spatial axis a multiplication with a fixed ``(n * size, n)`` weight matrix of Keys'
    cubic convolution kernel (a = -0.5, the Catmull-Rom spline; it reproduces quadratics exactly). Output
    sample o of an axis sits at input coordinate ``(o + 0.5) / size - 0.5`` (half-pixel centres, as
    ``UpSampling2D(interpolation="bilinear")``). Border: samples beyond the input count as zeros, as in the
    authors' 'valid_cropped' transposed convolution: within ``1.5 * size`` output pixels of the border the
    missing taps change the values (a constant 1 becomes 51/64, 137/128, 131/128 at the first three output
    pixels for size 2); elsewhere it is exact cubic interpolation.

    Args:
        size: int or tuple of ints (one per spatial axis, NumPy order), the upsampling factors.
        **kwargs: base ``keras.layers.Layer`` arguments.

    Input shape:
        ``(batch, [z,] y, x, channels)`` with 2 or 3 known spatial sizes.

    Output shape:
        ``(batch, [z * size_z,] y * size_y, x * size_x, channels)``.
    """

    def __init__(self, size: int | Sequence[int] = 2, **kwargs):
        super().__init__(**kwargs)
        sizes = _kernel_size_tuple(size, "size")
        if len(sizes) not in (1, 2, 3):
            raise ValueError(f"size must be an int or a tuple of 2 or 3 ints, received size={size!r}")
        self.size = sizes

    def _sizes(self, num_spatial: int) -> tuple[int, ...]:
        return self.size * num_spatial if len(self.size) == 1 else self.size

    def build(self, input_shape):
        num_spatial = len(input_shape) - 2
        if num_spatial not in (2, 3) or any(n is None for n in input_shape[1:-1]):
            raise ValueError(
                f"CubicUpSampling expects (batch, [z,] y, x, channels) with 2 or 3 known spatial sizes, "
                f"received input_shape={input_shape}"
            )
        if len(self.size) not in (1, num_spatial):
            raise ValueError(
                f"size={self.size} does not match the {num_spatial} spatial axes of input_shape={input_shape}"
            )
        self._matrices = [
            _cubic_interpolation_matrix(n, f)
            for n, f in zip(input_shape[1:-1], self._sizes(num_spatial), strict=True)
        ]

    def call(self, inputs):
        axes = "zyx"[3 - len(self._matrices) :]
        outputs = inputs
        for k, matrix in enumerate(self._matrices):
            source = f"b{axes}c"
            target = source.replace(axes[k], axes[k].upper())
            weights = keras.ops.convert_to_tensor(matrix, dtype=inputs.dtype)
            outputs = keras.ops.einsum(f"{source},{axes[k].upper()}{axes[k]}->{target}", outputs, weights)
        return outputs

    def compute_output_shape(self, input_shape):
        sizes = self._sizes(len(input_shape) - 2)
        spatial = tuple(None if n is None else n * f for n, f in zip(input_shape[1:-1], sizes, strict=True))
        return (input_shape[0], *spatial, input_shape[-1])

    def get_config(self):
        config = super().get_config()
        config.update({"size": self.size})
        return config


# --- building blocks (dim = number of spatial axes, 2 or 3) ----------------------------------------------


def _conv(
    dim, filters, kernel_size, name, weight_decay, activation="relu", heatmap=False, heatmap_stddev=None
):
    """Convolution with 'same' padding; He initialisation, or a truncated normal for heatmap layers.

    ``heatmap_stddev`` is the standard deviation of that truncated normal (None: ``HEATMAP_INIT_STDDEV``).
    """
    conv_class = {2: keras.layers.Conv2D, 3: keras.layers.Conv3D}[dim]
    return conv_class(
        filters,
        kernel_size,
        padding="same",
        activation=activation,
        kernel_initializer=_heatmap_initializer(heatmap_stddev) if heatmap else keras.initializers.HeNormal(),
        kernel_regularizer=_regularizer(weight_decay),
        name=name,
    )


def _heatmap_initializer(stddev=None):
    """Truncated normal with standard deviation ``stddev`` (None: 1e-4) for heatmap output layers."""
    return keras.initializers.TruncatedNormal(stddev=HEATMAP_INIT_STDDEV if stddev is None else stddev)


def _regularizer(weight_decay):
    """L2 penalty ``weight_decay / 2 * sum(w ** 2)``, or None for ``weight_decay == 0``."""
    return keras.regularizers.L2(weight_decay / 2) if weight_decay > 0 else None


def _average_pooling(dim, factor, name):
    pool_class = {2: keras.layers.AveragePooling2D, 3: keras.layers.AveragePooling3D}[dim]
    return pool_class(pool_size=factor, name=name)


def _max_pooling(dim, factor, name):
    pool_class = {2: keras.layers.MaxPooling2D, 3: keras.layers.MaxPooling3D}[dim]
    return pool_class(pool_size=factor, name=name)


def _linear_upsampling(dim, factor, name):
    if dim == 2:
        return keras.layers.UpSampling2D(size=factor, interpolation="bilinear", name=name)
    return LinearUpSampling3D(size=factor, name=name)


def _nearest_upsampling(dim, factor, name):
    upsampling_class = {2: keras.layers.UpSampling2D, 3: keras.layers.UpSampling3D}[dim]
    return upsampling_class(size=factor, name=name)


def _unet_features(x, dim, num_filters, num_levels, kernel_size, weight_decay, pooling, upsampling):
    """U-Net body as the authors' ``UnetClassic``: two convolutions per block, concatenation skips.

    Contracting path: at every level two ``kernel_size`` convolutions (ReLU), then 2x ``pooling`` ("max" or
    "average") down to the next level. Expanding path, deepest level first: two convolutions at EVERY level,
    the deepest included (whose input is the contracting output of that level); at the other levels the
    output of the level below is upsampled 2x (``upsampling``: "nearest" or "linear") and concatenated after
    the contracting output of the level (skip first). So ``4 * num_levels`` convolutions in all.

    Returns:
        The full-resolution feature map ``(B, [z,] y, x, num_filters)``; every level has ``num_filters``.
    """
    pool = {"max": _max_pooling, "average": _average_pooling}[pooling]
    upsample = {"nearest": _nearest_upsampling, "linear": _linear_upsampling}[upsampling]
    skips = []
    for level in range(num_levels):
        if level > 0:
            x = pool(dim, 2, name=f"down{level}_pool")(x)
        x = _conv(dim, num_filters, kernel_size, f"down{level}_conv0", weight_decay)(x)
        x = _conv(dim, num_filters, kernel_size, f"down{level}_conv1", weight_decay)(x)
        skips.append(x)
    for level in reversed(range(num_levels)):
        if level < num_levels - 1:
            x = upsample(dim, 2, name=f"up{level}_upsample")(x)
            x = keras.layers.Concatenate(name=f"up{level}_concat")([skips[level], x])
        x = _conv(dim, num_filters, kernel_size, f"up{level}_conv0", weight_decay)(x)
        x = _conv(dim, num_filters, kernel_size, f"up{level}_conv1", weight_decay)(x)
    return x


def _check_ints(minimum, **values):
    """Raises ValueError naming the first of ``values`` that is not an int >= ``minimum``."""
    for name, value in values.items():
        if not isinstance(value, int) or value < minimum:
            raise ValueError(f"{name} must be an int >= {minimum}, received {value!r}")


def _check_input(input_shape, num_landmarks, multiple, weight_decay, min_landmarks=1):
    """Validates the common builder arguments and returns the number of spatial axes (2 or 3).

    Args:
        input_shape: ``([z,] y, x, channels)``.
        num_landmarks: number of heatmap channels N.
        multiple: every spatial size must be divisible by this (the network's total downsampling).
        weight_decay: must be >= 0.
        min_landmarks: smallest valid N.
    """
    shape = tuple(input_shape)
    if len(shape) not in (3, 4) or not all(isinstance(n, int) and n >= 1 for n in shape):
        raise ValueError(
            f"input_shape must be ([z,] y, x, channels) of positive ints (2D or 3D), received {input_shape!r}"
        )
    if any(n % multiple for n in shape[:-1]):
        raise ValueError(
            f"spatial sizes of input_shape={shape} must be divisible by {multiple} for this network"
        )
    if not isinstance(num_landmarks, int) or num_landmarks < min_landmarks:
        raise ValueError(f"num_landmarks must be an int >= {min_landmarks}, received {num_landmarks!r}")
    if not weight_decay >= 0:
        raise ValueError(f"weight_decay must be >= 0, received {weight_decay!r}")
    return len(shape) - 1


# --- the five networks -----------------------------------------------------------------------------------


def spatial_configuration_net(
    input_shape: Sequence[int],
    num_landmarks: int,
    *,
    num_filters: int = 128,
    num_convs: int = 3,
    kernel_size: int | None = None,
    spatial_kernel_size: int = 15,
    downsampling_factor: int = 8,
    weight_decay: float = WEIGHT_DECAY,
) -> keras.Model:
    """SpatialConfiguration-Net (Payer et al., MICCAI 2016), 2D or 3D.

    Local appearance: ``num_convs`` convolutions (``kernel_size``, ``num_filters``, ReLU) and a
    ``kernel_size`` convolution to N local heatmaps with linear output (as in the paper; 5x5 in 2D, 3x3x3
    in 3D by default). Spatial
    configuration: the local heatmaps are average-pooled by ``downsampling_factor``; spatial heatmap i is a
    ``spatial_kernel_size`` convolution over the other N - 1 pooled heatmaps (one :class:`LeaveOneOutConv`,
    linear output); it is upsampled (bi/trilinear) by the same factor. Output = local x spatial.

    Layer names for inspection: ``local_heatmaps``, ``local_heatmaps_downsampled``,
    ``spatial_heatmaps_downsampled``, ``spatial_heatmaps``, ``heatmaps``.

    Args:
        input_shape: ``([z,] y, x, channels)``; spatial sizes divisible by ``downsampling_factor``.
        num_landmarks: N >= 2.
        num_filters: width of the local convolutions.
        num_convs: number of hidden local convolutions before the heatmap layer (paper: 3, i.e. four 5x5
            convolutions in all).
        kernel_size: kernel size of the local convolutions, pixels (None: 5 in 2D, as in the paper; 3 in 3D,
            see the note in the code: 5x5x5 kernels keep the 3D SCN from learning with Adam).
        spatial_kernel_size: kernel size of the spatial convolution, pixels of the downsampled grid.
        downsampling_factor: pooling / upsampling factor of the spatial part.
        weight_decay: L2 weight decay on all kernels (penalty ``weight_decay / 2 * sum(w ** 2)``).

    Returns:
        ``keras.Model`` named "scn": ``(B, [z,] y, x, channels)`` -> ``(B, [z,] y, x, N)``.
    """
    # Why 3x3x3 local kernels in 3D (issue 15). Adam moves every weight by about its learning rate in its
    # first steps, whatever the gradient's size, so a layer's output moves by about lr x (inputs per output):
    # 5x5x5 kernels on 16 filters have 2000, five times the 400 of 5x5 in 2D. From the initialisation, where
    # local and spatial heatmaps are both near zero, one step at main.py's 3e-4 then overshoots in 3D (loss
    # 751.7 -> 803.7 at 64x64x96, 10 landmarks; 1109 after the first step of a main.py run) while it falls
    # in 2D (522.3 -> 522.2 at 128x128, 37 landmarks). Adam's correction pushes the last hidden layer's ReLUs
    # off (92 % inactive after 8 iterations) until the local heatmaps are constant and the product stays at
    # the all-zero loss; a 2D SCN trained at 5x the learning rate falls into the same trap. 3x3x3 kernels
    # (432 inputs per output) give the 3D SCN the step sizes of the 2D one: the first step barely moves the
    # loss (752.9), and main.py's 3D run leaves the plateau at once (751.7 -> 646 in 21 iterations; 4.7 mm
    # after 30 iterations against 8.7 mm for the mean shape, where 5x5x5 gave 51 mm after 8). The authors'
    # own 3D SCN (MIA 2019) also uses 3x3x3 local convolutions.
    if kernel_size is None:
        kernel_size = 3 if len(tuple(input_shape)) == 4 else 5
    _check_ints(0, num_convs=num_convs)
    _check_ints(
        1,
        num_filters=num_filters,
        kernel_size=kernel_size,
        spatial_kernel_size=spatial_kernel_size,
        downsampling_factor=downsampling_factor,
    )
    dim = _check_input(input_shape, num_landmarks, downsampling_factor, weight_decay, min_landmarks=2)
    inputs = keras.Input(tuple(input_shape), name="image")
    x = inputs
    for i in range(num_convs):
        x = _conv(dim, num_filters, kernel_size, f"local_conv{i}", weight_decay)(x)
    local = _conv(
        dim, num_landmarks, kernel_size, "local_heatmaps", weight_decay, activation=None, heatmap=True
    )(x)
    pooled = _average_pooling(dim, downsampling_factor, name="local_heatmaps_downsampled")(local)
    spatial = LeaveOneOutConv(
        spatial_kernel_size,
        kernel_initializer=_heatmap_initializer(),
        kernel_regularizer=_regularizer(weight_decay),
        name="spatial_heatmaps_downsampled",
    )(pooled)
    spatial = _linear_upsampling(dim, downsampling_factor, name="spatial_heatmaps")(spatial)
    heatmaps = keras.layers.Multiply(name="heatmaps")([local, spatial])
    return keras.Model(inputs, heatmaps, name="scn")


def unet(
    input_shape: Sequence[int],
    num_landmarks: int,
    *,
    num_filters: int = 128,
    num_levels: int = 4,
    kernel_size: int = 3,
    weight_decay: float = WEIGHT_DECAY,
) -> keras.Model:
    """U-Net for heatmap regression (MICCAI 2016), 2D or 3D, arranged as the authors' ``UnetClassic2D``.

    ``num_levels`` levels with ``num_filters`` at every level (not doubled); two ``kernel_size``
    convolutions (ReLU) on both the contracting and the expanding side of every level, the deepest level
    included (``4 * num_levels`` convolutions: 16 with the defaults); 2x max pooling down, 2x
    nearest-neighbour upsampling up, concatenation skips; a 1x1 heatmap layer with linear output. With 128
    filters, 4 levels, one input channel and 37 landmarks in 2D it has 2,662,181 parameters, as the
    authors' network.

    Args:
        input_shape: ``([z,] y, x, channels)``; spatial sizes divisible by ``2 ** (num_levels - 1)``.
        num_landmarks: N.
        num_filters: filters per convolution.
        num_levels: number of resolution levels.
        kernel_size: kernel size of the convolutions, pixels.
        weight_decay: L2 weight decay on all kernels.

    Returns:
        ``keras.Model`` named "unet": ``(B, [z,] y, x, channels)`` -> ``(B, [z,] y, x, N)``.
    """
    _check_ints(1, num_filters=num_filters, num_levels=num_levels, kernel_size=kernel_size)
    dim = _check_input(input_shape, num_landmarks, 2 ** (num_levels - 1), weight_decay)
    inputs = keras.Input(tuple(input_shape), name="image")
    x = _unet_features(inputs, dim, num_filters, num_levels, kernel_size, weight_decay, "max", "nearest")
    heatmaps = _conv(dim, num_landmarks, 1, "heatmaps", weight_decay, activation=None, heatmap=True)(x)
    return keras.Model(inputs, heatmaps, name="unet")


def downsampling_net(
    input_shape: Sequence[int],
    num_landmarks: int,
    *,
    num_filters: int = 128,
    num_levels: int = 3,
    kernel_size: int = 5,
    weight_decay: float = WEIGHT_DECAY,
) -> keras.Model:
    """Downsampling-Net (MICCAI 2016), 2D or 3D: heatmaps at ``1 / 2 ** (num_levels - 1)`` resolution.

    ``num_levels`` levels of two ``kernel_size`` convolutions (``num_filters``, ReLU) with 2x average pooling
    between levels, then a 1x1 heatmap layer with linear output.

    Args:
        input_shape: ``([z,] y, x, channels)``; spatial sizes divisible by ``2 ** (num_levels - 1)``.
        num_landmarks: N.
        num_filters: filters per convolution.
        num_levels: number of resolution levels (paper: 3, so heatmaps at 1/4).
        kernel_size: kernel size of the convolutions, pixels.
        weight_decay: L2 weight decay on all kernels.

    Returns:
        ``keras.Model`` named "downsampling_net": ``(B, [z,] y, x, channels)`` ->
        ``(B, [z / f,] y / f, x / f, N)`` with ``f = 2 ** (num_levels - 1)``.
    """
    _check_ints(1, num_filters=num_filters, num_levels=num_levels, kernel_size=kernel_size)
    dim = _check_input(input_shape, num_landmarks, 2 ** (num_levels - 1), weight_decay)
    inputs = keras.Input(tuple(input_shape), name="image")
    x = inputs
    for level in range(num_levels):
        if level > 0:
            x = _average_pooling(dim, 2, name=f"level{level}_pool")(x)
        x = _conv(dim, num_filters, kernel_size, f"level{level}_conv0", weight_decay)(x)
        x = _conv(dim, num_filters, kernel_size, f"level{level}_conv1", weight_decay)(x)
    heatmaps = _conv(dim, num_landmarks, 1, "heatmaps", weight_decay, activation=None, heatmap=True)(x)
    return keras.Model(inputs, heatmaps, name="downsampling_net")


def conv_only_net(
    input_shape: Sequence[int],
    num_landmarks: int,
    *,
    num_filters: int = 128,
    num_convs: int = 6,
    kernel_size: int = 11,
    weight_decay: float = WEIGHT_DECAY,
) -> keras.Model:
    """ConvOnly-Net (MICCAI 2016), 2D or 3D: ``num_convs`` convolutions and a 1x1 heatmap layer.

    Args:
        input_shape: ``([z,] y, x, channels)`` (paper: 128 x 128 for hands).
        num_landmarks: N.
        num_filters: filters per convolution.
        num_convs: number of hidden convolutions (ReLU).
        kernel_size: kernel size of the convolutions, pixels.
        weight_decay: L2 weight decay on all kernels.

    Returns:
        ``keras.Model`` named "conv_only": ``(B, [z,] y, x, channels)`` -> ``(B, [z,] y, x, N)``.
    """
    _check_ints(0, num_convs=num_convs)
    _check_ints(1, num_filters=num_filters, kernel_size=kernel_size)
    dim = _check_input(input_shape, num_landmarks, 1, weight_decay)
    inputs = keras.Input(tuple(input_shape), name="image")
    x = inputs
    for i in range(num_convs):
        x = _conv(dim, num_filters, kernel_size, f"conv{i}", weight_decay)(x)
    heatmaps = _conv(dim, num_landmarks, 1, "heatmaps", weight_decay, activation=None, heatmap=True)(x)
    return keras.Model(inputs, heatmaps, name="conv_only")


def scn_unet(
    input_shape: Sequence[int],
    num_landmarks: int,
    *,
    num_filters: int = 128,
    num_levels: int = 4,
    kernel_size: int = 3,
    num_spatial_convs: int = 3,
    spatial_kernel_size: int = 5,
    downsampling_factor: int = 8,
    weight_decay: float = WEIGHT_DECAY,
) -> keras.Model:
    """SpatialConfiguration-Net with a U-Net local part (MedIA 2019, MMWHS variant), 2D or 3D.

    Local appearance: a U-Net arranged as :func:`unet` (two convolutions on both sides of every level, the
    deepest included, concatenation skips) but with 2x average pooling and linear upsampling, as the
    authors' ``UnetClassicAvgLinear2D``, and a 1x1 convolution to N local heatmaps with tanh activation
    (tanh keeps the local heatmaps in [-1, 1], so the spatial part always sees bounded inputs). Spatial
    configuration: the local heatmaps are average-pooled by ``downsampling_factor``, passed through
    ``num_spatial_convs`` convolutions (``spatial_kernel_size``, ``num_filters``, ReLU) and a
    ``spatial_kernel_size`` convolution to N spatial heatmaps with linear output, and upsampled linearly by
    the same factor. Unlike :func:`spatial_configuration_net` the spatial part is a
    small CNN, not a leave-one-out convolution. Output = local x spatial. Padding is 'same' (zeros; the
    original used reflection padding, which Keras convolutions do not offer).

    Args:
        input_shape: ``([z,] y, x, channels)``; spatial sizes divisible by ``2 ** (num_levels - 1)`` and by
            ``downsampling_factor``.
        num_landmarks: N.
        num_filters: filters per convolution, local and spatial part.
        num_levels: number of U-Net levels.
        kernel_size: kernel size of the U-Net convolutions, pixels.
        num_spatial_convs: hidden convolutions of the spatial part (paper: 3, i.e. four in all).
        spatial_kernel_size: kernel size of the spatial convolutions, pixels of the downsampled grid.
        downsampling_factor: pooling / upsampling factor of the spatial part.
        weight_decay: L2 weight decay on all kernels.

    Returns:
        ``keras.Model`` named "scn_unet": ``(B, [z,] y, x, channels)`` -> ``(B, [z,] y, x, N)``.
    """
    _check_ints(0, num_spatial_convs=num_spatial_convs)
    _check_ints(
        1,
        num_filters=num_filters,
        num_levels=num_levels,
        kernel_size=kernel_size,
        spatial_kernel_size=spatial_kernel_size,
        downsampling_factor=downsampling_factor,
    )
    multiple = math.lcm(2 ** (num_levels - 1), downsampling_factor)
    dim = _check_input(input_shape, num_landmarks, multiple, weight_decay)
    inputs = keras.Input(tuple(input_shape), name="image")
    x = _unet_features(inputs, dim, num_filters, num_levels, kernel_size, weight_decay, "average", "linear")
    local = _conv(dim, num_landmarks, 1, "local_heatmaps", weight_decay, activation="tanh", heatmap=True)(x)
    x = _average_pooling(dim, downsampling_factor, name="local_heatmaps_downsampled")(local)
    for i in range(num_spatial_convs):
        x = _conv(dim, num_filters, spatial_kernel_size, f"spatial_conv{i}", weight_decay)(x)
    spatial = _conv(
        dim,
        num_landmarks,
        spatial_kernel_size,
        "spatial_heatmaps_downsampled",
        weight_decay,
        activation=None,
        heatmap=True,
    )(x)
    spatial = _linear_upsampling(dim, downsampling_factor, name="spatial_heatmaps")(spatial)
    heatmaps = keras.layers.Multiply(name="heatmaps")([local, spatial])
    return keras.Model(inputs, heatmaps, name="scn_unet")


def _leaky_conv(x, dim, filters, kernel_size, name, weight_decay):
    """He-initialised convolution ('same' padding) followed by a leaky ReLU of slope ``LEAKY_RELU_SLOPE``."""
    x = _conv(dim, filters, kernel_size, name, weight_decay, activation=None)(x)
    return keras.layers.LeakyReLU(negative_slope=LEAKY_RELU_SLOPE, name=f"{name}_leaky_relu")(x)


# Defaults of the MIA 2019 SCN per spatial dimension: the authors' cephalogram (2D) and spine CT (3D) setups.
# The heatmap layers start from a truncated normal of std 1e-4 in their cephalogram code, 1e-3 in the spine.
SCN_MIA_DEFAULTS = {
    2: dict(num_filters=128, downsampling_factor=16, spatial_kernel_size=11, heatmap_init_stddev=1e-4),
    3: dict(num_filters=64, downsampling_factor=8, spatial_kernel_size=7, heatmap_init_stddev=1e-3),
}


def scn_mia(
    input_shape: Sequence[int],
    num_landmarks: int,
    *,
    num_filters: int | None = None,
    num_levels: int = 4,
    downsampling_factor: int | None = None,
    spatial_kernel_size: int | None = None,
    dropout_rate: float = 0.5,
    heatmap_init_stddev: float | None = None,
    weight_decay: float = WEIGHT_DECAY,
) -> keras.Model:
    """SpatialConfiguration-Net of Payer et al., MedIA 2019 (the authors' ``network_scn_mia``), 2D or 3D.

    Every hidden convolution is He-initialised and followed by a leaky ReLU of slope 0.1; 'same' zero
    padding (the authors' spine setup pads by reflection, which Keras convolutions do not offer).

    - ``conv0``: a 3x3 convolution to ``num_filters``.
    - Local appearance (the authors' ``SCNetLocal``): a U-Net-like net of ``num_levels`` levels with
      ``num_filters`` at every level. Contracting block per level: 3x3 convolution, dropout, 3x3
      convolution, then 2x average pooling to the next level; parallel (skip) block per level, the deepest
      included: one 3x3 convolution of the contracting output; expanding path: from the deepest parallel
      output, 2x linear upsampling and ADDITION of the level's parallel output, no convolutions. Then a 3x3
      convolution to N local heatmaps, linear output. The linear upsampling repeats the edge values (the
      authors' 'same' transposed convolution lets the outermost pixel fade to 3/4).
    - Spatial configuration: the local heatmaps average-pooled by ``downsampling_factor``, three
      ``spatial_kernel_size`` convolutions to ``num_filters`` (leaky ReLU), a ``spatial_kernel_size``
      convolution to N with tanh, and :class:`CubicUpSampling` by ``downsampling_factor``.
    - Output = local x spatial.

    Heatmap layers (local and spatial) start from a truncated normal of std ``heatmap_init_stddev``.
    Parameters left at None take the authors' values for the input's dimension (``SCN_MIA_DEFAULTS``):
    2D (cephalograms, 512 x 512) 128 filters, factor 16, 11x11 spatial kernels, std 1e-4; 3D (spine CT,
    96 x 96 x 192) 64 filters, factor 8, 7x7x7 kernels, std 1e-3.

    Layer names for inspection: ``local_heatmaps``, ``local_heatmaps_downsampled``,
    ``spatial_heatmaps_downsampled``, ``spatial_heatmaps``, ``heatmaps``; dropout layers
    ``local_down{level}_dropout``.

    Args:
        input_shape: ``([z,] y, x, channels)``; spatial sizes divisible by ``2 ** (num_levels - 1)`` and by
            ``downsampling_factor``.
        num_landmarks: N.
        num_filters: filters of every hidden convolution (None: 128 in 2D, 64 in 3D).
        num_levels: levels of the local U-Net.
        downsampling_factor: pooling / upsampling factor of the spatial part (None: 16 in 2D, 8 in 3D).
        spatial_kernel_size: kernel size of the spatial convolutions, pixels of the downsampled grid
            (None: 11 in 2D, 7 in 3D).
        dropout_rate: fraction of the features dropped in the contracting blocks, training only.
        heatmap_init_stddev: std of the heatmap layers' initial kernels (None: 1e-4 in 2D, 1e-3 in 3D).
        weight_decay: L2 weight decay on all kernels (the authors' cephalogram setup: 1e-3 on their
            ``tf.nn.l2_loss``, which is ``sum(w ** 2) / 2``, i.e. ``weight_decay=1e-3`` here).

    Returns:
        ``keras.Model`` named "scn_mia": ``(B, [z,] y, x, channels)`` -> ``(B, [z,] y, x, N)``.
    """
    shape = tuple(input_shape)
    defaults = SCN_MIA_DEFAULTS.get(len(shape) - 1, SCN_MIA_DEFAULTS[2])  # a wrong rank fails below
    num_filters, downsampling_factor, spatial_kernel_size, heatmap_init_stddev = (
        defaults[name] if value is None else value
        for name, value in (
            ("num_filters", num_filters),
            ("downsampling_factor", downsampling_factor),
            ("spatial_kernel_size", spatial_kernel_size),
            ("heatmap_init_stddev", heatmap_init_stddev),
        )
    )
    _check_ints(
        1,
        num_filters=num_filters,
        num_levels=num_levels,
        downsampling_factor=downsampling_factor,
        spatial_kernel_size=spatial_kernel_size,
    )
    if not 0 <= dropout_rate < 1:
        raise ValueError(f"dropout_rate must be in [0, 1), received {dropout_rate!r}")
    if not heatmap_init_stddev > 0:
        raise ValueError(f"heatmap_init_stddev must be > 0, received {heatmap_init_stddev!r}")
    multiple = math.lcm(2 ** (num_levels - 1), downsampling_factor)
    dim = _check_input(shape, num_landmarks, multiple, weight_decay)
    inputs = keras.Input(shape, name="image")
    x = _leaky_conv(inputs, dim, num_filters, 3, "conv0", weight_decay)
    parallel = []
    for level in range(num_levels):
        if level > 0:
            x = _average_pooling(dim, 2, name=f"local_down{level}_pool")(x)
        x = _leaky_conv(x, dim, num_filters, 3, f"local_down{level}_conv0", weight_decay)
        x = keras.layers.Dropout(dropout_rate, name=f"local_down{level}_dropout")(x)
        x = _leaky_conv(x, dim, num_filters, 3, f"local_down{level}_conv1", weight_decay)
        parallel.append(_leaky_conv(x, dim, num_filters, 3, f"local_skip{level}_conv", weight_decay))
    x = parallel[-1]
    for level in reversed(range(num_levels - 1)):
        x = _linear_upsampling(dim, 2, name=f"local_up{level}_upsample")(x)
        x = keras.layers.Add(name=f"local_up{level}_add")([parallel[level], x])
    local = _conv(
        dim,
        num_landmarks,
        3,
        "local_heatmaps",
        weight_decay,
        activation=None,
        heatmap=True,
        heatmap_stddev=heatmap_init_stddev,
    )(x)
    x = _average_pooling(dim, downsampling_factor, name="local_heatmaps_downsampled")(local)
    for i in range(3):
        x = _leaky_conv(x, dim, num_filters, spatial_kernel_size, f"spatial_conv{i}", weight_decay)
    spatial = _conv(
        dim,
        num_landmarks,
        spatial_kernel_size,
        "spatial_heatmaps_downsampled",
        weight_decay,
        activation="tanh",
        heatmap=True,
        heatmap_stddev=heatmap_init_stddev,
    )(x)
    spatial = CubicUpSampling(downsampling_factor, name="spatial_heatmaps")(spatial)
    heatmaps = keras.layers.Multiply(name="heatmaps")([local, spatial])
    return keras.Model(inputs, heatmaps, name="scn_mia")


_BUILDERS: dict[str, Callable[..., keras.Model]] = {
    "scn": spatial_configuration_net,
    "unet": unet,
    "downsampling_net": downsampling_net,
    "conv_only": conv_only_net,
    "scn_unet": scn_unet,
    "scn_mia": scn_mia,
}
NETWORKS: tuple[str, ...] = tuple(_BUILDERS)


def _builder_options(name: str, options: dict) -> tuple[Callable[..., keras.Model], dict]:
    """Looks up the builder of ``name`` and checks ``options`` against its keyword-only parameters."""
    if name not in _BUILDERS:
        raise ValueError(f"unknown network {name!r}; valid names: {', '.join(NETWORKS)}")
    builder = _BUILDERS[name]
    parameters = inspect.signature(builder).parameters
    valid = {key: p.default for key, p in parameters.items() if p.kind is inspect.Parameter.KEYWORD_ONLY}
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ValueError(
            f"unknown option(s) {', '.join(unknown)} for network {name!r}; valid options: {', '.join(valid)}"
        )
    return builder, {**valid, **options}


def build_network(name: str, input_shape: Sequence[int], num_landmarks: int, **options) -> keras.Model:
    """Builds network ``name`` (one of :data:`NETWORKS`).

    Args:
        name: "scn", "unet", "downsampling_net", "conv_only", "scn_unet" or "scn_mia".
        input_shape: ``([z,] y, x, channels)``, 2D or 3D.
        num_landmarks: number of heatmaps N.
        **options: keyword options of the network's builder (e.g. ``num_filters``, ``weight_decay``).

    Returns:
        The ``keras.Model``, named ``name``.

    Raises:
        ValueError: for an unknown name or option (the message lists the valid ones) or an invalid value.
    """
    builder, resolved = _builder_options(name, options)
    return builder(input_shape, num_landmarks, **resolved)


def heatmap_factor(name: str, **options) -> int:
    """Downsampling factor of the heatmap grid relative to the input grid, per spatial axis.

    Args:
        name: network name (one of :data:`NETWORKS`).
        **options: the builder options (only ``num_levels`` of "downsampling_net" changes the factor).

    Returns:
        ``2 ** (num_levels - 1)`` (4 with the defaults) for "downsampling_net", 1 for all others.
    """
    _, resolved = _builder_options(name, options)
    return 2 ** (resolved["num_levels"] - 1) if name == "downsampling_net" else 1


def count_flops(model: keras.Model) -> int:
    """Floating-point operations of one forward pass per image, counted analytically from the convolutions.

    A convolution costs ``2 * prod(kernel.shape) * prod(output spatial shape)`` (one multiply and one add per
    weight and output pixel); :class:`LeaveOneOutConv` is counted as the dense convolution it computes. Bias,
    activations, pooling, upsampling and products are left out (well under 1 % for these networks).

    Args:
        model: a built model from this module (fixed input shape).

    Returns:
        FLOPs per image (batch size 1).
    """
    conv_types = (keras.layers.Conv2D, keras.layers.Conv3D, LeaveOneOutConv)
    return sum(
        2 * math.prod(layer.kernel.shape) * math.prod(layer.output.shape[1:-1])
        for layer in model.layers
        if isinstance(layer, conv_types)
    )
