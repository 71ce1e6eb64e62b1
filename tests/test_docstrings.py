"""Every public function, class and method of randpos has a docstring (or inherits one from the
method it overrides): the check the documentation site's build runs (docs/hooks.py), so that a
missing docstring fails the tests as well as ``mkdocs build --strict``."""

from __future__ import annotations

import importlib.util
from pathlib import Path

HOOKS = Path(__file__).resolve().parents[1] / "docs" / "hooks.py"


def load_hooks():
    spec = importlib.util.spec_from_file_location("randpos_docs_hooks", HOOKS)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_public_function_and_class_has_a_docstring():
    hooks = load_hooks()
    names = [name for name, _ in hooks.public_objects()]
    assert len(names) > 500  # the walk sees the package at all
    assert "randpos.positions.samplers.randomized_positions" in names
    assert hooks.missing_docstrings() == []


def test_the_check_finds_a_missing_docstring(tmp_path, monkeypatch):
    package = tmp_path / "undocumented_pkg"
    package.mkdir()
    (package / "__init__.py").write_text('"""A package."""\n')
    (package / "mod.py").write_text(
        "class Base:\n"
        '    """A base."""\n'
        "    def hook(self):\n"
        '        """Documented here."""\n'
        "class Child(Base):\n"
        '    """A child."""\n'
        "    def hook(self):  # inherits the base's docstring\n"
        "        return 1\n"
        "    def extra(self):\n"
        "        return 2\n"
        "def bare():\n"
        "    return 3\n"
        "def _private():\n"
        "    return 4\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    missing = load_hooks().missing_docstrings("undocumented_pkg")
    assert missing == ["undocumented_pkg.mod.Child.extra", "undocumented_pkg.mod.bare"]
