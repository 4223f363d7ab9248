"""The paper's figures of the representation over training, one panel or block per checkpoint.

    python -m msf_fast.eval tsne       --ckpt A.pt B.pt --data VAL [--classes 10|all] [--per-class 50] [--method umap]
    python -m msf_fast.eval neighbours --ckpt A.pt B.pt --data TRAIN [--queries-from VAL] [--queries 6] [--k 8]
    python -m msf_fast.eval clusters   --ckpt A.pt B.pt --data VAL [--clusters 100] [--rows 8] [--per-row 8]

Each command reads its images once for all checkpoints together (every panel shows the same images) and keeps
only what it draws (streaming.py); figures are PNGs of a fixed pixel size (drawing.py). Counts asked for (classes,
queries, neighbours, clusters, rows) are checked against the data before any image is read.
"""
from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch import nn

from msf_fast.checkpoint import read_checkpoint
from msf_fast.errors import UserError
from msf_fast.eval.arguments import (ALL, DEFAULT_CLASSES, DEFAULT_CLUSTERS, DEFAULT_NEIGHBOURS, DEFAULT_QUERIES,
                                     DEFAULT_ROWS)
from msf_fast.eval.common import (check_output_folder, checked_device, choose_resolution, note, open_eval_data,
                                  output_folder, publish, same_images, warn)
from msf_fast.eval.figures.analyses import (cluster_purity, embedding_method, kmeans, purity_floor,
                                            sample_cluster_rows)
from msf_fast.eval.figures.drawing import (clusters_figure, neighbours_figure, same_class_share, save_png,
                                           tsne_figure)
from msf_fast.eval.figures.streaming import (ClassSampler, IndexSampler, RandomSampler, make_thumbnails,
                                             select_images, streamed_neighbours)
from msf_fast.eval.report import markdown_table, report_dir


def open_images(args, option: str, root: str):
    """The evaluation loader of `root` (given as `option`), checked, and the thumbnail maker that undoes its
    normalisation."""
    from pipelines import two_view_recipe
    recipe = two_view_recipe("w/s", args.resolution)
    thumbnail = partial(make_thumbnails, mean=recipe.mean, std=recipe.std, size=args.thumb)
    return open_eval_data(args, option, root, recipe, f"{args.command}: {Path(root).name}"), thumbnail


def checked_start(args) -> tuple[torch.device, list]:
    """What every figure command checks before listing the data: the output folder, the device, and that every
    checkpoint is one (read once here, their backbones built later by `backbones_of`)."""
    check_output_folder(args, args.ckpt[0])
    device, checkpoints = checked_device(args), [read_checkpoint(path) for path in args.ckpt]
    choose_resolution(args, checkpoints)
    return device, checkpoints


def backbones_of(checkpoints: list, device: torch.device) -> tuple[list[nn.Module], list[str]]:
    """The checkpoints' backbones, on `device` in eval mode, and their labels (panel titles)."""
    return ([checkpoint.backbone().to(device).eval() for checkpoint in checkpoints],
            [checkpoint.label for checkpoint in checkpoints])


def run_tsne(args) -> dict:
    embed = embedding_method(args.method)
    device, checkpoints = checked_start(args)
    loader, _ = open_images(args, "--data", args.data)
    available = len(loader.classes)
    if isinstance(args.classes, int) and args.classes > available:
        raise UserError(f"--classes {args.classes}: {args.data} has only {available} classes")
    classes = None if args.classes == ALL else args.classes
    if args.classes is None:  # the default fits the data
        classes = DEFAULT_CLASSES if available > DEFAULT_CLASSES else None
        if classes is None and available < DEFAULT_CLASSES:
            note(args, f"all {available} classes of {args.data} (fewer than the default --classes {DEFAULT_CLASSES})")
    backbones, titles = backbones_of(checkpoints, device)
    sampler = ClassSampler(classes, args.per_class, args.seed)
    selection = select_images(loader, sampler, backbones, device)
    if classes is not None and len(sampler.members) < classes:  # a store's class without images
        with_images = f"{args.data} has only {len(sampler.seen)} classes with images"
        if args.classes is not None:
            raise ValueError(f"--classes {args.classes}: {with_images}")
        note(args, f"{with_images}: all are shown")
    labels = selection.labels.numpy()
    shown_classes = len(sampler.members)
    points = [embed(features.numpy(), args.seed) for features in selection.features]
    folder = output_folder(args, args.ckpt[0])
    png = report_dir(folder) / "tsne.png"
    save_png(tsne_figure(points, labels, titles, loader.classes), png)
    name = "t-SNE" if args.method == "tsne" else "UMAP"
    chosen = (f"{shown_classes} random classes (seed {args.seed})" if classes is not None
              and shown_classes < len(loader.classes) else f"all {shown_classes} classes")
    result = {"checkpoints": list(args.ckpt), "labels": titles, "resolution": args.resolution, "data": args.data,
              "method": args.method, "classes": sorted(sampler.members),
              "class_names": [loader.classes[c] for c in sorted(sampler.members)], "images": len(labels),
              "indices": selection.indices, "png": str(png)}
    return publish(args, folder, result, "tsne",
                   f"## Representation over training ({name})\n\n{name} of the L2-normalised backbone features of "
                   f"{len(labels)} images of {args.data}: {chosen}, the first {args.per_class} images of each; one "
                   f"panel per checkpoint ({', '.join(titles)}), the same images in each, coloured by class.\n\n"
                   f"![{name}](./tsne.png)\n")


def run_neighbours(args) -> dict:
    from pipelines.contract import check_same_classes
    device, checkpoints = checked_start(args)
    from_gallery = args.queries_from is None or Path(args.queries_from).resolve() == Path(args.data).resolve()
    query_source = args.data if from_gallery else args.queries_from
    gallery_loader, thumbnail = open_images(args, "--data", args.data)
    query_loader = gallery_loader
    if not from_gallery:
        query_loader, _ = open_images(args, "--queries-from", query_source)
        check_same_classes(query_loader, f"--queries-from {query_source}", gallery_loader, f"--data {args.data}")
        overlap = same_images("--queries-from", query_source, "--data", args.data)
        if overlap:
            warn(args, f"{overlap}: each query finds itself among its neighbours; give --queries-from the path of "
                       "--data (a query is then never its own neighbour) or held-out images")
    if args.queries is None:  # the defaults fit the data
        args.queries = min(DEFAULT_QUERIES, query_loader.num_samples)
        if args.queries < DEFAULT_QUERIES:
            note(args, f"{args.queries} queries, every image of {query_source} (fewer than the default --queries "
                       f"{DEFAULT_QUERIES})")
    if args.queries > query_loader.num_samples:
        raise UserError(f"--queries {args.queries}: {query_source} has only {query_loader.num_samples} images")
    searchable = gallery_loader.num_samples - (1 if from_gallery else 0)
    own = " (a query is not its own neighbour)" if from_gallery else ""
    if args.k is None and searchable >= 1:
        args.k = min(DEFAULT_NEIGHBOURS, searchable)
        if args.k < DEFAULT_NEIGHBOURS:
            note(args, f"{args.k} neighbours per query, every image of the gallery {args.data}{own} (fewer than the "
                       f"default --k {DEFAULT_NEIGHBOURS})")
    if args.k is None or args.k > searchable:
        k = f"--k {args.k}" if args.k is not None else "neighbours"
        raise UserError(f"{k}: the gallery {args.data} has only {gallery_loader.num_samples} images{own}")
    backbones, titles = backbones_of(checkpoints, device)
    queries = select_images(query_loader, RandomSampler(args.queries, args.seed), backbones, device, thumbnail)
    if len(queries.indices) < args.queries:
        raise ValueError(f"--queries {args.queries}: {query_source} has only {queries.images_read} images")
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
    result = {"checkpoints": list(args.ckpt), "labels": titles, "resolution": args.resolution, "data": args.data,
              "queries_from": query_source, "gallery_images": gallery_size, "queries": queries.indices,
              "query_labels": queries.labels.tolist(),
              "k": args.k, "neighbours": [neighbours.indices.tolist() for neighbours in found],
              "same_class_share": shares, "png": str(png)}
    return publish(args, folder, result, "neighbours",
                   f"## Nearest neighbours over training\n\n{args.queries} random queries (seed {args.seed}) of "
                   f"{query_source}, each followed by its {args.k} most cosine-similar images of {args.data} "
                   f"({gallery_size} images){excluded}; one block per checkpoint, the same queries in each. A blue "
                   "frame marks each query (the first column), a red frame a neighbour of another class than its "
                   "query.\n\n"
                   + markdown_table(["checkpoint", "neighbours of the query's class"],
                                    [[title, share] for title, share in zip(titles, shares)])
                   + "\n![nearest neighbours](./neighbours.png)\n")


def run_clusters(args) -> dict:
    device, checkpoints = checked_start(args)
    loader, thumbnail = open_images(args, "--data", args.data)
    counted = images_clustered(args.data, args.per_class)
    clusters, rows = cluster_counts(args, *counted)
    backbones, titles = backbones_of(checkpoints, device)
    selection = select_images(loader, ClassSampler(None, args.per_class, args.seed), backbones, device)
    if not selection.indices:
        raise ValueError(f"{args.data}: no images")
    labels = selection.labels.numpy()
    assignments, backend = zip(*(kmeans(features.numpy(), clusters, args.seed) for features in selection.features))
    purities = [round(cluster_purity(a, labels), 4) for a in assignments]
    floors = [round(purity_floor(a, labels), 4) for a in assignments]
    if min(floors) == 1.0:  # one class clustered (more clusters than images are refused)
        warn(args, f"the {len(labels)} images clustered are all of one class: their purity is 1.0 whatever the "
                   "features, and says nothing about them")
    blocks = [sample_cluster_rows(a, labels, rows, args.per_row, args.seed) for a in assignments]
    shown = sorted({member for block in blocks for row in block for member in row.members})
    pictures = select_images(loader, IndexSampler(selection.indices[m] for m in shown), [], device, thumbnail)
    thumbnail_of = dict(zip(shown, pictures.thumbnails.numpy()))  # both in file order
    folder = output_folder(args, args.ckpt[0])
    png = report_dir(folder) / "clusters.png"
    block_titles = [f"{title}: purity {purity:.3f}" for title, purity in zip(titles, purities)]
    save_png(clusters_figure(blocks, thumbnail_of, block_titles, rows, args.per_row, args.thumb, loader.classes), png)
    table = [[title, purity, floor] for title, purity, floor in zip(titles, purities, floors)]
    shrunk = (f" ({clusters_chosen(clusters, *counted)})" if args.clusters is None and clusters < DEFAULT_CLUSTERS
              else "")
    result = {"checkpoints": list(args.ckpt), "labels": titles, "resolution": args.resolution, "data": args.data,
              "images": len(labels), "classes": len(set(labels.tolist())), "clusters": clusters, "backend": backend[0],
              "purity": purities,
              "purity_floor": floors, "shown_clusters": [[row.cluster for row in block] for block in blocks],
              "png": str(png)}
    return publish(args, folder, result, "clusters",
                   f"## Clusters\n\nk-means ({backend[0]}, {clusters} clusters{shrunk}, seed {args.seed}) of the "
                   f"L2-normalised backbone features of {len(labels)} images of {args.data} (the first "
                   f"{args.per_class} of each class); per checkpoint {rows} random clusters, each a row of up to "
                   f"{args.per_row} random members. Purity: the fraction of images whose label is their cluster's "
                   "majority label. Any clustering of these images scores at least the floor: the larger of the "
                   "largest class's share and clusters / images (each cluster's majority holds one image at "
                   "least).\n\n"
                   + markdown_table(["checkpoint", "purity", "floor"], table)
                   + "\n![clusters](./clusters.png)\n")


def images_clustered(data: str, per_class: int) -> tuple[int, int]:
    """(images, classes) that `clusters` reads: the first `per_class` of each class, counted from the labels alone."""
    from pipelines.subsets import dataset_labels
    counts = np.minimum(np.bincount(dataset_labels(data)), per_class)
    return int(counts.sum()), int((counts > 0).sum())


def clusters_chosen(clusters: int, images: int, classes: int) -> str:
    """Why the default gave `clusters`, in words."""
    if clusters == classes:
        return f"one per class of the {images} images clustered"
    return f"half the {images} images clustered, two per cluster on average"


def cluster_counts(args, images: int, classes: int) -> tuple[int, int]:
    """(clusters, rows): what was asked, checked against the images clustered (as many clusters as images would make
    each image its own cluster, purity 1.0 by construction: refused); the defaults fit the data, and say so on
    stderr."""
    where = f"(the first --per-class {args.per_class} of each class of {args.data})"
    if images < 2:
        raise UserError(f"--data {args.data}: only {images} image is clustered {where}; k-means needs 2 at least")
    if args.clusters is not None and args.clusters >= images:
        raise UserError(f"--clusters {args.clusters}: only {images} images are clustered {where}; give at most "
                        f"{images - 1} (with one image per cluster, purity is 1.0 whatever the features)")
    clusters = args.clusters
    if clusters is None:
        clusters = min(DEFAULT_CLUSTERS, max(1, min(classes, images // 2)))
        if clusters < DEFAULT_CLUSTERS:
            note(args, f"{clusters} clusters, {clusters_chosen(clusters, images, classes)} (fewer than the default "
                       f"--clusters {DEFAULT_CLUSTERS})")
    if args.rows is not None and args.rows > clusters:
        raise UserError(f"--rows {args.rows}: only {clusters} clusters to show; give at most {clusters}")
    return clusters, args.rows if args.rows is not None else min(DEFAULT_ROWS, clusters)
