"""report.html: the bounded gallery, thumbnails, escaping, self-containment, and the page in a browser."""

from __future__ import annotations

import base64
import html
import io
import math
import re
from pathlib import Path

import numpy as np
from PIL import Image

from tests.chromium import rendered_dom, screenshot
from vitcam_cli.outputs.report import Card, Gallery, Panel, thumbnail, write_report

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
METHODS = ("reciprocam:official", "gradcam")
HOSTILE = "<script>alert(1)</script>.png"


def _overlay(seed: int, height: int = 120, width: int = 160) -> np.ndarray:
    """A heatmap-like picture: a distinct base colour per seed with a bright blob somewhere."""
    rng = np.random.default_rng(seed)
    base = rng.integers(30, 200, 3).astype(np.float32)
    ys, xs = np.mgrid[0:height, 0:width]
    centre_y, centre_x = rng.uniform(0.25, 0.75, 2) * (height, width)
    blob = np.exp(-((ys - centre_y) ** 2 + (xs - centre_x) ** 2) / (2 * (width / 6) ** 2))[..., None]
    return (base * (1 - blob) + np.array([255.0, 225.0, 60.0]) * blob).astype(np.uint8)


def _panel(method: str, adcc: float, image: bytes = b"", link: str | None = None) -> Panel:
    return Panel(
        method=method,
        thumbnail=image or thumbnail(_overlay(0, 8, 8)),
        link=link,
        class_name="cat",
        probability=0.5,
        metrics={"adcc": adcc, "average_drop": 0.25, "coherency": 0.8, "complexity": 0.1},
    )


def _card(title: str, adcc: float = 0.5) -> Card:
    return Card(title=title, label=None, panels=[_panel(METHODS[0], adcc)])


def _write(folder: Path, cards: list[Card], **overrides) -> str:
    arguments = {
        "path": folder / "report.html",
        "title": "vitcam evaluate",
        "facts": [("model", "vit_tiny"), ("device", "cpu")],
        "columns": ["method", "adcc"],
        "rows": [[METHODS[0], "0.500"]],
        "cards": cards,
        "offered": len(cards),
    } | overrides
    write_report(**arguments)
    return arguments["path"].read_text(encoding="utf-8")


def _offer_all(gallery: Gallery, values: list[float]) -> list[str]:
    """Offer one card per value (titled by its position); return the titles whose card was rendered."""
    rendered: list[str] = []

    def maker(title: str, value: float):
        def make() -> Card:
            rendered.append(title)
            return Card(title=title, label=None, panels=[])

        return make

    for index, value in enumerate(values):
        gallery.offer(value, maker(str(index), value))
    return rendered


def test_gallery_keeps_worst_and_best_and_renders_only_those():
    gallery = Gallery(limit=2)
    rendered = _offer_all(gallery, [1.0, 2.0, 8.0, 9.0, 5.0, 3.0, 7.0, 0.5])
    assert [card.title for card in gallery.cards()] == ["7", "0", "2", "3"]  # 0.5, 1, 8, 9
    assert rendered == ["0", "1", "2", "3", "7"]  # the values 5, 3 and 7 fell between the groups
    assert gallery.offered == 8


def test_gallery_matches_a_full_sort():
    values = np.random.default_rng(0).integers(0, 40, 500).astype(float).tolist()  # many ties
    gallery = Gallery(limit=7)
    rendered = _offer_all(gallery, values)
    order = sorted(range(len(values)), key=values.__getitem__)  # stable: ties keep arrival order
    assert [card.title for card in gallery.cards()] == [str(index) for index in order[:7] + order[-7:]]
    assert len(rendered) < 100


def test_gallery_keeps_everything_below_the_limit_and_sorts_nan_last():
    gallery = Gallery(limit=5)
    _offer_all(gallery, [math.nan, 0.3, math.nan, -1.0, 0.2])
    assert [card.title for card in gallery.cards()] == ["3", "4", "1", "0", "2"]


def test_thumbnail_is_a_small_jpeg_and_never_enlarges():
    large = Image.open(io.BytesIO(thumbnail(_overlay(1, 300, 500))))
    assert large.format == "JPEG" and large.size == (192, 115)
    tall = Image.open(io.BytesIO(thumbnail(_overlay(2, 400, 100), max_side=64)))
    assert tall.size == (16, 64)
    small = Image.open(io.BytesIO(thumbnail(_overlay(3, 30, 40))))
    assert small.size == (40, 30)


def test_user_text_is_escaped(tmp_path):
    panel = _panel(HOSTILE, 0.1)
    panel.class_name = HOSTILE
    card = Card(title=HOSTILE, label=HOSTILE, panels=[panel])
    page = _write(
        tmp_path,
        [card],
        title=HOSTILE,
        facts=[(HOSTILE, HOSTILE)],
        columns=["method", HOSTILE],
        rows=[[HOSTILE, HOSTILE]],
        notes=[HOSTILE],
    )
    assert "alert(1)</script>" not in page
    assert page.count("<script") == 1  # the page's own
    assert page.count(html.escape(HOSTILE)) >= 10


def test_write_report_leaves_only_the_report(tmp_path):
    _write(tmp_path, [_card("a.png")])
    page = _write(tmp_path, [_card("b.png")])
    assert "b.png" in page and "a.png" not in page
    assert [path.name for path in tmp_path.iterdir()] == ["report.html"]


def test_page_needs_no_network(tmp_path):
    note = "ADCC is defined in https://example.org/adcc (see also http://example.org/old)."
    cards = [
        Card("x.png", "dog", [_panel(METHODS[0], 0.2, link="full size/x #1.png"), _panel(METHODS[1], 0.4)]),
        _card("http://example.org/y.png"),
    ]
    page = _write(tmp_path, cards, notes=[note])
    for user_text in (html.escape(note), "http://example.org/y.png"):
        page = page.replace(user_text, "")
    assert "http://" not in page and "https://" not in page
    assert "url(" not in page and "@import" not in page
    assert all(source.startswith("data:image/") for source in re.findall(r'src="([^"]*)"', page))
    assert re.findall(r'href="([^"]*)"', page) == ["full%20size/x%20%231.png"]


def test_thumbnails_are_embedded_byte_for_byte(tmp_path):
    jpeg = thumbnail(_overlay(4))
    png_buffer = io.BytesIO()
    Image.fromarray(_overlay(5, 20, 30)).save(png_buffer, format="PNG")
    card = Card(
        "a.png", None, [_panel(METHODS[0], 0.1, jpeg), _panel(METHODS[1], 0.2, png_buffer.getvalue())]
    )
    page = _write(tmp_path, [card])
    sources = re.findall(r'src="data:(image/\w+);base64,([^"]*)"', page)
    assert [(kind, base64.b64decode(data)) for kind, data in sources] == [
        ("image/jpeg", jpeg),
        ("image/png", png_buffer.getvalue()),
    ]
    assert 'width="30" height="20"' in page


def test_panels_show_metrics_with_three_decimals_and_sort_defaults(tmp_path):
    card = Card("a.png", "cat", [_panel(METHODS[1], 0.12345), _panel(METHODS[0], math.nan)])
    page = _write(tmp_path, [card])
    assert "<dd>0.123</dd>" in page and "<dd>nan</dd>" in page and "p = 0.500" in page
    assert '<option value="adcc" selected>' in page
    assert f'<option value="{METHODS[1]}" selected>' in page  # the first panel's method
    assert '"adcc": null' in html.unescape(page)  # NaN reaches the script as "missing", sorted last


def test_count_line_and_empty_gallery(tmp_path):
    image = thumbnail(_overlay(6, 8, 8))
    cards = [Card(f"{index}.png", None, [_panel(METHODS[0], float(index), image)]) for index in range(200)]
    assert "Showing the 100 worst and 100 best of 5,000." in _write(tmp_path, cards, offered=5000)
    assert "Showing all 200." in _write(tmp_path, cards)
    empty = _write(tmp_path, [], offered=0)
    assert "No images." in empty and 'id="controls"' not in empty


TITLES = [f"image_{index}.png" for index in range(5)] + ["odd <name> & co.png"]


def _browser_report(folder: Path) -> Path:
    """Six cards, two methods; the first method's ADCC is shuffled against the order given."""
    first_adcc = [0.5, 0.1, math.nan, 0.9, 0.3, 0.7]
    cards = []
    for index, (title, adcc) in enumerate(zip(TITLES, first_adcc, strict=True)):
        panels = [
            Panel(
                method=method,
                thumbnail=thumbnail(_overlay(10 * index + offset, 140 + 10 * index, 200)),
                link=f"overlays/{index}_{offset}.png" if offset == 0 else None,
                class_name=["cat", "dog", "bird"][index % 3],
                probability=0.2 + 0.1 * index,
                metrics={
                    "adcc": value,
                    "average_drop": 0.05 * index + 0.1 * offset,
                    "coherency": 0.7,
                    "complexity": 0.2,
                    "increase": 0.0,
                },
            )
            for offset, (method, value) in enumerate(zip(METHODS, (adcc, 1.0 - index / 10), strict=True))
        ]
        cards.append(Card(title, ["cat", "dog", None][index % 3], panels))
    report = folder / "report.html"
    write_report(
        report,
        title="vitcam evaluate: 6 images, 2 methods",
        facts=[("model", "vit_tiny_patch16_224"), ("device", "cpu"), ("images", "6")],
        columns=["method", "adcc", "average drop", "coherency", "complexity", "seconds"],
        rows=[
            [METHODS[0], "0.500", "0.300", "0.700", "0.200", "1.2"],
            [METHODS[1], "0.450", "0.310", "0.690", "0.210", "3.4"],
        ],
        cards=cards,
        offered=len(cards),
        notes=[
            "ADCC is the harmonic mean of coherency, 1 - complexity and 1 - average drop; higher is better."
        ],
    )
    return report


def _titles(dom: str) -> list[str]:
    return [html.unescape(title) for title in re.findall(r"<h3[^>]*>(.*?)</h3>", dom)]


def _body_attributes(dom: str) -> dict[str, str]:
    return {
        name: html.unescape(value)
        for name, value in re.findall(r'([\w-]+)="([^"]*)"', re.search(r"<body([^>]*)>", dom).group(1))
    }


def test_report_in_a_real_browser(tmp_path):
    report = _browser_report(tmp_path)
    dom = rendered_dom(report)

    body = _body_attributes(dom)
    assert body.get("data-ready") == "1", body
    assert body["data-images-total"] == body["data-images-loaded"] == "12"
    summary = re.search(r'<table id="summary">(.*?)</table>', dom, re.S).group(1)
    assert "<thead>" in summary
    assert re.findall(r'<th scope="row">(.*?)</th>', summary) == list(METHODS)
    # worst first by the first method's ADCC: 0.1, 0.3, 0.5, 0.7, 0.9, then NaN
    assert _titles(dom) == [TITLES[index] for index in (1, 4, 0, 5, 3, 2)]
    assert re.search(r'<div id="controls" data-lower', dom)  # shown once the script ran
    assert "Ascending (worst first)" in dom

    png = ARTIFACTS / "report.png"
    png.unlink(missing_ok=True)
    screenshot(report, png)
    assert png.stat().st_size > 10_000
    assert Image.open(png).size == (1280, 1600)


# what a person does with the controls, recorded on <body> after each step
CONTROL_STEPS = """<script>
const record = (name) => {
  document.body.dataset[name] = Array.from(document.querySelectorAll(".card h3"), (h) => h.textContent)
    .concat(document.getElementById("sort-direction").textContent).join("|");
};
const choose = (id, value) => {
  const select = document.getElementById(id);
  select.value = value;
  select.dispatchEvent(new Event("change"));
};
choose("sort-metric", "average_drop");
record("byDrop");
document.getElementById("sort-direction").click();
record("byDropFlipped");
choose("sort-metric", "adcc");
choose("sort-method", "gradcam");
record("byOtherMethod");
</script>
</body>"""


def test_sort_controls_in_a_real_browser(tmp_path):
    report = _browser_report(tmp_path)
    report.write_text(report.read_text(encoding="utf-8").replace("</body>", CONTROL_STEPS), encoding="utf-8")
    body = _body_attributes(rendered_dom(report))

    # average drop: lower is better, so worst first is descending
    assert body["data-by-drop"].split("|") == [*reversed(TITLES), "Descending (worst first)"]
    assert body["data-by-drop-flipped"].split("|") == [*TITLES, "Ascending (best first)"]
    # back to ADCC (ascending again), now by gradcam's values: 1.0, 0.9, ... 0.5
    assert body["data-by-other-method"].split("|") == [*reversed(TITLES), "Ascending (worst first)"]


HOSTILE_FILE = "<script>alert(1).png"  # a file name can hold markup (not '/')


def _cards(page: str) -> dict[str, str]:
    """Each gallery card's markup by its heading's full path (the title attribute)."""
    cards = re.findall(r'<article class="card.*?</article>', page, re.S)
    return {html.unescape(re.search(r'<h3 title="([^"]*)"', card).group(1)): card for card in cards}


def _heading(card: str) -> str:
    return html.unescape(re.search(r"<h3[^>]*>(.*?)</h3>", card).group(1))


def _original_size(card: str) -> tuple[int, int]:
    figure = re.search(r'<figure class="original"><img src="data:image/jpeg;base64,([^"]*)"', card)
    return Image.open(io.BytesIO(base64.b64decode(figure.group(1)))).size


def test_explain_cards_show_the_file_name_the_original_and_the_method_once(
    tiny_model, small_folder, tmp_path
):
    from tests.test_cli import explain

    Image.fromarray(_overlay(7, 36, 54)).save(small_folder / HOSTILE_FILE)
    out = tmp_path / "out"
    code, _, stderr = explain(tiny_model, str(small_folder), "-o", str(out))
    assert code == 0, stderr
    page = (out / "report.html").read_text(encoding="utf-8")
    cards = _cards(page)
    files = {"a.png": (60, 40), "b.jpg": (50, 50), "sub/c.png": (45, 30), HOSTILE_FILE: (54, 36)}
    assert set(cards) == {str(small_folder / name) for name in files}
    for name, size in files.items():
        card = cards[str(small_folder / name)]
        assert _heading(card) == Path(name).name  # the whole path is the heading's tooltip
        assert card.count('<figure class="original">') == 1 and card.count('<figure class="panel"') == 1
        assert _original_size(card) == size
    assert 'class="method"' not in page and "<dt>method</dt><dd>ViT-ReciproCAM" in page
    assert "<script>alert" not in page and page.count("<script") == 1


def test_merged_shards_show_originals_where_the_images_still_are(tiny_model, small_folder, tmp_path):
    from tests.test_cli import explain, run

    out = tmp_path / "out"
    for index in range(2):
        assert explain(tiny_model, str(small_folder), "-o", str(out), "--shard", f"{index}/2")[0] == 0
    (small_folder / "b.jpg").unlink()  # gone before the merge: its card keeps the overlay alone
    code, _, stderr = run("merge", out, "-q")
    assert code == 0, stderr
    cards = _cards((out / "report.html").read_text(encoding="utf-8"))
    assert len(cards) == 3 and all(card.count('<figure class="panel"') == 1 for card in cards.values())
    assert _original_size(cards[str(small_folder / "a.png")]) == (60, 40)
    assert 'class="original"' not in cards[str(small_folder / "b.jpg")]
