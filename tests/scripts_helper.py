"""Import the command-line scripts (they are not a package) for in-process tests."""

import importlib.util
from pathlib import Path

_SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"


def _load(name):
    spec = importlib.util.spec_from_file_location(f"_script_{name}", _SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


report_main = _load("report").main
pilot_report = _load("pilot_report")
fmn_frames = _load("fmn_frames")
