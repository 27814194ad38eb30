"""embedlens: answers about an image dataset from frozen foundation-model embeddings.

The library behind the embedlens Snakemake workflow. Every module here is plain Python with typed
functions; nothing imports Snakemake, so tests and notebooks call the same code the workflow runs.
"""

__version__ = "0.1.0"
