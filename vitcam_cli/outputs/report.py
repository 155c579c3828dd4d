"""report.html: one self-contained page (summary table, sortable gallery) that opens offline, anywhere.

Everything is inline (CSS, JS, thumbnails as data: URIs), so the page can be mailed or archived alone;
only the optional links to full-size overlays point at files beside it.
"""

from __future__ import annotations

import base64
import bisect
import functools
import io
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
from jinja2 import Environment, PackageLoader, select_autoescape
from PIL import Image, ImageDraw

from vitcam_cli.data import decode_reduced, fit_within
from vitcam_cli.metrics.adcc import PARTS
from vitcam_cli.outputs import counted
from vitcam_cli.outputs.atomic import write_atomic
from vitcam_cli.outputs.overlay import colormap_table
from vitcam_cli.outputs.rows import Row
from vitcam_cli.paths import fs_text

# panel metrics in display order; names not listed here follow alphabetically
METRIC_ORDER = (
    "adcc", "average_drop", "increase", "coherency", "complexity",
    "insertion", "deletion", "pointing_game", "energy_in_box", "discrimination",
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
    class_name: str  # the explained class (a similarity target: the reference's file name)
    probability: float  # the model's probability of that class (a similarity target: the cosine)
    metrics: dict[str, float]  # any of METRIC_ORDER (others are shown too); NaN when undefined
    similarity: bool = False  # the target is a reference or an embedding, not a class


@dataclass
class Card:
    """One image (and, when several classes are explained, one class): the image itself, then a panel per
    method."""

    title: str  # the image path as the user gave it
    label: str | None  # the ground-truth class name, when known
    panels: list[Panel]
    predicted: str | None = None  # the predicted class name, when a label is known
    original: bytes = b""  # the image's thumbnail (encoded), shown before the panels; b"": none
    reference: bytes = b""  # a similarity target's reference image (encoded), beside the original

    @property
    def wrong(self) -> bool:
        """A known label the model did not predict: the card is marked."""
        return self.label is not None and self.predicted is not None and self.label != self.predicted


def card_to_dict(card: Card) -> dict[str, Any]:
    """A card as JSON-ready data (thumbnails in base64): how shards hand their galleries to a merge."""
    panels = [
        {**panel.__dict__, "thumbnail": base64.b64encode(panel.thumbnail).decode()} for panel in card.panels
    ]
    fields = {"title": card.title, "label": card.label, "predicted": card.predicted, "panels": panels}
    pictures = {"original": card.original, "reference": card.reference}
    return fields | {key: base64.b64encode(value).decode() for key, value in pictures.items()}


def card_from_dict(data: dict[str, Any]) -> Card:
    panels = [
        Panel(**{**panel, "thumbnail": base64.b64decode(panel["thumbnail"])}) for panel in data["panels"]
    ]
    original, reference = (base64.b64decode(data.get(key, "")) for key in ("original", "reference"))
    return Card(data["title"], data["label"], panels, data.get("predicted"), original, reference)


def row_panel(method: str, picture: bytes, row: Row) -> Panel:
    """A row's panel: its class and probability, or its similarity target (the reference's file name,
    the embedding's name) and cosine."""
    metrics = {name: row.metrics[name] for name in PARTS if name in row.metrics}
    if row.reference is not None:
        name = Path(row.reference).name or row.reference
        return Panel(method, picture, row.overlay, name, row.similarity or 0.0, metrics, similarity=True)
    return Panel(method, picture, row.overlay, row.class_name or "", row.probability or 0.0, metrics)


@functools.lru_cache(maxsize=256)
def file_thumbnail(path: Path) -> bytes:
    """An image file's thumbnail, read again from its path (a reference shared by many cards is read
    once); b"" when it is gone or unreadable."""
    try:
        image, _ = decode_reduced(path, lambda size: fit_within(size, THUMBNAIL_SIDE))
    except Exception:  # moved, changed, removed, or no file at all (an embedding's name)
        return b""
    return thumbnail(np.asarray(image))


def thumbnail(image: np.ndarray, max_side: int = THUMBNAIL_SIDE) -> bytes:
    """(H, W, 3) uint8 overlay or image -> JPEG bytes, longer side at most ``max_side``; keeps the page
    light."""
    picture = Image.fromarray(image)
    # reduce() by the whole factor first: a box filter, no aliasing, and half the time of a wider gap
    picture.thumbnail((max_side, max_side), Image.Resampling.BILINEAR, reducing_gap=1.0)
    buffer = io.BytesIO()
    picture.save(buffer, format="JPEG", quality=THUMBNAIL_QUALITY)
    return buffer.getvalue()


def draw_boxes(image: np.ndarray, boxes: Sequence[tuple[float, float, float, float]]) -> np.ndarray:
    """The (H, W, 3) uint8 picture with each box (x1, y1, x2, y2; x2, y2 exclusive) outlined in white
    over black, visible on any heatmap."""
    picture = Image.fromarray(image)
    draw = ImageDraw.Draw(picture)
    line = max(1, round(max(picture.size) / 160))
    for x1, y1, x2, y2 in boxes:
        corners = [x1, y1, max(x1, x2 - 1), max(y1, y2 - 1)]
        draw.rectangle(corners, outline=(0, 0, 0), width=line + 2)
        draw.rectangle(corners, outline=(255, 255, 255), width=line)
    return np.asarray(picture)


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


@dataclass
class Charts:
    """What the report draws beside its tables: per-image distributions and the methods compared.

    ``histograms``: method -> metric -> counts of equal bins over [0, 1] (see ``Totals``);
    ``means``: method -> metric -> dataset mean; ``comparison``: draw the methods side by side.
    """

    histograms: dict[str, dict[str, list[int]]] = field(default_factory=dict)
    means: dict[str, dict[str, float]] = field(default_factory=dict)
    comparison: bool = False


# the metrics drawn, in this order: the faithfulness ones first
CHART_METRICS = ("adcc", "average_drop", "coherency", "complexity", "insertion", "deletion",
                 "pointing_game", "energy_in_box", "discrimination")  # fmt: skip
FAILURES_SHOWN = 200

TEMPLATES = Environment(
    loader=PackageLoader("vitcam_cli.outputs", "templates"), autoescape=select_autoescape(default=True)
)
TEMPLATES.filters["counted"] = counted


def write_report(
    path: Path,
    title: str,
    facts: list[tuple[str, str]],
    columns: list[str],
    rows: list[list[str]],
    cards: list[Card],
    offered: int,
    notes: Sequence[str] = (),
    charts: Charts | None = None,
    failures: Sequence[tuple[str, str]] = (),
    failed: int | None = None,
    colormap: str | None = None,
) -> None:
    """Write the page atomically, so a viewer never opens a half-written report.

    ``facts``: key/value lines about the run. ``columns``/``rows``: the summary table, formatted strings,
    the first column naming the row. ``offered``: how many cards existed before the gallery kept some.
    ``failures``: (image, error) of failed images, the first ``FAILURES_SHOWN`` listed, of ``failed`` in
    all (default: as many as given). ``colormap``: the heatmaps' colour scale, drawn as a bar.
    """
    panels = [panel for card in cards for panel in card.panels]
    methods = list(dict.fromkeys(panel.method for panel in panels))
    sort_metrics = [*_ordered_metrics({name for panel in panels for name in panel.metrics}), "probability"]
    page = TEMPLATES.get_template("report.html.j2").render(
        title=title,
        style=PAGE_STYLE,
        script=_SCRIPT,
        facts=facts,
        columns=columns,
        rows=rows,
        notes=notes,
        count=_count_line(len(cards), offered),
        cards=[_card_view(card) for card in cards],
        panels=bool(panels),
        sort_metrics=sort_metrics,
        default_metric="adcc" if "adcc" in sort_metrics else sort_metrics[0],
        methods=methods,
        classes=sorted({name for card in cards for name in _card_classes(card)}),
        labelled=any(card.label is not None for card in cards),
        lower_is_better=LOWER_IS_BETTER,
        distributions=_distributions(charts),
        comparison=_comparison(charts),
        failures=list(failures)[:FAILURES_SHOWN],
        failed=len(failures) if failed is None else failed,
        colorbar=_colorbar(colormap) if colormap and panels else None,
    )
    # a file name that is not UTF-8 is shown with U+FFFD for its odd bytes (its links are UTF-8 already)
    write_atomic(path, lambda handle: handle.write(fs_text(page).encode("utf-8")))


def _ordered_metrics(names: set[str]) -> list[str]:
    known = [name for name in METRIC_ORDER if name in names]
    return known + sorted(names - set(METRIC_ORDER))


def _count_line(shown: int, offered: int) -> str:
    if shown < offered:
        return f"Showing the {shown - shown // 2:,} worst and {shown // 2:,} best of {offered:,}."
    return f"Showing all {shown:,}."


def _card_classes(card: Card) -> list[str]:
    names = [panel.class_name for panel in card.panels]
    return [*names, card.label] if card.label is not None else names


def _card_view(card: Card) -> dict[str, Any]:
    """A card as the template shows it: titled by the file's name, the whole path as its tooltip."""
    name = Path(card.title).name or card.title
    return {
        "title": card.title,
        "name": name,
        "original": picture_view(card.original, f"{name}, the image explained") if card.original else None,
        "reference": picture_view(card.reference, "the reference image") if card.reference else None,
        "label": card.label,
        "predicted": card.predicted,
        "wrong": card.wrong,
        "classes": sorted(set(_card_classes(card))),
        "panels": [_panel_view(panel, card.title) for panel in card.panels],
    }


def _panel_view(panel: Panel, title: str) -> dict[str, Any]:
    """A panel as the template shows it: the thumbnail inline (none for merged runs without overlays)."""
    values = {**panel.metrics, "probability": panel.probability}
    view: dict[str, Any] = {
        "method": panel.method,
        "link": quote(panel.link) if panel.link is not None else None,
        "class_name": panel.class_name,
        "probability": panel.probability,
        "similarity": panel.similarity,
        "sort_values": {name: value if math.isfinite(value) else None for name, value in values.items()},
        "metrics": [(name, panel.metrics[name]) for name in _ordered_metrics(set(panel.metrics))],
        "source": None,
    }
    if panel.thumbnail:
        view |= picture_view(panel.thumbnail, f"{panel.method} heatmap for {panel.class_name} on {title}")
    return view


def picture_view(encoded: bytes, alt: str) -> dict[str, Any]:
    """An encoded thumbnail as an inline image: its data: URI, size and alternative text."""
    picture = Image.open(io.BytesIO(encoded))
    data = base64.b64encode(encoded).decode("ascii")
    source = f"data:{Image.MIME[picture.format]};base64,{data}"
    return {"source": source, "alt": alt, "width": picture.width, "height": picture.height}


def _distributions(charts: Charts | None) -> list[tuple[str, list[dict[str, Any]]]]:
    """Per method, a histogram of every charted metric it has."""
    if charts is None:
        return []
    views = []
    for method, bins in charts.histograms.items():
        means = charts.means.get(method, {})
        shown = [name for name in CHART_METRICS if sum(bins.get(name, [])) > 0]
        views.append((method, [_histogram_view(name, bins[name], means.get(name)) for name in shown]))
    return [(method, histograms) for method, histograms in views if histograms]


def _histogram_view(metric: str, counts: list[int], mean: float | None) -> dict[str, Any]:
    tallest = max(counts) or 1
    step = 1 / len(counts)
    bars = [
        {
            "x": 10 + 10 * i,
            "y": round(96 - 86 * count / tallest, 1),
            "height": round(86 * count / tallest, 1),
            "count": count,
            "range": f"{i * step:.2f}-{(i + 1) * step:.2f}",
        }
        for i, count in enumerate(counts)
    ]
    mean_x = round(10 + 200 * min(max(mean, 0.0), 1.0), 1) if mean is not None else None
    return {"metric": metric, "bars": bars, "total": sum(counts), "mean": mean, "mean_x": mean_x}


def _comparison(charts: Charts | None) -> list[dict[str, Any]]:
    """One horizontal bar chart per metric, a bar per method (evaluate with several methods)."""
    if charts is None or not charts.comparison or len(charts.means) < 2:
        return []
    left = 7 * max(len(method) for method in charts.means) + 8
    views = []
    for metric in CHART_METRICS:
        values = [(method, means[metric]) for method, means in charts.means.items() if metric in means]
        if not values:
            continue
        bars = [
            {
                "method": method,
                "value": value,
                "y": 4 + 20 * i,
                "width": round(160 * min(max(value, 0), 1), 1),
            }
            for i, (method, value) in enumerate(values)
        ]
        views.append({
            "metric": metric, "bars": bars, "left": left, "width": left + 210, "height": 8 + 20 * len(bars),
            "lower_is_better": metric in LOWER_IS_BETTER,
        })  # fmt: skip
    return views


def _colorbar(colormap: str) -> dict[str, Any]:
    """The colormap as 11 gradient stops, low to high."""
    table = colormap_table(colormap)
    picks = np.linspace(0, len(table) - 1, 11).round().astype(int)
    colours = ["#{:02x}{:02x}{:02x}".format(*(int(v) for v in table[k][:3])) for k in picks]
    return {
        "name": colormap,
        "stops": [{"offset": f"{i / 10:.1f}", "color": c} for i, c in enumerate(colours)],
    }


PAGE_STYLE = """
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
.table-frame { max-width: 100%; overflow-x: auto; }
#summary { border-collapse: collapse; background: var(--paper); border: 1px solid var(--line); }
#summary th, #summary td { padding: 5px 10px; border-bottom: 1px solid var(--line); white-space: nowrap; }
#summary thead th { background: #eef1f4; text-align: right; font-weight: 600; white-space: normal;
  min-width: 5.5em; vertical-align: bottom; }
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
.card h3 { width: 0; min-width: 100%; margin: 0 0 2px; font-size: 14px; white-space: nowrap;
  overflow: hidden; text-overflow: ellipsis; }
.label { margin: 0 0 6px; color: var(--muted); font-size: 13px; }
.panels { display: flex; flex-wrap: wrap; gap: 12px; margin-top: 6px; }
.panel, .original { width: 192px; margin: 0; }
.original figcaption { margin-top: 6px; font-size: 12px; color: var(--muted); }
.panel img, .original img { display: block; max-width: 100%; height: auto; margin: 0 auto; border-radius: 4px;
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
.chart-title { font-size: 14px; margin: 18px 0 6px; }
.chart-method { font-size: 13px; margin: 10px 0 4px; color: var(--muted); }
.charts { display: flex; flex-wrap: wrap; gap: 10px 18px; }
.chart { margin: 0; background: var(--paper); border: 1px solid var(--line); border-radius: 6px;
  padding: 6px; }
.chart figcaption { font-size: 12px; color: var(--muted); text-align: center; }
.chart .bar { fill: #6e7781; } .chart .bar.first { fill: #0969da; }
.chart .axis { stroke: var(--line); } .chart .mean { stroke: #cf222e; stroke-width: 1.5; }
.chart .tick { font-size: 10px; fill: var(--muted); }
.failures { border-collapse: collapse; background: var(--paper); border: 1px solid var(--line);
  font-size: 13px; }
.failures th, .failures td { padding: 4px 10px; border-bottom: 1px solid var(--line); text-align: left;
  overflow-wrap: anywhere; }
.colorbar { margin: 0 0 12px; width: 360px; }
.colorbar svg { display: block; border-radius: 3px; }
.colorbar figcaption { display: flex; justify-content: space-between; gap: 8px; font-size: 11px;
  color: var(--muted); }
.card.wrong { border-color: #cf222e; box-shadow: inset 3px 0 0 #cf222e; }
.mark { color: #cf222e; font-weight: 600; }
.card[hidden] { display: none; }
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
    const classSelect = document.getElementById("filter-class");
    const wrongOnly = document.getElementById("filter-wrong");
    const shownCount = document.getElementById("shown-count");
    const filterCards = () => {
      let shown = 0;
      cards.forEach((card) => {
        const classes = JSON.parse(card.dataset.classes);
        const keep = (!classSelect.value || classes.includes(classSelect.value))
          && (!wrongOnly.checked || card.dataset.wrong === "1");
        card.hidden = !keep;
        shown += keep;
      });
      shownCount.textContent = shown === cards.length ? "" : `${shown} of ${cards.length} shown`;
    };
    classSelect.addEventListener("change", filterCards);
    wrongOnly.addEventListener("change", filterCards);
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
