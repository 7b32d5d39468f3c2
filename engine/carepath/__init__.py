"""carepath: clinical-pathway decision support compiled into durable-rules."""

__version__ = "0.1.0"
