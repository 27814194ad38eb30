"""The report page and the explore page, rendered by the library from hand-made stage outputs."""

from __future__ import annotations

import base64
import io
import json
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from embedlens.config import load_config
from embedlens.datasets import open_dataset
from embedlens.report.explore import build_explore_page, colourings, hover_text, read_map_columns, sample_points
from embedlens.report.media import embed_figure, thumbnail, thumbnail_sheets
from embedlens.report.page import build_report
from embedlens.report.render import number, script_json
from embedlens.store import FeatureStore, SplitFeatures, write_store
from embedlens.summary import Artifact, StageSummary

from report_fixtures import results_tree


class Page(HTMLParser):
    """The ids, link targets, images and table headings of an HTML page."""

    def __init__(self, html: str):
        super().__init__()
        self.ids, self.links, self.images, self.headings = set(), [], [], []
        self._heading = None
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if "id" in attrs:
            self.ids.add(attrs["id"])
        if tag == "a" and "href" in attrs:
            self.links.append(attrs["href"])
        if tag == "img":
            self.images.append(attrs["src"])
        if tag == "th":
            self._heading = ""

    def handle_data(self, data):
        if self._heading is not None:
            self._heading += data

    def handle_endtag(self, tag):
        if tag == "th" and self._heading is not None:
            self.headings.append(self._heading.strip())
            self._heading = None


def decode(src: str) -> Image.Image:
    header, payload = src.split(",", 1)
    assert header in ("data:image/png;base64", "data:image/webp;base64"), header
    image = Image.open(io.BytesIO(base64.b64decode(payload)))
    image.load()
    return image


@pytest.fixture
def report(tmp_path):
    datasets, pairs = results_tree(tmp_path / "results")
    output = tmp_path / "results" / "report.html"
    build_report(datasets, pairs, {"datasets": [{"name": "toy"}], "novelty": {"enabled": False}}, output)
    html = output.read_text()
    return html, Page(html)


def test_report_has_every_section_and_a_table_of_contents_that_leads_to_them(report):
    html, page = report
    for pair in ("toy-small", "toy-large"):
        for stage in ("features", "overlap", "subset", "classify", "cluster", "novelty", "audit", "distill"):
            assert f"{pair}-{stage}" in page.ids
    assert {"dataset-toy", "comparison", "config", "versions"} <= page.ids
    internal = [link[1:] for link in page.links if link.startswith("#")]
    assert internal and set(internal) <= page.ids
    assert "toy/small/explore.html" in page.links and "toy/small/overlap/pairs.csv" in page.links


def test_report_shows_the_dataset_the_stages_and_what_is_absent(report):
    html, page = report
    assert "empty file" in html and "truncated JPEG" in html  # skipped files with reasons
    assert "designed overlapping pairs" in html and "cat – lynx" in html
    assert "123.4" in html and "float32" in html and "decoder said no" in html  # features summary and table
    assert "0.7835" in html and "evaluated at the best epoch" in html  # a stage the report does not know by name
    assert "Clustering: not part of this version of embedlens yet." in html
    assert "Novelty: disabled in the config (novelty.enabled: false)." in html
    assert ("Distillation: skipped for this dataset: distill needs at least two classes with two or more images "
            "in distill.train_split (&#39;train&#39;); dataset &#39;toy&#39; has 1.") in html
    assert "Subset: disabled in the config (overlap.export: false)." in html  # the large backbone has none
    assert "toy_lynx" in html  # the small backbone's subset counts
    assert "depends on the backbone" in html and "most similar pair" in html
    for heading in ("overlap pairs", "classifier accuracy", "clustering ACC", "novelty AUROC", "label issues found"):
        assert heading in page.headings


def test_headline_cards_show_numbers_and_parts_never_a_python_repr(report):
    html, _ = report
    cards = "".join(re.findall(r'<dl class="headline">.*?</dl>', html, re.S))
    for repr_mark in ("{", "}", "[", "None", "&#39;"):
        assert repr_mark not in cards, repr_mark
    text = " ".join(re.sub(r"<[^>]+>", " ", cards).split())
    for shown in ("pairs flagged centroid 3 confusion 0", "spearman union centroid~confusion -0.5 confusion~cleanlab —",
                  "search seconds cross 0.2521", "best epochs 12, 30"):
        assert shown in text, shown


def test_comparison_table_puts_backbones_side_by_side_with_absent_figures_marked(report):
    html, _ = report
    table = html[html.index('id="comparison"'):html.index('id="config"')]
    rows = re.findall(r"<tr>(.*?)</tr>", table, re.S)
    cells = [re.findall(r"<td>(.*?)</td>", row) for row in rows[1:]]
    assert [row[:2] for row in cells] == [["toy", "small"], ["toy", "large"]]
    small, large = cells
    assert small[3] == "123.4" and large[3] == "45.6"      # images/s
    assert small[4] == "2" and large[4] == "0"             # overlap pairs
    assert small[5] == "0.7835" and large[5] == "—"        # classifier accuracy, absent for large
    assert set(small[6:]) == {"—"}


def test_report_pictures_are_embedded_and_decode(report):
    _, page = report
    assert len(page.images) == 2  # one heatmap per backbone
    for src in page.images:
        image = decode(src)
        assert 0 < max(image.size) <= 2000


def test_a_summary_that_lists_a_missing_figure_or_another_pair_is_named(tmp_path):
    datasets, pairs = results_tree(tmp_path / "results")
    summary_path = pairs[0].summaries[-1]
    summary = StageSummary.read(summary_path)
    summary.figures.append(Artifact("confusion.png", "the confusion matrix"))
    summary.write(summary_path)
    with pytest.raises(ValueError, match=r"classify/summary\.json: figure 'confusion\.png' does not exist"):
        build_report(datasets, pairs, {}, tmp_path / "report.html")
    pairs[0].summaries = [pairs[1].summaries[0]]
    with pytest.raises(ValueError, match=r"large/features/summary\.json: a summary of toy x large, given for toy x small"):
        build_report(datasets, pairs, {}, tmp_path / "report.html")


def test_large_figures_are_downscaled_to_a_palette_png(tmp_path):
    path = tmp_path / "big.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (1500, 4000, 3), dtype=np.uint8)).save(path)
    embedded = embed_figure(path)
    image = decode(embedded.src)
    assert image.size == (embedded.width, embedded.height) == (2000, 750) and image.mode == "P"
    (tmp_path / "not.png").write_text("no picture")
    with pytest.raises(ValueError, match=r"not\.png: cannot embed"):
        embed_figure(tmp_path / "not.png")


def test_thumbnails_keep_their_aspect_and_sheets_place_them_in_order(tmp_path):
    wide = thumbnail(np.full((10, 40, 3), 200, np.uint8), 32)
    assert wide.shape == (32, 32, 3)
    assert (wide[16, :, 0] == 200).all() and (wide[0, 16] != 200).any()  # letterboxed, not stretched
    colours = [np.full((32, 32, 3), (i * 40) % 256, np.uint8) for i in range(6)]
    sheets = thumbnail_sheets(colours, 32, columns=2)
    assert len(sheets) == 2 and (sheets[0].width, sheets[0].height) == (64, 64)
    assert (sheets[1].width, sheets[1].height) == (64, 32)  # the last sheet has only the rows it needs
    second = np.asarray(decode(sheets[1].src).convert("RGB"))
    assert abs(int(second[16, 48, 0]) - 200) <= 3  # thumbnail 5: sheet 1, row 0, column 1


def test_sampling_is_deterministic_and_only_when_needed():
    assert sample_points(5, 10, seed=0).tolist() == [0, 1, 2, 3, 4]
    first, again, other = sample_points(1000, 50, 1), sample_points(1000, 50, 1), sample_points(1000, 50, 2)
    assert first.tolist() == again.tolist() != other.tolist()
    assert len(set(first)) == 50 and (np.diff(first) > 0).all()


def test_map_columns_of_later_stages_become_colourings(tmp_path):
    path = tmp_path / "map_columns.csv"
    path.write_text("split,index_in_split,cluster,novelty score\ntrain,0,c3,0.25\ntest,1,c1,0.912345\n")
    points = pd.DataFrame({"split": ["train", "train", "test"], "index_in_split": [0, 1, 1],
                           "class_name": ["a", "b", "a"]})
    choices = colourings(points, [read_map_columns(path)])
    assert [(c.name, c.categorical) for c in choices] == [("class", True), ("cluster", True), ("novelty score", False)]
    assert choices[1].values == ["c3", "n/a", "c1"] and choices[2].values == [0.25, None, 0.912345]
    # the hover box: numbers as the report prints them, nothing for a point without a value
    assert hover_text(choices) == {"cluster": ["c3", "n/a", "c1"], "novelty score": ["0.25", None, "0.9123"]}
    (tmp_path / "bad.csv").write_text("split,value\ntrain,1\n")
    with pytest.raises(ValueError, match=r"bad\.csv: .*missing index_in_split"):
        read_map_columns(tmp_path / "bad.csv")


def test_formatting_and_script_json():
    assert [number(v) for v in (12345, 0.78351, 1234.5, 2.5, None, True, "cpu")] == \
        ["12,345", "0.7835", "1,234", "2.5", "—", "yes", "cpu"]
    assert number({"cross": 0.25213, "within_split": None}) == "cross 0.2521; within split —"
    assert number([3, 0.123456]) == "3, 0.1235"
    assert script_json({"a": "</script>"}) == '{"a":"<\\/script>"}'


def test_explore_page_samples_projects_and_embeds_every_thumbnail(tmp_path):
    spec = {"name": "shapes", "kind": "synthetic", "num_classes": 4, "images_per_class": {"train": 10, "test": 5},
            "image_size": 32, "overlapping_pairs": 1, "seed": 0}
    dataset = open_dataset(spec)
    manifest = dataset.scan().manifest
    rng = np.random.default_rng(0)
    splits = {split: SplitFeatures((rng.normal(size=(len(part), 8)) + 3 * part["label"].to_numpy()[:, None]
                                    ).astype(np.float32), part["label"].to_numpy(), part["index_in_split"].to_numpy())
              for split, part in manifest.groupby("split", sort=False)}
    write_store(tmp_path / "features.h5", splits, {"dataset": "shapes", "model": "m", "class_names": ["w", "x", "y", "z"]})
    output = tmp_path / "explore.html"
    drawn = build_explore_page(FeatureStore(tmp_path / "features.h5"), manifest, dataset, output, backbone="bb", max_points=50,
                               seed=3, thumbnail_size=24)
    assert drawn == {"points": 50, "total": 60, "method": "UMAP (cosine, 15 neighbours)", "sheets": 1}
    html = output.read_text()
    assert "Showing 50 of 60 images: a random sample drawn with seed 3" in " ".join(html.split())
    data = json.loads(re.search(r"const DATA = (\{.*?\});\n", html).group(1))
    assert len(data["class"]) == 50 and sum(len(trace["x"]) for trace in data["figures"]["class"]["data"]) == 50
    assert sorted(i for trace in data["figures"]["class"]["data"] for i in trace["customdata"]) == list(range(50))
    sheet = decode(Page(html).images[0])
    assert sheet.size == (32 * 24, 2 * 24)  # 50 thumbnails: two rows of a 32-column sheet
    # the first cell shows point 0's image (lossy-compressed), far closer to it than to another class's image
    got = np.asarray(sheet.convert("RGB"))[:24, :24].astype(int)
    other = data["class"].index(next(name for name in data["class"] if name != data["class"][0]))
    error = [np.abs(got - thumbnail(dataset.read_image(data["split"][i], data["source"][i]), 24)).mean()
             for i in (0, other)]
    assert error[0] < 10 and error[0] < error[1] / 2, error
    assert "plotly.js" in html and "https://" not in html.split("<script>", 1)[0]


def test_config_report_section_has_defaults_and_is_checked():
    from embedlens.config import ConfigError, validate_config

    base = {"datasets": [{"name": "d", "kind": "synthetic"}], "backbones": [{"name": "b", "kind": "timm", "model": "m"}]}
    assert validate_config(json.loads(json.dumps(base)))["report"] == {"map_points": 20000, "seed": 0, "thumbnail_size": 64}
    with pytest.raises(ConfigError, match=r"(?s)report: unknown key\(s\) 'points'.*report.map_points: 0 is less than"):
        validate_config({**base, "report": {"points": 5, "map_points": 0}})


def test_make_prints_the_report_under_the_config_s_results_folder(tmp_path):
    """``make run CONFIG=x.yaml`` and ``make demo`` print the report of the config they ran, wherever its
    ``results:`` key puts it (relative to the checkout, where make runs Snakemake); Snakemake itself is
    replaced by ``echo`` here, and the venv by one that runs this Python."""
    repo = Path(__file__).resolve().parents[1]
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").write_text(f'#!/bin/sh\nexec {sys.executable} "$@"\n')
    (venv / "bin" / "python").chmod(0o755)
    (venv / ".installed-demo").touch()  # newer than pyproject.toml: make installs nothing
    config = tmp_path / "x.yaml"
    config.write_text(yaml.safe_dump({"results": "runs/x", "datasets": [{"name": "s", "kind": "synthetic"}],
                                      "backbones": [{"name": "b", "kind": "timm", "model": "resnet10t"}]}))

    def make(*arguments: str) -> list[str]:
        result = subprocess.run(["make", "-s", *arguments, f"VENV={venv}", "SNAKEMAKE=echo"], cwd=repo,
                                capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        return result.stdout.splitlines()

    assert make("run", f"CONFIG={config}") == [f"--configfile {config} --replace-workflow-config",
                                                f"report: {repo / 'runs' / 'x' / 'report.html'}"]
    demo_results = load_config(repo / "configs" / "demo.yaml")["results"]
    assert make("demo")[-1] == f"report: {repo / demo_results / 'report.html'}"
    assert make("snakemake-report", f"CONFIG={config}")[0].endswith(
        f"--report {repo / 'runs' / 'x' / 'snakemake-report.zip'}")
    assert make("unlock", f"CONFIG={config}") == [f"--configfile {config} --replace-workflow-config --unlock"]
