"""slmops: take a small language model from data to a served endpoint, on Azure ML or offline."""

__version__ = "0.1.0"
