"""Every environment setting hubbeam reads, declared once: its name, its default, how its text is parsed.

Values are read from os.environ each time `.get()` is called, never at import: a Beam worker, an Airflow
task or a test may set them after hubbeam is imported. Environment variables hubbeam only *sets* for child
processes (the demo's, the DAGs' `AIRFLOW_CONN_…`) are not settings and are not listed here.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable

from hubbeam.errors import HubbeamError


@dataclass(frozen=True)
class Setting:
    name: str
    doc: str
    default: str | Callable[[], str] | None = None  # text parsed like the variable's; a callable at read time
    parse: Callable[[str], Any] = str
    blank_is_unset: bool = True  # `NAME=` means the default; else the empty text is parsed (and may fail)
    complaint: str | None = None  # a bad value's one-line error, {name} and {value} filled in (else the parser's)

    def get(self) -> Any:
        text = os.environ.get(self.name)
        if text is None or (self.blank_is_unset and not text):
            text = self.default() if callable(self.default) else self.default
        if text is None:
            return None
        if self.complaint is None:
            return self.parse(text)
        try:
            return self.parse(text)
        except ValueError:
            raise HubbeamError(self.complaint.format(name=self.name, value=text)) from None


def _in_cwd(path: str) -> Callable[[], str]:
    return lambda: os.path.abspath(path)


_SECONDS = "{name}={value!r} is not a number of seconds"


def _local_folder(text: str) -> str:
    """tensorflow_hub's cache may be a gs:// folder; hubbeam's locks and atomic renames need a local one."""
    from hubbeam import storage

    try:
        where = storage.location(text)
    except HubbeamError:
        raise ValueError(text) from None
    if not where.is_local:
        raise ValueError(text)
    return str(where.local_path)


def _base_url(text: str) -> str:
    """A mirror's base URL: http(s)://host[:port][/prefix], without a trailing slash, query or fragment."""
    import urllib.parse

    parts = urllib.parse.urlsplit(text.strip())
    if parts.scheme.lower() not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
        raise ValueError(text)
    return text.strip().rstrip("/")


_BASE_URL = "{name}={value!r} is not a base URL (http(s)://host[:port][/prefix])"

# --- the module cache and what it accepts (hubbeam.hub) ------------------------------------------------------------
TFHUB_CACHE_DIR = Setting("TFHUB_CACHE_DIR", "tensorflow_hub's cache folder: hubbeam's cache root when "
                          "HUBBEAM_CACHE_DIR is unset (its own modules/ folder there, beside tensorflow_hub's)",
                          parse=_local_folder, complaint="{name}={value!r} is not a local folder: hubbeam's "
                          "cache must be local (set HUBBEAM_CACHE_DIR)")
CACHE_DIR = Setting("HUBBEAM_CACHE_DIR", "the module cache (one folder per handle under modules/)",
                    default=lambda: TFHUB_CACHE_DIR.get() or os.path.join(os.path.expanduser("~"), ".cache",
                                                                          "hubbeam"))
TFHUB_URL = Setting("HUBBEAM_TFHUB_URL", "where https://tfhub.dev/… handles are downloaded from (a mirror, a "
                    "test server); the handle, its cache folder and provenance stay tfhub.dev's",
                    default="https://tfhub.dev", parse=_base_url, complaint=_BASE_URL)
KAGGLE_URL = Setting("HUBBEAM_KAGGLE_URL", "where https://www.kaggle.com/models/… handles are downloaded from; "
                     "the handle, its cache folder and provenance stay Kaggle's",
                     default="https://www.kaggle.com", parse=_base_url, complaint=_BASE_URL)
LOCK_TIMEOUT = Setting("HUBBEAM_LOCK_TIMEOUT", "seconds to wait for a live process fetching the same handle",
                       default="3600", parse=float, blank_is_unset=False)
MAX_EXTRACT_BYTES = Setting("HUBBEAM_MAX_EXTRACT_BYTES", "largest module download or extracted archive, bytes",
                            default=str(16 * 1024**3), parse=int, blank_is_unset=False)
ALLOWED_SOURCES = Setting("HUBBEAM_ALLOWED_SOURCES", "prefixes modules may come from (commas or spaces); "
                          "unset: any source; set but empty: none", blank_is_unset=False)
CONFIG = Setting("HUBBEAM_CONFIG", "a TOML file whose `allowed_sources` list is used when HUBBEAM_ALLOWED_SOURCES "
                 "is unset")

# --- storage and HTTP (hubbeam.storage, hubbeam.hub.fetch) -------------------------------------------------------
CONNECT_TIMEOUT = Setting("HUBBEAM_CONNECT_TIMEOUT", "connect timeout of every storage and HTTP client, seconds",
                          default="10", parse=float, blank_is_unset=False, complaint=_SECONDS)
READ_TIMEOUT = Setting("HUBBEAM_READ_TIMEOUT", "read timeout of every storage and HTTP client, seconds",
                       default="60", parse=float, blank_is_unset=False, complaint=_SECONDS)
S3_ENDPOINT_URL = Setting("HUBBEAM_S3_ENDPOINT_URL", "an S3-compatible server (MinIO, moto), for hubbeam and "
                          "Beam's S3 filesystem; else botocore's AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL",
                          blank_is_unset=False)
AWS_ENDPOINT_URL_S3 = Setting("AWS_ENDPOINT_URL_S3", "botocore's own S3 endpoint variable (botocore reads it; "
                              "hubbeam only makes a new S3 client when it changes)", blank_is_unset=False)
AWS_ENDPOINT_URL = Setting("AWS_ENDPOINT_URL", "botocore's own endpoint variable for every AWS service (as "
                           "AWS_ENDPOINT_URL_S3)", blank_is_unset=False)
GCS_TOKEN = Setting("HUBBEAM_GCS_TOKEN", "the GCS token instead of Google default credentials (a service-account "
                    "JSON path or text, `anon`)", blank_is_unset=False)
STORAGE_EMULATOR_HOST = Setting("STORAGE_EMULATOR_HOST", "a GCS emulator (Google's own variable): hubbeam, "
                                "gcsfs and Beam then connect anonymously", blank_is_unset=False)

REQUESTS_CA_BUNDLE = Setting("REQUESTS_CA_BUNDLE", "a PEM file of the CAs https:// handles are checked against "
                             "(requests' own variable; else CURL_CA_BUNDLE, SSL_CERT_FILE, certifi's bundle)")
CURL_CA_BUNDLE = Setting("CURL_CA_BUNDLE", "as REQUESTS_CA_BUNDLE (requests reads it too)")
SSL_CERT_FILE = Setting("SSL_CERT_FILE", "OpenSSL's CA file variable, honoured for https:// handles when neither "
                        "REQUESTS_CA_BUNDLE nor CURL_CA_BUNDLE is set (requests alone would ignore it)")


def ca_bundle() -> str | bool:
    """What requests should verify https:// against: the first CA file named, else True (certifi)."""
    return REQUESTS_CA_BUNDLE.get() or CURL_CA_BUNDLE.get() or SSL_CERT_FILE.get() or True


# --- images (hubbeam.images) ---------------------------------------------------------------------------------------
MAX_IMAGE_PIXELS = Setting("HUBBEAM_MAX_IMAGE_PIXELS", "largest image accepted, pixels (checked from the header)",
                           default="64000000", parse=int, blank_is_unset=False)

# --- the DAGs' defaults (hubbeam.orchestration) --------------------------------------------------------------------
DATA_ROOT = Setting("HUBBEAM_DATA_ROOT", "where snapshots, embeddings and published modules live: a folder, "
                    "s3://… or gs://…", default=_in_cwd("build/demo/data"))
EMBED_MODULE = Setting("HUBBEAM_EMBED_MODULE", "the default `module` Param of embed_corpus",
                       default=_in_cwd("build/modules/minilm"))
FINETUNE_MODULE = Setting("HUBBEAM_FINETUNE_MODULE", "the default `base_module` Param of finetune_export_module",
                          default=_in_cwd("build/modules/digits"))

ALL = tuple(value for value in dict(globals()).values() if isinstance(value, Setting))
