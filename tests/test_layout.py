"""The package layout's rules (docs/architecture.md): no import cycles, light layers stay light, training
needs no ffmpeg, no module over ~500 lines without a reason, function-level imports say why."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

KIT = Path(__file__).resolve().parents[1] / "kit"
MAX_LINES = 500
LONG_MODULE_MARK = "over 500 lines because"  # a module's docstring gives its reason with these words


def _module_name(path: Path) -> str:
    parts = path.relative_to(KIT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES: dict[str, Path] = {_module_name(p): p for p in sorted(KIT.rglob("*.py"))}


def _resolve(module: str, node: ast.ImportFrom | ast.Import) -> list[str]:
    """The kit modules an import statement names (a submodule when `from pkg import sub` names one)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name.split(".")[0] == "kit"]
    assert not node.level, f"{module}:{node.lineno}: use absolute imports (kit.x.y), as the rest of the kit does"
    base = node.module or ""
    if base.split(".")[0] != "kit":
        return []
    return [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]


def _imports(module: str, *, top_level_only: bool) -> set[str]:
    tree = ast.parse(MODULES[module].read_text(encoding="utf-8"))
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import | ast.ImportFrom):
            found.update(m for m in _resolve(module, node) if m in MODULES and m != module)
    return found


def test_no_import_cycles():
    graph = {m: _imports(m, top_level_only=True) for m in MODULES}
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                cycle = stack[stack.index(n):] + [n]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if n not in state:
                visit(n)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)


def _loaded_after(statement: str) -> set[str]:
    code = f"import sys; {statement}; print('\\n'.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return set(out.split())


@pytest.mark.parametrize("module", ["kit.results.gate", "kit.results.thresholds", "kit.train.loso_files",
                                    "kit.train", "kit.corpus.table", "kit.results.bundle", "kit.results.predict"])
def test_light_modules_do_not_import_torch(module):
    assert "torch" not in _loaded_after(f"import {module}"), f"`import {module}` loads torch"


def test_the_cli_imports_neither_torch_nor_pandas_for_help():
    loaded = _loaded_after("import kit.cli")
    assert not {"torch", "pandas", "matplotlib", "onnx"} & loaded


FFMPEG_SIDE = {"kit.corpus.ffmpeg", "kit.corpus.scoring", "kit.corpus.engine", "kit.corpus.grid",
               "kit.corpus.sources", "kit.corpus.inputs", "kit.corpus.demo"}


def test_training_imports_nothing_from_the_ffmpeg_side_of_the_corpus():
    train = [m for m in MODULES if m == "kit.train" or m.startswith("kit.train.")]
    for m in train:  # named anywhere in the module, top level or not
        assert not _imports(m, top_level_only=False) & FFMPEG_SIDE, m
    loaded = _loaded_after("; ".join(f"import {m}" for m in train))  # and not pulled in on the way
    assert not loaded & FFMPEG_SIDE, sorted(loaded & FFMPEG_SIDE)


def test_no_module_over_500_lines_without_a_reason():
    long = []
    for name, path in MODULES.items():
        text = path.read_text(encoding="utf-8")
        doc = ast.get_docstring(ast.parse(text)) or ""
        if len(text.splitlines()) > MAX_LINES and LONG_MODULE_MARK not in doc:
            long.append(f"{name} ({len(text.splitlines())} lines)")
    assert not long, f"over {MAX_LINES} lines with no '{LONG_MODULE_MARK} ...' in the docstring: {long}"


def test_function_level_imports_say_why():
    """Imports belong at the top; one inside a function keeps a light layer light (the CLI and torch) or
    an optional dependency optional, and carries a comment saying so (on its line or just above)."""
    silent = []
    for name, path in MODULES.items():
        lines = path.read_text(encoding="utf-8").splitlines()
        tree = ast.parse("\n".join(lines))
        top = {id(n) for n in tree.body}
        for node in ast.walk(tree):
            if not isinstance(node, ast.Import | ast.ImportFrom) or id(node) in top:
                continue
            if isinstance(node, ast.ImportFrom) and node.module == "__future__":
                continue
            i = node.lineno - 1
            block_start = i
            while block_start > 0 and lines[block_start - 1].strip().startswith(("from ", "import ")):
                block_start -= 1
            window = lines[max(0, block_start - 1): node.end_lineno]
            if not any("#" in ln for ln in window):
                silent.append(f"{name}:{node.lineno}")
    assert not silent, f"function-level imports without a comment saying why: {silent}"


def test_untrusted_text_is_escaped_in_one_place():
    """`kit.core.console.printable` (and `printable_short` for a value quoted in a message) is the one
    escaping of text the kit did not write: no module filters characters itself (the `?`-replacing copies
    in kit.corpus.legacy and kit.results.contract let bidi and zero-width characters through as `?`
    while the rest of the kit escapes them, and truncated in their own way)."""
    own = [f"{name}:{node.lineno}" for name, path in MODULES.items() if name != "kit.core.console"
           for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
           if isinstance(node, ast.Attribute) and node.attr == "isprintable"]
    assert not own, f"character filtering outside kit.core.console (use printable/printable_short): {own}"


def test_printable_short_cuts_then_escapes():
    from kit.core.console import printable, printable_short

    assert printable_short("x" * 100, 10) == "xxxxxxx..."
    hostile = "\x1b[2J\u202eabc"
    assert printable_short(hostile, 40) == printable(hostile) == "\\u001b[2J\\u202eabc"
