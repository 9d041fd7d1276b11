"""`spadc mem`: tape bytes per site, exact and under an estimator (ESTIMATORS.md section 6).

Invariants:
- Per site: the bytes the exact adjoint keeps for the site's residual (its whole tensor, every time
  the site is drawn) and what the estimator keeps instead (k values, or keep * d on average for
  Bernoulli draws). Inputs, params and their rows are never kept (the adjoint reads them again),
  nor are edge sites' tensors (they only gate). Totals are the whole tape of the exact and the
  sampled gradient programs, per sample, as the compiled code counts it, and the peak workspace
  of one gradient kernel call (from the memory plan: what the caller allocates).
- The memory plan of each kernel: taped, or its long loops checkpointed under the budget
  (spadc/backend/budget.py), with the taped workspace beside it.
"""

from __future__ import annotations

import os
from types import SimpleNamespace

from .ad.context import rereadable
from .ad.tape import plan_tape
from .api import Compiled
from .backend.budget import BudgetPlan, cut_from_json
from .ir.core import walk_ops

_KEPT = ("operand", "partial")


def site_rows(compiled: Compiled, sampling) -> list[dict]:
    program = compiled.gradient_program(sampling)
    float_bytes = 8 if compiled.dtype == "f64" else 4
    sampled = plan_tape(program, float_bytes)
    state = SimpleNamespace(external={v.id for v in compiled.program.body.params},
                            producers={r.id: op for op in walk_ops(compiled.program.body) for r in op.results})
    rows = []
    for entry in program.sites:
        site = entry.site
        kept = site.kind in _KEPT and not (site.kind == "operand" and rereadable(site.op.args[site.stored], state))
        rows.append({"where": f"{os.path.basename(site.loc.source.name)}:{site.loc.line}", "what": site.describe(),
                     "shape": site.shape, "draws": site.trips,
                     "exact": float_bytes * site.values * site.trips if kept else 0,
                     "estimated": sampled.site_bytes.get(site.id, 0),
                     "source": site.loc.source.line_text(site.loc.line).strip()})
    return rows


def workspaces(compiled: Compiled, sampling) -> tuple[int, int]:
    """Peak workspace bytes of one gradient kernel call, exact and under `sampling`."""
    return compiled.emit(None)[0]["workspace"], compiled.emit(sampling)[0]["workspace"]


def report(compiled: Compiled, sampling, label: str, spad=None) -> str:
    """`spad`: a SPAD estimator, whose evaluation steps are reported too."""
    rows = site_rows(compiled, sampling)
    float_bytes = 8 if compiled.dtype == "f64" else 4
    # what the exact kernel keeps: its program computes what depends on params alone once per call
    # (spadc/passes/hoist.py), so it may keep less than the adjoint of the program as written
    exact_total = compiled.emit(None)[0]["tape_bytes"]
    sampled_total = plan_tape(compiled.gradient_program(sampling), float_bytes).static_bytes
    lines = [f"tape bytes per sample, exact and under {label}", ""]
    header = ("site", "kind", "shape", "draws", "exact", label.split("(")[0].strip())
    table = [header] + [(r["where"], r["what"], "x".join(map(str, r["shape"])) or "scalar", str(r["draws"]),
                         _bytes(r["exact"]), _bytes(r["estimated"])) for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        lines.append("  ".join(cell.ljust(w) if i < 3 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths))))
    ungated = compiled.gradient_program(sampling).ungated
    if ungated:
        lines += ["", "not gated, as gating them would save nothing (ESTIMATORS.md section 9):"]
        lines += [f"  {os.path.basename(site.loc.source.name)}:{site.loc.line}  {site.describe()}: {why}"
                  for site, why in ungated]
    site_exact = sum(r["exact"] for r in rows)
    site_estimated = sum(r["estimated"] for r in rows)
    lines.append("")
    if site_exact:
        lines.append(f"sampled sites: {_bytes(site_exact)} exact, {_bytes(site_estimated)} under the estimator "
                     f"({100 * site_estimated / site_exact:.1f}%)")
    lines.append(f"whole tape:    {_bytes(exact_total)} exact, {_bytes(sampled_total)} under the estimator "
                 f"({100 * sampled_total / exact_total:.1f}%)" if exact_total else "whole tape: empty")
    exact_peak, sampled_peak = workspaces(compiled, sampling)
    lanes = compiled.lanes
    running = f"{lanes} samples side by side; --lanes 1 for the least" if lanes > 1 else "one sample at a time"
    lines.append(f"peak workspace: {_bytes(exact_peak)} exact, {_bytes(sampled_peak)} under the estimator, per "
                 f"gradient kernel call ({running}; the tape and every temporary, reused as they die)")
    lines += ["", *plan_lines(compiled, sampling, label.split("(")[0].strip())]
    if spad is not None:
        paths = plan_tape(compiled.gradient_program(spad.evaluation_sampling, "paths"), float_bytes).static_bytes
        scored = plan_tape(compiled.gradient_program(None, "gradient", spad.sampling), float_bytes).static_bytes
        lines += ["", f"SPAD evaluation steps (every {spad.refresh} steps): score=paths keeps {_bytes(paths)} (RAD's "
                      f"tape, {spad.candidates} candidates in turn); score=gradient runs the exact adjoint and keeps "
                      f"{_bytes(scored)}"]
    return "\n".join(lines) + "\n"


def plan_lines(compiled: Compiled, sampling, label: str) -> list[str]:
    """The memory plan of each gradient kernel (ESTIMATORS.md section 9): taped, or its loops cut
    into segments (snapshots, replays, forward work), with its peak next to the taped figure."""
    limit = f"{compiled.max_memory:,} B" if compiled.max_memory < (1 << 62) else "no limit"
    lines = [f"memory plan (budget {limit}, checkpoint {compiled.checkpoint}):"]
    for name, entry in (("exact", compiled.emit(None)[0]), (label, compiled.emit(sampling)[0])):
        plan = BudgetPlan({int(k): cut_from_json(v) for k, v in entry.get("cuts", {}).items()}, entry["workspace"],
                          entry.get("taped_workspace", entry["workspace"]))
        if not plan.cuts:
            lines.append(f"  {name}: taped, peak workspace {_bytes(plan.workspace)}")
            continue
        lines.append(f"  {name}: peak workspace {_bytes(plan.workspace)} checkpointed, {_bytes(plan.taped_workspace)} "
                     f"taped; forward work up to {1 + plan.replays}x one forward pass")
        lines += [f"    {line}" for line in plan.describe(compiled.program)]
    return lines


def _bytes(count: float) -> str:
    return f"{count:,.0f} B"
