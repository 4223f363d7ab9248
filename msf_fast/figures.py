"""The paper's figures of the representation over training, one panel or block per checkpoint.

    python -m msf_fast.eval tsne       --ckpt A.pt B.pt --data VAL [--classes 10] [--per-class 50] [--method tsne|umap]
    python -m msf_fast.eval neighbours --ckpt A.pt B.pt --data TRAIN [--queries-from VAL] [--queries 6] [--k 8]
    python -m msf_fast.eval clusters   --ckpt A.pt B.pt --data VAL [--clusters 100] [--rows 8] [--per-row 8]

Each command reads its images once for all checkpoints together (every panel shows the same images) and keeps
only what it draws, so memory stays bounded at ImageNet scale. Figures are PNGs of a fixed pixel size, given by
tsne_figure_size, neighbours_figure_size and clusters_figure_size; thumbnails are drawn pixel for pixel.
"""
from __future__ import annotations

import argparse
import heapq
import importlib.util
import math
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from torch import nn

from dataset_prep.staging import StagedPath
from msf_fast.eval_setup import WithProgress, add_data_options, amp_dtype, load_labelled_backbone, output_folder
from msf_fast.knn import batch_features
from msf_fast.report import markdown_table, report_dir, write_section
from msf_fast.step import resolve_device

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
LEGEND_COLUMN_WIDTH = 64
WRONG_CLASS = (220, 30, 30)


# --- choosing the images: one pass over the data, the same choice for every checkpoint ---

class ClassSampler:
    """The first `per_class` images (file order) of `classes` classes drawn at random, or of every class when
    `classes` is None. Each label gets a key seeded by (seed, label) and the lowest keys win, so the draw does not
    depend on the order classes appear in, and a winning class is already kept from its first image on."""

    def __init__(self, classes: int | None, per_class: int, seed: int):
        self.classes, self.per_class, self.seed = classes, per_class, seed
        self.members: dict[int, list[int]] = {}
        self.seen: set[int] = set()
        self._keys: dict[int, float] = {}

    def offer(self, indices: list[int], labels: list[int]) -> tuple[list[int], list[int]]:
        """(batch positions to keep, earlier indices no longer kept)."""
        kept, dropped = [], []
        for position, (index, label) in enumerate(zip(indices, labels)):
            if label not in self.members and not self._admit(label, dropped):
                continue
            if len(self.members[label]) < self.per_class:
                self.members[label].append(index)
                kept.append(position)
        return kept, dropped

    def finished(self, next_index: int) -> bool:
        return False

    def _admit(self, label: int, dropped: list[int]) -> bool:
        # A class refused or evicted once has a key above every later threshold: it never qualifies again.
        if label in self.seen:
            return False
        self.seen.add(label)
        if self.classes is None or len(self.members) < self.classes:
            self.members[label] = []
            return True
        worst = max(self.members, key=self._key)
        if self._key(label) > self._key(worst):
            return False
        dropped.extend(self.members.pop(worst))
        self.members[label] = []
        return True

    def _key(self, label: int) -> float:
        if label not in self._keys:
            self._keys[label] = float(np.random.default_rng([self.seed, label]).random())
        return self._keys[label]


class RandomSampler:
    """`count` images drawn uniformly without replacement: seeded random keys in stream order, lowest keys win."""

    def __init__(self, count: int, seed: int):
        self.count = count
        self.rng = np.random.default_rng(seed)
        self.heap: list[tuple[float, int]] = []  # (-key, index): the largest kept key on top

    def offer(self, indices: list[int], labels: list[int]) -> tuple[list[int], list[int]]:
        kept, dropped = [], []
        for position, (index, key) in enumerate(zip(indices, self.rng.random(len(indices)))):
            if len(self.heap) < self.count:
                heapq.heappush(self.heap, (-key, index))
            elif key < -self.heap[0][0]:
                dropped.append(heapq.heapreplace(self.heap, (-key, index))[1])
            else:
                continue
            kept.append(position)
        return kept, dropped

    def finished(self, next_index: int) -> bool:
        return False


class IndexSampler:
    """Exactly the images at these positions of the file order."""

    def __init__(self, indices):
        self.wanted = set(indices)
        self.last = max(self.wanted, default=-1)

    def offer(self, indices: list[int], labels: list[int]) -> tuple[list[int], list[int]]:
        return [position for position, index in enumerate(indices) if index in self.wanted], []

    def finished(self, next_index: int) -> bool:
        return next_index > self.last


@dataclass
class Selection:
    indices: list[int]  # positions in the data's file order
    labels: torch.Tensor  # (n,) int64
    features: list[torch.Tensor]  # one (n, D) per checkpoint: unit norm, float32, CPU
    thumbnails: torch.Tensor | None  # (n, t, t, 3) uint8
    images_read: int


@torch.no_grad()
def select_images(loader, sampler, backbones: list[nn.Module], device: torch.device,
                  thumbnail: Callable[[torch.Tensor], torch.Tensor] | None = None) -> Selection:
    """Stream (images, labels) batches; keep the sampler's images with their features under every backbone and,
    with `thumbnail`, their thumbnails."""
    kept: dict[int, tuple[int, list[torch.Tensor], torch.Tensor | None]] = {}
    read = 0
    for images, labels in loader:
        if sampler.finished(read):
            break
        indices = list(range(read, read + len(labels)))
        read += len(labels)
        positions, dropped = sampler.offer(indices, labels.tolist())
        if positions:
            chosen = images[positions]
            features = [f.cpu() for f in features_of(backbones, chosen, device)]
            thumbs = thumbnail(chosen) if thumbnail else None
            for row, position in enumerate(positions):
                kept[indices[position]] = (int(labels[position]), [f[row] for f in features],
                                           thumbs[row] if thumbs is not None else None)
        for index in dropped:
            kept.pop(index, None)
    order = sorted(kept)
    return Selection(
        indices=order,
        labels=torch.tensor([kept[i][0] for i in order], dtype=torch.int64),
        features=[torch.stack([kept[i][1][b] for i in order]) if order else torch.empty(0)
                  for b in range(len(backbones))],
        thumbnails=torch.stack([kept[i][2] for i in order]) if thumbnail and order else None,
        images_read=read)


@torch.no_grad()
def features_of(backbones: list[nn.Module], images: torch.Tensor, device: torch.device) -> list[torch.Tensor]:
    """Unit-norm pooled features (float32, on `device`) of a batch under each backbone."""
    images = images.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
    return [F.normalize(batch_features(backbone, images, device, amp_dtype(device)), dim=1) for backbone in backbones]


def make_thumbnails(images: torch.Tensor, mean, std, size: int) -> torch.Tensor:
    """(N, size, size, 3) uint8 on the CPU from normalised NCHW images: un-normalised, resized with antialiasing."""
    mean = torch.tensor(mean, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(std, device=images.device).view(1, 3, 1, 1)
    pixels = (images.float() * std + mean).clamp(0, 1)
    if pixels.shape[-2:] != (size, size):
        pixels = F.interpolate(pixels, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return (pixels * 255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu()


# --- the analyses ---

def embed_tsne(features: np.ndarray, seed: int) -> np.ndarray:
    from sklearn.manifold import TSNE
    perplexity = min(30.0, (len(features) - 1) / 3)  # sklearn needs perplexity < n: tiny sets work too
    return TSNE(n_components=2, init="pca", perplexity=perplexity, random_state=seed).fit_transform(features)


def embed_umap(features: np.ndarray, seed: int) -> np.ndarray:
    import umap
    return umap.UMAP(n_components=2, n_neighbors=min(15, len(features) - 1),
                     random_state=seed).fit_transform(features)


def embedding_method(name: str) -> Callable[[np.ndarray, int], np.ndarray]:
    if name == "umap":
        if importlib.util.find_spec("umap") is None:
            raise ValueError("--method umap needs the umap package: pip install umap-learn")
        return embed_umap
    return embed_tsne


@dataclass
class Neighbours:
    """The k gallery images most similar to each of Q queries, best first."""
    similarities: torch.Tensor  # (Q, k) float32; -inf where no image was found
    indices: torch.Tensor  # (Q, k) positions in the gallery's file order
    labels: torch.Tensor  # (Q, k)
    thumbnails: torch.Tensor  # (Q, k, t, t, 3) uint8

    @classmethod
    def empty(cls, queries: int, k: int, thumb: int) -> "Neighbours":
        return cls(torch.full((queries, k), -math.inf), torch.full((queries, k), -1, dtype=torch.int64),
                   torch.full((queries, k), -1, dtype=torch.int64),
                   torch.zeros(queries, k, thumb, thumb, 3, dtype=torch.uint8))

    def entering(self, similarities: torch.Tensor) -> torch.Tensor:
        """(B,) bool: the batch images that may enter some query's top k (ties included)."""
        return (similarities >= self.similarities[:, -1:]).any(dim=0)

    def merge(self, similarities: torch.Tensor, indices: torch.Tensor, labels: torch.Tensor,
              thumbnails: torch.Tensor) -> "Neighbours":
        """The best k of these and a batch's (Q, B) similarities."""
        k = self.indices.shape[1]
        top = torch.cat([self.similarities, similarities], dim=1).topk(k, dim=1)
        from_batch = top.indices >= k
        in_self = top.indices.clamp(max=k - 1)
        in_batch = (top.indices - k).clamp(min=0)
        rows = torch.arange(len(top.indices))[:, None]

        def pick(old: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
            mask = from_batch.view(*from_batch.shape, *[1] * (old.dim() - 2))
            return torch.where(mask, new[in_batch], old[rows, in_self])

        return Neighbours(top.values, pick(self.indices, indices), pick(self.labels, labels),
                          pick(self.thumbnails, thumbnails))


@torch.no_grad()
def streamed_neighbours(loader, backbones: list[nn.Module], queries: Selection, k: int, device: torch.device,
                       thumbnail: Callable[[torch.Tensor], torch.Tensor],
                       exclude_queries: bool) -> tuple[list[Neighbours], int]:
    """Per backbone, each query's k most cosine-similar gallery images (one streaming pass over the gallery),
    and the gallery's size. With `exclude_queries` the queries are gallery images and never their own neighbour."""
    thumb = queries.thumbnails.shape[1]
    best = [Neighbours.empty(len(queries.indices), k, thumb) for _ in backbones]
    query_features = [f.to(device) for f in queries.features]
    query_indices = torch.tensor(queries.indices)
    read = 0
    for images, labels in loader:
        indices = torch.arange(read, read + len(labels))
        read += len(labels)
        similarities = [(queries_b @ features.T).cpu() for queries_b, features
                        in zip(query_features, features_of(backbones, images, device))]
        if exclude_queries:
            for batch_similarities in similarities:
                batch_similarities[query_indices[:, None] == indices[None, :]] = -math.inf
        # Thumbnails only of the images that may enter a top k: past the first batches, few do.
        entering = torch.stack([best_b.entering(s) for best_b, s in zip(best, similarities)]).any(dim=0)
        thumbs = torch.zeros(len(labels), thumb, thumb, 3, dtype=torch.uint8)
        if entering.any():
            thumbs[entering] = thumbnail(images[entering])
        labels = labels.to(torch.int64).cpu()
        best = [best_b.merge(s, indices, labels, thumbs) for best_b, s in zip(best, similarities)]
    return best, read


def kmeans(features: np.ndarray, clusters: int, seed: int) -> tuple[np.ndarray, str]:
    """(cluster of each row, "faiss" or "sklearn"): faiss.Kmeans where faiss imports, else sklearn's KMeans."""
    features = np.ascontiguousarray(features, dtype=np.float32)
    try:
        import faiss
    except ImportError:
        from sklearn.cluster import KMeans
        return KMeans(clusters, n_init=1, random_state=seed).fit_predict(features), "sklearn"
    # Train on every point, and keep faiss from printing its small-sample warning onto the JSON on stdout.
    model = faiss.Kmeans(features.shape[1], clusters, niter=25, seed=seed, min_points_per_centroid=1,
                         max_points_per_centroid=max(len(features), 1))
    model.train(features)
    return model.index.search(features, 1)[1].ravel().astype(np.int64), "faiss"


def cluster_purity(assignments: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of images whose label is the majority label of their cluster."""
    majority = sum(np.bincount(labels[assignments == c]).max() for c in np.unique(assignments))
    return float(majority / len(labels))


@dataclass
class ClusterRow:
    cluster: int
    size: int
    majority_label: int
    majority_share: float
    members: list[int]  # positions in the clustered selection, shown left to right


def sample_cluster_rows(assignments: np.ndarray, labels: np.ndarray, rows: int, per_row: int,
                        seed: int) -> list[ClusterRow]:
    """`rows` random non-empty clusters, each with `per_row` random members (fewer if the cluster is smaller)."""
    rng = np.random.default_rng(seed)
    non_empty = np.unique(assignments)
    chosen = rng.choice(non_empty, size=min(rows, len(non_empty)), replace=False)
    result = []
    for cluster in chosen:
        members = np.flatnonzero(assignments == cluster)
        counts = np.bincount(labels[members])
        shown = rng.choice(members, size=min(per_row, len(members)), replace=False)
        result.append(ClusterRow(int(cluster), len(members), int(counts.argmax()), float(counts.max() / len(members)),
                                 [int(m) for m in shown]))
    return result


# --- figures: sizes in pixels, fixed by the layout ---

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


def tsne_figure(points: list[np.ndarray], labels: np.ndarray, titles: list[str]) -> Figure:
    classes = sorted(set(labels.tolist()))
    size = width, height = tsne_figure_size(len(points), len(classes))
    figure = new_figure(*size)
    inset = 8
    for panel, (xy, title) in enumerate(zip(points, titles)):
        side = PANEL - 2 * inset
        axes = figure.add_axes([(panel * PANEL + inset) / width, inset / height, side / width, side / height])
        for colour, label in zip(class_colours(len(classes)), classes):
            mine = labels == label
            axes.scatter(xy[mine, 0], xy[mine, 1], s=6, color=colour, linewidths=0, label=str(label))
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
            paste(canvas, queries.thumbnails[row].numpy(), MARGIN, y)
            for column in range(k):
                image = neighbours.thumbnails[row, column].numpy()
                if neighbours.labels[row, column] != queries.labels[row]:
                    image = framed(image, WRONG_CLASS)
                paste(canvas, image, MARGIN + thumb + QUERY_GAP + column * (thumb + PAD), y)
    figure.figimage(canvas, xo=0, yo=0, origin="upper")
    return figure


def clusters_figure(blocks: list[list[ClusterRow]], thumbnails: dict[int, np.ndarray], titles: list[str],
                    rows: int, per_row: int, thumb: int) -> Figure:
    """`thumbnails` maps a member's position in the clustered selection to its thumbnail."""
    size = width, height = clusters_figure_size(len(blocks), rows, per_row, thumb)
    figure = new_figure(*size)
    canvas = np.full((height, width, 3), 255, dtype=np.uint8)
    for block, (cluster_rows, title) in enumerate(zip(blocks, titles)):
        pixel_text(figure, size, MARGIN, row_top(block, 0, rows, thumb) - TITLE_HEIGHT, title, fontsize=8)
        for row, cluster in enumerate(cluster_rows):
            y = row_top(block, row, rows, thumb)
            pixel_text(figure, size, MARGIN, y, f"cluster {cluster.cluster}\n{cluster.size} images\n"
                       f"{cluster.majority_share:.0%} class {cluster.majority_label}", fontsize=6)
            for column, member in enumerate(cluster.members):
                paste(canvas, thumbnails[member], MARGIN + ROW_LABEL_WIDTH + column * (thumb + PAD), y)
    figure.figimage(canvas, xo=0, yo=0, origin="upper")
    return figure


def same_class_share(queries: Selection, neighbours: Neighbours) -> float:
    return (neighbours.labels == queries.labels[:, None]).float().mean().item()


# --- the commands ---

def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def add_figure_commands(subparsers) -> None:
    tsne = subparsers.add_parser("tsne", help="2-D embedding of a few classes' features, one panel per checkpoint")
    add_common_options(tsne, "images embedded (folder, .beton or TFRecord store), e.g. ImageNet val")
    tsne.add_argument("--classes", type=positive_int, default=10, help="random classes shown")
    tsne.add_argument("--per-class", type=positive_int, default=50, help="first images of each class shown")
    tsne.add_argument("--method", choices=("tsne", "umap"), default="tsne", help="umap needs umap-learn")
    tsne.set_defaults(run=run_tsne, result_name="tsne.json")

    neighbours = subparsers.add_parser("neighbours", help="nearest neighbours of random queries per checkpoint")
    add_common_options(neighbours, "gallery searched (folder, .beton or TFRecord store), e.g. ImageNet train")
    neighbours.add_argument("--queries-from", default=None,
                            help="labelled images the queries are drawn from (default: --data, and then a query "
                                 "is never its own neighbour); labels must index the same classes as --data")
    neighbours.add_argument("--queries", type=positive_int, default=6, help="random query images")
    neighbours.add_argument("--k", type=positive_int, default=8, help="neighbours shown per query")
    neighbours.set_defaults(run=run_neighbours, result_name="neighbours.json")

    clusters = subparsers.add_parser("clusters", help="k-means clusters of the features, a block per checkpoint")
    add_common_options(clusters, "images clustered (folder, .beton or TFRecord store), e.g. ImageNet val")
    clusters.add_argument("--clusters", type=positive_int, default=100,
                          help="k-means clusters (at most the number of images)")
    clusters.add_argument("--per-class", type=positive_int, default=50,
                          help="first images of each class clustered (bounds memory)")
    clusters.add_argument("--rows", type=positive_int, default=8, help="random clusters shown")
    clusters.add_argument("--per-row", type=positive_int, default=8, help="random members shown per cluster")
    clusters.set_defaults(run=run_clusters, result_name="clusters.json")


def add_common_options(parser: argparse.ArgumentParser, data_help: str) -> None:
    parser.add_argument("--ckpt", nargs="+", required=True, help="checkpoints, one panel each, in this order")
    parser.add_argument("--data", required=True, help=data_help)
    parser.add_argument("--seed", type=int, default=0, help="seed of every random choice")
    parser.add_argument("--thumb", type=positive_int, default=64, help="thumbnail side in pixels")
    add_data_options(parser)


def open_images(args, root: str):
    """The evaluation loader of `root` and the thumbnail maker that undoes its normalisation."""
    from pipelines import build_eval_loader, two_view_recipe
    recipe = two_view_recipe("w/s", args.resolution)
    thumbnail = partial(make_thumbnails, mean=recipe.mean, std=recipe.std, size=args.thumb)
    loader = build_eval_loader(str(root), recipe, args.batch_size, args.workers)
    return WithProgress(loader, f"{args.command}: {Path(root).name}", not args.no_progress), thumbnail


def load_backbones(paths: list[str], device: torch.device) -> tuple[list[nn.Module], list[str]]:
    """The checkpoints' backbones, on `device` in eval mode, and their labels (panel titles)."""
    loaded = [load_labelled_backbone(path) for path in paths]
    return [backbone.to(device).eval() for backbone, _ in loaded], [label for _, label in loaded]


def run_tsne(args) -> dict:
    embed = embedding_method(args.method)
    device = resolve_device(args.device)
    backbones, titles = load_backbones(args.ckpt, device)
    loader, _ = open_images(args, args.data)
    sampler = ClassSampler(args.classes, args.per_class, args.seed)
    selection = select_images(loader, sampler, backbones, device)
    if len(sampler.members) < args.classes:
        raise ValueError(f"--classes {args.classes}: {args.data} has only {len(sampler.seen)} classes")
    labels = selection.labels.numpy()
    points = [embed(features.numpy(), args.seed) for features in selection.features]
    folder = output_folder(args, args.ckpt[0])
    png = report_dir(folder) / "tsne.png"
    save_png(tsne_figure(points, labels, titles), png)
    name = "t-SNE" if args.method == "tsne" else "UMAP"
    write_section(folder, "tsne", f"## Representation over training ({name})\n\n{name} of the L2-normalised "
                  f"backbone features of {len(labels)} images of {args.data}: {args.classes} random classes (seed "
                  f"{args.seed}), the first {args.per_class} images of each; one panel per checkpoint "
                  f"({', '.join(titles)}), the same images in each, coloured by class.\n\n![{name}](./tsne.png)\n")
    return {"checkpoints": list(args.ckpt), "labels": titles, "data": args.data, "method": args.method,
            "classes": sorted(sampler.members), "images": len(labels), "indices": selection.indices,
            "png": str(png)}


def run_neighbours(args) -> dict:
    device = resolve_device(args.device)
    backbones, titles = load_backbones(args.ckpt, device)
    from_gallery = args.queries_from is None or Path(args.queries_from).resolve() == Path(args.data).resolve()
    query_source = args.data if from_gallery else args.queries_from
    query_loader, thumbnail = open_images(args, query_source)
    queries = select_images(query_loader, RandomSampler(args.queries, args.seed), backbones, device, thumbnail)
    if len(queries.indices) < args.queries:
        raise ValueError(f"--queries {args.queries}: {query_source} has only {queries.images_read} images")
    gallery_loader, _ = open_images(args, args.data)
    found, gallery_size = streamed_neighbours(gallery_loader, backbones, queries, args.k, device, thumbnail,
                                             exclude_queries=from_gallery)
    if any(torch.isinf(neighbours.similarities).any() for neighbours in found):
        raise ValueError(f"--k {args.k}: the gallery {args.data} has only {gallery_size} images"
                         + (" (a query is not its own neighbour)" if from_gallery else ""))
    folder = output_folder(args, args.ckpt[0])
    png = report_dir(folder) / "neighbours.png"
    save_png(neighbours_figure(queries, found, titles), png)
    shares = [round(same_class_share(queries, neighbours), 4) for neighbours in found]
    excluded = " (a query is never its own neighbour)" if from_gallery else ""
    write_section(folder, "neighbours", f"## Nearest neighbours over training\n\n{args.queries} random queries "
                  f"(seed {args.seed}) of {query_source}, each followed by its {args.k} most cosine-similar images "
                  f"of {args.data} ({gallery_size} images){excluded}; one block per checkpoint, the same queries in "
                  f"each. A red frame marks a neighbour of another class than its query.\n\n"
                  + markdown_table(["checkpoint", "neighbours of the query's class"],
                                   [[title, share] for title, share in zip(titles, shares)])
                  + "\n![nearest neighbours](./neighbours.png)\n")
    return {"checkpoints": list(args.ckpt), "labels": titles, "data": args.data, "queries_from": query_source,
            "gallery_images": gallery_size, "queries": queries.indices, "query_labels": queries.labels.tolist(),
            "k": args.k, "neighbours": [neighbours.indices.tolist() for neighbours in found],
            "same_class_share": shares, "png": str(png)}


def run_clusters(args) -> dict:
    device = resolve_device(args.device)
    backbones, titles = load_backbones(args.ckpt, device)
    loader, thumbnail = open_images(args, args.data)
    selection = select_images(loader, ClassSampler(None, args.per_class, args.seed), backbones, device)
    if not selection.indices:
        raise ValueError(f"{args.data}: no images")
    labels = selection.labels.numpy()
    clusters = min(args.clusters, len(labels))
    rows = min(args.rows, clusters)
    assignments, backend = zip(*(kmeans(features.numpy(), clusters, args.seed) for features in selection.features))
    purities = [round(cluster_purity(a, labels), 4) for a in assignments]
    blocks = [sample_cluster_rows(a, labels, rows, args.per_row, args.seed) for a in assignments]
    shown = sorted({member for block in blocks for row in block for member in row.members})
    pictures = select_images(loader, IndexSampler(selection.indices[m] for m in shown), [], device, thumbnail)
    thumbnail_of = dict(zip(shown, pictures.thumbnails.numpy()))  # both in file order
    folder = output_folder(args, args.ckpt[0])
    png = report_dir(folder) / "clusters.png"
    block_titles = [f"{title}: purity {purity:.3f}" for title, purity in zip(titles, purities)]
    save_png(clusters_figure(blocks, thumbnail_of, block_titles, rows, args.per_row, args.thumb), png)
    table = [[title, purity] for title, purity in zip(titles, purities)]
    write_section(folder, "clusters", f"## Clusters\n\nk-means ({backend[0]}, {clusters} clusters, seed "
                  f"{args.seed}) of the L2-normalised backbone features of {len(labels)} images of {args.data} (the "
                  f"first {args.per_class} of each class); per checkpoint {rows} random clusters, each a row of up to "
                  f"{args.per_row} random members. Purity: the fraction of images whose label is their cluster's "
                  "majority label.\n\n" + markdown_table(["checkpoint", "purity"], table)
                  + "\n![clusters](./clusters.png)\n")
    return {"checkpoints": list(args.ckpt), "labels": titles, "data": args.data, "images": len(labels),
            "classes": len(set(labels.tolist())), "clusters": clusters, "backend": backend[0], "purity": purities,
            "shown_clusters": [[row.cluster for row in block] for block in blocks], "png": str(png)}
