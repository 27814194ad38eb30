"""The report end to end: one tiny demo-like run (a synthetic dataset with designed look-alikes, two
random-weight backbones) builds results/report.html and the explore pages; Snakemake's own report and
lint; then headless Chromium (Debian's chromium and chromium-driver, driven by Selenium) opens both
pages as a reader would. Screenshots go to the test's tmp folder, and to $EMBEDLENS_SCREENSHOTS when set."""

from __future__ import annotations

import json
import os
import re
import shutil
import time
import zipfile
from pathlib import Path

import pytest

from embedlens.summary import StageSummary

from conftest import run_snakemake

pytestmark = pytest.mark.workflow

BACKBONES = [  # random-weight timm models on small inputs: fast, and no download
    {"name": "tiny", "kind": "timm", "model": "resnet10t", "pretrained": False, "preprocessing": {"resize": 32, "crop": 32}},
    {"name": "tiny48", "kind": "timm", "model": "resnet10t", "pretrained": False, "preprocessing": {"resize": 48, "crop": 48}},
]
CONFIG = {
    "datasets": [{"name": "shapes", "kind": "synthetic", "num_classes": 6, "image_size": 48,
                  "images_per_class": {"train": 8, "test": 4}, "overlapping_pairs": 1}],
    "backbones": BACKBONES,
    "extract": {"shards": 1, "batch_size": 16, "num_workers": 0},
    "overlap": {"selection": "top_n", "top_n": 2},
    "report": {"map_points": 60, "seed": 1, "thumbnail_size": 32},
    "classify": {"max_epochs": 10, "folds": 3},
    "cluster": {"map": "tsne", "temi": {"neighbours": 5, "heads": 2, "steps": 9, "batch_size": 16}},
    "audit": {"folds": 3, "probe_min_steps": 50},
    "distill": {"enabled": True, "per_class": 2, "experts": 2, "expert_epochs": 4, "batch_size": 8, "syn_batch": 8,
                "syn_steps": 3, "expert_epochs_to_match": 1, "max_start_epoch": 2, "iterations": 6, "lr_features": 1.0,
                "eval_seeds": 2, "eval_epochs": 10, "full_epochs": 4, "neighbours": 3, "grid_rows": 5},
}
IMAGES = 6 * (8 + 4)
STAGES = ("features", "overlap", "subset", "classify", "cluster", "novelty", "audit", "distill")


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """The working folder of one finished run of the default target."""
    workdir = tmp_path_factory.mktemp("report-run")
    result = run_snakemake(workdir, config=CONFIG)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (workdir / "terminal.txt").write_text(result.stdout + result.stderr)
    return workdir


def test_per_epoch_lines_reach_the_job_logs_not_the_terminal(run):
    terminal = (run / "terminal.txt").read_text()
    logs = run / "results" / "logs"
    for log, line in ((logs / "classify_train" / "shapes" / "tiny.log", r"epoch \d+: train loss"),
                      (logs / "classify_crossval" / "shapes" / "tiny.log", r"fold \d+ epoch \d+: val loss"),
                      (logs / "cluster_temi" / "shapes" / "tiny.log", r"epoch \d+, step \d+: loss"),
                      (logs / "distill_fit" / "shapes" / "tiny.log", r"iteration 6: matching loss"),
                      (logs / "distill_evaluate" / "shapes" / "tiny.log", r"distilled, seed \d+: test accuracy")):
        assert re.search(line, log.read_text()), (log, line)
        assert not re.search(line, terminal), line
    # what each of those jobs ends with still reaches the terminal
    assert re.search(r"classify_train INFO best epoch \d+ of \d+", terminal)
    assert re.search(r"distill_fit INFO \d+ synthetic vectors", terminal)


def test_the_default_target_is_the_report_with_an_explore_page_per_pair(run):
    results = run / "results"
    html = (results / "report.html").read_text()
    for backbone in ("tiny", "tiny48"):
        assert f'href="shapes/{backbone}/explore.html"' in html
        assert (results / "shapes" / backbone / "explore.html").stat().st_size > 1_000_000  # plotly is inlined
        summary = json.loads((results / "shapes" / backbone / "overlap" / "summary.json").read_text())
        assert summary["headline"]["pairs"] == 2 and summary["headline"]["top_n"] == 2
    assert 'id="comparison"' in html and "Showing 60 of 72 images" in " ".join(
        (results / "shapes" / "tiny" / "explore.html").read_text().split())


def test_snakemake_report_zip_holds_the_marked_outputs(run):
    result = run_snakemake(run, "--report", "results/snakemake-report.zip", config=CONFIG)
    assert result.returncode == 0, result.stderr[-3000:]
    with zipfile.ZipFile(run / "results" / "snakemake-report.zip") as archive:
        names = [Path(name).name for name in archive.namelist() if "/data/raw/" in name]
        page = archive.read("snakemake-report/report.html").decode()
    # a result of every stage, under the stage's category (the archive keeps file names, not folders):
    # per backbone the overlap's and the classifier's pairs.csv and a map.png per clustering method
    expected = {"report.html": 1, "explore.html": 2, "skipped.csv": 3, "similarity.png": 2, "pairs.csv": 4,
                "confusion.png": 2, "map.png": 4, "metrics.csv": 2, "scores.csv": 2, "novel.png": 2,
                "duplicates.csv": 2, "label_issues.csv": 2, "evaluation.csv": 2, "matching_loss.png": 2}
    assert {name: names.count(name) for name in expected} == expected
    for category in ("Dataset", "Features", "Overlap", "Classifier", "Clustering", "Novelty", "Dataset audit",
                     "Distillation", "Report"):
        assert f'"{category}"' in page, category


def test_lint_stays_clean(run):
    result = run_snakemake(run, "--lint", config=CONFIG)
    assert "Congratulations, your workflow is in a good condition!" in result.stdout + result.stderr


# --- in a real browser ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium, or a skip that says what is missing."""
    binary, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not binary or not driver:
        pytest.skip("Debian's chromium and chromium-driver are not installed (`make test` installs them when "
                    "run as root: apt-get install -y chromium chromium-driver)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install -e '.[test]')")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    # --no-sandbox: CI runs as root; swiftshader: WebGL (plotly's scattergl) without a GPU
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,900",
                     "--enable-unsafe-swiftshader", "--use-angle=swiftshader"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    chrome = webdriver.Chrome(service=webdriver.ChromeService(executable_path=driver), options=options)
    yield chrome
    chrome.quit()


def console_errors(chrome) -> list[str]:
    return [entry["message"] for entry in chrome.get_log("browser") if entry["level"] == "SEVERE"]


def screenshot(chrome, tmp_path: Path, name: str) -> None:
    chrome.save_screenshot(str(tmp_path / name))
    folder = os.environ.get("EMBEDLENS_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        shutil.copy(tmp_path / name, Path(folder) / name)


def wait_for(chrome, script: str, timeout: float = 20.0):
    """Poll ``script`` (a JS expression) until it is truthy; return its value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = chrome.execute_script(f"return {script}")
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"in the browser, {script} stayed false for {timeout} s")


def test_report_in_a_browser_has_every_section_and_every_image(run, browser, tmp_path):
    browser.get((run / "results" / "report.html").as_uri())
    wait_for(browser, "document.readyState === 'complete'")
    ids = set(browser.execute_script("return Array.from(document.querySelectorAll('[id]'), e => e.id)"))
    expected = {"dataset-shapes", "comparison", "config", "versions"} | {
        f"shapes-{backbone}-{stage}" for backbone in ("tiny", "tiny48") for stage in STAGES}
    assert expected <= ids, expected - ids
    images = browser.execute_script(
        "return Array.from(document.images, i => [i.complete, i.naturalWidth, i.naturalHeight])")
    figures = sum(len(StageSummary.read(path).figures) for path in (run / "results" / "shapes").glob("*/*/summary.json"))
    assert figures > 2 and len(images) == figures  # every figure of every stage's summary is on the page
    assert all(done and width > 0 and height > 0 for done, width, height in images), images
    # pictures scale with the window: none is wider than its section
    assert browser.execute_script(
        "return Array.from(document.images).every(i => i.getBoundingClientRect().width <= i.closest('section').clientWidth)")
    # a click on a column heading sorts the table
    browser.execute_script("document.querySelector('#comparison th:nth-child(4)').click()")
    assert browser.execute_script("return document.querySelector('#comparison th:nth-child(4)').getAttribute('aria-sort')") \
        == "ascending"
    screenshot(browser, tmp_path, "report.png")
    assert console_errors(browser) == []


def test_map_in_a_browser_draws_every_point_and_shows_its_image_on_hover(run, browser, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    browser.get((run / "results" / "report.html").as_uri())
    browser.find_element(By.LINK_TEXT, "Explore the embedding map of shapes × tiny").click()
    wait_for(browser, "!!(document.getElementById('map') && document.getElementById('map')._fullData)")
    drawn = browser.execute_script("return document.getElementById('map')._fullData.reduce((n, t) => n + t.x.length, 0)")
    assert drawn == 60
    assert browser.execute_script("return document.querySelectorAll('#map canvas').length") > 0
    sheets = browser.execute_script("return Array.from(document.querySelectorAll('img.sheet'), i => i.naturalWidth)")
    assert sheets and all(width > 0 for width in sheets)

    # a real mouse move onto the first point of the first trace
    x, y = browser.execute_script("""
        const map = document.getElementById('map'), trace = map._fullData[0], layout = map._fullLayout;
        const box = map.querySelector('.nsewdrag').getBoundingClientRect();
        return [box.left + layout.xaxis.l2p(trace.x[0]), box.top + layout.yaxis.l2p(trace.y[0])];""")
    body = browser.find_element(By.TAG_NAME, "body")
    ActionChains(browser).move_to_element_with_offset(body, 0, 0).perform()
    width, height = browser.execute_script("return [document.body.clientWidth, document.body.clientHeight]")
    ActionChains(browser).move_to_element_with_offset(body, round(x - width / 2), round(y - height / 2)).perform()
    wait_for(browser, "document.getElementById('hover').style.display === 'block'")
    point = int(browser.execute_script("return document.getElementById('hover').dataset.point"))
    hovered_class = browser.execute_script(f"return DATA.class[{point}]")
    assert hovered_class in browser.find_element(By.ID, "hover").text
    # the thumbnail is drawn: its pixels vary (an empty canvas is uniformly transparent)
    spread = browser.execute_script("""
        const c = document.getElementById('thumb'), d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let lo = 255, hi = 0; for (let i = 0; i < d.length; i += 4) { lo = Math.min(lo, d[i]); hi = Math.max(hi, d[i]); }
        return [d[3], hi - lo];""")
    assert spread[0] == 255 and spread[1] > 20, spread
    screenshot(browser, tmp_path, "explore.png")
    # the hover box gives a stage's figures as the report prints them and leaves out the ones it lacks
    hover_lines = browser.find_element(By.ID, "hover").text.splitlines()
    assert not any("null" in line or "undefined" in line for line in hover_lines), hover_lines
    for line in hover_lines:
        name, _, value = line.partition(": ")
        if browser.execute_script(f"return {json.dumps(name)} in DATA.columns") and re.fullmatch(r"-?[\d.e+-]+", value):
            assert len(value.replace("-", "").replace(".", "").lstrip("0")) <= 4, line

    # the legend's and the colour bar's titles begin below plotly's toolbar, not under it
    overlap = """const a = arguments[0].getBoundingClientRect(), b = arguments[1].getBoundingClientRect();
                 return !(a.right <= b.left || b.right <= a.left || a.bottom <= b.top || b.bottom <= a.top);"""
    toolbar = browser.find_element(By.CSS_SELECTOR, "#map .modebar")
    assert not browser.execute_script(overlap, toolbar, browser.find_element(By.CSS_SELECTOR, "#map .legendtitletext"))
    numeric = browser.execute_script(
        "return Object.keys(DATA.figures).find(n => DATA.figures[n].data[0].marker.colorbar)")
    assert numeric, "the run's map has no numeric colouring"
    browser.execute_script("const s = document.getElementById('colour-by'); s.value = arguments[0];"
                           "s.dispatchEvent(new Event('change'));", numeric)
    wait_for(browser, "!!document.querySelector('#map .cbtitle')")
    toolbar = browser.find_element(By.CSS_SELECTOR, "#map .modebar")
    assert not browser.execute_script(overlap, toolbar, browser.find_element(By.CSS_SELECTOR, "#map .cbtitle"))
    browser.execute_script("const s = document.getElementById('colour-by'); s.value = 'class';"
                           "s.dispatchEvent(new Event('change'));")

    # the search box highlights the images of matching classes
    search = browser.find_element(By.ID, "search")
    search.send_keys(hovered_class)
    wait_for(browser, "document.getElementById('matches').textContent !== ''")
    matches = browser.find_element(By.ID, "matches").text
    expected = browser.execute_script(f"return DATA.class.filter(c => c.toLowerCase().includes({json.dumps(hovered_class.lower())})).length")
    assert matches.startswith(f"{expected} images of 1 class") and expected > 0
    assert browser.execute_script("return document.getElementById('map')._fullData.slice(-1)[0].x.length") == expected
    assert console_errors(browser) == []
