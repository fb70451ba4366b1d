"""Hostile module tarballs: resolve() must refuse them, write nothing outside the cache, install nothing.

Each hostile archive is the real module plus one attack, so the attack is the only reason to refuse it; the
error message is checked to make sure the refusal is for that reason.
"""
from __future__ import annotations

import io
import tarfile
import time
import uuid
from pathlib import Path

import pytest

pytest.register_assert_rewrite("tests.servers")

import hubbeam  # noqa: E402
from hubbeam.errors import IntegrityError  # noqa: E402
from hubbeam.hub.resolver import resolve_module  # noqa: E402
from tests.servers import cache_state, snapshot  # noqa: E402

pytest_plugins = ["tests.servers"]


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch) -> Path:
    path = tmp_path / "cache"
    monkeypatch.setenv("HUBBEAM_CACHE_DIR", str(path))
    return path


@pytest.fixture
def outside(tmp_path) -> Path:
    """A folder beside the cache that attacks aim at; holds one file an attack might try to overwrite."""
    path = tmp_path / "outside"
    path.mkdir()
    (path / "precious.txt").write_text("original")
    return path


def member(name: str, data: bytes | None = None, type=tarfile.REGTYPE, linkname: str = "", size=None):
    info = tarfile.TarInfo(name)
    info.type = type
    info.linkname = linkname
    info.mode = 0o644
    info.mtime = 0
    if data is not None:
        info.size = len(data) if size is None else size
    return info, data


def module_members(hub_module) -> list:
    out = []
    for rel, path in hub_module.files().items():
        out.append(member(rel, path.read_bytes()))
    return out


def write_tarball(path: Path, members: list) -> Path:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    path.write_bytes(buffer.getvalue())
    return path


def names_in(path: Path) -> list[str]:
    with tarfile.open(path, "r:gz") as tar:
        return tar.getnames()


class Guard:
    """Records everything around the cache before an attack, to check afterwards that nothing changed."""

    def __init__(self, tmp_path: Path, cache_dir: Path):
        self.tmp_path, self.cache_dir = tmp_path, cache_dir

    def arm(self):
        """Take the 'before' picture: call it once the hostile archive is written, just before resolving."""
        self.before = snapshot(self.tmp_path, exclude=self.cache_dir)
        self.parent_before = sorted(p.name for p in self.tmp_path.parent.iterdir())

    def check(self, *targets: Path):
        for target in targets:
            assert not target.exists() and not target.is_symlink(), f"the attack wrote {target}"
        assert snapshot(self.tmp_path, exclude=self.cache_dir) == self.before, "something was written beside the cache"
        assert sorted(p.name for p in self.tmp_path.parent.iterdir()) == self.parent_before
        state = cache_state(self.cache_dir)
        assert state["entries"] == [], f"a cache entry was installed: {state}"
        assert state["staging"] == [], f"staging was not cleaned up: {state}"
        # Nothing in the cache but the (empty) staging folder and lock files.
        modules = self.cache_dir / "modules"
        leftovers = [p.name for p in modules.iterdir() if p.name != ".staging" and not p.name.endswith(".lock")]
        assert leftovers == []


@pytest.fixture
def guard(tmp_path, cache_dir, outside):
    return Guard(tmp_path, cache_dir)


def _refuse(tarball: Path, guard: Guard, match: str, *targets: Path):
    guard.arm()
    with pytest.raises(IntegrityError, match=match):
        hubbeam.resolve(str(tarball))
    guard.check(*targets)


# --- sanity: the same construction without an attack is accepted ---------------------------------------------------

def test_clean_tarball_built_the_same_way_is_accepted(tmp_path, hub_module, cache_dir):
    tarball = write_tarball(tmp_path / "clean.tar.gz", module_members(hub_module))
    resolved = resolve_module(str(tarball))
    assert resolved.sha256 == hub_module.tree_sha256
    assert cache_state(cache_dir)["entries"] == [resolved.path.name]


def test_module_in_a_single_top_level_folder_is_accepted(tmp_path, hub_module):
    members = [member(f"wordvec/{info.name}", data) for info, data in module_members(hub_module)]
    resolved = resolve_module(str(write_tarball(tmp_path / "nested.tar.gz", members)))
    assert resolved.sha256 == hub_module.tree_sha256


# --- path attacks -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", ["dotdot", "deep", "inner"])
def test_path_traversal_is_refused(tmp_path, hub_module, outside, guard, shape):
    target = outside / f"evil-{shape}"
    name = {
        "dotdot": "../evil",
        "deep": "../" * 40 + target.as_posix().lstrip("/"),
        "inner": "variables/../../" + "../" * 40 + target.as_posix().lstrip("/"),
    }[shape]
    tarball = write_tarball(tmp_path / "m.tar.gz", module_members(hub_module) + [member(name, b"pwned")])
    assert name in names_in(tarball)
    _refuse(tarball, guard, "path traversal", target, tmp_path / "evil")


def test_absolute_path_is_refused(tmp_path, hub_module, outside, guard):
    target = outside / "abs-evil"
    in_tmp = Path("/tmp") / f"hubbeam-evil-{uuid.uuid4().hex}"
    members = [member(str(target), b"pwned"), *module_members(hub_module), member(str(in_tmp), b"pwned")]
    tarball = write_tarball(tmp_path / "m.tar.gz", members)
    assert str(target) in names_in(tarball)  # tarfile kept the leading slash
    _refuse(tarball, guard, "absolute path", target, in_tmp)


def test_absolute_path_late_in_the_archive_is_refused(tmp_path, hub_module, outside, guard):
    in_tmp = Path("/tmp") / f"hubbeam-evil-{uuid.uuid4().hex}"
    tarball = write_tarball(tmp_path / "m.tar.gz", module_members(hub_module) + [member(str(in_tmp), b"pwned")])
    _refuse(tarball, guard, "absolute path", in_tmp)


# --- links --------------------------------------------------------------------------------------------------------

def test_symlink_is_refused(tmp_path, hub_module, outside, guard):
    # The classic: a link to a folder outside, then a file written "into" the link.
    members = [
        *module_members(hub_module),
        member("escape", type=tarfile.SYMTYPE, linkname=str(outside)),
        member("escape/payload", b"pwned"),
    ]
    _refuse(write_tarball(tmp_path / "m.tar.gz", members), guard, "link", outside / "payload")


def test_relative_symlink_is_refused(tmp_path, hub_module, outside, guard):
    members = [member("assets/link", type=tarfile.SYMTYPE, linkname="../../../../../../etc/passwd"),
               *module_members(hub_module)]
    _refuse(write_tarball(tmp_path / "m.tar.gz", members), guard, "link")


def test_hard_link_is_refused(tmp_path, hub_module, outside, guard):
    precious = outside / "precious.txt"
    members = [
        *module_members(hub_module),
        member("hl", type=tarfile.LNKTYPE, linkname=str(precious)),
        member("hl", b"overwritten"),
    ]
    _refuse(write_tarball(tmp_path / "m.tar.gz", members), guard, "link")
    assert precious.read_text() == "original"


# --- special files ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", [tarfile.CHRTYPE, tarfile.BLKTYPE, tarfile.FIFOTYPE], ids=["chr", "blk", "fifo"])
def test_device_or_fifo_is_refused(tmp_path, hub_module, guard, kind):
    info, _ = member("variables/special", type=kind)
    info.devmajor, info.devminor = 1, 3  # /dev/null's numbers, for the device types
    tarball = write_tarball(tmp_path / "m.tar.gz", module_members(hub_module) + [(info, None)])
    _refuse(tarball, guard, "device, FIFO or other special file")


def test_duplicate_member_is_refused(tmp_path, hub_module, guard):
    members = module_members(hub_module) + [member("variables/variables.index", b"second copy")]
    _refuse(write_tarball(tmp_path / "m.tar.gz", members), guard, "appears twice")


# --- size limits --------------------------------------------------------------------------------------------------

def test_member_larger_than_the_limit_is_refused_from_its_header(tmp_path, hub_module, guard, monkeypatch):
    monkeypatch.setenv("HUBBEAM_MAX_EXTRACT_BYTES", "1000")
    members = [member("big.bin", b"x" * 5000), *module_members(hub_module)]
    _refuse(write_tarball(tmp_path / "m.tar.gz", members), guard, r"HUBBEAM_MAX_EXTRACT_BYTES.*'big\.bin'")


def test_members_adding_up_past_the_limit_are_refused(tmp_path, hub_module, guard, monkeypatch):
    monkeypatch.setenv("HUBBEAM_MAX_EXTRACT_BYTES", "1000")
    members = [member(f"part{i}.bin", b"y" * 400) for i in range(3)] + module_members(hub_module)
    _refuse(write_tarball(tmp_path / "m.tar.gz", members), guard, r"1000 byte limit .*'part2\.bin'")


def _bomb(tmp_path: Path, hub_module) -> Path:
    tarball = write_tarball(tmp_path / "bomb.tar.gz", [member("zeros.bin", bytes(10 * 1024 * 1024)),
                                                         *module_members(hub_module)])
    assert tarball.stat().st_size < 200_000  # 10 MB of zeros squeezed small: a decompression bomb
    return tarball


def test_gzip_bomb_is_refused(tmp_path, hub_module, guard, monkeypatch):
    monkeypatch.setenv("HUBBEAM_MAX_EXTRACT_BYTES", str(1024 * 1024))
    tarball = _bomb(tmp_path, hub_module)
    start = time.monotonic()
    _refuse(tarball, guard, "byte limit")
    assert time.monotonic() - start < 10


def test_gzip_bomb_served_over_http_is_refused(tmp_path, hub_module, hub_http, guard, monkeypatch):
    # The download itself (~10 KB) is under the limit; the expansion is what trips it.
    monkeypatch.setenv("HUBBEAM_MAX_EXTRACT_BYTES", str(1024 * 1024))
    tarball = _bomb(tmp_path, hub_module)
    hub_http.add("/m/bomb.tar.gz", body=tarball.read_bytes())
    guard.arm()
    with pytest.raises(IntegrityError, match="byte limit"):
        hubbeam.resolve(hub_http.url("/m/bomb.tar.gz"))
    guard.check()
    assert hub_http.count("/m/bomb.tar.gz") == 1  # a bad archive is not downloaded again and again


def test_download_larger_than_the_limit_is_refused(tmp_path, hub_module, hub_http, guard, monkeypatch):
    monkeypatch.setenv("HUBBEAM_MAX_EXTRACT_BYTES", "1000")
    guard.arm()
    with pytest.raises(IntegrityError, match="larger than the 1000 byte limit"):
        hubbeam.resolve(hub_http.url("/m/wordvec.tar.gz"))
    guard.check()


# --- not a module, not an archive ---------------------------------------------------------------------------------

def test_tarball_without_saved_model_is_refused(tmp_path, hub_module, guard):
    members = [(info, data) for info, data in module_members(hub_module) if info.name != "saved_model.pb"]
    assert len(members) == len(module_members(hub_module)) - 1
    _refuse(write_tarball(tmp_path / "m.tar.gz", members), guard, "no SavedModel")


def test_tarball_with_two_top_level_folders_is_refused(tmp_path, hub_module, guard):
    members = [member(f"{top}/{info.name}", data) for top in ("a", "b") for info, data in module_members(hub_module)]
    _refuse(write_tarball(tmp_path / "m.tar.gz", members), guard, "no SavedModel")


@pytest.mark.parametrize("content", ["garbage", "truncated"])
def test_corrupt_archive_is_refused(tmp_path, hub_module, guard, content):
    tarball = tmp_path / "m.tar.gz"
    if content == "garbage":
        tarball.write_bytes(b"this is not a gzip stream at all\n" * 100)
    else:
        tarball.write_bytes(hub_module.tar_bytes[: len(hub_module.tar_bytes) // 2])
    _refuse(tarball, guard, "not a valid .tar.gz module archive")
