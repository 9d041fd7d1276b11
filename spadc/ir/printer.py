"""IR as text that reads like the source: values carry the names of the variables they came from.

Invariants:
- Printing is deterministic: the same program prints the same text.
- Each value gets one name: its source name if still free, else `name.1`, `name.2`, ...; values
  with no source name are `%0`, `%1`, ... in order of definition.
"""

from __future__ import annotations

from .core import Block, Op, Program, Value


class _Names:
    def __init__(self):
        self._names: dict[int, str] = {}
        self._taken: set[str] = set()
        self._temps = 0

    def define(self, value: Value) -> str:
        if value.hint:
            name, n = value.hint, 0
            while name in self._taken:
                n += 1
                name = f"{value.hint}.{n}"
        else:
            name, self._temps = f"%{self._temps}", self._temps + 1
        self._taken.add(name)
        self._names[value.id] = name
        return name

    def __getitem__(self, value: Value) -> str:
        return self._names.get(value.id, f"<undefined #{value.id}>")


def format_program(program: Program) -> str:
    names = _Names()
    lines = [f"program {program.name}"]
    for decl in program.params:
        lines.append(f"  param {names.define(decl.value)}: {decl.value.type}")
    for decl in program.inputs:
        lines.append(f"  input {names.define(decl.value)}: {decl.value.type}")
    _block_lines(program.body, names, 1, lines)
    for name, value in program.outputs.items():
        lines.append(f"  output {name} = {names[value]}")
    lines.append(f"  loss {names[program.loss]}")
    return "\n".join(lines) + "\n"


def _block_lines(block: Block, names: _Names, depth: int, lines: list[str]):
    pad = "  " * depth
    for op in block.ops:
        if op.regions:
            _region_op_lines(op, names, depth, lines)
            continue
        text = f"{pad}{names.define(op.result)} = {_op_text(op, names)} : {op.result.type}"
        lines.append(f"{text:<60} # line {op.loc.line}")


def _op_text(op: Op, names: _Names) -> str:
    args = [names[a] for a in op.args]
    if op.kind == "const":
        return repr(op.attrs["value"]).lower() if op.attrs["dtype"] == "bool" else repr(op.attrs["value"])
    if op.kind == "index":
        dynamic = iter(args[1:])
        items = []
        for kind, *rest in op.attrs["spec"]:
            if kind == "slice":
                items.append(f"{rest[0]}:{rest[1]}")
            elif kind == "const":
                items.append(str(rest[0]))
            else:
                start = next(dynamic) + ("!" if rest[0] else "")
                items.append(f"{start}:+{rest[1]}" if len(rest) == 2 else start)
        return f"{args[0]}[{', '.join(items)}]"
    if op.kind.startswith("gate_"):  # the draw, briefly; the full attributes are in the IR itself
        a = op.attrs
        detail = f"k={a['k']} of {a['d']}" if a["draw"] == "with_replacement" else f"bernoulli keep={a['keep']}"
        site = f"site {a['site'] % 65536:04x}" + (", one mask per batch" if a["share"] == "batch" else "")
        return f"{op.kind}({', '.join(args + [detail, a['scheme'], site])})"
    attrs = [f"{k}={v}" for k, v in op.attrs.items()]
    return f"{op.kind}({', '.join(args + attrs)})"


def _region_op_lines(op: Op, names: _Names, depth: int, lines: list[str]):
    pad = "  " * depth
    results = ", ".join(names.define(r) for r in op.results)
    head = f"{results} = " if op.results else ""
    if op.kind == "cond":
        lines.append(f"{pad}{head}if {names[op.args[0]]} {{")
        for i, region in enumerate(op.regions):
            if i:
                lines.append(f"{pad}}} else {{")
            _block_lines(region, names, depth + 1, lines)
            lines.append(f"{pad}  yield {', '.join(names[y] for y in region.yields)}")
        lines.append(f"{pad}}}")
        return
    (body,) = op.regions
    index = names.define(body.params[0])
    direction = " reversed" if op.attrs.get("reverse") else ""
    span = f"{op.attrs['lo']}..{op.attrs['hi']}"
    if "codes" in op.attrs:  # a coded loop (spadc/ir/core.py): its index runs over its codes
        span = f"codes[{op.attrs['hi']}] (row = code // {op.attrs['codes'][0]})"
    header = f"{pad}{head}{op.kind} {index} in {span}{direction}"
    if op.kind == "loop" and op.args:
        carried = ", ".join(f"{names.define(p)} = {names[a]}" for p, a in zip(body.params[1:], op.args))
        header += f" carry ({carried})"
    lines.append(f"{header} {{")
    _block_lines(body, names, depth + 1, lines)
    lines.append(f"{pad}  yield {', '.join(names[y] for y in body.yields)}")
    lines.append(f"{pad}}}")
