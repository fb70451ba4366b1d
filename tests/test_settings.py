"""Environment settings: declared once in hubbeam.settings, read when used (not at import), documented."""
import re
from pathlib import Path

import pytest

from hubbeam import settings
from hubbeam.errors import HubbeamError

ROOT = Path(__file__).resolve().parent.parent


def test_only_the_settings_module_reads_hubbeam_settings():
    reads = re.compile(r"""environ(\.get\(|\[)\s*["']HUBBEAM_""")
    files = sorted((ROOT / "hubbeam").rglob("*.py")) + sorted((ROOT / "dags").rglob("*.py"))
    offenders = [str(p.relative_to(ROOT)) for p in files if p.name != "settings.py" and reads.search(p.read_text())]
    assert offenders == []


def test_every_setting_is_in_the_readme_or_its_module():
    readme = (ROOT / "README.md").read_text()
    assert "hubbeam/settings.py" in readme
    for setting in settings.ALL:
        assert setting.name in readme, setting.name


def test_values_are_read_at_call_time(monkeypatch, tmp_path):
    monkeypatch.delenv("HUBBEAM_LOCK_TIMEOUT", raising=False)
    assert settings.LOCK_TIMEOUT.get() == 3600.0
    monkeypatch.setenv("HUBBEAM_LOCK_TIMEOUT", "2.5")
    assert settings.LOCK_TIMEOUT.get() == 2.5
    monkeypatch.setenv("HUBBEAM_DATA_ROOT", "")
    monkeypatch.chdir(tmp_path)
    assert settings.DATA_ROOT.get() == str(tmp_path / "build/demo/data")


def test_a_bad_timeout_is_one_line(monkeypatch):
    monkeypatch.setenv("HUBBEAM_READ_TIMEOUT", "soon")
    with pytest.raises(HubbeamError, match=r"^HUBBEAM_READ_TIMEOUT='soon' is not a number of seconds$"):
        settings.READ_TIMEOUT.get()
