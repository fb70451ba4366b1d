"""What a serving function's input is, guessed once from its tensor spec: strings of rank 1 are text, floats or
uint8 of shape [N, H, W, 3] are images (uint8 modules take 0-255 pixels, float ones [0, 1]: see
hubbeam.images.model_pixels); anything else is "tensors" (several or other inputs, fed by name).

The loader, the exporter (which records the guess in the module's metadata) and fine-tuning all ask here.
"""
from __future__ import annotations

TEXT = "text"
IMAGE = "image"
TENSORS = "tensors"


def kind_of(spec) -> str:
    """TEXT, IMAGE or TENSORS for a tf.TensorSpec (or anything with dtype and shape)."""
    rank = spec.shape.rank
    if spec.dtype.name == "string" and rank == 1:
        return TEXT
    if (spec.dtype.is_floating or spec.dtype.name == "uint8") and rank == 4 and spec.shape[-1] == 3:
        return IMAGE
    return TENSORS
