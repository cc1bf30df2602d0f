"""Data sets: MNIST IDX files, .npz, image folders, and the real data packages ship."""
