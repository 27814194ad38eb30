"""Plots of every stage, drawn with matplotlib's Agg backend (no display needed) and written atomically.

Each matplotlib plot function takes plain arrays plus the output path; figure size and font size
follow the amount of data so that labels stay readable from 5 to a few hundred classes. Interactive
figures (the embedding map of the explore pages) are plotly figures, returned for the page to embed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import plotly.graph_objects as go  # noqa: E402
from plotly.colors import qualitative, sample_colorscale  # noqa: E402
from scipy.cluster.hierarchy import leaves_list, linkage  # noqa: E402
from scipy.spatial.distance import squareform  # noqa: E402

from embedlens.atomic import atomic_path  # noqa: E402

DPI = 150
# Every UMAP picture (the explore map, the clustering map, the classifier's pair maps) uses umap-learn's
# own defaults, one value for all so that the maps read alike: they are pictures, no table or figure of
# merit depends on them, so they are not settings.
UMAP_NEIGHBOURS = 15
UMAP_MIN_DIST = 0.1


def save_figure(figure: plt.Figure, path: str | Path, dpi: int = DPI) -> None:
    """Write ``figure`` to ``path`` atomically (format from the file ending) and close it."""
    path = Path(path)
    try:
        with atomic_path(path) as tmp:
            figure.savefig(tmp, format=path.suffix.lstrip(".") or "png", dpi=dpi, bbox_inches="tight")
    finally:
        plt.close(figure)


MAX_NAMED = 250       # beyond this many classes names would be under 3 pt: the CSVs hold them instead
UNNAMED_SIDE = 14.0   # inches, for a heatmap too large to name its rows


def label_layout(count: int, *, min_side: float = 5.0, max_side: float = 40.0,
                 per_label: float = 0.16) -> tuple[float, float]:
    """Figure side (inches) and tick-label font size (points) for a square plot with ``count`` labels
    on each axis: about ``per_label`` inches per label, the font filling ~80% of a label's row. Above
    :data:`MAX_NAMED` labels the font is 0 (no labels) and the side :data:`UNNAMED_SIDE`, which
    also keeps the figure's memory bounded (1,000 named classes took 1.4 GB and 30 s)."""
    if count > MAX_NAMED:
        return UNNAMED_SIDE, 0.0
    side = float(np.clip(per_label * count + 2.5, min_side, max_side))
    cell_points = 72.0 * (side - 2.5) / max(count, 1)
    font = float(np.clip(0.8 * cell_points, 3.0, 10.0))
    return side, font


def cluster_order(similarity: np.ndarray, method: str = "average") -> np.ndarray:
    """An order of the rows that puts similar ones side by side: the leaves of a hierarchical
    clustering (``method`` linkage) on the distance ``1 - similarity``."""
    similarity = np.asarray(similarity, dtype=np.float64)
    count = len(similarity)
    if count < 3:
        return np.arange(count)
    distance = np.clip(1.0 - (similarity + similarity.T) / 2.0, 0.0, None)
    np.fill_diagonal(distance, 0.0)
    return leaves_list(linkage(squareform(distance, checks=False), method=method))


def similarity_heatmap(matrix: np.ndarray, names: Sequence[str], path: str | Path, *,
                       title: str | None = None, cluster: bool = True, vmin: float | None = None,
                       vmax: float | None = 1.0, colorbar_label: str = "cosine similarity",
                       row_title: str | None = None, column_title: str | None = None) -> np.ndarray:
    """Draw a square class x class ``matrix`` as a heatmap with ``names`` on both axes and save it.

    With ``cluster`` the classes are reordered by :func:`cluster_order` so that similar classes sit
    together. The colour scale runs from ``vmin`` (default: the smallest off-diagonal value) to
    ``vmax``. ``row_title`` and ``column_title`` name the axes (e.g. true and predicted class of a
    confusion matrix). Returns the order used (row ``i`` of the plot is ``names[order[i]]``). An empty matrix
    gives a figure that says so.
    """
    matrix = np.asarray(matrix, dtype=np.float64)
    count = len(names)
    if matrix.shape != (count, count):
        raise ValueError(f"matrix {matrix.shape} does not match {count} names")
    order = cluster_order(matrix) if cluster else np.arange(count)
    side, font = label_layout(count)
    figure, axes = plt.subplots(figsize=(side + 1.2, side))
    if count == 0:
        axes.text(0.5, 0.5, "no classes", ha="center", va="center", fontsize=14)
        axes.set_axis_off()
    else:
        shown = matrix[np.ix_(order, order)]
        if vmin is None:
            off = matrix[~np.eye(count, dtype=bool)]
            vmin = float(off.min()) if off.size else 0.0
        image = axes.imshow(shown, cmap="viridis", vmin=vmin, vmax=vmax, interpolation="nearest")
        if font:
            labels = [str(names[i]) for i in order]
            axes.set_xticks(range(count), labels, rotation=90, fontsize=font)
            axes.set_yticks(range(count), labels, fontsize=font)
        else:
            axes.set_xticks([])
            axes.set_yticks([])
            axes.set_xlabel(f"{count} classes in clustered order, too many to name here; the CSV has the values")
        axes.tick_params(length=0)
        if row_title:
            axes.set_ylabel(row_title)
        if column_title and font:
            axes.set_xlabel(column_title)
        bar = figure.colorbar(image, ax=axes, fraction=0.04, pad=0.01)
        bar.set_label(colorbar_label)
    if title:
        axes.set_title(title, fontsize=max(font + 2, 10))
    save_figure(figure, path)
    return order


def curve(x: Sequence[float], y: Sequence[float], path: str | Path, *, xlabel: str, ylabel: str,
          title: str | None = None, marked_x: float | None = None, marked_label: str | None = None) -> None:
    """A line through the points ``(x, y)`` with a dot on each, e.g. an elbow (inertia) curve; with
    ``marked_x`` that point is ringed and a dashed vertical line labelled ``marked_label`` marks it."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    figure, axes = plt.subplots(figsize=(6.0, 4.0))
    axes.plot(x, y, "-o", color="tab:blue", markersize=4)
    if marked_x is not None:
        axes.axvline(marked_x, color="tab:red", linestyle="--", linewidth=1, label=marked_label)
        at = np.flatnonzero(x == marked_x)
        if len(at):
            axes.plot(x[at], y[at], "o", markersize=11, markerfacecolor="none", markeredgecolor="tab:red")
        if marked_label:
            axes.legend(loc="upper right")
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.grid(alpha=0.3)
    if title:
        axes.set_title(title)
    save_figure(figure, path)


def histogram(values: Sequence[float], path: str | Path, *, xlabel: str, ylabel: str = "images", bins: int = 60,
              title: str | None = None, marked_x: float | None = None, marked_label: str | None = None,
              log: bool = False) -> None:
    """A histogram of ``values`` (NaNs left out) in ``bins`` equal bins; with ``marked_x`` a dashed
    vertical line labelled ``marked_label`` marks it (e.g. a threshold); ``log`` puts the counts on a
    log scale, so that a thin tail stays visible beside the bulk. No values give a figure that says so."""
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    figure, axes = plt.subplots(figsize=(6.5, 4.0))
    if not len(values):
        axes.text(0.5, 0.5, "no values", ha="center", va="center", fontsize=12)
    else:
        axes.hist(values, bins=bins, color="tab:blue", alpha=0.85)
        if log:
            axes.set_yscale("log")
    if marked_x is not None:
        axes.axvline(marked_x, color="tab:red", linestyle="--", linewidth=1.2, label=marked_label)
        if marked_label:
            axes.legend(loc="upper left")
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.grid(alpha=0.3)
    if title:
        axes.set_title(title, fontsize=10)
    save_figure(figure, path)


def _group_colours(count: int) -> np.ndarray:
    """``count`` distinguishable colours (tab10/tab20 while they last, then evenly spaced hues)."""
    if count <= 10:
        return plt.get_cmap("tab10")(np.arange(count))
    if count <= 20:
        return plt.get_cmap("tab20")(np.arange(count))
    return plt.get_cmap("hsv")(np.linspace(0.0, 1.0, count, endpoint=False))


def scatter_map(xy: np.ndarray, groups: Sequence, path: str | Path, *, centers: np.ndarray | None = None,
                marked: np.ndarray | None = None, marked_label: str = "marked", title: str | None = None,
                xlabel: str = "", ylabel: str = "", group_name: str | None = None) -> None:
    """A 2-D map (PCA, UMAP, t-SNE): ``xy`` (N, 2) points coloured by ``groups`` (N labels: class
    names, or cluster numbers 0..G-1). ``centers`` (G, 2), when given, are drawn as large numbered
    crosses in the colour of cluster 0..G-1; ``marked`` (N booleans) draws those points as black
    crosses on top (e.g. misclassified images). While there are at most 20 groups a legend names
    them (``group_name`` before a cluster number) with their counts."""
    xy = np.asarray(xy, dtype=np.float64)
    groups = np.asarray(list(groups), dtype=object)
    names = list(range(len(centers))) if centers is not None else list(dict.fromkeys(groups.tolist()))
    names += [group for group in dict.fromkeys(groups.tolist()) if group not in names]
    colours = _group_colours(max(len(names), 1))
    figure, axes = plt.subplots(figsize=(7.0, 6.0))
    size, named = _scatter_groups(axes, xy, groups, names, colours, group_name)
    if centers is not None:
        for group, (cx, cy) in enumerate(np.asarray(centers, dtype=np.float64)):
            axes.scatter([cx], [cy], s=160, marker="X", color=colours[group], edgecolors="black", linewidths=1.2,
                         zorder=3)
            axes.annotate(str(group), (cx, cy), xytext=(6, 6), textcoords="offset points", fontsize=9,
                          weight="bold", zorder=4)
    if marked is not None and np.any(marked):
        marked = np.asarray(marked, dtype=bool)
        axes.scatter(xy[marked, 0], xy[marked, 1], s=40, marker="x", color="black", linewidths=1.2, zorder=5,
                     label=f"{marked_label} ({int(marked.sum())})")
    if named or (marked is not None and np.any(marked)):
        axes.legend(loc="best", fontsize=7, markerscale=max(1.0, 20.0 / size) ** 0.5, framealpha=0.8)
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    if title:
        axes.set_title(title, fontsize=10)
    save_figure(figure, path)


def _scatter_groups(axes: plt.Axes, xy: np.ndarray, groups: np.ndarray, names: list, colours: np.ndarray,
                    group_name: str | None) -> tuple[float, bool]:
    """Draw the points of each group of ``names`` in its colour; while there are at most 20 groups each
    gets a legend label with its count. Returns the marker size and whether the groups are labelled."""
    size = float(np.clip(3000.0 / max(len(xy), 1), 2.0, 30.0))
    named = 0 < len(names) <= 20
    for colour, group in zip(colours, names):
        members = groups == group
        if members.any():
            label = f"{group_name} {group}" if group_name else str(group)
            axes.scatter(xy[members, 0], xy[members, 1], s=size, color=colour, alpha=0.6, linewidths=0,
                         label=f"{label} ({int(members.sum())})" if named else None)
    return size, named


def scatter_maps(xy: np.ndarray, panels: Sequence[tuple[str, Sequence]], path: str | Path, *,
                 title: str | None = None, xlabel: str = "", ylabel: str = "") -> None:
    """The same 2-D map ``xy`` (N, 2) side by side, one panel per ``(panel title, groups)``, each
    colouring the points by its N group labels (e.g. by cluster and by true class). Groups get
    distinguishable colours, in sorted order; at most 20 groups are named in a legend."""
    xy = np.asarray(xy, dtype=np.float64)
    figure, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 6.0), squeeze=False)
    for axis, (panel_title, groups) in zip(axes[0], panels):
        groups = np.asarray(list(groups), dtype=object)
        names = sorted(dict.fromkeys(groups.tolist()), key=lambda group: (str(type(group)), group))
        size, named = _scatter_groups(axis, xy, groups, names, _group_colours(max(len(names), 1)), None)
        if named:
            axis.legend(loc="best", fontsize=7, markerscale=max(1.0, 20.0 / size) ** 0.5, framealpha=0.8)
        axis.set_title(f"{panel_title} ({len(names)} groups)", fontsize=10)
        axis.set_xlabel(xlabel)
        axis.set_ylabel(ylabel)
    if title:
        figure.suptitle(title, fontsize=11)
    save_figure(figure, path)


def bar_chart(labels: Sequence[str], values: Sequence[float], path: str | Path, *, xlabel: str, ylabel: str,
              title: str | None = None) -> None:
    """Vertical bars, one per label, each with its value written above it; the width follows the
    number of bars (labels turn vertical beyond 12)."""
    values = np.asarray(values, dtype=np.float64)
    count = len(labels)
    figure, axes = plt.subplots(figsize=(float(np.clip(0.35 * count + 2.5, 5.0, 30.0)), 4.0))
    bars = axes.bar(range(count), values, color="tab:blue")
    axes.bar_label(bars, labels=[f"{value:g}" for value in values], fontsize=7, padding=1)
    axes.set_xticks(range(count), [str(label) for label in labels], rotation=90 if count > 12 else 0,
                    fontsize=8)
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    if title:
        axes.set_title(title)
    save_figure(figure, path)


def image_grid(images: Sequence[np.ndarray | None], captions: Sequence[str], path: str | Path, *, columns: int = 6,
               title: str | None = None) -> None:
    """Images (RGB uint8 arrays, any sizes) in a grid, row by row, each with its caption above it; an
    image given as None (it could not be read) leaves its cell blank with the caption. No images give
    a figure that says so."""
    if len(images) != len(captions):
        raise ValueError(f"{len(images)} images but {len(captions)} captions")
    columns = max(1, min(columns, len(images)))
    rows = max(1, -(-len(images) // columns))
    figure, grid = plt.subplots(rows, columns, figsize=(1.9 * columns, 2.3 * rows + (0.4 if title else 0.0)),
                                squeeze=False)
    for cell in grid.flat:
        cell.set_axis_off()
    if not images:
        grid[0, 0].text(0.5, 0.5, "no images", ha="center", va="center", fontsize=12)
    for cell, image, caption in zip(grid.flat, images, captions):
        if image is not None:
            cell.imshow(np.asarray(image), interpolation="nearest" if max(np.shape(image)[:2]) < 96 else "antialiased")
        cell.set_title(caption, fontsize=7)
    if title:
        figure.suptitle(title, fontsize=10)
    save_figure(figure, path)


def category_colours(count: int) -> list[str]:
    """``count`` distinct colours: Plotly's 10-colour palette when it suffices, else colours spread
    evenly along the Turbo scale and interleaved, so that neighbouring categories differ strongly."""
    if count <= len(qualitative.Plotly):
        return list(qualitative.Plotly[:count])
    spread = sample_colorscale("Turbo", [i / (count - 1) for i in range(count)])
    stride = max(1, int(round(count ** 0.5)))
    return [spread[j] for start in range(stride) for j in range(start, count, stride)]


# px above the map's plot area: plotly draws its toolbar (the modebar, about 30 px tall) over the top right
# corner, where the legend's and the colour bar's titles begin; with this margin they begin below it
TOOLBAR_CLEARANCE = 40


def embedding_map(coords: np.ndarray, values: Sequence, point_ids: Sequence[int], *, categorical: bool,
                  colour_label: str, marker_size: float = 5.0) -> go.Figure:
    """A 2-D scatter of ``coords`` (N x 2) coloured by ``values`` (one per point): one WebGL trace per
    category (the legend hides and shows them) or, for numbers, one trace on a continuous scale. Every
    point carries its id from ``point_ids`` as ``customdata``, so the page can show its image on hover;
    plotly's own hover label is off for that reason."""
    coords = np.asarray(coords, dtype=np.float64)
    ids = np.asarray(point_ids, dtype=np.int64)
    if coords.shape != (len(ids), 2) or len(values) != len(ids):
        raise ValueError(f"coords {coords.shape}, {len(values)} values and {len(ids)} ids do not match")
    # plain lists (not plotly's base64 typed arrays) so that the page's script can read the points;
    # three decimals are finer than a pixel and keep the JSON short
    xy = np.round(coords, 3)
    common = dict(mode="markers", hoverinfo="none")
    traces = []
    if categorical:
        values = np.asarray([str(v) for v in values])
        names = sorted(set(values.tolist()))
        for name, colour in zip(names, category_colours(len(names))):
            rows = np.flatnonzero(values == name)
            traces.append(go.Scattergl(x=xy[rows, 0].tolist(), y=xy[rows, 1].tolist(), customdata=ids[rows].tolist(),
                                       name=name,
                                       marker=dict(size=marker_size, color=colour), **common))
    else:
        numbers = np.asarray(values, dtype=np.float64)
        traces.append(go.Scattergl(x=xy[:, 0].tolist(), y=xy[:, 1].tolist(), customdata=ids.tolist(), name=colour_label,
                                   showlegend=False,
                                   marker=dict(size=marker_size, color=np.round(numbers, 4).tolist(), colorscale="Viridis",
                                               colorbar=dict(title=dict(text=colour_label))), **common))
    figure = go.Figure(traces)
    figure.update_layout(
        margin=dict(l=10, r=10, t=TOOLBAR_CLEARANCE, b=10), plot_bgcolor="white", hovermode="closest",
        dragmode="pan",
        legend=dict(title=dict(text=colour_label), itemsizing="constant"),
        xaxis=dict(visible=False), yaxis=dict(visible=False, scaleanchor="x"))
    return figure


def confusion_heatmap(rates: np.ndarray, names: Sequence[str], path: str | Path, *, title: str | None = None
                      ) -> np.ndarray:
    """The row-normalised confusion matrix ``rates`` (rows: true class, columns: predicted) as a
    clustered heatmap, classes that are confused with each other side by side. The diagonal (correct
    predictions) is left blank so that the colour scale, 0 to the largest confusion, shows the
    mistakes; the title should carry the accuracy. Returns the order used (see
    :func:`similarity_heatmap`, whose layout keeps 54 or 100 class names readable)."""
    rates = np.asarray(rates, dtype=np.float64)
    off_diagonal = rates.copy()
    np.fill_diagonal(off_diagonal, np.nan)
    largest = float(np.nanmax(off_diagonal)) if np.isfinite(off_diagonal).any() else 0.0
    # Clustering needs finite values; blank cells are drawn from the NaN matrix below.
    order = cluster_order(np.nan_to_num(off_diagonal + off_diagonal.T, nan=0.0)) if len(rates) else np.arange(0)
    shown = off_diagonal[np.ix_(order, order)]
    similarity_heatmap(shown, [names[i] for i in order], path, title=title, cluster=False, vmin=0.0,
                       vmax=max(largest, 1e-9), colorbar_label="share of the true class predicted as the column's",
                       row_title="true class", column_title="predicted class")
    return order


def training_curves(history: Mapping[str, Sequence[float]], path: str | Path, *,
                    panels: Mapping[str, Sequence[str]], marked_epoch: int | None = None,
                    marked_label: str = "best epoch", title: str | None = None) -> None:
    """Curves over epochs side by side: ``history`` maps a column name (``epoch`` among them) to its
    values, ``panels`` maps each panel's y-axis title to the columns drawn in it (e.g. ``{"loss":
    ["train_loss", "val_loss"]}``). ``marked_epoch`` draws a vertical line (the kept weights)."""
    epochs = np.asarray(history["epoch"])
    figure, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4), squeeze=False)
    for axis, (y_title, columns) in zip(axes[0], panels.items()):
        for column in columns:
            axis.plot(epochs, np.asarray(history[column], dtype=np.float64), label=column.replace("_", " "))
        if marked_epoch is not None:
            axis.axvline(marked_epoch, color="grey", linestyle="--", linewidth=1, label=marked_label)
        axis.set_xlabel("epoch")
        axis.set_ylabel(y_title)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    if title:
        figure.suptitle(title)
    save_figure(figure, path)


def image_rows(rows: Sequence[tuple[str, Sequence[np.ndarray | None], Sequence[str]]], path: str | Path, *,
               title: str | None = None, cell: float = 1.3,
               caption_colours: Sequence[Sequence[str]] | None = None) -> None:
    """Images in labelled rows: each row is (row title, RGB uint8 images, one caption per image; an image
    given as None leaves its cell blank).
    An empty row shows its title and "none". Images keep their aspect ratio. ``caption_colours``, one
    list per row, colours each caption (e.g. green for a match, red for a mismatch)."""
    columns = max([len(images) for _, images, _ in rows] + [1])
    height = (cell + 0.5) * max(len(rows), 1)
    figure, axes = plt.subplots(len(rows) or 1, columns, figsize=(cell * columns + 1.5, height), squeeze=False)
    for axis in axes.flat:
        axis.set_axis_off()
    for r, (row_title, images, captions) in enumerate(rows):
        axes[r][0].text(-0.1, 0.5, row_title, transform=axes[r][0].transAxes, ha="right", va="center", fontsize=8,
                        wrap=True)
        if not len(images):
            axes[r][0].text(0.5, 0.5, "none", transform=axes[r][0].transAxes, ha="center", va="center", fontsize=8)
        for c, (image, caption) in enumerate(zip(images, captions)):
            if image is not None:  # an image that could not be read leaves its cell blank with the caption
                axes[r][c].imshow(image, interpolation="nearest")
            axes[r][c].set_title(caption, fontsize=6,
                                 color=caption_colours[r][c] if caption_colours is not None else "black")
    # the title keeps about 0.6 inch above the rows: matplotlib's default top margin is a share of the
    # height, which leaves inches of blank paper above tens of rows
    figure.subplots_adjust(top=1.0 - 0.6 / height)
    if title:
        figure.suptitle(title, fontsize=10, y=1.0 - 0.15 / height)
    save_figure(figure, path)


def note_figure(text: str, path: str | Path) -> None:
    """A figure that only says ``text``: the stand-in for a plot that has nothing to show, so the
    output exists and tells why."""
    figure, axis = plt.subplots(figsize=(6, 2))
    axis.text(0.5, 0.5, text, ha="center", va="center", fontsize=10, wrap=True)
    axis.set_axis_off()
    save_figure(figure, path)
