"""report.html: one self-contained page (summary table, sortable gallery) that opens offline, anywhere.

Everything is inline (CSS, JS, thumbnails as data: URIs), so the page can be mailed or archived alone;
only the optional links to full-size overlays point at files beside it.
"""

from __future__ import annotations

import base64
import bisect
import html
import io
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
from PIL import Image

from vitcam_cli.outputs.atomic import write_atomic

# panel metrics in display order; names not listed here follow alphabetically
METRIC_ORDER = (
    "adcc", "average_drop", "increase", "coherency", "complexity",
    "insertion", "deletion", "pointing_game", "energy_in_box",
)  # fmt: skip
# for these a lower value is the better explanation, so "worst first" means descending
LOWER_IS_BETTER = ("average_drop", "complexity", "deletion")
THUMBNAIL_QUALITY = 80
THUMBNAIL_SIDE = 192  # the longest side of a gallery thumbnail, in pixels


@dataclass
class Panel:
    """One method's view of one image."""

    method: str  # e.g. "reciprocam:official", "gradcam"
    thumbnail: bytes  # encoded JPEG or PNG, embedded in the page
    link: str | None  # the full-size overlay, relative to report.html (POSIX separators)
    class_name: str  # the explained class
    probability: float  # the model's softmax probability of that class
    metrics: dict[str, float]  # any of METRIC_ORDER (others are shown too); NaN when undefined


@dataclass
class Card:
    """One image (and, when several classes are explained, one class) with a panel per method."""

    title: str  # the image path as the user gave it
    label: str | None  # the ground-truth class name, when known
    panels: list[Panel]


def card_to_dict(card: Card) -> dict[str, Any]:
    """A card as JSON-ready data (thumbnails in base64): how shards hand their galleries to a merge."""
    panels = [
        {**panel.__dict__, "thumbnail": base64.b64encode(panel.thumbnail).decode()} for panel in card.panels
    ]
    return {"title": card.title, "label": card.label, "panels": panels}


def card_from_dict(data: dict[str, Any]) -> Card:
    panels = [
        Panel(**{**panel, "thumbnail": base64.b64decode(panel["thumbnail"])}) for panel in data["panels"]
    ]
    return Card(data["title"], data["label"], panels)


def thumbnail(image: np.ndarray, max_side: int = THUMBNAIL_SIDE) -> bytes:
    """(H, W, 3) uint8 overlay -> JPEG bytes, longer side at most ``max_side``; keeps the page light."""
    picture = Image.fromarray(image)
    picture.thumbnail((max_side, max_side), Image.Resampling.BILINEAR, reducing_gap=1.5)
    buffer = io.BytesIO()
    picture.save(buffer, format="JPEG", quality=THUMBNAIL_QUALITY)
    return buffer.getvalue()


class Gallery:
    """The ``limit`` worst and ``limit`` best cards by a sort value, in bounded memory over any stream.

    ``offer(value, make_card)`` calls ``make_card()`` (costly: it renders thumbnails) only when the card
    is kept at that moment; ``cards()`` returns the kept cards, worst (lowest) first. NaN sorts last.
    """

    def __init__(self, limit: int = 100) -> None:
        self._limit = limit
        self._offered = 0
        # sorted by (is NaN, value, arrival): the first `limit` are the worst, the last `limit` the best
        self._kept: list[tuple[tuple[bool, float, int], Card]] = []

    def offer(self, value: float, make_card: Callable[[], Card]) -> None:
        missing = math.isnan(value)
        key = (missing, 0.0 if missing else value, self._offered)
        self._offered += 1
        position = bisect.bisect(self._kept, key, key=lambda entry: entry[0])
        full = len(self._kept) == 2 * self._limit
        if full and position == self._limit:
            return  # between the worst and the best groups: would be dropped at once
        self._kept.insert(position, (key, make_card()))
        if full:
            del self._kept[self._limit]

    def cards(self) -> list[Card]:
        return [card for _, card in self._kept]

    @property
    def offered(self) -> int:
        return self._offered


def write_report(
    path: Path,
    title: str,
    facts: list[tuple[str, str]],
    columns: list[str],
    rows: list[list[str]],
    cards: list[Card],
    offered: int,
    notes: Sequence[str] = (),
) -> None:
    """Write the page atomically, so a viewer never opens a half-written report.

    ``facts``: key/value lines about the run. ``columns``/``rows``: the summary table, formatted strings,
    the first column naming the row. ``offered``: how many cards existed before the gallery kept some.
    """
    page = _PAGE.format(
        title=_text(title),
        style=_STYLE,
        facts="".join(f"<dt>{_text(key)}</dt><dd>{_text(value)}</dd>" for key, value in facts),
        summary=_summary_table(columns, rows),
        notes="".join(f"<p>{_text(note)}</p>" for note in notes),
        count=_count_line(len(cards), offered),
        controls=_controls(cards),
        cards="".join(_card(card) for card in cards) or "<p>No images.</p>",
        script=_SCRIPT,
    )
    write_atomic(path, lambda handle: handle.write(page.encode("utf-8")))


def _text(value: str) -> str:
    return html.escape(value, quote=True)


def _ordered_metrics(names: set[str]) -> list[str]:
    known = [name for name in METRIC_ORDER if name in names]
    return known + sorted(names - set(METRIC_ORDER))


def _summary_table(columns: list[str], rows: list[list[str]]) -> str:
    head = "".join(f'<th scope="col">{_text(column)}</th>' for column in columns)
    body = "".join(
        f'<tr><th scope="row">{_text(row[0])}</th>{"".join(f"<td>{_text(cell)}</td>" for cell in row[1:])}'
        "</tr>"
        for row in rows
    )
    return f'<table id="summary"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _count_line(shown: int, offered: int) -> str:
    if shown < offered:
        return f"Showing the {shown - shown // 2:,} worst and {shown // 2:,} best of {offered:,}."
    return f"Showing all {shown:,}."


def _controls(cards: list[Card]) -> str:
    """Sort selects; hidden until the script runs, since without it they would do nothing."""
    panels = [panel for card in cards for panel in card.panels]
    if not panels:
        return ""
    metrics = _ordered_metrics({name for panel in panels for name in panel.metrics})
    choices = [*metrics, "probability"]
    default_metric = "adcc" if "adcc" in choices else choices[0]
    methods = list(dict.fromkeys(panel.method for panel in panels))
    metric_options = "".join(
        f'<option value="{_text(name)}"{" selected" if name == default_metric else ""}>'
        f"{_text(name.replace('_', ' '))}</option>"
        for name in choices
    )
    method_options = "".join(
        f'<option value="{_text(method)}"{" selected" if index == 0 else ""}>{_text(method)}</option>'
        for index, method in enumerate(methods)
    )
    method_hidden = " hidden" if len(methods) == 1 else ""
    return (
        f'<div id="controls" hidden data-lower-is-better="{" ".join(LOWER_IS_BETTER)}">'
        f'<label>Sort by <select id="sort-metric">{metric_options}</select></label>'
        f'<label{method_hidden}>of method <select id="sort-method">{method_options}</select></label>'
        '<button id="sort-direction" type="button"></button></div>'
    )


def _card(card: Card) -> str:
    label = f'<p class="label">label <b>{_text(card.label)}</b></p>' if card.label is not None else ""
    panels = "".join(_panel(panel, card.title) for panel in card.panels)
    return (
        f'<article class="card"><h3>{_text(card.title)}</h3>{label}<div class="panels">{panels}</div>'
        "</article>"
    )


def _picture(panel: Panel, title: str) -> str:
    """The thumbnail as an inline image; nothing for a panel without one (merged runs without overlays)."""
    if not panel.thumbnail:
        return ""
    picture = Image.open(io.BytesIO(panel.thumbnail))
    source = f"data:{Image.MIME[picture.format]};base64,{base64.b64encode(panel.thumbnail).decode('ascii')}"
    alt = _text(f"{panel.method} heatmap for {panel.class_name} on {title}")
    return f'<img src="{source}" alt="{alt}" width="{picture.width}" height="{picture.height}">'


def _panel(panel: Panel, title: str) -> str:
    image = _picture(panel, title)
    if panel.link is not None:
        image = f'<a href="{_text(quote(panel.link))}">{image}</a>'
    values = {**panel.metrics, "probability": panel.probability}
    finite = {name: value if math.isfinite(value) else None for name, value in values.items()}
    metrics = "".join(
        f'<div data-metric="{_text(name)}"><dt>{_text(name.replace("_", " "))}</dt>'
        f"<dd>{panel.metrics[name]:.3f}</dd></div>"
        for name in _ordered_metrics(set(panel.metrics))
    )
    return (
        f'<figure class="panel" data-method="{_text(panel.method)}"'
        f' data-values="{_text(json.dumps(finite))}">'
        f'{image}<figcaption><div class="method">{_text(panel.method)}</div>'
        f'<div class="class">class <b>{_text(panel.class_name)}</b> &middot; '
        f'<span data-metric="probability">p = {panel.probability:.3f}</span></div>'
        f'<dl class="metrics">{metrics}</dl></figcaption></figure>'
    )


_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>{style}</style>
</head>
<body>
<header><h1>{title}</h1><dl class="facts">{facts}</dl></header>
<section><h2>Summary</h2>{summary}<div class="notes">{notes}</div></section>
<section><h2>Gallery</h2><p class="count">{count}</p>{controls}<div id="gallery">{cards}</div></section>
<script>{script}</script>
</body>
</html>
"""

_STYLE = """
:root { color-scheme: light; --ink: #1f2328; --muted: #59636e; --line: #d1d9e0; --paper: #fff;
  --ground: #f6f8fa; --mark: #fff1b8; }
* { box-sizing: border-box; }
body { margin: 0 auto; max-width: 1440px; padding: 20px 24px 40px; color: var(--ink);
  background: var(--ground); font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; }
h1 { font-size: 22px; margin: 0 0 10px; overflow-wrap: anywhere; }
h2 { font-size: 17px; margin: 26px 0 10px; }
.facts { display: grid; grid-template-columns: max-content 1fr; gap: 2px 16px; margin: 0; }
.facts dt { color: var(--muted); }
.facts dd { margin: 0; overflow-wrap: anywhere; }
#summary { border-collapse: collapse; background: var(--paper); border: 1px solid var(--line); }
#summary th, #summary td { padding: 5px 12px; border-bottom: 1px solid var(--line); white-space: nowrap; }
#summary thead th { background: #eef1f4; text-align: right; font-weight: 600; }
#summary thead th:first-child, #summary tbody th { text-align: left; }
#summary td { text-align: right; font-variant-numeric: tabular-nums; }
#summary tbody tr:last-child > * { border-bottom: 0; }
.notes p { color: var(--muted); max-width: 90ch; margin: 8px 0; }
.count { color: var(--muted); margin: 0 0 8px; }
#controls { display: flex; flex-wrap: wrap; gap: 8px 18px; align-items: center; margin: 0 0 14px; }
#controls[hidden] { display: none; }
select, button { font: inherit; padding: 3px 8px; border: 1px solid var(--line); border-radius: 6px;
  background: var(--paper); color: var(--ink); }
button { cursor: pointer; }
#gallery { display: flex; flex-wrap: wrap; gap: 14px; align-items: flex-start; }
.card { flex: 0 1 auto; max-width: 100%; background: var(--paper); border: 1px solid var(--line);
  border-radius: 8px; padding: 10px 12px 12px; }
.card h3 { width: 0; min-width: 100%; margin: 0 0 2px; font-size: 14px; overflow-wrap: anywhere; }
.label { margin: 0 0 6px; color: var(--muted); font-size: 13px; }
.panels { display: flex; flex-wrap: wrap; gap: 12px; margin-top: 6px; }
.panel { width: 192px; margin: 0; }
.panel img { display: block; max-width: 100%; height: auto; margin: 0 auto; border-radius: 4px;
  background: var(--ground); }
.panel figcaption { margin-top: 6px; font-size: 12px; }
.method { font-weight: 600; overflow-wrap: anywhere; }
.class { color: var(--muted); overflow-wrap: anywhere; }
.class b { color: var(--ink); font-weight: 500; }
.class span { white-space: nowrap; }
.metrics { margin: 4px 0 0; font-variant-numeric: tabular-nums; }
.metrics div { display: flex; justify-content: space-between; gap: 8px; padding: 0 3px; border-radius: 3px; }
.metrics dt { color: var(--muted); }
.metrics dd { margin: 0; }
.sorted-by { background: var(--mark); font-weight: 600; }
"""

_SCRIPT = """
(() => {
  const controls = document.getElementById("controls");
  if (controls) {
    const gallery = document.getElementById("gallery");
    const metricSelect = document.getElementById("sort-metric");
    const methodSelect = document.getElementById("sort-method");
    const directionButton = document.getElementById("sort-direction");
    const lowerIsBetter = new Set(controls.dataset.lowerIsBetter.split(" "));
    const cards = Array.from(gallery.querySelectorAll(".card"));
    const panels = cards.map((card) => new Map(Array.from(card.querySelectorAll(".panel"),
      (panel) => [panel.dataset.method, {element: panel, values: JSON.parse(panel.dataset.values)}])));
    let ascending;

    const sortCards = () => {
      const metric = metricSelect.value;
      const panelOf = (index) => panels[index].get(methodSelect.value);
      const keys = cards.map((_, index) => {
        const value = panelOf(index)?.values[metric];
        return typeof value === "number" ? value : null;
      });
      const sign = ascending ? 1 : -1;
      const order = cards.map((_, index) => index).sort((a, b) => {
        if (keys[a] === null || keys[b] === null) {
          return (keys[a] === null) - (keys[b] === null) || a - b;  // missing values last, either way
        }
        return sign * (keys[a] - keys[b]) || a - b;
      });
      gallery.append(...order.map((index) => cards[index]));
      document.querySelectorAll(".sorted-by").forEach((element) => element.classList.remove("sorted-by"));
      cards.forEach((_, index) => {
        const panel = panelOf(index);
        panel?.element.querySelector(`[data-metric="${CSS.escape(metric)}"]`)?.classList.add("sorted-by");
      });
      const worstFirst = ascending !== lowerIsBetter.has(metric);
      const direction = ascending ? "Ascending" : "Descending";
      directionButton.textContent = `${direction} (${worstFirst ? "worst" : "best"} first)`;
    };
    const sortWorstFirst = () => {
      ascending = !lowerIsBetter.has(metricSelect.value);
      sortCards();
    };
    metricSelect.addEventListener("change", sortWorstFirst);
    methodSelect.addEventListener("change", sortCards);
    directionButton.addEventListener("click", () => {
      ascending = !ascending;
      sortCards();
    });
    controls.hidden = false;
    sortWorstFirst();
  }

  // tell whoever waits on the page (a person's browser does not care) that every image has settled
  const images = Array.from(document.images);
  const settled = (image) => image.complete ? Promise.resolve() : new Promise((resolve) => {
    image.addEventListener("load", resolve, {once: true});
    image.addEventListener("error", resolve, {once: true});
  });
  Promise.all(images.map(settled)).then(() => {
    document.body.dataset.imagesTotal = String(images.length);
    document.body.dataset.imagesLoaded = String(images.filter((image) => image.naturalWidth > 0).length);
    document.body.dataset.ready = "1";
  });
})();
"""
