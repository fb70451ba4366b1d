"""`hubbeam finetune`: real modules trained under a head; the exported encoder carries the updated weights.

The proof that weights were saved: the exported module's embeddings differ from the base module's, and a
fresh Python process that loads the export gets the in-memory fine-tuned encoder's embeddings back.
"""
import csv
import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import hubbeam
import hubbeam.export
from hubbeam.hub.digest import tree_sha256
from hubbeam.hub.metadata import read_metadata
from tests.cli import hubbeam_cli, hubbeam_cli_without_tensorflow

GOOD = ["great", "wonderful", "excellent", "lovely"]
BAD = ["terrible", "awful", "boring", "dreadful"]
NOUNS = ["movie", "meal", "book", "hotel", "concert", "game", "service", "film"]
PROBES = ["the concert was lovely", "a dreadful hotel", "completely unrelated words about gardening"]


def cosine(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)


def embed_in_fresh_process(module: Path, inputs, preprocessor: Path | None = None) -> np.ndarray:
    """Load the module (behind preprocessor, if given) in a new interpreter (nothing shared with this one) and
    embed inputs there."""
    payload = Path(module).parent / "fresh-inputs.json"
    payload.write_text(json.dumps(np.asarray(inputs).tolist() if not isinstance(inputs, list) else inputs))
    code = ("import json, sys, numpy as np, hubbeam\n"
            "inputs = json.load(open(sys.argv[2]))\n"
            "embedder = hubbeam.load(sys.argv[1], preprocessor=(sys.argv[3:] or [None])[0])\n"
            "data = inputs if embedder.input_kind == 'text' else np.asarray(inputs, np.float32)\n"
            "print(json.dumps(np.asarray(embedder(data), np.float64).tolist()))\n")
    extra = [str(preprocessor)] if preprocessor else []
    out = subprocess.run([sys.executable, "-c", code, str(module), str(payload), *extra], capture_output=True,
                         text=True, env=os.environ.copy(), timeout=300)
    assert out.returncode == 0, out.stderr
    return np.array(json.loads(out.stdout.strip().splitlines()[-1]))


def write_csv(path: Path, rows: list[dict]) -> Path:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def sentiment_rows() -> list[dict]:
    rows = []
    for noun, (good, bad) in itertools.product(NOUNS, zip(GOOD, BAD)):
        rows.append({"text": f"the {noun} was {good}", "label": "pos"})
        rows.append({"text": f"the {noun} was {bad}", "label": "neg"})
    return rows  # 64 rows


def assert_weights_saved(result, base: Path, inputs, *, base_differs_by=1e-4):
    """The export differs from the base, and a fresh process reproduces the in-memory fine-tuned encoder."""
    import tensorflow as tf

    exported = result.path
    metadata = read_metadata(exported)
    assert metadata["weights_sha256"] == tree_sha256(exported / "variables")
    assert metadata["weights_sha256"] != read_metadata(base)["weights_sha256"]
    base_vectors = hubbeam.load(str(base))(inputs)
    in_memory = result.encoder(tf.constant(inputs), training=False).numpy()
    fresh = embed_in_fresh_process(exported, inputs)
    assert np.abs(fresh - base_vectors).max() > base_differs_by, "the export still has the base weights"
    assert np.abs(in_memory - base_vectors).max() > base_differs_by
    assert cosine(fresh, in_memory).min() >= 0.9999
    np.testing.assert_allclose(fresh, in_memory, rtol=1e-4, atol=1e-5)


def assert_reusable_like(base: Path, exported: Path):
    import tensorflow_hub as hub

    base_obj, obj = hub.load(str(base)), hub.load(str(exported))
    traces = sorted({v for fn in obj.__call__.concrete_functions for v in fn.structured_input_signature[0]
                     if isinstance(v, bool)})
    assert traces == [False, True]
    assert len(obj.variables) == len(base_obj.variables) > 0
    assert len(obj.trainable_variables) == len(base_obj.trainable_variables) > 0
    assert len(obj.regularization_losses) == len(base_obj.regularization_losses)
    assert sorted(obj.signatures) == sorted(base_obj.signatures)
    assert hub.KerasLayer(str(exported), trainable=True).trainable_weights


# --- text ---------------------------------------------------------------------------------------------------------

def test_finetune_minilm_exports_the_updated_encoder(minilm_module, tmp_path):
    rows = sentiment_rows()
    train = write_csv(tmp_path / "train.csv", rows[:48])
    evaluation = write_jsonl(tmp_path / "eval.jsonl", rows[48:])
    result = hubbeam.export.finetune(str(minilm_module), train, "label", tmp_path / "minilm-reviews",
                                     eval_file=evaluation, epochs=1, batch_size=16, seed=1)
    report = result.report
    assert report.metric == "accuracy" and report.baseline >= 0.75  # minilm separates sentiment words frozen
    assert report.finetuned >= report.baseline  # one epoch on an easy task must not make it worse
    assert report.rows == {"train": 48, "eval": 16} and report.steps == 3
    assert report.classes == ["neg", "pos"] and report.eval == str(evaluation)
    # The reported fine-tuned accuracy is the in-memory model's accuracy on the eval file.
    predicted = result.predict([r["text"] for r in rows[48:]])
    assert report.finetuned == pytest.approx(np.mean([p == r["label"] for p, r in zip(predicted, rows[48:])]))

    metadata = read_metadata(result.path)
    assert metadata["name"] == "minilm-finetuned" and metadata["version"] == "1"
    assert metadata["parent"]["handle"] == str(minilm_module)
    assert metadata["parent"]["sha256"] == tree_sha256(minilm_module)
    assert metadata["finetune"]["baseline"] == report.baseline
    assert metadata["finetune"]["finetuned"] == report.finetuned
    assert metadata["input"]["kind"] == "text" and metadata["output_dim"] == 384
    assert (result.path / "assets" / "vocab.txt").read_bytes() == (minilm_module / "assets" / "vocab.txt").read_bytes()
    assert_reusable_like(minilm_module, result.path)
    assert_weights_saved(result, minilm_module, PROBES)


def test_finetune_wordvec_through_the_cli(tiny_wordvec_module, tmp_path):
    """Labels follow the words "cat"/"sat" vs "mat"/","; the report comes out as JSON on stdout."""
    rows = [{"text": f"the {w} {v}", "label": int(w in ("cat", "sat"))}
            for w, v in itertools.product(["cat", "sat", "mat", ","], ["the", "cat", "mat", "sat", "zebra"])]
    train = write_jsonl(tmp_path / "train.jsonl", rows * 2)
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows[::3]), tmp_path / "eval.parquet")
    result = hubbeam_cli("finetune", "--module", tiny_wordvec_module, "--train", train, "--label-column", "label",
                         "--eval", tmp_path / "eval.parquet", "--out", tmp_path / "tuned", "--epochs", "3",
                         "--batch-size", "8", "--learning-rate", "0.05", "--name", "tiny-tuned", "--version", "2")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["name"] == "tiny-tuned" and report["version"] == "2" and report["classes"] == [0, 1]
    assert report["rows"] == {"train": 40, "eval": 7} and report["steps"] == 15
    assert set(report) >= {"baseline", "finetuned", "metric", "weights_sha256", "parent", "epoch_losses"}
    metadata = read_metadata(tmp_path / "tuned")
    assert metadata["finetune"]["finetuned"] == report["finetuned"]
    assert metadata["weights_sha256"] == report["weights_sha256"] == tree_sha256(tmp_path / "tuned" / "variables")
    assert (tmp_path / "tuned" / "assets" / "tokens.txt").read_text() == "the\ncat\nsat\nmat\n,\n"
    sentences = ["the cat", "mat ,", "zebra"]
    tuned = hubbeam.load(str(tmp_path / "tuned"))(sentences)
    assert np.abs(tuned - hubbeam.load(str(tiny_wordvec_module))(sentences)).max() > 1e-3
    assert_reusable_like(tiny_wordvec_module, tmp_path / "tuned")


# --- images -------------------------------------------------------------------------------------------------------

def test_finetune_digits_on_image_files(digits_module, tmp_path):
    from PIL import Image
    from sklearn.datasets import load_digits

    data = load_digits()
    images = tmp_path / "images"
    images.mkdir()
    rows = []
    for i in range(300):
        grid = (data.images[i] / 16 * 255).round().astype(np.uint8)
        Image.fromarray(grid, mode="L").resize((32, 32), Image.Resampling.NEAREST).save(images / f"{i}.png")
        rows.append({"image": f"images/{i}.png", "digit": int(data.target[i])})
    train = write_csv(tmp_path / "digits.csv", rows)
    result = hubbeam.export.finetune(str(digits_module), train, "digit", tmp_path / "digits-tuned",
                                     image_column="image", epochs=2, learning_rate=1e-3)
    report = result.report
    assert report.classes == [str(d) for d in range(10)] and report.input_column == "image"  # CSV: strings
    assert report.rows["train"] + report.rows["eval"] == 300 and 55 <= report.rows["eval"] <= 65
    assert "held out (stratified" in report.eval
    assert report.baseline >= 0.8 and report.finetuned >= 0.8  # a good encoder stays good
    metadata = read_metadata(result.path)
    assert metadata["input"]["image_size"] == [32, 32] and metadata["finetune"]["rows"] == report.rows
    assert_reusable_like(digits_module, result.path)

    from hubbeam.images import decode_image

    probes = np.stack([decode_image((images / f"{i}.png").read_bytes(), (32, 32)) for i in (0, 1, 2)])
    assert_weights_saved(result, digits_module, probes)


# --- bad input ----------------------------------------------------------------------------------------------------

def assert_one_line_error(result, message, out: Path):
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert "Traceback" not in result.stderr
    assert [line for line in lines if line.startswith("hubbeam:")] == [lines[-1]], result.stderr
    assert lines[-1].startswith("hubbeam: error: ") and message in lines[-1], result.stderr
    assert not out.exists(), "something was written for a failed fine-tune"


@pytest.mark.parametrize("files, args, message", [
    ({"t.csv": "sentence,label\nhi,a\nho,b\n"}, [], "t.csv has no column 'text'; its columns: sentence, label"),
    ({"t.csv": "text,label\nhi,a\nho,b\n"}, ["--label-column", "y"],
     "t.csv has no column 'y'; its columns: text, label"),
    ({"t.csv": "text,label\nhi,a\nho,a\nhu,a\n"}, [], "label column 'label' of"),
    ({"t.csv": "text,label\n"}, [], "t.csv has no rows"),
    ({"t.csv": ""}, [], "t.csv is empty"),
    ({"t.csv": "text,label\nhi,a\nho,\n"}, [], "t.csv row 2: empty label in column 'label'"),
    ({"t.csv": "text,label\nhi,a\nho,b\n", "e.jsonl": '{"text": "x", "label": "c"}\n'}, ["--eval", "e.jsonl"],
     "e.jsonl has labels not in the training data: c"),
    ({"t.txt": "hi\n"}, [], "unknown file type"),
])
def test_bad_training_data_is_a_one_line_error(tiny_wordvec_module, tmp_path, files, args, message):
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    train = tmp_path / next(iter(files))
    base = ["finetune", "--module", tiny_wordvec_module, "--train", train, "--out", tmp_path / "out"]
    if "--label-column" not in args:
        base += ["--label-column", "label"]
    # The data is checked before TensorFlow is imported: importing it would raise in this child.
    result = hubbeam_cli_without_tensorflow(*base, *[str(tmp_path / a) if a.endswith((".jsonl", ".csv")) else a
                                                     for a in args])
    assert_one_line_error(result, message, tmp_path / "out")
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


@pytest.mark.parametrize("module, message", [
    ("missing", "no such module folder or archive"),
    ("not-a-model", "is not a SavedModel folder (no saved_model.pb)"),
])
def test_a_path_that_is_not_a_model_is_a_one_line_error(tmp_path, module, message):
    (tmp_path / "not-a-model").mkdir()
    (tmp_path / "not-a-model" / "readme.txt").write_text("hello")
    write_csv(tmp_path / "t.csv", sentiment_rows()[:10])
    result = hubbeam_cli("finetune", "--module", tmp_path / module, "--train", tmp_path / "t.csv",
                         "--label-column", "label", "--out", tmp_path / "out")
    assert_one_line_error(result, message, tmp_path / "out")


def test_image_data_for_a_text_module_is_a_one_line_error(tiny_wordvec_module, tmp_path):
    (tmp_path / "t.csv").write_text("image,label\na.png,x\nb.png,y\nc.png,x\nd.png,y\ne.png,x\n")
    result = hubbeam_cli("finetune", "--module", tiny_wordvec_module, "--train", tmp_path / "t.csv",
                         "--label-column", "label", "--image-column", "image", "--out", tmp_path / "out")
    assert_one_line_error(result, "takes text input, but the data gives image; use --text-column", tmp_path / "out")


def test_a_tf1_hub_module_cannot_be_fine_tuned(tf1_module, tmp_path):
    write_csv(tmp_path / "t.csv", sentiment_rows()[:10])
    with pytest.raises(hubbeam.HubbeamError, match="is not a TF2 reusable SavedModel.*hubbeam export"):
        hubbeam.export.finetune(str(tf1_module), tmp_path / "t.csv", "label", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_finetuning_helps_where_the_frozen_encoder_cannot_tell_the_classes_apart(tmp_path):
    """Issue 17: fine-tuning is shown to *help*, not only to run. In this word-vector module the positive and
    the negative adjectives share one vector, so every frozen sentence embedding of a positive review equals
    its negative twin's and a linear head on them is at chance; fine-tuning trains the word vectors and pulls
    the adjectives apart."""
    from hubbeam.modules import build_module

    rng = np.random.default_rng(0)
    shared = " ".join(f"{v:.4f}" for v in rng.normal(size=8))  # one vector for all eight adjectives
    lines = [f"{word} {' '.join(f'{v:.4f}' for v in rng.normal(size=8))}" for word in ["the", "was", *NOUNS]]
    lines += [f"{word} {shared}" for word in GOOD + BAD]
    vectors = tmp_path / "vectors.txt"
    vectors.write_text("\n".join(lines) + "\n")
    module = build_module("wordvec", tmp_path / "blind", embeddings=vectors, oov_buckets=1)

    rows = sentiment_rows()
    # Eval: reviews of two nouns never trained on, with every adjective (balanced: 8 positive, 8 negative).
    train, evaluation = write_csv(tmp_path / "train.csv", rows[:48]), write_csv(tmp_path / "eval.csv", rows[48:])
    result = hubbeam.export.finetune(str(module), train, "label", tmp_path / "tuned", eval_file=evaluation,
                                     epochs=8, batch_size=8, learning_rate=0.05, seed=0)
    report = result.report
    assert report.baseline <= 0.6, "the frozen encoder should not separate the classes in this setup"
    assert report.finetuned >= report.baseline + 0.3, (report.baseline, report.finetuned)
    assert report.finetuned >= 0.9
