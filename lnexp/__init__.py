"""lnexp: where should LayerNorm sit in a Transformer, and what does that do to training?"""

__version__ = "0.3.0"  # 0.3: registries (layouts, norms, probes, plugins), tokenizers, SLURM, packing

# The packages, bottom to top: a module imports only from its own package or those before it
# (tests/test_architecture.py walks every import; docs/architecture.md says what each holds).
LAYERS = ("core", "data", "decode", "run", "report", "experiments", "cli")
