"""Subcommands of the `scalingfilter` console script: each module defines `add_arguments` and `run`."""
