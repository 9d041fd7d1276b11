"""Gradient checkers shared by the tests: central differences and the dot-product test."""

import numpy as np

from spadc.ad.reverse import gradient
from spadc.ir.interpret import RunOptions, evaluate

FD_STEP = 1e-6  # central-difference step
FD_RTOL = 1e-6  # relative agreement of a gradient entry with its central difference
FD_ATOL = 1e-8
FD_COORDINATES = 24  # coordinates checked per param (all of them when the param is smaller)
DOT_RTOL = 1e-6
SEED = 20261121


def central_difference(loss, params: dict, name: str, index) -> float:
    plus = {k: v.copy() for k, v in params.items()}
    minus = {k: v.copy() for k, v in params.items()}
    plus[name][index] += FD_STEP
    minus[name][index] -= FD_STEP
    return (loss(plus) - loss(minus)) / (2 * FD_STEP)


def check_finite_differences(loss, params: dict, grads: dict, rng):
    """Compare the gradient with central differences of `loss` on sampled coordinates."""
    for name, value in params.items():
        indices = list(np.ndindex(value.shape)) or [()]
        if len(indices) > FD_COORDINATES:
            indices = [indices[i] for i in rng.choice(len(indices), FD_COORDINATES, replace=False)]
        for index in indices:
            numeric = central_difference(loss, params, name, index)
            analytic = grads[name][index]
            assert abs(analytic - numeric) <= FD_ATOL + FD_RTOL * max(abs(numeric), abs(analytic)), \
                f"{name}{list(index)}: gradient {analytic} but central difference {numeric}"


def check_dot_product(loss, params: dict, grads: dict, rng):
    """<t, grad> against the directional derivative of `loss` along a random tangent t."""
    tangent = {k: rng.standard_normal(v.shape) for k, v in params.items()}
    plus = {k: v + FD_STEP * tangent[k] for k, v in params.items()}
    minus = {k: v - FD_STEP * tangent[k] for k, v in params.items()}
    directional = (loss(plus) - loss(minus)) / (2 * FD_STEP)
    dot = sum(float(np.sum(tangent[k] * grads[k])) for k in params)
    assert abs(dot - directional) <= FD_ATOL + DOT_RTOL * max(abs(dot), abs(directional)), \
        f"<t, grad> = {dot} but the directional derivative is {directional}"


def interpreted_gradient(program, params: dict, inputs: dict, options=RunOptions()):
    """The loss and gradient from the interpreter running the gradient program."""
    result = evaluate(differentiated(program), params, inputs, options)
    return result.loss, result.outputs


_DIFFERENTIATED: dict[int, tuple] = {}  # id -> (program, its gradient program): tests ask sample by sample


def differentiated(program):
    """The gradient program of `program`, made once for the last few programs asked about (the
    entry keeps the program alive, so its id is not reused while it is there)."""
    hit = _DIFFERENTIATED.get(id(program))
    if hit is None:
        if len(_DIFFERENTIATED) >= 4:
            del _DIFFERENTIATED[next(iter(_DIFFERENTIATED))]
        hit = _DIFFERENTIATED[id(program)] = (program, gradient(program).program)
    return hit[1]
