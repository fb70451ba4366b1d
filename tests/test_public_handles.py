"""tfhub.dev and Kaggle Models handles, resolved the way tensorflow_hub 0.16 resolves them.

No test reaches the internet: HUBBEAM_TFHUB_URL and HUBBEAM_KAGGLE_URL point the two hosts at the local
HTTP server, which answers with the chain the real hosts serve: tfhub.dev's handle with
`?tf-hub-format=compressed` -> 302 to Kaggle's long-form model URL -> 302 to a signed storage URL holding the
tarball (`application/x-tar`, gzip content encoding, as the storage bucket serves it). "tfhub" is
127.0.0.1/tfhub, "kaggle" is localhost/kaggle and "storage" localhost/storage, so the allow-list can tell
them apart.
"""
from pathlib import Path

import numpy as np
import pytest

pytest.register_assert_rewrite("tests.servers")

import hubbeam  # noqa: E402
from hubbeam.errors import HandleError, HubbeamError, IntegrityError  # noqa: E402
from hubbeam.hub.allowlist import SourceNotAllowedError  # noqa: E402
from hubbeam.hub.kinds import KaggleModel, TfhubDev, parse_handle  # noqa: E402
from tests.cli import hubbeam_cli  # noqa: E402
from tests.servers import SENTENCES  # noqa: E402

pytest_plugins = ["tests.servers"]

TFHUB = "https://tfhub.dev/google/nnlm-en-dim50/2"
KAGGLE = "https://www.kaggle.com/models/google/nnlm/TensorFlow2/en-dim50/2"
QUERY = "?tf-hub-format=compressed"
TFHUB_PATH = "/tfhub/google/nnlm-en-dim50/2" + QUERY
KAGGLE_LONG = "/kaggle/models/google/nnlm/frameworks/TensorFlow2/variations/en-dim50/versions/2"
KAGGLE_SHORT = "/kaggle/models/google/nnlm/TensorFlow2/en-dim50/2" + QUERY
STORAGE = "/storage/kaggle-models-data/1234/5678/bundle/archive.tar.gz?X-Goog-Algorithm=GOOG4-RSA-SHA256&X-Goog-Signature=ab12"
ARCHIVE_HEADERS = {"Content-Type": "application/x-tar", "Content-Encoding": "gzip",
                   "Content-Disposition": 'attachment; filename="archive.tar.gz"', "Cache-Control": "private"}


@pytest.fixture
def hosts(hub_http, monkeypatch):
    """The local server as tfhub.dev, Kaggle and Kaggle's storage, with the real hosts' redirect chain."""
    port = hub_http.server_address[1]
    tfhub, other = f"http://127.0.0.1:{port}", f"http://localhost:{port}"
    monkeypatch.setenv("HUBBEAM_TFHUB_URL", f"{tfhub}/tfhub/")
    monkeypatch.setenv("HUBBEAM_KAGGLE_URL", f"{other}/kaggle")
    html = {"Content-Type": "text/html; charset=utf-8"}
    hub_http.add(TFHUB_PATH, mode="redirect", status=302, headers=html,
                 location=f"{other}{KAGGLE_LONG}?tfhub-redirect=true&tf-hub-format=compressed")
    hub_http.add(f"{KAGGLE_LONG}?tfhub-redirect=true&tf-hub-format=compressed", mode="redirect", status=302,
                 headers=html, location=f"{other}{STORAGE}")
    hub_http.add(KAGGLE_SHORT, mode="redirect", status=302, headers=html, location=f"{other}{STORAGE}")
    hub_http.add(STORAGE, body=hub_http.routes["/m/wordvec.tar.gz"].body, headers=ARCHIVE_HEADERS)
    hub_http.tfhub, hub_http.other = tfhub, other
    return hub_http


def _requests(server) -> int:
    return sum(server.count(path) for path in (TFHUB_PATH, KAGGLE_SHORT, STORAGE,
                                               f"{KAGGLE_LONG}?tfhub-redirect=true&tf-hub-format=compressed"))


def test_a_tfhub_dev_handle_follows_the_redirects_to_the_archive_and_loads(hosts, hub_module, hub_reference):
    out = hubbeam.load(TFHUB)(SENTENCES)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(hub_reference))
    assert hosts.count(TFHUB_PATH) == 1 and hosts.count(STORAGE) == 1
    resolved = hubbeam.resolve_module(TFHUB)
    assert resolved.handle == TFHUB and resolved.archive_sha256 == hub_module.archive_sha256


def test_the_cli_resolves_both_hosts_and_a_second_resolve_makes_no_request(hosts):
    first = hubbeam_cli("resolve", TFHUB)
    assert first.returncode == 0, first.stderr[-3000:]
    folder = first.stdout.strip().splitlines()[-1]
    assert (Path(folder) / "saved_model.pb").is_file()
    kaggle = hubbeam_cli("resolve", KAGGLE)
    assert kaggle.returncode == 0, kaggle.stderr[-3000:]
    assert kaggle.stdout.strip().splitlines()[-1] != folder  # another handle, another cache folder
    made = _requests(hosts)
    assert made == 5  # tfhub -> kaggle (long form) -> storage, then kaggle (short form) -> storage
    again = hubbeam_cli("resolve", TFHUB + "/")
    assert again.returncode == 0 and again.stdout.strip().splitlines()[-1] == folder
    assert _requests(hosts) == made


def test_the_cache_folder_is_the_handle_s_whatever_its_spelling_or_the_redirects(hosts, monkeypatch):
    spellings = [TFHUB, TFHUB + "/", "https://TFHub.dev/google/nnlm-en-dim50/2", TFHUB + QUERY,
                 "http://tfhub.dev/google/nnlm-en-dim50/2/"]
    assert {parse_handle(h).location for h in spellings} == {TFHUB}
    kaggles = [KAGGLE, KAGGLE + "/", "https://kaggle.com/models/google/nnlm/tensorflow2/en-dim50/2",
               "https://www.kaggle.com/models/google/nnlm/frameworks/TensorFlow2/variations/en-dim50/versions/2"]
    assert {parse_handle(h).location for h in kaggles} == {KAGGLE}
    assert isinstance(parse_handle(TFHUB).kind, TfhubDev) and isinstance(parse_handle(KAGGLE).kind, KaggleModel)
    folder = hubbeam.resolve(TFHUB)
    # the redirect goes elsewhere now: the handle's cache folder is used as it is, without a request
    hosts.routes[TFHUB_PATH].location = f"{hosts.other}/storage/elsewhere.tar.gz"
    assert hubbeam.resolve(TFHUB + "/") == folder
    assert hosts.count(TFHUB_PATH) == 1


def test_a_pinned_handle_is_checked(hosts, hub_module):
    assert Path(hubbeam.resolve(f"{TFHUB}#sha256={hub_module.archive_sha256}")).is_dir()
    assert Path(hubbeam.resolve(KAGGLE, sha256=hub_module.tree_sha256)).is_dir()
    with pytest.raises(IntegrityError, match="sha256 mismatch"):
        hubbeam.resolve(f"{TFHUB}#sha256={'0' * 64}")


def test_the_allow_list_applies_to_the_handle_the_mirror_and_every_hop(hosts, monkeypatch):
    storage = f"{hosts.other}/storage"
    base = f"https://tfhub.dev {hosts.tfhub}/tfhub https://www.kaggle.com {hosts.other}/kaggle"
    monkeypatch.setenv("HUBBEAM_ALLOWED_SOURCES", base)
    with pytest.raises(SourceNotAllowedError, match="^redirect of https://tfhub.dev/google/nnlm-en-dim50/2 to "):
        hubbeam.resolve(TFHUB)
    assert hosts.count(STORAGE) == 0  # refused before it was requested
    monkeypatch.setenv("HUBBEAM_ALLOWED_SOURCES", f"{hosts.tfhub}/tfhub {hosts.other}/kaggle {storage}")
    with pytest.raises(SourceNotAllowedError, match="module handle https://tfhub.dev/"):
        hubbeam.resolve(TFHUB)  # the handle itself is outside
    monkeypatch.setenv("HUBBEAM_ALLOWED_SOURCES", f"https://tfhub.dev {hosts.other}/kaggle {storage}")
    with pytest.raises(SourceNotAllowedError, match="download of https://tfhub.dev/.* from"):
        hubbeam.resolve(TFHUB)  # the mirror is outside
    made = _requests(hosts)
    monkeypatch.setenv("HUBBEAM_ALLOWED_SOURCES", f"{base} {storage}")
    assert Path(hubbeam.resolve(TFHUB)).is_dir()
    assert _requests(hosts) == made + 3


@pytest.mark.parametrize("handle", [
    "https://tfhub.dev/google/nnlm-en-dim50",  # no version
    "https://tfhub.dev/google/nnlm-en-dim50/latest",
    "https://tfhub.dev/",
    "https://tfhub.dev/google/../nnlm/2",
    "https://tfhub.dev/google/nnlm-en-dim50/2?tf-hub-format=uncompressed",
    "https://www.kaggle.com/models/google/nnlm",
    "https://www.kaggle.com/datasets/google/nnlm/TensorFlow2/en-dim50/2",
    "https://www.kaggle.com/models/google/nnlm/TensorFlow2/en-dim50/two",
    "https://www.kaggle.com/models/google/nnlm/pyTorch/en-dim50/2",
])
def test_a_malformed_public_handle_is_refused_in_one_line_before_any_request(hosts, handle):
    with pytest.raises(HandleError) as caught:
        hubbeam.resolve(handle)
    assert "\n" not in str(caught.value) and str(caught.value)
    assert sum(hosts.count(path) for path in hosts.routes) == 0


def test_tfhub_cache_dir_is_the_cache_root_when_hubbeam_cache_dir_is_unset(hosts, monkeypatch, tmp_path):
    monkeypatch.delenv("HUBBEAM_CACHE_DIR")
    monkeypatch.setenv("TFHUB_CACHE_DIR", str(tmp_path / "tfhub"))
    folder = Path(hubbeam.resolve(TFHUB))
    assert folder.parent == tmp_path / "tfhub" / "modules"  # hubbeam's own layout, beside tensorflow_hub's
    monkeypatch.setenv("HUBBEAM_CACHE_DIR", str(tmp_path / "own"))
    assert Path(hubbeam.resolve(TFHUB)).parent == tmp_path / "own" / "modules"  # HUBBEAM_CACHE_DIR wins
    monkeypatch.delenv("HUBBEAM_CACHE_DIR")
    monkeypatch.setenv("TFHUB_CACHE_DIR", "gs://bucket/tfhub")
    with pytest.raises(HubbeamError, match="^TFHUB_CACHE_DIR='gs://bucket/tfhub' is not a local"):
        hubbeam.resolve(TFHUB)


def test_a_bad_mirror_url_is_one_line(hosts, monkeypatch):
    monkeypatch.setenv("HUBBEAM_KAGGLE_URL", "www.kaggle.com")
    with pytest.raises(HubbeamError, match=r"^HUBBEAM_KAGGLE_URL='www.kaggle.com' is not a base URL"):
        hubbeam.resolve(KAGGLE)
