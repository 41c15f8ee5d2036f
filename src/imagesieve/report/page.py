"""The report's static page: HTML shell, style, and the script that shows one page of groups at a time.

Data reaches the page only as JSON inside `data/*.js` files (loaded with <script src>, which works
from file:// without a server) and is put into the page with `textContent` and attribute setters,
never as markup, so keys and captions holding `<script>` show as text.
"""

from __future__ import annotations

import html

STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222;background:#fafafa}
h1{font-size:1.4em;margin:.2em 0}
table.counts{border-collapse:collapse;margin:.5em 0}table.counts td{padding:.1em 1em .1em 0}
table.counts td.n{text-align:right;font-variant-numeric:tabular-nums}
.hists{display:flex;flex-wrap:wrap;gap:1.5em;margin:.5em 0}.hist figcaption{font-size:12px}
.hist rect{fill:#4a7fb5}.hist text{font-size:9px;fill:#555}
.controls{position:sticky;top:0;background:#fafafa;padding:.4em 0;border-bottom:1px solid #ddd;z-index:1}
.controls button{margin:0 .2em}
#groups{display:grid;grid-template-columns:repeat(auto-fill,minmax(330px,1fr));gap:.6em;margin-top:.6em}
.group{background:#fff;border:1px solid #ccc;border-radius:6px;padding:.35em;display:flex;flex-wrap:wrap;gap:.35em}
.group h3{flex-basis:100%;margin:0;font-size:12px;font-weight:600;color:#555}
figure{margin:0;width:150px;font-size:11px;word-break:break-all;line-height:1.25}
figure.kept{outline:3px solid #2a7;outline-offset:-1px}figure.removed{outline:2px solid #c44;outline-offset:-1px}
figure img{width:150px;height:150px;object-fit:contain;background:#eee;display:block}
figure .missing{width:150px;height:150px;background:#eee;display:flex;align-items:center;justify-content:center}
figure .caption{color:#666;font-style:italic}
.group.found{border:2px solid #e90}#found{margin-left:.5em;color:#555}
"""

SCRIPT = r"""
"use strict";
const R = window.REPORT, pages = {}, ids = {}, state = {filter: "all", page: 0};
window.reportPage = (filter, n, groups) => { pages[filter + "/" + n] = groups; };
window.reportIds = (n, pairs) => { ids[n] = pairs; };
function script(src, loaded) {
  if (loaded()) return Promise.resolve(loaded());
  return new Promise((resolve, reject) => {
    const s = document.createElement("script");
    s.src = src; s.onload = () => resolve(loaded()); s.onerror = () => reject(new Error("cannot load " + src));
    document.head.appendChild(s);
  });
}
const file = n => String(n).padStart(5, "0") + ".js";
async function load(filter, page) {
  const n = Math.floor(page / R.pagesPerFile), first = (page % R.pagesPerFile) * R.perPage;  // R.pagesPerFile a file
  const groups = await script("data/" + R.filters[filter].dir + "/" + file(n), () => pages[filter + "/" + n]);
  return groups.slice(first, first + R.perPage);
}
function fnv1a(text) {  // the bucket hash of report/search.py: 32-bit FNV-1a of the UTF-8 bytes
  let h = 0x811c9dc5;
  for (const b of new TextEncoder().encode(text)) h = Math.imul(h ^ b, 16777619) >>> 0;
  return h;
}
async function find(id) {
  const out = document.getElementById("found");
  const n = R.ids ? fnv1a(id) % R.ids : -1;
  const pairs = n >= 0 ? await script("data/ids/" + file(n), () => ids[n]) : [];
  const groups = pairs.filter(p => p[0] === id).map(p => p[1]);
  document.body.dataset.foundGroup = String(groups[0] || 0);
  if (!groups.length) { out.textContent = "no group holds " + JSON.stringify(id); return; }
  state.filter = "all"; select.value = "all"; state.page = Math.floor((groups[0] - 1) / R.perPage);
  await show();
  const s = document.getElementById("group-" + groups[0]);
  s.classList.add("found"); s.scrollIntoView();
  out.textContent = "in group " + groups.join(", ");
}
function count(what) { document.body.dataset[what] = String(Number(document.body.dataset[what] || 0) + 1); }
function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}
function figure(m) {
  // m: [id, kept, method, distance, width, height, file_size, caption, thumb, inliers, coverage]
  const f = el("figure", m[1] ? "kept" : "removed");
  if (m[8]) {
    const img = el("img");
    img.loading = "lazy"; img.alt = m[0];
    img.onload = () => count("imagesLoaded"); img.onerror = () => count("imagesFailed");
    img.src = "thumbs/" + m[8];
    f.append(img);
  }
  else f.append(el("div", "missing", m[8] === null ? "(no thumbnail)" : "(no image)"));
  const c = el("figcaption");
  c.append(el("div", "id", m[0]));
  let how = Number.isInteger(m[3]) ? "distance " + m[3] : "similarity " + (1 - m[3]).toFixed(3);
  if (m[9] !== null && m[9] !== undefined) how = m[9] + " inliers, " + Math.round(m[10] * 100) + "% covered";
  c.append(el("div", "what", m[1] ? "kept" : m[2] + ", " + how));
  const size = (m[4] ? m[4] + "x" + m[5] : "?") + (m[6] ? ", " + (m[6] / 1024).toFixed(1) + " KB" : "");
  c.append(el("div", "size", size));
  if (m[7]) c.append(el("div", "caption", m[7]));
  f.append(c);
  return f;
}
async function show() {
  const info = R.filters[state.filter];
  const groups = await load(state.filter, state.page);
  const box = document.getElementById("groups");
  box.replaceChildren(...groups.map(g => {
    const s = el("section", "group");
    s.id = "group-" + g[0];
    s.append(el("h3", null, "group " + g[0] + " \u00b7 " + g[1].length + " images"));
    g[1].forEach(m => s.append(figure(m)));
    return s;
  }));
  document.getElementById("where").textContent =
    "page " + (state.page + 1) + " of " + Math.max(1, info.pages) + " \u00b7 " + info.groups + " groups";
  document.getElementById("prev").disabled = state.page <= 0;
  document.getElementById("next").disabled = state.page >= info.pages - 1;
  document.body.dataset.shownGroups = String(groups.length);
  if (!document.body.dataset.firstShownMs) document.body.dataset.firstShownMs = performance.now().toFixed(0);
}
document.getElementById("prev").onclick = () => { state.page--; show(); window.scrollTo(0, 0); };
document.getElementById("next").onclick = () => { state.page++; show(); window.scrollTo(0, 0); };
const select = document.getElementById("filter");
Object.keys(R.filters).forEach(k => select.append(new Option(R.filters[k].label, k)));
select.onchange = () => { state.filter = select.value; state.page = 0; show(); };
const box = document.getElementById("find");
document.getElementById("search").onsubmit = e => { e.preventDefault(); if (box.value) find(box.value); };
const asked = location.hash.startsWith("#id=") ? decodeURIComponent(location.hash.slice(4)) : "";
if (asked) box.value = asked;
(asked ? find(asked) : show()).catch(e => { document.getElementById("groups").textContent = String(e); });
"""


def histogram_svg(method: str, bins: list[tuple[float, int]], width: int = 260, height: int = 90) -> str:
    """Bars of how many removed images lie at each distance, as inline SVG (no script needed)."""
    e = html.escape
    if not bins:
        return ""
    top = max(c for _, c in bins) or 1
    bar = width / len(bins)
    parts = [f"<figure class='hist'><svg width='{width}' height='{height + 14}' role='img' "
             f"aria-label='distances of {e(method)}'>"]
    for k, (value, count) in enumerate(bins):
        h = count / top * height
        label = f"{value:g}" if float(value).is_integer() else f"{value:.3f}"
        parts.append(f"<rect x='{k * bar:.1f}' y='{height - h:.1f}' width='{max(bar - 1, 1):.1f}' height='{h:.1f}'>"
                     f"<title>{e(label)}: {count}</title></rect>")
    first, last = bins[0][0], bins[-1][0]
    parts.append(f"<text x='{width}' y='9' text-anchor='end'>max {top:,}</text>"
                 f"<text x='0' y='{height + 11}'>{e(f'{first:g}')}</text>"
                 f"<text x='{width}' y='{height + 11}' text-anchor='end'>{e(f'{last:g}')}</text></svg>")
    parts.append(f"<figcaption>{e(method)}: removed images per distance</figcaption></figure>")
    return "".join(parts)


def render_index(title: str, counts: list[tuple[str, str]], histograms: dict[str, list], note: str) -> str:
    e = html.escape
    rows = "".join(f"<tr><td>{e(k)}</td><td class='n'>{e(v)}</td></tr>" for k, v in counts)
    hists = "".join(histogram_svg(m, b) for m, b in histograms.items())
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>imagesieve: {e(title)}</title>
<meta name="viewport" content="width=device-width, initial-scale=1"><style>{STYLE}</style></head>
<body><h1>imagesieve: {e(title)}</h1>
<table class="counts">{rows}</table>
<p>{e(note)}</p>
<div class="hists">{hists}</div>
<div class="controls"><label>show <select id="filter"></select></label>
<button id="prev">&larr; previous</button><span id="where"></span><button id="next">next &rarr;</button>
<form id="search" style="display:inline"><input id="find" placeholder="find an ID" size="24">
<button>find</button><span id="found"></span></form>
<span> &middot; kept images outlined in green, removed ones in red</span></div>
<main id="groups"></main>
<script src="data/meta.js"></script><script>{SCRIPT}</script>
</body></html>
"""
