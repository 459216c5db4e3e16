"""Learned sigmas follow the annotation uncertainty: landmarks annotated with more jitter get wider targets.

Synthetic images hold six bright dots in a fixed layout at a random position; landmark n is annotated at its
dot plus Gaussian noise of a known standard deviation that grows with n. The network cannot predict the
noise, so its heatmap of a noisy landmark is a blurred Gaussian, and the learned sigma of that landmark
grows with the noise (Payer et al., MIA 2019; Thaler et al., MELBA 2021).
"""

import keras
import numpy as np
import pytest
from scipy.stats import spearmanr

from network import build_network
from utils.landmarks.targets import GaussianTargets
from utils.training.model import HeatmapTrainer, make_optimizer

pytestmark = pytest.mark.slow

SIZE = 32
JITTER = np.array([0.0, 0.6, 1.2, 1.8, 2.4, 3.0])  # annotation noise per landmark, pixels (std)
LAYOUT = np.array([[-6, -6], [6, -6], [-6, 6], [6, 6], [0, -9], [0, 8]], float)  # dots around the centre


def noisy_batch(rng: np.random.Generator, batch_size: int = 8) -> dict[str, np.ndarray]:
    """Images of the six dots (sigma 1 px) with a little noise, and their jittered annotations."""
    true = rng.uniform(11, 21, size=(batch_size, 1, 2)) + LAYOUT[None]
    y, x = np.mgrid[:SIZE, :SIZE]
    offsets = (x - true[..., 0, None, None]) ** 2 + (y - true[..., 1, None, None]) ** 2
    images = np.exp(-offsets / 2.0).sum(axis=1) + rng.normal(0, 0.05, (batch_size, SIZE, SIZE))
    annotated = true + rng.normal(size=true.shape) * JITTER[None, :, None]
    return {"image": images[..., None].astype(np.float32), "points": annotated.astype(np.float32),
            "mask": np.ones((batch_size, len(JITTER)), np.float32)}


def test_learned_sigmas_rank_the_landmarks_by_their_annotation_jitter():
    keras.utils.set_random_seed(0)
    network = build_network("unet", (SIZE, SIZE, 1), len(JITTER), num_filters=16)
    trainer = HeatmapTrainer(network, GaussianTargets(len(JITTER), (SIZE, SIZE), 2.0, learn_sigma=True),
                             sigma_regularization=1.0)
    trainer.compile(optimizer=make_optimizer("adam", 3e-3))
    rng = np.random.default_rng(0)
    for _ in range(300):
        trainer.train_on_batch(noisy_batch(rng))
    sigmas = trainer.sigmas()
    assert spearmanr(sigmas, JITTER).correlation >= 0.8, sigmas
    assert sigmas[-1] - sigmas[0] > 0.5, sigmas  # a clear spread, not a tie broken by noise
