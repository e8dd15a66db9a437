"""The report's two pages: report.md and the self-contained report.html (images inlined)."""

from __future__ import annotations

import base64
import html
from pathlib import Path

from transferlab.sweep_results import cell, markdown_table

CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto; max-width: 1200px;
       padding: 0 1rem; color: #222; }
h1 { font-size: 1.5rem; margin-bottom: .2rem; } h2 { font-size: 1.15rem; margin-top: 2rem; }
code, .folder { font-family: ui-monospace, Menlo, Consolas, monospace; font-size: 12px; }
.folder { color: #666; } .best { background: #eef7ee; border-left: 4px solid #2e7d32; padding: .5rem .8rem; }
.note { color: #8a6d00; background: #fff8e1; padding: .4rem .8rem; }
table { border-collapse: collapse; margin-top: 1rem; font-size: 13px; }
th, td { border: 1px solid #ddd; padding: 4px 8px; text-align: right; white-space: nowrap; }
th { background: #f4f4f4; } th:last-child { text-align: left; } td.text { text-align: left; white-space: normal; max-width: 28rem; }
tr.best-row td { background: #eef7ee; font-weight: 600; }
.completed { color: #2e7d32; } .failed { color: #c62828; } .running { color: #1565c0; } .pending { color: #888; }
.interrupted { color: #8a6d00; } .dead, .unreadable { color: #c62828; font-style: italic; }
img { max-width: 100%; border: 1px solid #eee; margin-top: .5rem; }
"""


def markdown_page(context: dict[str, str], rows: list[dict], images: dict[str, Path], notes: dict[str, str]) -> str:
    parts = [f"# {context['title']}", f"`{context['folder']}`", context["overview"], f"**{context['best']}**"]
    if context["common"]:
        parts.append(f"Common overrides: `{context['common']}`")
    parts.append(markdown_table(rows))
    parts += [f"![{name}]({path.name})" for name, path in images.items()] + list(notes.values())
    return "\n\n".join(parts) + "\n"


def html_page(context: dict[str, str], rows: list[dict], images: dict[str, Path], notes: dict[str, str], best) -> str:
    esc = html.escape
    columns = [c for c in rows[0] if c != "overrides"]  # the swept values have their own columns
    head = "".join(f"<th>{esc(c)}</th>" for c in columns)
    body = []
    for row in rows:
        css = {"status": f' class="{esc(row["status"])}"', "error": ' class="text"'}
        cells = "".join(f"<td{css.get(c, '')}>{esc(cell(row[c], c))}</td>" for c in columns)
        best_row = best is not None and row["job"] == best["job"]
        body.append(f'<tr class="best-row">{cells}</tr>' if best_row else f"<tr>{cells}</tr>")
    sections = []
    for name, title in (("heatmap", "Best metric over two swept keys"), ("curves", "Validation curves")):
        shown = _img(images[name], title) if name in images else f'<p class="note">{esc(notes.get(name, ""))}</p>'
        sections.append(f"<h2>{title}</h2>\n{shown}")
    common = f"<p>Common overrides: <code>{esc(context['common'])}</code></p>" if context["common"] else ""
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<title>{esc(context["title"])}</title>
<style>{CSS}</style>
</head>
<body>
<h1>{esc(context["title"])}</h1>
<p class="folder">{esc(context["folder"])}</p>
<p>{esc(context["overview"])}</p>
<p class="best">{esc(context["best"])}</p>
{common}
<table>
<thead><tr>{head}</tr></thead>
<tbody>
{chr(10).join(body)}
</tbody>
</table>
{chr(10).join(sections)}
</body>
</html>
"""


def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(alt)}">'
