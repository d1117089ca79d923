"""pytest plugin for `make test-lowest`: the core tests, in a venv that has no extras.

The lowest-versions venv holds only the core dependencies (.ci/lowest-versions.txt). A test that needs an
extra (timm, open_clip, torchvision, transformers, av, onnx, pyarrow, scikit-learn, tensorboard, ...) is
skipped there instead of failing, whether it says so (pytest.importorskip) or not:

- its module, or a helper it calls, fails to import an extra (ModuleNotFoundError naming one), or
- it fails with the library's own "pip install perception-encoder[<extra>]" message (a missing extra).

A library module that imports an extra at its top level is NOT skipped: that would break
`import perception_encoder...` for a core install, which is what this run is here to catch. Every other
failure stays a failure. Loaded with `-p pytest_core_only` (PYTHONPATH=.ci); the main suite never loads it.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

EXTRAS = {
    "timm",
    "open_clip",
    "torchvision",
    "transformers",
    "tokenizers",
    "av",
    "onnx",
    "onnxruntime",
    "onnxscript",
    "pyarrow",
    "sklearn",
    "tensorboard",
}
_HINT = re.compile(r"perception-encoder\[(\w+)\]")
_NO_MODULE = re.compile(r"No module named '([\w.]+)'")
_SRC = str(Path(__file__).resolve().parent.parent / "src") + "/"


def _extra(name: str | None) -> str | None:
    top = (name or "").split(".")[0]
    return top if top in EXTRAS else None


def _from_library_top_level(exc: BaseException) -> bool:
    """Whether the failed import statement sits at the top level of a library module."""
    frames = [
        tb.tb_frame for tb in _walk(exc.__traceback__) if not tb.tb_frame.f_code.co_filename.startswith("<")
    ]
    frames = [f for f in frames if "/importlib/" not in f.f_code.co_filename]
    if not frames:
        return False
    last = frames[-1]
    return last.f_code.co_filename.startswith(_SRC) and last.f_code.co_name == "<module>"


def _walk(tb):
    while tb is not None:
        yield tb
        tb = tb.tb_next


def _chain(exc: BaseException | None):
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def _needed_extra(excinfo: pytest.ExceptionInfo, text: str) -> str | None:
    for exc in _chain(excinfo.value):
        if isinstance(exc, ModuleNotFoundError) and _extra(exc.name):
            return None if _from_library_top_level(exc) else _extra(exc.name)
    m = _HINT.search(text)
    return f"perception-encoder[{m.group(1)}]" if m else None


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.failed and call.excinfo is not None:
        extra = _needed_extra(call.excinfo, rep.longreprtext)
        if extra:
            path, lineno, _ = item.location
            rep.outcome = "skipped"
            rep.longrepr = (path, (lineno or 0) + 1, f"Skipped: needs {extra} (not in the core-only venv)")


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield
    rep = outcome.get_result()
    if rep.failed and isinstance(collector, pytest.Module):
        text = str(rep.longrepr)
        m = _NO_MODULE.search(text)
        # the last "<file>:<line>: in <module>" of the traceback is the import statement that failed
        where = re.findall(r"^(\S+):\d+: in <module>$", text, flags=re.M)
        in_library = bool(where) and "perception_encoder/" in where[-1]
        if m and _extra(m.group(1)) and not in_library:
            rep.outcome = "skipped"
            rep.longrepr = (
                str(collector.path),
                0,
                f"Skipped: needs {_extra(m.group(1))} (not in the core-only venv)",
            )
