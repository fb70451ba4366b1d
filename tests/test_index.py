"""`hubbeam index` and search through it: the index gives the exact results where neighbours are clear, and a
foreign, stale or half-built index is never used."""
import json
import shutil
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import hubbeam
from hubbeam.errors import HubbeamError
from hubbeam.index import layout
from hubbeam.index.build import build_index
from hubbeam.inspection.searcher import Searcher
from hubbeam.pipeline.job import EmbedJob, run_embed
from tests.cli import hubbeam_cli, hubbeam_cli_without_tensorflow
from tests.test_search import FILLERS, PAIRS

TOPICS = ["gardening", "tax law", "jazz piano", "volcanoes", "chess openings", "bicycle repair", "knitting",
          "satellite orbits", "cheese making", "medieval castles", "deep sea fish", "origami", "rust compilers",
          "wind turbines", "beekeeping", "glass blowing", "opera singing", "coral reefs", "typography", "falconry"]


def _current(index_dir):
    return json.loads((index_dir / layout.CURRENT).read_text())["generation"]


def _in_use(index_dir, *generations):
    """The generations and the segment folders they list: what a build leaves beside CURRENT."""
    names = set(generations)
    for generation in generations:
        names |= {s["folder"] for s in json.loads((index_dir / generation / layout.MANIFEST).read_text())["segments"]}
    return names | {layout.CURRENT}


@pytest.fixture(scope="module")
def corpus_run(tmp_path_factory, minilm_module):
    """A minilm run (2 shards) of the near-duplicate pairs, fillers and 20 unrelated topics; its texts."""
    root = tmp_path_factory.mktemp("index-corpus")
    texts = {}
    for i, (first, second) in enumerate(PAIRS):
        texts[f"p{i}a"], texts[f"p{i}b"] = first, second
    for i, text in enumerate(FILLERS + [f"A short note about {t}." for t in TOPICS]):
        texts[f"f{i:02d}"] = text
    items = list(texts.items())
    pq.write_table(pa.table({"id": [k for k, _ in items[::2]], "text": [v for _, v in items[::2]]}),
                   root / "a.parquet")
    (root / "b.jsonl").write_text("".join(json.dumps({"id": k, "text": v}) + "\n" for k, v in items[1::2]))
    out = root / "out"
    run_embed(EmbedJob(input=f"{root}/*.*", output=str(out), module=str(minilm_module), num_shards=2))
    return {"out": out, "texts": texts, "module": minilm_module, "embedder": hubbeam.load(str(minilm_module))}


@pytest.fixture
def small_run(tmp_path, tiny_wordvec_module):
    """A fresh tiny-wordvec run of its own (tests here re-run, break and rebuild it)."""
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"id": f"r{i}", "text": t}) + "\n"
                              for i, t in enumerate(["the cat sat", "the mat", "cat , cat", "sat sat", ", mat"])))
    out = tmp_path / "out"
    job = EmbedJob(input=str(corpus), output=str(out), module=str(tiny_wordvec_module))
    run_embed(job)
    return {"out": out, "job": job, "module": str(tiny_wordvec_module)}


def test_index_results_equal_exact_results(corpus_run):
    ws = corpus_run
    folder, manifest, built = build_index([str(ws["out"])])
    assert built and manifest["rows"] == len(ws["texts"]) and manifest["metric"] == "cosine"
    assert [len(o["shards"]) for o in manifest["outputs"]] == [2] and manifest["module"]["sha256"]
    indexed = Searcher(ws["out"], ws["embedder"])
    exact = Searcher(ws["out"], ws["embedder"], exact=True)
    assert (indexed.mode, exact.mode) == ("index", "exact")
    for query in [PAIRS[0][0], PAIRS[3][1], "Someone is having lunch.", "notes about volcanoes and reefs"]:
        for k in (1, 5, 10):
            got, want = indexed.search(query, k=k), exact.search(query, k=k)
            assert [r["id"] for r in got] == [r["id"] for r in want], (query, k)
            assert [r["snippet"] for r in got] == [r["snippet"] for r in want]
            assert [r["score"] for r in got] == pytest.approx([r["score"] for r in want], abs=2e-6)
    # an index that scans only part of its cells still finds each text, then its near-duplicate
    build_index([str(ws["out"])], force=True, nlist=4, nprobe=2)
    probed = Searcher(ws["out"], ws["embedder"])
    assert probed.index.manifest["ann"]["nprobe"] == 2
    for i, (first, _) in enumerate(PAIRS):
        assert [r["id"] for r in probed.search(first, k=2)] == [f"p{i}a", f"p{i}b"]
    assert hubbeam.search(ws["out"], ws["embedder"], query=PAIRS[1][0], k=2)[1]["id"] == "p1b"
    # up to date: kept; --force replaces it and keeps the one before (a reader may be loading it)
    again = build_index([str(ws["out"])])
    assert again[2] is False and again[0] == probed.index.directory


def test_cli_search_through_the_index_prints_what_exact_prints(corpus_run):
    ws = corpus_run
    built = hubbeam_cli_without_tensorflow("index", ws["out"], "--force", "--json")  # no TensorFlow to index
    assert built.returncode == 0, built.stderr
    assert json.loads(built.stdout)["built"] is True
    args = ["search", "--embeddings", ws["out"], "--module", ws["module"], PAIRS[2][0], "-k", "3"]
    indexed, exact = hubbeam_cli(*args), hubbeam_cli(*args, "--exact")
    assert indexed.returncode == exact.returncode == 0, indexed.stderr + exact.stderr
    assert indexed.stdout == exact.stdout and "p2a" in indexed.stdout and PAIRS[2][1] in indexed.stdout


def test_an_index_of_another_module_is_refused(small_run, corpus_run):
    ws = small_run
    build_index([str(corpus_run["out"])])
    shutil.copytree(corpus_run["out"] / "index", ws["out"] / "index")  # minilm's index beside wordvec's run
    with pytest.raises(HubbeamError) as info:
        Searcher(ws["out"], ws["module"])
    message = str(info.value)
    assert message.startswith("module mismatch: the index") and "\n" not in message and "--exact" in message
    assert len(Searcher(ws["out"], ws["module"], exact=True).search("cat", k=2)) == 2
    rebuilt = hubbeam_cli_without_tensorflow("index", ws["out"])  # hubbeam index replaces it
    assert rebuilt.returncode == 0 and rebuilt.stdout.startswith("indexed 5 rows"), rebuilt.stderr
    assert Searcher(ws["out"], ws["module"]).mode == "index"


def test_a_stale_index_is_refused_until_rebuilt(small_run):
    ws = small_run
    build_index([str(ws["out"])])
    searcher = Searcher(ws["out"], ws["module"])
    before = searcher.search("cat", k=3)
    run_embed(ws["job"])  # the same input embedded again: new shards (new run id), the old index is stale
    with pytest.raises(HubbeamError, match=r"^stale index: it covers run\(s\) .*rebuild it \(hubbeam index\)"):
        Searcher(ws["out"], ws["module"])
    cli = hubbeam_cli_without_tensorflow("search", "--embeddings", ws["out"], "--module", ws["module"], "cat")
    assert cli.returncode == 2 and cli.stdout == "" and len(cli.stderr.strip().splitlines()) == 1
    assert cli.stderr.startswith("hubbeam: error: stale index")
    exact = hubbeam_cli("search", "--embeddings", ws["out"], "--module", ws["module"], "cat", "--exact", "-k", "3",
                        "--json")
    assert exact.returncode == 0, exact.stderr  # --exact never looks at the index
    assert [r["id"] for r in json.loads(exact.stdout)] == [r["id"] for r in before]
    assert build_index([str(ws["out"])])[2] is True
    assert [r["id"] for r in Searcher(ws["out"], ws["module"]).search("cat", k=3)] == [r["id"] for r in before]


KILL_DURING_BUILD = """
import os, sys
from hubbeam.index import ann, layout
from hubbeam.index.build import build_index

def die(*args, **kwargs):
    os._exit(9)  # as if killed: no cleanup runs

setattr(ann if sys.argv[2] == "save" else layout, sys.argv[2], die)
build_index([sys.argv[1]], force=True)
"""


@pytest.mark.parametrize("killed_in", ["save", "publish"])
def test_a_killed_build_leaves_the_previous_index_in_use(small_run, killed_in):
    ws = small_run
    build_index([str(ws["out"])])
    index_dir = ws["out"] / "index"
    generation = _current(index_dir)
    expected = Searcher(ws["out"], ws["module"]).search("cat , cat", k=5)
    died = subprocess.run([sys.executable, "-c", KILL_DURING_BUILD, str(ws["out"]), killed_in], capture_output=True,
                          text=True, timeout=120)
    assert died.returncode == 9, died.stderr
    leftovers = {p.name for p in index_dir.iterdir()} - _in_use(index_dir, generation)
    # the dead build's segment staging folder (killed in save), or its segment and unpublished generation
    assert len(leftovers) == (1 if killed_in == "save" else 2), leftovers
    assert _current(index_dir) == generation
    searcher = Searcher(ws["out"], ws["module"])
    assert searcher.mode == "index" and searcher.search("cat , cat", k=5) == expected
    assert build_index([str(ws["out"])], force=True)[2] is True
    assert {p.name for p in index_dir.iterdir()} == _in_use(index_dir, generation, _current(index_dir))


def test_a_failed_build_raises_and_keeps_the_index(small_run, monkeypatch):
    from hubbeam.index import ann

    ws = small_run
    build_index([str(ws["out"])])
    generation = _current(ws["out"] / "index")

    def broken(*args):
        raise HubbeamError("disk full")

    monkeypatch.setattr(ann, "save", broken)
    with pytest.raises(HubbeamError, match="disk full"):
        build_index([str(ws["out"])], force=True)
    assert _current(ws["out"] / "index") == generation
    assert {p.name for p in (ws["out"] / "index").iterdir()} == _in_use(ws["out"] / "index", generation)


def test_cli_bad_input_is_one_line_and_exit_2(small_run, tmp_path):
    ws = small_run
    unfinished = tmp_path / "unfinished"
    shutil.copytree(ws["out"], unfinished)
    (unfinished / "_SUCCESS").unlink()
    cases = {
        ("index", tmp_path / "no-such-dir"): "holds no finished hubbeam run",
        ("index", unfinished): "holds no finished hubbeam run",
        ("index", ws["out"], unfinished): "holds no finished hubbeam run",
        ("index", ws["out"], ws["out"]): "needs a place of its own: give --out",
        ("search", "--embeddings", ws["out"], "--module", ws["module"], "--index", tmp_path / "none", "cat"):
            "no index at",
    }
    for args, expected in cases.items():
        cli = hubbeam_cli_without_tensorflow(*args)
        lines = cli.stderr.strip().splitlines()
        assert cli.returncode == 2 and cli.stdout == "" and len(lines) == 1, (args, cli.stderr)
        assert lines[0].startswith("hubbeam: error: ") and expected in lines[0], (args, lines)


def test_an_index_over_two_runs(small_run, tmp_path):
    ws = small_run
    second = tmp_path / "second"
    shutil.copytree(ws["out"], second)
    index_dir = tmp_path / "both-index"
    folder, manifest, built = build_index([str(ws["out"]), str(second)], out=str(index_dir))
    assert built and manifest["rows"] == 10 and len(manifest["outputs"]) == 2
    indexed = Searcher([ws["out"], second], ws["module"], index=str(index_dir)).search("cat", k=4)
    exact = Searcher([ws["out"], second], ws["module"], exact=True).search("cat", k=4)
    assert [(r["id"], r["snippet"]) for r in indexed] == [(r["id"], r["snippet"]) for r in exact]
    assert [r["score"] for r in indexed] == pytest.approx([r["score"] for r in exact], abs=2e-6)
    assert [r["id"] for r in exact][:2] == ["r2", "r2"]
    with pytest.raises(HubbeamError, match="stale index"):  # it does not answer for one of the runs alone
        Searcher([ws["out"]], ws["module"], index=str(index_dir))


# --- extension across snapshots (issue 19, item 3) ------------------------------------------------------------------

SNAPSHOTS = [  # id -> text per snapshot; tiny-wordvec's words are orthogonal, so every text has its own direction
    {"d0": "cat", "d1": "sat", "d2": "cat sat", "d3": "mat ,", "d4": "cat cat sat mat"},
    {"d1": "sat sat mat", "d5": "cat , ,", "d6": "sat mat mat ,"},  # d1 changed, d5 and d6 new
    {"d5": "mat mat mat cat", "d2": "cat sat sat sat ,", "d7": "sat , , ,"},  # d5 changed again, d2 changed
]
DELETED = [set(), {"d3"}, {"d3", "d6"}]  # gone from the corpus by each snapshot's extraction


@pytest.fixture(scope="module")
def snapshots(tmp_path_factory, tiny_wordvec_module):
    """Three finished runs of successive corpus snapshots (later ones change some documents), oldest first."""
    root = tmp_path_factory.mktemp("snapshots")
    outs = []
    for number, docs in enumerate(SNAPSHOTS):
        source = root / f"snapshot-{number}.jsonl"
        source.write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in docs.items()))
        out = root / f"snapshot-{number}"
        run_embed(EmbedJob(input=str(source), output=str(out), module=str(tiny_wordvec_module),
                           num_shards=2 if number == 0 else 1))
        outs.append(str(out))
    return outs


def _latest_texts():
    texts = {}
    for docs in SNAPSHOTS:
        texts.update(docs)
    return {i: t for i, t in texts.items() if i not in DELETED[-1]}


def _present(snapshots):
    """output folder -> the ids its extraction found in the corpus (none listed for the first)."""
    import pyarrow as pa

    def present(directory):
        number = snapshots.index(directory)
        if number == 0:
            return None
        seen = set().union(*SNAPSHOTS[:number + 1]) - DELETED[number]
        return pa.array(sorted(seen), pa.string())

    return present


def _hits(index_dir, outputs, queries, k):
    from hubbeam.index.coverage import read_outputs
    from hubbeam.index.reader import open_index

    loaded = open_index(str(index_dir), read_outputs(outputs))
    return [[(h.id, h.output, h.shard, h.row, h.score) for h in hits] for hits in loaded.search(queries, k)]


def test_an_extended_index_answers_as_a_rebuild_does(snapshots, tmp_path, monkeypatch):
    import numpy as np

    from hubbeam.index import extend_index, segment

    extended, rebuilt = tmp_path / "extended", tmp_path / "rebuilt"
    present = _present(snapshots)
    build_index(snapshots[:1], out=str(extended), latest=True)
    read = []
    real_read_shard = segment._read_shard
    monkeypatch.setattr(segment, "_read_shard", lambda output, n: read.append(output.directory) or
                        real_read_shard(output, n))
    folder, manifest, built = build_index(snapshots[:2], out=str(extended), present=present)  # covers the first
    assert built and len(manifest["segments"]) == 2 and set(read) == {snapshots[1]}, "old shards were read again"
    folder, manifest = extend_index(str(extended), snapshots[2:], present=present)
    assert len(manifest["segments"]) == 3 and manifest["latest"] and set(read) == set(snapshots[1:])
    full = build_index(snapshots, out=str(rebuilt), latest=True, present=present)[1]
    assert len(full["segments"]) == 1 and manifest["rows"] == full["rows"] == len(_latest_texts()) == 6
    # changed: d1, d2, d5 (twice); deleted: d3, d6
    assert manifest["superseded"]["rows"] == full["superseded"]["rows"] == 5

    queries = np.random.default_rng(7).standard_normal((12, 4)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    for k in (1, 3, 8, 20):
        got, want = _hits(extended, snapshots, queries, k), _hits(rebuilt, snapshots, queries, k)
        for g, w in zip(got, want):
            assert [h[:4] for h in g] == [h[:4] for h in w], k
            assert [h[4] for h in g] == pytest.approx([h[4] for h in w], abs=2e-6)
            assert len({h[0] for h in g}) == len(g) == min(k, 6)  # each document once, deleted ones not
    # each id's row is its latest snapshot's
    latest_output = {i: max(n for n, docs in enumerate(SNAPSHOTS) if i in docs) for i in _latest_texts()}
    assert {h[0]: h[1] for h in _hits(extended, snapshots, queries[:1], 8)[0]} == latest_output
    # without the present lists, deletions are not known: only changes supersede
    assert build_index(snapshots, out=str(tmp_path / "no-lists"), latest=True)[1]["rows"] == 8
    # up to date: kept; an output already in it is refused; a rebuild replaces the segments
    assert build_index(snapshots, out=str(extended))[2] is False
    with pytest.raises(HubbeamError, match="is already in the index"):
        extend_index(str(extended), snapshots[1:2])
    reordered = build_index(snapshots[::-1], out=str(extended), present=present)  # other winners: rebuilt
    assert reordered[2] is True and len(reordered[1]["segments"]) == 1


EXTEND_AND_DIE = """
import os, sys
from hubbeam.index import ann, layout
from hubbeam.index.extend import extend_index

def die(*args, **kwargs):
    os._exit(9)  # as if killed: no cleanup runs

setattr(ann if sys.argv[3] == "save" else layout, sys.argv[3], die)
extend_index(sys.argv[1], [sys.argv[2]])
"""


@pytest.mark.parametrize("killed_in", ["save", "publish"])
def test_a_killed_extension_leaves_the_previous_index_in_use(snapshots, tmp_path, killed_in):
    import numpy as np

    index_dir = tmp_path / "idx"
    build_index(snapshots[:2], out=str(index_dir), latest=True)
    generation, before = _current(index_dir), sorted(p.name for p in index_dir.iterdir())
    queries = np.eye(4, dtype=np.float32)
    expected = _hits(index_dir, snapshots[:2], queries, 5)
    died = subprocess.run([sys.executable, "-c", EXTEND_AND_DIE, str(index_dir), snapshots[2], killed_in],
                          capture_output=True, text=True, timeout=120)
    assert died.returncode == 9, died.stderr
    assert _current(index_dir) == generation and len(set(p.name for p in index_dir.iterdir()) - set(before)) >= 1
    assert _hits(index_dir, snapshots[:2], queries, 5) == expected
    assert build_index(snapshots, out=str(index_dir))[2] is True  # the next extension sweeps the dead one's folders
    manifest = json.loads((index_dir / _current(index_dir) / layout.MANIFEST).read_text())
    assert len(manifest["segments"]) == 2
    assert {p.name for p in index_dir.iterdir()} == _in_use(index_dir, generation, _current(index_dir))
