"""Any image input (issue #15 item 4): fixed or dynamic size, float or uint8, feature vectors or logits.

Each module here is a small tf.keras model exported with hubbeam.export_module whose "embedding" reports what
reached it (per image: mean, max and min pixel, height, width), so the tests see the pixels the job fed.
"""
import json

import numpy as np
import pyarrow.parquet as pq
import pytest

import hubbeam
from hubbeam.errors import HubbeamError
from hubbeam.hub.metadata import read_metadata, write_metadata
from hubbeam.pipeline.job import EmbedJob, run_embed
from tests.cli import hubbeam_cli

MULTI_PROCESS = ["--direct_running_mode=multi_processing", "--direct_num_workers=2"]


def _probe(tf, tf_keras, shape, dtype):
    """Input -> [mean, max, min, height, width] of each image, as float32."""
    inputs = tf_keras.Input(shape=shape, dtype=dtype, name="images")

    def stats(x):
        pixels = tf.cast(x, tf.float32)
        size = tf.cast(tf.shape(x)[1:3], tf.float32)[None] * tf.ones_like(pixels[:, :1, 0, 0])
        return tf.concat([tf.reduce_mean(pixels, [1, 2, 3])[:, None], tf.reduce_max(pixels, [1, 2, 3])[:, None],
                          tf.reduce_min(pixels, [1, 2, 3])[:, None], size], axis=1)

    return inputs, tf_keras.layers.Lambda(stats, name="features")(inputs)


@pytest.fixture(scope="session")
def image_modules(built_dir):
    """{kind: module folder} for each kind of image input, exported once per session."""
    import tensorflow as tf
    import tf_keras

    out = {}
    for name, shape, dtype in (("fixed_float", (32, 32, 3), "float32"), ("dynamic_float", (None, None, 3), "float32"),
                               ("fixed_uint8", (32, 32, 3), "uint8")):
        inputs, features = _probe(tf, tf_keras, shape, dtype)
        out[name] = hubbeam.export_module(tf_keras.Model(inputs, features), built_dir / f"images-{name}")
    inputs, features = _probe(tf, tf_keras, (32, 32, 3), "float32")
    logits = tf_keras.layers.Dense(3, name="logits", kernel_initializer="ones")(features)
    out["two_outputs"] = hubbeam.export_module(tf_keras.Model(inputs, [features, logits]),
                                               built_dir / "images-two-outputs",
                                               signatures=["default=__call__:features", "outputs=__call__"])
    return out


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory):
    """Five real images (white, black, a gradient; PNG, JPEG, different sizes) and one undecodable file."""
    from PIL import Image

    folder = tmp_path_factory.mktemp("images")
    Image.new("RGB", (40, 30), (255, 255, 255)).save(folder / "white.png")
    Image.new("RGB", (50, 70), (0, 0, 0)).save(folder / "black.png")
    ramp = np.tile(np.linspace(0, 255, 64).astype(np.uint8)[None, :, None], (48, 1, 3))
    Image.fromarray(ramp).save(folder / "ramp.png")
    Image.new("RGB", (64, 64), (255, 255, 255)).save(folder / "white.jpg", quality=95)
    Image.new("RGB", (20, 20), (128, 128, 128)).save(folder / "grey.png")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a JPEG")
    return folder


def embed(tmp_path, module, folder, *beam_args, **job_args) -> tuple[dict, dict]:
    """Run the job; (manifest, {file name: embedding})."""
    job = EmbedJob(input=f"{folder}/*", output=str(tmp_path / "out"), module=str(module), batch_size=4, **job_args)
    manifest = run_embed(job, list(beam_args))
    rows = [row for shard in manifest["outputs"]["embeddings"]
            for row in pq.read_table(tmp_path / "out" / shard["file"], columns=["id", "embedding"]).to_pylist()]
    return manifest, {row["id"].rsplit("/", 1)[-1]: np.asarray(row["embedding"]) for row in rows}


def check_run(manifest: dict, vectors: dict, size: tuple[int, int], white: float):
    """Every decodable image embedded once at size, the broken one a dead letter; white is 'full scale'."""
    assert manifest["rows_embedded"] == 5 and manifest["rejected_by_reason"] == {"undecodable_image": 1}
    assert manifest["module"]["image_size"] == list(size)
    assert sorted(vectors) == ["black.png", "grey.png", "ramp.png", "white.jpg", "white.png"]
    assert all(tuple(v[3:5]) == size for v in vectors.values()), "images reach the model at the run's size"
    np.testing.assert_allclose(vectors["white.png"][:3], [white] * 3, rtol=1e-6)
    np.testing.assert_allclose(vectors["black.png"][:3], [0, 0, 0], atol=1e-6)
    assert vectors["ramp.png"][1] == pytest.approx(white, rel=0.02) and vectors["ramp.png"][2] < 0.02 * white


def test_fixed_float_module_sees_pixels_in_0_1(tmp_path, image_modules, image_folder):
    assert read_metadata(image_modules["fixed_float"])["input"]["kind"] == "image"
    check_run(*embed(tmp_path, image_modules["fixed_float"], image_folder), size=(32, 32), white=1.0)


def test_uint8_module_sees_0_255_on_two_worker_processes(tmp_path, image_modules, image_folder):
    metadata = read_metadata(image_modules["fixed_uint8"])
    assert metadata["input"]["kind"] == "image" and metadata["input"]["dtype"] == "uint8"
    manifest, vectors = embed(tmp_path, image_modules["fixed_uint8"], image_folder, *MULTI_PROCESS)
    check_run(manifest, vectors, size=(32, 32), white=255.0)
    assert vectors["grey.png"][0] == pytest.approx(128.0)
    assert (tmp_path / "out" / "_SUCCESS").is_file()

    # encode --image feeds the module the same pixels as the job (one conversion for both).
    result = hubbeam_cli("encode", "--module", image_modules["fixed_uint8"], "--json",
                         "--image", image_folder / "white.png", image_folder / "ramp.png")
    assert result.returncode == 0, result.stderr
    encoded = json.loads(result.stdout)["embeddings"]
    np.testing.assert_allclose(encoded, [vectors["white.png"], vectors["ramp.png"]], rtol=1e-6)


def test_dynamic_size_takes_image_size_flag_else_metadata_else_fails_naming_the_flag(tmp_path, image_modules,
                                                                                     image_folder):
    module = image_modules["dynamic_float"]
    result = hubbeam_cli("embed", "--input", f"{image_folder}/*", "--output", tmp_path / "refused",
                         "--module", module)
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("hubbeam: error: ")]
    assert len(errors) == 1 and "--image-size" in errors[0] and "Traceback" not in result.stderr, result.stderr
    assert not (tmp_path / "refused" / "_SUCCESS").exists()

    check_run(*embed(tmp_path / "flag", module, image_folder, image_size="24,40"), size=(24, 40), white=1.0)

    # A copy whose metadata declares a size and a value range: both become the defaults.
    import shutil

    declared = tmp_path / "declared"
    shutil.copytree(module, declared)
    metadata = read_metadata(declared)
    metadata["input"].update(image_size=[16, 20], value_range=[-1.0, 1.0])
    write_metadata(declared, metadata)
    manifest, vectors = embed(tmp_path / "meta", declared, image_folder)
    assert manifest["module"]["image_size"] == [16, 20]
    np.testing.assert_allclose(vectors["white.png"][:5], [1, 1, 1, 16, 20], rtol=1e-6)
    np.testing.assert_allclose(vectors["black.png"][:3], [-1, -1, -1], rtol=1e-6)


def test_image_size_option_is_checked(image_modules, image_folder, tmp_path):
    assert EmbedJob(input="x", output="y", module="z", image_size="224").image_hw == (224, 224)
    assert EmbedJob(input="x", output="y", module="z", image_size="24, 40").image_hw == (24, 40)
    for bad in ("0,5", "a,b", "1,2,3"):
        with pytest.raises(HubbeamError, match="--image-size"):
            EmbedJob(input="x", output="y", module="z", image_size=bad)
    with pytest.raises(HubbeamError, match="--image-size 64,64: .* exactly 32,32"):
        embed(tmp_path, image_modules["fixed_float"], image_folder, image_size="64,64")


def test_logits_output_with_output_key(tmp_path, image_modules, image_folder):
    module = image_modules["two_outputs"]
    manifest, vectors = embed(tmp_path, module, image_folder, signature="outputs", output_key="logits")
    assert manifest["module"]["output_key"] == "logits" and manifest["module"]["dim"] == 3
    assert manifest["rejected_by_reason"] == {"undecodable_image": 1}
    # Dense(3) with unit weights: each logit is the sum of [mean, max, min, height, width].
    np.testing.assert_allclose(vectors["white.png"], [3 + 64] * 3, rtol=1e-5)



@pytest.mark.long  # make test-long (CI runs it): each run starts TensorFlow in two worker processes
@pytest.mark.parametrize("kind, job_args", [("fixed_float", {}), ("dynamic_float", {"image_size": "24,40"}),
                                            ("two_outputs", {"signature": "outputs", "output_key": "logits"})])
def test_each_image_kind_on_two_worker_processes_equals_one_process(kind, job_args, tmp_path, image_modules,
                                                                    image_folder):
    """(uint8 on two workers is tested above.) Same vectors, same dead letter, both workers used."""
    one_manifest, one = embed(tmp_path / "one", image_modules[kind], image_folder, **job_args)
    two_manifest, two = embed(tmp_path / "two", image_modules[kind], image_folder, *MULTI_PROCESS, **job_args)
    assert two_manifest["metrics"]["worker_processes"] == 2
    assert one_manifest["rejected_by_reason"] == two_manifest["rejected_by_reason"] == {"undecodable_image": 1}
    assert two_manifest["module"]["image_size"] == one_manifest["module"]["image_size"]
    assert sorted(one) == sorted(two) and all(np.allclose(one[k], two[k], rtol=1e-6) for k in one)
