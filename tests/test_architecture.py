"""The shape of the code: no import circles among unclip's modules, no library module importing the CLI, no file
of unclip/ over 450 lines, and the per-stage names made from the registry alone (docs/architecture.md)."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "unclip"
CLI = {"unclip.cli", "unclip.cli_args", "unclip.cli_edits", "unclip.cli_metrics", "unclip.cli_serve"}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """The unclip modules ``path`` imports anywhere (also inside functions), except under ``if TYPE_CHECKING``."""
    tree = ast.parse(path.read_text())
    skipped = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", "") == "TYPE_CHECKING":
            skipped |= {id(child) for child in ast.walk(node)}
    known = {module_name(p) for p in ROOT.rglob("*.py")}
    found = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        found |= {name for name in names if name in known}
    found.discard("unclip")  # the package's lazy __getattr__, not a module of its own here
    return found - {module_name(path)}


GRAPH = {module_name(p): imports(p) for p in ROOT.rglob("*.py")}


def test_no_import_circle():
    visiting, done, path = set(), set(), []

    def visit(module):
        if module in done:
            return
        assert module not in visiting, f"import circle: {' → '.join(path[path.index(module) :] + [module])}"
        visiting.add(module)
        path.append(module)
        for other in sorted(GRAPH.get(module, ())):
            visit(other)
        path.pop()
        visiting.discard(module)
        done.add(module)

    for module in sorted(GRAPH):
        visit(module)


def test_the_checker_finds_a_circle(monkeypatch):
    monkeypatch.setitem(GRAPH, "unclip.settings", GRAPH["unclip.settings"] | {"unclip.plan"})
    with pytest.raises(AssertionError, match="import circle"):
        test_no_import_circle()


def test_no_library_module_imports_the_cli():
    offenders = {m: sorted(GRAPH[m] & CLI) for m in GRAPH if m not in CLI and GRAPH[m] & CLI}
    assert not offenders


@pytest.mark.parametrize("path", sorted(ROOT.rglob("*.py")), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_file_over_450_lines(path):
    assert len(path.read_text().splitlines()) <= 450


def test_a_new_kind_of_stage_gets_its_names_from_its_class_alone():
    from unclip.plan import _name
    from unclip.settings import StageSettings
    from unclip.stages import Stage

    class Upscale2048(Stage):  # a fifth kind, as a new file would declare it
        name = kind = "sr2048"
        keyword, flag, label, title = "upscale2048", "sr2048", "SR2048", "1024→2048"
        input_size, size, layout = 1024, 2048, "pixel"
        components = models = ("upscaler2048_unet",)
        scheduler = "upscaler2048_scheduler"
        settings = ("steps", "noise_level")
        defaults = StageSettings(steps=5)

    names = [_name(Upscale2048(), setting) for setting in Upscale2048.settings]
    assert [n.keyword for n in names] == ["upscale2048_num_inference_steps", "upscale2048_noise_level"]
    assert [n.flags[0] for n in names] == ["--sr2048-steps", "--sr2048-noise-level"]
    assert [n.label for n in names] == ["SR2048 steps", "SR2048 noise level"]
