"""The run's report as one self-contained HTML file: summary, every results table and every figure.

`write_report(workdir)` reads what the stages left under `workdir` (all optional) and writes `workdir/report.html`:

  results/summary.json    header: best fold, mean F1s, held-out F1 per fold
  config.json             the run's settings (folded away)
  results/faithfulness.json, sanity_randomisation.json   what the model checks found (`model_checks_section`)
  results/relevance_regions.json, strategies_<role>.json   shortcuts and strategies (`verification_section`)
  results/*.csv           one HTML table each, titled by the matching .json's "title"
  results/figures/**.png  embedded as base64 data URIs, grouped by kind (`FIGURE_KINDS`), with captions

The file has inline CSS only: no scripts, no fonts or images from elsewhere, so it opens from disk without a server
and without a network; its Content-Security-Policy lets a browser load nothing but the embedded images. All text
from the files is escaped.
"""

import base64
import csv
import dataclasses
import datetime
import html
import os
import re
from collections.abc import Callable
from pathlib import Path

from aujax import facs, files, report, rundir

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Nothing but the embedded images and inline CSS may load: opened from disk, the report fetches nothing.
CONTENT_SECURITY_POLICY = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
MAX_TABLE_ROWS = 200  # longer CSVs (e.g. the per-file preprocess report) show their first rows and say so
# results/summary.json keys in the order shown, with their labels; other keys follow under their own names.
SUMMARY_LABELS = {
        "loso_pooled_mean_f1": "leave-one-subject-out mean F1 (pooled held-out predictions)",
        "cross_mean_f1": "cross-domain mean F1 (model of the best fold)",
        "best_fold": "best fold (highest held-out mean F1)",
        "best_fold_subject": "held-out subject of the best fold",
        "held_out_mean_f1_per_fold": "held-out mean F1 per fold",
}

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0 auto; max-width: 1280px;
       padding: 1.5em 2em 4em; color: #1d1d1f; background: #fff; line-height: 1.45; }
h1 { font-size: 1.7em; margin-bottom: 0.2em; }
h2 { font-size: 1.35em; border-bottom: 2px solid #e3e3e8; padding-bottom: 0.2em; margin-top: 2em; }
h3 { font-size: 1.1em; margin: 1.6em 0 0.5em; }
.meta, figcaption, .notes, .missing { color: #5a5a64; font-size: 0.92em; }
nav a { margin-right: 1.2em; }
table { border-collapse: collapse; margin: 0.4em 0; font-size: 0.9em; }
th, td { border: 1px solid #d6d6de; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }
th { background: #f1f1f5; }
tbody tr:nth-child(even) { background: #fafafc; }
td.number { text-align: right; font-variant-numeric: tabular-nums; }
.na { color: #9a9aa4; }
td.na { text-align: center; }
.scroll { overflow-x: auto; }
figure { margin: 1em 0 2em; }
figure img { max-width: 100%; height: auto; border: 1px solid #ececf0; }
code { background: #f4f4f7; padding: 0 0.25em; border-radius: 3px; }
details { margin: 0.8em 0; }
.flag { color: #a4001d; }
"""


@dataclasses.dataclass(frozen=True)
class FigureKind:
    """A section of figures: file names matching `pattern` (a regex, from the start of the name), captioned by
    `caption(match)`."""
    title: str
    pattern: str
    caption: Callable[[re.Match], str]


def _figure2_caption(match: re.Match) -> str:
    au = int(match.group(1))
    label = facs.au_label(au)
    return (f"{label}: the faces with the lowest and highest μ (top) and their LRP heatmaps over the face (bottom; "
            "red: evidence for the AU, blue: against, each scaled by its own max |R|) with the AU's region.")


def _stem(name: str) -> str:
    return re.escape(os.path.splitext(name)[0])


FIGURE_KINDS = (
        FigureKind("Figure 1: AU regions", _stem(rundir.FIGURE1),
                   lambda m: "The face's 68 landmarks (iBUG order, 0-based ids) and each AU's region, drawn from "
                             "aujax.regions: the same boxes μ measures relevance in."),
        FigureKind("Figure 2: examples with low and high μ", re.escape(rundir.FIGURE2_PREFIX) + r"(?:AU)?(\d+)",
                   _figure2_caption),
        FigureKind("LRP heatmap grids", re.escape(rundir.HEATMAP_GRID_PREFIX),
                   lambda m: "LRP heatmaps, one row per AU and one column per image (red: evidence for the AU, "
                             "blue: against, white: none; each heatmap scaled by its own max |R|)."),
        FigureKind("Training curves", _stem(rundir.TRAINING_CURVES),
                   lambda m: "Training loss and held-out mean F1 per epoch, one line per leave-one-subject-out "
                             "fold (gaps: epochs where no AU had enough held-out positives for an F1)."),
        FigureKind("μ distributions", _stem(rundir.MU_DISTRIBUTIONS),
                   lambda m: "Per-AU distribution of μ, the share of positive relevance inside the AU's region, over "
                             "correctly detected AUs: box (quartiles, whiskers to 1.5 IQR) and every value, one "
                             "colour per dataset, n under each box."),
        FigureKind("Faithfulness", _stem(rundir.FAITHFULNESS_FIGURE),
                   lambda m: "Top: patch flipping, the mean logit of the correctly predicted AUs as the image's 8x8 "
                             "patches are filled most relevant first under each composite, and in random order "
                             "(dashed); the higher a composite's AOPC above random order, the more the model depends "
                             "on what its heatmaps rank first. Bottom: the mean logit drop per AU when its own region, "
                             "a random face region of the same area or the background is filled."),
        FigureKind("Sanity check: cascading randomisation", _stem(rundir.SANITY_FIGURE),
                   lambda m: "Similarity of each composite's heatmaps to the trained model's as the parameters are "
                             "re-drawn at random from the head down (Adebayo et al. 2018): heatmaps that explain the "
                             "model fall towards 0; above the dashed threshold once everything is random, they show "
                             "the image more than the model."),
        FigureKind("Relevance-region matrix", _stem(rundir.RELEVANCE_REGIONS_FIGURE),
                   lambda m: "Per explained AU (rows), the mean share of its positive relevance in every AU's region, "
                             "the rest of the face (inside the landmarks' hull, in no region) and the background; own "
                             "region outlined; regions overlap and each counts all its pixels; ◀: likely shortcut."),
        FigureKind("Strategies (SpRAy)", re.escape(rundir.STRATEGIES_PREFIX) + r"(\w+)",
                   lambda m: f"The {m.group(1)} role: per AU, its correctly predicted images' heatmaps clustered "
                             "(spectral clustering, number of clusters from the eigengap); each row one cluster, its "
                             "mean heatmap and its most typical faces."),
)
OTHER_FIGURES = "Other figures"


def _natural_key(name: str) -> list:
    """Sort key that orders embedded numbers by value: AU4 < AU6 < AU10."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _format_number(text: str) -> str:
    """'0.83333' -> '0.833'; integers stay as written."""
    return text if re.fullmatch(r"-?\d+", text) else f"{float(text):.3f}"


def _value_html(value) -> str:
    """A JSON value as escaped HTML: floats to 3 decimals, None as n/a, dicts as nested tables."""
    if value is None:
        return '<span class="na">n/a</span>'
    if isinstance(value, float):
        return f"{value:.3f}"
    if isinstance(value, dict):
        return _mapping_table(value)
    if isinstance(value, list):
        return ", ".join(_value_html(v) for v in value)
    return html.escape(str(value))


def _mapping_table(mapping: dict, labels: dict | None = None) -> str:
    rows = "".join(f"<tr><th>{html.escape((labels or {}).get(k, str(k)))}</th><td>{_value_html(v)}</td></tr>"
                   for k, v in mapping.items())
    return f'<table class="mapping"><tbody>{rows}</tbody></table>'


def _read_json(path: str):
    """The JSON value in `path`, None if there is no such file; ValueError naming the file if it is not JSON."""
    try:
        return files.read_json(path)
    except ValueError as error:
        raise ValueError(f"{path}: not valid JSON ({error})") from None


def summary_section(workdir: str) -> str:
    """The run summary (results/summary.json) and settings (config.json), or a note that there is none."""
    summary = _read_json(rundir.RunDir(workdir).summary)
    if summary is None:
        body = ('<p class="missing">No <code>results/summary.json</code>: run <code>--mode=evaluate</code> (or '
                '<code>all</code>) for the summary and Tables 1 and 2.</p>')
    else:
        ordered = {key: summary[key] for key in SUMMARY_LABELS if key in summary}
        body = _mapping_table(ordered | summary, SUMMARY_LABELS)
    config = _read_json(rundir.RunDir(workdir).config)
    if config is not None:
        body += f"<details><summary>Run settings (config.json)</summary>{_mapping_table(config)}</details>"
    return f'<section id="summary"><h2>Run summary</h2>{body}</section>'


def shortcuts_html(workdir: str) -> str:
    """The AUs flagged in results/relevance_regions.json as likely co-occurrence shortcuts, as a list ('' if the file
    is missing)."""
    matrix = _read_json(rundir.RunDir(workdir).result(rundir.RELEVANCE_REGIONS + ".json"))
    if not isinstance(matrix, dict):
        return ""
    flagged = [row for row in matrix.get("rows", []) if row.get("shortcut")]
    items = "".join(
            f"<li><b>{html.escape(row['au'])}</b> ({html.escape(row['dataset'])}, {html.escape(row['composite'])}, "
            f"n={row['n']}): {row['shortcut']['mu']:.2f} of its positive relevance in its own region, "
            f"{row['shortcut']['share']:.2f} in {html.escape(row['shortcut']['region'])}'s region (outside its own): "
            "likely read from a co-occurring AU</li>" for row in flagged)
    body = (f"<ul>{items}</ul>" if items else
            "<p>Every explained AU's relevance lies more in its own region than in any other AU's.</p>")
    return ("<h3>Likely co-occurrence shortcuts</h3><p class=\"meta\">AUs whose relevance falls more in another AU's "
            "region than in their own (results/relevance_regions.json)</p>" + body)


def strategies_html(workdir: str) -> str:
    """Each role's SpRAy clusters (results/strategies_<role>.json) as a table: per AU, every cluster's size and μ."""
    parts = []
    for path in sorted(Path(rundir.RunDir(workdir).results).glob(rundir.strategies("*"))):
        record = _read_json(str(path))
        rows = "".join(
                f"<tr><th>{html.escape(au)}</th><td>{len(entry['clusters'])}</td><td>"
                + ", ".join(f"#{c['id']}: {c['size']} images, μ = {c['mu']:.3f}" for c in entry["clusters"])
                + "</td></tr>" for au, entry in record.get("aus", {}).items())
        parts.append(f"<h3>Strategies of the {html.escape(record.get('role', path.stem))} role "
                     f"({html.escape(str(record.get('composite', '')))})</h3>"
                     f'<p class="meta">results/{html.escape(path.name)}</p>'
                     f"<table><thead><tr><th>AU</th><th>clusters</th><th>size and mean μ of each</th></tr></thead>"
                     f"<tbody>{rows}</tbody></table>")
    return "".join(parts)


def verification_section(workdir: str) -> str:
    """Shortcuts and strategies (empty where the run has neither)."""
    body = shortcuts_html(workdir) + strategies_html(workdir)
    return f'<section id="verification"><h2>Verification beyond μ</h2>{body}</section>' if body else ""


def _read_csv(path: Path) -> tuple[list[str], list[list[str]]]:
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    if not rows:
        return [], []
    return rows[0], rows[1:]


def _table_title(csv_path: Path) -> str:
    """The "title" of the .json written beside the CSV (`report.write_table`), else the file's stem."""
    meta = _read_json(str(csv_path.with_suffix(".json")))
    return meta.get("title", csv_path.stem) if isinstance(meta, dict) else csv_path.stem


def _cell_html(text: str, is_au_table: bool) -> str:
    if text == "" and is_au_table:
        return '<td class="na">n/a</td>'
    if _is_number(text):
        return f'<td class="number">{html.escape(_format_number(text))}</td>'
    return f"<td>{html.escape(text)}</td>"


def table_section(csv_path: Path) -> str:
    """One CSV as an HTML table. Tables in `report.write_table` form (AU columns and notes) show empty cells as
    n/a and their notes, the reasons for n/a, under the table; other CSVs are shown as they are."""
    header, rows = _read_csv(csv_path)
    is_au_table = bool(report.au_columns(header))
    notes_column = header.index("notes") if is_au_table and "notes" in header else None
    shown = [i for i in range(len(header)) if i != notes_column]
    head = "".join(f"<th>{html.escape(header[i])}</th>" for i in shown)
    body = "".join("<tr>" + "".join(_cell_html(row[i] if i < len(row) else "", is_au_table) for i in shown)
                   + "</tr>" for row in rows[:MAX_TABLE_ROWS])
    parts = [f'<h3>{html.escape(_table_title(csv_path))}</h3>',
             f'<p class="meta">results/{html.escape(csv_path.name)}, {len(rows)} rows</p>',
             f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>']
    if len(rows) > MAX_TABLE_ROWS:
        parts.append(f'<p class="notes">First {MAX_TABLE_ROWS} of {len(rows)} rows; all of them are in '
                     f'results/{html.escape(csv_path.name)}.</p>')
    if notes_column is not None:
        notes = sorted({row[notes_column] for row in rows if len(row) > notes_column and row[notes_column]})
        if notes:
            items = "".join(f"<li>{html.escape(note)}</li>" for note in notes)
            parts.append(f'<div class="notes">n/a means:<ul>{items}</ul></div>')
    return "".join(parts)


def tables_section(results_dir: str) -> str:
    paths = sorted(Path(results_dir).glob("*.csv"), key=lambda p: _natural_key(p.name)) \
        if os.path.isdir(results_dir) else []
    body = "".join(table_section(p) for p in paths) or \
        '<p class="missing">No tables in <code>results/</code> yet.</p>'
    return f'<section id="tables"><h2>Tables</h2>{body}</section>'


def png_data_uri(path: Path) -> tuple[str, int, int]:
    """(data URI, width, height) of a PNG file; ValueError naming the file if it is not a PNG."""
    data = path.read_bytes()
    if not data.startswith(PNG_SIGNATURE) or data[12:16] != b"IHDR":
        raise ValueError(f"{path}: not a PNG file")
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii"), width, height


def _figure_html(path: Path, figures_dir: Path, caption: str) -> str:
    name = html.escape(str(path.relative_to(figures_dir)))
    try:
        uri, width, height = png_data_uri(path)
    except ValueError as error:
        return f'<p class="missing">Not shown: {html.escape(str(error))}</p>'
    return (f'<figure><img src="{uri}" width="{width}" height="{height}" alt="{name}">'
            f"<figcaption>{html.escape(caption + ' ' if caption else '')}<code>{name}</code></figcaption></figure>")


def group_figures(names: list[str]) -> dict[str, list[tuple[str, str]]]:
    """{section title: [(file name, caption)]} in `FIGURE_KINDS` order then `OTHER_FIGURES`; empty sections
    left out. A name goes to the first kind whose pattern matches its start."""
    groups = {kind.title: [] for kind in FIGURE_KINDS}
    groups[OTHER_FIGURES] = []
    for name in names:
        for kind in FIGURE_KINDS:
            match = re.match(kind.pattern, os.path.basename(name))
            if match:
                groups[kind.title].append((name, kind.caption(match)))
                break
        else:
            groups[OTHER_FIGURES].append((name, ""))
    return {title: members for title, members in groups.items() if members}


def figures_section(figures_dir: str) -> str:
    root = Path(figures_dir)
    paths = sorted(root.rglob("*.png"), key=lambda p: _natural_key(str(p.relative_to(root)))) \
        if root.is_dir() else []
    groups = group_figures([str(p.relative_to(root)) for p in paths])
    body = "".join(f"<h3>{html.escape(title)}</h3>" + "".join(_figure_html(root / name, root, caption)
                                                                for name, caption in members)
                   for title, members in groups.items())
    if not body:
        body = '<p class="missing">No figures in <code>results/figures/</code> yet.</p>'
    return f'<section id="figures"><h2>Figures</h2>{body}</section>'


def _checks_numbers(values: dict) -> str:
    return ", ".join(f"{html.escape(name)} {_value_html(value)}" for name, value in values.items())


def model_checks_section(workdir: str) -> str:
    """What faithfulness and the sanity check found (results/faithfulness.json, results/sanity_randomisation.json):
    which composite's heatmaps the model depends on most, and the composites flagged by the sanity check; "" where
    neither ran."""
    run = rundir.RunDir(workdir)
    items = []
    for found in (_read_json(run.result(rundir.FAITHFULNESS + ".json")) or {}).get("datasets", []):
        aopc = found["aopc"]
        ranked = sorted((c for c in found["beats_random_order"] if aopc[c] is not None), key=lambda c: -aopc[c])
        behind = [c for c, beats in found["beats_random_order"].items() if not beats]
        verdict = (f"the model depends most on the pixels ranked first by <b>{html.escape(ranked[0])}</b>"
                   if ranked else "no correctly predicted AU to perturb")
        items.append(f"<li>{html.escape(found['dataset'])} ({found['n_pairs']} correctly predicted AUs): {verdict}. "
                     f"AOPC, logit units: {_checks_numbers(aopc)}"
                     + (f'; <span class="flag">no better than random order: {html.escape(", ".join(behind))}</span>'
                        if behind else "")
                     + f". Mean logit drop with the region filled: {_checks_numbers(found['mean_drop'])}.</li>")
    sanity = _read_json(run.result(rundir.SANITY + ".json")) or {}
    for found in sanity.get("datasets", []):
        threshold = _value_html(found["threshold"])
        if found["flagged"]:
            items.append(f'<li class="flag">{html.escape(found["dataset"])}: the heatmaps of '
                         f'<b>{html.escape(", ".join(found["flagged"]))}</b> barely change when every parameter is '
                         f"random (similarity to the trained model's at least {threshold}): they show the image more "
                         "than the model (Adebayo et al. 2018).</li>")
        else:
            items.append(f"<li>{html.escape(found['dataset'])}: every composite's heatmaps change under cascading "
                         f"randomisation (similarity below {threshold} once every parameter is random).</li>")
    if not items:
        return ""
    return (f'<section id="checks"><h2>Model checks: faithfulness and sanity</h2><ul>{"".join(items)}</ul>'
            "<p class=\"notes\">Tables <code>faithfulness</code> and <code>sanity_randomisation</code> and their figures "
            "below.</p></section>")


def render_report(workdir: str, title: str = "aujax verification report") -> str:
    """The report of `workdir` as one HTML document (a string)."""
    run = rundir.RunDir(workdir)
    created = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return "\n".join([
            "<!DOCTYPE html>",
            '<html lang="en"><head><meta charset="utf-8">',
            f'<meta http-equiv="Content-Security-Policy" content="{CONTENT_SECURITY_POLICY}">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>",
            f"<h1>{html.escape(title)}</h1>",
            f'<p class="meta">{html.escape(os.path.abspath(workdir))}, written {created}</p>',
            '<nav><a href="#summary">Summary</a><a href="#tables">Tables</a><a href="#figures">Figures</a></nav>',
            summary_section(workdir),
            model_checks_section(workdir),
            verification_section(workdir),
            tables_section(run.results),
            figures_section(run.figures),
            "</body></html>",
    ])


def write_report(workdir: str, title: str = "aujax verification report") -> str:
    """Write `workdir/report.html` (atomically) and return its path; FileNotFoundError if `workdir` is missing."""
    if not os.path.isdir(workdir):
        raise FileNotFoundError(f"--workdir={workdir} is not a directory: nothing to report")
    path = rundir.RunDir(workdir).report
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(render_report(workdir, title))
    os.replace(tmp, path)
    return path
