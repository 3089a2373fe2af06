"""`scalingfilter score`: the same flags and behaviour as the reference's quality_factor.py."""

from scalingfilter.quality_factor import add_arguments, run  # noqa: F401
