"""`hubbeam report`: one self-contained HTML page, opened in a real headless Chromium (Debian's `chromium`)."""
import csv
import json
import re
import shutil
import subprocess

import pytest

import hubbeam
from hubbeam.pipeline.job import EmbedJob, run_embed
from tests.cli import hubbeam_cli

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run",
                  # No network at all: the page must render from its own bytes.
                  "--host-resolver-rules=MAP * ~NOTFOUND", "--virtual-time-budget=10000"]
EVIL = '<script>document.title="pwned"</script><img src=x onerror=alert(1)>'


def chromium_dom(page, tmp_path) -> str:
    """The DOM of page after its scripts ran, from `chromium --headless --dump-dom`."""
    exe = shutil.which("chromium")
    if exe is None:
        pytest.fail("chromium is not installed; the report test needs Debian's chromium package: "
                    "`sudo apt-get install -y chromium` (.ci/run installs it)", pytrace=False)
    profile = tmp_path / "chromium-profile"
    result = subprocess.run([exe, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--dump-dom", page.resolve().as_uri()],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "</html>" in result.stdout, result.stderr[-3000:]
    return result.stdout


def count(dom: str, element_id: str) -> int:
    match = re.search(rf'id="{element_id}">([\d,]+)<', dom)
    assert match, f"no #{element_id} in the page"
    return int(match.group(1).replace(",", ""))


@pytest.fixture(scope="module")
def run_with_rejects(tmp_path_factory, tiny_wordvec_module):
    """A run over JSONL and CSV with a pass-through column, markup in ids and text, and rejected rows."""
    root = tmp_path_factory.mktemp("report-run")
    corpus = root / "corpus"
    corpus.mkdir()
    words = ["the cat", "the mat", "cat sat", "mat , mat", "sat on the mat", "the cat sat", "cat , cat"]
    with open(corpus / "a.jsonl", "w") as f:
        for i in range(30):
            f.write(json.dumps({"id": f"a{i}", "text": f"{words[i % 7]} {i}", "lang": "en" if i % 3 else "fr"}) + "\n")
        f.write(json.dumps({"id": "<b>bold-id</b>", "text": f"cat {EVIL}", "lang": "en"}) + "\n")
        f.write(json.dumps({"id": "empty", "text": " ", "lang": "en"}) + "\n")
        f.write(json.dumps({"id": "number", "text": 7, "lang": "en"}) + "\n")
        f.write("{broken json\n")
    with open(corpus / "b.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "text", "lang"])
        writer.writerows([f"b{i}", f"{words[(i + 3) % 7]} b{i}", "de"] for i in range(20))
        writer.writerow(["b-empty", "", "de"])
    out = root / "out"
    manifest = run_embed(EmbedJob(input=f"{corpus}/*", output=str(out), module=str(tiny_wordvec_module),
                                  keep_columns=["lang"], num_shards=2))
    assert (manifest["rows_embedded"], manifest["rows_rejected"]) == (51, 4)
    return out, manifest


def test_report_renders_in_headless_chromium_with_the_right_counts(run_with_rejects, tmp_path):
    out, manifest = run_with_rejects
    page = tmp_path / "report.html"
    assert hubbeam.write_report(out, page, sample=40) == str(page)
    dom = chromium_dom(page, tmp_path)
    # plotly builds its <svg class="main-svg"> layers and one path.point per marker only when its inlined
    # JavaScript has run: their presence proves the plot rendered, with no network.
    assert 'class="main-svg"' in dom
    assert len(re.findall(r'<path class="point"', dom)) == 40 == count(dom, "map-points")
    assert count(dom, "rows-read") == manifest["rows_read"] == 55
    assert count(dom, "rows-embedded") == manifest["rows_embedded"]
    assert count(dom, "rows-rejected") == manifest["rows_rejected"]
    assert count(dom, "input-files") == 2
    for reason, n in manifest["rejected_by_reason"].items():
        assert re.search(rf'data-reason="{reason}"><td><code>{reason}</code></td><td class="num">{n}</td>', dom), reason
    assert manifest["module"]["sha256"] in dom
    assert "legendtext" in dom and ">a.jsonl<" in dom and ">b.csv<" in dom  # coloured by source file
    assert "<title>hubbeam report" in dom and "pwned" not in dom.split("</title>")[0]  # no injected script ran
    assert "<b>bold-id" not in dom and "&lt;b&gt;bold-id" in dom  # the id, shown as text


def test_report_is_self_contained_escaped_and_reproducible(run_with_rejects, tmp_path):
    out, manifest = run_with_rejects
    default = hubbeam.write_report(out, color_by="lang")
    assert default == str(out / "report.html")
    page = (out / "report.html").read_text()
    assert not re.search(r"<(script|link|img|iframe)[^>]+(src|href)=[\"']?(https?:)?//", page)
    assert "<script>document" not in page and "<img src=x" not in page and "<b>bold-id" not in page
    assert html_escaped('cat <script>document.title="pwned"') in page  # the text is there, as text (hover)
    assert '"name":"fr"' in page and '"name":"de"' in page  # legend by the pass-through column
    for reason in manifest["rejected_by_reason"]:
        assert f'data-reason="{reason}"' in page
    assert hubbeam.write_report(out, tmp_path / "again.html", color_by="lang") and \
        (tmp_path / "again.html").read_text() == page  # the same run gives the same bytes


def html_escaped(text):
    import html

    return html.escape(text, quote=True)


def test_cli_report_and_a_bad_column(run_with_rejects, tmp_path):
    out, _ = run_with_rejects
    ok = hubbeam_cli("report", out, "--out", tmp_path / "r.html", "--sample", "10", "--color-by", "truncated")
    assert ok.returncode == 0 and ok.stdout.strip() == f"report written to {tmp_path / 'r.html'}", ok.stderr
    assert 'id="map-points">10<' in (tmp_path / "r.html").read_text()
    bad = hubbeam_cli("report", out, "--out", tmp_path / "x.html", "--color-by", "nope")
    assert bad.returncode == 2 and bad.stderr.strip().splitlines() == [
        "hubbeam: error: --color-by: no column 'nope' in " + str(out) +
        "'s embeddings (columns: id, source, content_sha256, truncated, lang)"]
    assert not (tmp_path / "x.html").exists()
    unfinished = hubbeam_cli("report", tmp_path)
    assert unfinished.returncode == 2 and "no finished hubbeam run" in unfinished.stderr


def test_image_report_shows_thumbnails(tmp_path, digits_module):
    from hubbeam.samples import write_digit_images

    write_digit_images(tmp_path / "images", count=8)
    (tmp_path / "images" / "broken.png").write_bytes(b"not a png")
    out = tmp_path / "out"
    run_embed(EmbedJob(input=str(tmp_path / "images" / "*"), output=str(out), module=str(digits_module)))
    page = (tmp_path / "images.html")
    hubbeam.write_report(out, page, examples=2, neighbours=3)
    text = page.read_text()
    assert text.count('<img class=thumb alt="" src="data:image/png;base64,') == 2 * (1 + 3)
    assert 'data-reason="undecodable_image"' in text and 'id="rows-embedded">8<' in text


def test_a_rerun_withdraws_the_old_report(tmp_path):
    from hubbeam.pipeline.output import REPORT, prepare_output_dir

    (tmp_path / REPORT).write_text("<html>old run</html>")
    (tmp_path / "_SUCCESS").write_text("")
    prepare_output_dir(str(tmp_path))
    assert not (tmp_path / REPORT).exists() and not (tmp_path / "_SUCCESS").exists()


def test_neighbours_equal_brute_force_and_hover_texts_stop_at_50_source_files(tmp_path, tiny_wordvec_module):
    """README: the neighbour tables are the exact k nearest by cosine over all embeddings; hover texts re-read at
    most 50 source files (and the page says how many more held sampled rows)."""
    import html

    import numpy as np

    from hubbeam.inspection.report import HOVER_SOURCE_FILES, build_report
    from hubbeam.pipeline.output import read_embeddings

    words = ["cat", "mat", "sat", "the", "on", "dog", "log", "fog", "bat", "hat", "rat"]
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    files = HOVER_SOURCE_FILES + 5
    for i in range(files):  # one row per file, each text unique and findable: "cat mat zq17x"
        (corpus / f"f{i:02d}.txt").write_text(f"{words[i % 11]} {words[(i * 7) % 11]} zq{i}x\n")
    out = tmp_path / "out"
    run_embed(EmbedJob(input=f"{corpus}/*.txt", output=str(out), module=str(tiny_wordvec_module)))

    page = build_report(str(out), examples=6, neighbours=4, seed=3)
    ids, matrix = read_embeddings(str(out))
    unit = matrix / np.linalg.norm(matrix, axis=1, keepdims=True)
    blocks = re.findall(r"<div class=neighbours><p class=query><code>(.*?)</code>.*?</table></div>", page, re.S)
    assert len(blocks) == 6
    for block in re.findall(r"<div class=neighbours>.*?</table></div>", page, re.S):
        query = html.unescape(re.search(r"<p class=query><code>(.*?)</code>", block).group(1))
        listed = [(float(s), html.unescape(i)) for s, i in
                  re.findall(r"<td class=num>([\d.-]+)</td><td><code>(.*?)</code>", block)]
        scores = unit @ unit[ids.index(query)]
        expected = sorted((float(scores[j]) for j in range(len(ids)) if ids[j] != query), reverse=True)[:4]
        np.testing.assert_allclose([s for s, _ in listed], expected, atol=6e-4)
        for score, neighbour in listed:  # each listed row really has that cosine to the query
            assert neighbour != query and abs(scores[ids.index(neighbour)] - score) < 6e-4

    hover_only = build_report(str(out), examples=0)  # no neighbour tables: texts on the page come from hovers
    shown = [i for i in range(files) if f"zq{i}x" in hover_only]
    assert len(shown) == HOVER_SOURCE_FILES, len(shown)
    assert f"({files - HOVER_SOURCE_FILES} more hold sampled rows)" in hover_only
