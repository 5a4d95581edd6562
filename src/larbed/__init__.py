"""larbed: Bloch-wave simulation and structure-factor determination for LARBED patterns."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("larbed")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0+unknown"

from .constants import electron_wavelength, relativistic_gamma, wave_number
from .crystal import Atom, Crystal
from .geometry import Geometry
from .scattering import scattering_factor
from .simulation import simulate
from .structure_factors import compute_ug, input_ug, normalize_ug, random_ug, shift_origin

__all__ = [
    "Atom",
    "Crystal",
    "Geometry",
    "__version__",
    "compute_ug",
    "electron_wavelength",
    "input_ug",
    "normalize_ug",
    "random_ug",
    "relativistic_gamma",
    "scattering_factor",
    "shift_origin",
    "simulate",
    "wave_number",
]
