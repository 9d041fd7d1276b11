"""The convolutional builtins of version 2.0 (LANGUAGE.md section 10): `conv`, `max_pool`,
`avg_pool`, `pad` and `upsample`, channels first, one sample: x is [C, L] (one spatial axis) or
[C, H, W] (two).

`conv` and `max_pool` lower to the primitives of spadc/ir/conv.py; `avg_pool` is a depthwise conv by
ones divided by the window's size (PyTorch's default, `count_include_pad`: padding counts), `pad` an
update of zeros, `upsample` (nearest) a reshape, a broadcast and a reshape.

Invariants: every geometry the primitives receive has an output of at least one entry, a kernel
that fits the padded input and, for pools, padding at most half the kernel (so that every window
holds an entry of x); each mistake is reported at the argument or keyword that makes it.
"""

from __future__ import annotations

import math

from ..errors import SpadcError
from ..ir.conv import Window

SPATIAL = {2: 1, 3: 2}  # rank of x -> spatial axes


def _spatial_axes(x, name, node) -> int:
    if x.type.rank not in SPATIAL:
        raise SpadcError(f"`{name}` needs x: [C, L] or [C, H, W] (channels first, one sample), got {x.type}",
                         node.args[0].loc)
    return SPATIAL[x.type.rank]


def per_axis(chk, value_node, n: int, what: str, minimum: int) -> tuple[int, ...]:
    """A constant int, or a list of `n` ints (one per spatial axis), each at least `minimum`."""
    value = chk.const_value(value_node, what)
    if value.dtype.kind not in "iu" or not (value.ndim == 0 or value.shape == (n,)):
        pair = " or a list of 2 integers" if n == 2 else ""
        raise SpadcError(f"{what} must be an integer{pair}, got {value.tolist()}", value_node.loc)
    values = (int(value),) * n if value.ndim == 0 else tuple(int(v) for v in value)
    if min(values) < minimum:
        raise SpadcError(f"{what} must be at least {minimum}, got {min(values)}", value_node.loc)
    return values


def _keyword(chk, kw, key, n, name, default, minimum):
    if key not in kw:
        return (default,) * n
    return per_axis(chk, kw[key], n, f"the `{key}` of `{name}`", minimum)


def _fits(window: Window, x, name, node):
    """The kernel (dilated) fits the padded input along every spatial axis."""
    for axis, (size, k, p, d) in enumerate(zip(x.type.shape[1:], window.kernel, window.padding, window.dilation)):
        span = d * (k - 1) + 1
        if span > size + 2 * p:
            raise SpadcError(f"`{name}`: the kernel spans {span} entries along axis {axis + 1} but the input, padded, has "
                             f"{size + 2 * p} (x: {x.type}, padding {p})", node.loc)


def conv(chk, args, kw, node):
    x, w = (chk.to_float(a, "`conv`", node.loc) for a in args)
    n = _spatial_axes(x, "conv", node)
    if w.type.rank != n + 2:
        shape = "[C_out, C_in / groups, k]" if n == 1 else "[C_out, C_in / groups, kh, kw]"
        raise SpadcError(f"`conv` of x: {x.type} needs w: {shape}, got {w.type}", node.args[1].loc)
    groups = chk.const_int(kw["groups"], "the `groups` of `conv`", minimum=1) if "groups" in kw else 1
    c_in, c_out = x.type.shape[0], w.type.shape[0]
    for count, what in ((c_in, "input"), (c_out, "output")):
        if count % groups:
            raise SpadcError(f"`groups` = {groups} does not divide the {count} {what} channels of `conv` "
                             f"(x: {x.type}, w: {w.type})", kw["groups"].loc)
    if w.type.shape[1] * groups != c_in:
        raise SpadcError(f"`conv`: w: {w.type} has {w.type.shape[1]} input channels per group, but x: {x.type} in "
                         f"{groups} group{'s' if groups > 1 else ''} has {c_in // groups}", node.args[1].loc)
    window = Window(w.type.shape[2:], _keyword(chk, kw, "stride", n, "conv", 1, 1),
                    _keyword(chk, kw, "padding", n, "conv", 0, 0), _keyword(chk, kw, "dilation", n, "conv", 1, 1))
    _fits(window, x, "conv", node)
    return chk.prim("conv", [x, w], node.loc, stride=window.stride, padding=window.padding,
                    dilation=window.dilation, groups=groups)


def _pool_window(chk, x, kw, node, name) -> Window:
    n = _spatial_axes(x, name, node)
    kernel = per_axis(chk, node.args[1], n, f"the kernel size of `{name}`", 1)
    stride = kernel if "stride" not in kw else per_axis(chk, kw["stride"], n, f"the `stride` of `{name}`", 1)
    padding = _keyword(chk, kw, "padding", n, name, 0, 0)
    for k, p in zip(kernel, padding):
        if 2 * p > k:
            raise SpadcError(f"the `padding` of `{name}` must be at most half the kernel size ({k}), got {p} (as in "
                             f"PyTorch: a window of padding only would have no entry)", kw["padding"].loc)
    window = Window(kernel, stride, padding, (1,) * n)
    _fits(window, x, name, node)
    return window


def max_pool(chk, args, kw, node):
    x = chk.to_float(args[0], "`max_pool`", node.loc)
    window = _pool_window(chk, x, kw, node, "max_pool")
    return chk.prim("pool_select", [x, x], node.loc, kernel=window.kernel, stride=window.stride, padding=window.padding)


def avg_pool(chk, args, kw, node):
    x = chk.to_float(args[0], "`avg_pool`", node.loc)
    window = _pool_window(chk, x, kw, node, "avg_pool")
    channels = x.type.shape[0]
    ones = chk.broadcast_to(chk.constant(1.0, node.loc), (channels, 1) + window.kernel, node.loc)
    total = chk.prim("conv", [x, ones], node.loc, stride=window.stride, padding=window.padding,
                     dilation=window.dilation, groups=channels)
    return chk.prim("div", [total, chk.constant(float(math.prod(window.kernel)), node.loc)], node.loc)


def pad(chk, args, kw, node):
    x = chk.numeric(args[0], "`pad`", node.loc)
    if x.type.rank == 0:
        raise SpadcError("`pad` needs a tensor, got a scalar", node.args[0].loc)
    n = 2 if x.type.rank == 3 else 1  # the spatial axes of a conv's input; a vector's one axis
    widths = per_axis(chk, node.args[1], n, "the padding of `pad`", 0)
    lead = x.type.shape[:x.type.rank - n]
    shape = lead + tuple(size + 2 * p for size, p in zip(x.type.shape[-n:], widths))
    zero = chk.constant(0.0 if x.type.dtype == "f64" else 0, node.loc)
    spec = tuple(("slice", 0, d) for d in lead) + tuple(("slice", p, p + size) for p, size in zip(widths, x.type.shape[-n:]))
    return chk.prim("index_set", [chk.broadcast_to(zero, shape, node.loc), x], node.loc, spec=spec, what="`pad`")


def upsample(chk, args, kw, node):
    x = chk.numeric(args[0], "`upsample`", node.loc)
    n = _spatial_axes(x, "upsample", node)
    factors = per_axis(chk, node.args[1], n, "the factor of `upsample`", 1)
    spatial = x.type.shape[1:]
    split = x.type.shape[:1] + tuple(d for size in spatial for d in (size, 1))
    stretched = x.type.shape[:1] + tuple(d for size, f in zip(spatial, factors) for d in (size, f))
    grown = chk.broadcast_to(chk.prim("reshape", [x], node.loc, shape=split), stretched, node.loc)
    return chk.prim("reshape", [grown], node.loc, shape=x.type.shape[:1] + tuple(s * f for s, f in zip(spatial, factors)))
