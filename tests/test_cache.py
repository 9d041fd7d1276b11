"""The on-disk compile cache (spadc/cache.py): warm loads, what invalidates an entry, safety.

Oracles: the same model compiled without the cache (bit for bit), and the files on disk.
"""

import os
import shutil
import stat
import subprocess
import sys

import numpy as np
import pytest

import spadc
import spadc.api
from spadc import cache

from conftest import EXAMPLES, example

INPUTS = {"x": np.linspace(-1, 1, 64), "label": 3}
pytestmark = pytest.mark.private_cache  # these tests count and damage cache entries


def _results(model):
    model.init_params(4)
    loss, exact = model.grad(**INPUTS)
    _, sampled = model.grad(estimator=spadc.RAD(keep=0.1), seed=2, **INPUTS)
    return model.loss(**INPUTS), loss, exact, sampled


def _same(a, b):
    assert a[0] == b[0] and a[1] == b[1]
    for left, right in ((a[2], b[2]), (a[3], b[3])):
        for name in left:
            np.testing.assert_array_equal(left[name], right[name])


def _entries():
    folder = cache.directory()
    return sorted(f for f in os.listdir(folder) if f.endswith(".json")) if os.path.isdir(folder) else []


def test_a_warm_load_runs_neither_front_end_nor_llvm_and_gives_the_same_bits(monkeypatch):
    cold = _results(spadc.compile_file(example("mlp.spad")))
    assert len(_entries()) == 4  # the model's layout; the exact gradient, the forward kernel and RAD, each when first run
    spadc.api._CACHE.clear()

    def no_compiling(*args, **kwargs):
        raise AssertionError("compiled although the cache holds the kernels")

    monkeypatch.setattr(spadc.api, "build", no_compiling)
    monkeypatch.setattr(spadc.api.jit, "compile_ir", no_compiling)
    _same(_results(spadc.compile_file(example("mlp.spad"))), cold)


def test_the_cache_matches_an_uncached_compile():
    _same(_results(spadc.compile_file(example("mlp.spad"))), _results(spadc.compile_file(example("mlp.spad"),
                                                                                         cache=False)))
    spadc.api._CACHE.clear()
    _same(_results(spadc.compile_file(example("mlp.spad"))), _results(spadc.compile_file(example("mlp.spad"),
                                                                                         cache=False)))


def test_without_the_cache_nothing_is_written():
    spadc.compile_file(example("mlp.spad"), cache=False)
    assert _entries() == []


def test_a_changed_import_is_a_miss(tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(EXAMPLES, folder, ignore=shutil.ignore_patterns("data", "c"))
    path = str(folder / "mlp_import.spad")
    inputs = {"x": np.linspace(-1, 1, 64), "label": 1}
    before = spadc.compile_file(path).grad(**inputs)[1]
    library = folder / "lib" / "activations.spad"
    library.write_text(library.read_text().replace("const LEAK = 0.01", "const LEAK = 0.2"))
    spadc.api._CACHE.clear()
    after = spadc.compile_file(path).grad(**inputs)[1]
    reference = spadc.compile_file(path, cache=False).grad(**inputs)[1]
    assert any(not np.array_equal(after[k], before[k]) for k in after)  # the leak of negative inputs changed
    for name in after:
        np.testing.assert_array_equal(after[name], reference[name])


def test_a_corrupted_entry_is_a_miss_not_code_run():
    cold = _results(spadc.compile_file(example("mlp.spad")))
    for name in os.listdir(cache.directory()):
        path = os.path.join(cache.directory(), name)
        if name.endswith(".o") and os.path.getsize(path):  # (the model's layout entry has no code)
            data = bytearray(open(path, "rb").read())
            data[len(data) // 2] ^= 0xFF
            open(path, "wb").write(bytes(data))
    spadc.api._CACHE.clear()
    _same(_results(spadc.compile_file(example("mlp.spad"))), cold)


def test_files_are_private_and_a_shared_directory_is_not_used(tmp_path, monkeypatch):
    spadc.compile_file(example("mlp.spad"))
    folder = cache.directory()
    assert stat.S_IMODE(os.stat(folder).st_mode) == 0o700
    assert all(stat.S_IMODE(os.stat(os.path.join(folder, f)).st_mode) == 0o600 for f in os.listdir(folder))
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o777)
    monkeypatch.setenv(cache.ENVIRONMENT_VARIABLE, str(shared))
    spadc.api._CACHE.clear()
    with pytest.warns(spadc.SpadcWarning, match="not private to this user"):
        spadc.compile_file(example("mlp.spad"))
    assert os.listdir(shared) == []


CHILD = """
import sys, numpy as np, spadc
model = spadc.compile_file(sys.argv[1])
model.init_params(1)
print(repr(model.loss(x=np.linspace(-1, 1, 64), label=3)))
"""


SHARING_PROCESSES = 2  # each compiles the same model cold, at the same time (a third adds 130 MB, no new race)


def test_processes_sharing_the_cache_at_once_all_succeed():
    runs = [subprocess.Popen([sys.executable, "-c", CHILD, example("mlp_digits.spad")], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True) for _ in range(SHARING_PROCESSES)]
    outputs = [run.communicate(timeout=300) for run in runs]
    assert all(run.returncode == 0 for run in runs), [err for _, err in outputs]
    assert len({out for out, _ in outputs}) == 1
    # no temporaries left (beside the entries: the parser's tables)
    assert not [f for f in os.listdir(cache.directory()) if not f.endswith((".json", ".o", ".lark"))]


def test_the_cli_can_skip_the_cache(tmp_path):
    data = tmp_path / "in.npz"
    np.savez(data, **INPUTS)
    result = subprocess.run([sys.executable, "-m", "spadc", "run", example("mlp.spad"), "--inputs", str(data),
                             "--no-cache"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert _entries() == []
    result = subprocess.run([sys.executable, "-m", "spadc", "run", example("mlp.spad"), "--inputs", str(data)],
                            capture_output=True, text=True)
    assert result.returncode == 0 and _entries()


def test_a_module_compiled_again_in_one_process_is_loaded_not_optimised_again(monkeypatch):
    """spadc/backend/jit.py keeps recent object code by the module's text: the same bits, no LLVM."""
    from spadc.backend import jit
    text = "param w: f64[3] = 0.25\ninput x: f64[3]\nloss sum(tanh(w * x)) * 1.4142"
    compiled = spadc.api.build(spadc.frontend.text_source(text, "again.spad"), ".")
    first = compiled.variant(None)[1]  # (its quick code: spadc/backend/tiers.py)
    optimised = []
    real = jit.optimise
    monkeypatch.setattr(jit, "optimise", lambda *args, **kwargs: optimised.append(1) or real(*args, **kwargs))
    again = jit.compile_ir(compiled.llvm_ir, ("grad",), jit.QUICK)
    assert optimised == [] and again.object_code == first.object_code
    grad = spadc.api.model_of(compiled).grad(x=np.ones(3))
    loaded = spadc.api.model_of(spadc.api.build(spadc.frontend.text_source(text, "again.spad"), ".", max_memory="1G"))
    assert optimised == []  # (another plan's model, the same kernel's text: loaded)
    assert loaded.grad(x=np.ones(3))[1]["w"].tobytes() == grad[1]["w"].tobytes()
    # The control: forgotten, the module is optimised again.
    monkeypatch.setattr(jit, "_recent", type(jit._recent)())
    jit.compile_ir(compiled.llvm_ir, ("grad",), jit.QUICK)
    assert optimised == [1]
