"""LLVM for convolution and max pooling over one sample (spadc/ir/conv.py has their records and
NumPy references).

A one-dimensional op is emitted as a two-dimensional one of height 1. The convolutions are direct:
per output row and input channel, each kernel row that lands inside the input adds, for each kernel
column, a scaled run of the input row to the output row (`conv`), of the output's adjoint to the
input's (`conv_input_grad`), or accumulates a dot product of the two (`conv_weight_grad`). A kernel
column's run of valid outputs is known when the code is emitted, so padding costs no test in the
inner loops, which are unit-stride in the output (vectorisable) when the stride is 1.

Invariants: no load or store outside an operand or the result (rows are tested, columns clipped
when emitted); each result is zeroed, then accumulated, and never shares storage with an operand;
a pool's window search keeps the first maximal entry (a NaN counts as maximal), as
`spadc.ir.conv.pool_choices` does.
"""

from __future__ import annotations

from dataclasses import dataclass

from llvmlite import ir

from ..ir.conv import Window, conv_window, pool_window

I1, I64 = ir.IntType(1), ir.IntType(64)


@dataclass(frozen=True)
class Plane:
    """An op's geometry lifted to two spatial axes: input (H, W), output (OH, OW), its window."""
    input: tuple[int, int]
    output: tuple[int, int]
    window: Window

    @classmethod
    def of(cls, window: Window, spatial, out_spatial) -> "Plane":
        lift = (lambda t, one: (one,) * (2 - len(t)) + tuple(t))
        return cls(lift(spatial, 1), lift(out_spatial, 1),
                   Window(lift(window.kernel, 1), lift(window.stride, 1), lift(window.padding, 0), lift(window.dilation, 1)))

    def input_row(self, e, oh, kh):
        """The input row that output row `oh` meets at kernel row `kh` (maybe outside the input)."""
        w, b = self.window, e.b
        return b.add(b.mul(oh, I64(w.stride[0])), b.sub(b.mul(kh, I64(w.dilation[0])), I64(w.padding[0])))

    def inside(self, e, index, axis: int):
        return e.b.icmp_unsigned("<", index, I64(self.input[axis]))

    def columns(self, kw: int) -> tuple[int, int, int]:
        """For kernel column `kw`: the outputs [lo, hi) whose input column is inside, and the shift
        (input column = output column * stride + shift)."""
        w = self.window
        lo, hi = w.valid_outputs(1, kw, self.input[1], self.output[1])
        return lo, hi, kw * w.dilation[1] - w.padding[1]


def _conv_plane(op, x_shape, kernel) -> Plane:
    window = conv_window(op.attrs, kernel)
    return Plane.of(window, x_shape[1:], window.out_shape(x_shape[1:]))


def _each_tap(e, op, plane: Plane, c_out: int, per_group_in: int):
    """For each output channel co, output row oh, input channel ci of co's group and kernel row kh
    inside the input: yields (co, oh, ci, its index within the group, kh, input row)."""
    b = e.b
    per_group_out = c_out // op.attrs["groups"]
    with e.loop(c_out, "co") as co:
        first_in = b.mul(b.udiv(co, I64(per_group_out)), I64(per_group_in))
        with e.loop(plane.output[0], "oh") as oh:
            with e.loop(per_group_in, "cg") as cg:
                ci = b.add(first_in, cg)
                with e.loop(plane.window.kernel[0], "kh") as kh:
                    ih = plane.input_row(e, oh, kh)
                    with b.if_then(plane.inside(e, ih, 0)):
                        yield co, oh, ci, cg, kh, ih


def _at(e, indices, shape):
    """The row-major offset of a multi-index (LLVM values or ints) in a tensor of `shape`."""
    b, offset = e.b, I64(0)
    for index, size in zip(indices, shape):
        offset = b.add(b.mul(offset, I64(size)), index if isinstance(index, ir.Value) else I64(index))
    return offset


def _conv(e, op):
    # out[co, oh, ow] += w[co, cg, kh, kw] * x[ci, ih, ow * sw + shift], over cg, kh, then kw
    x, w = op.args
    out = op.result
    plane = _conv_plane(op, x.type.shape, w.type.shape[2:])
    (H, W), (OH, OW), (KH, KW) = plane.input, plane.output, plane.window.kernel
    c_out, per_group_in, sw = w.type.shape[0], w.type.shape[1], plane.window.stride[1]
    b = e.b
    e.zero(out)
    for co, oh, ci, cg, kh, ih in _each_tap(e, op, plane, c_out, per_group_in):
        row_out, row_in = _at(e, (co, oh, 0), (c_out, OH, OW)), _at(e, (ci, ih, 0), (x.type.shape[0], H, W))
        for kw in range(KW):
            lo, hi, shift = plane.columns(kw)
            if lo >= hi:
                continue
            weight = e.load(w, _at(e, (co, cg, kh, kw), (c_out, per_group_in, KH, KW)))
            with e.loop(hi - lo, "ow", lo) as ow:
                target = b.add(row_out, ow)
                source = b.add(row_in, b.add(b.mul(ow, I64(sw)), I64(shift)))
                e.store(out, target, b.fadd(e.load(out, target), b.fmul(weight, e.load(x, source))))


def _conv_input_grad(e, op):
    # gx[ci, ih, ow * sw + shift] += w[co, cg, kh, kw] * g[co, oh, ow]: conv's loops, the other way
    g, w = op.args
    gx = op.result
    plane = _conv_plane(op, gx.type.shape, w.type.shape[2:])
    (H, W), (OH, OW), (KH, KW) = plane.input, plane.output, plane.window.kernel
    c_out, per_group_in, sw = w.type.shape[0], w.type.shape[1], plane.window.stride[1]
    b = e.b
    e.zero(gx)
    for co, oh, ci, cg, kh, ih in _each_tap(e, op, plane, c_out, per_group_in):
        row_g, row_x = _at(e, (co, oh, 0), (c_out, OH, OW)), _at(e, (ci, ih, 0), (gx.type.shape[0], H, W))
        for kw in range(KW):
            lo, hi, shift = plane.columns(kw)
            if lo >= hi:
                continue
            weight = e.load(w, _at(e, (co, cg, kh, kw), (c_out, per_group_in, KH, KW)))
            with e.loop(hi - lo, "ow", lo) as ow:
                target = b.add(row_x, b.add(b.mul(ow, I64(sw)), I64(shift)))
                e.store(gx, target, b.fadd(e.load(gx, target), b.fmul(weight, e.load(g, b.add(row_g, ow)))))


def _conv_weight_grad(e, op):
    # gw[co, cg, kh, kw] += sum over ow of g[co, oh, ow] * x[ci, ih, ow * sw + shift], over oh
    x, g = op.args
    gw = op.result
    plane = _conv_plane(op, x.type.shape, gw.type.shape[2:])
    (H, W), (OH, OW), (KH, KW) = plane.input, plane.output, plane.window.kernel
    c_out, per_group_in, sw = gw.type.shape[0], gw.type.shape[1], plane.window.stride[1]
    b = e.b
    total = e.alloca(e.float, name="dot")
    e.zero(gw)
    for co, oh, ci, cg, kh, ih in _each_tap(e, op, plane, c_out, per_group_in):
        row_g, row_x = _at(e, (co, oh, 0), (c_out, OH, OW)), _at(e, (ci, ih, 0), (x.type.shape[0], H, W))
        for kw in range(KW):
            lo, hi, shift = plane.columns(kw)
            if lo >= hi:
                continue
            b.store(ir.Constant(e.float, 0.0), total)
            with e.loop(hi - lo, "ow", lo) as ow:
                source = b.add(row_x, b.add(b.mul(ow, I64(sw)), I64(shift)))
                b.store(b.fadd(b.load(total), b.fmul(e.load(g, b.add(row_g, ow)), e.load(x, source))), total)
            target = _at(e, (co, cg, kh, kw), (c_out, per_group_in, KH, KW))
            e.store(gw, target, b.fadd(e.load(gw, target), b.load(total)))


# ---- max pooling -------------------------------------------------------------------------------

def _pool(e, op, visit):
    """For each channel and window of pool op `op`: the flat index in x of the window's first maximal
    entry, passed to `visit(c, output offset, index)`."""
    x = op.args[0]
    window = pool_window(op.attrs)
    plane = Plane.of(window, x.type.shape[1:], window.out_shape(x.type.shape[1:]))
    (H, W), (OH, OW), (KH, KW) = plane.input, plane.output, plane.window.kernel
    (sh, sw), (ph, pw) = plane.window.stride, plane.window.padding
    channels, b = x.type.shape[0], e.b
    best, at, found = e.alloca(e.float, name="best"), e.alloca(I64, name="at"), e.alloca(I1, name="found")
    with e.loop(channels, "c") as c:
        with e.loop(OH, "oh") as oh:
            with e.loop(OW, "ow") as ow:
                b.store(I1(0), found)
                b.store(I64(0), at)
                for kh in e.each(KH, "kh"):
                    ih = b.add(b.mul(oh, I64(sh)), b.sub(kh, I64(ph)))
                    with b.if_then(plane.inside(e, ih, 0)):
                        for kw in e.each(KW, "kw"):
                            iw = b.add(b.mul(ow, I64(sw)), b.sub(kw, I64(pw)))
                            with b.if_then(plane.inside(e, iw, 1)):
                                index = _at(e, (c, ih, iw), (channels, H, W))
                                value, current = e.load(x, index), b.load(best)
                                larger = b.or_(b.fcmp_ordered(">", value, current), b.fcmp_unordered("uno", value, value))
                                take = b.or_(b.xor(b.load(found), I1(1)),
                                             b.and_(larger, b.fcmp_ordered("ord", current, current)))
                                b.store(b.select(take, value, current), best)
                                b.store(b.select(take, index, b.load(at)), at)
                                b.store(I1(1), found)
                visit(c, _at(e, (c, oh, ow), (channels, OH, OW)), b.load(at))


def _pool_select(e, op):
    v, out = op.args[1], op.result
    _pool(e, op, lambda c, target, index: e.store(out, target, e.load(v, index)))


def _pool_scatter(e, op):
    g, out = op.args[1], op.result
    e.zero(out)

    def add(c, source, index):
        e.store(out, index, e.b.fadd(e.load(out, index), e.load(g, source)))
    _pool(e, op, add)


EMITTERS = {"conv": _conv, "conv_input_grad": _conv_input_grad, "conv_weight_grad": _conv_weight_grad,
            "pool_select": _pool_select, "pool_scatter": _pool_scatter}
