"""What every lesson writes: Markdown tables, results files (JSON, Markdown, CSV) and plots.

Figures are drawn with the library's `figures` module (no pyplot state).
"""

import csv
import json
import os

from hf_vit.figures import new_figure, save_plot


def markdown_table(rows: list[dict], columns: list[str] | None = None) -> str:
    columns = columns or list(dict.fromkeys(key for row in rows for key in row))

    def cell(value):
        return f"{value:.4f}" if isinstance(value, float) else str(value if value is not None else "")

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(column)) for column in columns) + " |" for row in rows]
    return "\n".join(lines)


def save_results(rows: list[dict], output_dir: str, title: str = "", columns=None, **extra) -> None:
    """Print the rows as a Markdown table under `title`, and write results.json ({"title", "rows", **extra}),
    results.md and results.csv."""
    os.makedirs(output_dir, exist_ok=True)
    columns = columns or list(dict.fromkeys(key for row in rows for key in row))
    with open(os.path.join(output_dir, "results.json"), "w", encoding="utf-8") as f:
        json.dump({"title": title, "rows": rows, **extra}, f, indent=2)
    table = markdown_table(rows, columns)
    print(f"\n{title}\n\n{table}" if title else table)
    with open(os.path.join(output_dir, "results.md"), "w", encoding="utf-8") as f:
        f.write(table + "\n")
    with open(os.path.join(output_dir, "results.csv"), "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def plot_curves(curves: dict[str, list[float]], path: str, title: str, ylabel: str = "eval accuracy") -> None:
    """One line per named curve against the epoch (1, 2, ...)."""
    figure, axes = new_figure()
    for name, curve in curves.items():
        axes.plot(range(1, len(curve) + 1), curve, marker="o", markersize=3, label=name)
    axes.set(xlabel="epoch", ylabel=ylabel, title=title, ylim=(0, 1))
    save_plot(figure, path, axes)
