"""Training data: simulated LARBED patterns with their U_g and thickness (thesis 3.1, 4).

A data set is one ``xr.Dataset`` with dims ``sample``, ``tilt``, ``beam``, ``target`` and
``reflection``:

* ``intensity`` (sample, tilt, beam) — the simulated patterns (fraction of the incident beam);
* ``targets`` (sample, target) — the learning target [Re U (M), Im U (M), t / 1000 Å], i.e. the
  thickness in Å divided by 1000 (= t [nm] / 100);
* ``ug`` (sample, reflection) — complex U_g [1/Å²] after make-unique;
* ``thickness_nm`` (sample).

Every sample i draws its random numbers from ``numpy.random.SeedSequence(seed, spawn_key=(i,))``
(the i-th child of ``SeedSequence(seed)``), so a data set is the same whatever the chunking and
whether it is computed locally or on a Dask cluster.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Literal, get_args

import numpy as np
import xarray as xr

from .._checkpoint import fingerprint
from .._types import RANDOM_PRIORS
from ..geometry import Geometry
from ..origin import choose_reference_reflections, make_unique_ug_vector
from ..schema import check_ug, pattern_coords
from ..simulation import simulate
from ..structure_factors import compute_ug, random_ug
from .chunks import CHUNK_DIR_SUFFIX, open_chunk_folder, simulate_chunks
from .targets import (
    THICKNESS_TARGET_NM,
    check_thickness_range,
    make_targets,
    split_targets,
    target_labels,
)

__all__ = [
    "Channel",
    "CHANNELS",
    "generate_dataset",
    "save_dataset",
    "load_dataset",
    "make_targets",
    "split_targets",
    "deviate_ug",
    "resolve_reference",
    "target_labels",
    "THICKNESS_TARGET_NM",
]

logger = logging.getLogger(__name__)

Channel = Literal["random", "deviation"]
CHANNELS: tuple[str, ...] = get_args(Channel)
Scheduler = Literal["synchronous", "threads", "processes"]
SCHEDULERS: tuple[str, ...] = get_args(Scheduler)

#: Default half-width of the thickness jitter around a given thickness [nm] ("a few nm").
THICKNESS_JITTER_NM = 5.0
#: Default number of samples per Dask task.
CHUNK_SIZE = 16


# ----------------------------------------------------------------------------- samples
def deviate_ug(ug0: np.ndarray, scale: float, rng: np.random.Generator) -> np.ndarray:
    """U = U0 + s·|U0|·(ε_r + iε_i), ε uniform in [-1, 1]; zero U0 stays zero."""
    u0 = np.asarray(ug0, dtype=complex)
    eps = rng.uniform(-1.0, 1.0, (2,) + u0.shape)
    return u0 + scale * np.abs(u0) * (eps[0] + 1j * eps[1])


@dataclass(frozen=True)
class _Spec:
    """Everything that determines the samples (hashable, JSON-able; recorded in the file)."""

    channel: str
    n: int
    entropy: str  # SeedSequence entropy as a string (may exceed 64 bits)
    spawn_key: tuple[int, ...]
    scale: float
    thickness_range_nm: tuple[float, float]
    thickness_jitter_nm: float
    thickness0_nm: float
    prior: str
    ug_range: float
    ug0_real: tuple[float, ...]
    ug0_imag: tuple[float, ...]
    unique: bool
    reference: tuple[int, int]
    targets_rad: tuple[float, float]
    geometry: str  # JSON of geometry.to_attrs()

    def digest(self) -> str:
        return fingerprint(asdict(self))


def _sample_seed(spec: _Spec, i: int) -> np.random.SeedSequence:
    return np.random.SeedSequence(int(spec.entropy), spawn_key=tuple(spec.spawn_key) + (int(i),))


def draw_sample(geometry: Geometry, spec: _Spec, i: int) -> tuple[np.ndarray, float]:
    """U_g (M,) complex and thickness [nm] of sample ``i`` (before make-unique)."""
    rng = np.random.default_rng(_sample_seed(spec, i))
    lo, hi = spec.thickness_range_nm
    if spec.channel == "random":
        ug = random_ug(geometry, rng, prior=spec.prior, ug_range=spec.ug_range).values
        t = float(rng.uniform(lo, hi))
    else:
        u0 = np.asarray(spec.ug0_real) + 1j * np.asarray(spec.ug0_imag)
        ug = deviate_ug(u0, spec.scale, rng)
        t = spec.thickness0_nm + float(
            rng.uniform(-spec.thickness_jitter_nm, spec.thickness_jitter_nm)
        )
        t = float(np.clip(t, lo, hi))
    return ug, t


def _simulate_chunk(geometry: Geometry, spec: _Spec, lo: int, hi: int) -> dict:
    """Simulate samples lo … hi-1 (a Dask task: plain arrays in and out)."""
    k = hi - lo
    m = geometry.n_reflections
    intensity = np.empty((k, geometry.n_tilts, geometry.n_beams))
    ugs = np.empty((k, m), dtype=complex)
    thick = np.empty(k)
    for j, i in enumerate(range(lo, hi)):
        ug, t = draw_sample(geometry, spec, i)
        # Hermitian normalisation is implicit: one value per Friedel pair, U_-g = U_g*.
        if spec.unique:
            ug = make_unique_ug_vector(ug, geometry, spec.targets_rad, reference=spec.reference)
        ds = simulate(geometry, ug, t)
        intensity[j] = ds["intensity"].values
        ugs[j] = ug
        thick[j] = t
    return {"lo": lo, "hi": hi, "intensity": intensity, "ug": ugs, "thickness_nm": thick}


# ----------------------------------------------------------------------------- assembly / IO
def _assemble(geometry: Geometry, spec: _Spec, parts: list[dict], attrs: dict) -> xr.Dataset:
    parts = sorted(parts, key=lambda p: p["lo"])
    intensity = np.concatenate([p["intensity"] for p in parts])
    ug = np.concatenate([p["ug"] for p in parts])
    thick = np.concatenate([p["thickness_nm"] for p in parts])
    xy = geometry.reflection_xy
    hkl = geometry.reflection_hkl
    coords = dict(pattern_coords(geometry))
    coords.update(
        {
            "sample": ("sample", np.arange(spec.n)),
            "target": ("target", np.arange(2 * geometry.n_reflections + 1)),
            "target_label": ("target", np.array(target_labels(geometry))),
            "reflection": ("reflection", np.arange(geometry.n_reflections)),
            "reflection_h": ("reflection", hkl[:, 0].copy()),
            "reflection_k": ("reflection", hkl[:, 1].copy()),
            "reflection_l": ("reflection", hkl[:, 2].copy()),
            "reflection_gx": ("reflection", xy[:, 0].copy(), {"units": "1/Å"}),
            "reflection_gy": ("reflection", xy[:, 1].copy(), {"units": "1/Å"}),
        }
    )
    ds = xr.Dataset(coords=coords)
    ds["intensity"] = (
        ("sample", "tilt", "beam"),
        intensity,
        {"units": "1", "long_name": "beam intensity (fraction of incident electrons)"},
    )
    ds["targets"] = (
        ("sample", "target"),
        make_targets(ug, thick),
        {"units": "1/Å^2 (U parts), 1000 Å (thickness)", "long_name": "[Re U, Im U, t/1000 Å]"},
    )
    ds["ug"] = (
        ("sample", "reflection"),
        ug,
        {"units": "1/Å^2", "long_name": "structure factor U_g"},
    )
    ds["thickness_nm"] = ("sample", thick, {"units": "nm", "long_name": "crystal thickness"})
    ds.attrs.update(geometry.to_attrs())
    ds.attrs.update(attrs)
    return ds


def save_dataset(ds: xr.Dataset, path: str | os.PathLike) -> None:
    """Write a data set to netCDF (complex ``ug`` split exactly; see :mod:`larbed.io`)."""
    from ..io import save_pattern

    if not isinstance(ds, xr.Dataset) or "targets" not in ds or "intensity" not in ds:
        raise ValueError("not a larbed learning data set (needs 'intensity' and 'targets')")
    save_pattern(ds, path)


def load_dataset(path: str | os.PathLike) -> xr.Dataset:
    """Read a data set written by :func:`save_dataset` / :func:`generate_dataset`."""
    from ..io import load_pattern

    ds = load_pattern(path)
    if "targets" not in ds:
        raise ValueError(
            f"{os.fspath(path)!r} is a pattern file, not a learning data set (no 'targets')"
        )
    return ds


# ----------------------------------------------------------------------------- main entry
def _as_seed_sequence(seed) -> np.random.SeedSequence:
    if isinstance(seed, np.random.SeedSequence):
        return seed
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise TypeError(f"seed must be a non-negative int or a numpy SeedSequence, got {seed!r}")
    return np.random.SeedSequence(int(seed))


def generate_dataset(
    geometry: Geometry,
    n: int,
    *,
    channel: Channel = "random",
    ug0=None,
    thickness0_nm: float | None = None,
    scale: float = 1.0,
    thickness_range_nm: Sequence[float] = (5.0, 100.0),
    thickness_jitter_nm: float = THICKNESS_JITTER_NM,
    prior: str = "uniform",
    ug_range: float = 0.2,
    unique: bool = True,
    reference=None,
    targets_rad: Sequence[float] = (0.0, 0.0),
    seed: int | np.random.SeedSequence = 0,
    client=None,
    scheduler: Scheduler = "synchronous",
    chunk_size: int = CHUNK_SIZE,
    progress: bool = True,
    path: str | os.PathLike | None = None,
) -> xr.Dataset:
    """Simulate a training data set of ``n`` LARBED patterns with their U_g and thickness.

    Parameters
    ----------
    geometry : Geometry
        Beams and tilts of every pattern.
    n : int
        Number of samples (> 0).
    channel : {'random', 'deviation'}
        ``'random'`` (RandomUg): U_g from ``prior`` and t uniform in ``thickness_range_nm``.
        ``'deviation'`` (Task 1): U = U0 + s·|U0|·(ε_r + iε_i), ε uniform in [-1, 1], and
        t = t0 + uniform(±``thickness_jitter_nm``), clipped to ``thickness_range_nm``.
    ug0 : xarray.DataArray or array_like, optional
        U0 [1/Å²] of the deviation channel (one per reflection of ``geometry``).
    thickness0_nm : float, optional
        t0 [nm] of the deviation channel.
    scale : float
        Deviation scale s (≥ 0).
    thickness_range_nm : (float, float)
        Thickness range [nm] (random channel: uniform draw; deviation: clip).
    thickness_jitter_nm : float
        Half-width of the thickness jitter of the deviation channel [nm].
    prior : {'uniform', 'physical'}
        Random channel prior (see :func:`larbed.random_ug`); ``'uniform'`` is the thesis's ±0.2.
    ug_range : float
        Half-width of the uniform prior [1/Å²].
    unique : bool
        Apply :func:`~larbed.learn.make_unique_ug_vector` to every sample (thesis: yes).
    reference : optional
        Reference reflections of make-unique, shared by all samples. Default: chosen by the rule of
        :mod:`larbed.origin` from ``ug0`` (deviation) or from the geometry crystal's ComputeUg.
    targets_rad : (float, float)
        Target phases of the two references [rad].
    seed : int or numpy.random.SeedSequence
        Sample i uses the child ``spawn_key=(i,)`` of this seed sequence.
    client : dask.distributed.Client, optional
        Run the chunks on this cluster; otherwise the local Dask scheduler ``scheduler``.
    scheduler : {'synchronous', 'threads', 'processes'}
        Local Dask scheduler. The Bloch kernel is already parallel over tilts, so ``'synchronous'``
        (the default) uses every core.
    chunk_size : int
        Samples per Dask task (results do not depend on it).
    progress : bool
        Show a progress bar (tqdm, on stderr).
    path : str or path-like, optional
        netCDF file to write. Finished chunks are checkpointed in ``<path>.chunks/`` as they
        complete; a rerun with the same arguments resumes from them. If ``path`` already holds the
        same data set it is loaded instead of recomputed.

    Returns
    -------
    xarray.Dataset
        ``intensity`` (sample, tilt, beam), ``targets`` (sample, target), ``ug`` (sample, reflection),
        ``thickness_nm`` (sample); attributes record geometry and generation settings.

    Examples
    --------
    >>> import larbed
    >>> x = larbed.Crystal.builtin("SrTiO3")
    >>> geo = larbed.Geometry(x, 120, (0, 0, 1), 5, 5, 70)
    >>> ds = generate_dataset(geo, 3, seed=1, progress=False)
    >>> dict(ds.intensity.sizes), ds.targets.sizes["target"]
    ({'sample': 3, 'tilt': 5, 'beam': 5}, 13)
    """
    _check_choices(geometry, n, channel, prior, chunk_size, client, scheduler)
    scale, jitter, t_range = _check_numbers(scale, thickness_jitter_nm, thickness_range_nm, ug_range)
    ss = _as_seed_sequence(seed)
    u0, t0, ref = _channel_origin(geometry, channel, ug0, thickness0_nm, reference)
    tgt = tuple(float(x) for x in targets_rad)
    if len(tgt) != 2 or not all(math.isfinite(x) for x in tgt):
        raise ValueError(f"targets_rad must be two finite phases [rad], got {targets_rad!r}")
    spec = _Spec(
        channel=channel,
        n=int(n),
        entropy=str(ss.entropy),
        spawn_key=tuple(int(k) for k in ss.spawn_key),
        scale=scale if channel == "deviation" else 0.0,
        thickness_range_nm=t_range,
        thickness_jitter_nm=jitter if channel == "deviation" else 0.0,
        thickness0_nm=t0,
        prior=prior if channel == "random" else "none",
        ug_range=float(ug_range) if channel == "random" else 0.0,
        ug0_real=tuple(float(x) for x in u0.real),
        ug0_imag=tuple(float(x) for x in u0.imag),
        unique=bool(unique),
        reference=(int(ref[0]), int(ref[1])),
        targets_rad=tgt,  # type: ignore[arg-type]
        geometry=json.dumps(geometry.to_attrs(), sort_keys=True, default=str),
    )
    if path is not None:
        path = os.fspath(path)
        finished = _load_finished(path, spec)
        if finished is not None:
            return finished
    bounds = [(lo, min(lo + int(chunk_size), n)) for lo in range(0, n, int(chunk_size))]
    folder = None
    parts: list[dict] = []
    todo = bounds
    if path is not None:
        folder = path + CHUNK_DIR_SUFFIX
        parts, todo = open_chunk_folder(folder, spec, bounds)
    simulate_chunks(_simulate_chunk, geometry, spec, todo, parts, folder, client, scheduler, progress)
    ds = _assemble(geometry, spec, parts, _dataset_attrs(geometry, spec))
    if path is not None:
        save_dataset(ds, path)
        shutil.rmtree(folder, ignore_errors=True)
    return ds


def _check_choices(geometry, n, channel, prior, chunk_size, client, scheduler) -> None:
    """Check the types and the named choices of :func:`generate_dataset`'s arguments."""
    if not isinstance(geometry, Geometry):
        raise TypeError(f"geometry must be a larbed.Geometry, got {type(geometry).__name__}")
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
        raise TypeError(f"n must be an integer number of samples, got {n!r}")
    if n <= 0:
        raise ValueError(f"n must be > 0 samples, got {n}")
    if channel not in CHANNELS:
        raise ValueError(f"unknown channel {channel!r}; choose one of {CHANNELS}")
    if prior not in RANDOM_PRIORS:
        raise ValueError(f"unknown prior {prior!r}; choose one of {RANDOM_PRIORS}")
    if (
        isinstance(chunk_size, bool)
        or not isinstance(chunk_size, (int, np.integer))
        or chunk_size <= 0
    ):
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    if client is None and scheduler not in SCHEDULERS:
        raise ValueError(f"unknown scheduler {scheduler!r}; choose one of {SCHEDULERS}")


def _check_numbers(
    scale, thickness_jitter_nm, thickness_range_nm, ug_range
) -> tuple[float, float, tuple[float, float]]:
    """Check the scalar settings; return (scale, thickness jitter [nm], thickness range [nm])."""
    scale = float(scale)
    if not math.isfinite(scale) or scale < 0:
        raise ValueError(f"scale must be finite and >= 0, got {scale}")
    jitter = float(thickness_jitter_nm)
    if not math.isfinite(jitter) or jitter < 0:
        raise ValueError(
            f"thickness_jitter_nm must be finite and >= 0 [nm], got {thickness_jitter_nm}"
        )
    t_range = check_thickness_range(thickness_range_nm)
    if not (math.isfinite(float(ug_range)) and float(ug_range) > 0):
        raise ValueError(f"ug_range must be positive [1/Å²], got {ug_range}")
    return scale, jitter, t_range


def _channel_origin(
    geometry: Geometry, channel: str, ug0, thickness0_nm, reference
) -> tuple[np.ndarray, float, tuple[int, int]]:
    """U0 (M,) complex, t0 [nm] and the make-unique references of a channel (checked)."""
    if channel == "deviation":
        if ug0 is None or thickness0_nm is None:
            raise ValueError("channel='deviation' needs ug0 (U_g [1/Å²]) and thickness0_nm [nm]")
        u0 = check_ug(geometry, ug0).values.astype(complex)
        t0 = float(thickness0_nm)
        if not math.isfinite(t0) or t0 <= 0:
            raise ValueError(
                f"thickness0_nm must be a positive thickness [nm], got {thickness0_nm}"
            )
        return u0, t0, resolve_reference(geometry, reference, u0)
    if ug0 is not None or thickness0_nm is not None:
        raise ValueError(
            "ug0/thickness0_nm are for channel='deviation'; the random channel draws both"
        )
    u0 = np.zeros(geometry.n_reflections, dtype=complex)
    return u0, 0.0, resolve_reference(geometry, reference)


def resolve_reference(geometry: Geometry, reference=None, ug=None) -> tuple[int, int]:
    """The make-unique reference reflections (indices along ``reflection``) of a data set.

    ``reference`` as :func:`~larbed.learn.make_unique_ug_vector` takes it, or ``None``: chosen by
    the rule of :mod:`larbed.origin` from ``ug`` (default: the geometry crystal's ComputeUg).
    """
    if reference is None:
        if ug is None:
            ug = compute_ug(geometry.crystal, geometry).values
        return choose_reference_reflections(ug, geometry)
    return make_unique_ug_vector(
        np.ones(geometry.n_reflections, complex),
        geometry,
        reference=reference,
        return_shift=True,
    )[2]


def _dataset_attrs(geometry: Geometry, spec: _Spec) -> dict:
    """The generation settings recorded in a data set's attributes."""
    return {
        "title": "larbed learning data set (simulated LARBED patterns with U_g and thickness)",
        "channel": spec.channel,
        "n_samples": spec.n,
        "seed_entropy": spec.entropy,
        "seed_spawn_key": list(spec.spawn_key),
        "deviation_scale": spec.scale,
        "thickness_range_nm": list(spec.thickness_range_nm),
        "thickness_jitter_nm": spec.thickness_jitter_nm,
        "thickness0_nm": spec.thickness0_nm,
        "prior": spec.prior,
        "ug_range": spec.ug_range,
        "unique": int(spec.unique),
        "unique_reference": [
            " ".join(map(str, geometry.reflection_hkl[i].tolist())) for i in spec.reference
        ],
        "unique_targets_rad": list(spec.targets_rad),
        "target_thickness_unit": "t [Å] / 1000",
        "spec_digest": spec.digest(),
    }


def _load_finished(path: str, spec: _Spec) -> xr.Dataset | None:
    """The data set already in ``path`` (None if there is none); refuse one of other settings."""
    if not os.path.exists(path):
        return None
    ds = load_dataset(path)
    if ds.attrs.get("spec_digest") != spec.digest():
        raise ValueError(
            f"{path!r} holds a different data set (other settings); remove it or choose another path"
        )
    logger.info("loaded finished data set from %s", path)
    return ds
