"""`prunec check`, `fmt` and `schema` from the command line: exit codes, output, import cost."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from prunec.cli import main
from prunec.errors import ExitCode

ROOT = Path(__file__).resolve().parent.parent
SPECS = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "specs").glob("*.prune"))
GOOD = 'model "org/m"\ndomain a { data "a.jsonl" }\nprune { budget 25% }\n'
UGLY = 'model   "org/m"   # the model\ndomain a {data "a.jsonl"}\n\n\n\nprune {budget 25 %}\n'
BAD = 'model "org/m"\nprune {\n  budgett 25%\n}\n'


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as info:
        main(args)
    out, err = capsys.readouterr()
    code = info.value.code
    return (code if isinstance(code, int) else 0), out, err


@pytest.fixture
def in_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)


def test_examples_pass_check_and_fmt_check(
    in_root: None, capsys: pytest.CaptureFixture[str]
) -> None:
    assert len(SPECS) >= 3 and "specs/math_tutor.prune" in SPECS
    code, out, err = run_cli(["check", *SPECS], capsys)
    assert code == ExitCode.OK, err
    assert out.splitlines() == [f"ok  {spec}" for spec in SPECS]
    assert "error" not in err
    code, out, err = run_cli(["fmt", "--check", *SPECS], capsys)
    assert (code, out, err) == (ExitCode.OK, "", "")


def test_check_reports_errors_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good, bad = tmp_path / "good.prune", tmp_path / "bad.prune"
    good.write_text(GOOD)
    bad.write_text(BAD)
    code, out, err = run_cli(["check", str(good), str(bad)], capsys)
    assert code == ExitCode.SPEC
    assert out == f"ok  {good}\n"
    assert f"{bad}:3:3: error[E102]: unknown setting `budgett` in `prune`" in err
    assert "did you mean `budget`?" in err and "1 of 2 files have errors" in err
    assert "Traceback" not in err


def test_check_json_and_directories(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "nested").mkdir()
    (tmp_path / "good.prune").write_text(GOOD)
    (tmp_path / "nested" / "bad.prune").write_text(BAD)
    code, out, _ = run_cli(["check", "--json", str(tmp_path)], capsys)
    report = json.loads(out)
    assert code == ExitCode.SPEC
    assert [(Path(r["file"]).name, r["ok"]) for r in report] == [
        ("good.prune", True),
        ("bad.prune", False),
    ]
    (error,) = report[1]["diagnostics"]
    assert (error["code"], error["line"], error["col"], error["end_col"]) == ("E102", 3, 3, 10)
    assert error["help"] == "did you mean `budget`?"
    assert report[0]["diagnostics"][0]["severity"] == "warning"


def test_check_colour_on_request(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.prune"
    bad.write_text(BAD)
    _, _, plain = run_cli(["check", str(bad)], capsys)
    _, _, colored = run_cli(["check", "--color", "always", str(bad)], capsys)
    assert "\x1b[" not in plain and "\x1b[1;31merror[E102]" in colored
    assert re.sub(r"\x1b\[[0-9;]*m", "", colored) == plain


def test_check_missing_data_is_a_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = tmp_path / "s.prune"
    spec.write_text(GOOD)
    code, out, err = run_cli(["check", str(spec)], capsys)
    assert code == ExitCode.OK and out == f"ok  {spec}\n"
    assert "warning[W301]: data file `a.jsonl` does not exist yet" in err
    assert run_cli(["check", "-q", str(spec)], capsys) == (ExitCode.OK, f"ok  {spec}\n", "")


def test_check_unreadable_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(["check", str(tmp_path / "missing.prune")], capsys)
    assert code == ExitCode.SPEC and "error[E100]: cannot read" in err


def test_fmt_check_diff_and_write(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = tmp_path / "s.prune"
    spec.write_text(UGLY)
    code, out, err = run_cli(["fmt", "--check", str(spec)], capsys)
    assert code == ExitCode.FMT and out == "" and f"would reformat {spec}" in err
    assert spec.read_text() == UGLY
    code, out, _ = run_cli(["fmt", "--diff", str(spec)], capsys)
    assert code == ExitCode.FMT
    assert f"--- {spec}" in out and "+prune {\n+  budget 25%\n+}" in out
    code, _, err = run_cli(["fmt", str(spec)], capsys)
    assert code == ExitCode.OK and f"formatted {spec}" in err
    assert "# the model" in spec.read_text()
    assert run_cli(["fmt", "--check", str(spec)], capsys)[0] == ExitCode.OK


def test_fmt_stdin_to_stdout() -> None:
    script = Path(sys.executable).parent / "prunec"
    proc = subprocess.run([str(script), "fmt", "-"], input=UGLY, capture_output=True, text=True)
    assert proc.returncode == ExitCode.OK
    assert proc.stdout.startswith('model "org/m"  # the model\n\ndomain a {\n  data "a.jsonl"\n}')
    check = subprocess.run(
        [str(script), "fmt", "--check", "-"], input=UGLY, capture_output=True, text=True
    )
    assert check.returncode == ExitCode.FMT and check.stdout == ""


def test_fmt_on_invalid_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = tmp_path / "s.prune"
    spec.write_text('model "x" {')
    code, _, err = run_cli(["fmt", str(spec)], capsys)
    assert code == ExitCode.SPEC and "error[E104]" in err and "Traceback" not in err
    assert spec.read_text() == 'model "x" {'


def test_schema_is_json_schema_of_plan(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(["schema"], capsys)
    schema = json.loads(out)
    assert code == ExitCode.OK and schema["title"] == "Plan"
    assert {"model", "domains", "prune", "verify", "targets"} <= set(schema["properties"])
    assert "spans" not in schema["properties"]


_NO_HEAVY_IMPORTS = """
import sys
from prunec.cli import main
try:
    main(sys.argv[1:])
except SystemExit as exit:
    code = exit.code
heavy = sorted(m for m in ("torch", "transformers", "onnx", "onnxruntime") if m in sys.modules)
print("HEAVY", heavy, "EXIT", code)
"""


@pytest.mark.parametrize("command", [["check"], ["fmt", "--check"]])
def test_check_and_fmt_do_not_import_torch(command: list[str]) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", _NO_HEAVY_IMPORTS, *command, *SPECS],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.stdout.strip().splitlines()[-1] == "HEAVY [] EXIT 0", proc.stderr


_FRONT_END_ONLY = """
import sys
from pathlib import Path
from prunec.syntax import analyze, check_file, validate_against_model
for spec in sys.argv[1:]:
    check_file(spec)
bad = analyze('model "m"\\ndomain d { data "d.jsonl" }\\n'
              'prune { budget 2 layers\\n strategy domian\\n}\\n')
codes = sorted(d.code for d in bad.diagnostics)
search = analyze('model "m"\\ndomain d { data "d.jsonl" }\\n'
                 'prune { budget 2 layers\\n strategy domain\\n search 8\\n}\\n')
codes += sorted(d.code for d in search.diagnostics)
plan = analyze('model "m"\\ndomain d { data "d.jsonl" }\\nprune { budget 20 layers }\\n').plan
codes += sorted(d.code for d in validate_against_model(plan, 12))
loaded = sorted(m for m in ("prunec.planning", "prunec.scoring", "torch") if m in sys.modules)
print("CODES", codes, "LOADED", loaded)
"""


def test_front_end_depends_only_on_plan_and_errors() -> None:
    """The front end reads strategy declarations and constraint rules from `prunec.plan`:
    checking every example spec, an unknown strategy (E210), another strategy's option
    (E232) and a budget too large for the model (E301) imports neither the planner nor torch."""
    proc = subprocess.run(
        [sys.executable, "-c", _FRONT_END_ONLY, *SPECS],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    last = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else proc.stderr
    assert last == "CODES ['E210', 'E232', 'E301'] LOADED []", proc.stderr


def test_console_script_never_prints_a_traceback(tmp_path: Path) -> None:
    spec = tmp_path / "bad.prune"
    spec.write_text('model "x"\ndomain d { data "a" weight -1 }\nprune { budget 200% }\n\x00')
    script = Path(sys.executable).parent / "prunec"
    proc = subprocess.run([str(script), "check", str(spec)], capture_output=True, text=True)
    assert proc.returncode == ExitCode.SPEC
    assert "Traceback" not in proc.stderr and "error[E101]" in proc.stderr


@pytest.mark.skipif(os.environ.get("PRUNEC_OFFLINE") == "1", reason="needs the build backend")
def test_wheel_ships_the_grammar(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", str(ROOT), "-w", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    (wheel,) = tmp_path.glob("prunec-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        assert "prunec/_grammar/prunec.lark" in archive.namelist()
        archive.extractall(tmp_path / "site")
    probe = (
        "import sys; sys.path.insert(0, sys.argv[1]);"
        "from prunec.syntax.parser import grammar_path; from prunec.syntax import parse;"
        "parse('model \"o/m\" prune { remove 1 }'); print(grammar_path())"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe, str(tmp_path / "site")], capture_output=True, text=True
    )
    assert out.stdout.strip() == str(tmp_path / "site" / "prunec" / "_grammar" / "prunec.lark"), (
        out.stderr
    )
