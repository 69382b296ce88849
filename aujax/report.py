"""Report stage: per-AU tables as CSV, JSON and printed text with the AUs as columns, like the paper's tables."""

import csv
import os

from aujax import facs, files

AU_COLUMNS = tuple(f"AU{a}" for a in facs.AU_IDS)


def _cell(value) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def table_rows(rows: list[dict], keys: tuple[str, ...]) -> list[dict]:
    """Flatten {"method": str, "scores": {"AU4": {...}, ...}} rows into one row per (method, key) with AU columns.

    The `mean` column averages the AUs that have a value; AUs without one show "n/a" and their reason is kept in
    `notes`.
    """
    flat = []
    for row in rows:
        for key in keys:
            values = {au: row["scores"][au].get(key) for au in AU_COLUMNS}
            numbers = [v for v in values.values() if isinstance(v, float)]
            notes = "; ".join(f"{au}: {row['scores'][au]['reason']}" for au in AU_COLUMNS
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
        writer = csv.DictWriter(f, fieldnames=["method", "metric", *AU_COLUMNS, "mean", "notes"])
        writer.writeheader()
        writer.writerows({k: ("" if v is None else v) for k, v in r.items()} for r in flat)
    os.replace(tmp, os.path.join(results_dir, stem + ".csv"))
    files.write_json(os.path.join(results_dir, stem + ".json"), {"title": title, "rows": rows})
    return format_table(title, flat)


def format_table(title: str, flat: list[dict]) -> str:
    label_width = max([len(f"{r['method']} {r['metric']}") for r in flat] + [10])
    header = f"{'':<{label_width}}" + "".join(f"{c:>8}" for c in (*AU_COLUMNS, "mean"))
    lines = [title, header]
    for r in flat:
        label = f"{r['method']} {r['metric']}"
        lines.append(f"{label:<{label_width}}" + "".join(f"{_cell(r[c]):>8}" for c in (*AU_COLUMNS, "mean")))
    notes = sorted({r["notes"] for r in flat if r["notes"]})
    lines += [f"  n/a: {n}" for n in notes]
    return "\n".join(lines)
