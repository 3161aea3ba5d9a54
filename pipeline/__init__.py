"""sentdm-batch: send a templated Sent.dm message to every row of a contacts file, exactly once."""

__version__ = "0.1.0"
