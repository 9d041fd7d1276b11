"""Convolution and max pooling over one sample, channels first: one `OpRecord` (spadc/ir/record.py)
per primitive, their LLVM in spadc/backend/conv.py.

- `conv(x, w)`: PyTorch's conv1d/conv2d without bias (a cross-correlation). x: [C_in, *S], w:
  [C_out, C_in / groups, *K], one or two spatial axes; attrs stride, padding, dilation (one int per
  spatial axis) and groups. Zero padding.
- `conv_input_grad(g, w)` and `conv_weight_grad(x, g)`: the two transposes of conv, x's and w's
  adjoints (attrs: conv's, and the input's spatial shape or the kernel's, which the output's shape
  does not determine when the stride does not divide it). The three close under differentiation:
  each is bilinear, and each of its adjoints and tangents is one of the three.
- `pool_select(x, v)`: per channel and window, the entry of v at the first maximal entry of x in the
  window (row-major order in the window; a NaN counts as maximal, as `argmax`); padding is never
  selected. `max_pool(x)` is `pool_select(x, x)`, its tangent `pool_select(x, dx)`.
- `pool_scatter(x, g)`: g's entries sent back to those positions (summed where windows overlap): the
  adjoint of pool_select in v, and linear in g.

Average pooling, `pad` and `upsample` are compositions (spadc/check/conv_builtins.py).

Invariants: every window of a pool holds at least one entry of x (the checker keeps padding at most
half the kernel, as PyTorch does); the NumPy rules below are the oracle of the emitters and the
interpreter, and sum over kernel positions in row-major order, then over channels.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from .record import OpRecord, add_all, require
from .types import F64


@dataclass(frozen=True)
class Window:
    """How a kernel slides over the spatial axes: size, stride, padding and dilation per axis."""
    kernel: tuple[int, ...]
    stride: tuple[int, ...]
    padding: tuple[int, ...]
    dilation: tuple[int, ...]

    def out_shape(self, spatial: tuple[int, ...]) -> tuple[int, ...]:
        return tuple((n + 2 * p - d * (k - 1) - 1) // s + 1
                     for n, k, s, p, d in zip(spatial, self.kernel, self.stride, self.padding, self.dilation))

    def offsets(self):
        """Each kernel position (row-major) with its offset into the padded input."""
        for position in itertools.product(*(range(k) for k in self.kernel)):
            yield position, tuple(k * d for k, d in zip(position, self.dilation))


def conv_window(attrs: dict, kernel: tuple[int, ...]) -> Window:
    return Window(tuple(kernel), tuple(attrs["stride"]), tuple(attrs["padding"]), tuple(attrs["dilation"]))


def pool_window(attrs: dict) -> Window:
    return Window(tuple(attrs["kernel"]), tuple(attrs["stride"]), tuple(attrs["padding"]), (1,) * len(attrs["kernel"]))


def conv_geometry(op) -> tuple[Window, tuple, tuple]:
    """(window, input shape, weight shape) of the conv that a conv op (or either transpose of it)
    belongs to."""
    x_shape = op.result.type.shape if op.kind == "conv_input_grad" else op.args[0].type.shape
    w_shape = op.result.type.shape if op.kind == "conv_weight_grad" else op.args[1].type.shape
    return conv_window(op.attrs, w_shape[2:]), tuple(x_shape), tuple(w_shape)


def multiply_adds(op) -> int:
    """The multiply-adds of one run of a conv op: its forward conv's (each of the three transposes of
    one conv does as many), or a pool's comparisons."""
    if op.kind.startswith("pool"):
        return op.args[0].type.size * int(np.prod(op.attrs["kernel"]))
    window, x_shape, w_shape = conv_geometry(op)
    return w_shape[0] * int(np.prod(window.out_shape(x_shape[1:]))) * int(np.prod(w_shape[1:]))


def _padded(x: np.ndarray, padding, value=0.0) -> np.ndarray:
    return np.pad(x, [(0, 0)] + [(p, p) for p in padding], constant_values=value)


def _taps(window: Window, offset, out_shape) -> tuple:
    """The key of the padded input's entries that kernel offset `offset` meets, one per output."""
    return (slice(None),) + tuple(slice(o, o + s * (m - 1) + 1, s) for o, s, m in zip(offset, window.stride, out_shape))


def _groups(attrs, c_in, c_out):
    """Per group, its input channels and its output channels."""
    g = attrs["groups"]
    for k in range(g):
        yield slice(k * c_in // g, (k + 1) * c_in // g), slice(k * c_out // g, (k + 1) * c_out // g)


# ---- conv and its transposes ---------------------------------------------------------------

def _conv_infer(types, attrs):
    x, w = types
    n = x.rank - 1
    require(x.dtype == w.dtype == "f64" and n in (1, 2) and w.rank == n + 2, f"conv of {x}, {w}")
    g = attrs["groups"]
    require(x.shape[0] % g == 0 and w.shape[0] % g == 0 and w.shape[1] * g == x.shape[0], f"conv groups of {x}, {w}")
    out = conv_window(attrs, w.shape[2:]).out_shape(x.shape[1:])
    require(all(m >= 1 for m in out), f"conv of {x} by {w}: no output")
    return F64.with_shape((w.shape[0],) + out)


def _conv(args, attrs):
    x, w = args
    window = conv_window(attrs, w.shape[2:])
    out_shape = window.out_shape(x.shape[1:])
    xp, out = _padded(x, window.padding), np.zeros((w.shape[0],) + out_shape)
    for position, offset in window.offsets():
        taps = xp[_taps(window, offset, out_shape)]
        for c_in, c_out in _groups(attrs, x.shape[0], w.shape[0]):
            out[c_out] += np.tensordot(w[(c_out, slice(None)) + position], taps[c_in], axes=1)
    return out


def _input_grad_infer(types, attrs):
    g, w = types
    x = F64.with_shape((w.shape[1] * attrs["groups"],) + tuple(attrs["spatial"]))
    require(_conv_infer([x, w], attrs) == g, f"conv_input_grad of {g}, {w}")
    return x


def _input_grad(args, attrs):
    g, w = args
    window, spatial = conv_window(attrs, w.shape[2:]), tuple(attrs["spatial"])
    c_in = w.shape[1] * attrs["groups"]
    grown = _padded(np.zeros((c_in,) + spatial), window.padding)
    for position, offset in window.offsets():
        key = _taps(window, offset, g.shape[1:])
        for ci, co in _groups(attrs, c_in, w.shape[0]):
            grown[(ci,) + key[1:]] += np.tensordot(w[(co, slice(None)) + position].T, g[co], axes=1)
    return grown[(slice(None),) + tuple(slice(p, p + n) for p, n in zip(window.padding, spatial))]


def _weight_grad_infer(types, attrs):
    x, g = types
    w = F64.with_shape((g.shape[0], x.shape[0] // attrs["groups"]) + tuple(attrs["kernel"]))
    require(_conv_infer([x, w], attrs) == g, f"conv_weight_grad of {x}, {g}")
    return w


def _weight_grad(args, attrs):
    x, g = args
    kernel = tuple(attrs["kernel"])
    window = conv_window(attrs, kernel)
    xp = _padded(x, window.padding)
    out = np.zeros((g.shape[0], x.shape[0] // attrs["groups"]) + kernel)
    spatial_axes = list(range(1, x.ndim))
    for position, offset in window.offsets():
        taps = xp[_taps(window, offset, g.shape[1:])]
        for ci, co in _groups(attrs, x.shape[0], g.shape[0]):
            out[(co, slice(None)) + position] = np.tensordot(g[co], taps[ci], axes=(spatial_axes, spatial_axes))
    return out


def _same(op, **more) -> dict:
    """conv's attrs from the attrs of any of the three (with `more` added)."""
    return {**{k: op.attrs[k] for k in ("stride", "padding", "dilation", "groups")}, **more}


def _conv_adjoint(c, op, g, wanted, P):
    x, w = op.args
    return [c.op("conv_input_grad", g, P.arg(1), **_same(op, spatial=x.type.shape[1:])) if wanted[0] else None,
            c.op("conv_weight_grad", P.arg(0), g, **_same(op, kernel=w.type.shape[2:])) if wanted[1] else None]


def _input_grad_adjoint(c, op, gx, wanted, P):
    # <gx, A(w)^T g> = <A(w) gx, g>: in g, conv(gx, w); in w, the weight gradient of input gx and output g.
    g, w = op.args
    return [c.op("conv", gx, P.arg(1), **_same(op)) if wanted[0] else None,
            c.op("conv_weight_grad", gx, P.arg(0), **_same(op, kernel=w.type.shape[2:])) if wanted[1] else None]


def _weight_grad_adjoint(c, op, gw, wanted, P):
    # <gw, W(x, g)> = <conv(x, gw), g>: in x, the input gradient of g through gw; in g, conv(x, gw).
    x, g = op.args
    return [c.op("conv_input_grad", P.arg(1), gw, **_same(op, spatial=x.type.shape[1:])) if wanted[0] else None,
            c.op("conv", P.arg(0), gw, **_same(op)) if wanted[1] else None]


def _bilinear(t, op, d):
    a, b = op.args
    return add_all(t, [t.op(op.kind, d[0], b, **op.attrs) if d[0] is not None else None,
                       t.op(op.kind, a, d[1], **op.attrs) if d[1] is not None else None])


# ---- max pooling -----------------------------------------------------------------------------

def _pool_infer(types, attrs):
    x, v = types
    n = x.rank - 1
    require(x == v and x.dtype == "f64" and n in (1, 2) and len(attrs["kernel"]) == n, f"pool of {x}, {v}")
    out = pool_window(attrs).out_shape(x.shape[1:])
    require(all(m >= 1 for m in out), f"pool of {x}: no output")
    return x.with_shape(x.shape[:1] + out)


def _scatter_infer(types, attrs):
    x, g = types
    require(_pool_infer([x, x], attrs) == g, f"pool_scatter of {x}, {g}")
    return x


def pool_choices(x: np.ndarray, attrs) -> tuple[np.ndarray, tuple]:
    """Per output, the flat index (into the padded input of one channel) of its window's first maximal
    entry of x, and the window's geometry (padded spatial shape, output shape)."""
    window = pool_window(attrs)
    out_shape = window.out_shape(x.shape[1:])
    xp, inside = _padded(x, window.padding, -np.inf), _padded(np.ones(x.shape, bool), window.padding, False)
    padded_shape = xp.shape[1:]
    values, valid, flat = [], [], []
    index = np.arange(int(np.prod(padded_shape))).reshape(padded_shape)
    for _, offset in window.offsets():
        key = _taps(window, offset, out_shape)
        values.append(xp[key])
        valid.append(inside[key])
        flat.append(np.broadcast_to(index[key[1:]], values[-1].shape))
    values, valid, flat = np.stack(values), np.stack(valid), np.stack(flat)
    pick = np.argmax(values, axis=0)  # NumPy's argmax: the first NaN, else the first maximum
    # A max of -inf ties with the padding: the first entry inside the window is the first maximal one.
    chosen_valid = np.take_along_axis(valid, pick[None], 0)[0]
    pick = np.where(chosen_valid, pick, np.argmax(valid, axis=0))
    return np.take_along_axis(flat, pick[None], 0)[0], padded_shape


def _pool_select(args, attrs):
    x, v = args
    choice, padded_shape = pool_choices(x, attrs)
    vp = _padded(v, pool_window(attrs).padding).reshape(v.shape[0], -1)
    return np.take_along_axis(vp, choice.reshape(v.shape[0], -1), 1).reshape(choice.shape)


def _pool_scatter(args, attrs):
    x, g = args
    choice, padded_shape = pool_choices(x, attrs)
    grown = np.zeros((x.shape[0], int(np.prod(padded_shape))))
    for c in range(x.shape[0]):
        np.add.at(grown[c], choice[c].ravel(), g[c].ravel())
    grown = grown.reshape((x.shape[0],) + padded_shape)
    padding = pool_window(attrs).padding
    return grown[(slice(None),) + tuple(slice(p, p + n) for p, n in zip(padding, x.shape[1:]))]


def _pool_select_adjoint(c, op, g, wanted, P):
    """The choice is piecewise constant in x: x gets nothing, v its chosen entries."""
    return [None, c.op("pool_scatter", P.arg(0), g, **op.attrs) if wanted[1] else None]


def _pool_scatter_adjoint(c, op, g, wanted, P):
    return [None, c.op("pool_select", P.arg(0), g, **op.attrs) if wanted[1] else None]


def _linear_in_second(t, op, d):
    return t.op(op.kind, op.args[0], d[1], **op.attrs) if d[1] is not None else None


CONV_ATTRS = "attrs: stride, padding, dilation (one per spatial axis), groups"
POOL_ATTRS = "attrs: kernel, stride, padding (one per spatial axis)"
CONV_OPS: tuple[OpRecord, ...] = (
    OpRecord("conv", 2, _conv_infer, _conv, (0, 1), _conv_adjoint, _bilinear,
             f"x: [C_in, *S] correlated with w: [C_out, C_in / groups, *K] (PyTorch's conv1d/conv2d, no bias, zero "
             f"padding); {CONV_ATTRS}", "conv"),
    OpRecord("conv_input_grad", 2, _input_grad_infer, _input_grad, (0, 1), _input_grad_adjoint, _bilinear,
             f"conv's adjoint in x: g: [C_out, *O] through w back to [C_in, *spatial]; {CONV_ATTRS}, spatial", "conv"),
    OpRecord("conv_weight_grad", 2, _weight_grad_infer, _weight_grad, (0, 1), _weight_grad_adjoint, _bilinear,
             f"conv's adjoint in w: x: [C_in, *S] against g: [C_out, *O], a [C_out, C_in / groups, *kernel]; "
             f"{CONV_ATTRS}, kernel", "conv"),
    OpRecord("pool_select", 2, _pool_infer, _pool_select, (0,), _pool_select_adjoint, _linear_in_second,
             f"per channel and window, v's entry at the first maximal entry of x (never the padding): "
             f"max_pool(x) is pool_select(x, x); {POOL_ATTRS}", "conv"),
    OpRecord("pool_scatter", 2, _scatter_infer, _pool_scatter, (0,), _pool_scatter_adjoint, _linear_in_second,
             f"g sent to the entries pool_select(x, .) picks, summed where windows overlap: its adjoint; {POOL_ATTRS}",
             "conv"),
)
KINDS = frozenset(record.name for record in CONV_OPS)
