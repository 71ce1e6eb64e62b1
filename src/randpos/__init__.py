"""randpos: randomized positional encodings and length generalization for transformers."""

__version__ = "0.1.0"
