"""fedsigma: the tool around the Flower app — the CLI, the engines and the experiments."""

from importlib import metadata

try:
    __version__ = metadata.version("fedsigma")
except metadata.PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"
