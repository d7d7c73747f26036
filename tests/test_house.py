"""The house rules: formatted and linted code, a docs site that builds, a short README, one `hf-vit` command, and
imports that keep the wings apart (checkpoints carry the models' code; the library never imports the lessons)."""

import ast
import subprocess
import sys

import pytest

from hf_vit import commands

from conftest import REPO_ROOT, run_without


@pytest.mark.parametrize("script", ["finetune.py", "convert_checkpoint.py"])
def test_main_scripts_need_neither_timm_nor_matplotlib(script, tmp_path):
    result = run_without(
        ["timm", "matplotlib"],
        f"""
        import runpy, sys
        sys.argv = [{script!r}, "--help"]
        try:
            runpy.run_path({str(REPO_ROOT / "scripts" / script)!r}, run_name="__main__")
        except SystemExit as exit:
            assert exit.code in (0, None), exit.code
        assert "timm" not in sys.modules and "matplotlib" not in sys.modules
        """,
        cwd=tmp_path,
    )
    assert "--output_dir" in result.stdout


LIBRARY = REPO_ROOT / "hf_vit"


def run(*command: str) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, cwd=REPO_ROOT, timeout=600)


@pytest.mark.parametrize("command", [("ruff", "check", "."), ("ruff", "format", "--check", ".")])
def test_ruff_finds_nothing_to_fix(command):
    result = run(sys.executable, "-m", *command)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]


def test_the_docs_site_builds_strictly(tmp_path):
    result = run(sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site"))
    assert result.returncode == 0, result.stderr[-4000:]
    assert (tmp_path / "site" / "architecture" / "index.html").is_file()
    assert (
        "HfSwinConfig" in (tmp_path / "site" / "models" / "swin" / "index.html").read_text()
    )  # the API, from docstrings


def test_the_readme_is_short_and_shows_the_two_commands():
    readme = (REPO_ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 300
    assert "accelerate launch -q --config_file accelerate.yaml scripts/finetune.py" in readme
    assert "```bash\nbash .ci/run\n```" in readme  # the test command installs what the suite needs, then runs it
    ci = (REPO_ROOT / ".ci" / "run").read_text()
    assert "apt-get install" in ci and 'python -m pip install -e ".[dev]" && python -m pytest' in ci


def test_hf_vit_lists_its_jobs_and_runs_them(capsys):
    result = run("hf-vit", "--help")  # the installed command
    assert result.returncode == 0, result.stderr
    for job in ("finetune", "pretrain", "convert", "export", "probe", "evaluate", "predict", "demo"):
        assert f"\n  {job} " in result.stdout
    with pytest.raises(SystemExit):
        commands.main(["finetune", "--help"])
    assert "--output_dir" in capsys.readouterr().out
    assert commands.main(["finetun"]) == 2 and "did you mean finetune?" in capsys.readouterr().err


def imported_modules(path) -> set[str]:
    """The modules a file imports, relative imports resolved to hf_vit's package names."""
    package = ".".join(path.relative_to(REPO_ROOT).with_suffix("").parts[:-1])
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                names.add(".".join(base + ([node.module] if node.module else [])))
            else:
                names.add(node.module)
    return names


def test_checkpoints_can_carry_the_models_code():
    """Every file of hf_vit/models imports only its neighbours, torch, transformers and the standard library:
    `save_pretrained` copies them into the checkpoint, and they must load where hf_vit is not installed."""
    allowed_roots = {"torch", "transformers", *sys.stdlib_module_names}
    for path in (LIBRARY / "models").glob("*.py"):
        for name in imported_modules(path):
            root = name.split(".")[0]
            inside = name.startswith("hf_vit.models.") and name.count(".") == 2
            assert inside or root in allowed_roots, f"{path.name} imports {name}"


def test_the_library_never_imports_the_lessons_or_the_benchmark():
    for path in LIBRARY.rglob("*.py"):
        assert not any(name.startswith("hf_vit_lessons") for name in imported_modules(path)), path


def test_every_package_of_the_library_is_installed():
    # a folder missing from pyproject's list is left out of the wheel, and `import hf_vit.<wing>` fails there only
    import tomllib

    packages = set(tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    on_disk = {
        ".".join(path.parent.relative_to(REPO_ROOT).parts)
        for root in ("hf_vit", "hf_vit_lessons")
        for path in (REPO_ROOT / root).rglob("__init__.py")
    }
    assert on_disk <= packages, sorted(on_disk - packages)


def test_using_a_model_never_imports_training():
    """inference/ and data/ (which training and inference share) import nothing of training/: serving a model needs
    none of the training application."""
    for wing in ("inference", "data"):
        for path in (LIBRARY / wing).rglob("*.py"):
            imported = imported_modules(path)
            assert not any(name.startswith("hf_vit.training") for name in imported), f"{path} imports training"
