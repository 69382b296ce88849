"""Report stage: per-AU tables as CSV, JSON and printed text with the AUs as columns, like the paper's tables; the
explain stage's tables (Table 3, its other metrics, μ beside F1, per-subject μ) from its results (`write_explained`).
"""

import csv
import os
import re

import numpy as np

from aujax import files, localisation, metrics, rundir
from aujax.analysis import faithfulness, region_matrix, sanity, strategies

# keys whose mean over AUs means nothing (an interval's mean bound is not the mean's bound)
UNAVERAGED_KEYS = ("support", "ci_low", "ci_high", "real")
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
            averaged = numbers and key not in UNAVERAGED_KEYS
            flat.append({"method": row["method"], "metric": key, **values,
                         "mean": sum(numbers) / len(numbers) if averaged else None,
                         "notes": notes})
    return flat


def write_table(results_dir: str, stem: str, title: str, rows: list[dict], keys: tuple[str, ...],
                extra: dict | None = None) -> str:
    """Write `<stem>.csv` and `<stem>.json` (its title, the `extra` entries, the rows) under `results_dir`; return the
    table as printable text."""
    flat = table_rows(rows, keys)
    write_csv(os.path.join(results_dir, stem + ".csv"),
              ["method", "metric", *au_columns(flat[0] if flat else ()), "mean", "notes"], flat)
    files.write_json(os.path.join(results_dir, stem + ".json"), {"title": title, **(extra or {}), "rows": rows})
    return format_table(title, flat)


def write_csv(path: str, fieldnames: list[str], rows: list[dict]) -> None:
    """`rows` as a CSV with these columns, written atomically (parents created); None cells empty."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fieldnames)
        writer.writeheader()
        writer.writerows({k: ("" if v is None else v) for k, v in r.items()} for r in rows)
    os.replace(tmp, path)


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


def write_explained(results_dir: str, explained, cfg, min_support: int, best_subject: str, analysis=None) -> str:
    """Table 3, the other localisation metrics (those in `cfg.metrics`), μ beside F1 and `mu_per_subject.csv` of an
    `explain.Explained` under `results_dir`; returns Tables 3 and μ-F1 as printable text. With `analysis` (an
    `analysis.verify.Analysis`), Table 3's μ get their bootstrap intervals."""
    main, roles = explained.main, explained.roles
    mu_intervals = analysis.mu_intervals if analysis else {}
    keys = ("mu", "ci_low", "ci_high", "n") if analysis else ("mu", "n")
    table3 = write_table(
        results_dir, "table3_mu", f"Table 3: μ (share of positive relevance inside the AU's region) and n "
        f"(correctly predicted AUs), model of the best fold ({best_subject})"
        + (f", with {analysis.confidence:.0%} bootstrap intervals over subjects" if analysis else ""),
        [{"method": f"{explained.results[c, r].records.name} {c}",
          "scores": _with_intervals(_scores_row(explained.results[c, r].summaries, ("mu", "n")),
                                    mu_intervals.get((c, r)))}
         for c in explained.composites for r in roles], keys)
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


def _with_intervals(row: dict, interval: tuple | None) -> dict:
    """`row` ({'AU4': {...}}) with each AU's 'ci_low' and 'ci_high' from (low (A,), high (A,)), None where NaN."""
    if interval is None:
        return row
    for (au, entry), low, high in zip(row.items(), *interval):
        entry.update(ci_low=_number(low), ci_high=_number(high))
    return row


def _number(value) -> float | None:
    return None if value is None or not np.isfinite(value) else float(value)


def write_analysis(run, explained, analysis) -> str:
    """The analyses of an `analysis.verify.Analysis` under `run.results` (a `rundir.RunDir`): the relevance-region
    matrix (`relevance_regions.csv|json`), the paired μ differences (`mu_differences.csv|json`) and each role's
    strategies (`strategies_<role>.json`); returns the differences and the flagged shortcuts as printable text."""
    _write_region_matrices(run, explained, analysis.region_matrices)
    composite = explained.composites[0]
    for role, found in analysis.strategies.items():
        files.write_json(run.result(rundir.strategies(role)), strategies.strategies_record(
                role, composite, explained.results[composite, role].records.source, found))
    lines = [f"  {explained.results[key].records.name} {key[0]}: "
             + ", ".join(f"AU{s.au} in AU{s.other}'s ({s.mu:.2f} own, {s.other_share:.2f} there)" for s in flagged)
             for key, matrix in analysis.region_matrices.items() if (flagged := region_matrix.shortcuts(matrix))]
    text = ("Likely co-occurrence shortcuts (an AU's positive relevance more in another AU's region than in its own; "
            f"{rundir.RELEVANCE_REGIONS}.csv):\n" + "\n".join(lines or ["  none"]))
    if analysis.differences:
        rows = [{"method": f"{explained.results[composite, role].records.name} {composite} − {other}",
                 "scores": _difference_scores(difference, analysis.aus)}
                for (role, other), difference in analysis.differences.items()]
        text += "\n\n" + write_table(
                run.results, rundir.MU_DIFFERENCES, f"Paired bootstrap of μ between composites on the same images "
                f"({analysis.confidence:.0%} intervals over subjects; real: the interval excludes 0)", rows,
                ("difference", "ci_low", "ci_high", "real"))
    return text


def _difference_scores(difference, aus) -> dict:
    return {f"AU{au}": {"difference": _number(difference.difference[j]), "ci_low": _number(difference.low[j]),
                        "ci_high": _number(difference.high[j]), "n": int(difference.n[j]),
                        "real": bool(difference.real[j]) if difference.n[j] else None,
                        "reason": "" if difference.n[j] else "no pair correctly predicted under both composites"}
            for j, au in enumerate(aus)}


def _write_region_matrices(run, explained, matrices: dict) -> None:
    """relevance_regions.csv (one row per dataset, composite and explained AU) and .json (the same, the outside-own-
    region shares, the flagged shortcuts and the definitions)."""
    rows, records = [], []
    for (composite, role), matrix in matrices.items():
        names = region_matrix.columns(matrix.aus)
        flagged = {s.au: s for s in region_matrix.shortcuts(matrix)}
        dataset = explained.results[composite, role].records.name
        for a, au in enumerate(matrix.aus):
            shares = {name: _number(v) for name, v in zip(names, matrix.matrix[a])}
            shortcut = flagged.get(au)
            rows.append({"dataset": dataset, "role": role, "composite": composite, "au": f"AU{au}",
                         "n": int(matrix.n[a]), **shares, "shortcut": f"AU{shortcut.other}" if shortcut else ""})
            records.append({"dataset": dataset, "role": role, "composite": composite, "au": f"AU{au}",
                            "n": int(matrix.n[a]), "shares": shares,
                            "outside_own_region": {f"AU{b}": _number(v) for b, v in zip(matrix.aus,
                                                                                         matrix.outside_own[a])},
                            "shortcut": None if shortcut is None else {
                                    "region": f"AU{shortcut.other}", "share": shortcut.other_share,
                                    "mu": shortcut.mu}})
    columns = list(rows[0]) if rows else []
    write_csv(run.result(rundir.RELEVANCE_REGIONS + ".csv"), columns, rows)
    files.write_json(run.result(rundir.RELEVANCE_REGIONS + ".json"), {
            "title": "Relevance-region matrix: mean share of each explained AU's positive relevance in every AU's "
                     "region, the rest of the face and the background (correctly predicted AUs)",
            "definition": region_matrix.DEFINITION, "rows": records})


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


def write_model_checks(run, checks) -> str:
    """results/faithfulness.csv|json and results/sanity_randomisation.csv|json of an
    `analysis.model_checks.ModelChecks` under `run` (a `rundir.RunDir`); returns what they show as printable text."""
    printed = []
    if checks.faithfulness:
        results = list(checks.faithfulness.values())
        printed.append(write_table(
                run.results, rundir.FAITHFULNESS,
                f"Faithfulness ({results[0].fill} fill): mean logit drop of each correctly predicted AU when its region, "
                "a random face region of the same area or the background is filled; AOPC of patch flipping, most "
                "relevant first per composite and in random order (logit units)",
                [row for result in results for row in faithfulness.table_rows(result)], ("value",),
                {"fill": results[0].fill, "blur_sigma_px": faithfulness.BLUR_SIGMA,
                 "patch_px": faithfulness.FLIP_PATCH, "seconds": round(checks.seconds["faithfulness"], 1),
                 "datasets": [faithfulness.summary(result) for result in results]}))
    if checks.sanity:
        results = list(checks.sanity.values())
        write_table(
                run.results, rundir.SANITY,
                "Sanity check (cascading randomisation from the head down): Spearman rank correlation of |R| and SSIM "
                "between the heatmaps of the trained and of the randomised model, mean over the images",
                [row for result in results for row in sanity.table_rows(result)], sanity.METRICS,
                {"randomisation": sanity.RANDOMISATION, "seconds": round(checks.seconds["sanity"], 1),
                 "datasets": [sanity.summary(result, checks.threshold) for result in results]})
        for result in results:
            lines = [f"Sanity check ({result.name}), similarity to the trained model's heatmaps once every "
                     "parameter is random (Spearman |R|, SSIM):"]
            lines += [f"  {c:<28} {_cell(result.curve('spearman', c)[-1]):>8} {_cell(result.curve('ssim', c)[-1]):>8}"
                      for c in result.composites]
            flagged = result.flagged(checks.threshold)
            lines.append(f"  flagged (>= {checks.threshold}): {', '.join(flagged) if flagged else 'none'}")
            printed.append("\n".join(lines))
    return "\n\n".join(printed)
