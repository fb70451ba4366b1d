"""Shared fixtures: each bundled module is built once per test session, into a session temp folder."""
import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

TINY_VECTORS = """5 4
the 0.1 0.2 0.3 0.4
cat 1 0 0 0
sat 0 1 0 0
mat 0 0 1 0
, 0 0 0 1
"""


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    """Every test gets its own module cache: nothing leaks between tests or into ~/.cache."""
    monkeypatch.setenv("HUBBEAM_CACHE_DIR", str(tmp_path / "hubbeam-cache"))


@pytest.fixture(scope="session")
def built_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("modules")


@pytest.fixture(scope="session")
def minilm_module(built_dir) -> Path:
    from hubbeam.modules import build_module

    return build_module("minilm", built_dir / "minilm")


@pytest.fixture(scope="session")
def minilm_bf16_module(built_dir) -> Path:
    """minilm built in bf16 (tests/test_precision.py)."""
    from hubbeam.modules import build_module

    return build_module("minilm", built_dir / "minilm-bf16", precision="bf16")


@pytest.fixture(scope="session")
def digits_module(built_dir) -> Path:
    from hubbeam.modules import build_module

    return build_module("digits", built_dir / "digits")


@pytest.fixture(scope="session")
def wordvec_module(built_dir) -> Path:
    """wordvec from its default source: MiniLM's whole-word token embeddings."""
    from hubbeam.modules import build_module

    return build_module("wordvec", built_dir / "wordvec")


@pytest.fixture(scope="session")
def tiny_vectors_file(built_dir) -> Path:
    path = built_dir / "tiny-vectors.txt"
    path.write_text(TINY_VECTORS)
    return path


@pytest.fixture(scope="session")
def tiny_wordvec_module(built_dir, tiny_vectors_file) -> Path:
    from hubbeam.modules import build_module

    return build_module("wordvec", built_dir / "tiny-wordvec", embeddings=tiny_vectors_file, oov_buckets=3)


@pytest.fixture(scope="session")
def tf1_module(built_dir) -> Path:
    from tests.tf1_module import build_tf1_hub_module

    return build_tf1_hub_module(built_dir / "tf1-hub-module")


@pytest.fixture(scope="session")
def use_module(built_dir) -> Path:
    from hubbeam.modules import build_module

    return build_module("use-multilingual", built_dir / "use-multilingual")


@pytest.fixture(scope="session")
def preprocess_module(built_dir) -> Path:
    """The bundled BERT-style pair (tests/test_minilm_pair.py, tests/test_pairs.py), built once per session."""
    from hubbeam.modules import build_module

    return build_module("minilm-preprocess", built_dir / "minilm-preprocess")


@pytest.fixture(scope="session")
def encoder_module(built_dir) -> Path:
    from hubbeam.modules import build_module

    return build_module("minilm-encoder", built_dir / "minilm-encoder")
