"""`make demo`'s own steps on a small corpus (issue 17): a broken demo fails CI, not a new user's first run.

`make demo` is `python -m hubbeam.demo --workdir build/demo --modules-dir build/modules`; this runs the same
module with the session's built modules (so nothing is built twice) and 40 documents instead of 300.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hubbeam.modules import BUNDLED

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.long  # make test-long (CI runs it): four `airflow dags test` runs, about four minutes here
def test_the_demo_runs_end_to_end_and_its_output_reconciles(request, built_dir, tmp_path):
    fixtures = {"minilm": "minilm_module", "digits": "digits_module", "wordvec": "wordvec_module",
                "use-multilingual": "use_module", "minilm-preprocess": "preprocess_module",
                "minilm-encoder": "encoder_module"}
    assert set(fixtures) == set(BUNDLED), "a new bundled module needs its session fixture here"
    for fixture in fixtures.values():
        request.getfixturevalue(fixture)
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "HUBBEAM_DATA_ROOT")}
    env.pop("HUBBEAM_CACHE_DIR", None)  # the demo keeps its cache in its workdir, as `make demo` does
    workdir = tmp_path / "demo"
    result = subprocess.run([sys.executable, "-m", "hubbeam.demo", "--workdir", str(workdir), "--modules-dir",
                             str(built_dir), "--rows", "40"], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=1500)
    assert result.returncode == 0, (result.stdout[-3000:], result.stderr[-5000:])
    out = result.stdout
    assert out.count("already built") == len(BUNDLED), out[:2000]
    for step in ("[inspect]", "[resolve]", "[corpus]  40 documents", "[outputs]", "[search]", "demo finished"):
        assert step in out, step

    data = workdir / "data"
    manifests = [json.loads(p.read_text()) for p in sorted((data / "embeddings").rglob("manifest.json"))]
    kinds = sorted(m["module"]["input_kind"] for m in manifests)
    assert kinds == ["image", "text"], kinds
    for path in (data / "embeddings").rglob("manifest.json"):
        manifest = json.loads(path.read_text())
        assert manifest["rows_read"] == manifest["rows_embedded"] + manifest["rows_rejected"] > 0
        assert (path.parent / "_SUCCESS").is_file() and (path.parent / "report.html").is_file()
    text = next(m for m in manifests if m["module"]["input_kind"] == "text")
    assert text["rows_read"] == 40
    [published] = list((data / "modules").glob("*/*/_PUBLISHED.json"))
    assert "published " in out and "fine-tuned" in out
    assert json.loads(published.read_text())["tree_sha256"]
    # The first run looks clean: no traceback, no TensorFlow start-up chatter on the terminal.
    for noise in ("Traceback", "cuInit", "oneDNN custom operations", "apitools not found"):
        assert noise not in out + result.stderr, noise
