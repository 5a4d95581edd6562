"""larbed: Bloch-wave simulation and structure-factor determination for LARBED patterns."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("larbed")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0+unknown"

from . import accessor as _accessor  # noqa: F401  (registers the Dataset.larbed accessor)
from . import determine as _determine_module  # noqa: F401  (the moved module, before the function)
from . import presets
from .constants import electron_wavelength, relativistic_gamma, wave_number
from .crystal import Atom, Crystal
from .determination import DeterminationResult, determine
from .geometry import Geometry
from .io import load_pattern, load_ug, read_csv, save_pattern, save_ug, write_csv
from .measurement import Measurement
from .metrics import r_factor
from .origin import shift_origin
from .refinement import RefinementResult, iam_prior, intensity_jacobian, refine, thickness_scan
from .scattering import scattering_factor
from .simulation import simulate
from .structure import StructureResult, refine_structure
from .structure_factors import compute_ug, input_ug, normalize_ug, random_ug
from .threads import get_num_threads, set_num_threads
from .trust import FitWarning

__all__ = [
    "Atom",
    "Crystal",
    "DeterminationResult",
    "FitWarning",
    "Geometry",
    "Measurement",
    "RefinementResult",
    "StructureResult",
    "__version__",
    "compute_ug",
    "determine",
    "electron_wavelength",
    "get_num_threads",
    "iam_prior",
    "input_ug",
    "intensity_jacobian",
    "load_pattern",
    "load_ug",
    "normalize_ug",
    "presets",
    "r_factor",
    "random_ug",
    "read_csv",
    "refine",
    "refine_structure",
    "relativistic_gamma",
    "save_pattern",
    "save_ug",
    "scattering_factor",
    "set_num_threads",
    "shift_origin",
    "simulate",
    "thickness_scan",
    "wave_number",
    "write_csv",
]
