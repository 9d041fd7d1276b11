"""The table of IR primitives: one record per primitive.

Each record holds the primitive's arity, its shape rule and its NumPy reference implementation
(the oracle that compiled code is tested against). Later stages add their rule for each primitive
in one place per stage, keyed by these names, and a test fails naming any primitive missing one.

Invariants:
- `infer(arg_types, attrs)` returns the result type or raises `ValueError`; the checker has already
  reported user mistakes with positions, so a `ValueError` here is a compiler bug.
- Elementwise primitives take operands of one shape, or scalars (rank 0) that stand for a whole
  tensor; any other broadcasting is an explicit `broadcast` op inserted by the checker.
- `evaluate(args, attrs, ctx)` works on NumPy arrays of the declared types and raises `Fault` for
  the run-time errors the language defines (an index or label out of range, an integer division by
  zero); the interpreter turns a `Fault` into a `SpadcError` placed at the op.
- Ties: `max`/`min` select the first operand, and NaN propagates as in NumPy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from . import binary, conv, draws, elementwise, linalg, reductions, special, structure
from .types import BOOL, F64, Fault, TensorType


NUMPY_DTYPES = {"f64": np.float64, "i64": np.int64, "bool": np.bool_}


@dataclass(frozen=True)
class Primitive:
    name: str
    arity: int | None  # None: any number of operands
    infer: Callable[[list[TensorType], dict], TensorType]
    evaluate: Callable[..., np.ndarray]
    family: str  # 'unary' | 'binary' | 'compare' | 'logic' | 'select' | 'reduce' | 'structure' | 'linalg' | 'conv' | 'random' | 'effect'
    doc: str


PRIMITIVES: dict[str, Primitive] = {}


def _define(name, arity, infer, evaluate, family, doc):
    PRIMITIVES[name] = Primitive(name, arity, infer, evaluate, family, doc)


def _require(condition: bool, message: str):
    if not condition:
        raise ValueError(message)


def _elementwise_shape(types: list[TensorType]) -> tuple[int, ...]:
    shapes = {t.shape for t in types if t.shape}
    _require(len(shapes) <= 1, f"elementwise operands of different shapes: {[str(t) for t in types]}")
    return shapes.pop() if shapes else ()


# ---- unary elementwise ---------------------------------------------------------

def _unary(name, fn, doc, dtypes=("f64",), out=None):
    def infer(types, attrs):
        (t,) = types
        _require(t.dtype in dtypes, f"{name} takes {dtypes}, got {t}")
        return t.with_dtype(out or t.dtype)

    _define(name, 1, infer, lambda args, attrs, ctx: np.asarray(fn(args[0])), "unary", doc)


def _polygamma_infer(types, attrs):
    (t,) = types
    _require(t.dtype == "f64" and isinstance(attrs["n"], int) and attrs["n"] >= 0, f"polygamma of {t}")
    return t


_define("polygamma", 1, _polygamma_infer, lambda args, attrs, ctx: special.polygamma(args[0], attrs["n"]), "unary",
        "the n-th derivative of digamma (n = 0: digamma itself, the derivative of lgamma); NaN at the poles "
        "(x a non-positive integer) and, for n >= 3, at negative x (spadc/ir/special.py). attrs: n")


def _to_int(x):
    if not np.all(np.isfinite(x)) or np.any(np.abs(x) >= 2.0**63):
        raise Fault("int() of a value that is not finite or does not fit in i64")
    return np.trunc(x).astype(np.int64)


for _record in elementwise.UNARY:  # the functions of spadc/ir/elementwise.py, with all their rules
    _unary(_record.name, _record.numpy, _record.doc, _record.dtypes)
_unary("neg", np.negative, "-x", ("f64", "i64"))
_unary("stop_gradient", lambda x: x.copy(), "identity with zero derivative")
_unary("not", np.logical_not, "logical negation", ("bool",))
_unary("to_float", lambda x: x.astype(np.float64), "float(x)", ("i64", "bool"), out="f64")
_unary("to_int", _to_int, "int(x): truncation toward zero; zero derivative", ("f64",), out="i64")


# ---- binary elementwise --------------------------------------------------------

def _binary(name, fn, doc, dtypes=("f64", "i64"), family="binary", out=None):
    def infer(types, attrs):
        a, b = types
        _require(a.dtype == b.dtype and a.dtype in dtypes, f"{name} takes equal dtypes of {dtypes}, got {a}, {b}")
        return TensorType(out or a.dtype, _elementwise_shape(types))

    _define(name, 2, infer, lambda args, attrs, ctx: np.asarray(fn(*args)), family, doc)


for _binary_record in binary.BINARY:  # the functions of spadc/ir/binary.py, with all their rules
    _binary(_binary_record.name, _binary_record.numpy, _binary_record.doc, _binary_record.dtypes,
            _binary_record.family, _binary_record.out)


def _select_infer(types, attrs):
    c, a, b = types
    _require(c.dtype == "bool" and a.dtype == b.dtype, f"select takes bool, T, T; got {c}, {a}, {b}")
    return a.with_shape(_elementwise_shape(types))


_define("select", 3, _select_infer, lambda args, attrs, ctx: np.asarray(np.where(*args)), "select",
        "where(c, a, b): a where c is true, else b; both evaluated; the adjoint of the other side is exactly 0")


# ---- reductions ----------------------------------------------------------------

def _reduce(name, fn, doc, dtypes=("f64", "i64")):
    def infer(types, attrs):
        (t,) = types
        axis = attrs["axis"]
        _require(t.dtype in dtypes, f"{name} takes {dtypes}, got {t}")
        if axis is None:
            return t.with_shape(())
        _require(0 <= axis < t.rank, f"{name}: axis {axis} out of range for {t}")
        return t.with_shape(t.shape[:axis] + t.shape[axis + 1:])

    _define(name, 1, infer, lambda args, attrs, ctx: np.asarray(fn(args[0], axis=attrs["axis"])), "reduce", doc)


for _reduction in reductions.REDUCTIONS:  # spadc/ir/reductions.py, with all their rules
    _reduce(_reduction.name, _reduction.numpy, _reduction.doc, _reduction.dtypes)


def _argmax_infer(types, attrs):
    (t,) = types
    _require(t.dtype in ("f64", "i64"), f"argmax takes f64 or i64, got {t}")
    axis = attrs["axis"]
    if axis is None:
        return TensorType("i64")
    _require(0 <= axis < t.rank, f"argmax: axis {axis} out of range for {t}")
    return TensorType("i64", t.shape[:axis] + t.shape[axis + 1:])


_define("argmax", 1, _argmax_infer,
        lambda args, attrs, ctx: np.asarray(np.argmax(args[0], axis=attrs["axis"]), dtype=np.int64), "reduce",
        "the position of the first maximal entry (row-major, or along `axis`); a NaN counts as maximal, as "
        "in NumPy; zero derivative")


# ---- linear algebra, structure and convolution: spadc/ir/linalg.py, structure.py and conv.py, with all
# their rules (spadc/ad/rules.py and tangents.py read RECORDS)

RECORDS = linalg.MATRIX_OPS + structure.STRUCTURE + conv.CONV_OPS
for _record in RECORDS:
    _define(_record.name, _record.arity, _record.infer,
            lambda args, attrs, ctx, rule=_record.numpy: rule(args, attrs), _record.family, _record.doc)


def _const_infer(types, attrs):
    _require(not types, "const takes no operands")
    return TensorType(attrs["dtype"], ())


_define("const", 0, _const_infer, lambda args, attrs, ctx: np.array(attrs["value"], dtype=NUMPY_DTYPES[attrs["dtype"]]),
        "structure", "a scalar literal; attrs: value, dtype")
_define("eye", 0, lambda types, attrs: F64.with_shape((attrs["n"], attrs["n"])),
        lambda args, attrs, ctx: np.eye(attrs["n"]), "structure", "identity matrix; attrs: n")


def _onehot_infer(types, attrs):
    (t,) = types
    _require(t.dtype == "i64" and t.rank == 0, f"onehot label {t}")
    return F64.with_shape((attrs["n"],))


def _onehot_evaluate(args, attrs, ctx):
    label, n = int(args[0]), attrs["n"]
    if not 0 <= label < n:
        raise Fault(f"label {label} is out of range for {n} classes")
    out = np.zeros(n)
    out[label] = 1.0
    return out


_define("onehot", 1, _onehot_infer, _onehot_evaluate, "structure", "onehot(label, n); attrs: n")


def _dropout_mask_infer(types, attrs):
    _require(not types and 0.0 <= attrs["p"] < 1.0, f"dropout_mask with p={attrs['p']}")
    return F64.with_shape(tuple(attrs["shape"]))


def _dropout_mask_evaluate(args, attrs, ctx):
    shape, p = tuple(attrs["shape"]), attrs["p"]
    if not ctx.training or p == 0.0:
        return np.ones(shape)
    keep = ctx.uniform(int(np.prod(shape, dtype=np.int64))).reshape(shape) >= p
    return np.where(keep, 1.0 / (1.0 - p), 0.0)


_define("dropout_mask", 0, _dropout_mask_infer, _dropout_mask_evaluate, "random",
        "all ones outside training; in training each entry is 1/(1-p) with probability 1-p, else 0; "
        "`dropout(x, p)` is `x * dropout_mask`, so its adjoint is that of `*`. attrs: p, shape")


def _first_true_infer(types, attrs):
    (t,) = types
    _require(t.dtype == "bool" and (attrs["axis"] is None or 0 <= attrs["axis"] < t.rank), f"first_true of {t}")
    return t


def _first_true_evaluate(args, attrs, ctx):
    (mask,) = args
    axis = attrs["axis"]
    if axis is None:
        out = np.zeros(mask.size, dtype=bool)
        if mask.any():
            out[np.argmax(mask.ravel())] = True
        return out.reshape(mask.shape)
    first = np.argmax(mask, axis=axis)
    positions = np.expand_dims(np.arange(mask.shape[axis]), tuple(i for i in range(mask.ndim) if i != axis))
    return (positions == np.expand_dims(first, axis)) & mask


_define("first_true", 1, _first_true_infer, _first_true_evaluate, "structure",
        "keeps only the first true entry (row-major, or along `axis`): the adjoint of max and min. attrs: axis")


def _fail_if_infer(types, attrs):
    (t,) = types
    _require(t == BOOL, f"fail_if of {t}")
    return t


def _fail_if_evaluate(args, attrs, ctx):
    if bool(args[0]):
        raise Fault(attrs["message"])
    return args[0].copy()


_define("fail_if", 1, _fail_if_infer, _fail_if_evaluate, "structure",
        "a run-time error with `message` when its bool operand is true; else passes it on (a `while` that "
        "reaches its max). Never removed as dead code. attrs: message")


# ---- the tape's packed forms ---------------------------------------------------------------

BITS_PER_WORD = 64


def bit_words(size: int) -> int:
    return (size + BITS_PER_WORD - 1) // BITS_PER_WORD


def _pack_bits_infer(types, attrs):
    (t,) = types
    _require(t.dtype == "bool" and t.rank > 0, f"pack_bits of {t}")
    return TensorType("i64", (bit_words(t.size),))


def _pack_bits_evaluate(args, attrs, ctx):
    flat = args[0].reshape(-1)
    padded = np.zeros(bit_words(flat.size) * BITS_PER_WORD, dtype=bool)
    padded[:flat.size] = flat
    return np.packbits(padded, bitorder="little").view("<i8").astype(np.int64)


def _unpack_bits_infer(types, attrs):
    (t,) = types
    shape = tuple(attrs["shape"])
    _require(t.dtype == "i64" and t.shape == (bit_words(int(np.prod(shape, dtype=np.int64))),), f"unpack_bits of {t}")
    return BOOL.with_shape(shape)


def _unpack_bits_evaluate(args, attrs, ctx):
    shape = tuple(attrs["shape"])
    bits = np.unpackbits(args[0].astype("<i8").view(np.uint8), bitorder="little").astype(bool)
    return bits[:int(np.prod(shape, dtype=np.int64))].reshape(shape)


_define("pack_bits", 1, _pack_bits_infer, _pack_bits_evaluate, "structure",
        "a bool tensor as bits, entry j (row-major) at bit j % 64 of word j // 64: how the tape keeps masks")
_define("unpack_bits", 1, _unpack_bits_infer, _unpack_bits_evaluate, "structure",
        "the bool tensor of `shape` that pack_bits packed; attrs: shape")


def record_words(t: TensorType) -> int:
    """Words (8 bytes) a value takes in a record: one per f64 or i64 entry, one for a scalar bool."""
    _require(t.dtype != "bool" or t.rank == 0, f"a record holds no bool tensor (pack its bits): {t}")
    return t.size


def _record_infer(types, attrs):
    _require(sum(record_words(t) for t in types) <= attrs["size"], "record too small for its values")
    return TensorType("i64", (attrs["size"],))


def _as_words(value: np.ndarray) -> np.ndarray:
    flat = np.ascontiguousarray(value).reshape(-1)
    return flat.view(np.int64) if flat.dtype == np.float64 else flat.astype(np.int64)


def _record_evaluate(args, attrs, ctx):
    words = np.zeros(attrs["size"], dtype=np.int64)
    offset = 0
    for value in args:
        part = _as_words(value)
        words[offset:offset + part.size] = part
        offset += part.size
    return words


def _field_infer(types, attrs):
    (t,) = types
    value = TensorType(attrs["dtype"], tuple(attrs["shape"]))
    _require(t.dtype == "i64" and t.rank == 1 and attrs["offset"] + record_words(value) <= t.size, f"field of {t}")
    return value


def _field_evaluate(args, attrs, ctx):
    value = TensorType(attrs["dtype"], tuple(attrs["shape"]))
    part = np.ascontiguousarray(args[0][attrs["offset"]:attrs["offset"] + value.size])
    typed = part.view(np.float64) if value.dtype == "f64" else part.astype(NUMPY_DTYPES[value.dtype])
    return typed.reshape(value.shape).copy()


_define("record", None, _record_infer, _record_evaluate, "structure",
        "values laid end to end as 8-byte words (floats bit for bit), zero-padded to `size` words: what one "
        "branch of a `cond` keeps, so that both branches' tapes share the bytes of the larger; attrs: size")
_define("field", 1, _field_infer, _field_evaluate, "structure",
        "a value read back from a record; attrs: offset (words), shape, dtype")


# ---- path sampling (spadc/ir/draws.py has the draw semantics) -------------------------------

def _gate_pack_infer(types, attrs):
    (t,) = types
    channels = attrs.get("channels", 1)
    _require(t.dtype == "f64" and t.shape == tuple(attrs["shape"]) and t.size == attrs["d"] * channels,
             f"gate_pack of {t}")
    return F64.with_shape((attrs["k"] * channels,))


def _gate_pack_evaluate(args, attrs, ctx):
    key = ctx.key(attrs)
    if attrs.get("scores", -1) >= 0:  # score="forward": accumulate |residual| where it is drawn, channel by channel
        values = np.abs(args[0]).reshape(-1)[draws.value_index(np.arange(attrs["d"])[:, None],
                                                               np.arange(attrs.get("channels", 1))[None, :], attrs)]
        for channel in values.T:
            ctx.add_scores(attrs["scores"], channel)
    if attrs["kept"] and attrs.get("counted", True):
        ctx.count_stored(8 * draws.stored_count(attrs, key, ctx.site_data))
    return draws.pack(args[0], attrs, key, ctx.site_data)


def _gate_unpack_infer(types, attrs):
    (t,) = types
    _require(t == F64.with_shape((attrs["k"] * attrs.get("channels", 1),)), f"gate_unpack of {t}")
    return F64.with_shape(tuple(attrs["shape"]))


_define("gate_pack", 1, _gate_pack_infer, _gate_pack_evaluate, "random",
        "the drawn entries of a site's residual, to be kept on the tape (k of d); attrs: see draws.py")
_define("gate_unpack", 1, _gate_unpack_infer,
        lambda args, attrs, ctx: draws.unpack(args[0], attrs, ctx.key(attrs), ctx.site_data), "random",
        "the residual rebuilt from its packed entries, reweighted, zero elsewhere: unbiased for it")
def _gate_outer_add_infer(types, attrs):
    acc, a, packed = types
    _require(acc == F64.with_shape(a.shape + (attrs["d"],)) and a.rank == 1 and len(attrs["shape"]) == 1
             and packed == F64.with_shape((attrs["k"],)), f"gate_outer_add of {a} and {packed} into {acc}")
    return acc


_define("gate_outer_add", 3, _gate_outer_add_infer,
        lambda args, attrs, ctx: draws.outer_add(*args, attrs, ctx.key(attrs), ctx.site_data), "random",
        "outer_add(acc, a, gate_unpack(packed)) column by kept column: a sampled weight gradient that "
        "costs what it keeps")
def _gate_conv_weight_grad_infer(types, attrs):
    packed, g = types
    channels = attrs.get("channels", 1)
    _require(packed == F64.with_shape((attrs["k"] * channels,)) and g.dtype == "f64" and g.rank == len(attrs["shape"]),
             f"gate_conv_weight_grad of {packed} and {g}")
    return F64.with_shape((g.shape[0], channels // attrs["groups"]) + tuple(attrs["kernel"]))


_define("gate_conv_weight_grad", 2, _gate_conv_weight_grad_infer,
        lambda args, attrs, ctx: draws.conv_weight_grad(*args, attrs, ctx.key(attrs), ctx.site_data), "random",
        "conv_weight_grad(gate_unpack(packed), g) position by kept position: a sampled conv weight gradient that "
        "costs what it keeps (made by the fusion pass); attrs: the gate's and the conv's")
_define("gate_mask", 0, lambda types, attrs: F64.with_shape(tuple(attrs["shape"])),
        lambda args, attrs, ctx: draws.mask(attrs, ctx.key(attrs), ctx.site_data), "random",
        "the weighted gate of an edge site (draw counts times weights)")


def _score_add_infer(types, attrs):
    values, *indices = types
    _require(values.dtype == "f64" and all(i == TensorType("i64") for i in indices), "score_add operands")
    _require(len(indices) == len(attrs["strides"]), "one stride per row index")
    return values


def _score_add_evaluate(args, attrs, ctx):
    values, *indices = args
    start = attrs["offset"] + sum(int(i) * stride for i, stride in zip(indices, attrs["strides"]))
    ctx.add_scores(start, values.reshape(-1))
    return values.copy()


_define("score_add", None, _score_add_infer, _score_add_evaluate, "effect",
        "adds |contributions| to a site's scores (SPAD's evaluation steps) and passes them on; attrs: offset "
        "(of the site in the scores buffer) and the strides of its row indices inside comprehensions")


def infer(kind: str, types: list[TensorType], attrs: dict) -> TensorType:
    primitive = PRIMITIVES[kind]
    if primitive.arity is not None and len(types) != primitive.arity:
        raise ValueError(f"{kind} takes {primitive.arity} operands, got {len(types)}")
    return primitive.infer(types, attrs)


__all__ = ["PRIMITIVES", "Primitive", "Fault", "infer", "BOOL", "F64"]
