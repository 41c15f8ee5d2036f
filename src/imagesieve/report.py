"""An HTML page of the duplicate groups a `find` run wrote, with thumbnails, for a person to check.

It reads only the run folder (summary.json, groups/, hashes/ or embeddings/) and the shards they name.
The page is self-contained (thumbnails are embedded as data: URIs), so it can be mailed or opened
offline. Every piece of data that reaches the page is escaped.
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
from collections import defaultdict

import pyarrow.compute as pc
import pyarrow.parquet as pq

from imagesieve.imageio import ImageDecodeError, load, open_image
from imagesieve.runfolder import read_json, write_text_atomic
from imagesieve.shards import image_extension, iter_samples
from imagesieve.stages.io.partitioning import list_shards

STYLE = """body{font-family:system-ui,sans-serif;margin:2em;color:#222}
.group{border:1px solid #ccc;border-radius:6px;margin:1em 0;padding:.5em;display:flex;flex-wrap:wrap;gap:.5em}
figure{margin:0;max-width:180px;font-size:12px;word-break:break-all}
figure.kept{outline:3px solid #2a7}figure img{max-width:176px;max-height:176px;display:block}
.summary td{padding:0 1em 0 0}"""


def thumbnail(data: bytes, where: str, size: int) -> str:
    """A small JPEG of the image as a data: URI ("" when it cannot be decoded)."""
    try:
        image = open_image(data, where)
        image.draft("RGB", (size, size))
        image = load(image, where).convert("RGB")
    except ImageDecodeError:
        return ""
    image.thumbnail((size, size))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def load_thumbnails(run_dir: str, ids: set[str], size: int) -> dict[str, str]:
    """Thumbnails of `ids`, reading only the shards that hold them (input and reference sets)."""
    summary = read_json(os.path.join(run_dir, "summary.json"))
    thumbs: dict[str, str] = {}
    for hashes_dir, source in (("hashes", summary["input"]), ("embeddings", summary["input"]),  # semantic: id, shard
                               ("reference_hashes", summary.get("reference"))):
        if not source or not os.path.isdir(os.path.join(run_dir, hashes_dir)):
            continue
        table = pq.read_table(os.path.join(run_dir, hashes_dir), columns=["id", "shard"])
        table = table.filter(pc.is_in(table.column("id"), value_set=pc.cast(sorted(ids), "string")))
        by_shard: dict[str, set[str]] = defaultdict(set)
        for row in table.to_pylist():
            by_shard[row["shard"]].add(row["id"])
        paths = dict((rel, path) for path, rel in list_shards(source))
        for rel, keys in by_shard.items():
            for sample in iter_samples(paths[rel]) if rel in paths else []:
                if sample.key in keys:
                    ref = sample.members[image_extension(sample.members)]
                    thumbs[sample.key] = thumbnail(ref.read(), f"{paths[rel]}: sample {sample.key!r}", size)
    return thumbs


def render(run_dir: str, max_groups: int = 200, size: int = 160) -> str:
    """The report as an HTML string."""
    summary = read_json(os.path.join(run_dir, "summary.json"))
    groups = pq.read_table(os.path.join(run_dir, "groups")).to_pylist()
    members: dict[int, list[dict]] = defaultdict(list)
    for row in groups:
        members[row["group_id"]].append(row)
    shown = sorted(members, key=lambda g: (-len(members[g]), g))[:max_groups]
    thumbs = load_thumbnails(run_dir, {m["id"] for g in shown for m in members[g]}, size)
    e = html.escape
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>imagesieve: duplicates in "
             f"{e(str(summary.get('input')))}</title><style>{STYLE}</style></head><body>",
             "<h1>Duplicate groups</h1><table class='summary'>"]
    for key in ("images", "skipped", "groups", "duplicates", "threshold"):
        parts.append(f"<tr><td>{e(key)}</td><td>{e(str(summary.get(key)))}</td></tr>")
    parts.append(f"<tr><td>by method</td><td>{e(json.dumps(summary.get('by_method', {})))}</td></tr></table>")
    parts.append(f"<p>Showing {len(shown)} of {len(members)} groups, largest first. The kept image is "
                 "outlined in green.</p>")
    for group in shown:
        rows = sorted(members[group], key=lambda m: (m["method"] != "kept", m["distance"], m["id"]))
        parts.append(f"<section class='group' id='group-{int(group)}'>")
        for m in rows:
            css = "kept" if m["method"] == "kept" else "member"
            src = thumbs.get(m["id"], "")
            img = f"<img src='{e(src)}' alt='{e(m['id'])}'>" if src else "<div>(no image)</div>"
            label = "kept" if m["method"] == "kept" else f"{m['method']}, distance {int(m['distance'])}"
            if m["method"] != "kept" and m.get("similarity") is not None:  # semantic groups
                label = f"{m['method']}, similarity {m['similarity']:.3f}"
            parts.append(f"<figure class='{css}'>{img}<figcaption>{e(m['id'])}<br>{e(label)}</figcaption></figure>")
        parts.append("</section>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(run_dir: str, max_groups: int = 200, size: int = 160) -> str:
    """Write `run_dir/report.html` atomically; returns its path."""
    if not os.path.exists(os.path.join(run_dir, "groups")):
        raise FileNotFoundError(f"{run_dir} has no groups/: run `imagesieve find` into it first")
    path = os.path.join(run_dir, "report.html")
    write_text_atomic(render(run_dir, max_groups, size), path)
    return path
