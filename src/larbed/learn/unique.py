"""makeUniqueUgVector (thesis 3.1.2): fix the unit-cell origin of a U_g vector.

Intensities cannot see where the unit-cell origin is: U_g → U_g exp(2πi g·r0) changes no pattern.
A network that learns U_g from patterns therefore needs every training vector expressed with the
same origin. :func:`make_unique_ug_vector` moves the origin (in the plane of the zone axis) so that
two non-collinear reference reflections g1, g2 get prescribed phases.

Reference rule (deterministic, :func:`choose_reference_reflections`)
--------------------------------------------------------------------
1. Strength a_p = |U_p| (for a batch: the mean of |U_p| over the batch, so one pair serves every
   vector of a data set). Candidates are the "strong" reflections, a_p ≥ ``rel_threshold`` ·
   max a (default 0.1); near-zero reflections (forbidden or almost, whose phase is noise) never serve.
2. Among non-collinear candidate pairs take, in this order of preference,
   (a) the smallest lattice index n = |g1 × g2| / A0 (A0 the smallest non-zero |g × g'| of all the
   reflections, i.e. the area of the primitive 2-D reciprocal cell); n = 1 makes the result unique,
   (b) the lowest order: the smaller max(|g1|, |g2|) shell,
   (c) the stronger pair: larger min(a1, a2),
   (d) the smaller reflection indices.

For SrTiO3 [001] (U_100 ≈ 0.0006 is below 10 % of U_200) this picks 110 and 1-10 (n = 2).

Ambiguities (documented, not hidden)
------------------------------------
* Phases are defined modulo 2π, so r0 is defined only modulo the direct-lattice vectors dual to g1
  and g2. When g1, g2 are a primitive basis of the zone's reciprocal lattice (n = 1) those are lattice
  translations and every U_g comes out the same: the vector is unique. With n > 1 there remain n
  origins (shifts by fractions of a lattice vector) that all give g1, g2 their target phases; the
  reflections outside the sublattice spanned by g1, g2 can then differ in sign/phase between two
  equivalent input vectors.
* A reference whose |U| is exactly zero in one vector has no phase; it is treated as phase 0.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import xarray as xr

from ..geometry import Geometry

__all__ = ["choose_reference_reflections", "make_unique_ug_vector", "REFERENCE_REL_THRESHOLD"]

logger = logging.getLogger(__name__)

#: Reflections weaker than this fraction of the strongest |U_g| never serve as references (their
#: phase is ill-defined or noise-dominated).
REFERENCE_REL_THRESHOLD = 0.1
#: |U_g| at or below this [1/Å²] counts as zero whatever the threshold.
ZERO_UG = 1e-12
#: Two reflections are collinear when |g1 × g2| is below this fraction of |g1||g2|.
_COLLINEAR_RTOL = 1e-6
_SHELL_DECIMALS = 6


def _reflection_table(ug, geometry: Geometry | None):
    """(values (..., M) complex, gxy (M, 2) [1/Å], hkl (M, 3) or None, is_dataarray)."""
    if isinstance(ug, xr.DataArray):
        if "reflection" not in ug.dims:
            raise ValueError(f"U_g DataArray needs a 'reflection' dimension, got dims {ug.dims}")
        da = ug.transpose(..., "reflection")
        values = np.asarray(da.values)
        names = {"gx": None, "gy": None, "h": None, "k": None, "l": None}
        for key in names:
            for cand in (key, f"reflection_{key}"):
                if cand in da.coords and da.coords[cand].dims == ("reflection",):
                    names[key] = np.asarray(da.coords[cand].values)
                    break
        hkl = None
        if names["h"] is not None and names["k"] is not None and names["l"] is not None:
            hkl = np.stack([names["h"], names["k"], names["l"]], axis=1).astype(int)
        if geometry is not None:
            _check_geometry(geometry, values.shape[-1], hkl)
            gxy = np.asarray(geometry.reflection_xy, dtype=float)
            hkl = np.asarray(geometry.reflection_hkl)
        elif names["gx"] is not None and names["gy"] is not None:
            gxy = np.stack([names["gx"], names["gy"]], axis=1).astype(float)
        else:
            raise ValueError(
                "U_g DataArray has no gx/gy coordinates; pass geometry= so the reflections are known"
            )
        return values, gxy, hkl, True
    if geometry is None:
        raise ValueError("a plain U_g array needs geometry= (which reflection is which)")
    if not isinstance(geometry, Geometry):
        raise TypeError(f"geometry must be a larbed.Geometry, got {type(geometry).__name__}")
    values = np.asarray(ug)
    if values.dtype.kind not in "fciu":
        raise TypeError(f"U_g must be numeric, got dtype {values.dtype}")
    if values.ndim == 0:
        raise ValueError("U_g must be an array (..., n_reflections), got a scalar")
    _check_geometry(geometry, values.shape[-1], None)
    return (
        values,
        np.asarray(geometry.reflection_xy, float),
        np.asarray(geometry.reflection_hkl),
        False,
    )


def _check_geometry(geometry: Geometry, n: int, hkl: np.ndarray | None) -> None:
    if not isinstance(geometry, Geometry):
        raise TypeError(f"geometry must be a larbed.Geometry, got {type(geometry).__name__}")
    if n != geometry.n_reflections:
        raise ValueError(
            f"U_g has {n} reflections but the geometry has {geometry.n_reflections} "
            "(one per Friedel pair); wrong geometry?"
        )
    if hkl is not None and not np.array_equal(hkl, geometry.reflection_hkl):
        raise ValueError("U_g reflections (h, k, l) do not match the geometry's reflections")


def _cross(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return a[..., 0] * b[..., 1] - a[..., 1] * b[..., 0]


def _choose(strength: np.ndarray, gxy: np.ndarray, rel_threshold: float) -> tuple[int, int]:
    m = len(strength)
    if m < 2:
        raise ValueError("makeUniqueUgVector needs at least two reflections")
    top = float(np.max(strength))
    glen = np.linalg.norm(gxy, axis=1)
    if top <= ZERO_UG:
        cand = np.arange(m)  # all zero: any pair is as good as another (the rule stays geometric)
    else:
        cand = np.flatnonzero(strength >= max(rel_threshold * top, ZERO_UG))
    # primitive-cell area of the reflections' 2-D lattice
    cr_all = np.abs(_cross(gxy[:, None, :], gxy[None, :, :]))
    scale = np.outer(glen, glen)
    nonzero = cr_all > _COLLINEAR_RTOL * np.maximum(scale, 1e-300)
    if not np.any(nonzero):
        raise ValueError(
            "all reflections are collinear: no two non-collinear reference reflections"
        )
    area0 = float(cr_all[nonzero].min())
    shell = np.unique(np.round(glen, _SHELL_DECIMALS), return_inverse=True)[1].reshape(-1)
    p, q = np.meshgrid(cand, cand, indexing="ij")
    p, q = p.ravel(), q.ravel()
    keep = (p < q) & nonzero[p, q]
    if not np.any(keep):
        # the strong reflections are all collinear: fall back to every non-zero one
        weak = np.flatnonzero(strength > ZERO_UG) if top > ZERO_UG else np.arange(m)
        p, q = np.meshgrid(weak, weak, indexing="ij")
        p, q = p.ravel(), q.ravel()
        keep = (p < q) & nonzero[p, q]
        if not np.any(keep):
            raise ValueError(
                "no two non-collinear reflections with non-zero U_g: the origin cannot be fixed"
            )
        logger.warning("strong reflections are collinear; using weaker reference reflections")
    p, q = p[keep], q[keep]
    index = np.round(cr_all[p, q] / area0).astype(int)
    order_key = np.maximum(shell[p], shell[q])
    weakest = np.minimum(strength[p], strength[q])
    best = np.lexsort((q, p, -weakest, order_key, index))[0]
    return int(p[best]), int(q[best])


def choose_reference_reflections(
    ug, geometry: Geometry | None = None, *, rel_threshold: float = REFERENCE_REL_THRESHOLD
) -> tuple[int, int]:
    """The two reference reflections of :func:`make_unique_ug_vector` (rule in the module docs).

    Parameters
    ----------
    ug : xarray.DataArray or array_like
        U_g over ``reflection`` [1/Å²], one vector or a batch (..., n_reflections); a batch is
        judged by its mean |U_g|.
    geometry : Geometry, optional
        Needed for plain arrays or DataArrays without gx/gy coordinates.
    rel_threshold : float
        Candidates have |U_g| ≥ rel_threshold · max |U_g|.

    Returns
    -------
    (int, int)
        Reflection indices (positions along ``reflection``) of g1 and g2.

    Examples
    --------
    >>> import larbed
    >>> x = larbed.Crystal.builtin("SrTiO3")
    >>> geo = larbed.Geometry(x, 120, (0, 0, 1), 13, 1, 70)
    >>> p, q = choose_reference_reflections(larbed.compute_ug(x, geo))
    >>> geo.reflection_hkl[[p, q]].tolist()
    [[1, 1, 0], [1, -1, 0]]
    """
    if not (0.0 <= float(rel_threshold) < 1.0):
        raise ValueError(f"rel_threshold must be in [0, 1), got {rel_threshold}")
    values, gxy, _, _ = _reflection_table(ug, geometry)
    strength = np.abs(values).reshape(-1, values.shape[-1]).mean(axis=0)
    return _choose(strength, gxy, float(rel_threshold))


def _resolve_reference(reference, values, gxy, hkl, geometry, rel_threshold) -> tuple[int, int]:
    m = values.shape[-1]
    if reference is None:
        strength = np.abs(values).reshape(-1, m).mean(axis=0)
        return _choose(strength, gxy, rel_threshold)
    if isinstance(reference, xr.DataArray) or (
        isinstance(reference, np.ndarray)
        and reference.ndim >= 1
        and reference.shape[-1] == m
        and reference.dtype.kind in "fc"
    ):
        ref_vals, ref_gxy, _, _ = _reflection_table(reference, geometry)
        if ref_vals.shape[-1] != m or not np.allclose(ref_gxy, gxy):
            raise ValueError("reference U_g does not have the same reflections as ug")
        strength = np.abs(ref_vals).reshape(-1, m).mean(axis=0)
        return _choose(strength, gxy, rel_threshold)
    if isinstance(reference, (str, bytes)) or not isinstance(reference, (Sequence, np.ndarray)):
        raise TypeError(
            "reference must be None, a U_g vector, two reflection indices or two (h, k, l); "
            f"got {reference!r}"
        )
    if len(reference) != 2:
        raise ValueError(f"reference needs exactly two reflections, got {len(reference)}")
    idx = []
    for item in reference:
        if np.ndim(item) == 0:
            i = int(item)
            if not -m <= i < m:
                raise ValueError(f"reference index {i} out of range for {m} reflections")
            idx.append(i % m)
        else:
            key = np.asarray(item, dtype=int).reshape(-1)
            if key.shape != (3,) or hkl is None:
                raise ValueError(
                    f"reference reflection must be an index or (h, k, l), got {item!r}"
                )
            hit = np.flatnonzero(np.all(hkl == key, axis=1))
            hit_neg = np.flatnonzero(np.all(hkl == -key, axis=1))
            if hit.size:
                idx.append(int(hit[0]))
            elif hit_neg.size:
                idx.append(int(hit_neg[0]))
            else:
                raise ValueError(
                    f"reflection {tuple(key.tolist())} is not among the U_g reflections"
                )
    p, q = idx
    if abs(_cross(gxy[p], gxy[q])) <= _COLLINEAR_RTOL * np.linalg.norm(gxy[p]) * np.linalg.norm(
        gxy[q]
    ):
        raise ValueError(
            f"reference reflections {p} and {q} are collinear; they cannot fix an origin"
        )
    return p, q


def make_unique_ug_vector(
    ug,
    geometry: Geometry | None = None,
    targets: Sequence[float] = (0.0, 0.0),
    reference=None,
    *,
    rel_threshold: float = REFERENCE_REL_THRESHOLD,
    return_shift: bool = False,
):
    """Shift the unit-cell origin so that two reference reflections have given phases.

    Solves the 2×2 system 2π g_i·r0 = φ_target,i − φ_i (i = 1, 2; in-plane g = (gx, gy) [1/Å],
    Δφ wrapped to (−π, π]) for the in-plane shift r0 [Å] and applies U_g ← U_g exp(2πi g·r0) to every
    reflection. No intensity changes (an origin shift is invisible in intensities). Hermitian symmetry is implicit: one value per Friedel
    pair, U_{-g} = U_g* follows for the whole vector.

    Parameters
    ----------
    ug : xarray.DataArray or array_like
        U_g [1/Å²] over ``reflection`` (last axis for arrays); a 1-D vector or a batch, e.g.
        (sample, reflection). Each vector gets its own shift; all share the reference pair.
    geometry : Geometry, optional
        Required for plain arrays and DataArrays without gx/gy coordinates; when given it must match.
    targets : (float, float)
        Target phases φ_target of g1 and g2 [rad]; default (0, 0) as in the thesis.
    reference : optional
        ``None``: choose g1, g2 from ``ug`` by the rule in the module docs (for a batch, from its mean
        |U_g|). A U_g vector/batch: apply the rule to it (use e.g. the crystal's ComputeUg so a whole
        data set shares one pair). Two reflection indices or two (h, k, l) (a key may be -g): use them.
    rel_threshold : float
        Strength threshold of the rule (fraction of max |U_g|).
    return_shift : bool
        Also return r0 [Å] with shape (..., 2) (in-plane x, y) and the reference indices.

    Returns
    -------
    same type as ``ug``
        The shifted U_g (a DataArray keeps its coordinates; attrs ``unique_reference`` and
        ``unique_targets_rad`` record the choice). With ``return_shift``: ``(ug, r0, (p, q))``.

    Examples
    --------
    >>> import numpy as np, larbed
    >>> x = larbed.Crystal.builtin("ZnO")
    >>> geo = larbed.Geometry(x, 100, (0, 0, 1), 7, 1, 30)
    >>> ug = larbed.compute_ug(x, geo)
    >>> shifted = larbed.shift_origin(geo, ug, (0.4, -0.7))
    >>> back = make_unique_ug_vector(shifted)
    >>> bool(np.allclose(back.values, make_unique_ug_vector(ug).values, atol=1e-15))
    True
    """
    values, gxy, hkl, is_da = _reflection_table(ug, geometry)
    tgt = np.asarray(targets, dtype=float)
    if tgt.shape != (2,) or not np.all(np.isfinite(tgt)):
        raise ValueError(f"targets must be two finite phases [rad], got {targets!r}")
    if not (0.0 <= float(rel_threshold) < 1.0):
        raise ValueError(f"rel_threshold must be in [0, 1), got {rel_threshold}")
    if not np.all(np.isfinite(values)):
        raise ValueError("U_g contains NaN or infinite values")
    p, q = _resolve_reference(reference, values, gxy, hkl, geometry, float(rel_threshold))
    vals = values.astype(complex)
    refs = vals[..., [p, q]]
    delta = np.angle(np.exp(1j * tgt) * np.conj(refs))  # φ_target − φ, wrapped to (−π, π]
    gmat = 2.0 * np.pi * gxy[[p, q]]  # rows: 2π g_1, 2π g_2
    r0 = (
        np.linalg.solve(gmat, delta[..., :, None])[..., 0]
        if delta.ndim > 1
        else np.linalg.solve(gmat, delta)
    )
    phase = np.exp(2j * np.pi * (r0 @ gxy.T))
    out = vals * phase
    # the references themselves: set exactly |U| exp(iφ_target) (removes round-off in the phase)
    out[..., p] = np.abs(vals[..., p]) * np.exp(1j * tgt[0])
    out[..., q] = np.abs(vals[..., q]) * np.exp(1j * tgt[1])
    if is_da:
        da = ug.transpose(..., "reflection")
        result = da.copy(data=out)
        result = result.transpose(*ug.dims)
        labels = (
            [" ".join(str(int(v)) for v in hkl[i]) for i in (p, q)]
            if hkl is not None
            else [str(p), str(q)]
        )
        result.attrs["unique_reference"] = labels
        result.attrs["unique_targets_rad"] = [float(tgt[0]), float(tgt[1])]
    else:
        result = out
    if return_shift:
        return result, r0, (p, q)
    return result
