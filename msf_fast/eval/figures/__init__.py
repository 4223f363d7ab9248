"""The paper's figures of the representation over training (`tsne`, `neighbours`, `clusters` of
`python -m msf_fast.eval`): streaming.py (one pass over the data), analyses.py (embeddings, k-means),
drawing.py (fixed-size PNGs), commands.py (the command lines)."""
