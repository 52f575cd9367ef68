"""HDF5 feature store: per-frame CNN features of many videos, written once, read by trainers.

Leaf package: imports only h5py, numpy, pyarrow and the standard library (torch lazily, for
.pth import). The on-disk format is specified in docs/featstore.md.
"""

from featstore.catalog import build_catalog, list_parts
from featstore.importers import import_npy, import_pth
from featstore.reader import Store, open_store
from featstore.schema import SCHEMA_VERSION, Problem, StoreError, ViewSpec
from featstore.validate import validate
from featstore.writer import StoreWriter, part_path

__all__ = [
    "SCHEMA_VERSION",
    "Problem",
    "Store",
    "StoreError",
    "StoreWriter",
    "ViewSpec",
    "build_catalog",
    "import_npy",
    "import_pth",
    "list_parts",
    "open_store",
    "part_path",
    "validate",
]
