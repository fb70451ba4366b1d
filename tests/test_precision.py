"""--precision bf16 (issue 16): minilm built in bf16 stays within cosine 0.999 of fp32 on every golden sentence
and finds the same neighbours; fp32 modules hubbeam built are swapped for their bf16 build; CPUs without native
bfloat16 are refused."""
import json

import numpy as np
import pytest

import hubbeam
from hubbeam.errors import HubbeamError
from hubbeam.hub.digest import tree_sha256
from hubbeam.hub.metadata import read_metadata
from hubbeam.pipeline.job import EmbedJob, run_embed
from hubbeam.modules.precision import module_for, variant_path
from hubbeam.precision import bf16_supported, check_precision
from tests.test_modules import GOLDEN, cosine
from tests.test_search import FILLERS, PAIRS

CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC
flags\t\t: fpu vme sse sse2 avx avx2 avx512f avx512bw avx512vl avx512_vnni{extra} clzero
"""


def in_golden_batches(embedder, sentences):
    return np.concatenate([embedder(sentences[i:i + 32]) for i in range(0, len(sentences), 32)])


def test_bf16_is_its_own_module_within_cosine_0999_of_fp32_on_every_golden_sentence(minilm_module,
                                                                                      minilm_bf16_module):
    metadata = read_metadata(minilm_bf16_module)
    assert metadata["precision"] == "bf16" and read_metadata(minilm_module)["precision"] == "fp32"
    assert tree_sha256(minilm_bf16_module) != tree_sha256(minilm_module)
    golden = np.load(GOLDEN)
    sentences = list(golden["sentences"])
    fp32 = in_golden_batches(hubbeam.load(str(minilm_module)), sentences)
    bf16 = in_golden_batches(hubbeam.load(str(minilm_bf16_module)), sentences)
    assert bf16.dtype == np.float32 and bf16.shape == fp32.shape
    for reference in (fp32, golden["embeddings"]):  # hubbeam's fp32, sentence-transformers'
        similarities = cosine(bf16, reference)
        worst = int(np.argmin(similarities))
        assert similarities.min() >= 0.999, f"{sentences[worst]!r}: cosine {similarities[worst]:.6f}"
    np.testing.assert_allclose(np.linalg.norm(bf16, axis=1), 1.0, atol=1e-5)


@pytest.mark.skipif(not bf16_supported(), reason="this CPU has no native bfloat16: --precision bf16 is refused")
def test_precision_bf16_swaps_an_fp32_build_for_its_bf16_build_and_retrieval_is_unchanged(
        minilm_module, minilm_bf16_module, tmp_path):
    # The build module_for would make into the (per-test) cache, made already by the session fixture.
    cached = variant_path("minilm", "bf16", read_metadata(minilm_module)["builder_sha256"])
    cached.parent.mkdir(parents=True)
    cached.symlink_to(minilm_bf16_module, target_is_directory=True)
    assert module_for(str(minilm_module), "bf16") == (str(cached), None)
    assert module_for(str(minilm_bf16_module), "bf16") == (str(minilm_bf16_module), None)  # already bf16
    assert module_for(str(minilm_module), None) == (str(minilm_module), None)

    texts = [t for pair in PAIRS for t in pair] + FILLERS
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"id": f"t{i}", "text": t}) + "\n" for i, t in enumerate(texts)))
    manifest = run_embed(EmbedJob(input=str(corpus), output=str(tmp_path / "out"), module=str(minilm_module),
                                  precision="bf16"))
    assert manifest["module"]["precision"] == "bf16"
    assert manifest["module"]["sha256"] == tree_sha256(minilm_bf16_module)
    assert manifest["module"]["precision_build_of"] == str(minilm_module)

    bf16 = hubbeam.load(str(minilm_module), precision="bf16")
    for i in range(len(PAIRS)):
        for query, other in ((2 * i, 2 * i + 1), (2 * i + 1, 2 * i)):
            results = hubbeam.search(tmp_path / "out", bf16, query=texts[query], k=3)
            assert [r["id"] for r in results[:2]] == [f"t{query}", f"t{other}"], (texts[query], results)
    # and every text's neighbours come in the same order as with fp32
    fp32_vectors, bf16_vectors = hubbeam.load(str(minilm_module))(texts), bf16(texts)
    fp32_order = np.argsort(-fp32_vectors @ fp32_vectors.T, axis=1)[:, :4]
    bf16_order = np.argsort(-bf16_vectors @ bf16_vectors.T, axis=1)[:, :4]
    np.testing.assert_array_equal(bf16_order, fp32_order)


def test_precision_is_refused_for_a_module_hubbeam_cannot_build_in_it(tiny_wordvec_module):
    with pytest.raises(HubbeamError, match="computes in fp32.*build-module NAME --precision bf16"):
        module_for(str(tiny_wordvec_module), "bf16")
    with pytest.raises(HubbeamError, match="wordvec is built in fp32 only"):
        from hubbeam.modules import build_module

        build_module("wordvec", tiny_wordvec_module.parent / "never", precision="bf16")


def test_bf16_cpu_detection_from_cpuinfo_text():
    assert bf16_supported(CPUINFO.format(extra=" avx512_bf16"))
    assert bf16_supported(CPUINFO.format(extra=" amx_bf16 amx_tile"))
    assert not bf16_supported(CPUINFO.format(extra=""))
    assert not bf16_supported("processor\t: 0\n")  # no flags line
    check_precision("bf16", CPUINFO.format(extra=" avx512_bf16"))
    check_precision("fp32", CPUINFO.format(extra=""))
    check_precision(None, CPUINFO.format(extra=""))
    with pytest.raises(HubbeamError, match="needs a CPU with native bfloat16.*use --precision fp32"):
        check_precision("bf16", CPUINFO.format(extra=""))
    with pytest.raises(HubbeamError, match="must be one of fp32, bf16"):
        check_precision("fp8")


@pytest.mark.long  # make test-long (CI runs it): builds use-multilingual in fp32 (the session fixture) and bf16, ~1.5 min here
def test_use_multilingual_bf16_within_cosine_0999_of_fp32_and_of_the_package(use_module, built_dir):
    from hubbeam.modules import build_module
    from tests.test_use_multilingual import FIXTURES

    bf16_module = build_module("use-multilingual", built_dir / "use-multilingual-bf16", precision="bf16")
    assert read_metadata(bf16_module)["precision"] == "bf16"
    golden = np.load(FIXTURES / "use_golden.npz")
    sentences = list(golden["sentences"])
    fp32 = in_golden_batches(hubbeam.load(str(use_module)), sentences)
    bf16 = in_golden_batches(hubbeam.load(str(bf16_module)), sentences)
    for reference in (fp32, golden["embeddings"]):  # hubbeam's fp32, the package's numpy forward pass
        similarities = cosine(bf16, reference)
        worst = int(np.argmin(similarities))
        assert similarities.min() >= 0.999, f"{sentences[worst]!r}: cosine {similarities[worst]:.6f}"
