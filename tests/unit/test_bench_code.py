"""The benchmarks call the collection's code, some of it from child scripts held in strings that no linter
reads: every name they take from the collection must exist, or a refactor breaks bench/ unseen."""

import ast
import glob
import importlib
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PACKAGE = 'ansible_collections.barman.postgresql.'


def _sources():
    """(where, Python source) of each bench script and of each child script string in it."""
    for path in sorted(glob.glob(os.path.join(ROOT, 'bench', '*.py'))):
        with open(path) as handle:
            text = handle.read()
        yield os.path.basename(path), text
        for node in ast.parse(text).body:
            if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant):
                value = node.value.value
                if isinstance(value, str) and PACKAGE in value:
                    yield '%s:%s' % (os.path.basename(path), node.targets[0].id), value


def _uses(text):
    """(module, attribute) for each attribute read on a module of the collection imported by name."""
    tree = ast.parse(text)
    modules = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or '').startswith(PACKAGE):
            for alias in node.names:
                modules[alias.asname or alias.name] = '%s.%s' % (node.module, alias.name)
                yield node.module, alias.name
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in modules:
            yield modules[node.value.id], node.attr


SOURCES = list(_sources())


@pytest.mark.parametrize('where, text', SOURCES, ids=[where for where, _text in SOURCES])
def test_every_name_the_benchmarks_take_from_the_collection_exists(where, text):
    missing = []
    for module, attribute in set(_uses(text)):
        try:
            found = importlib.import_module(module)
        except ImportError:
            missing.append(module)
            continue
        if not hasattr(found, attribute):
            try:
                importlib.import_module('%s.%s' % (module, attribute))
            except ImportError:
                missing.append('%s.%s' % (module, attribute))
    assert not missing, '%s uses what the collection does not have: %s' % (where, ', '.join(sorted(missing)))
