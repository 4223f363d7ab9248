"""Drawing the figures: PNGs of a fixed pixel size (given by the *_figure_size functions), thumbnails pasted
pixel for pixel, text placed by pixel coordinates."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from dataset_prep.staging import StagedPath
from msf_fast.eval.figures.analyses import ClusterRow
from msf_fast.eval.figures.streaming import Neighbours, Selection

# A power of two, so that pixels / DPI * DPI is exact in floating point and Agg (which truncates) renders
# exactly the computed number of pixels.
DPI = 128
MARGIN = 8
PAD = 4  # between thumbnails
TITLE_HEIGHT = 28
QUERY_GAP = 12  # between a query and its neighbours
ROW_LABEL_WIDTH = 112  # text left of each cluster's row
PANEL = 384  # side of one t-SNE panel
LEGEND_ROWS = 20
LEGEND_COLUMN_WIDTH = 96
LEGEND_NAME_CHARACTERS = 14  # longer class names are cut, so a legend column holds them
WRONG_CLASS = (220, 30, 30)
QUERY = (30, 90, 220)


def tsne_figure_size(panels: int, classes: int) -> tuple[int, int]:
    """(width, height) in pixels: square panels side by side, then the legend's columns."""
    return panels * PANEL + legend_columns(classes) * LEGEND_COLUMN_WIDTH, PANEL + TITLE_HEIGHT


def block_height(rows: int, thumb: int) -> int:
    """One checkpoint's block in the thumbnail figures: its title, then `rows` rows of thumbnails."""
    return TITLE_HEIGHT + rows * (thumb + PAD)


def row_top(block: int, row: int, rows: int, thumb: int) -> int:
    """Pixel row where thumbnail row `row` of block `block` starts (the block's title is at row -1)."""
    return MARGIN + block * block_height(rows, thumb) + TITLE_HEIGHT + row * (thumb + PAD)


def neighbours_figure_size(checkpoints: int, queries: int, k: int, thumb: int) -> tuple[int, int]:
    """(width, height) in pixels: per checkpoint a title, then one row per query: the query, a gap, k neighbours."""
    width = 2 * MARGIN + QUERY_GAP + (k + 1) * thumb + (k - 1) * PAD
    return width, MARGIN + checkpoints * block_height(queries, thumb)


def clusters_figure_size(checkpoints: int, rows: int, per_row: int, thumb: int) -> tuple[int, int]:
    """(width, height) in pixels: per checkpoint a title, then one row per cluster: its label, `per_row` members."""
    width = 2 * MARGIN + ROW_LABEL_WIDTH + per_row * thumb + (per_row - 1) * PAD
    return width, MARGIN + checkpoints * block_height(rows, thumb)


def legend_columns(classes: int) -> int:
    return max(1, math.ceil(classes / LEGEND_ROWS))


def new_figure(width: int, height: int) -> Figure:
    return Figure(figsize=(width / DPI, height / DPI), dpi=DPI, facecolor="white")


def save_png(figure: Figure, path: Path) -> None:
    """Written under a temporary name in the same folder, then renamed: readers never see half a PNG."""
    with StagedPath(str(path)) as staged:
        figure.savefig(staged.temporary, format="png", dpi=DPI, facecolor="white")


def pixel_text(figure: Figure, size: tuple[int, int], x: int, y: int, text: str, fontsize: float) -> None:
    """Text whose top-left corner is at pixel (x, y) from the figure's top-left."""
    width, height = size
    figure.text(x / width, 1 - y / height, text, fontsize=fontsize, ha="left", va="top")


def framed(thumbnail: np.ndarray, colour: tuple[int, int, int]) -> np.ndarray:
    width = max(2, thumbnail.shape[0] // 20)
    result = thumbnail.copy()
    result[:width], result[-width:], result[:, :width], result[:, -width:] = colour, colour, colour, colour
    return result


def paste(canvas: np.ndarray, thumbnail: np.ndarray, x: int, y: int) -> None:
    canvas[y:y + thumbnail.shape[0], x:x + thumbnail.shape[1]] = thumbnail


def class_colours(count: int) -> list:
    from matplotlib import colormaps
    if count <= 20:
        palette = colormaps["tab10" if count <= 10 else "tab20"]
        return [palette(i) for i in range(count)]
    return [colormaps["turbo"](i / (count - 1)) for i in range(count)]


def short_name(name: str) -> str:
    return name if len(name) <= LEGEND_NAME_CHARACTERS else name[:LEGEND_NAME_CHARACTERS - 1] + "…"


def tsne_figure(points: list[np.ndarray], labels: np.ndarray, titles: list[str], class_names: list[str]) -> Figure:
    """`class_names[label]` names each class in the legend."""
    classes = sorted(set(labels.tolist()))
    size = width, height = tsne_figure_size(len(points), len(classes))
    figure = new_figure(*size)
    inset = 8
    for panel, (xy, title) in enumerate(zip(points, titles)):
        side = PANEL - 2 * inset
        axes = figure.add_axes([(panel * PANEL + inset) / width, inset / height, side / width, side / height])
        for colour, label in zip(class_colours(len(classes)), classes):
            mine = labels == label
            axes.scatter(xy[mine, 0], xy[mine, 1], s=6, color=colour, linewidths=0,
                         label=short_name(class_names[label]))
        axes.set_title(title, fontsize=8, pad=3)
        axes.set_xticks([])
        axes.set_yticks([])
    handles, names = axes.get_legend_handles_labels()
    figure.legend(handles, names, title="class", loc="upper left", ncol=legend_columns(len(classes)),
                  bbox_to_anchor=(len(points) * PANEL / width, 1 - TITLE_HEIGHT / height), fontsize=7,
                  title_fontsize=7, frameon=False, markerscale=2, handletextpad=0.2, columnspacing=0.5)
    return figure


def neighbours_figure(queries: Selection, found: list[Neighbours], titles: list[str]) -> Figure:
    count, k = found[0].indices.shape
    thumb = queries.thumbnails.shape[1]
    size = width, height = neighbours_figure_size(len(found), count, k, thumb)
    figure = new_figure(*size)
    canvas = np.full((height, width, 3), 255, dtype=np.uint8)
    for block, (neighbours, title) in enumerate(zip(found, titles)):
        pixel_text(figure, size, MARGIN, row_top(block, 0, count, thumb) - TITLE_HEIGHT,
                   f"{title}: {same_class_share(queries, neighbours):.0%} of the neighbours share the query's class",
                   fontsize=8)
        for row in range(count):
            y = row_top(block, row, count, thumb)
            paste(canvas, framed(queries.thumbnails[row].numpy(), QUERY), MARGIN, y)
            for column in range(k):
                image = neighbours.thumbnails[row, column].numpy()
                if neighbours.labels[row, column] != queries.labels[row]:
                    image = framed(image, WRONG_CLASS)
                paste(canvas, image, MARGIN + thumb + QUERY_GAP + column * (thumb + PAD), y)
    figure.figimage(canvas, xo=0, yo=0, origin="upper")
    return figure


def clusters_figure(blocks: list[list[ClusterRow]], thumbnails: dict[int, np.ndarray], titles: list[str],
                    rows: int, per_row: int, thumb: int, class_names: list[str]) -> Figure:
    """`thumbnails` maps a member's position in the clustered selection to its thumbnail; `class_names[label]`
    names the majority class of each row."""
    size = width, height = clusters_figure_size(len(blocks), rows, per_row, thumb)
    figure = new_figure(*size)
    canvas = np.full((height, width, 3), 255, dtype=np.uint8)
    for block, (cluster_rows, title) in enumerate(zip(blocks, titles)):
        pixel_text(figure, size, MARGIN, row_top(block, 0, rows, thumb) - TITLE_HEIGHT, title, fontsize=8)
        for row, cluster in enumerate(cluster_rows):
            y = row_top(block, row, rows, thumb)
            pixel_text(figure, size, MARGIN, y, f"cluster {cluster.cluster}\n{cluster.size} images\n"
                       f"{cluster.majority_share:.0%} {short_name(class_names[cluster.majority_label])}",
                       fontsize=6)
            for column, member in enumerate(cluster.members):
                paste(canvas, thumbnails[member], MARGIN + ROW_LABEL_WIDTH + column * (thumb + PAD), y)
    figure.figimage(canvas, xo=0, yo=0, origin="upper")
    return figure


def same_class_share(queries: Selection, neighbours: Neighbours) -> float:
    return (neighbours.labels == queries.labels[:, None]).float().mean().item()

