#!/usr/bin/env python3
"""Draws the peer benchmark's charts as SVG, with the standard library only.

    scripts/bench-charts.py target/bench/peers.json docs \
        --machine TEXT --date TEXT --command TEXT

Writes, into the output directory:
- bench-handoff.svg: hand-off latency distributions, one row per waiter (every
  sample a dot, p50 and p99 marked), on a log scale;
- bench-fairness.svg: each process's share of the acquisitions under contention, one
  100 % bar per run, with Jain's index and the worst wait;
- bench-uncontended.svg: the uncontended acquire + release pair of every peer, on a
  log scale.
Each says which machine, date and command produced it. scripts/bench-peers.sh runs it.
"""

import argparse
import html
import json
import math
import os
import random

FAMILY_COLOURS = {
    "raw": "#6b6b6b",
    "unilock": "#1f5fbf",
    "rust": "#d9731a",
    "python": "#2e8b3a",
    "c": "#8a4fb0",
    "command": "#8c564b",
}
FAMILY_NAMES = {
    "raw": "raw system calls",
    "unilock": "unilock",
    "rust": "Rust crates and std",
    "python": "Python packages",
    "c": "C library",
    "command": "commands",
}
MECH_NAMES = {"flock": "FLOCK", "ofd": "OFD", "posix": "POSIX", "dotlock": "DOTLOCK"}
FONT = "font-family='DejaVu Sans, Helvetica, Arial, sans-serif'"


def esc(text):
    return html.escape(str(text), quote=True)


def plain(label):
    """Markdown label -> chart text (backquotes dropped)."""
    return label.replace("`", "")


def missing(row):
    """Why a row has no numbers, short."""
    why = row.get("unsupported", "no sample")
    if "-EOPNOTSUPP" in why or why.startswith("exit 69"):
        return "not supported by this build yet"
    return "failed: " + why[:80]


def fmt_tick(ns):
    for unit, scale in (("s", 1e9), ("ms", 1e6), ("µs", 1e3)):
        if ns >= scale:
            return f"{ns / scale:g} {unit}"
    return f"{ns:g} ns"


def fmt_ns(ns):
    if ns < 1e3:
        return f"{ns:.0f} ns"
    if ns < 1e6:
        return f"{ns / 1e3:.1f} µs"
    if ns < 1e9:
        return f"{ns / 1e6:.1f} ms"
    return f"{ns / 1e9:.2f} s"


class Svg:
    def __init__(self, width, height):
        self.width, self.height = width, height
        self.parts = []

    def add(self, text):
        self.parts.append(text)

    def text(self, x, y, s, size=12, anchor="start", colour="#222", weight="normal", extra=""):
        self.add(
            f"<text x='{x:.1f}' y='{y:.1f}' font-size='{size}' text-anchor='{anchor}' "
            f"fill='{colour}' font-weight='{weight}' {FONT} {extra}>{esc(s)}</text>"
        )

    def line(self, x1, y1, x2, y2, colour="#999", width=1, dash=None):
        d = f" stroke-dasharray='{dash}'" if dash else ""
        self.add(
            f"<line x1='{x1:.1f}' y1='{y1:.1f}' x2='{x2:.1f}' y2='{y2:.1f}' "
            f"stroke='{colour}' stroke-width='{width}'{d}/>"
        )

    def rect(self, x, y, w, h, fill, stroke="none", opacity=1.0, title=None):
        t = f"<title>{esc(title)}</title>" if title else ""
        self.add(
            f"<rect x='{x:.1f}' y='{y:.1f}' width='{max(w, 0):.1f}' height='{h:.1f}' "
            f"fill='{fill}' stroke='{stroke}' fill-opacity='{opacity}'>{t}</rect>"
        )

    def circle(self, x, y, r, fill, opacity=1.0):
        self.add(
            f"<circle cx='{x:.1f}' cy='{y:.1f}' r='{r}' fill='{fill}' fill-opacity='{opacity}'/>"
        )

    def save(self, path):
        body = "\n".join(self.parts)
        with open(path, "w", encoding="utf-8") as f:
            f.write(
                f"<svg xmlns='http://www.w3.org/2000/svg' width='{self.width}' "
                f"height='{self.height}' viewBox='0 0 {self.width} {self.height}'>\n"
                f"<rect width='100%' height='100%' fill='white'/>\n{body}\n</svg>\n"
            )


def header(svg, title, subtitle, meta):
    svg.text(16, 26, title, size=17, weight="bold")
    svg.text(16, 46, subtitle, size=12, colour="#555")
    svg.text(
        16,
        svg.height - 12,
        f"{meta.machine} · {meta.date} · produced by `{meta.command}`",
        size=11,
        colour="#777",
    )


def legend(svg, x, y, families):
    for fam in families:
        svg.rect(x, y - 9, 10, 10, FAMILY_COLOURS[fam])
        svg.text(x + 14, y, FAMILY_NAMES[fam], size=11, colour="#444")
        x += 22 + 6.3 * len(FAMILY_NAMES[fam])


def log_axis(svg, x0, x1, y_top, y_bottom, lo, hi, unit_ns=True):
    """Vertical grid lines at each decade; returns the value -> x mapping."""

    def xpos(v):
        v = min(max(v, lo), hi)
        return x0 + (math.log10(v) - math.log10(lo)) / (math.log10(hi) - math.log10(lo)) * (x1 - x0)

    decade = 10 ** math.floor(math.log10(lo))
    while decade <= hi * 1.0001:
        if decade >= lo * 0.9999:
            x = xpos(decade)
            svg.line(x, y_top, x, y_bottom, colour="#e3e3e3")
            svg.text(x, y_bottom + 14, fmt_tick(decade) if unit_ns else f"{decade:g}", size=10,
                     anchor="middle", colour="#666")
        decade *= 10
    return xpos


def handoff_chart(data, meta, path):
    rows = [r for r in data.get("handoff", [])]
    order = ["flock", "ofd", "posix", "dotlock"]
    rows.sort(key=lambda r: (r["family"] == "command", order.index(r["mech"])))
    row_h, top, left, right = 22, 78, 390, 170
    groups = []
    for r in rows:
        g = "commands (until the process exits)" if r["family"] == "command" else MECH_NAMES[r["mech"]]
        if not groups or groups[-1] != g:
            groups.append(g)
    height = top + row_h * len(rows) + 26 * len(groups) + 70
    svg = Svg(1240, height)
    header(svg, "Hand-off latency: the holder releases, how long until the waiter has the lock",
           "Every sample a dot; | = p50, ◆ = p99. Log scale. Untimed: no timeout; timed: a 10 s timeout.",
           meta)
    legend(svg, left, 64, ["raw", "unilock", "rust", "python", "c", "command"])
    samples = [s for r in rows for s in r.get("samples_ns", [])]
    lo = 10 ** math.floor(math.log10(max(min(samples), 1.0))) if samples else 1e3
    hi = 10 ** math.ceil(math.log10(max(samples))) if samples else 1e10
    lo, hi = min(lo, 1e3), max(hi, 1e6)
    x0, x1 = left + 10, svg.width - right
    y_bottom = height - 52
    xpos = log_axis(svg, x0, x1, top, y_bottom, lo, hi)
    rng = random.Random(7)
    y = top
    current = None
    for r in rows:
        g = "commands (until the process exits)" if r["family"] == "command" else MECH_NAMES[r["mech"]]
        if g != current:
            current = g
            y += 20
            svg.text(16, y - 4, g, size=12, weight="bold", colour="#333")
            svg.line(16, y, svg.width - right, y, colour="#ccc")
            y += 6
        colour = FAMILY_COLOURS[r["family"]]
        mid = y + row_h / 2
        svg.text(left, mid + 4, f"{plain(r['label'])}, {r['mode']}", size=11, anchor="end",
                 colour=colour if r["family"] == "unilock" else "#222",
                 weight="bold" if r["family"] == "unilock" else "normal")
        if "unsupported" in r or "samples_ns" not in r:
            svg.text(x0 + 4, mid + 4, missing(r), size=11, colour="#999",
                     extra="font-style='italic'")
        else:
            s = r["samples_ns"]
            svg.line(xpos(min(s)), mid, xpos(max(s)), mid, colour=colour, width=1)
            for v in s:
                svg.circle(xpos(v), mid + rng.uniform(-5, 5), 2.0, colour, opacity=0.35)
            px = xpos(r["p50_ns"])
            svg.line(px, mid - 8, px, mid + 8, colour="#000", width=2)
            qx = xpos(r["p99_ns"])
            svg.add(f"<path d='M{qx:.1f},{mid - 5:.1f} L{qx + 5:.1f},{mid:.1f} L{qx:.1f},{mid + 5:.1f} "
                    f"L{qx - 5:.1f},{mid:.1f} Z' fill='white' stroke='#000' stroke-width='1.2'/>")
            svg.text(x1 + 12, mid + 4, f"p50 {fmt_ns(r['p50_ns'])} · p99 {fmt_ns(r['p99_ns'])}",
                     size=10, colour="#444")
        y += row_h
    svg.save(path)


def fairness_chart(data, meta, path):
    runs = data.get("fairness", [])
    row_h, top, left, right = 20, 74, 230, 320
    mechs = []
    for r in runs:
        if r["mech"] not in mechs:
            mechs.append(r["mech"])
    height = top + row_h * len(runs) + 24 * len(mechs) + 60
    svg = Svg(1080, height)
    header(svg, "Who gets the lock: each process's share of the acquisitions under contention",
           "One bar per run, one segment per process (equal segments = fair). "
           "N processes loop: lock, hold 50 µs, unlock, lock again.", meta)
    x0, x1 = left + 10, svg.width - right
    y = top
    palette = ["#1f5fbf", "#7fa7e0", "#2e8b3a", "#92c99a", "#d9731a", "#f0b27a", "#8a4fb0", "#c6a3dc"]
    current = None
    for r in runs:
        if r["mech"] != current:
            current = r["mech"]
            y += 18
            svg.text(16, y - 4, MECH_NAMES[current], size=12, weight="bold", colour="#333")
            svg.line(16, y, svg.width - 16, y, colour="#ccc")
            y += 6
        mid = y + row_h / 2
        locker = {"raw": "raw", "unilock": "unilock", "unilock-fair": "unilock FAIR"}[r["locker"]]
        svg.text(left, mid + 4, f"{locker}, {r['procs']} processes", size=11, anchor="end")
        if "unsupported" in r:
            svg.rect(x0, y + 3, x1 - x0, row_h - 6, "#f2f2f2", stroke="#ddd")
            svg.text(x0 + 8, mid + 4, f"UNILOCK_FAIR: {missing(r)}", size=11,
                     colour="#999", extra="font-style='italic'")
        else:
            counts = sorted(r["counts"], reverse=True)
            total = sum(counts) or 1
            x = x0
            for i, c in enumerate(counts):
                w = (x1 - x0) * c / total
                svg.rect(x, y + 3, w, row_h - 6, palette[i % len(palette)], stroke="white",
                         title=f"process {i + 1}: {100 * c / total:.1f}%")
                x += w
            # Where the fair boundaries would be.
            n = len(counts)
            for k in range(1, n):
                fx = x0 + (x1 - x0) * k / n
                svg.line(fx, y + 1, fx, y + row_h - 1, colour="#000", width=1, dash="2,2")
            svg.text(x1 + 8, mid + 4,
                     f"Jain {r['jain']:.2f} · min {100 * r['min_share']:.0f}% · wait p99 "
                     f"{fmt_ns(r['p99_wait_ns'])}, worst {fmt_ns(r['worst_wait_ns'])}",
                     size=10, colour="#444")
        y += row_h
    svg.text(x0, y + 16, "dotted lines: where the segments would end if every process had 1/N",
             size=10, colour="#777")
    svg.save(path)


def uncontended_chart(data, meta, path):
    rows = [r for r in data.get("pairs", [])]
    rows += [dict(r, family="command", mech="script") for r in data.get("script", [])]
    row_h, top, left, right = 20, 78, 330, 150
    groups = []
    for r in rows:
        if r["mech"] not in groups:
            groups.append(r["mech"])
    height = top + row_h * len(rows) + 24 * len(groups) + 60
    svg = Svg(1000, height)
    header(svg, "Uncontended acquire + release: time per pair",
           "Log scale. In-process pairs per mechanism, then a whole lock-run-unlock from a shell script.",
           meta)
    legend(svg, left, 64, ["raw", "unilock", "rust", "python", "c", "command"])
    values = [r["ns"] for r in rows if "ns" in r]
    lo = 10 ** math.floor(math.log10(min(values))) if values else 100
    hi = 10 ** math.ceil(math.log10(max(values))) if values else 1e7
    x0, x1 = left + 10, svg.width - right
    y_bottom = height - 46
    xpos = log_axis(svg, x0, x1, top, y_bottom, lo, hi)
    y = top
    current = None
    for r in rows:
        if r["mech"] != current:
            current = r["mech"]
            y += 18
            name = "a lock around a command, from a script" if current == "script" else MECH_NAMES[current]
            svg.text(16, y - 4, name, size=12, weight="bold", colour="#333")
            svg.line(16, y, svg.width - 16, y, colour="#ccc")
            y += 6
        mid = y + row_h / 2
        colour = FAMILY_COLOURS[r["family"]]
        svg.text(left, mid + 4, plain(r["label"]), size=11, anchor="end",
                 colour=colour if r["family"] == "unilock" else "#222",
                 weight="bold" if r["family"] == "unilock" else "normal")
        if "ns" not in r:
            svg.text(x0 + 4, mid + 4, missing(r), size=11, colour="#999",
                     extra="font-style='italic'")
        else:
            svg.rect(x0, y + 4, xpos(r["ns"]) - x0, row_h - 8, colour)
            ratio = r.get("ratio") if r["family"] != "command" else r.get("ratio_flock")
            what = "flock(1)" if r["family"] == "command" else "raw"
            extra = f"  ({ratio:.2f}x {what})" if ratio is not None else ""
            svg.text(xpos(r["ns"]) + 6, mid + 4, fmt_ns(r["ns"]) + extra, size=10, colour="#444")
        y += row_h
    svg.save(path)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("json")
    ap.add_argument("outdir")
    ap.add_argument("--machine", default="unknown machine")
    ap.add_argument("--date", default="")
    ap.add_argument("--command", default="make bench")
    meta = ap.parse_args()
    with open(meta.json, encoding="utf-8") as f:
        data = json.load(f)
    os.makedirs(meta.outdir, exist_ok=True)
    handoff_chart(data, meta, os.path.join(meta.outdir, "bench-handoff.svg"))
    fairness_chart(data, meta, os.path.join(meta.outdir, "bench-fairness.svg"))
    uncontended_chart(data, meta, os.path.join(meta.outdir, "bench-uncontended.svg"))


if __name__ == "__main__":
    main()
