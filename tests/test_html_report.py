"""The HTML report: every table value and figure of a fake workdir is in it, it is self-contained, it survives
missing pieces, and a real headless browser renders it with every image loaded and no console messages."""

import base64
import csv
import html.parser
import io
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from aujax import facs, figures, files, html_report, report, rundir

CHROMIUM = shutil.which("chromium")
# Headless Debian chromium without a desktop session: no sandbox (root in a container), no GPU, nothing from the
# network, and a fresh profile per run. `--enable-logging=stderr --v=0` prints every console message (log, error,
# uncaught exception, Content-Security-Policy violation) as an `INFO:CONSOLE` line.
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--enable-logging=stderr", "--v=0")
CONSOLE_LINE = re.compile(r"CONSOLE[:(]\d+.*")
# Injected into a copy of the report only (the report has no scripts): once the page has loaded, the title says
# how many images decoded.
IMAGE_PROBE = ('<script>window.addEventListener("load", () => { const images = [...document.images]; '
               'document.title = "images loaded " + images.filter(i => i.complete && i.naturalWidth > 0).length '
               '+ " of " + images.length; });</script>')


def _scores(f1_values: list, reason: str = "fewer than 2 positives") -> dict:
    return {au: ({"f1": v, "precision": v, "support": 7} if v is not None else {"f1": None, "precision": None,
                                                                              "support": 1, "reason": reason})
            for au, v in zip((f"AU{a}" for a in facs.PAIN_AUS), f1_values)}


def _png(path: Path, colour, size=(160, 90)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = np.zeros((size[1], size[0], 3), np.uint8) + np.array(colour, np.uint8)
    image[10:40, 20:80] = 255 - np.array(colour, np.uint8)
    Image.fromarray(image).save(path)


FIGURE_NAMES = ("figure1_regions.png", "figure2_AU10.png", "figure2_AU4.png", "heatmaps_cv_fold00.png",
                "training_curves.png", "mu_distributions.png", "faithfulness.png", "sanity_randomisation.png",
                "relevance_regions.png", "strategies_cv.png", "something_else.png", "extra/nested.png")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """A workdir as the stages leave it: two tables (one with n/a and text to escape), a summary, settings,
    figures of every kind (one real, from `figures.training_curves`) and one file that is not a PNG."""
    root = tmp_path_factory.mktemp("run")
    results = root / "results"
    report.write_table(str(results), "table1_f1", "Table 1: LOSO F1 on <synthetic> & co",
                       [{"method": "ResNet-18 <pooled>", "scores": _scores([0.81234, 0.5, None, 0.25, 0.9, 0.7, 0.6,
                                                                            0.123456])},
                        {"method": "fold mean", "scores": _scores([0.7, 0.4, 0.3, None, 0.8, 0.6, 0.5, 0.1])}],
                       ("f1", "precision", "support"))
    report.write_table(str(results), "table2_cross_f1", "Table 2: cross-domain F1",
                       [{"method": "ResNet-18", "scores": _scores([0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.05, 0.01])}],
                       ("f1",))
    files.write_json(str(results / "summary.json"),
                     {"best_fold": 1, "best_fold_subject": "S007", "loso_pooled_mean_f1": 0.61234,
                      "cross_mean_f1": None, "held_out_mean_f1_per_fold": {"S003": 0.5, "S007": 0.75}})
    files.write_json(str(root / "config.json"), {"seed": 0, "train": {"epochs": 3}})
    figures_dir = results / "figures"
    for k, name in enumerate(FIGURE_NAMES):
        _png(figures_dir / name, (20 * k, 240 - 20 * k, 90))
    figures.training_curves({"fold_00": [{"epoch": 1, "loss": 1.0, "held_out_mean_f1": 0.4}]},
                            figures_dir / rundir.TRAINING_CURVES)
    (figures_dir / "broken.png").write_bytes(b"not a png at all")
    html_report.write_report(str(root))
    return root


class _Page(html.parser.HTMLParser):
    """What a reader sees: headings, tables (title of the heading above, rows of cell texts; nested tables' rows
    follow in document order), images (src, alt), every src and href, and all text."""

    def __init__(self, text: str):
        super().__init__()
        self.headings, self.tables, self.images, self.references, self.text = [], {}, [], [], []
        self._tag, self._row, self._table = None, None, None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.references += [value for name, value in attrs if name in ("src", "href")]
        attrs = dict(attrs)
        if tag in ("h1", "h2", "h3", "td", "th"):
            self._tag, self._buffer = tag, []
        if tag == "table" and self.headings and self._table is None:
            self._table = self.tables.setdefault(self.headings[-1], [])
        if tag == "tr" and self._table is not None:
            self._row = []
            self._table.append(self._row)
        if tag == "img":
            self.images.append((attrs["src"], attrs.get("alt", "")))

    def handle_endtag(self, tag):
        if tag == self._tag:
            text = "".join(self._buffer).strip()
            if tag in ("h1", "h2", "h3"):
                self.headings.append(text)
            elif self._row is not None:
                self._row.append(text)
            self._tag = None
        if tag == "table":
            self._table = None

    def handle_data(self, data):
        self.text.append(data)
        if self._tag:
            self._buffer.append(data)


@pytest.fixture(scope="module")
def page(workdir) -> tuple[str, _Page]:
    text = (workdir / "report.html").read_text(encoding="utf-8")
    return text, _Page(text)


def _expected_cell(value: str, column: str) -> str:
    if value == "":
        return "n/a"
    return value if column in ("method", "metric") or re.fullmatch(r"\d+", value) else f"{float(value):.3f}"


def test_every_table_value_is_in_the_report_under_its_title(workdir, page):
    _, parsed = page
    for stem in ("table1_f1", "table2_cross_f1"):
        title = files.read_json(str(workdir / "results" / f"{stem}.json"))["title"]
        with open(workdir / "results" / f"{stem}.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        columns = ["method", "metric", *(f"AU{a}" for a in facs.PAIN_AUS), "mean"]
        shown = parsed.tables[title]
        assert shown[0] == columns
        assert shown[1:] == [[_expected_cell(row[c], c) for c in columns] for row in rows]
    table1 = parsed.tables["Table 1: LOSO F1 on <synthetic> & co"]
    assert table1[1][:3] == ["ResNet-18 <pooled>", "f1", "0.812"] and table1[1][-2] == "0.123"
    assert "AU7: fewer than 2 positives" in "".join(parsed.text), "the reason for n/a is shown"


def test_summary_and_settings_are_in_the_header(page):
    text, parsed = page
    summary = parsed.tables["Run summary"]
    cells = {row[0]: row[1] for row in summary if len(row) == 2}
    assert cells[html_report.SUMMARY_LABELS["best_fold_subject"]] == "S007"
    assert cells[html_report.SUMMARY_LABELS["loso_pooled_mean_f1"]] == "0.612"
    assert cells[html_report.SUMMARY_LABELS["cross_mean_f1"]] == "n/a"
    assert ["S007", "0.750"] in summary
    first_column = [row[0] for row in summary]
    positions = [first_column.index(label) for label in html_report.SUMMARY_LABELS.values()]
    assert positions == sorted(positions), "the mean F1s first, in SUMMARY_LABELS order"
    assert "Run settings (config.json)" in text and ["epochs", "3"] in summary


def test_every_figure_is_embedded_as_a_png_grouped_by_kind(workdir, page):
    text, parsed = page
    figures_dir = workdir / "results" / "figures"
    assert len(parsed.images) == len(FIGURE_NAMES) == text.count('<img src="data:image/png;base64,')
    for src, alt in parsed.images:
        data = base64.b64decode(src.removeprefix("data:image/png;base64,"), validate=True)
        assert data == (figures_dir / alt).read_bytes(), alt
        with Image.open(io.BytesIO(data)) as image:
            image.verify()
    order = [alt for _, alt in parsed.images]
    assert order == ["figure1_regions.png", "figure2_AU4.png", "figure2_AU10.png", "heatmaps_cv_fold00.png",
                     "training_curves.png", "mu_distributions.png", "faithfulness.png", "sanity_randomisation.png",
                     "relevance_regions.png", "strategies_cv.png", "extra/nested.png", "something_else.png"]
    headings = parsed.headings
    sections = [h.title for h in html_report.FIGURE_KINDS] + [html_report.OTHER_FIGURES]
    assert [h for h in headings if h in sections] == sections
    assert "AU10 upper lip raiser: the faces with the lowest and highest μ" in text
    assert "Not shown: " in text and "broken.png: not a PNG file" in text


def test_report_is_self_contained_and_escaped(page):
    text, parsed = page
    assert "<script" not in text and "<link" not in text and "@import" not in text
    assert parsed.references and all(r.startswith(("data:image/png;base64,", "#")) for r in parsed.references)
    assert "url(" not in text
    assert html_report.CONTENT_SECURITY_POLICY in text
    assert "<pooled>" not in text and "&lt;pooled&gt;" in text and "&lt;synthetic&gt; &amp; co" in text


def test_a_run_without_results_still_gives_a_valid_report(tmp_path):
    path = html_report.write_report(str(tmp_path))
    text = Path(path).read_text(encoding="utf-8")
    parsed = _Page(text)
    assert path == str(tmp_path / "report.html")
    assert parsed.headings[:4] == ["aujax verification report", "Run summary", "Tables", "Figures"]
    assert "No <code>results/summary.json</code>" in text and "No tables" in text and "No figures" in text
    assert text.rstrip().endswith("</html>")
    with pytest.raises(FileNotFoundError, match="nothing_here"):
        html_report.write_report(str(tmp_path / "nothing_here"))
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "summary.json").write_text("{")
    with pytest.raises(ValueError, match="summary.json: not valid JSON"):
        html_report.write_report(str(tmp_path))


def test_long_csvs_show_their_first_rows_and_say_so(tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    rows = [["source", "status", "reason"]] + [[f"img_{i:04d}.png", "ok", ""] for i in range(250)]
    with open(results / "preprocess_report.csv", "w", newline="") as f:
        csv.writer(f).writerows(rows)
    text = Path(html_report.write_report(str(tmp_path))).read_text(encoding="utf-8")
    shown = _Page(text).tables["preprocess_report"]
    assert len(shown) == 1 + html_report.MAX_TABLE_ROWS and shown[-1] == ["img_0199.png", "ok", ""]
    assert f"First {html_report.MAX_TABLE_ROWS} of 250 rows" in text


def _chromium(page: Path, profile: Path, *arguments: str) -> subprocess.CompletedProcess:
    result = subprocess.run([CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *arguments, page.as_uri()],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def _browse(report_text: str, directory: Path) -> tuple[str, int, int, list[str]]:
    """Open `report_text` with the image probe in chromium: (title, images loaded, images, console lines)."""
    directory.mkdir()
    assert html_report.CONTENT_SECURITY_POLICY in report_text
    probed = report_text.replace(html_report.CONTENT_SECURITY_POLICY,
                                 html_report.CONTENT_SECURITY_POLICY + "; script-src 'unsafe-inline'")
    probed = probed.replace("</body>", IMAGE_PROBE + "</body>")
    page = directory / "report.html"
    page.write_text(probed, encoding="utf-8")
    result = _chromium(page, directory / "profile", "--virtual-time-budget=5000", "--dump-dom")
    title = re.search(r"<title>(.*?)</title>", result.stdout, re.S).group(1)
    counts = re.fullmatch(r"images loaded (\d+) of (\d+)", title)
    assert counts, f"the probe did not run: title {title!r}"
    return title, int(counts.group(1)), int(counts.group(2)), CONSOLE_LINE.findall(result.stderr)


def _broken_image(text: str) -> str:
    return re.sub(r'src="data:image/png;base64,[^"]+"', 'src="data:image/png;base64,AAAA"', text, count=1)


def _javascript_error(text: str) -> str:
    return text.replace("</body>", "<script>undefinedFunction();</script></body>")


def _remote_image(text: str) -> str:
    return text.replace("</body>", '<img src="https://example.com/face.png" alt="remote"></body>')


@pytest.mark.slow  # a browser
@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not on PATH (tests/setup.sh installs it as root: "
                                             "apt-get install chromium); the browser test needs it")
def test_report_renders_in_headless_chromium_with_every_image_and_no_console_messages(workdir, tmp_path):
    text = (workdir / "report.html").read_text(encoding="utf-8")
    _, loaded, total, console = _browse(text, tmp_path / "report")
    assert (loaded, total) == (len(FIGURE_NAMES), len(FIGURE_NAMES))
    assert console == []

    shot = tmp_path / "screenshot.png"
    _chromium(workdir / "report.html", tmp_path / "profile", "--window-size=1280,1600", f"--screenshot={shot}")
    with Image.open(shot) as image:
        assert image.size == (1280, 1600)
        grey = np.asarray(image.convert("L"), np.float64)
    assert (grey < 128).mean() > 0.01 and grey.std() > 20, "the screenshot shows text and tables, not a blank page"

    # The checks can fail: a broken image, a script error and a remote image are each caught.
    _, loaded, total, console = _browse(_broken_image(text), tmp_path / "broken_image")
    assert (loaded, total) == (len(FIGURE_NAMES) - 1, len(FIGURE_NAMES))
    _, _, _, console = _browse(_javascript_error(text), tmp_path / "javascript_error")
    assert any("undefinedFunction is not defined" in line for line in console), console
    _, loaded, total, console = _browse(_remote_image(text), tmp_path / "remote_image")
    assert loaded == len(FIGURE_NAMES) and total == len(FIGURE_NAMES) + 1
    assert any("https://example.com/face.png" in line and "Content Security Policy" in line for line in console)
