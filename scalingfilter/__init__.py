"""ScalingFilter: quality factors from a small/large language-model pair, and semantic diversity."""

__version__ = "0.1.0"
