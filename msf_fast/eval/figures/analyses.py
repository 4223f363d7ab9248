"""The analyses behind the figures: 2-D embeddings (t-SNE, UMAP) and k-means clusters with their purity."""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Callable

import numpy as np


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


def purity_floor(assignments: np.ndarray, labels: np.ndarray) -> float:
    """The least purity of any clustering of these labels into as many non-empty clusters: each cluster's majority
    counts one image at least, and at least as many as the largest class has in that cluster. 1.0: the purity says
    nothing (one class, or one image per cluster)."""
    return float(max(len(np.unique(assignments)), np.bincount(labels).max()) / len(labels))


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

