"""What a determine run keeps on disk: its checkpoint folder, finished result and provenance."""

from __future__ import annotations

import datetime
import glob
import logging
import os

import numpy as np

from .._checkpoint import fingerprint, read_json, write_json
from ..geometry import Geometry
from .result import DeterminationResult

__all__ = ["CHECKPOINT_PATTERNS", "finished_result", "prepare_checkpoints", "provenance"]

logger = logging.getLogger(__name__)

#: Checkpoint files larbed writes into ``determine_checkpoint/`` (only these are ever deleted).
CHECKPOINT_PATTERNS = ("config.json", "result.nc", "network.json", "start_*.json",
                       "kinematic*.npz", "search*.npz", "final_refine*.json", "poisson*_*.json")


def finished_result(ckpt: str, old: dict | None, thresholds: dict, geometry: Geometry):
    """The saved result of a finished run with the same fingerprint (None when there is none)."""
    path = os.path.join(ckpt, "result.nc")
    if old is None or not old.get("finished") or old.get("thresholds") != thresholds:
        return None
    from ..io import load_pattern

    try:
        res = DeterminationResult.from_dataset(load_pattern(path), geometry)
    except (ValueError, OSError) as exc:
        logger.warning("determine: the saved result %s cannot be read (%s); running again", path, exc)
        return None
    logger.info("determine: %s holds this run, finished earlier; returning it", ckpt)
    return res


def _dose_summary(dose) -> str | float:
    if dose is None:
        return "none (noise-free: unweighted least squares)"
    if np.ndim(dose) == 0:
        return float(dose)
    d = np.asarray(dose, float)
    return f"per tilt, {d.min():.6g}..{d.max():.6g} (median {np.median(d):.6g}) electrons"


def provenance(pattern, intensity: np.ndarray, dose, settings: dict) -> dict:
    from .. import __version__
    from ..io import source_provenance

    return {"larbed_version": __version__,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            **source_provenance(pattern),
            "data_sha256": fingerprint(np.ascontiguousarray(intensity)),
            "dose_used": _dose_summary(dose), "settings": settings}


def prepare_checkpoints(out_dir, fp: str, settings: dict, resume: bool) -> tuple[str, dict | None]:
    """The checkpoint folder of a run; its config (None for a new run). Deletes only larbed's files."""
    ckpt = os.path.join(os.fspath(out_dir), "determine_checkpoint")
    cfg_path = os.path.join(ckpt, "config.json")
    old = None
    if os.path.exists(cfg_path):
        old = read_json(cfg_path)
        if old is None or "fingerprint" not in old:
            raise ValueError(f"{cfg_path!r} is unreadable (corrupt, or not larbed's); larbed deletes "
                             "nothing it does not recognise: remove that folder yourself or use "
                             "another out_dir")
    elif os.path.isdir(ckpt) and os.listdir(ckpt):
        raise ValueError(f"{ckpt!r} holds files but no config.json: it was not written by larbed "
                         "determine; use another out_dir")
    if old is not None and resume and old["fingerprint"] != fp:
        raise ValueError(f"{ckpt!r} holds a determine run with other data or settings; "
                         "use another out_dir or resume=False")
    if old is not None and not resume:
        removed = 0
        for pattern in CHECKPOINT_PATTERNS:
            for path in glob.glob(os.path.join(ckpt, pattern)):
                os.remove(path)
                removed += 1
        logger.info("determine: resume=False: removed %d checkpoint files of the earlier run", removed)
        old = None
    os.makedirs(ckpt, exist_ok=True)
    if old is None:
        write_json(cfg_path, {"fingerprint": fp, "settings": settings, "finished": False})
    return ckpt, old
