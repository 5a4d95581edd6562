"""Reading and writing LARBED patterns and structure factors (:mod:`~larbed.io.netcdf`,
:mod:`~larbed.io.csv`, :mod:`~larbed.io.attributes`).

netCDF files (through xarray and netCDF4) hold simulated or measured patterns and U_g vectors.
netCDF has no complex type, so every complex variable is written as two float64 variables
``<name>_real`` and ``<name>_imag`` marked with the attribute ``larbed_complex``; loading recombines
them bit for bit. Attributes that netCDF cannot hold (``None``, booleans, dictionaries, empty or
nested lists) are written as JSON text, and a JSON copy of every attribute dictionary is kept so
that loading gives back exactly what was saved.

CSV tables of measured intensities (columns ``h, k, l, tilt_x_mrad, tilt_y_mrad, intensity``, one
row per beam and tilt) are read into the same Dataset layout as :func:`larbed.simulate`.
"""

from .attributes import LarbedFileError, MissingFileError
from .csv import CSV_COLUMNS, read_csv, write_csv
from .netcdf import (
    load_pattern,
    load_ug,
    normalise_counts,
    read_netcdf,
    save_pattern,
    save_ug,
    source_provenance,
    write_netcdf,
)

__all__ = [
    "CSV_COLUMNS",
    "LarbedFileError",
    "MissingFileError",
    "load_pattern",
    "load_ug",
    "normalise_counts",
    "read_csv",
    "read_netcdf",
    "save_pattern",
    "save_ug",
    "source_provenance",
    "write_csv",
    "write_netcdf",
]
