"""The `scalingfilter` console script: one module per subcommand (`add_arguments`, `run`), each a thin layer
over the stages; `app` parses the command line and turns a `ScalingFilterError` into one line."""

from scalingfilter.cli.app import main

__all__ = ["main"]
