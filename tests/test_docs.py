"""The docs site and the README: the config reference is current, the nav and the pages agree, the README
stays short and its links resolve. No mkdocs needed (CI builds the site with `mkdocs build --strict`)."""

import importlib.util
import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
README = ROOT / "README.md"


def _config_docs():
    spec = importlib.util.spec_from_file_location("_script_config_docs", ROOT / "scripts" / "config_docs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _nav_paths(entries) -> list[str]:
    """Every page path in mkdocs.yml's nav, however deeply nested."""
    paths = []
    for entry in entries:
        value = next(iter(entry.values())) if isinstance(entry, dict) else entry
        if isinstance(value, list):
            paths += _nav_paths(value)
        elif not re.match(r"[a-z]+://", value):
            paths.append(value)
    return paths


def _nav() -> list[str]:
    return _nav_paths(yaml.safe_load((ROOT / "mkdocs.yml").read_text())["nav"])


def test_configuration_reference_is_current():
    config_docs = _config_docs()
    committed = config_docs.OUTPUT.read_text() if config_docs.OUTPUT.is_file() else ""
    assert committed == config_docs.generate(), (
        "docs/configuration-reference.md is not current with agent/config.py: run python scripts/config_docs.py "
        "and commit the result")


def test_configuration_reference_lists_every_key():
    from pydantic import BaseModel

    from agent.config import TrainConfig

    text = _config_docs().generate()
    for name, field in TrainConfig.model_fields.items():
        key = field.alias or name
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            assert f"\n## {key}\n" in text
            for sub_name, sub in field.annotation.model_fields.items():
                assert f"| `{key}.{sub.alias or sub_name}` |" in text
        else:
            assert f"| `{key}` |" in text
    assert "| `consolidation.lambda` | `float`, >= 0 | `10.0` | Penalty strength" in text
    assert "| `schedule.games` | `list[str]`, at least 1 item | required |" in text


def test_every_page_is_in_the_nav_and_every_nav_entry_exists():
    nav = _nav()
    missing = [path for path in nav if not (DOCS / path).is_file()]
    assert not missing, f"mkdocs.yml's nav names pages that do not exist under docs/: {missing}"
    pages = sorted(path.name for path in DOCS.glob("*.md"))
    left_out = [page for page in pages if page not in nav]
    assert not left_out, f"pages under docs/ missing from mkdocs.yml's nav: {left_out}"
    assert len(nav) == len(set(nav)), "a page is listed twice in mkdocs.yml's nav"


def test_readme_is_short_and_keeps_the_ci_test_command():
    text = README.read_text()
    lines = text.splitlines()
    assert len(lines) <= 250, f"README.md has {len(lines)} lines; move details to a page under docs/"
    ci = (ROOT / ".ci" / "run").read_text()
    command = next(line.strip() for line in ci.splitlines() if line.strip().startswith("python -m pytest"))
    assert command in text, f"README.md no longer shows the test command CI runs: {command}"


def _relative_links(text: str) -> list[str]:
    text = re.sub(r"```.*?```", "", text, flags=re.S)  # no links inside code blocks
    text = re.sub(r"`[^`\n]*`", "", text)
    targets = re.findall(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)", text)
    return [t for t in targets if not re.match(r"[a-z][a-z0-9+.-]*:", t) and not t.startswith("#")]


def test_readme_links_resolve():
    links = _relative_links(README.read_text())
    assert links, "README.md links to no docs page"
    broken = [link for link in links if not (ROOT / link.split("#")[0]).exists()]
    assert not broken, f"README.md links to files that do not exist: {broken}"


def test_docs_links_resolve():
    """Relative links between pages (mkdocs --strict checks the same, this runs without mkdocs)."""
    broken = []
    for page in DOCS.rglob("*.md"):
        for link in _relative_links(page.read_text()):
            target = (page.parent / link.split("#")[0]).resolve()
            if not target.exists() or DOCS.resolve() not in target.parents:
                broken.append(f"{page.relative_to(ROOT)}: {link}")
    assert not broken, f"links that do not resolve inside docs/ (write repo files as code spans): {broken}"
