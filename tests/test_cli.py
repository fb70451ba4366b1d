"""The `hubbeam` command as users run it: a real subprocess, real modules, exit codes and output."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from tests.cli import hubbeam_cli as hubbeam

SUBCOMMANDS = ["resolve", "inspect", "build-module", "encode", "embed", "export", "finetune", "pack", "publish",
               "search", "report"]


def test_console_script_is_installed():
    script = Path(sys.executable).parent / "hubbeam"
    result = subprocess.run([str(script), "--version"], capture_output=True, text=True, check=True)
    assert result.stdout.startswith("hubbeam ")


def test_help_for_every_subcommand():
    top = hubbeam("--help")
    assert top.returncode == 0
    for name in SUBCOMMANDS:
        assert name in top.stdout
        sub = hubbeam(name, "--help")
        assert sub.returncode == 0 and f"usage: hubbeam {name}" in sub.stdout, sub.stderr


def test_help_does_not_import_tensorflow():
    code = "import sys, hubbeam.cli as c\ntry: c.main(['--help'])\nexcept SystemExit: pass\nprint('tensorflow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().endswith("False")


def test_importing_hubbeam_leaves_the_environment_alone():
    code = ("import os\nbefore = dict(os.environ)\nimport hubbeam, hubbeam.cli\n"
            "print(dict(os.environ) == before)")
    env = {k: v for k, v in os.environ.items() if k not in ("TF_USE_LEGACY_KERAS", "TF_CPP_MIN_LOG_LEVEL")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert out.stdout.strip() == "True"


def test_load_selects_keras_2_itself(tiny_wordvec_module):
    """TF_USE_LEGACY_KERAS is set by hubbeam.tfenv, just before TensorFlow is imported, not by the caller."""
    env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    code = ("import os, hubbeam\nassert 'TF_USE_LEGACY_KERAS' not in os.environ\n"
            f"e = hubbeam.load({str(tiny_wordvec_module)!r})\n"
            "print(e(['hello world']).shape, os.environ['TF_USE_LEGACY_KERAS'])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["(1,", "4)", "1"]


def test_inspect_prints_signatures_and_json(tiny_wordvec_module):
    text = hubbeam("inspect", tiny_wordvec_module)
    assert text.returncode == 0, text.stderr
    for expected in ("signatures", "default", "tokens", "sequence_len", "trainable", "metadata", "wordvec"):
        assert expected in text.stdout
    as_json = hubbeam("inspect", tiny_wordvec_module, "--json")
    info = json.loads(as_json.stdout)
    assert info["default"] == {"signature": "default", "output": "default", "dim": 4, "input_kind": "text",
                               "image_size": None}
    assert info["trainable_variables"]["count"] == 1
    assert info["trainable_variables"]["parameters"] == (5 + 3) * 4
    outputs = {o["name"]: o for o in info["signatures"]["default"]["outputs"]}
    assert outputs["default"] == {"name": "default", "dtype": "float32", "shape": [None, 4]}
    assert info["metadata"]["name"] == "wordvec" and info["reusable"] is True


def test_resolve_prints_path_and_digests(tiny_wordvec_module):
    out = json.loads(hubbeam("resolve", tiny_wordvec_module, "--json", check=True).stdout)
    assert out["path"] == str(tiny_wordvec_module)
    pinned = hubbeam("resolve", f"{tiny_wordvec_module}#sha256={out['sha256']}")
    assert pinned.returncode == 0 and pinned.stdout.strip() == str(tiny_wordvec_module)


@pytest.mark.parametrize("args, message", [
    (["inspect", "/no/such/module"], "no such module folder or archive: /no/such/module"),
    (["inspect", "ftp://example.org/m"], "unsupported handle scheme 'ftp://'"),
    (["resolve", "/tmp#sha256=xyz"], "invalid sha256 pin"),
    (["build-module", "digits", "--out", "/tmp/x", "--embeddings", "v.txt"], "--embeddings only applies"),
])
def test_user_errors_are_one_line_with_exit_code_2(args, message):
    result = hubbeam(*args)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("hubbeam: error: ") and message in lines[-1], result.stderr
    assert "Traceback" not in result.stderr


def test_wrong_pin_and_unknown_signature_exit_2(tiny_wordvec_module):
    wrong = hubbeam("resolve", tiny_wordvec_module, "--sha256", "0" * 64)
    assert wrong.returncode == 2 and "sha256 mismatch" in wrong.stderr
    unknown = hubbeam("encode", "--module", tiny_wordvec_module, "--signature", "nope", "hi")
    assert unknown.returncode == 2 and "available: __call__, default, tokens" in unknown.stderr


def test_encode_text_and_images(tiny_wordvec_module, digits_module, tmp_path):
    text = hubbeam("encode", "--module", tiny_wordvec_module, "--json", "the cat", "the mat")
    assert text.returncode == 0, text.stderr
    vectors = json.loads(text.stdout)["embeddings"]
    assert len(vectors) == 2 and len(vectors[0]) == 4

    from PIL import Image

    files = []
    for i, colour in enumerate([0, 255]):
        files.append(tmp_path / f"img{i}.png")
        Image.new("RGB", (40, 30), (colour, colour, colour)).save(files[-1])
    images = hubbeam("encode", "--module", digits_module, "--image", *files)
    assert images.returncode == 0, images.stderr
    assert "2 inputs -> 64-d embeddings" in images.stdout and "cosine similarity" in images.stdout
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    refused = hubbeam("encode", "--module", digits_module, "--image", bad)
    assert refused.returncode == 2 and "not a recognised image format" in refused.stderr
    mismatch = hubbeam("encode", "--module", digits_module, "hello")
    assert mismatch.returncode == 2 and "takes image input, not text" in mismatch.stderr


def test_build_module_list_names_the_registry():
    from hubbeam.modules import BUNDLED

    result = hubbeam("build-module", "--list")
    assert result.returncode == 0 and result.stdout.split() == list(BUNDLED), result.stderr


def test_build_module_command(tmp_path, tiny_vectors_file):
    out = tmp_path / "wv"
    result = hubbeam("build-module", "wordvec", "--out", out, "--embeddings", tiny_vectors_file, "--oov-buckets", 2)
    assert result.returncode == 0, result.stderr
    assert (out / "saved_model.pb").is_file() and (out / "assets.extra" / "hubbeam_module.json").is_file()
    assert not list(tmp_path.glob(".wv.*")), "no staging folders left behind"


def test_the_job_is_a_library_and_the_cli_owns_the_flags():
    """`python -m hubbeam embed` is how the DAG runs the job; hubbeam.pipeline.job does not import the CLI (the
    two used to import each other), and importing the CLI pulls in neither Beam nor TensorFlow."""
    import ast

    job = Path(__file__).resolve().parents[1] / "hubbeam" / "pipeline" / "job.py"
    imported = {node.module for node in ast.walk(ast.parse(job.read_text())) if isinstance(node, ast.ImportFrom)}
    imported |= {a.name for node in ast.walk(ast.parse(job.read_text())) if isinstance(node, ast.Import)
                 for a in node.names}
    assert not any(name and name.startswith("hubbeam.cli") for name in imported), imported
    code = "import sys, hubbeam.cli; print(sorted(m for m in ('apache_beam', 'tensorflow') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stderr[-2000:]


def test_the_child_that_refuses_tensorflow_does_refuse_it(tiny_wordvec_module):
    """What makes "refused before TensorFlow is loaded" checks able to fail: loading a module there breaks."""
    from tests.cli import hubbeam_cli_without_tensorflow

    result = hubbeam_cli_without_tensorflow("encode", "--module", tiny_wordvec_module, "the cat")
    assert result.returncode != 0 and "TENSORFLOW WAS IMPORTED" in result.stderr, result.stderr[-2000:]
    assert hubbeam_cli_without_tensorflow("--help").returncode == 0


def test_commands_that_load_tensorflow_write_nothing_of_its_native_logs(tiny_wordvec_module):
    """A command's output is its own: TensorFlow's native start-up lines ("failed call to cuInit", oneDNN notices)
    are silenced unless TF_CPP_MIN_LOG_LEVEL is set or --verbose asks for them."""
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    for args in (["inspect", tiny_wordvec_module], ["encode", "--module", tiny_wordvec_module, "the cat"]):
        result = hubbeam(*args, env=env)
        assert result.returncode == 0 and result.stdout and result.stderr == "", (args, result.stderr[-2000:])
    verbose = hubbeam("--verbose", "encode", "--module", tiny_wordvec_module, "the cat", env=env)
    assert verbose.returncode == 0 and verbose.stderr.strip(), "--verbose keeps TensorFlow's native logs"
