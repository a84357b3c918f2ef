"""The layout the docs describe is the layout of the code (docs/architecture.md, "Layout" and "Import structure").

No servers: this reads files only.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "salespred_assets"
ARCHITECTURE = REPO / "docs" / "architecture.md"
# Imported by nearly everything; the picture leaves them out and says so.
LEFT_OUT_OF_THE_PICTURE = {"settings", "errors"}


def _section(title: str) -> str:
    text = ARCHITECTURE.read_text(encoding="utf-8")
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start:] if end == -1 else text[start:end]


def top_level_entries(package: Path = PACKAGE) -> set[str]:
    """Each top-level module (``settings.py``) or folder (``core/``) of the package, as the layout names it."""
    entries = set()
    for path in package.iterdir():
        if path.is_file() and path.suffix == ".py" and path.name != "__init__.py":
            entries.add(path.name)
        elif path.is_dir() and not path.name.startswith((".", "__")):
            entries.add(f"{path.name}/")
    return entries


def documented_entries() -> set[str]:
    """What the layout block lists directly under ``salespred_assets/`` (``defs/<group>/`` counts as ``defs/``)."""
    block = re.search(r"```\n(salespred_assets/\n.*?)```", _section("Layout"), re.S)
    assert block, "docs/architecture.md: the Layout section's code block must start with salespred_assets/"
    entries = set()
    for line in block.group(1).splitlines()[1:]:
        match = re.match(r"^  (\S+)", line)
        if match is None:
            if line and not line.startswith(" "):
                break  # back at the repository's root: salespred_tests/, deploy/, ...
            continue  # a description's continuation line
        name = match.group(1)
        entries.add(name.split("/", 1)[0] + "/" if "/" in name else name)
    return entries


def test_every_top_level_module_and_folder_is_in_the_docs_layout_and_nothing_else():
    code, docs = top_level_entries(), documented_entries()
    assert code - docs == set(), f"add to docs/architecture.md's Layout what these are for: {sorted(code - docs)}"
    assert docs - code == set(), f"docs/architecture.md's Layout lists what the package lacks: {sorted(docs - code)}"


def import_edges() -> set[tuple[str, str]]:
    """(importer, imported) between top-level modules and folders of the package, imports inside functions too."""
    edges = set()
    for path in PACKAGE.rglob("*.py"):
        source = path.relative_to(PACKAGE).with_suffix("").parts[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets: list[list[str]] = []
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module \
                    and node.module.split(".")[0] == "salespred_assets":
                inner = node.module.split(".")[1:]
                targets = [inner] if inner else [[alias.name] for alias in node.names]
            elif isinstance(node, ast.Import):
                targets = [alias.name.split(".")[1:] for alias in node.names
                           if alias.name.split(".")[0] == "salespred_assets"]
            edges |= {(source, target[0]) for target in targets if target and target[0] != source}
    return edges


def pictured_edges() -> set[tuple[str, str]]:
    block = re.search(r"```mermaid\n(.*?)```", _section("Import structure"), re.S)
    assert block, "docs/architecture.md: the Import structure section needs its ```mermaid picture"
    return set(re.findall(r"^\s*(\w+)\s*-->\s*(\w+)\s*$", block.group(1), re.M))


def test_the_import_picture_is_the_imports_of_the_code():
    code = {(a, b) for a, b in import_edges() if not {a, b} & LEFT_OUT_OF_THE_PICTURE}
    picture = pictured_edges()
    assert code - picture == set(), f"imports missing from docs/architecture.md's picture: {sorted(code - picture)}"
    assert picture - code == set(), f"arrows in the picture that the code does not import: {sorted(picture - code)}"


def test_core_imports_no_dagster_and_nothing_of_the_package_but_errors():
    for path in (PACKAGE / "core").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else \
                [alias.name for alias in node.names] if isinstance(node, ast.Import) else []
            for name in names:
                assert name.split(".")[0] != "dagster", f"{path.relative_to(REPO)} imports {name}"
                if name.startswith("salespred_assets."):
                    assert name.split(".")[1] in ("core", "errors"), f"{path.relative_to(REPO)} imports {name}"


def test_the_layout_check_sees_modules_and_folders_only(tmp_path):
    for folder in ("newfolder", "__pycache__"):
        (tmp_path / folder).mkdir()
    for name in ("loose.py", "__init__.py", "notes.txt"):
        (tmp_path / name).write_text("")
    assert top_level_entries(tmp_path) == {"newfolder/", "loose.py"}
    assert not {"loose.py", "newfolder/"} & documented_entries()
