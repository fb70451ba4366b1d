"""Trust boundaries: hostile modules (real SavedModels that read and write files) are refused by load, embed,
search, finetune and the DAGs until the user says otherwise; the bundled modules pass the audit; and with
HUBBEAM_ALLOWED_SOURCES set, handles outside it (and every path trick) are refused before any request."""
import datetime as dt
import json
import re
from pathlib import Path

import pytest

import hubbeam
from hubbeam.hub.allowlist import SourceNotAllowedError
from hubbeam.hub.audit import LOAD_TIME, UnsafeModuleError, audit_module
from tests.cli import hubbeam_cli
from tests.hostile_modules import DIM, KINDS, build_hostile_module
from tests.servers import S3_BUCKET
from tests.test_dags import D1, airflow_db, dagbag, full_conf  # noqa: F401 - fixtures shared with test_dags

pytest_plugins = ["tests.servers"]

SECRET = b"\x07\x2a\x63\xfe"  # what the reading modules exfiltrate: it shows up as their embedding
EXPECTED_OP = {"reads": "ReadFile", "writes": "WriteFile", "nested": "ReadFile"}


@pytest.fixture(scope="session")
def hostile(tmp_path_factory) -> dict:
    """kind -> (module folder, the file it touches). The secret is planted where the readers look."""
    base = tmp_path_factory.mktemp("hostile")
    modules = {}
    for kind in KINDS:
        target = base / f"{kind}-target.bin"
        if kind != "writes":
            target.write_bytes(SECRET)
        modules[kind] = (build_hostile_module(kind, base / f"hostile-{kind}", target), target)
    return modules


TF_STARTUP = re.compile(r"^(WARNING: All log messages before absl::InitializeLog|[IWE]\d{4} )")


def one_line_error(run, *needles):
    """Exit 2 and one line from hubbeam. TensorFlow's C++ start-up lines (printed before its logging is set
    up, so TF_CPP_MIN_LOG_LEVEL cannot silence them) are not hubbeam's: the audit imports TensorFlow."""
    assert run.returncode == 2, (run.stdout[-2000:], run.stderr[-3000:])
    lines = [line for line in run.stderr.strip().splitlines() if not TF_STARTUP.match(line)]
    assert len(lines) == 1 and lines[0].startswith("hubbeam: error: "), run.stderr
    for needle in needles:
        assert needle in lines[0], run.stderr


# --- the op audit -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
def test_load_refuses_each_hostile_module_and_names_the_op(hostile, kind):
    module, target = hostile[kind]
    audit = audit_module(module)
    assert audit.unsafe["default"] == (EXPECTED_OP[kind],) and audit.unsafe["__call__"] == (EXPECTED_OP[kind],)
    before = target.read_bytes() if target.exists() else None
    with pytest.raises(UnsafeModuleError) as info:
        hubbeam.load(str(module))
    message = str(info.value)
    assert EXPECTED_OP[kind] in message and "'default'" in message and "--allow-unsafe-ops" in message
    assert "\n" not in message
    assert (target.read_bytes() if target.exists() else None) == before, "nothing of the module ran"


def test_with_the_override_they_run(hostile):
    reader = hubbeam.load(str(hostile["reads"][0]), allow_unsafe_ops=True)
    assert reader(["anything"]).tolist() == [[float(b) for b in SECRET]]  # the planted bytes, exfiltrated
    nested = hubbeam.load(str(hostile["nested"][0]), allow_unsafe_ops=True)
    assert nested(["x", "y"]).tolist() == [[float(b) for b in SECRET]] * 2
    module, target = hostile["writes"]
    writer = hubbeam.load(str(module), allow_unsafe_ops=True)
    assert writer(["first text", "second text"]).shape == (2, DIM)
    assert target.read_text() == "first text\nsecond text"
    target.unlink()


def test_inspect_lists_what_each_function_reaches(hostile, minilm_module):
    run = hubbeam_cli("inspect", hostile["nested"][0], "--json")
    assert run.returncode == 0, run.stderr[-3000:]
    info = json.loads(run.stdout)
    # found through the tf.cond inside a called function (which the object graph also holds on its own)
    assert info["unsafe_ops"]["default"] == info["unsafe_ops"]["__call__"] == ["ReadFile"], info["unsafe_ops"]
    text = hubbeam_cli("inspect", hostile["writes"][0])
    assert "FILE: WriteFile" in text.stdout and "refused by default" in text.stdout
    minilm = json.loads(hubbeam_cli("inspect", minilm_module, "--json").stdout)
    assert minilm["unsafe_ops"] == {}
    assert any(op.startswith(("Wordpiece", "Normalize", "Regex", "Fast", "Split")) for op in
               minilm["ops"]["default"]["custom_ops"]), minilm["ops"]["default"]  # tensorflow-text's kernels


def test_a_module_that_does_harm_while_loading_is_neither_loaded_nor_inspected_by_loading(tmp_path):
    from tests.hostile_modules import build_hostile_loader

    target = tmp_path / "written-at-load"
    module = build_hostile_loader(tmp_path / "hostile-loader", target)
    assert audit_module(module).unsafe == {LOAD_TIME: ("WriteFile",)}  # its signature itself is harmless
    with pytest.raises(UnsafeModuleError, match="WriteFile"):
        hubbeam.load(str(module))
    described = hubbeam_cli("inspect", module, "--json")
    assert described.returncode == 0, described.stderr[-3000:]
    info = json.loads(described.stdout)
    assert info["loaded"] is False and info["unsafe_ops"] == {LOAD_TIME: ["WriteFile"]}
    assert "NOT LOADED" in hubbeam_cli("inspect", module).stdout
    assert not target.exists(), "inspecting must not run what loading runs"
    loaded = hubbeam_cli("inspect", module, "--json", "--allow-unsafe-ops")
    assert loaded.returncode == 0 and json.loads(loaded.stdout)["signatures"], loaded.stderr[-3000:]
    assert target.read_text() == "written at load time"


def test_none_of_the_bundled_modules_is_refused(minilm_module, digits_module, wordvec_module, use_module,
                                                tf1_module):
    for module in (minilm_module, digits_module, wordvec_module, use_module, tf1_module):
        audit = audit_module(module)
        assert audit.unsafe == {}, (module, audit.unsafe)
        assert "default" in audit.functions
    assert "InitializeTableFromTextFileV2" in audit_module(wordvec_module).functions[LOAD_TIME].file_ops  # expected


def test_embed_refuses_then_runs_with_the_override_and_records_it(hostile, tmp_path):
    module, target = hostile["writes"]
    corpus = tmp_path / "in.jsonl"
    corpus.write_text('{"id": "a", "text": "private text one"}\n{"id": "b", "text": "private text two"}\n')
    args = ["embed", "--input", corpus, "--output", tmp_path / "out", "--module", module]
    one_line_error(hubbeam_cli(*args), "WriteFile", "'default'")
    assert not target.exists() and not (tmp_path / "out" / "_SUCCESS").exists()

    allowed = hubbeam_cli(*args, "--allow-unsafe-ops")
    assert allowed.returncode == 0, allowed.stderr[-3000:]
    assert "private text" in target.read_text()
    target.unlink()
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["module"]["allow_unsafe_ops"] is True
    assert manifest["module"]["unsafe_ops"]["default"] == manifest["module"]["unsafe_ops"]["__call__"] == ["WriteFile"]


def test_search_refuses_a_hostile_module(hostile, tmp_path):
    module, _ = hostile["reads"]
    corpus = tmp_path / "in.jsonl"
    corpus.write_text('{"id": "a", "text": "one"}\n{"id": "b", "text": "two"}\n')
    made = hubbeam_cli("embed", "--input", corpus, "--output", tmp_path / "out", "--module", module,
                       "--allow-unsafe-ops")
    assert made.returncode == 0, made.stderr[-3000:]
    one_line_error(hubbeam_cli("search", "--embeddings", tmp_path / "out", "--module", module, "one"), "ReadFile")
    found = hubbeam_cli("search", "--embeddings", tmp_path / "out", "--module", module, "one", "--json",
                        "--allow-unsafe-ops")
    assert found.returncode == 0 and len(json.loads(found.stdout)) == 2, found.stderr[-3000:]


def test_finetune_refuses_then_runs_with_the_override(hostile, tmp_path):
    module, _ = hostile["reads"]
    train = tmp_path / "train.csv"
    train.write_text("text,label\n" + "".join(f"text number {i},{i % 2}\n" for i in range(20)))
    args = ["finetune", "--module", module, "--train", train, "--label-column", "label", "--out", tmp_path / "tuned",
            "--epochs", "1"]
    one_line_error(hubbeam_cli(*args), "ReadFile", "'default'")
    assert not (tmp_path / "tuned").exists()
    tuned = hubbeam_cli(*args, "--allow-unsafe-ops")
    assert tuned.returncode == 0, tuned.stderr[-3000:]
    assert audit_module(tmp_path / "tuned").unsafe["__call__"] == ("ReadFile",)  # still what it was


# --- the source allow-list ----------------------------------------------------------------------------------------

@pytest.fixture
def shelf(tmp_path, tiny_wordvec_module):
    """An allowed folder holding a module, and one outside it holding another."""
    import shutil

    allowed, outside = tmp_path / "allowed", tmp_path / "outside"
    shutil.copytree(tiny_wordvec_module, allowed / "wordvec")
    shutil.copytree(tiny_wordvec_module, outside / "wordvec")
    return allowed, outside


def test_the_allow_list_lets_allowed_handles_through_and_refuses_the_rest(shelf, monkeypatch):
    allowed, outside = shelf
    monkeypatch.setenv("HUBBEAM_ALLOWED_SOURCES", f"{allowed}, s3://{S3_BUCKET}/wordvec")
    assert hubbeam.resolve(str(allowed / "wordvec")) == str(allowed / "wordvec")
    (allowed / "link").symlink_to(outside / "wordvec")
    import shutil

    shutil.copytree(outside / "wordvec", Path(f"{allowed}-evil") / "wordvec")
    for handle in (str(outside / "wordvec"),
                   f"{allowed}/../outside/wordvec",  # '..'
                   f"file://{allowed}/../outside/wordvec", f"file://{allowed}/%2e%2e/outside/wordvec",
                   str(allowed / "link"),  # a symlink inside that points outside
                   f"{allowed}-evil/wordvec"):  # a sibling whose name starts like the allowed folder
        with pytest.raises(SourceNotAllowedError, match="HUBBEAM_ALLOWED_SOURCES") as info:
            hubbeam.resolve(handle)
        assert "\n" not in str(info.value)


def test_the_allow_list_refuses_remote_tricks_before_any_request(hub_http, monkeypatch, tmp_path):
    base = hub_http.base_url
    hub_http.add("/other/wordvec.tar.gz", body=hub_http.routes["/m/wordvec.tar.gz"].body)
    hub_http.add("/m/redirect-out.tar.gz", mode="redirect", location="/other/wordvec.tar.gz")
    hub_http.add("/m/redirect-in.tar.gz", mode="redirect", location="/m/wordvec.tar.gz")
    monkeypatch.setenv("HUBBEAM_ALLOWED_SOURCES", f"{base}/m")
    tricks = [
        f"{base}/other/wordvec.tar.gz",
        f"{base}/m/../other/wordvec.tar.gz",
        f"{base}/m/%2e%2e/other/wordvec.tar.gz",
        f"{base}/m%2f..%2fother/wordvec.tar.gz",
        f"{base}/m-evil/wordvec.tar.gz",
        f"http://user:pw@127.0.0.1:{hub_http.server_address[1]}@127.0.0.2:{hub_http.server_address[1]}/m/wordvec.tar.gz",
        f"https://127.0.0.1:{hub_http.server_address[1]}/m/wordvec.tar.gz",  # another scheme
        f"http://127.0.0.2:{hub_http.server_address[1]}\\@127.0.0.1:{hub_http.server_address[1]}/m/wordvec.tar.gz",
        f"{base}/m/..\\..\\other/wordvec.tar.gz",
        f"s3://{S3_BUCKET}/m/wordvec.tar.gz",
    ]
    for handle in tricks:
        with pytest.raises(SourceNotAllowedError, match="HUBBEAM_ALLOWED_SOURCES"):
            hubbeam.resolve(handle)
    assert sum(hub_http._counts.values()) == 0, dict(hub_http._counts)  # nothing was requested

    with pytest.raises(SourceNotAllowedError, match="redirect"):
        hubbeam.resolve(f"{base}/m/redirect-out.tar.gz")
    assert hub_http.count("/m/redirect-out.tar.gz") == 1 and hub_http.count("/other/wordvec.tar.gz") == 0
    assert Path(hubbeam.resolve(f"{base}/m/redirect-in.tar.gz")).is_dir()  # a redirect that stays inside
    assert Path(hubbeam.resolve(f"{base}/m/wordvec.tar.gz")).is_dir()


def test_the_allow_list_guards_object_stores_and_reads_a_config_file(s3_proxy, monkeypatch, tmp_path):
    config = tmp_path / "hubbeam.toml"
    config.write_text(f'allowed_sources = ["s3://{S3_BUCKET}/wordvec"]\n')
    monkeypatch.delenv("HUBBEAM_ALLOWED_SOURCES", raising=False)
    monkeypatch.setenv("HUBBEAM_CONFIG", str(config))
    for handle in (f"s3://{S3_BUCKET}/nested/deeper/wordvec", f"s3://{S3_BUCKET}/wordvec.tar.gz",
                   f"s3://{S3_BUCKET}/wordvec/../nested/deeper/wordvec", f"s3://other-{S3_BUCKET}/wordvec",
                   f"s3://{S3_BUCKET}/wordve%63", f"s3://{S3_BUCKET.upper()}/wordvec"):
        with pytest.raises(SourceNotAllowedError):
            hubbeam.resolve(handle)
    assert s3_proxy.requests == 0
    assert Path(hubbeam.resolve(f"s3://{S3_BUCKET}/wordvec")).is_dir()
    assert s3_proxy.requests > 0


def test_the_cli_and_the_beam_job_refuse_with_one_line(shelf, monkeypatch, tmp_path):
    allowed, outside = shelf
    monkeypatch.setenv("HUBBEAM_ALLOWED_SOURCES", str(allowed))
    corpus = tmp_path / "in.jsonl"
    corpus.write_text('{"id": "a", "text": "the cat"}\n')
    one_line_error(hubbeam_cli("embed", "--input", corpus, "--output", tmp_path / "out", "--module",
                               outside / "wordvec"), "HUBBEAM_ALLOWED_SOURCES")
    one_line_error(hubbeam_cli("encode", "--module", outside / "wordvec", "hello"), "HUBBEAM_ALLOWED_SOURCES")
    ok = hubbeam_cli("embed", "--input", corpus, "--output", tmp_path / "out", "--module", allowed / "wordvec")
    assert ok.returncode == 0, ok.stderr[-3000:]


# --- the DAGs -----------------------------------------------------------------------------------------------------

def test_the_dags_refuse_hostile_and_disallowed_modules(dagbag, hostile, shelf, tmp_path, monkeypatch):
    from airflow.utils.state import DagRunState

    bag = dagbag
    module, target = hostile["writes"]
    corpus = tmp_path / "in.jsonl"
    corpus.write_text('{"id": "a", "text": "dag text"}\n')
    conf = {"module": str(module), "input": str(corpus), "output": str(tmp_path / "out")}
    day = D1 + dt.timedelta(days=60)
    refused = bag.dags["embed_corpus"].test(logical_date=day, run_conf=full_conf(bag, "embed_corpus", conf))
    assert refused.state == DagRunState.FAILED and not target.exists()
    assert not (tmp_path / "out" / "_SUCCESS").exists()
    allowed_run = bag.dags["embed_corpus"].test(logical_date=day + dt.timedelta(hours=1),
                                                run_conf=full_conf(bag, "embed_corpus",
                                                                   {**conf, "allow_unsafe_ops": True}))
    assert allowed_run.state == DagRunState.SUCCESS and "dag text" in target.read_text()
    target.unlink()

    finetune = bag.dags["finetune_export_module"].test(
        logical_date=day, run_conf=full_conf(bag, "finetune_export_module", {
            "base_module": str(hostile["reads"][0]), "train": str(corpus), "label_column": "id",
            "module_store": str(tmp_path / "store")}))
    states = {ti.task_id: ti.state for ti in finetune.get_task_instances()}
    assert finetune.state == DagRunState.FAILED and states["finetune"] == "failed", states

    # With an allow-list, planning refuses a module outside it at once (no retries, nothing run).
    allowed, outside = shelf
    monkeypatch.setenv("HUBBEAM_ALLOWED_SOURCES", str(allowed))
    planned = bag.dags["embed_corpus"].test(logical_date=day + dt.timedelta(hours=2),
                                            run_conf=full_conf(bag, "embed_corpus", {**conf,
                                                                                     "module": str(outside / "wordvec")}))
    plan = next(ti for ti in planned.get_task_instances() if ti.task_id == "plan")
    assert planned.state == DagRunState.FAILED and plan.state == "failed" and plan.try_number == 1
