"""lnexp: where should LayerNorm sit in a Transformer, and what does that do to training?"""

__version__ = "0.2.0"  # 0.2: init recipes named by their source (fairseq by default)
