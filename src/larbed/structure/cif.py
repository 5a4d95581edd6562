"""CIF output of a refined structure, with standard uncertainties in parentheses.

Values are written the crystallographic way, ``0.30512(7)``: the standard uncertainty (s.u.) with
two significant digits when they read 19 or less, else one, and the value rounded to the same
decimal place (the "rule of 19"). Parameters without an s.u. (fixed by symmetry or by the user,
or not determined by the pattern) are written plainly.
"""

from __future__ import annotations

import math
import os

import numpy as np

__all__ = ["format_su", "structure_cif"]

#: Significant digits of a value written without an s.u.
PLAIN_DIGITS = 8


def format_su(value: float, su: float | None) -> str:
    """``value(su)`` in CIF notation (see the module); a plain value when ``su`` is None, 0,
    NaN or infinite.

    Examples
    --------
    >>> format_su(0.305123, 0.000071), format_su(1.2345, 0.25), format_su(12.3, 1.4)
    ('0.30512(7)', '1.2(3)', '12.3(14)')
    """
    if su is None or not np.isfinite(su) or su <= 0:
        return f"{value:.{PLAIN_DIGITS}g}"
    exponent = math.floor(math.log10(su))
    digits = su / 10**exponent  # 1 ≤ digits < 10
    keep = 2 if round(digits * 10) <= 19 else 1
    decimals = -(exponent - keep + 1)
    su_int = math.floor(su * 10**decimals + 0.5)  # half up, as crystallographers round
    if su_int >= (100 if keep == 2 else 10):  # rounding carried a digit
        decimals -= 1
        su_int = math.floor(su * 10**decimals + 0.5)
    if decimals > 0:
        return f"{value:.{decimals}f}({su_int})"
    step = 10**(-decimals)
    return f"{round(value / step) * step:.0f}({su_int * step:.0f})"


def _quote(text: str) -> str:
    return f"'{text}'" if (" " in text or not text) else text


def structure_cif(path, *, crystal, sites: list[dict], labels: list[str], extra_items: dict,
                  ug_rows: list[tuple] | None = None) -> str:
    """Write a CIF file of a refined crystal and return its path.

    ``sites`` holds, per site of ``crystal.sites``, the values and s.u.s of
    :meth:`larbed.structure.model.SiteModel.site_values`; ``extra_items`` maps CIF data names to
    preformatted values (R factor, thickness, …); ``ug_rows`` are (h, k, l, Re, σ Re, Im, σ Im)
    of U_g [1/Å²] for a ``_larbed_ug`` loop.
    """
    from .. import __version__

    lines = [f"# written by larbed {__version__}: structure refined against a LARBED pattern",
             f"data_{''.join(c if c.isalnum() else '_' for c in crystal.name) or 'larbed'}"]
    for name, value in zip(("a", "b", "c"), crystal.cell[:3], strict=True):
        lines.append(f"_cell_length_{name} {value:.6g}")
    for name, value in zip(("alpha", "beta", "gamma"), crystal.cell[3:], strict=True):
        lines.append(f"_cell_angle_{name} {value:.6g}")
    lines.append(f"_cell_volume {crystal.volume:.4f}")
    group = crystal.space_group
    lines.append(f"_space_group_name_H-M_alt {_quote(group.name if group else 'P 1')}")
    lines.append(f"_space_group_IT_number {group.number if group else 1}")
    lines += ["loop_", "_space_group_symop_operation_xyz"]
    lines += [f"'{t}'" for t in (group.triplets if group else ("x,y,z",))]
    for name, value in extra_items.items():
        lines.append(f"{name} {value}")
    lines += ["loop_", "_atom_site_label", "_atom_site_type_symbol", "_atom_site_fract_x",
              "_atom_site_fract_y", "_atom_site_fract_z", "_atom_site_U_iso_or_equiv",
              "_atom_site_adp_type", "_atom_site_occupancy"]
    aniso = []
    for site, vals, label in zip(crystal.sites, sites, labels, strict=True):
        pos, pos_su = vals["position"], vals.get("position_su", [None] * 3)
        u_iso = vals["b_iso"] / (8 * math.pi**2)
        u_su = vals.get("b_iso_su")
        u_su = None if u_su is None else float(u_su) / (8 * math.pi**2)
        kind = "Uani" if vals["u_aniso"] is not None else "Uiso"
        lines.append(" ".join([label, site.symbol, *(format_su(float(p) % 1.0, s) for p, s in
                                                     zip(pos, pos_su, strict=True)),
                               format_su(u_iso, u_su), kind,
                               format_su(vals["occupancy"], vals.get("occupancy_su"))]))
        if kind == "Uani":
            aniso.append((label, vals["u_aniso"], vals.get("u_aniso_su", [None] * 6)))
    if aniso:
        lines += ["loop_", "_atom_site_aniso_label"]
        lines += [f"_atom_site_aniso_U_{n}" for n in ("11", "22", "33", "12", "13", "23")]
        for label, u6, su6 in aniso:
            lines.append(" ".join([label, *(format_su(float(u), s) for u, s in zip(u6, su6, strict=True))]))
    if ug_rows:
        lines += ["loop_", "_larbed_ug_index_h", "_larbed_ug_index_k", "_larbed_ug_index_l",
                  "_larbed_ug_real", "_larbed_ug_imag"]
        for h, k, l_, re, sre, im, sim in ug_rows:
            lines.append(f"{h} {k} {l_} {format_su(re, sre)} {format_su(im, sim)}")
    path = os.fspath(path)
    with open(path, "w", encoding="utf-8") as fh:
        fh.write("\n".join(lines) + "\n")
    return path
