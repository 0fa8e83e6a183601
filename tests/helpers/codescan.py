"""Static scans of the project's code: unsafe deserialisation and hard-coded credentials.

The scans walk the syntax tree rather than grepping text, so a docstring that says "never
unpickled" is fine while ``import pickle`` or ``torch.load(path)`` is not.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CODE_DIRS = ("mmfl", "components", "pipelines")

# modules whose only purpose is (un)pickling arbitrary objects, or that unpickle on load
PICKLE_MODULES = {"pickle", "cPickle", "_pickle", "cloudpickle", "dill", "joblib", "shelve", "marshal", "pickletools"}
PICKLE_CALLS = {"read_pickle", "to_pickle", "unsafe_load", "full_load", "load_pickle"}


def python_files(dirs: tuple[str, ...] = CODE_DIRS, root: Path = ROOT) -> list[Path]:
    return sorted(p for d in dirs if (root / d).is_dir() for p in (root / d).rglob("*.py"))


def _dotted(node: ast.AST) -> str:
    """``torch.serialization.load`` for an attribute chain, '' for anything else."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return ""


def _keyword_is_true(call: ast.Call, name: str) -> bool | None:
    """True/False for a constant keyword, None when absent; a non-constant value counts as True."""
    for kw in call.keywords:
        if kw.arg == name:
            return kw.value.value is True if isinstance(kw.value, ast.Constant) else True
    return None


def pickle_findings(source: str, filename: str = "<source>") -> list[str]:
    """Every place in ``source`` that could unpickle (or otherwise execute) data it loads."""
    tree = ast.parse(source, filename)
    aliases: dict[str, str] = {}  # local name -> dotted origin for ``from x import y as z``
    found = []
    for node in ast.walk(tree):
        where = f"{filename}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] in PICKLE_MODULES:
                    found.append(f"{where}: import {a.name}")
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.module.split(".")[0] in PICKLE_MODULES:
                found.append(f"{where}: from {node.module} import ...")
            for a in node.names:
                aliases[a.asname or a.name] = f"{node.module}.{a.name}"
                if a.name in PICKLE_CALLS:
                    found.append(f"{where}: from {node.module} import {a.name}")
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        where = f"{filename}:{node.lineno}"
        name = _dotted(node.func)
        head, _, rest = name.partition(".")
        full = f"{aliases[head]}.{rest}".rstrip(".") if head in aliases else name
        last = full.rsplit(".", 1)[-1]
        if last in PICKLE_CALLS:
            found.append(f"{where}: {full}()")
        literal_true = any(kw.arg == "weights_only" and isinstance(kw.value, ast.Constant) and kw.value.value is True
                           for kw in node.keywords)
        if full in ("torch.load", "torch.serialization.load") and not literal_true:
            found.append(f"{where}: {full}() without weights_only=True")
        if full in ("np.load", "numpy.load") and _keyword_is_true(node, "allow_pickle"):
            found.append(f"{where}: {full}(allow_pickle=True)")
        if _keyword_is_true(node, "pickle_module") is not None:
            found.append(f"{where}: {full}(pickle_module=...)")
        if full == "yaml.load" and not any(
            kw.arg == "Loader" and _dotted(kw.value).endswith(("SafeLoader", "CSafeLoader")) for kw in node.keywords
        ):
            found.append(f"{where}: yaml.load() without a SafeLoader")
    return found


# ---- credentials ------------------------------------------------------------------------------
SECRET_NAME = re.compile(
    r"(password|passwd|passphrase|secret_?key|secret_?access_?key|access_?key(_?id)?|api_?key|auth_?token|"
    r"private_?key|client_?secret|root_?password)$", re.IGNORECASE)
# values that name where a secret comes from rather than being one
REFERENCE_VALUE = re.compile(r"^([A-Z][A-Z0-9_]*|<[^>]*>|\$\{[^}]*\}|\{\{.*\}\}|)$")
SECRET_PATTERNS = {
    "AWS access key id": re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b"),
    "MinIO default credentials": re.compile(r"minioadmin", re.IGNORECASE),
    "private key": re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    "credentials in a URL": re.compile(r"[a-z][a-z0-9+.-]*://[^/\s:@'\"]+:[^/\s:@'\"]{3,}@", re.IGNORECASE),
}
TEXT_SUFFIXES = {".py", ".yaml", ".yml", ".json", ".toml", ".cfg", ".ini", ".sh", ".txt", ".md", ".tpl", ".env"}


def _secret_assignments(tree: ast.AST, filename: str) -> Iterator[str]:
    def literal(value: ast.AST) -> str | None:
        return value.value if isinstance(value, ast.Constant) and isinstance(value.value, str) else None

    for node in ast.walk(tree):
        pairs: list[tuple[str, ast.AST]] = []
        if isinstance(node, ast.Assign):
            pairs = [(_dotted(t).rsplit(".", 1)[-1], node.value) for t in node.targets]
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            pairs = [(_dotted(node.target).rsplit(".", 1)[-1], node.value)]
        elif isinstance(node, ast.keyword) and node.arg:
            pairs = [(node.arg, node.value)]
        elif isinstance(node, ast.Dict):
            pairs = [(k.value, v) for k, v in zip(node.keys, node.values)
                     if isinstance(k, ast.Constant) and isinstance(k.value, str)]
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):  # default argument values
            args = node.args.args[-len(node.args.defaults):] if node.args.defaults else []
            pairs = [(a.arg, d) for a, d in zip(args, node.args.defaults)]
            pairs += [(a.arg, d) for a, d in zip(node.args.kwonlyargs, node.args.kw_defaults) if d is not None]
        for name, value in pairs:
            text = literal(value)
            if name and text is not None and SECRET_NAME.search(name) and not REFERENCE_VALUE.match(text):
                yield f"{filename}:{getattr(value, 'lineno', '?')}: {name} = {text[:4]}... (hard-coded credential)"


def secret_findings(text: str, filename: str = "<source>") -> list[str]:
    """Hard-coded credentials in one file: literal values of secret-named fields, known key formats."""
    found = []
    for label, pattern in SECRET_PATTERNS.items():
        for m in pattern.finditer(text):
            line = text.count("\n", 0, m.start()) + 1
            found.append(f"{filename}:{line}: {label}")
    if filename.endswith(".py"):
        found += list(_secret_assignments(ast.parse(text, filename), filename))
    return found


def text_files(dirs: tuple[str, ...], root: Path = ROOT) -> list[Path]:
    return sorted(p for d in dirs if (root / d).exists() for p in ((root / d).rglob("*") if (root / d).is_dir()
                  else [root / d]) if p.is_file() and (p.suffix in TEXT_SUFFIXES or p.name in ("Dockerfile", "Makefile"))
                  and "__pycache__" not in p.parts)
