"""tympan: self-supervised audio representation learning.

See ``ARCHITECTURE.md`` (shipped beside the seeds) for the data path and the contracts between
the parts; the Python API lives in :mod:`tympan.api` and the CLI in :mod:`tympan.cli`.
"""

from tympan.errors import TympanError

__all__ = ["TympanError", "__version__"]
__version__ = "0.1.0"
