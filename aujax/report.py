"""Report stage: per-AU tables as CSV, JSON and printed text with the AUs as columns, like the paper's tables; the
explain stage's tables (Table 3, its other metrics, μ beside F1, per-subject μ) from its results (`write_explained`).
"""

import csv
import os
import re

from aujax import files, localisation, metrics

OTHER_METRICS = ("mass_accuracy", "rank_accuracy", "pointing_game", "top_k_intersection", "roc_auc")


def _cell(value) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def au_columns(names) -> list[str]:
    """The AU columns ('AU4', 'AU12', ...) among the column names `names`, in their order: a table's AUs are those of
    the run's AU set, in its order."""
    return [name for name in names if re.fullmatch(r"AU\d+", name)]


def table_rows(rows: list[dict], keys: tuple[str, ...]) -> list[dict]:
    """Flatten {"method": str, "scores": {"AU4": {...}, ...}} rows into one row per (method, key) with AU columns
    (those of the first row's scores, in their order: every row scores the same AUs).

    The `mean` column averages the AUs that have a value; AUs without one show "n/a" and their reason is kept in
    `notes`.
    """
    flat = []
    columns = au_columns(rows[0]["scores"]) if rows else []
    for row in rows:
        for key in keys:
            values = {au: row["scores"][au].get(key) for au in columns}
            numbers = [v for v in values.values() if isinstance(v, float)]
            notes = "; ".join(f"{au}: {row['scores'][au]['reason']}" for au in columns
                              if values[au] is None and row["scores"][au].get("reason"))
            flat.append({"method": row["method"], "metric": key, **values,
                         "mean": sum(numbers) / len(numbers) if numbers and key != "support" else None,
                         "notes": notes})
    return flat


def write_table(results_dir: str, stem: str, title: str, rows: list[dict], keys: tuple[str, ...]) -> str:
    """Write `<stem>.csv` and `<stem>.json` under `results_dir`; return the table as printable text."""
    flat = table_rows(rows, keys)
    os.makedirs(results_dir, exist_ok=True)
    tmp = os.path.join(results_dir, stem + ".csv.tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["method", "metric", *au_columns(flat[0] if flat else ()), "mean",
                                               "notes"])
        writer.writeheader()
        writer.writerows({k: ("" if v is None else v) for k, v in r.items()} for r in flat)
    os.replace(tmp, os.path.join(results_dir, stem + ".csv"))
    files.write_json(os.path.join(results_dir, stem + ".json"), {"title": title, "rows": rows})
    return format_table(title, flat)


def format_table(title: str, flat: list[dict]) -> str:
    label_width = max([len(f"{r['method']} {r['metric']}") for r in flat] + [10])
    columns = (*au_columns(flat[0] if flat else ()), "mean")
    header = f"{'':<{label_width}}" + "".join(f"{c:>8}" for c in columns)
    lines = [title, header]
    for r in flat:
        label = f"{r['method']} {r['metric']}"
        lines.append(f"{label:<{label_width}}" + "".join(f"{_cell(r[c]):>8}" for c in columns))
    notes = sorted({r["notes"] for r in flat if r["notes"]})
    lines += [f"  n/a: {n}" for n in notes]
    return "\n".join(lines)


def write_evaluation(run, evaluation) -> str:
    """The tables of a `protocol.Evaluation` under `run.results` (a `rundir.RunDir`) and its summary.json; returns
    the tables as printable text."""
    printed = [write_table(run.results, t.stem, t.title, t.rows, t.keys) for t in evaluation.tables]
    files.write_json(run.summary, evaluation.summary)
    return "\n\n".join(printed)


def write_explained(results_dir: str, explained, cfg, min_support: int, best_subject: str) -> str:
    """Table 3, the other localisation metrics (those in `cfg.metrics`), μ beside F1 and `mu_per_subject.csv` of an
    `explain.Explained` under `results_dir`; returns Tables 3 and μ-F1 as printable text."""
    main, roles = explained.main, explained.roles
    table3 = write_table(
        results_dir, "table3_mu", f"Table 3: μ (share of positive relevance inside the AU's region) and n "
        f"(correctly predicted AUs), model of the best fold ({best_subject})",
        [{"method": f"{explained.results[c, r].records.name} {c}",
          "scores": _scores_row(explained.results[c, r].summaries, ("mu", "n"))}
         for c in explained.composites for r in roles], ("mu", "n"))
    others = tuple(name for name in ("mu_weighted",) + OTHER_METRICS if name in cfg.metrics)
    if others:
        write_table(
            results_dir, "table3_all_metrics", f"Localisation metrics of the {cfg.composite} heatmaps (correctly "
            "predicted AUs)",
            [{"method": main[r].records.name, "scores": _scores_row(main[r].summaries, others)} for r in roles],
            others + ("n_excluded",))
    mu_f1 = write_table(
        results_dir, "table_mu_f1", f"μ beside F1 ({cfg.composite}, model of the best fold)",
        [row for r in roles for row in _mu_f1_rows(main[r], min_support)], ("value",))
    _write_per_subject(os.path.join(results_dir, "mu_per_subject.csv"), main)
    return f"{table3}\n\n{mu_f1}"


def _scores_row(summaries: dict, keys: tuple[str, ...]) -> dict:
    """{'AU4': {key: value, 'reason': ...}, ...} for `write_table` from {metric: tuple of AUSummary} (one per AU of
    the set, in its order)."""
    row = {}
    for j, mu in enumerate(summaries["mu"]):
        entry = {"n": mu.n, "n_excluded": mu.n_excluded, "reason": mu.reason or ""}
        for key in keys:
            if key not in ("n", "n_excluded"):
                entry[key] = summaries[key][j].mean
        row[f"AU{mu.au}"] = entry
    return row


def _mu_f1_rows(result, min_support: int) -> list[dict]:
    """The F1 row and the μ row of one role's `explain.RoleResult`."""
    f1 = metrics.per_au_scores(result.records.labels, result.predictions, min_support, au_ids=result.records.au_ids)
    mu = _scores_row(result.summaries, ("mu",))
    name = result.records.name
    return [{"method": f"{name} F1", "scores": {au: {"value": s["f1"], "reason": s["reason"]} for au, s in f1.items()}},
            {"method": f"{name} μ", "scores": {au: {"value": s["mu"], "reason": s["reason"]} for au, s in mu.items()}}]


def _write_per_subject(path: str, results: dict) -> None:
    """μ, n and n_excluded per dataset, subject and AU of {role: `explain.RoleResult`} as a CSV."""
    rows = []
    for result in results.values():
        per_subject = localisation.summarise_per_subject(result.scores.values["mu"], result.selected,
                                                         result.scores.defined["mu"], result.records.subject,
                                                         result.records.au_ids)
        for subject, summaries in per_subject.items():
            for s in summaries:
                rows.append({"dataset": result.records.name, "subject": subject, "au": f"AU{s.au}",
                             "mu": "" if s.mean is None else f"{s.mean:.4f}", "n": s.n, "n_excluded": s.n_excluded})
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["dataset", "subject", "au", "mu", "n", "n_excluded"])
        writer.writeheader()
        writer.writerows(rows)
