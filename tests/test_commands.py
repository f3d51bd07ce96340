"""The command lines sit above the library: no module imports an entry script (train.py,
eval.py) and only commands import a command module; ``setup.py`` installs the commands of
``ldm_ext/commands.py`` as console scripts (and no script as a module); the commands that
train share one non-finite-loss exit; every argparse mistake is one line."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from cli_mistakes import user_env
from ldm_ext import commands
from ldm_ext.cli import ArgumentParser, InputError, RunStopped, run_training_cli

ROOT = Path(__file__).resolve().parent.parent
LIBRARY = ("ldm_ext", "datamodules", "callbacks")
SCRIPTS = {"train", "eval"}  # the entry scripts at the top level


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(path: Path) -> set[str]:
    """The absolute module names ``path`` imports (at any depth of its code)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def in_application(name: str) -> bool:
    return any(name == a or name.startswith(a + ".") for a in commands.APPLICATIONS)


def test_no_module_imports_an_entry_script_and_only_applications_import_applications():
    for path in (ROOT / "benchmarks").rglob("*.py"):
        assert not imported(path) & SCRIPTS, f"{path} imports an entry script"
    files = [p for top in LIBRARY for p in (ROOT / top).rglob("*.py")]
    assert len(files) > 100
    for path in files:
        names = imported(path)
        assert not names & SCRIPTS, f"{path} imports an entry script"
        importer = module_name(path)
        if in_application(importer) or importer.endswith("__main__"):  # python -m entries
            continue
        assert not [n for n in names if in_application(n)], f"{path} imports an application"


def test_the_library_imports_no_floor_above_it():
    """``ldm_ext`` outside the applications imports neither ``datamodules`` nor
    ``callbacks``: training (which builds a DataModule and the callbacks) is an
    application, not a library module."""
    for path in (ROOT / "ldm_ext").rglob("*.py"):
        if in_application(module_name(path)):
            continue
        upward = {n for n in imported(path) if n.split(".")[0] in {"datamodules", "callbacks"}}
        assert not upward, f"{path} imports {sorted(upward)}"


def test_setup_installs_each_command_and_no_script_module():
    tree = ast.parse((ROOT / "setup.py").read_text())
    keywords = {k.arg for node in ast.walk(tree) if isinstance(node, ast.Call)
                for k in node.keywords}
    assert "py_modules" not in keywords and "entry_points" in keywords
    listed = next(ast.literal_eval(node.value) for node in tree.body
                  if isinstance(node, ast.Assign) and node.targets[0].id == "COMMANDS")
    defined = {n.name for n in ast.parse(Path(commands.__file__).read_text()).body
               if isinstance(n, ast.FunctionDef)}
    assert set(listed.values()) == defined and "eval" in listed
    assert all(callable(getattr(commands, name)) for name in listed.values())


def test_a_console_script_runs_away_from_the_checkout(tmp_path):
    """``idforge-train`` in another folder finds the default experiment (configs/ is
    found from the package) and tells a bad key in one line, before torch loads."""
    code = ("import sys; sys.argv = ['idforge-train', 'trainer.nokey=1']\n"
            "from ldm_ext.commands import train; sys.exit(train())")
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=user_env(tmp_path),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("train: error: ") and "trainer.nokey" in done.stderr
    assert done.stderr.count("\n") == 1 and not (tmp_path / "runs").exists()


@pytest.mark.parametrize("prog", ["train", "fit"])
def test_a_stopped_run_is_one_line_and_exit_3(prog, capsys):
    def main(argv):
        raise RunStopped("non-finite training loss (nan) at step 3\nthe last checkpoint is kept")

    assert run_training_cli(main, [], prog) == 3
    assert capsys.readouterr().err == (f"{prog}: stopped: non-finite training loss (nan) at "
                                       "step 3; the last checkpoint is kept\n")


def test_fit_stops_with_exit_3_on_a_non_finite_loss(tmp_path, monkeypatch, capsys):
    from PIL import Image

    from ldm_ext import fit
    from ldm_ext.methods.base import NonFiniteLossError

    def diverge(cfg):
        raise NonFiniteLossError("non-finite training loss (inf) at step 7")

    Image.new("RGB", (64, 64), "gray").save(tmp_path / "alice.png")
    monkeypatch.setattr(fit, "fit_identity", diverge)
    config = str(ROOT / "configs" / "experiment" / "sefi_ide_tiny.yaml")
    assert fit.main(["--photo", str(tmp_path / "alice.png"), "--config", config,
                     f"output_dir={tmp_path}"]) == 3
    assert capsys.readouterr().err == "fit: stopped: non-finite training loss (inf) at step 7\n"


def test_argparse_mistakes_exit_or_raise_as_one_line(capsys):
    exiting = ArgumentParser(prog="tool")
    exiting.add_argument("--n", type=int, required=True)
    with pytest.raises(SystemExit) as done:
        exiting.parse_args(["--n", "x"])
    assert done.value.code == 2
    assert capsys.readouterr().err == ("tool: error: argument --n: invalid int value: 'x' "
                                       "(--help for usage)\n")
    raising = ArgumentParser(prog="tool", raise_errors=True, hint="--help lists the flags")
    raising.add_argument("--n", type=int, required=True)
    with pytest.raises(InputError, match=r"^the following arguments are required: --n "
                                         r"\(--help lists the flags\)$"):
        raising.parse_args([])
