"""The ``delightsam`` command line, thin over the library: ``main`` (parser and dispatch), ``predict`` (one input),
``cohort`` (several inputs, folders, manifests, DICOMweb), ``checkpoints`` (download, info) and ``training``
(train, distill, evaluate); ``exits`` holds the exit statuses they share."""

from .main import build_parser, main
from .predict import default_output

__all__ = ["build_parser", "default_output", "main"]
