"""A preprocessor + encoder pair used as one text module: hubbeam.load(…, preprocessor=…), `hubbeam embed
--preprocessor`, the provenance of both digests, and the refusal of a pair that does not fit together.

The bundled minilm-preprocess + minilm-encoder pair gives minilm's vectors (texts within 128 word pieces), so
every check compares against minilm.
"""
import json
from pathlib import Path

import numpy as np
import pytest

import hubbeam
from hubbeam.errors import HubbeamError

GOLDEN = Path(__file__).parent / "fixtures" / "minilm_golden.npz"


def cosine(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)


@pytest.fixture(scope="session")
def pair(built_dir) -> tuple[Path, Path]:
    """(preprocessor, encoder) folders, built once per session."""
    from hubbeam.modules import build_module

    return (build_module("minilm-preprocess", built_dir / "pair-preprocess"),
            build_module("minilm-encoder", built_dir / "pair-encoder"))


@pytest.fixture(scope="module")
def sentences() -> list[str]:
    """Golden sentences within 120 word pieces, short and long mixed (so batches pack to several lengths)."""
    golden = np.load(GOLDEN)
    fitting = [str(s) for s, n in zip(golden["sentences"], golden["token_counts"]) if n <= 120]
    return fitting[:8] + fitting[8::5][:16]


@pytest.fixture(scope="module")
def minilm_vectors(minilm_module, sentences):
    return hubbeam.load(str(minilm_module))(sentences)


def test_load_with_preprocessor_takes_strings(pair, sentences, minilm_vectors):
    preprocessor, encoder = pair
    embedder = hubbeam.load(str(encoder), output_key="pooled_output", preprocessor=str(preprocessor))
    assert embedder.input_kind == "text" and embedder.dim == 384
    assert embedder.module_sha256 == hubbeam.resolve_module(str(encoder)).sha256
    assert embedder.preprocessor_sha256 == hubbeam.resolve_module(str(preprocessor)).sha256
    vectors = embedder(sentences)
    assert vectors.shape == (len(sentences), 384)
    assert cosine(vectors, minilm_vectors).min() >= 0.9999
    # seq_length follows the batch: short texts are packed short, never past the cap
    short = embedder(["a cat", "hello world"])
    assert embedder.last_seq_length == 16
    assert cosine(short, hubbeam.load(str(encoder), preprocessor=str(preprocessor), seq_length=128)(
        ["a cat", "hello world"])).min() >= 0.9999
    embedder(sentences)
    assert 16 < embedder.last_seq_length <= 128
    capped = hubbeam.load(str(encoder), preprocessor=str(preprocessor), seq_length=32)
    capped(sentences)
    assert capped.last_seq_length == 32


def test_a_mismatched_pair_is_refused_naming_the_keys(pair, tiny_wordvec_module):
    _, encoder = pair
    with pytest.raises(HubbeamError) as caught:
        hubbeam.load(str(encoder), preprocessor=str(tiny_wordvec_module))
    message = str(caught.value)
    assert "does not match" in message
    assert all(key in message for key in ("input_word_ids", "input_mask", "input_type_ids"))
    assert "\n" not in message
    with pytest.raises(HubbeamError, match="seq_length is for a preprocessor"):
        hubbeam.load(str(encoder), seq_length=64)
