"""sentdm-batch: send a templated Sent.dm message to every row of a contacts file, exactly once."""

import os

__version__ = "0.1.0"

# polars allocates through jemalloc, which by default keeps freed pages for a while; batch after batch, that retained
# memory - not the data - made up most of the peak RSS (measured on 1M rows: 230 MB -> 175 MB). Returning pages at
# once keeps memory flat as inputs grow. It takes effect only if polars is not loaded yet. polars itself puts its own
# default into the environment when imported (so a parent process that imported polars passes it on); that default
# is replaced, any other value is the user's and wins.
_POLARS_DEFAULT = "dirty_decay_ms:500,muzzy_decay_ms:1000"
if os.environ.get("_RJEM_MALLOC_CONF", _POLARS_DEFAULT) == _POLARS_DEFAULT:
    os.environ["_RJEM_MALLOC_CONF"] = "dirty_decay_ms:0,muzzy_decay_ms:0"
