"""The report in a real browser: headless Chromium loads it offline, runs its scripts, and we read
the rendered DOM back (``--dump-dom``) and keep a screenshot under ``test-artifacts/``.

Script errors are caught in two ways: the page's own error hook writes every uncaught error,
unhandled rejection, ``console.error`` and policy violation into ``#fs-errors`` (read back from the
DOM), and Chromium's console log on stderr is scanned for "Uncaught".

Skipped when Chromium is absent, unless FRAMESIM_REQUIRE_BROWSER=1 (CI), where that fails.
Install: ``apt-get install -y chromium``; FRAMESIM_CHROMIUM may name the binary.
"""

from __future__ import annotations

import html as html_lib
import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from test_report import HOSTILE_EXAMPLE, HOSTILE_VIDEO, make_run

from framesim.report import write_report

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "test-artifacts"

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def find_chromium() -> str | None:
    named = os.environ.get("FRAMESIM_CHROMIUM")
    if named:
        return shutil.which(named) or (named if Path(named).is_file() else None)
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


@pytest.fixture(scope="module")
def chromium() -> str:
    exe = find_chromium()
    if exe is None:
        if os.environ.get("FRAMESIM_REQUIRE_BROWSER") == "1":
            pytest.fail("FRAMESIM_REQUIRE_BROWSER=1 but no Chromium found (apt-get install -y chromium)")
        pytest.skip("headless Chromium not installed (apt-get install -y chromium)")
    return exe


def run_chromium(exe: str, url: str, *extra: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    """One headless Chromium run on a fresh profile, isolated from the network."""
    with tempfile.TemporaryDirectory(prefix="framesim-chromium-") as profile:
        cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               "--disable-extensions", "--disable-dev-shm-usage", "--hide-scrollbars", "--mute-audio",
               f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0",
               "--virtual-time-budget=20000", *extra, url]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)


def console_errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "CONSOLE" in line and ("Uncaught" in line or "Error" in line)]


def test_report_renders_in_headless_chromium(chromium: str, tmp_path: Path) -> None:
    run_dir = make_run(tmp_path, n_examples=6, ground_truth=True)
    # one missing example image and one missing frame image: placeholders, not errors
    (tmp_path / "examples" / "crop_002.jpg").unlink()
    missing_frame = next((tmp_path / "dataset" / "frames" / "v0").glob("*.jpg"))
    missing_frame.unlink()
    report = write_report(run_dir)
    url = report.resolve().as_uri()

    proc = run_chromium(chromium, url, "--dump-dom")
    dom = proc.stdout
    assert proc.returncode == 0 and "</html>" in dom, proc.stderr[-3000:]

    m = re.search(r'<div id="fs-errors"([^>]*)>(.*?)</div>', dom, re.S)
    assert m, "error banner element missing"
    errors = html_lib.unescape(m.group(2)).strip()
    assert "hidden" in m.group(1) and not errors, f"script errors in the page: {errors}"
    assert not console_errors(proc.stderr), console_errors(proc.stderr)
    assert re.search(r'<body[^>]*data-ready="1"', dom), "the page script did not finish"

    # charts: Plotly drew every one (each gets .js-plotly-plot and an SVG)
    for chart in ("fig-scores", "fig-agreement", "fig-timeline", "fig-pr"):
        assert re.search(rf'<div class="chart js-plotly-plot" id="{chart}"', dom), f"{chart} not rendered"
    assert dom.count('class="main-svg"') >= 8
    assert dom.count('<option value="') >= 3 + 3  # sort options + one per video in the timeline picker

    # thumbnails: embedded JPEG data URIs in the example cards, placeholders where images are gone
    tiles = re.findall(r'<div class="tile(?: [^"]*)?"', dom)
    assert len(tiles) == 6 * 2 * 5
    assert len(re.findall(r'<img [^>]*src="data:image/jpeg;base64,', dom)) >= 6 * 2 * 5 - 4 + 5
    assert "frame image not available" in dom and "example image not available" in dom
    assert dom.count('<article class="ex">') == 6

    # hostile names are shown as text, never turned into elements
    assert html_lib.escape(HOSTILE_VIDEO, quote=False) in dom
    assert html_lib.escape(HOSTILE_EXAMPLE, quote=False) in dom
    # (the serialised DOM quotes real attributes: an injected element would read <img src="x" onerror="...")
    assert not re.search(r'<img\b[^>]*\ssrc="x"', dom), "a file name became an <img> element"
    assert not re.search(r'<[a-z]+\b[^>]*\sonerror="', dom), "a file name became an event handler"
    assert "<b>.jpg" not in dom

    # the screenshot, kept as an artefact of the test run (test-artifacts/ is git-ignored)
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "report-screenshot.png"
    shot.unlink(missing_ok=True)
    proc = run_chromium(chromium, url, "--window-size=1400,5400", f"--screenshot={shot}")
    assert shot.is_file() and shot.stat().st_size > 50_000, proc.stderr[-3000:]
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    shutil.copyfile(report, ARTIFACTS / "report.html")


#: drives the page's controls like a user would, then writes what it saw into <pre id="fs-interaction">
_INTERACT_JS = r"""
(function(){
var out=[];function n(){return document.querySelectorAll('#ex-list article.ex').length;}
function first(){var e=document.querySelector('#ex-list .ex-name');return e?e.textContent:'';}
function info(){return document.querySelector('.pager .info').textContent;}
function set(id,v){var e=document.getElementById(id);if(e.type==='checkbox')e.checked=v;else e.value=v;
e.dispatchEvent(new Event(e.type==='search'?'input':'change'));}
set('ex-ps','10');out.push('ps10|'+n()+'|'+info());
document.querySelector('.pager .next').click();out.push('next|'+n()+'|'+info());
document.querySelector('.pager.bottom .next').click();out.push('last|'+n()+'|'+info());
['name','best','worst','disagree','run'].forEach(function(m){set('ex-sort',m);out.push(m+'|'+n()+'|'+first());});
set('ex-dis',true);out.push('dis|'+n()+'|'+info());set('ex-dis',false);
set('ex-q','CROP_00');out.push('q|'+n());
set('ex-q','zzzz');out.push('none|'+n()+'|'+document.querySelector('#ex-list .empty').textContent);
set('ex-q','');
var sel=document.getElementById('tl-select');sel.value='1';sel.dispatchEvent(new Event('change'));
setTimeout(function(){var t=document.querySelector('#fig-timeline .gtitle');out.push('tl|'+(t?t.textContent:''));
var p=document.createElement('pre');p.id='fs-interaction';p.textContent=out.join('\n');
document.body.appendChild(p);},300);
})();
"""


def test_report_controls_work_in_headless_chromium(chromium: str, tmp_path: Path) -> None:
    run_dir = make_run(tmp_path, n_examples=25)
    page = write_report(run_dir).read_text(encoding="utf-8")
    # a test copy: drop the page's script policy so the driver script may run, then add it last
    page = re.sub(r'<meta http-equiv="Content-Security-Policy"[^>]*>', "", page, count=1)
    page = page.replace("</body>", f"<script>{_INTERACT_JS}</script></body>")
    driven = tmp_path / "driven.html"
    driven.write_text(page, encoding="utf-8")

    proc = run_chromium(chromium, driven.resolve().as_uri(), "--dump-dom")
    dom = proc.stdout
    m = re.search(r'<div id="fs-errors"([^>]*)>(.*?)</div>', dom, re.S)
    assert m and not html_lib.unescape(m.group(2)).strip(), html_lib.unescape(m.group(2)) if m else dom[-2000:]
    assert not console_errors(proc.stderr), console_errors(proc.stderr)
    m = re.search(r'<pre id="fs-interaction">(.*?)</pre>', dom, re.S)
    assert m, "the driver script did not finish"
    seen = dict(line.split("|", 1) for line in html_lib.unescape(m.group(1)).splitlines())

    data = json.loads(re.search(r'id="fs-data">(.*?)</script>', page, re.S).group(1))
    names = [x["n"] for x in data["examples"]]
    best = {x["n"]: x["b"] for x in data["examples"]}
    assert seen["ps10"] == "10|page 1 of 3 · 25 examples"
    assert seen["next"] == "10|page 2 of 3 · 25 examples"
    assert seen["last"] == "5|page 3 of 3 · 25 examples"
    assert seen["name"] == f"10|{sorted(names)[0]}"  # sorting goes back to page 1
    assert seen["best"] == f"10|{max(names, key=lambda n: best[n])}"
    assert seen["worst"] == f"10|{min(names, key=lambda n: best[n])}"
    assert seen["disagree"] == "10|crop_002.jpg"  # beta-net misses every third example
    assert seen["run"] == f"10|{names[0]}"
    assert seen["dis"] == "8|page 1 of 1 · 8 examples"
    assert seen["q"] == "9"  # crop_001 … crop_009, case-insensitive
    assert seen["none"] == "0|No example matches this filter."
    assert seen["tl"].endswith(".mp4") and seen["tl"] != ""


def test_sample_run_report_in_headless_chromium(chromium: str, tmp_path: Path) -> None:
    """The README's sample run, end to end through the real CLI and models; its report renders cleanly
    with precision-recall (the sample ships ground truth); the screenshot is kept as an artefact."""
    from click.testing import CliRunner

    from framesim.cli import cli

    runner = CliRunner()
    dataset, run_dir = tmp_path / "dataset", tmp_path / "reports" / "sample"
    res = runner.invoke(cli, ["extract", str(REPO / "samples" / "bikes.mp4"), "-o", str(dataset), "-q"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(cli, ["match", str(REPO / "samples" / "examples"), "-d", str(dataset), "-o", str(run_dir),
                              "-b", "efficientnet-lite0", "-b", "tiny-image", "-q",
                              "--ground-truth", str(REPO / "samples" / "ground_truth.csv")])
    assert res.exit_code == 0, res.output
    assert "efficientnet-lite0: best frame correct for" in res.output
    report = run_dir / "report.html"
    assert report.is_file() and report.stat().st_size < 20_000_000

    proc = run_chromium(chromium, report.resolve().as_uri(), "--dump-dom")
    dom = proc.stdout
    m = re.search(r'<div id="fs-errors"([^>]*)>(.*?)</div>', dom, re.S)
    assert m and "hidden" in m.group(1) and not html_lib.unescape(m.group(2)).strip(), "script errors in the page"
    assert not console_errors(proc.stderr), console_errors(proc.stderr)
    for chart in ("fig-scores", "fig-agreement", "fig-timeline", "fig-pr"):
        assert re.search(rf'<div class="chart js-plotly-plot" id="{chart}"', dom), f"{chart} not rendered"
    assert dom.count('<article class="ex">') == 6

    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "sample-report.png"
    shot.unlink(missing_ok=True)
    run_chromium(chromium, report.resolve().as_uri(), "--window-size=1400,4000", f"--screenshot={shot}")
    assert shot.is_file() and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    shutil.copyfile(report, ARTIFACTS / "sample-report.html")
