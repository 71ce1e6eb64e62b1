"""Images: 2D positions, encodings on patch grids, a ViT classifier and a small DiT (RPE-2D).

Needs the ``vision`` extra (scikit-learn's bundled digits, scipy). docs/images.md.
"""
