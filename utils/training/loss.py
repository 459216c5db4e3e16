"""Heatmap regression loss (Payer et al., MICCAI 2016): L2 between target and predicted heatmaps.

Written with ``keras.ops`` only, so it works with every Keras backend. Weight decay is not part of this
function: the networks carry it as kernel regularisers, and the training loop adds ``sum(model.losses)``.
"""

import keras

__all__ = ["heatmap_l2_loss"]


def _compatible(shape_a, shape_b) -> bool:
    """Whether two static shapes (None = unknown size) can be equal."""
    return len(shape_a) == len(shape_b) and all(
        a is None or b is None or a == b for a, b in zip(shape_a, shape_b, strict=True)
    )


def heatmap_l2_loss(target, prediction, mask=None):
    """Sum of squared differences over all pixels and landmarks, divided by 2 and by the batch size.

    ``loss = sum_{b, n} mask[b, n] * sum_{pixels} (prediction[b, ..., n] - target[b, ..., n]) ** 2 / 2 / B``

    The heatmap channel of a missing landmark (``mask[b, n] == 0``) contributes nothing to the loss and
    receives zero gradient. The batch size B counts all samples, also those whose landmarks are all missing.

    Args:
        target: target heatmaps ``(B, [z,] y, x, N)``.
        prediction: predicted heatmaps, same shape as ``target``.
        mask: ``(B, N)``, 1 for an annotated landmark and 0 for a missing one; None = all present.

    Returns:
        Scalar tensor, the loss (float dtype of ``prediction``).

    Raises:
        ValueError: if the (statically known) shapes of ``target``, ``prediction`` and ``mask`` disagree.
    """
    prediction = keras.ops.convert_to_tensor(prediction)
    target = keras.ops.cast(target, prediction.dtype)
    if not _compatible(target.shape, prediction.shape):
        raise ValueError(
            f"target and prediction shapes differ: target {tuple(target.shape)}, prediction "
            f"{tuple(prediction.shape)}"
        )
    spatial_axes = tuple(range(1, len(prediction.shape) - 1))
    per_channel = keras.ops.sum(keras.ops.square(prediction - target), axis=spatial_axes)  # (B, N)
    if mask is not None:
        mask = keras.ops.cast(mask, prediction.dtype)
        expected = (prediction.shape[0], prediction.shape[-1])
        if not _compatible(mask.shape, expected):
            raise ValueError(f"mask must have shape (B, N) = {expected}, received {tuple(mask.shape)}")
        per_channel = per_channel * mask
    batch_size = keras.ops.cast(keras.ops.shape(prediction)[0], prediction.dtype)
    return keras.ops.sum(per_channel) / (2.0 * batch_size)
