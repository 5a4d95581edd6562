"""Why the thesis-configuration networks do worse than the mean (issue 12): the measurements of
``docs/learning.rst`` ("Why the thesis configuration does worse than the mean").

Usage::

    python benchmarks/learn_diagnosis.py [--preset SrTiO3-1] [--scales 0.01 0.64 5.12]

For each scale: the Task 1 data set of seed 0 (140 samples, 100 for training), then the R of
the mean of the training targets, of ridge maps (standardised inputs, fixed λ/trace(K)·n), of
tanh stacks on standardised inputs and targets with a linear output (several epochs, learning
rates, log inputs) and of networks on PCA-whitened inputs. Plain Keras ``fit`` here, not the
package's Regressor: this is about what a network of that kind can learn, not about larbed's loop.
Takes ~15 min on 2 shared cores.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main(argv=None) -> int:
    import keras

    import larbed
    from larbed import presets
    from larbed.learn import generate_dataset, split_targets
    from larbed.learn._common import KEY_T1_DATA

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="SrTiO3-1")
    ap.add_argument("--scales", type=float, nargs="+", default=[0.01, 0.64, 5.12])
    args = ap.parse_args(argv)
    p = presets.load(args.preset)
    g, ug0, t0 = p.geometry, p.ug().values, p.thickness_nm
    i_exp = p.simulate()["intensity"].values
    x_exp = i_exp.T.reshape(1, -1)

    def r_of(y):
        u, t = split_targets(y, (5, 100))
        return larbed.r_factor(i_exp, larbed.simulate(g, u, float(t))["intensity"].values)

    for d in (0.5, 1.0, 2.5, 5.0):
        print(f"R(U_true, t_true + {d} nm) = {r_of(np.r_[ug0.real, ug0.imag, (t0 + d) / 100]):.4f}")

    def ridge(xtr, ytr, xe, lam_rel):
        mu, sd = xtr.mean(0), xtr.std(0)
        sd = np.maximum(sd, 1e-2 * sd.mean())
        z, ze, ym = (xtr - mu) / sd, (xe - mu) / sd, ytr.mean(0)
        k = z @ z.T
        a = np.linalg.solve(k + lam_rel * np.trace(k) / len(z) * np.eye(len(z)), ytr - ym)
        return ym + (ze @ z.T) @ a

    def net(xtr, ytr, xe, hidden, epochs, lr, log=False, whiten=False):
        keras.utils.set_random_seed(0)
        f = (lambda a: np.log(a + 1e-4)) if log else (lambda a: a)
        a = f(xtr)
        mu, sd = a.mean(0), a.std(0)
        sd = np.maximum(sd, 1e-2 * sd.mean())
        if whiten:
            _, s, vt = np.linalg.svd(a - mu, full_matrices=False)
            k = int(np.sum(s > 1e-6 * s[0]))
            proj = vt[:k].T / s[:k] * np.sqrt(len(a))
            tr = lambda b: ((f(b) - mu) @ proj).astype("f4")  # noqa: E731
        else:
            tr = lambda b: ((f(b) - mu) / sd).astype("f4")  # noqa: E731
        ym, ys = ytr.mean(0), ytr.std(0)
        ys = np.where(ys > 0, ys, 1.0)
        inp = keras.Input((tr(xtr[:1]).shape[1],))
        h = inp
        for u in hidden:
            h = keras.layers.Dense(u, activation="tanh")(h)
        m = keras.Model(inp, keras.layers.Dense(ytr.shape[1])(h))
        m.compile(keras.optimizers.Adam(lr), "mse")
        hist = m.fit(tr(xtr), ((ytr - ym) / ys).astype("f4"), batch_size=20, epochs=epochs, verbose=0)
        return m.predict(tr(xe), verbose=0)[0] * ys + ym, hist.history["loss"][-1]

    for s in args.scales:  # the same seed at every scale, as in the quoted runs
        ds = generate_dataset(g, 140, channel="deviation", ug0=ug0, thickness0_nm=t0, scale=s,
                              seed=np.random.SeedSequence(0, spawn_key=(KEY_T1_DATA, 0)),
                              progress=False)
        x = ds.intensity.values.transpose(0, 2, 1).reshape(140, -1)
        y = ds.targets.values
        xtr, ytr = x[:100], y[:100]
        v = ytr.var(0)
        print(f"s = {s:g}: target variance mean {v.mean():.3g}, thickness share {v[-1] / v.sum():.4f}; "
              f"R mean {r_of(ytr.mean(0)):.4f}", flush=True)
        for lam in (1e-6, 1e-3, 1e-1):
            yp = ridge(xtr, ytr, x_exp, lam)[0]
            print(f"  ridge λ_rel {lam:g}: R {r_of(yp):.5f}, t {yp[-1] * 100:.2f} nm", flush=True)
        for hid, ep, lr, log, wh in (
            ((512, 256), 30, 1e-3, False, False),
            ((512, 256), 150, 1e-3, False, False),
            ((512, 256), 150, 1e-3, True, False),
            ((512, 256), 300, 3e-4, False, False),
            ((), 300, 1e-2, False, True),
            ((256, 128), 300, 1e-3, False, True),
            ((1024, 512), 300, 1e-3, False, True),
        ):
            t = time.perf_counter()
            yp, loss = net(xtr, ytr, x_exp, hid, ep, lr, log, wh)
            print(f"  net {hid} epochs {ep} lr {lr:g} log {log} whitened {wh}: R {r_of(yp):.5f}, "
                  f"t {yp[-1] * 100:.2f} nm, train loss {loss:.2e} ({time.perf_counter() - t:.0f} s)",
                  flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
