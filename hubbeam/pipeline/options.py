"""The embed job's options, each written once: its type, default and help live on the EmbedJob field, and the
CLI's flags, the DAG's Params and the transforms' defaults are all read from here.

Light on purpose (no Beam, no TensorFlow): DAG files import it at parse time.
"""
from __future__ import annotations

import argparse
import dataclasses
import re
from dataclasses import dataclass, field

from hubbeam.errors import HubbeamError
from hubbeam.precision import PRECISION_HELP, PRECISIONS, check_precision

BATCH_SIZE = 64
CHUNK_ROWS = 512
MAX_TEXT_CHARS = 20_000
ALLOW_UNSAFE_OPS_HELP = ("load the module even if its serving functions read or write files or run Python "
                         "(see `hubbeam inspect`): only for a module you trust")
INPUT_FORMATS = ("auto", "parquet", "jsonl", "csv", "txt", "image")  # hubbeam.pipeline.sources reads each


def _option(default=dataclasses.MISSING, help: str = "", **argparse_kwargs):
    """A field with its CLI help (and argparse extras such as choices) beside it."""
    metadata = {"help": help, "argparse": argparse_kwargs}
    if callable(default) and not isinstance(default, (str, int, float, bool)):
        return field(default_factory=default, metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass
class EmbedJob:
    """Everything `hubbeam embed` takes besides Beam's own options."""

    input: str = _option(help="glob of input shards (local, gs://, s3:// via Beam filesystems)")
    output: str = _option(help="output folder; a rerun replaces it cleanly")
    module: str = _option(help="module handle (folder, .tar.gz, https://, gs://, s3://)")
    input_format: str = _option("auto", choices=INPUT_FORMATS,
                                help="default: from each file's extension (.parquet .jsonl .csv .tsv .txt, image types)")
    id_column: str = _option("id", help="id field (default: id; missing -> FILE:ROW)")
    text_column: str = _option("text", help="text field (default: text)")
    image_column: str = _option("image", help="binary image column in Parquet (default: image)")
    keep_columns: list[str] = _option(list, help="comma-separated input columns copied to the output")
    input_map: str | None = _option(None, metavar="INPUT=COLUMN,...",
                                    help="a signature with several inputs (e.g. --signature tokens), fed from "
                                         "Parquet/JSONL columns: which column feeds each input (default: the "
                                         "column of the input's name; list columns are padded to each batch's "
                                         "longest). A length input may be INPUT=len(COLUMN), the length of a list "
                                         "column; it is that by default where its column is absent or null and "
                                         "the signature has one list input")
    signature: str | None = _option(None, help="module signature (default: 'default')")
    output_key: str | None = _option(None, help="named output (default: 'default')")
    sha256: str | None = _option(None, help="pin the module's sha256 (archive or tree digest)")
    preprocessor: str | None = _option(None, metavar="HANDLE",
                                       help="a TF Hub BERT-style preprocessor (strings -> the inputs of --module, "
                                            "then the encoder): the pair embeds text; both digests are recorded")
    seq_length: int | None = _option(None, help="with --preprocessor: the most word pieces a text is packed to "
                                                "(default: the preprocessor's, 128); each batch packs only to "
                                                "what its longest text needs")
    precision: str | None = _option(None, choices=PRECISIONS, help=PRECISION_HELP)
    batch_size: int = _option(BATCH_SIZE, help=f"most rows per model call (default: {BATCH_SIZE})")
    chunk_rows: int = _option(CHUNK_ROWS, help="rows sorted by length together before batching; for images, rows "
                                               f"decoded ahead of the model (default: {CHUNK_ROWS})")
    max_text_chars: int = _option(MAX_TEXT_CHARS, help="longer texts are truncated and flagged truncated=true "
                                                       f"(default: {MAX_TEXT_CHARS})")
    image_size: str | None = _option(None, metavar="H,W",
                                     help="resize images to H,W pixels: needed by modules of dynamic size "
                                          "([None, None, None, 3]) whose metadata declares none; a module's "
                                          "fixed size cannot be changed")
    float16: bool = _option(False, help="store embeddings as float16")
    num_shards: int = _option(0, help="output shards (default: runner decides)")
    parquet_codec: str = _option("snappy", help="Parquet compression (default: snappy)")
    allow_unsafe_ops: bool = _option(False, help=ALLOW_UNSAFE_OPS_HELP + " (recorded in the manifest)")

    def __post_init__(self):
        for name in ("batch_size", "chunk_rows", "max_text_chars"):
            if getattr(self, name) < 1:
                raise HubbeamError(f"--{name.replace('_', '-')} must be positive (got {getattr(self, name)})")
        if self.num_shards < 0:
            raise HubbeamError(f"--num-shards must be 0 (the runner decides) or positive (got {self.num_shards})")
        if self.image_size is not None:
            parse_image_size(self.image_size)
        if self.input_map is not None:
            parse_input_map(self.input_map)
        if self.seq_length is not None and not self.preprocessor:
            raise HubbeamError("--seq-length is for a preprocessor + encoder pair: give --preprocessor too")
        check_precision(self.precision)  # bf16 on a CPU without it: refused before anything runs
        self.output = self.output.rstrip("/") or "/"

    @property
    def image_hw(self) -> tuple[int, int] | None:
        """--image-size as (height, width), or None."""
        return parse_image_size(self.image_size) if self.image_size is not None else None


def parse_image_size(text) -> tuple[int, int]:
    """"H,W" (or "HxW", or a single N for N,N; a list or tuple from Python callers) -> (height, width)."""
    parts = list(text) if isinstance(text, (list, tuple)) else str(text).lower().replace("x", ",").split(",")
    try:
        size = tuple(int(str(p).strip()) for p in parts)
    except ValueError:
        size = ()
    if len(size) == 1:
        size = size * 2
    if len(size) != 2 or min(size) < 1 or max(size) > 8192:
        raise HubbeamError(f"--image-size must be HEIGHT,WIDTH in pixels, e.g. 224,224 (got {text!r})")
    return size


LENGTH_OF = re.compile(r"^len\((.+)\)$")  # INPUT=len(COLUMN): the length of a list column


def parse_input_map(text) -> dict[str, str]:
    """"tokens=words,sequence_len=len(words)" (or a dict from Python callers) -> {input: column expression}."""
    if isinstance(text, dict):
        pairs = [(str(k), str(v)) for k, v in text.items()]
    else:
        pairs = [tuple(p.strip() for p in item.split("=", 1)) for item in str(text).split(",") if item.strip()]
    if not pairs or any(len(p) != 2 or not p[0] or not p[1] for p in pairs):
        raise HubbeamError(f"--input-map must be INPUT=COLUMN pairs separated by commas, e.g. "
                           f"tokens=words,sequence_len=len(words) (got {text!r})")
    names = [name for name, _ in pairs]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise HubbeamError(f"--input-map names input {', '.join(repeated)} more than once")
    return dict(pairs)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """EmbedJob's fields as flags. Each --dashed-name also answers to --dashed_name: Airflow's Beam operator
    writes pipeline options in that form."""
    for f in dataclasses.fields(EmbedJob):
        name = f.name.replace("_", "-")
        flags = [f"--{name}", *([f"--{f.name}"] if "_" in f.name else [])]
        kwargs = {"help": f.metadata["help"], **f.metadata["argparse"]}
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            kwargs["required"] = True
        elif f.type == "bool":
            kwargs["action"] = "store_true"
        elif f.type == "list[str]":
            kwargs["default"] = ""
        else:
            kwargs["default"] = f.default
            if f.type in ("int", "int | None"):
                kwargs["type"] = int
        parser.add_argument(*flags, **kwargs)


def job_from_args(args: argparse.Namespace) -> EmbedJob:
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(EmbedJob)}
    values["keep_columns"] = [c.strip() for c in values["keep_columns"].split(",") if c.strip()]
    return EmbedJob(**values)
