"""Singular Value Scaling (SVS) of pruned generators and spectra of their weights."""
from .scaling import FUNCTIONS, parse_fn, scale_, select_names  # noqa: F401
