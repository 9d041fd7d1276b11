"""Ahead-of-time builds: a library loads without the compiler and matches the JIT bit for bit; the
C example trains; objects for four targets; an aarch64 build runs under qemu when it is there."""

import os
import re
import shutil
import struct
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import spadc
import spadrt
from spadc import aot

from conftest import EXAMPLES, PROJECTION, example, profile_examples, quick

F32_RTOL = 1e-5  # f32 losses against f64
ELF_MACHINES = {"x86_64-linux-gnu": 62, "aarch64-linux-gnu": 183, "thumbv7em-none-eabihf": 40,
                "riscv32-unknown-elf": 243}
ALLOCATORS = {"malloc", "calloc", "realloc", "free", "posix_memalign", "aligned_alloc"}

CHILD = textwrap.dedent('''
    import importlib.abc, sys
    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name.split(".")[0] in ("lark", "llvmlite", "spadc"):
                raise ImportError(name + " is not available in this process")
    sys.meta_path.insert(0, Block())
    import numpy as np
    import spadrt
    model = spadrt.load(sys.argv[1])
    data = dict(np.load(sys.argv[2]))
    model.init_params(5)
    out = {"losses": model.loss(**data), "logits": model.forward(**data).outputs["logits"]}
    for name, estimator in [("exact", None), ("rad", spadrt.RAD(keep=0.1)), ("spad", spadrt.SPAD(keep=0.1))]:
        for call in range(3):
            loss, grads = model.grad(estimator=estimator, seed=3, **data)
        out["loss_" + name] = loss
        out.update({name + "_" + k: v for k, v in grads.items()})
    np.savez(sys.argv[3], **out)
    print("blocked:", all(m not in sys.modules for m in ("lark", "llvmlite", "spadc")))
''')


def test_a_built_library_matches_the_jit_to_the_last_bit_without_the_compiler(tmp_path):
    library, inputs, results = tmp_path / "mlp.so", tmp_path / "in.npz", tmp_path / "out.npz"
    aot.build(example("mlp.spad"), str(library))
    rng = np.random.default_rng(0)
    data = {"x": rng.standard_normal((4, 64)), "label": np.array([1, 2, 3, 9])}
    np.savez(inputs, **data)
    child = subprocess.run([sys.executable, "-c", CHILD, str(library), str(inputs), str(results)],
                           capture_output=True, text=True)
    assert child.returncode == 0, child.stderr
    assert child.stdout.strip() == "blocked: True"
    model = spadc.compile_file(example("mlp.spad"))
    model.init_params(5)
    loaded = np.load(results)
    assert np.array_equal(loaded["losses"], model.loss(**data))
    assert np.array_equal(loaded["logits"], model.forward(**data).outputs["logits"])
    for name, estimator in [("exact", None), ("rad", spadc.RAD(keep=0.1)), ("spad", spadc.SPAD(keep=0.1))]:
        for call in range(3):
            loss, grads = model.grad(estimator=estimator, seed=3, **data)
        assert loaded["loss_" + name] == loss
        for key, value in grads.items():
            assert np.array_equal(loaded[f"{name}_{key}"], value), (name, key)


def test_a_loaded_model_trains(tmp_path):
    library = tmp_path / "mlp.so"
    aot.build(example("mlp_digits.spad"), str(library), estimators=("exact",))
    model = spadrt.load(str(library))
    with np.load(os.path.join(EXAMPLES, "data", "digits_test.npz")) as data:
        data = {name: data[name] for name in data.files}
    history = model.fit(data, epochs=3)
    assert history.train_loss[-1] < history.train_loss[0] and history.train_accuracy[-1] > 0.8


def test_loading_refuses_other_abi_versions_and_other_libraries(tmp_path, monkeypatch):
    library = tmp_path / "rosenbrock.so"
    aot.build(example("rosenbrock.spad"), str(library), estimators=("exact",))
    monkeypatch.setattr(spadrt.library, "ABI_VERSION", spadrt.ABI_VERSION + 1)
    built, reads = spadrt.ABI_VERSION, spadrt.ABI_VERSION + 1
    with pytest.raises(spadc.SpadcError, match=f"was built for ABI version {built}, but this runtime reads version {reads}"):
        spadrt.load(str(library))
    monkeypatch.undo()
    with pytest.raises(spadc.SpadcError, match="not a library built by `spadc build`"):
        spadrt.load(next(p for p in ("/lib/x86_64-linux-gnu/libm.so.6", "/usr/lib/libm.so.6", "/lib64/libm.so.6")
                         if os.path.exists(p)))
    with pytest.raises(spadc.SpadcError, match="cannot load"):
        spadrt.load(str(tmp_path / "missing.so"))
    model = spadrt.load(str(library))
    assert model.loss() == pytest.approx(6316.2, rel=1e-12)
    with pytest.raises(spadc.SpadcError, match="has no gradient kernel for this estimator") as info:
        model.grad(estimator=spadrt.RAD(keep=0.1))
    # The message names real options only, never internal keys (issue 29).
    assert "(it holds: the exact gradient)" in str(info.value)
    assert "--keep 0.1 --sites weights --draw with_replacement`" in str(info.value)
    assert "--policy" not in str(info.value) and "keep0.1" not in str(info.value)


def test_the_c_example_trains(tmp_path):
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        pytest.skip("no C compiler on this machine")
    result = subprocess.run([sys.executable, "-m", "spadc", "build", example("rosenbrock.spad"), "-o",
                             str(tmp_path / "rosenbrock.o"), "--header", str(tmp_path / "rosenbrock.h")],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    program = tmp_path / "train"
    subprocess.run([compiler, "-O2", "-I", str(tmp_path), os.path.join(EXAMPLES, "c", "train_rosenbrock.c"),
                    str(tmp_path / "rosenbrock.o"), "-lm", "-o", str(program)], check=True)
    losses = _losses(subprocess.run([str(program)], capture_output=True, text=True, check=True).stdout)
    assert losses[0] == pytest.approx(6316.2) and all(b < a for a, b in zip(losses, losses[1:]))


def _losses(output: str) -> list[float]:
    return [float(line.split("loss")[1]) for line in output.splitlines() if "loss" in line]


@pytest.mark.parametrize("target", sorted(ELF_MACHINES))
def test_objects_for_each_target(tmp_path, target):
    obj = tmp_path / f"mlp_{target}.o"
    aot.build(example("mlp.spad"), str(obj), target=target, dtype="f32")
    header = obj.read_bytes()[:20]
    assert header[:4] == b"\x7fELF"
    bits = 64 if target in ("x86_64-linux-gnu", "aarch64-linux-gnu") else 32
    assert header[4] == (2 if bits == 64 else 1)
    assert struct.unpack("<H", header[18:20])[0] == ELF_MACHINES[target]
    if shutil.which("readelf"):
        symbols = subprocess.run(["readelf", "-sW", str(obj)], capture_output=True, text=True, check=True).stdout
        undefined = {line.split()[-1] for line in symbols.splitlines() if " UND " in line and line.split()[-1] != "UND"}
        assert not undefined & ALLOCATORS, undefined
        assert "__multi3" not in undefined  # Philox's 128-bit products are formed from 32-bit halves


@pytest.mark.parametrize("cpu", [None, "cortex-m4"])
def test_an_eabihf_object_passes_floats_in_fpu_registers_and_computes_with_the_fpu(tmp_path, cpu):
    # A caller built with -mfloat-abi=hard puts the train step's learning rate in s0: an object of the
    # soft-float ABI would read it from the stack (GNU ld refuses to link the two). The build
    # attribute Tag_ABI_VFP_args (28) = 1 says "VFP registers"; no __aeabi_f* call does float work.
    module, _, _ = aot.kernels_module(example("mlp.spad"), dtype="f32", native=False)
    from spadc.backend import jit
    machine = aot._target_machine("thumbv7em-none-eabihf", cpu)
    assembly = machine.emit_assembly(jit.optimise(str(module), machine))
    assert re.search(r"\.eabi_attribute\s+28,\s*1\b", assembly)
    assert "vmul.f32" in assembly
    assert not re.search(r"__aeabi_f(add|sub|mul|div)|__(add|sub|mul|div)sf3", assembly)

def test_an_aarch64_build_runs_under_qemu(tmp_path):
    cross, qemu = shutil.which("aarch64-linux-gnu-gcc"), shutil.which("qemu-aarch64")
    if not cross or not qemu:
        pytest.skip("needs aarch64-linux-gnu-gcc and qemu-aarch64 (apt-get install qemu-user gcc-aarch64-linux-gnu)")
    aot.build(example("rosenbrock.spad"), str(tmp_path / "rosenbrock.o"), header=str(tmp_path / "rosenbrock.h"),
              target="aarch64-linux-gnu")
    program = tmp_path / "train"
    subprocess.run([cross, "-O2", "-static", "-I", str(tmp_path), os.path.join(EXAMPLES, "c", "train_rosenbrock.c"),
                    str(tmp_path / "rosenbrock.o"), "-lm", "-o", str(program)], check=True)
    losses = _losses(subprocess.run([qemu, str(program)], capture_output=True, text=True, check=True).stdout)
    assert losses[0] == pytest.approx(6316.2) and all(b < a for a, b in zip(losses, losses[1:]))


F32_INPUTS = {
    "mlp.spad": {"x": np.linspace(-1, 1, 64), "label": 3},
    "irnn.spad": {"seq": np.sin(np.arange(28 * 28).reshape(28, 28) / 50.0), "label": 5},
    "reaction_diffusion.spad": {"u0": np.linspace(0, 1, 64), "target": np.linspace(1, 0, 64)},
}


@pytest.mark.parametrize("name", profile_examples(["rosenbrock.spad", "rastrigin.spad", "ackley.spad",
                                                   "styblinski_tang.spad", "sphere.spad", "mlp.spad", "mlp_import.spad",
                                                   "mlp_digits.spad", "irnn.spad", "reaction_diffusion.spad"]))
def test_f32_losses_are_within_tolerance_of_f64(name):
    inputs = F32_INPUTS.get(name, F32_INPUTS["mlp.spad"] if "mlp" in name else {})
    single, double = spadc.compile_file(example(name), dtype="f32"), spadc.compile_file(example(name))
    single.init_params(2)
    double.init_params(2)
    assert single.loss(**inputs) == pytest.approx(double.loss(**inputs), rel=F32_RTOL)


def test_an_f32_library_matches_its_own_jit(tmp_path):
    library = tmp_path / "mlp32.so"
    aot.build(example("mlp.spad"), str(library), dtype="f32", estimators=("exact",))
    loaded, jit = spadrt.load(str(library)), spadc.compile_file(example("mlp.spad"), dtype="f32")
    assert loaded.flat_params.dtype == np.float32
    assert loaded.loss(**F32_INPUTS["mlp.spad"]) == jit.loss(**F32_INPUTS["mlp.spad"])


def test_build_errors():
    with pytest.raises(spadc.SpadcError, match="-o must name"):
        aot.build(example("mlp.spad"), "model.dll")
    with pytest.raises(spadc.SpadcError, match="unknown estimator"):
        aot.build(example("mlp.spad"), "model.o", estimators=("adam",))
    with pytest.raises(spadc.SpadcError, match="unknown target"):
        aot.build(example("mlp.spad"), "model.o", target="vax-dec-vms")


STACK_ARRAY_LIMIT = 256  # bytes: the most a kernel may keep in one stack array (microcontroller stacks are small)
_ALLOCA = re.compile(r"= alloca (\[(\d+) x (\w+)\]|\w+)(, i64 %)?")
_SCALAR_BYTES = {"i1": 1, "i8": 1, "i64": 8, "double": 8, "float": 4}


SWAP = """
param x: f64[100]
let a = x
let b = x * 2.0
for t in 0..3 {
  let c = a
  a = b
  b = c
}
loss sum(a * b)
"""  # the carried values trade places: the copy back is staged (once through a 400-byte stack array)


@pytest.mark.parametrize("name", quick(["mlp_digits.spad", "irnn.spad", "reaction_diffusion.spad", "swap", "cnn_digits.spad"],
                                      ["irnn.spad", "swap"]))  # (a loop over products; the staged copy)
def test_thumbv7em_kernels_keep_no_stack_array_above_256_bytes(name, tmp_path):
    # Every tensor lives in the workspace; the stack holds scalars and Philox's 32-byte lane buffer.
    from spadc.backend import jit
    if name == "swap":
        (tmp_path / "swap.spad").write_text(SWAP)
    module, _, _ = aot.kernels_module(str(tmp_path / "swap.spad") if name == "swap" else example(name), dtype="f32",
                                      native=False)  # (as `spadc build --target` does: one lane)
    machine = aot._target_machine("thumbv7em-none-eabihf", None)
    optimised = str(jit.optimise(str(module), machine))
    arrays = []
    for match in _ALLOCA.finditer(optimised):
        assert not match.group(4), f"a stack array of run-time size: {match.group(0)}"
        count, element = (int(match.group(2)), match.group(3)) if match.group(2) else (1, match.group(1))
        arrays.append(count * _SCALAR_BYTES[element])
    assert max(arrays, default=0) <= STACK_ARRAY_LIMIT, max(arrays)


@pytest.mark.filterwarnings("ignore::spadrt.estimators.SamplingWarning")  # RAD gates little here: bits are the point
def test_vjp_and_jacobian_entries_match_the_jit_to_the_last_bit(tmp_path):
    library, header = tmp_path / "projection.so", tmp_path / "projection.h"
    source = tmp_path / "projection.spad"
    source.write_text(PROJECTION)
    aot.build(str(source), str(library), header=str(header), estimators=("exact", "rad"), entries=("vjp", "jacobian"))
    loaded, jit = spadrt.load(str(library)), spadc.compile_file(str(source))
    rng = np.random.default_rng(0)
    data = {"cam": rng.uniform(0.5, 1.5, (5, 4)), "pt": rng.standard_normal((5, 3)), "obs": rng.standard_normal((5, 2))}
    for model in (loaded, jit):
        model.set_params({"k": np.array(0.3), "s": np.array([1.1, 0.9])})
    cotangents = {"residual": rng.standard_normal((5, 2))}  # the library seeds the loss too, by zeros
    for estimator in (None, spadrt.RAD(keep=0.1)):
        a, b = loaded.vjp(cotangents, estimator=estimator, seed=3, **data), jit.vjp(cotangents, estimator=estimator,
                                                                                    seed=3, **data)
        for part in ("params", "inputs", "outputs"):
            for key, value in getattr(b, part).items():
                assert np.array_equal(getattr(a, part)[key], value), (part, key, estimator)
    for output in ("residual", "loss"):
        for wrt in ("params", "inputs", "pt"):
            got, expected = loaded.jacobian(output, wrt, **data), jit.jacobian(output, wrt, **data)
            for key in (expected if isinstance(expected, dict) else [None]):
                pair = (got, expected) if key is None else (got[key], expected[key])
                assert np.array_equal(*pair), (output, wrt, key)
    assert np.array_equal(loaded.input_grad(**data)[1]["cam"], jit.input_grad(**data)[1]["cam"])
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler:  # the header declares them in C
        program = tmp_path / "uses.c"
        program.write_text('#include "projection.h"\nint main(void) { return (int)(sizeof &projection_vjp + '
                           'PROJECTION_JACOBIAN_RESIDUAL_INPUTS_INPUT_COTANGENT_RESIDUAL_1 + PROJECTION_WORKSPACE_VJP '
                           '+ sizeof &projection_grad_vjp_rad) * 0; }\n')
        subprocess.run([compiler, "-fsyntax-only", "-Wall", "-Werror", "-I", str(tmp_path), str(program)], check=True)
    plain = tmp_path / "plain.so"
    aot.build(str(source), str(plain), estimators=("exact",))
    with pytest.raises(spadc.SpadcError, match=r"which this library was built without \(build it with "
                                               r"`spadc build \.\.\. --entry jacobian`\)"):
        spadrt.load(str(plain)).jacobian("residual", "inputs", **data)


def test_es_and_pes_from_a_library_with_particles_match_the_jit_to_the_last_bit(tmp_path):
    # ES over a batch of data rows (mlp_digits), PES over a model with state: the particle kernel of a
    # library built with `--entry particles` gives the JIT's estimates bit for bit, step by step.
    for name, estimator, calls, data in (
            ("mlp_digits.spad", spadrt.ES(sigma=0.05, particles=16), 1, True),
            ("influence_balancing.spad", spadrt.PES(sigma=0.1, particles=8), 2, False)):
        library, header = tmp_path / name.replace(".spad", ".so"), tmp_path / name.replace(".spad", ".h")
        aot.build(example(name), str(library), header=str(header), estimators=("exact",), entries=("particles",))
        loaded, jit = spadrt.load(str(library)), spadc.compile_file(example(name))
        jit.init_params(seed=4)
        loaded.set_params(jit.params)
        inputs = {}
        if data:
            rng = np.random.default_rng(4)
            inputs = {"x": rng.standard_normal((5, 64)), "label": np.arange(5) % 10}
        for model in (loaded, jit):
            model.estimates = [model.grad(estimator=estimator, seed=9, step=k, **inputs) for k in range(calls)]
        for (loss_a, grads_a), (loss_b, grads_b) in zip(loaded.estimates, jit.estimates):
            assert loss_a == loss_b
            for key in grads_b:
                assert np.array_equal(grads_a[key], grads_b[key]), (name, key)
        prefix = name.replace(".spad", "")
        compiler = shutil.which("cc") or shutil.which("gcc")
        if compiler:  # the header declares it in C
            program = tmp_path / f"uses_{prefix}.c"
            program.write_text(f'#include "{header.name}"\nint main(void) {{ return (int)(sizeof &{prefix}_particles + '
                               f'{prefix.upper()}_WORKSPACE_PARTICLES) * 0; }}\n')
            subprocess.run([compiler, "-fsyntax-only", "-Wall", "-Werror", "-I", str(tmp_path), str(program)], check=True)
    plain = tmp_path / "plain.so"
    aot.build(example("mlp.spad"), str(plain), estimators=("exact",))
    with pytest.raises(spadc.SpadcError, match=r"`spadc build \.\.\. --entry particles`"):
        spadrt.load(str(plain)).grad(estimator=spadrt.ES(particles=4), x=np.zeros(64), label=1)
