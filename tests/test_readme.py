"""The README's examples run as printed (issue 29): its Python blocks in order, in one namespace, in
a scratch directory (paths under examples/ pointed at the checkout), with spadc's warnings as
errors, so that an example which diverges or misuses an option fails here. The Ray section's block
runs where Ray is installed (the optional extra; CI's second step), and is skipped elsewhere. The Quick start's shell
block is what .ci/run executes."""

import importlib.util
import os
import re
import subprocess
import sys
import warnings

import spadc

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BLOCK = re.compile(r"^```(python|sh)\n(.*?)^```", re.M | re.S)


def _blocks():
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as file:
        return [(kind, text.replace("examples/", os.path.join(ROOT, "examples") + "/")) for kind, text in
                BLOCK.findall(file.read())]


def test_the_readme_python_examples_run_as_printed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    blocks = _blocks()
    builds = [line.split("#")[0].split() for kind, text in blocks if kind == "sh" for line in text.splitlines()
              if line.startswith("spadc build") and "--target" not in line]
    for command in builds:  # the library the runtime-only example loads
        subprocess.run([sys.executable, "-m", "spadc", *command[1:]], check=True, capture_output=True)
    namespace = {}
    python = [text for kind, text in blocks if kind == "python"]
    assert len(python) >= 5
    with_ray = importlib.util.find_spec("ray") is not None  # the Ray section's block needs the extra
    monkeypatch.setenv("RAY_ADDRESS", "local")  # a Ray instance of its own, not another test's cluster
    with warnings.catch_warnings():
        warnings.simplefilter("error", spadc.SpadcWarning)
        for text in python:
            if "spadc.Ray(" in text and not with_ray:
                continue  # runs where `pip install .[ray]` was (CI's second step)
            exec(compile(text, "README.md", "exec"), namespace)  # noqa: S102 - the README's own code
    if with_ray:
        import ray
        ray.shutdown()
        assert namespace["loss"] >= 0 and len(namespace["rows"]) == 12
    trained = namespace["hist"]  # the last fit: K-FAC
    assert trained.train_loss[-1] < 0.5 * trained.train_loss[0] and trained.stopped is None
