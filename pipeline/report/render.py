"""Report blocks as Markdown (summary.md) and one self-contained HTML page (index.html)."""
from __future__ import annotations

import base64
import html
from pathlib import Path

import pandas as pd
from markdown_it import MarkdownIt

# A block is ("h1"|"h2"|"p"|"pre", text) · ("table", DataFrame) · ("img", path, caption).
Block = tuple

CSS = """body{font:15px/1.5 system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.6em 0 1.2em;font-size:13px}th,td{border:1px solid #ccc;padding:3px 8px;
text-align:right}th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}img{max-width:100%;
border:1px solid #eee}pre{background:#f7f7f7;padding:.8em;overflow:auto;font-size:12px}figcaption{color:#555;
font-size:13px}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}"""


def table_or(df: pd.DataFrame, why: str) -> Block:
    """A table block, or the line saying why there is none (a stage left no rows for it)."""
    return ("table", df) if len(df) else ("p", why)


def num(v: float) -> str:
    # Thousands as grouped integers (24,520 samples/s), small values to 4 significant digits (5.007e-06).
    return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.4g}"


def _fmt(df: pd.DataFrame) -> pd.DataFrame:
    return df.map(lambda v: num(v) if isinstance(v, float) else v)


def markdown(blocks: list[Block], rel_to: Path) -> str:
    out = []
    for b in blocks:
        kind = b[0]
        if kind in ("h1", "h2"):
            out.append(("# " if kind == "h1" else "## ") + b[1])
        elif kind == "p":
            out.append(b[1])
        elif kind == "pre":
            out.append("```\n" + b[1].rstrip() + "\n```")
        elif kind == "table":
            # tabulate would re-parse the formatted numbers and print some as 8857 beside 145,722: kept as written,
            # numeric columns right-aligned
            align = ["right" if pd.api.types.is_numeric_dtype(t) and not pd.api.types.is_bool_dtype(t) else "left"
                     for t in b[1].dtypes]
            out.append(_fmt(b[1]).to_markdown(index=False, disable_numparse=True, colalign=align))
        elif kind == "img":
            out.append(f"![{b[2]}]({Path(b[1]).relative_to(rel_to).as_posix()})\n\n*{b[2]}*")
    return "\n\n".join(out) + "\n"


# CommonMark, raw HTML off: a reason or a path in the report's prose is shown as text, never parsed as markup
MD = MarkdownIt("commonmark", {"html": False})


def _inline(text: str) -> str:
    """The report's prose (**bold**, `code`, links) as HTML, through markdown-it-py."""
    return MD.renderInline(text)


def page(blocks: list[Block], title: str) -> str:
    """One HTML file with images embedded as data URIs: opens offline, nothing fetched."""
    body = []
    for b in blocks:
        kind = b[0]
        if kind in ("h1", "h2"):
            body.append(f"<{kind}>{_inline(b[1])}</{kind}>")
        elif kind == "p":
            body.append(MD.render(b[1]).strip())
        elif kind == "pre":
            body.append(f"<pre>{html.escape(b[1])}</pre>")
        elif kind == "table":
            body.append(_fmt(b[1]).to_html(index=False, border=0, escape=True))
        elif kind == "img":
            data = base64.b64encode(Path(b[1]).read_bytes()).decode()
            body.append(f'<figure><img alt="{html.escape(b[2])}" src="data:image/png;base64,{data}">'
                        f"<figcaption>{html.escape(b[2])}</figcaption></figure>")
    return (f"<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{CSS}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")
