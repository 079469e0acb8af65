"""What a figure looks like once drawn, checked from the renderer's extents (Agg, display pixels):
the text it shows, which boxes overlap, whether a legend sits clear of the panels."""

from __future__ import annotations

from typing import Any

__all__ = ["Drawn", "draw", "overlapping", "outside_figure", "tick_labels", "visible_axes"]

SLACK = 1.0  # pixels: boxes that merely touch do not overlap


class Drawn:
    """A drawn figure: its renderer, and every visible piece of text with the axes it belongs to."""

    def __init__(self, fig: Any):
        fig.canvas.draw()  # runs the layout engine and places every tick and legend
        self.fig = fig
        self.renderer = fig.canvas.get_renderer()
        self.texts: list[tuple[str, Any, Any]] = []  # (kind, owning axes or None, Text)
        for name in ("_suptitle", "_supxlabel", "_supylabel"):
            self._add(name.strip("_"), None, getattr(fig, name, None))
        for t in fig.texts:
            self._add("figure text", None, t)
        for leg in fig.legends:
            for t in leg.get_texts():
                self._add("legend", None, t)
        for ax in visible_axes(fig):
            for t in (ax.title, ax._left_title, ax._right_title, ax.xaxis.label, ax.yaxis.label, *ax.texts):
                self._add("axes text", ax, t)
            for t in tick_labels(ax, "x") + tick_labels(ax, "y"):
                self._add("tick label", ax, t)
            if ax.get_legend() is not None:
                for t in ax.get_legend().get_texts():
                    self._add("legend", ax, t)

    def _add(self, kind: str, ax: Any, text: Any) -> None:
        seen = any(t is text for _, _, t in self.texts)  # a suptitle is in fig.texts too
        if text is not None and not seen and text.get_visible() and text.get_text().strip():
            self.texts.append((kind, ax, text))

    def box(self, artist: Any) -> Any:
        """The artist's extent in display pixels."""
        return artist.get_window_extent(self.renderer)

    def text_overlaps(self) -> list[tuple[str, str]]:
        """Pairs of visible texts whose boxes overlap (titles, headers, labels, ticks, legend entries)."""
        boxes = [(t.get_text(), self.box(t)) for _, _, t in self.texts]
        return [(a, b) for k, (a, ba) in enumerate(boxes) for b, bb in boxes[k + 1:] if overlapping(ba, bb)]

    def texts_over_other_axes(self) -> list[tuple[str, int]]:
        """Texts that reach into the data area of a panel they do not belong to (figure texts: any panel)."""
        areas = [(ax, self.box(ax.patch)) for ax in visible_axes(self.fig)]
        out = []
        for _, owner, t in self.texts:
            box = self.box(t)
            out += [(t.get_text(), k) for k, (ax, area) in enumerate(areas)
                    if ax is not owner and overlapping(box, area)]
        return out

    def texts_outside(self) -> list[str]:
        """Texts cut by the figure's edge."""
        return [t.get_text() for _, _, t in self.texts if outside_figure(self.fig, self.box(t))]

    def legends(self) -> list[Any]:
        return list(self.fig.legends) + [ax.get_legend() for ax in visible_axes(self.fig) if ax.get_legend()]

    def legend_over_data(self) -> list[int]:
        """Indices of panels whose data area a legend covers."""
        areas = [self.box(ax.patch) for ax in visible_axes(self.fig)]
        return [k for leg in self.legends() for k, area in enumerate(areas) if overlapping(self.box(leg), area)]

    def clean(self) -> list[Any]:
        """Every fault found: overlapping texts, texts over another panel or off the figure, legends
        over data or off the figure; empty for a figure worth looking at."""
        faults: list[Any] = [("overlap", p) for p in self.text_overlaps()]
        faults += [("over another panel", p) for p in self.texts_over_other_axes()]
        faults += [("cut by the edge", t) for t in self.texts_outside()]
        faults += [("legend over panel", k) for k in self.legend_over_data()]
        faults += [("legend cut", k) for k, leg in enumerate(self.legends()) if outside_figure(self.fig, self.box(leg))]
        return faults


def draw(fig: Any) -> Drawn:
    """Draw ``fig`` and collect what it shows."""
    return Drawn(fig)


def visible_axes(fig: Any) -> list[Any]:
    return [ax for ax in fig.axes if ax.get_visible()]


def tick_labels(ax: Any, which: str) -> list[Any]:
    """The tick labels a drawn axis shows (major and minor, non-empty, within its view)."""
    axis = ax.xaxis if which == "x" else ax.yaxis
    lo, hi = sorted(axis.get_view_interval())
    ticks = list(axis.get_major_ticks()) + list(axis.get_minor_ticks())
    locs = list(axis.get_majorticklocs()) + list(axis.get_minorticklocs())
    out = []
    for tick, loc in zip(ticks, locs):
        label = tick.label1
        if label.get_visible() and tick.get_visible() and label.get_text().strip() and lo <= loc <= hi:
            out.append(label)
    return out


def overlapping(a: Any, b: Any, slack: float = SLACK) -> bool:
    """Whether two display boxes share more than ``slack`` pixels in both directions."""
    return min(a.x1, b.x1) - max(a.x0, b.x0) > slack and min(a.y1, b.y1) - max(a.y0, b.y0) > slack


def outside_figure(fig: Any, box: Any, slack: float = SLACK) -> bool:
    """Whether a display box reaches past the figure's edge."""
    full = fig.bbox
    return box.x0 < full.x0 - slack or box.y0 < full.y0 - slack or box.x1 > full.x1 + slack or box.y1 > full.y1 + slack
