"""MkDocs hooks of the randpos site (``mkdocs.yml``; not a page of it).

* The committed studies (``results/``, beside ``docs/``) become files of the site, and the
  pages' links to ``../results/...`` point at them, so a study's report and figures open from
  its page and a broken one fails ``mkdocs build --strict``.
* Every public function, class and method of the package must have a docstring: each one
  without is a warning, which ``--strict`` turns into a failed build. A method that overrides a
  documented one (an encoding's ``bias``, a module's ``forward``) inherits its documentation.
  ``tests/test_docstrings.py`` runs the same check with the tests.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import pkgutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "results"
#: the studies' binary stores and frames stay out of the site (they are data, not pages)
LEFT_OUT = (".sqlite", ".parquet")
log = logging.getLogger("mkdocs.hooks.randpos")  # mkdocs counts its warnings under --strict


def on_files(files, config):
    """Add the committed studies' reports, tables and figures to the site, at ``results/``."""
    from mkdocs.structure.files import File  # the docs build's own dependency

    for path in sorted(RESULTS.rglob("*")):
        if path.is_file() and path.suffix not in LEFT_OUT:
            src = path.relative_to(ROOT).as_posix()
            files.append(File(src, str(ROOT), config["site_dir"], config["use_directory_urls"]))
    return files


def on_page_markdown(markdown, page, config, files):
    """``../results/X`` in a page of ``docs/`` is ``results/X`` of the site."""
    depth = page.file.src_uri.count("/")
    return markdown.replace("](../results/", "](" + "../" * depth + "results/")


def on_pre_build(config):
    """Warn (an error under ``--strict``) for each public object without a docstring."""
    for name in missing_docstrings():
        log.warning(f"no docstring: {name}")


def public_objects(package: str = "randpos"):
    """``(qualified name, object)`` for every public function, class and method defined in the
    package: module-level names without a leading underscore (those in ``__all__`` where a
    module declares it), and the public methods and properties of the public classes."""
    root = importlib.import_module(package)
    for info in pkgutil.walk_packages(root.__path__, f"{package}."):
        if info.name.endswith("__main__"):
            continue
        module = importlib.import_module(info.name)
        listed = getattr(module, "__all__", None)
        for name, obj in vars(module).items():
            if name.startswith("_") or getattr(obj, "__module__", None) != module.__name__:
                continue
            if listed is not None and name not in listed:
                continue
            if inspect.isfunction(obj):
                yield f"{info.name}.{name}", obj
            elif inspect.isclass(obj):
                yield f"{info.name}.{name}", obj
                for attr, member in vars(obj).items():
                    if attr.startswith("_"):
                        continue
                    if isinstance(member, (classmethod, staticmethod)):
                        member = member.__func__
                    if isinstance(member, property):
                        member = member.fget
                    if inspect.isfunction(member):
                        yield f"{info.name}.{name}.{attr}", member


def missing_docstrings(package: str = "randpos") -> list[str]:
    """The public objects of :func:`public_objects` that have no docstring of their own, nor
    one inherited from the method they override (a dataclass's generated signature is not
    one)."""
    missing = []
    for name, obj in public_objects(package):
        doc = obj.__doc__ or ""
        if inspect.isclass(obj):
            if not doc or doc.startswith(obj.__name__ + "("):  # dataclass's generated text
                missing.append(name)
            continue
        if doc:
            continue
        owner_name, _, attr = name.rpartition(".")
        owner = _lookup(owner_name)
        if inspect.isclass(owner) and any(
            inspect.getdoc(getattr(base, attr, None))
            for base in owner.__mro__[1:]
            if base is not object and hasattr(base, attr)
        ):
            continue  # documented where it is declared
        missing.append(name)
    return missing


def _lookup(qualified: str):
    module_name, _, rest = qualified.partition(".")
    obj = importlib.import_module(module_name)
    parts = rest.split(".")
    for i, part in enumerate(parts):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            obj = importlib.import_module(".".join([module_name, *parts[: i + 1]]))
    return obj
