"""`digits`: an image feature-vector module trained at build time on scikit-learn's bundled digits.

Follows TF Hub's image feature-vector convention: input float32 [N, 32, 32, 3] in [0, 1] (the size is
declared in the signature and the metadata), output [N, 64]. Inside, the image is averaged to grey and
area-downsampled to the 8x8 grid the data set was scanned at, then a small CNN encodes it. Like the data
set, it expects light strokes on a dark background.

Training is deterministic (fixed seed, deterministic ops) on the data set's first 80%; the last 20% is
held out and recorded in the metadata so tests can measure k-NN accuracy on unseen digits.
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path

import numpy as np

from hubbeam import tfenv
from hubbeam.hub.metadata import ModuleMetadata
from hubbeam.modules.common import reusable_root, save_module

tf = tfenv.tensorflow()  # building modules needs TensorFlow; this file is only imported to build one

NAME = "digits"
IMAGE_SIZE = 32
GRID = 8
EMBEDDING_DIM = 64
SEED = 1234
HOLDOUT_FRACTION = 0.2
EPOCHS = 40


def load_digits_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(train images, train labels, held-out images, held-out labels); images float32 [N, 32, 32, 3] in [0, 1]."""
    from sklearn.datasets import load_digits

    data = load_digits()
    images = digits_as_rgb(data.images)
    split = int(len(images) * (1 - HOLDOUT_FRACTION))
    return images[:split], data.target[:split], images[split:], data.target[split:]


def digits_as_rgb(grids: np.ndarray) -> np.ndarray:
    """sklearn's 8x8 grids (0..16) as RGB images at the module's input size, the way a scan would look."""
    scaled = (grids.astype(np.float32) / 16.0).repeat(IMAGE_SIZE // GRID, axis=1).repeat(IMAGE_SIZE // GRID, axis=2)
    return np.repeat(scaled[..., None], 3, axis=-1)


class DigitsEncoder(tf.Module):
    def __init__(self):
        super().__init__(name="digits")
        import tf_keras

        layers = tf_keras.layers
        self.network = tf_keras.Sequential([
            layers.Input((GRID, GRID, 1)),
            layers.Conv2D(32, 3, padding="same", activation="relu"),
            layers.Conv2D(64, 3, padding="same", activation="relu"),
            layers.MaxPooling2D(2),
            layers.Dropout(0.25),
            layers.Flatten(),
            layers.Dense(128, activation="relu"),
            layers.Dense(EMBEDDING_DIM, activation="relu", name="embedding"),
        ])

    def features(self, images, training=False):
        grey = tf.reduce_mean(tf.convert_to_tensor(images, tf.float32), axis=-1, keepdims=True)
        # Area downsampling by an integral factor, as average pooling: unlike ResizeArea it has a gradient,
        # which fine-tuning through hub.KerasLayer needs.
        factor = IMAGE_SIZE // GRID
        grid = tf.nn.avg_pool2d(grey, factor, factor, "VALID")
        return self.network(grid, training=training)


def train(encoder: DigitsEncoder, images: np.ndarray, labels: np.ndarray) -> None:
    import tf_keras

    tf_keras.utils.set_random_seed(SEED)
    inputs = tf_keras.Input((IMAGE_SIZE, IMAGE_SIZE, 3))
    # Shifts of up to one grid cell: the held-out writers centre their digits differently (+3 points k-NN).
    shifted = tf_keras.layers.RandomTranslation(0.08, 0.08, fill_mode="constant", seed=SEED)(inputs)
    logits = tf_keras.layers.Dense(10)(encoder.features(shifted))
    classifier = tf_keras.Model(inputs, logits)
    classifier.compile(optimizer=tf_keras.optimizers.Adam(1e-3),
                       loss=tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    classifier.fit(images, labels, batch_size=64, epochs=EPOCHS, shuffle=True, verbose=0)


@contextlib.contextmanager
def _op_determinism():
    """Deterministic kernels while training, then the process's previous setting: determinism also makes
    unseeded random ops (dropout in other modules' training) fail, so it must not leak out of the build."""
    from tensorflow.python.framework import config as tf_config  # disable_op_determinism is not public

    was_enabled = tf_config.is_op_determinism_enabled()
    tf.config.experimental.enable_op_determinism()
    try:
        yield
    finally:
        if not was_enabled:
            tf_config.disable_op_determinism()


def build(out_dir: str | os.PathLike) -> Path:
    import sklearn

    train_x, train_y, holdout_x, _ = load_digits_split()
    encoder = DigitsEncoder()
    with _op_determinism():
        train(encoder, train_x, train_y)
    image_spec = tf.TensorSpec([None, IMAGE_SIZE, IMAGE_SIZE, 3], tf.float32, name="images")

    def embed(images):
        return {"default": encoder.features(images)}

    root = reusable_root(encoder, lambda images, training=False: encoder.features(images, training), image_spec)
    signatures = {"default": tf.function(embed).get_concrete_function(image_spec)}
    metadata: ModuleMetadata = {
        "name": NAME,
        "version": "1",
        "description": "CNN features of handwritten digits (light strokes on dark), trained on sklearn's digits",
        "input": {"kind": "image", "signature": "default", "dtype": "float32", "shape": [None, IMAGE_SIZE, IMAGE_SIZE, 3],
                  "image_size": [IMAGE_SIZE, IMAGE_SIZE], "value_range": [0.0, 1.0]},
        "output_dim": EMBEDDING_DIM,
        "training": {"data": "sklearn.datasets.load_digits", "train_rows": len(train_x),
                     "holdout_rows": len(holdout_x), "holdout": f"last {HOLDOUT_FRACTION:.0%} of the data set",
                     "seed": SEED, "epochs": EPOCHS, "augmentation": "random shifts up to 8%"},
        "source": {"package": "scikit-learn", "version": sklearn.__version__, "data": "digits"},
    }
    return save_module(root, out_dir, signatures, metadata)
