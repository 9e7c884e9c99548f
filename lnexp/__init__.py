"""lnexp: where should LayerNorm sit in a Transformer, and what does that do to training?"""

__version__ = "0.1.0"
