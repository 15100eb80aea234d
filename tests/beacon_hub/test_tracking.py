"""The vectorised IMM equals filterpy's IMMEstimator step for step, and tracks what it should."""

import numpy as np
from filterpy.kalman import IMMEstimator, KalmanFilter

from beacon_hub.tracking import (
    MOVING,
    STILL,
    MotionParams,
    Tracks,
    mode_transition,
    process_noise,
    transition,
)

PARAMS = MotionParams()


def filterpy_imm(z0: np.ndarray, r0: np.ndarray, mu: np.ndarray, m: np.ndarray) -> IMMEstimator:
    filters = []
    for _ in (STILL, MOVING):
        kf = KalmanFilter(dim_x=4, dim_z=2)
        kf.x = np.array([[z0[0]], [0.0], [z0[1]], [0.0]])
        p = np.zeros((4, 4))
        p[np.ix_([0, 2], [0, 2])] = r0
        p[1, 1] = p[3, 3] = 1.0
        kf.P = p
        kf.H = np.array([[1.0, 0, 0, 0], [0, 0, 1.0, 0]])
        filters.append(kf)
    return IMMEstimator(filters, mu.copy(), m.copy())


def test_vectorised_imm_equals_filterpy_to_1e9() -> None:
    rng = np.random.default_rng(7)
    n = 12
    tracks = Tracks(PARAMS, capacity=4)  # grows while starting
    idx = np.arange(n)
    z0 = rng.uniform(0, 30, (n, 2))
    r0 = np.array([np.diag(rng.uniform(0.5, 4.0, 2)) for _ in range(n)])
    mu0 = np.tile([0.6, 0.4], (n, 1))
    m0 = mode_transition(1.0, PARAMS)
    tracks.ensure(n)
    tracks.start(idx, 0.0, z0, r0, mu=mu0, m=m0)
    reference = [filterpy_imm(z0[i], r0[i], mu0[i], m0) for i in range(n)]
    truth = z0.copy()
    velocity = rng.normal(0, 0.8, (n, 2)) * (rng.random((n, 1)) < 0.5)
    for _step in range(40):
        dt = rng.uniform(0.3, 2.0, n)
        truth += velocity * dt[:, None]
        a = rng.normal(0, 1, (n, 2, 2))
        r = a @ a.transpose(0, 2, 1) * 0.3 + np.eye(2) * 0.2
        z = truth + rng.normal(0, 1.0, (n, 2))
        m = np.array([mode_transition(float(d), PARAMS) for d in dt])
        tracks.predict(idx, dt)
        for i in range(n):
            imm = reference[i]
            for model, kf in enumerate(imm.filters):
                kf.F = transition(dt[i : i + 1], model)[0]
                kf.Q = process_noise(dt[i : i + 1], model, PARAMS)[0]
            imm.predict()
        # the Markov matrix varies with dt, so update one beacon at a time through the same code
        for i in range(n):
            tracks.update(idx[i : i + 1], z[i : i + 1], r[i : i + 1], m[i])
            imm = reference[i]
            imm.M = m[i]
            for kf in imm.filters:
                kf.R = r[i]
            imm.update(z[i].reshape(2, 1))
        x, p = tracks.estimate(idx)
        for i in range(n):
            imm = reference[i]
            np.testing.assert_allclose(x[i], imm.x.ravel(), rtol=0, atol=1e-9)
            np.testing.assert_allclose(p[i], imm.P, rtol=0, atol=1e-9)
            np.testing.assert_allclose(tracks.mu[i], imm.mu, rtol=0, atol=1e-9)
            for model, kf in enumerate(imm.filters):
                np.testing.assert_allclose(tracks.x[i, model], kf.x.ravel(), rtol=0, atol=1e-9)


def run(truth: np.ndarray, noise_m: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    tracks = Tracks(PARAMS, capacity=1)
    idx = np.array([0])
    r = np.eye(2)[None] * noise_m**2
    m = mode_transition(1.0, PARAMS)
    tracks.start(
        idx, 0.0, truth[:1] + rng.normal(0, noise_m, (1, 2)), r, mu=np.array([[0.5, 0.5]]), m=m
    )
    out, still = [], []
    for k in range(1, len(truth)):
        tracks.predict(idx, np.array([1.0]))
        tracks.update(idx, truth[k : k + 1] + rng.normal(0, noise_m, (1, 2)), r, m)
        out.append(tracks.estimate(idx)[0][0, [0, 2]])
        still.append(tracks.mu[0, STILL])
    return np.array(out), np.array(still)


def test_parked_beacon_converges_and_stays_still() -> None:
    truth = np.tile([[10.0, 5.0]], (120, 1))
    est, still = run(truth, noise_m=2.0, seed=1)
    late_error = np.linalg.norm(est[60:] - truth[61:], axis=1)
    assert np.median(late_error) < 0.5  # raw measurements are 2 m off: the filter averages
    assert np.median(still[60:]) > 0.85  # the still model explains a parked beacon


def test_walker_is_followed_without_lag() -> None:
    steps = np.arange(120.0)
    truth = np.c_[steps * 1.2, np.full(120, 3.0)]  # 1.2 m/s along x
    est, still = run(truth, noise_m=1.0, seed=2)
    error = est[20:] - truth[21:]
    assert abs(np.mean(error[:, 0])) < 0.3  # no systematic lag behind the walker
    assert np.median(still[20:]) < 0.2  # and the moving model a walker
