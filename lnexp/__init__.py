"""lnexp: where should LayerNorm sit in a Transformer, and what does that do to training?"""

__version__ = "0.3.0"  # 0.3: registries (layouts, norms, probes, plugins), tokenizers, SLURM, packing
