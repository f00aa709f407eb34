"""The scanner behind test_single_source.py: contract literals spelled outside crds/ftcrd.

A *contract literal* is a fact two components share (docs/contract.md): the API group and everything
under ``finetune.dev/`` (labels, annotations, the kopf prefix), the resource's names, the environment
variables the operator sets for the trainer (``FTJ_*`` and the rest of :mod:`ftcrd.names`), the pod's
mount paths, the data keys, the reasons of :data:`ftcrd.conditions.REASONS`, and the trainer's exit codes
where they act as exit codes (pod specs, ``*exit(...)`` calls, comparisons with an exit code). Each is
defined once in ``crds/ftcrd`` and imported everywhere else; a string constant (docstrings aside) or an
integer in those positions is a copy.

Kubernetes' own vocabulary is not ours even where we spell it the same way (the Job controller's
``DeadlineExceeded``, the kubelet's ``OOMKilled``): :data:`ALLOWED` lists where it may appear, and why.
"""

from __future__ import annotations

import ast
import fnmatch
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from ftcrd import conditions, names

# (literal, files it may appear in (globs relative to the repository), why)
ALLOWED: tuple[tuple[str, str, str], ...] = (
    ("DeadlineExceeded", "operator/ftoperator/status.py", "the Job controller's Failed condition reason"),
    ("BackoffLimitExceeded", "operator/ftoperator/status.py", "the Job controller's Failed condition reason"),
    ("OOMKilled", "operator/ftoperator/status.py", "the kubelet's terminated reason of a container"),
    ("Suspended", "operator/ftoperator/status.py", "the Job's Suspended condition type"),
    ("Completed", "*processnode/*.py", "the kubelet's terminated reason of a container that exited 0"),
)
_ENV = re.compile(r"^FTJ_[A-Z0-9_]+$")
_EXIT_CODES = {int(c) for c in conditions.ExitCode if c != conditions.ExitCode.OK}
_EXIT_WORD = re.compile("exit", re.IGNORECASE)


@dataclass(frozen=True)
class Rule:
    name: str
    matches: Callable[[str], bool]


def _exact(values: Iterable[str], what: str) -> list[Rule]:
    return [Rule(f"{what} {v!r}", lambda s, v=v: s == v) for v in values]


def _path(values: Iterable[str]) -> list[Rule]:
    return [Rule(f"mount path {v!r}", lambda s, v=v: s == v or s.startswith(v + "/")) for v in values]


def rules() -> list[Rule]:
    """Every contract literal, derived from ftcrd itself (a new name there is checked at once)."""
    env = [v for k, v in vars(names).items() if k.startswith("ENV_") and isinstance(v, str)]
    ours = [*env, *(v for v in names.RESERVED_ENV if v.startswith("FTJ_"))]
    return [
        Rule(f"the API group {names.GROUP!r}", lambda s: names.GROUP in s),
        Rule("an FTJ_* environment variable", lambda s: bool(_ENV.match(s))),
        *_exact(sorted(set(ours)), "environment variable"),
        *_exact(
            (
                names.KIND,
                names.PLURAL,
                names.STATUS_SUBRESOURCE,
                names.TRAINER_IDENTITY,
                names.OWN_JOB_POLICY,
                names.FILE_DATA_KEY,
                names.DATASET_KEY,
                names.MANIFEST_NAME,
                names.TRAINER_CONFIG_FILE,
                names.LABEL_QUEUE,
            ),
            "name",
        ),
        *_path(
            (
                names.DATA_DIR,
                names.FIREBASE_DIR,
                names.MODELS_DIR,
                names.CHECKPOINT_DIR,
                names.WORKSPACE_DIR,
                names.TRAINER_CONFIG_DIR,
            )
        ),
        *_exact(conditions.REASONS, "reason"),
    ]


def _docstrings(tree: ast.AST) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list):
            for stmt in body:
                if (
                    isinstance(stmt, ast.Expr)
                    and isinstance(stmt.value, ast.Constant)
                    and isinstance(stmt.value.value, str)
                ):
                    ids.add(id(stmt.value))
    return ids


def _int(node: ast.AST) -> int | None:
    if isinstance(node, ast.Constant) and type(node.value) is int:
        return node.value
    return None


def _exit_code_copies(tree: ast.AST) -> Iterable[tuple[ast.AST, str]]:
    for node in ast.walk(tree):
        if isinstance(node, ast.Dict):  # a pod spec's podFailurePolicy
            for key, value in zip(node.keys, node.values, strict=True):
                if isinstance(key, ast.Constant) and key.value == "onExitCodes":
                    for inner in ast.walk(value):
                        if _int(inner) is not None:
                            yield inner, f"exit code {_int(inner)} in onExitCodes"
        elif isinstance(node, ast.Call) and node.args:
            func = node.func
            name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
            code = _int(node.args[0])
            if name.lower().endswith("exit") and code is not None and code not in (0, 1):
                yield node.args[0], f"exit code {code} passed to {name}()"
        elif isinstance(node, ast.Compare):
            sides = [node.left, *node.comparators]
            if not any(_EXIT_WORD.search(ast.unparse(s)) for s in sides if _int(s) is None):
                continue
            for side in sides:
                elements = side.elts if isinstance(side, ast.Tuple | ast.List | ast.Set) else [side]
                for element in elements:
                    if _int(element) in _EXIT_CODES:
                        yield element, f"exit code {_int(element)} compared with {ast.unparse(node)}"


def allowed_uses(files: Iterable[Path], root: Path) -> dict[tuple[str, str], int]:
    """How often each :data:`ALLOWED` entry is used (an entry nothing uses should go)."""
    counts = {(value, glob): 0 for value, glob, _ in ALLOWED}
    for path in files:
        rel = path.relative_to(root).as_posix()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                for value, glob in counts:
                    if node.value == value and fnmatch.fnmatch(rel, glob):
                        counts[value, glob] += 1
    return counts


def _permitted(literal: str, rel: str) -> bool:
    return any(value == literal and fnmatch.fnmatch(rel, glob) for value, glob, _ in ALLOWED)


def violations(files: Iterable[Path], root: Path) -> list[str]:
    """``path:line: <literal> (<rule>)`` for every copy of a contract literal in ``files``."""
    found: list[str] = []
    checks = rules()
    for path in files:
        rel = path.relative_to(root).as_posix()
        tree = ast.parse(path.read_text(), filename=rel)
        skip = _docstrings(tree)
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Constant) and isinstance(node.value, str)) or id(node) in skip:
                continue
            for rule in checks:
                if rule.matches(node.value) and not _permitted(node.value, rel):
                    found.append(f"{rel}:{node.lineno}: {node.value!r} ({rule.name})")
                    break
        found += [f"{rel}:{n.lineno}: {what}" for n, what in _exit_code_copies(tree)]
    return found


def source_files(root: Path) -> list[Path]:
    """The project's Python source outside the contract: every folder but crds/ftcrd, tests and hidden ones."""
    contract = root / "crds" / "ftcrd"
    out = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if rel.parts[0] in ("tests", "docs") or any(p.startswith(".") for p in rel.parts):
            continue
        if path.is_relative_to(contract) or "__pycache__" in rel.parts:
            continue
        out.append(path)
    return out
