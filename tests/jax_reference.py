"""The IR run by JAX: an oracle for spadc's derivatives whose derivative rules are JAX's own.

`function(program)` is `f(params, inputs) -> (loss, outputs)` for one sample, evaluated by JAX
eagerly op by op (a loop whose body is the same at every trip as one `lax.scan`), so that
`jax.vjp`, `jax.jacrev` and `jax.jacfwd` differentiate a model without any of spadc's adjoint or
tangent rules. `check_derivatives` compares a compiled model's with them. Only the forward semantics are spadc's: they follow
spadc/ir/interpret.py (the NumPy reference interpreter), and tests compare the values too.

Invariants:
- Float (f64) values are JAX arrays; integer and bool values are NumPy arrays, computed by the
  primitive's NumPy rule (spadc/ir/primitives.py) from concrete values: they have no derivative,
  and so neither does any float value computed from them alone (a constant, a dropout mask, a
  float of an integer), which the NumPy rule computes too.
- Every other float op (one with a float operand) has a rule in `RULES`, written with JAX; a
  program using an op without one fails loudly (`KeyError` naming it), never falls back.
- Ties and choices follow spadc's stated semantics, derivatives included: `max`, `min` and the
  max and min reductions give the derivative to the first maximal (minimal) operand, not shared
  as JAX's own would; a pooling window's choice is spadc's (from the concrete values).
- `cond` and loops run as Python control flow on concrete values: JAX differentiates the path taken.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy import special as jax_special

from spadc.ir import conv, interpret, primitives
from spadc.ir.core import flat_iteration
from spadc.ir.primitives import NUMPY_DTYPES
from spadc.ir.structure import index_key, permutation


def _first_extremum(x, axis, pick):
    """The max (pick=jnp.argmax) or min of x along axis (None: all) at its first extremal entry, so
    that the derivative goes there alone (NaN first, as NumPy's argmax)."""
    flat = x.reshape(-1) if axis is None else jnp.moveaxis(x, axis, -1)
    position = pick(flat, axis=-1)
    return jnp.take_along_axis(flat, jnp.expand_dims(position, -1), axis=-1)[..., 0]


def _index(args, attrs):
    x, *indices = args
    return x[index_key(attrs["spec"], indices, x.shape, attrs.get("what", "index"))]


def _index_update(add):
    def rule(args, attrs):
        acc, value, *indices = args
        key = index_key(attrs["spec"], indices, acc.shape, attrs.get("what", "index"))
        acc = jnp.asarray(acc, dtype=jnp.float64)
        return acc.at[key].add(value) if add else acc.at[key].set(value)
    return rule


def _conv(args, attrs):
    x, w = args  # (spadc's conv is a correlation over one sample's channels, as XLA's)
    return jax.lax.conv_general_dilated(
        jnp.asarray(x)[None], w, window_strides=tuple(attrs["stride"]), padding=[(p, p) for p in attrs["padding"]],
        rhs_dilation=tuple(attrs["dilation"]), feature_group_count=attrs["groups"],
        precision=jax.lax.Precision.HIGHEST)[0]


def _pool_select(args, attrs):
    x, v = args  # the choice is spadc's, piecewise constant in x: x has no derivative
    choice, _ = conv.pool_choices(_concrete(x), attrs)
    padding = conv.pool_window(attrs).padding
    padded = jnp.pad(v, [(0, 0)] + [(p, p) for p in padding]).reshape(v.shape[0], -1)
    return jnp.take_along_axis(padded, jnp.asarray(choice.reshape(v.shape[0], -1)), axis=1).reshape(choice.shape)


def _solve(args, attrs):
    a, b = args
    n = a.shape[0]
    return jnp.linalg.solve(a, b.reshape(n, -1)).reshape(b.shape)


def _cholesky(args, attrs):
    (s,) = args  # spadc's reads the lower triangle alone: the symmetric matrix it stands for
    lower = jnp.tril(s)
    return jnp.linalg.cholesky(lower + jnp.tril(s, -1).T, symmetrize_input=False)


def _trisolve(args, attrs):
    lower, b = args
    n = lower.shape[0]
    x = jax.scipy.linalg.solve_triangular(jnp.tril(lower), b.reshape(n, -1), lower=True,
                                          trans=1 if attrs["transpose"] else 0)
    return x.reshape(b.shape)


def _cumsum(args, attrs):
    x, axis = args[0], attrs["axis"]
    if attrs.get("reverse"):
        return jnp.flip(jnp.cumsum(jnp.flip(x, axis), axis=axis), axis)
    return jnp.cumsum(x, axis=axis)


RULES = {
    # one operand
    "abs": lambda a, t: a[0] * jnp.sign(a[0]),  # (its derivative spadc's: sign(x), 0 at 0)
    "sign": lambda a, t: jnp.sign(a[0]),
    "exp": lambda a, t: jnp.exp(a[0]), "log": lambda a, t: jnp.log(a[0]), "log1p": lambda a, t: jnp.log1p(a[0]),
    "expm1": lambda a, t: jnp.expm1(a[0]), "sqrt": lambda a, t: jnp.sqrt(a[0]), "sin": lambda a, t: jnp.sin(a[0]),
    "cos": lambda a, t: jnp.cos(a[0]), "tan": lambda a, t: jnp.tan(a[0]), "tanh": lambda a, t: jnp.tanh(a[0]),
    "sigmoid": lambda a, t: jax.nn.sigmoid(a[0]), "relu": lambda a, t: jnp.where((a[0] > 0) | (a[0] != a[0]), a[0], 0.0),
    "softplus": lambda a, t: jnp.logaddexp(0.0, a[0]), "floor": lambda a, t: jnp.floor(a[0]),
    "round": lambda a, t: jnp.round(a[0]), "sinh": lambda a, t: jnp.sinh(a[0]), "cosh": lambda a, t: jnp.cosh(a[0]),
    "asin": lambda a, t: jnp.arcsin(a[0]), "acos": lambda a, t: jnp.arccos(a[0]), "atan": lambda a, t: jnp.arctan(a[0]),
    "lgamma": lambda a, t: jax.lax.lgamma(a[0]), "erf": lambda a, t: jax_special.erf(a[0]),
    "polygamma": lambda a, t: jax_special.polygamma(t["n"], a[0]), "neg": lambda a, t: -a[0],
    "stop_gradient": lambda a, t: jax.lax.stop_gradient(a[0]),
    # two operands
    "add": lambda a, t: a[0] + a[1], "sub": lambda a, t: a[0] - a[1], "mul": lambda a, t: a[0] * a[1],
    "div": lambda a, t: a[0] / a[1], "floordiv": lambda a, t: jnp.floor_divide(a[0], a[1]),
    "mod": lambda a, t: jnp.mod(a[0], a[1]), "pow": lambda a, t: jnp.power(a[0], a[1]),
    "atan2": lambda a, t: jnp.arctan2(a[0], a[1]),
    "max": lambda a, t: jnp.where((a[0] >= a[1]) | (a[0] != a[0]), a[0], a[1]),
    "min": lambda a, t: jnp.where((a[0] <= a[1]) | (a[0] != a[0]), a[0], a[1]),
    "select": lambda a, t: jnp.where(a[0], a[1], a[2]),
    # reductions
    "reduce_sum": lambda a, t: jnp.sum(a[0], axis=t["axis"]), "reduce_prod": lambda a, t: jnp.prod(a[0], axis=t["axis"]),
    "reduce_max": lambda a, t: _first_extremum(a[0], t["axis"], jnp.argmax),
    "reduce_min": lambda a, t: _first_extremum(a[0], t["axis"], jnp.argmin),
    # linear algebra
    "solve": _solve, "cholesky": _cholesky, "trisolve": _trisolve,
    "triangle": lambda a, t: (jnp.triu if t["upper"] else jnp.tril)(a[0], t["k"]),
    # structure
    "matmul": lambda a, t: jnp.matmul(a[0], a[1]), "outer": lambda a, t: jnp.outer(a[0], a[1]),
    "outer_add": lambda a, t: a[0] + jnp.outer(a[1], a[2]), "cumsum": _cumsum,
    "transpose": lambda a, t: jnp.transpose(a[0], permutation(a[0].ndim, t)),
    "reshape": lambda a, t: jnp.reshape(a[0], t["shape"]), "broadcast": lambda a, t: jnp.broadcast_to(a[0], t["shape"]),
    "concat": lambda a, t: jnp.concatenate([jnp.asarray(x, jnp.float64) for x in a], axis=t["axis"]),
    "stack": lambda a, t: jnp.stack([jnp.asarray(x, jnp.float64) for x in a]),
    "index": _index, "index_set": _index_update(add=False), "index_add": _index_update(add=True),
    # convolution
    "conv": _conv, "pool_select": _pool_select,
}


def function(program, options: interpret.RunOptions = interpret.RunOptions()):
    """`f(params, inputs) -> (loss, outputs by name)` of one sample (see the module's docstring)."""
    def f(params: dict, inputs: dict):
        env = {}
        for decl in program.params:
            env[decl.value] = jnp.asarray(params[decl.name], dtype=jnp.float64)
        for decl in program.inputs:
            value = inputs[decl.name]
            env[decl.value] = (jnp.asarray(value, dtype=jnp.float64) if decl.value.type.dtype == "f64"
                               else np.asarray(value, dtype=NUMPY_DTYPES[decl.value.type.dtype]))
        _Evaluator(options).run_block(program.body, env, 0)
        return env[program.loss], {name: env[v] for name, v in program.outputs.items()}
    return f


# The primitives without a rule above, and why: their results are never floats computed from floats
# (the NumPy rule computes them), or they exist only in derivative programs, never in a model's.
WITHOUT_JAX_RULE = {
    **dict.fromkeys(["lt", "le", "gt", "ge", "eq", "ne", "and", "or", "not", "argmax", "to_int", "first_true",
                     "fail_if", "pack_bits", "unpack_bits"], "no float result from floats"),
    **dict.fromkeys(["to_float", "const", "eye", "onehot", "dropout_mask"], "a float of no float: a constant"),
    **dict.fromkeys(["outer_add_at", "conv_input_grad", "conv_weight_grad", "pool_scatter", "record", "field",
                     "gate_pack", "gate_unpack", "gate_outer_add", "gate_conv_weight_grad", "gate_mask",
                     "score_add"], "made by differentiation only"),
}


def _concrete(value) -> np.ndarray:
    return np.asarray(jax.lax.stop_gradient(value)) if isinstance(value, jax.Array) else np.asarray(value)


def _stacked(values, result_type):
    if result_type.dtype == "f64":
        return jnp.stack(values) if values else jnp.zeros(result_type.shape)
    return np.stack(values) if values else np.zeros(result_type.shape, NUMPY_DTYPES[result_type.dtype])


def _walk(block):
    for op in block.ops:
        yield op
        for region in op.regions:
            yield from _walk(region)


def _free_values(body) -> list:
    """The values a loop body reads from outside it, in a fixed order."""
    defined = set(body.params)
    for op in _walk(body):
        defined.update(op.results)
        for region in op.regions:
            defined.update(region.params)
    used = [a for op in _walk(body) for a in op.args]
    used += [y for op in _walk(body) for region in op.regions for y in region.yields] + list(body.yields)
    return list(dict.fromkeys(v for v in used if v not in defined))


class _Evaluator:
    """One evaluation, with its options.

    A loop whose body reads neither its counter nor a random stream (the same function at every
    trip) and whose values are floats is one `jax.lax.scan`: its body traced once (the values from
    outside it closed over, concrete integers and bools staying concrete), so a simulation of many
    steps costs one trace and JAX's own reverse sweep of a scan, not a dispatch per op and step. A
    body that needs a concrete value of a float (a cond, a pooling choice) cannot be traced: it
    runs op by op, as every other loop."""

    def __init__(self, options):
        self.options = options
        self.unscannable = {}  # loop op -> True: its body needs concrete values of floats

    def run_block(self, block, env, iteration):
        for op in block.ops:
            if op.kind == "loop":
                self.loop(op, env, iteration)
            elif op.kind == "tabulate":
                self.tabulate(op, env, iteration)
            elif op.kind == "cond":
                region = op.regions[0] if bool(_concrete(env[op.args[0]])) else op.regions[1]
                self.run_block(region, env, iteration)
                for result, value in zip(op.results, region.yields):
                    env[result] = env[value]
            else:
                env[op.result] = self.op(op, [env[a] for a in op.args], iteration)

    def op(self, op, args, iteration):
        if op.result.type.dtype != "f64" or not any(isinstance(a, jax.Array) for a in args):
            # No derivative: the NumPy rule on concrete values.
            with np.errstate(all="ignore"):
                return interpret._primitive(op, [_concrete(a) for a in args], iteration, self.options)
        rule = RULES[op.kind]  # (a KeyError names an op without a JAX rule: never a silent fallback)
        return jnp.asarray(rule(args, op.attrs), dtype=jnp.float64)

    def loop(self, op, env, iteration):
        (body,) = op.regions
        n = len(op.args)
        lo, hi = op.attrs["lo"], op.attrs["hi"]
        carried = [env[a] for a in op.args]
        scanned = self._scanned(op, env, carried)
        if scanned is not None:
            carried, stacks = scanned
        else:
            kept = [[None] * (hi - lo) for _ in op.results[n:]]
            for t in (range(hi - 1, lo - 1, -1) if op.attrs.get("reverse") else range(lo, hi)):
                env[body.params[0]] = np.int64(t)
                for param, value in zip(body.params[1:], carried):
                    env[param] = value
                multiplier, stride, offset = flat_iteration(op)
                self.run_block(body, env, iteration * multiplier + offset + (t - lo) * stride)
                carried = [env[y] for y in body.yields[:n]]
                for stack, value in zip(kept, body.yields[n:]):
                    stack[t - lo] = env[value]
            stacks = [_stacked(values, result.type) for values, result in zip(kept, op.results[n:])]
        for result, value in zip(op.results, carried + stacks):
            env[result] = value

    def _scanned(self, op, env, carried):
        """(carried values, kept stacks) of the loop by `jax.lax.scan`, or None where its body must
        run op by op (see the class's docstring)."""
        (body,) = op.regions
        n = len(op.args)
        counter = body.params[0]
        if op.attrs["hi"] - op.attrs["lo"] < 2 or any(v.type.dtype != "f64" for v in (*body.params[1:], *op.results)):
            return None
        ops = list(_walk(body))
        if any(counter in o.args for o in ops) or counter in body.yields or any(
                o.kind in primitives.PRIMITIVES and primitives.PRIMITIVES[o.kind].family in ("random", "effect")
                for o in ops):
            return None
        if self.unscannable.get(op):
            return None
        outside = {v: env[v] for v in _free_values(body)}

        def trip(state, _):
            local = dict(outside)
            local.update(zip(body.params[1:], state))
            self.run_block(body, local, 0)
            yields = [jnp.asarray(local[y], jnp.float64) for y in body.yields]
            return yields[:n], yields[n:]
        try:
            final, stacks = jax.lax.scan(trip, [jnp.asarray(c, jnp.float64) for c in carried], None,
                                         length=op.attrs["hi"] - op.attrs["lo"], reverse=bool(op.attrs.get("reverse")))
        except (jax.errors.ConcretizationTypeError, jax.errors.TracerArrayConversionError,
                jax.errors.TracerBoolConversionError, jax.errors.TracerIntegerConversionError):
            self.unscannable[op] = True
            return None
        return list(final), list(stacks)

    def tabulate(self, op, env, iteration):
        (body,) = op.regions
        lo, hi = op.attrs["lo"], op.attrs["hi"]
        stacks = [[] for _ in op.results]
        for i in range(lo, hi):
            env[body.params[0]] = np.int64(i)
            self.run_block(body, env, iteration * (hi - lo) + (i - lo))
            for stack, value in zip(stacks, body.yields):
                stack.append(env[value])
        for result, values in zip(op.results, stacks):
            env[result] = _stacked(values, result.type)


# ---- comparing a compiled model's derivatives with JAX's --------------------------------------

VALUE_RTOL = 1e-12  # the oracle's forward values against the compiled code's


def samples(model, inputs: dict) -> list[dict]:
    """Each sample's inputs (the states' initial values included) as the oracle takes them."""
    from spadrt.arguments import with_state
    states = {s["name"] for s in model.layout.get("state", [])}
    every = with_state(model.layout, inputs, None)  # the states' initial values, shared by the samples
    loss = model.forward(**inputs).loss  # one per sample, or a float for one sample
    batched, count = np.ndim(loss) == 1, np.size(loss)
    return [{k: (v if k in states or not batched else np.asarray(v)[i]) for k, v in every.items()}
            for i in range(count)]


def jacobians(program, model, inputs: dict) -> list[tuple[dict, dict]]:
    """Per sample, (the loss and each float output, their reverse-mode Jacobians by JAX: target ->
    (by the params, by the float inputs)), at the model's params."""
    floats = [i["name"] for i in model.layout["inputs"] if i["dtype"] == "f64" and not i.get("state")]
    outputs = [o["name"] for o in model.layout["outputs"] if o["dtype"] == "f64" and not o.get("hidden")]
    f = function(program)
    params = {k: jnp.asarray(np.asarray(v, dtype=np.float64)) for k, v in model.params.items()}
    found = []
    for given in samples(model, inputs):
        float_given = {k: jnp.asarray(np.asarray(given[k], dtype=np.float64)) for k in floats}
        others = {k: v for k, v in given.items() if k not in floats}

        def g(p, xs, others=others):  # the loss and the visible outputs, as one dict
            loss, outs = f(p, {**xs, **others})
            return {"loss": loss, **{k: outs[k] for k in outputs}}
        found.append((g(params, float_given), jax.jacrev(g, argnums=(0, 1))(params, float_given)))
    return found


def check_derivatives(model, program, inputs: dict, rng, rtol: float, name: str, value_rtol: float = VALUE_RTOL,
                      oracle: list | None = None):
    """`model.vjp` (seeded by random cotangents of the loss and every float output), `input_grad` and
    every Jacobian (of the loss and of each float output, by the params and by the inputs) against
    JAX's reverse-mode Jacobians of `program` (`oracle`: `jacobians(program, ...)`, computed here
    if not given), sample by sample (`inputs` one sample or a batch); the values too, to
    `value_rtol`. An `AssertionError` names the first that differs by more than `rtol` of its
    largest entry (or of 1)."""
    oracle = jacobians(program, model, inputs) if oracle is None else oracle
    floats = [i["name"] for i in model.layout["inputs"] if i["dtype"] == "f64" and not i.get("state")]
    outputs = [o["name"] for o in model.layout["outputs"] if o["dtype"] == "f64" and not o.get("hidden")]
    forward = model.forward(**inputs)
    batched = np.ndim(forward.loss) == 1
    cotangents = {"loss": rng.standard_normal(np.shape(forward.loss))}
    for key in outputs:
        cotangents[key] = rng.standard_normal(np.shape(forward.outputs[key]))

    def one(value, i):
        return value[i] if batched else value

    result = model.vjp(cotangents, **inputs)
    _, input_grads = model.input_grad(**inputs)
    mine = {target: (model.jacobian(target, "params", **inputs) if model.layout["params"] else None,
                     model.jacobian(target, "inputs", **inputs) if floats else None)
            for target in ["loss", *outputs]}
    param_sum = {p["name"]: np.zeros(p["shape"]) for p in model.layout["params"]}
    for i, (values, found) in enumerate(oracle):
        for target, value in values.items():
            expected = one(forward.loss if target == "loss" else forward.outputs[target], i)
            np.testing.assert_allclose(expected, value, rtol=value_rtol, atol=value_rtol,
                                       err_msg=f"{name}: the oracle's `{target}` is not the model's")
        for target, (of_params, of_inputs) in mine.items():
            shape, (by_params, by_inputs) = np.shape(values[target]), found[target]
            if of_params is not None:
                flat = np.concatenate([np.reshape(by_params[p["name"]], (*shape, -1))
                                       for p in model.layout["params"]], axis=-1)
                _close(one(of_params, i), flat, rtol, f"{name}: the Jacobian of `{target}` by the params, sample {i}")
                for p in model.layout["params"]:  # the VJP: the cotangents against these rows
                    rows = np.reshape(by_params[p["name"]], (int(np.prod(shape)), -1))
                    param_sum[p["name"]] += (np.ravel(one(cotangents[target], i)) @ rows).reshape(p["shape"])
            for k in floats:
                _close(one(of_inputs[k], i), by_inputs[k], rtol, f"{name}: the Jacobian of `{target}` by `{k}`, sample {i}")
        for k in floats:
            _close(one(input_grads[k], i), found["loss"][1][k], rtol, f"{name}: input_grad of `{k}`, sample {i}")
            expected = sum(np.tensordot(one(cotangents[target], i), found[target][1][k], axes=np.ndim(values[target]))
                           for target in values)
            _close(one(result.inputs[k], i), expected, rtol, f"{name}: vjp's cotangent of input `{k}`, sample {i}")
    for k in param_sum:
        _close(result.params[k], param_sum[k], rtol, f"{name}: vjp's cotangent of param `{k}`")


def _close(got, expected, rtol, what):
    got, expected = np.asarray(got, dtype=np.float64), np.asarray(expected, dtype=np.float64)
    assert got.shape == expected.shape, f"{what}: shape {got.shape}, JAX's {expected.shape}"
    assert np.array_equal(np.isfinite(got), np.isfinite(expected)), f"{what}: finite where JAX's is not, or not where it is"
    finite = np.isfinite(expected)
    # Relative to the largest entry, or absolute below 1: a derivative near 0 is often the difference
    # of larger terms, which two correct programs round differently.
    scale = max(float(np.max(np.abs(expected[finite]), initial=0.0)), 1.0)
    worst = float(np.max(np.abs(got[finite] - expected[finite]), initial=0.0)) / scale
    assert worst <= rtol, f"{what}: off by {worst:.2e} of its largest entry (or of 1)"
