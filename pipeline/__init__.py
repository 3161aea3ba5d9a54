"""sentdm-batch: send a templated Sent.dm message to every row of a contacts file, exactly once."""

from pipeline import allocator

__version__ = "0.1.0"

# polars allocates through jemalloc, which reads its settings when polars loads: see allocator.py
allocator.choose_default()
