"""A short training run on whatever Keras backend is active (CI runs it again with KERAS_BACKEND=torch).

Nothing here assumes TensorFlow: the networks, the masked L2 loss, the optimizer, checkpoints and resume must
work the same on tensorflow, jax and torch.
"""

import keras
import numpy as np
import pytest

from network import build_network, heatmap_factor
from utils.landmarks.targets import GaussianTargets
from utils.training.checkpoint import latest_checkpoint, load_checkpoint
from utils.training.loop import Schedule, train
from utils.training.model import HeatmapTrainer, make_optimizer
from utils.training.output import RunFolder

SIZE = 16
LANDMARKS = 3


def fake_batches(factor):
    """batches(start) -> endless fake batches of 2 with points on a grid 1/factor of the input; batch k
    depends only on k; the last landmark of every sample is missing."""

    def batches(start):
        index = start
        while True:
            rng = np.random.default_rng(index)
            mask = np.ones((2, LANDMARKS), np.float32)
            mask[:, -1] = 0.0
            points = rng.uniform(0, SIZE // factor - 1, size=(2, LANDMARKS, 2)).astype(np.float32)
            image = rng.normal(size=(2, SIZE, SIZE, 1)).astype(np.float32)
            yield {"image": image, "points": points, "mask": mask}
            index += 1

    return batches


def model(name):
    keras.utils.set_random_seed(3)
    network = build_network(name, (SIZE, SIZE, 1), LANDMARKS, num_filters=4)
    # learned sigmas: the in-graph targets and their trainable weight must work on every backend
    targets = GaussianTargets(LANDMARKS, network.output.shape[1:-1], 1.5, learn_sigma=True)
    trainer = HeatmapTrainer(network, targets, sigma_regularization=1.0)
    trainer.compile(optimizer=make_optimizer("sgd", 1e-4))
    return trainer


@pytest.mark.parametrize("name", ["scn", "downsampling_net"])
def test_short_training_and_resume_on_this_backend(tmp_path, name):
    data = fake_batches(heatmap_factor(name))
    run = RunFolder.create(tmp_path, f"{name}_cv1", {"backend": keras.backend.backend()})
    whole = model(name)
    history = train(
        whole,
        data,
        run,
        Schedule(max_iter=4, test_iter=2, snapshot_iter=2),
        evaluate=lambda iteration: {"pe_mean": float(iteration)},
        log=lambda _: None,
    )
    assert all(np.isfinite(row["loss"]) for row in history.train)
    assert not np.allclose(whole.sigmas(), 1.5)  # the sigmas were trained
    assert [row["iteration"] for row in history.test] == [2, 4]
    assert latest_checkpoint(run.checkpoints).name == "ckpt_00000004.npz"

    resumed = model(name)
    checkpoint = load_checkpoint(run.checkpoints / "ckpt_00000002.npz", resumed)
    assert checkpoint.iteration == 2
    (run.checkpoints / "ckpt_00000004.npz").unlink()
    train(
        resumed,
        data,
        run,
        Schedule(max_iter=4, test_iter=10, snapshot_iter=2),
        resume=True,
        log=lambda _: None,
    )
    for a, b in zip(whole.get_weights(), resumed.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
