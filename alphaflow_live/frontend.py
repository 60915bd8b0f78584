"""The widget's front end as anywidget loads it: the ES modules of js/src joined into one.

anywidget takes one ES module (``_esm``) and imports it from a blob URL, where
relative imports cannot resolve. The source stays split by concern (js/src:
the entry ``widget.js``, shared helpers beside it, the parts in ``parts/``)
and ships as written; this joins it when the widgets module loads, with no
bundler and no Node:

- The entry's imports are followed depth first; each module is emitted once,
  after the modules it imports. A cycle is an error.
- An imported module becomes a function scope that returns its exports,
  ``const __afl_format = (() => { ...; return { num, fmt }; })();``, and each
  import a destructuring of it, ``const { num, fmt: format } = __afl_format;``,
  so every module keeps its own top-level names.
- The entry stays at the top level with its exports (``export default { render }``).
- Only the forms the widget uses are understood: ``import { a, b as c } from
  "./x.js";``, ``export function|const|let|class name`` and ``export { a, b };``.
  Any other line that starts with ``import`` or ``export`` is an error naming
  the file and line; nothing passes through unread.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

PACKAGE = Path(__file__).parent
ENTRY = "widget.js"

_IMPORT = re.compile(r'^import\s*\{([^}]*)\}\s*from\s*"(\.\.?/[^"]+)"\s*;?[ \t]*$', re.M)
_EXPORT_DECLARATION = re.compile(
    r"^export\s+((?:async\s+)?function\*?|const|let|class)\s+([A-Za-z_$][\w$]*)", re.M
)
_EXPORT_LIST = re.compile(r"^export\s*\{([^}]*)\}\s*;?[ \t]*$", re.M)
_ANY_IMPORT_OR_EXPORT = re.compile(r"^(import|export)\b.*$", re.M)
_NAME = re.compile(r"^[A-Za-z_$][\w$]*$")


def source_dir() -> Path:
    """Where the front end's files are: js/src in a source checkout (always current), else the
    copy the wheel ships in static/."""
    checkout = PACKAGE.parent / "js" / "src"
    return checkout if (checkout / ENTRY).is_file() else PACKAGE / "static"


def widget_css(root: Path | None = None) -> str:
    return ((root or source_dir()) / "widget.css").read_text(encoding="utf-8")


def widget_esm(root: Path | None = None) -> str:
    """The entry and every module it imports, as one ES module."""
    root = (root or source_dir()).resolve()
    modules: dict[Path, _Module] = {}
    order: list[Path] = []

    def visit(path: Path, trail: tuple[Path, ...]) -> None:
        if path in trail:
            cycle = " -> ".join(p.relative_to(root).as_posix() for p in (*trail[trail.index(path) :], path))
            raise ValueError(f"front end: import cycle {cycle} (break it: modules must form a tree)")
        if path in modules:
            return
        module = modules[path] = _parse(path, root)
        for dependency in module.imports:
            visit(dependency.path, (*trail, path))
        order.append(path)

    visit(root / ENTRY, ())
    entry = order.pop()
    chunks = ["// AlphaFlow Live widget: js/src joined into one module by alphaflow_live/frontend.py.\n"]
    for path in order:
        module = modules[path]
        exports = ", ".join(name if name == local else f"{name}: {local}" for name, local in module.exports)
        chunks.append(
            f"\n// ---- {path.relative_to(root).as_posix()}\n"
            f"const {_var(path, root)} = (() => {{\n{module.body(root)}\nreturn {{ {exports} }};\n}})();\n"
        )
    chunks.append(f"\n// ---- {ENTRY}\n{modules[entry].body(root, entry=True)}")
    return "".join(chunks)


@dataclass(frozen=True)
class _Import:
    path: Path
    names: tuple[tuple[str, str], ...]  # (exported name, local name)
    span: tuple[int, int]


@dataclass
class _Module:
    path: Path
    text: str
    imports: list[_Import]
    exports: list[tuple[str, str]]  # (exported name, local name)

    def body(self, root: Path, *, entry: bool = False) -> str:
        """The module's text with its imports bound to the modules' scopes (and, unless it is the
        entry, its export keywords dropped)."""
        text = self.text
        for item in sorted(self.imports, key=lambda i: i.span, reverse=True):
            names = ", ".join(name if name == local else f"{name}: {local}" for name, local in item.names)
            start, end = item.span
            text = f"{text[:start]}const {{ {names} }} = {_var(item.path, root)};{text[end:]}"
        if not entry:
            text = _EXPORT_LIST.sub("", text)
            text = _EXPORT_DECLARATION.sub(lambda m: f"{m.group(1)} {m.group(2)}", text)
        return text


def _parse(path: Path, root: Path) -> _Module:
    if not path.is_file():
        raise ValueError(f"front end: {path} not found (imported as a module of {root / ENTRY})")
    text = path.read_text(encoding="utf-8")
    imports = []
    for match in _IMPORT.finditer(text):
        target = (path.parent / match.group(2)).resolve()
        if root not in target.parents:
            raise ValueError(f"front end: {path.name} imports {match.group(2)}, outside {root}")
        names = tuple(_specifier(spec, path) for spec in _specifiers(match.group(1)))
        imports.append(_Import(target, names, match.span()))
    exports = [(m.group(2), m.group(2)) for m in _EXPORT_DECLARATION.finditer(text)]
    for match in _EXPORT_LIST.finditer(text):
        for spec in _specifiers(match.group(1)):
            local, exported = _specifier(spec, path)  # export { local as exported }
            exports.append((exported, local))
    understood = {m.start() for m in _IMPORT.finditer(text)}
    understood |= {m.start() for m in _EXPORT_DECLARATION.finditer(text)}
    understood |= {m.start() for m in _EXPORT_LIST.finditer(text)}
    for match in _ANY_IMPORT_OR_EXPORT.finditer(text):
        is_default = match.group(0).startswith("export default ")
        if match.start() not in understood and not (is_default and path.name == ENTRY):
            line = text.count("\n", 0, match.start()) + 1
            raise ValueError(
                f"front end: {path.name}:{line}: {match.group(0)[:60]!r} is not a form frontend.py joins "
                '(use import { a } from "./x.js"; export function|const|let|class; export { a };)'
            )
    return _Module(path, text, imports, exports)


def _specifiers(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _specifier(spec: str, path: Path) -> tuple[str, str]:
    """``a`` or ``a as b`` as (a, b): in an import the exported name and the local one, in an
    export list the other way round."""
    parts = spec.split()
    if len(parts) == 1 and _NAME.match(parts[0]):
        return parts[0], parts[0]
    if len(parts) == 3 and parts[1] == "as" and _NAME.match(parts[0]) and _NAME.match(parts[2]):
        return parts[0], parts[2]
    raise ValueError(f"front end: {path.name}: cannot read the import or export {spec!r}")


def _var(path: Path, root: Path) -> str:
    """The name of a module's scope: js/src/parts/chart.js -> __afl_parts_chart."""
    return "__afl_" + re.sub(r"\W", "_", path.relative_to(root).with_suffix("").as_posix())


if __name__ == "__main__":  # python -m alphaflow_live.frontend > widget.js: the module anywidget gets
    print(widget_esm(), end="")
