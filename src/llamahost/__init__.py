"""llamahost: the Llama API, self-hosted."""

__version__ = "0.1.0"
