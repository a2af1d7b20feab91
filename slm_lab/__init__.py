"""SLM Lab: the package behind the course — build, train, measure, shrink and deploy a small language model."""
__version__ = "0.1.0"
