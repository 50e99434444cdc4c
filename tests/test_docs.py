"""Every file, module and section the documents and the code's comments cite exists.

A reference that outlives what it names misleads its reader, so a stale one fails here. Read:
the Markdown documents (the root's, docs/, bench/README.md, integrations/better-auth/README.md;
in fenced blocks only the shell commands, never the frontend code or printed output) and the
comments and docstrings of app/, blueprints/, tests/, serve.py, gunicorn.conf.py, wsgi.py and
of the deployment files (deploy/, docker/, Dockerfile, docker-compose.yml, Makefile,
.env.example). Checked:

- file paths (`app/revocation/store.py`, `deploy/nginx/templates/default.conf.template`,
  `docs/DEPLOY.md`), relative to the citing file or to the repository root; a bare file name
  must name a file somewhere in the repository;
- dotted modules (`app.revocation.store`, `app.gate.admit`, `blueprints.health:bp`): a module,
  a package, or a name a module defines (a class's too, one level down);
- Markdown links to local files, and their `#anchors`;
- cited sections: `ARCHITECTURE.md, "The revocation model"` and `CONTRACT §4`;
- cited commands of taskgate's CLI (`flask --app wsgi revoke verify`, `flask db wait`).

Each test prints every stale reference it finds, with the file and line that cites it.
"""

from __future__ import annotations

import ast
import io
import re
import tokenize
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from app.cli import db_cli, revoke_cli, token_cli

ROOT = Path(__file__).resolve().parent.parent

DOCUMENTS = ("*.md", "docs/**/*.md", "bench/README.md", "integrations/better-auth/README.md")
PYTHON = ("app/**/*.py", "blueprints/**/*.py", "tests/**/*.py", "migrations/**/*.py", "bench/*.py", "serve.py",
          "gunicorn.conf.py", "wsgi.py")
HASH_COMMENTED = ("deploy/**/*.template", "docker/*.sh", "Dockerfile", "docker-compose.yml", "Makefile",
                  ".env.example")
SKIPPED_DIRECTORIES = {"node_modules", ".venv", "__pycache__", ".git"}
# Made at run time, never in a checkout: instance/ (the development database and secret),
# bench/results/ (benchmark output), .venv/ (made by make).
GENERATED = ("instance", "bench/results", ".venv")
SHELL_FENCES = {"sh", "bash", "shell"}
FILE_SUFFIXES = ("py", "md", "sh", "toml", "yml", "yaml", "txt", "c", "js", "mjs", "ts", "json", "template",
                 "png", "example", "ini", "cfg", "lock")
MODULE_ROOTS = ("app", "blueprints", "tests", "serve", "wsgi")

URL = re.compile(r"\b[a-z][a-z0-9+.-]*://[^\s)>`'\"]*", re.I)
# A relative path with at least one slash; not preceded by what makes it absolute, a URL, a
# package scope or a variable, and not followed by a placeholder, a glob or a possessive
# ("docker/compose's": a project's name).
PATH = re.compile(r"(?<![\w./@~$:*<-])((?:\.?[\w-][\w.-]*/)+(?:[\w-][\w.-]*)?)(?![\w/<{*…-])(?!['’]\w)")
BARE_FILE = re.compile(
    r"(?<![\w./@~$:*<-])([\w-][\w.-]*\.(?:" + "|".join(FILE_SUFFIXES) + r"))(?![\w/<{*…-])")
MODULE = re.compile(
    r"(?<![\w./@$:-])((?:" + "|".join(MODULE_ROOTS) + r")(?:\.[A-Za-z_]\w*)+|(?:"
    + "|".join(MODULE_ROOTS) + r"))(?::([A-Za-z_]\w*))?(?![\w/-])")
LINK = re.compile(r"\[[^\]\n]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
SECTION = re.compile(r"\b((?:[\w.-]+/)*(?:README|ARCHITECTURE|SECURITY|CONTRACT|DEPLOY)(?:\.md)?)"
                     r"\)?,?\s+\"([^\"\n]+)\"")
CONTRACT_SECTION = re.compile(r"\bCONTRACT(?:\.md)?(?:\]\([^)]*\))?\s*§\s*(\d+)")
OWN_SECTION = re.compile(r"(?<!RFC )(?<![\w.])§\s*(\d+)(?![.\d])")
PRODUCT = re.compile(r"[A-Z]\w*\.js")  # Next.js, Node.js: names, not files
FENCE = re.compile(r"^\s*(```+|~~~+)\s*([\w+-]*)")
FLASK_COMMAND = re.compile(r"\bflask\s+(?:--app\s+\S+\s+)?(db|token|revoke)\s+([a-z][\w-]*)")
HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$")


@dataclass(frozen=True)
class Citation:
    source: Path  # the citing file
    line: int
    text: str  # the cited text on that line (URLs blanked out)

    def where(self) -> str:
        return f"{self.source.relative_to(ROOT)}:{self.line}"


# --- what is read ------------------------------------------------------------------------


def files(patterns: tuple[str, ...]) -> list[Path]:
    found = {path for pattern in patterns for path in ROOT.glob(pattern) if path.is_file()}
    return sorted(path for path in found if not SKIPPED_DIRECTORIES & set(path.relative_to(ROOT).parts))


def markdown_lines(path: Path) -> Iterator[Citation]:
    """Prose lines and shell-command lines; the other fenced blocks are frontend code or output."""
    fence, language = None, ""
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        match = FENCE.match(line)
        if match and fence is None:
            fence, language = match.group(1), match.group(2).lower()
            continue
        if match and line.strip().startswith(fence or "\0") and not match.group(2):
            fence = None
            continue
        if fence is None or language in SHELL_FENCES:
            yield Citation(path, number, URL.sub(" ", line))


def python_lines(path: Path) -> Iterator[Citation]:
    """Comments and docstrings, line by line."""
    source = path.read_text(encoding="utf-8")
    lines = source.splitlines()
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            yield Citation(path, token.start[0], URL.sub(" ", token.string))
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) and node.body:
            first = node.body[0]
            if (isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant)
                    and isinstance(first.value.value, str)):
                for number in range(first.lineno, (first.end_lineno or first.lineno) + 1):
                    yield Citation(path, number, URL.sub(" ", lines[number - 1]))


def hash_comment_lines(path: Path) -> Iterator[Citation]:
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.lstrip().startswith("#"):
            yield Citation(path, number, URL.sub(" ", line))


@cache
def citations() -> tuple[Citation, ...]:
    found: list[Citation] = []
    for path in files(DOCUMENTS):
        found.extend(markdown_lines(path))
    for path in files(PYTHON):
        found.extend(python_lines(path))
    for path in files(HASH_COMMENTED):
        found.extend(hash_comment_lines(path))
    return tuple(found)


# --- files -------------------------------------------------------------------------------


@cache
def basenames() -> frozenset[str]:
    return frozenset(path.name for path in ROOT.rglob("*")
                     if not SKIPPED_DIRECTORIES & set(path.relative_to(ROOT).parts))


def generated(relative: str) -> bool:
    return any(relative == prefix or relative.startswith(prefix + "/") for prefix in GENERATED)


def stale_path(citation: Citation, cited: str) -> str | None:
    """Why `cited` (with a slash) names nothing, or None when it names something or is not ours."""
    cited = cited.rstrip(".,;:")
    first = cited.split("/", 1)[0]
    bases = (citation.source.parent, ROOT)
    if not any((base / first).is_dir() for base in bases):
        return None  # not a path of this repository (a frontend's lib/auth.ts, an npm package)
    if "node_modules" in cited or any(generated(str((base / cited).relative_to(ROOT)))
                                      for base in bases if (base / cited).resolve().is_relative_to(ROOT)):
        return None
    if any((base / cited).exists() for base in bases):
        return None
    return "no such file or directory"


def stale_file_references() -> list[str]:
    stale = []
    for citation in citations():
        for match in PATH.finditer(citation.text):
            why = stale_path(citation, match.group(1))
            if why:
                stale.append(f"{citation.where()}: {match.group(1).rstrip('.,;:')} ({why})")
        for match in BARE_FILE.finditer(citation.text):
            name = match.group(1)
            if PRODUCT.fullmatch(name):
                continue
            if name not in basenames() and not any((base / name).exists()
                                                   for base in (citation.source.parent, ROOT)):
                stale.append(f"{citation.where()}: {name} (no file of that name in the repository)")
    return stale


# --- modules -----------------------------------------------------------------------------


def module_file(parts: list[str]) -> Path | None:
    base = ROOT.joinpath(*parts)
    if base.with_suffix(".py").is_file():
        return base.with_suffix(".py")
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    return None


@cache
def defined_names(path: Path) -> dict[str, ast.AST]:
    """The names a module defines at its top level (imports and `__all__` included)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return body_names(tree.body)


def body_names(body: list[ast.stmt]) -> dict[str, ast.AST]:
    names: dict[str, ast.AST] = {}
    for node in body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names[node.name] = node
        elif isinstance(node, ast.Assign | ast.AnnAssign | ast.AugAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                for name in ast.walk(target):
                    if isinstance(name, ast.Name):
                        names[name.id] = node
            if (isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__all__"
                                                     for t in node.targets)
                    and isinstance(node.value, ast.List | ast.Tuple)):
                for element in node.value.elts:
                    if isinstance(element, ast.Constant) and isinstance(element.value, str):
                        names.setdefault(element.value, node)
        elif isinstance(node, ast.Import | ast.ImportFrom):
            for alias in node.names:
                names[(alias.asname or alias.name).split(".")[0]] = node
        elif isinstance(node, ast.If | ast.Try):
            names.update(body_names(node.body))
    return names


def stale_module(dotted: str, attribute: str | None) -> str | None:
    parts = dotted.split(".")
    if parts[-1] in FILE_SUFFIXES:
        return None  # a file name (serve.py), checked as a file
    for length in range(len(parts), 0, -1):
        path = module_file(parts[:length])
        if path is None:
            continue
        rest = parts[length:] + ([attribute] if attribute else [])
        if not rest:
            return None
        names = defined_names(path)
        if rest[0] not in names:
            module = ".".join(parts[:length])
            return f"{module} ({path.relative_to(ROOT)}) defines no {rest[0]}"
        node = names[rest[0]]
        if len(rest) > 1 and isinstance(node, ast.ClassDef) and rest[1] not in body_names(node.body):
            return f"{'.'.join(parts[:length])}.{rest[0]} has no {rest[1]}"
        return None
    return f"no module {parts[0]}"


def stale_module_references() -> list[str]:
    stale = []
    for citation in citations():
        for match in MODULE.finditer(citation.text):
            dotted, attribute = match.group(1), match.group(2)
            if "." not in dotted and attribute is None:
                continue  # a bare word: "app", "tests"
            why = stale_module(dotted, attribute)
            if why:
                cited = dotted + (f":{attribute}" if attribute else "")
                stale.append(f"{citation.where()}: {cited} ({why})")
    return stale


# --- Markdown links and sections ---------------------------------------------------------


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]|\[([^\]]*)\]\([^)]*\)", lambda m: m.group(1) or "", heading).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


@cache
def headings(path: Path) -> tuple[str, ...]:
    found, fence = [], False
    for line in path.read_text(encoding="utf-8").splitlines():
        if FENCE.match(line):
            fence = not fence
        elif not fence and (match := HEADING.match(line)):
            found.append(match.group(2))
    return tuple(found)


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    result = set()
    for heading in headings(path):
        base = slug(heading)
        count = seen.get(base, 0)
        result.add(base if count == 0 else f"{base}-{count}")
        seen[base] = count + 1
    return result


def stale_links() -> list[str]:
    stale = []
    for citation in citations():
        if citation.source.suffix != ".md":
            continue
        for match in LINK.finditer(citation.text):
            target = match.group(1)
            if re.match(r"[a-z][a-z0-9+.-]*:", target, re.I):
                continue  # a URL (mailto:, https:)
            location, _, anchor = target.partition("#")
            path = (citation.source.parent / location).resolve() if location else citation.source
            if not path.exists():
                stale.append(f"{citation.where()}: link {target} (no such file)")
            elif anchor and path.suffix == ".md" and anchor not in anchors(path):
                stale.append(f"{citation.where()}: link {target} (no heading #{anchor} in {path.relative_to(ROOT)})")
    return stale


def document(name: str, citing: Path) -> Path | None:
    """The document a section citation names: beside the citing file, at the root, or in docs/."""
    name = name if name.endswith(".md") else f"{name}.md"
    for base in (citing.parent, ROOT, ROOT / "docs"):
        if (base / name).is_file():
            return base / name
    return None


def normal(title: str) -> str:
    return re.sub(r"[`*]", "", title).strip().rstrip(".").lower()


def names_heading(cited: str, heading: str) -> bool:
    """The heading itself, or its first words up to a comma, colon or parenthesis
    ("A request's path" for "A request's path, function by function")."""
    cited, heading = normal(cited), normal(heading)
    return heading == cited or (heading.startswith(cited) and heading[len(cited):].startswith((",", ":", " (")))


def contract_sections() -> set[str]:
    return {match.group(1) for heading in headings(ROOT / "docs" / "CONTRACT.md")
            if (match := re.match(r"(\d+)\.", heading))}


def stale_sections() -> list[str]:
    stale = []
    contract = ROOT / "docs" / "CONTRACT.md"
    for citation in citations():
        for match in SECTION.finditer(citation.text):
            path = document(match.group(1), citation.source)
            if path is None:
                stale.append(f'{citation.where()}: {match.group(1)}, "{match.group(2)}" (no such document)')
            elif not any(names_heading(match.group(2), heading) for heading in headings(path)):
                stale.append(f'{citation.where()}: {match.group(1)}, "{match.group(2)}" '
                             f"(no such heading in {path.relative_to(ROOT)})")
        numbers = [m.group(1) for m in CONTRACT_SECTION.finditer(citation.text)]
        if citation.source == contract:
            numbers += [m.group(1) for m in OWN_SECTION.finditer(citation.text)]
        for number in numbers:
            if number not in contract_sections():
                stale.append(f"{citation.where()}: CONTRACT §{number} (docs/CONTRACT.md has no section {number})")
    return stale


# --- the tests ---------------------------------------------------------------------------


def stale_command(group: str, command: str) -> str | None:
    commands = {cli.name: cli.commands for cli in (db_cli, token_cli, revoke_cli)}[group]
    return None if command in commands else f"no command {command!r} in flask {group}"


def stale_commands() -> list[str]:
    return [f"{citation.where()}: flask {group} {command}: {problem}" for citation in citations()
            for group, command in FLASK_COMMAND.findall(citation.text)
            if (problem := stale_command(group, command)) is not None]


def report(kind: str, stale: list[str]) -> str:
    return f"{len(stale)} stale {kind}:\n  " + "\n  ".join(stale)


def test_the_sources_are_read():
    sources = {citation.source.relative_to(ROOT).as_posix() for citation in citations()}
    for expected in ("README.md", "ARCHITECTURE.md", "docs/CONTRACT.md", "docs/DEPLOY.md", "bench/README.md",
                     "integrations/better-auth/README.md", "app/revocation/store.py", "serve.py",
                     "gunicorn.conf.py", "wsgi.py", "tests/conftest.py",
                     "deploy/nginx/templates/default.conf.template"):
        assert expected in sources, expected


def test_cited_files_exist():
    stale = stale_file_references()
    assert not stale, report("file references", stale)


def test_cited_modules_exist():
    stale = stale_module_references()
    assert not stale, report("module references", stale)


def test_markdown_links_resolve():
    stale = stale_links()
    assert not stale, report("links", stale)


def test_cited_sections_exist():
    stale = stale_sections()
    assert not stale, report("section references", stale)


def test_cited_commands_exist():
    stale = stale_commands()
    assert not stale, report("command references", stale)


def test_the_checks_catch_what_they_should(tmp_path):
    citing = ROOT / "docs" / "CONTRACT.md"
    here = Citation(citing, 1, "")
    assert stale_path(here, "app/revocation/store.py") is None
    assert stale_path(here, "tests/integration/test_nginx.py") is None
    assert stale_path(here, "deploy/nginx/templates/default.conf.template") is None
    assert stale_path(here, "docs/DEPLOY.md") is None
    assert stale_path(here, "bench/rebuild.py") is None
    assert stale_path(here, "app/revocation/nowhere.py") == "no such file or directory"
    assert stale_path(here, "lib/auth.ts") is None  # a frontend's file, not ours
    assert stale_module("app.revocation.store", None) is None
    assert stale_module("app.gate", None) is None
    assert stale_module("app.security.tokens", None) is None
    assert stale_module("app.config", "load_server_settings") is None
    assert stale_module("app.config.load_server_settings", None) is None
    assert stale_module("blueprints.health", "bp") is None
    assert stale_module("app.revocation.nowhere", None) is not None
    assert stale_module("app.config.no_such_name", None) is not None
    assert [m.group(1) for m in PATH.finditer("see bench/results/<stamp>.json and /etc/nginx/x.conf")] == []
    assert [m.group(1) for m in MODULE.finditer(URL.sub(" ", "see https://app.example.com/x"))] == []
    assert [m.group(1) for m in PATH.finditer("docker/compose's own release")] == []
    assert FLASK_COMMAND.findall("`flask --app wsgi revoke verify` or flask db wait") == [("revoke", "verify"),
                                                                                        ("db", "wait")]
    assert stale_command("revoke", "verify") is None and stale_command("revoke", "list") is not None
    assert names_heading("A request's path", "A request's path, function by function")
    assert not names_heading("Redis", "Redis topologies")
    assert slug("1. Better Auth's `jwt()` plugin (JWKS; recommended)") == "1-better-auths-jwt-plugin-jwks-recommended"
    sample = tmp_path / "sample.md"
    sample.write_text("text app/x.py\n```ts\n// app/api/token/route.ts\n```\n```\nout bench/x.py\n```\n"
                      "```sh\nbench/run.py\n```\n")
    assert [(c.line, c.text) for c in markdown_lines(sample)] == [(1, "text app/x.py"), (9, "bench/run.py")]
