"""An SVG chart of benchmark ratios: for each figure (untar, find, ...), one bar per row
giving time of the row / time of its counterpart, on a log scale with lines at 1x (as fast
as the counterpart) and 2x (the target of issue #18). Plain SVG written by hand, so the
bench needs nothing beyond Python's standard library.
"""

import math
from xml.sax.saxutils import escape

# Colours for successive rows (colour-blind friendly, Okabe-Ito).
PALETTE = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000"]


def write_svg(path, figures, rows, title):
    """Writes the chart to `path`. `figures`: the figure names, in order; `rows`: a list of
    (label, {figure: ratio or None}) pairs; missing or None ratios draw no bar."""
    values = [r for _, ratios in rows for r in ratios.values() if r]
    low = min([0.5] + values)
    high = max([4.0] + values)
    lo_exp, hi_exp = math.floor(math.log2(low)), math.ceil(math.log2(high))

    bar_h, gap, left, width, top = 12, 10, 90, 560, 40
    group_h = bar_h * max(1, len(rows)) + gap
    legend_h = 18 * len(rows) + 10
    height = top + group_h * len(figures) + 30 + legend_h

    def x_of(ratio):
        return left + width * (math.log2(ratio) - lo_exp) / (hi_exp - lo_exp)

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{left + width + 30}" height="{height}" '
           f'font-family="sans-serif" font-size="11">',
           f'<text x="{left}" y="18" font-size="13">{escape(title)}</text>']
    axis_y = top + group_h * len(figures)
    for e in range(lo_exp, hi_exp + 1):
        x = x_of(2.0 ** e)
        strong = e in (0, 1)
        colour, stroke = ("#444", 1.5) if strong else ("#ddd", 1)
        dash = ' stroke-dasharray="4 3"' if e == 1 else ""
        out.append(f'<line x1="{x:.1f}" y1="{top - 6}" x2="{x:.1f}" y2="{axis_y}" '
                   f'stroke="{colour}" stroke-width="{stroke}"{dash}/>')
        label = f"{2.0 ** e:g}x"
        out.append(f'<text x="{x:.1f}" y="{axis_y + 14}" text-anchor="middle">{label}</text>')
    for i, figure in enumerate(figures):
        y0 = top + i * group_h
        out.append(f'<text x="{left - 6}" y="{y0 + group_h / 2:.1f}" text-anchor="end">{escape(figure)}</text>')
        for j, (_, ratios) in enumerate(rows):
            ratio = ratios.get(figure)
            if not ratio:
                continue
            x1, x2 = x_of(1.0), x_of(ratio)
            y = y0 + j * bar_h
            out.append(f'<rect x="{min(x1, x2):.1f}" y="{y}" width="{abs(x2 - x1):.1f}" height="{bar_h - 2}" '
                       f'fill="{PALETTE[j % len(PALETTE)]}"><title>{ratio:.2f}</title></rect>')
    ly = axis_y + 30
    for j, (label, _) in enumerate(rows):
        y = ly + 18 * j
        out.append(f'<rect x="{left}" y="{y}" width="12" height="10" fill="{PALETTE[j % len(PALETTE)]}"/>')
        out.append(f'<text x="{left + 18}" y="{y + 9}">{escape(label)}</text>')
    out.append(f'<text x="{left + width}" y="{ly + 9}" text-anchor="end" fill="#444">'
               "time / counterpart's time, log scale (left of 1x: faster)</text>")
    out.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(out) + "\n")
