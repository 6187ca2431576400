"""Self-contained HTML pages: the table through pandas' Styler, the plots as base64 PNG images,
inline CSS, no scripts and no other file: a page readable without a server or the network."""

from __future__ import annotations

import base64
from html import escape

import pandas as pd

STYLE = (
    "body{font-family:sans-serif;margin:2em;max-width:1800px}table{border-collapse:collapse;font-size:13px}"
    "td,th{border:1px solid #ccc;padding:3px 7px;white-space:nowrap}th{background:#eee}"
    "figure{display:inline-block;margin:1em}figcaption{font-size:13px;color:#444;max-width:900px}"
    "li{margin:.3em 0}"
)
MARK_COLOURS = {"best": "#c8f0c8", "≈ best": "#e8f6d0", "< best": "#f8d8d0", "untested": "#eeeeee"}


def _mark_colour(value: str) -> str:
    return f"background-color: {MARK_COLOURS[value]}" if value in MARK_COLOURS else ""


def styled_table(display: pd.DataFrame) -> str:
    """The display frame as HTML through the Styler: no index, marks coloured."""
    styler = display.style.hide(axis="index")
    if "vs_best" in display:
        styler = styler.map(_mark_colour, subset=["vs_best"])
    return styler.to_html()


def image(png: bytes, caption: str) -> str:
    """A PNG embedded in the page (a data URI) with its caption."""
    data = base64.b64encode(png).decode("ascii")
    return f"<figure><img src='data:image/png;base64,{data}'><figcaption>{escape(caption)}</figcaption></figure>"


def page(title: str, body: str) -> str:
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{escape(title)}</title><style>{STYLE}</style>"
        f"</head><body><h1>{escape(title)}</h1>{body}</body></html>\n"
    )


def leaderboard_page(
    title: str,
    display: pd.DataFrame,
    notes: list[str],
    figures: dict[str, tuple[bytes, str]],
    legend: str,
    verdicts: pd.DataFrame | None = None,
    rejects: list | None = None,
) -> str:
    """The leaderboard page: the table, its legend and notes, the figures (name -> (PNG, caption)),
    the reproductions' verdicts and the files left out."""
    body = f"<p>{escape(legend)}</p>" + (styled_table(display) if len(display) else "<p>no finished runs</p>")
    if notes:
        body += "<ul>" + "".join(f"<li>{escape(n)}</li>" for n in notes) + "</ul>"
    body += "".join(image(png, caption) for png, caption in figures.values())
    if verdicts is not None and len(verdicts):
        body += "<h2>Reproductions</h2>" + styled_table(verdicts)
    if rejects:
        body += f"<h2>{len(rejects)} files left out</h2><ul>"
        body += "".join(f"<li><code>{escape(r.path)}</code>: {escape(r.reason)}</li>" for r in rejects) + "</ul>"
    return page(title, body)
