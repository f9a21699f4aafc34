# Copyright: barman.postgresql contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The error codes: one table, every refusal coded from it, every code in use, and ansible-doc lists them all."""

import ast
import glob
import importlib
import os
import re

import pytest
import yaml

from ansible_collections.barman.postgresql.plugins.doc_fragments.error_codes import ModuleDocFragment
from ansible_collections.barman.postgresql.plugins.module_utils.errors import ERROR_CODES, BarmanError

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), '..', '..', '..', '..'))
# Where refusals are raised: module_utils and the programs installed on hosts, and the modules themselves.
SOURCES = sorted(
    glob.glob(os.path.join(ROOT, 'plugins', '**', '*.py'), recursive=True)
    + glob.glob(os.path.join(ROOT, 'runtime', '*.py'))
)
GENERIC = BarmanError.code


def _import_all():
    """Every module of module_utils and runtime, so that every BarmanError subclass is defined."""
    for directory, package in (
        ('plugins/module_utils', 'ansible_collections.barman.postgresql.plugins.module_utils'),
        ('runtime', 'ansible_collections.barman.postgresql.runtime'),
    ):
        for path in sorted(glob.glob(os.path.join(ROOT, directory, '*.py'))):
            name = os.path.basename(path)[:-3]
            if name != '__init__':
                importlib.import_module('%s.%s' % (package, name))


def _error_classes():
    _import_all()
    found, todo = [], [BarmanError]
    while todo:
        cls = todo.pop()
        found.append(cls)
        todo.extend(cls.__subclasses__())
    return found


def _source_trees():
    for path in SOURCES:
        with open(path) as handle:
            yield os.path.relpath(path, ROOT), ast.parse(handle.read(), path)


def _called_name(call):
    if isinstance(call.func, ast.Name):
        return call.func.id
    if isinstance(call.func, ast.Attribute):
        return call.func.attr
    return None


def _code_literals():
    """(file, line, code) of every ``code='...'`` keyword in the sources."""
    for relative, tree in _source_trees():
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                for keyword in node.keywords:
                    if keyword.arg == 'code' and isinstance(keyword.value, ast.Constant):
                        yield relative, node.lineno, keyword.value.value


def test_the_codes_are_upper_snake_and_their_meanings_one_line_each():
    for code, meaning in ERROR_CODES.items():
        assert re.fullmatch(r'[A-Z][A-Z0-9]*(_[A-Z0-9]+)*', code), code
        assert meaning and '\n' not in meaning and meaning == meaning.strip(), code
        assert not meaning.endswith('.'), 'the doc fragment adds the full stop: %s' % code
    assert 20 <= len(ERROR_CODES) <= 70, 'tens of codes, each meaningful: %d' % len(ERROR_CODES)
    assert {'SSH_FAILED', 'RSYNC_FAILED', 'LOCK_BUSY', 'ARCHIVE_GAP'} <= set(ERROR_CODES)


def test_the_default_code_of_every_error_class_is_in_the_table():
    classes = _error_classes()
    assert len(classes) > 20
    for cls in classes:
        assert cls.code in ERROR_CODES, '%s.%s: %r' % (cls.__module__, cls.__name__, cls.code)


def test_every_code_literal_in_the_sources_is_in_the_table():
    literals = list(_code_literals())
    assert len(literals) > 50
    unknown = [(path, line, code) for path, line, code in literals if code not in ERROR_CODES]
    assert unknown == []


def test_every_code_of_the_table_is_used():
    used = {cls.code for cls in _error_classes()} | {code for _path, _line, code in _code_literals()}
    assert sorted(set(ERROR_CODES) - used) == []


def test_a_class_that_covers_several_refusals_is_never_raised_without_its_code():
    # Such a class keeps the generic default: each of its raises says what happened.
    generic = {cls.__name__ for cls in _error_classes() if cls.code == GENERIC}
    uncoded = []
    for relative, tree in _source_trees():
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and _called_name(node) in generic:
                if not any(keyword.arg == 'code' for keyword in node.keywords):
                    uncoded.append('%s:%d %s' % (relative, node.lineno, _called_name(node)))
    assert uncoded == []


def test_a_code_given_replaces_the_class_default():
    error = BarmanError('the archive stops early', 'Restore the missing files', code='ARCHIVE_GAP', first='0001')
    assert (error.code, error.message, error.hint, error.data) == (
        'ARCHIVE_GAP',
        'the archive stops early',
        'Restore the missing files',
        {'first': '0001'},
    )
    assert BarmanError('something').code == GENERIC


def test_fail_json_kwargs_carry_the_code_besides_message_hint_and_data():
    from ansible_collections.barman.postgresql.plugins.module_utils.lockfile import LockBusy

    error = LockBusy('The backup lock is held by process 7', 'Wait for it to finish and retry', holder_pid=7)
    assert error.fail_json_kwargs() == dict(
        msg='The backup lock is held by process 7. Wait for it to finish and retry',
        hint='Wait for it to finish and retry',
        error_code='LOCK_BUSY',
        holder_pid=7,
    )
    assert BarmanError('no hint').fail_json_kwargs() == dict(msg='no hint', error_code=GENERIC)


@pytest.mark.parametrize('code', ['NO_SUCH_CODE', 'lock_busy', 'LOCK BUSY', 42])
def test_an_unknown_code_is_refused(code):
    with pytest.raises(ValueError, match='not an error code'):
        raise BarmanError('message', code=code)


def test_an_unknown_class_default_is_refused_at_construction():
    class Undeclared(BarmanError):
        code = 'NOT_IN_THE_TABLE'

    with pytest.raises(ValueError, match='NOT_IN_THE_TABLE'):
        raise Undeclared('message')


def test_the_doc_fragment_lists_exactly_the_codes_of_the_table():
    doc = yaml.safe_load(ModuleDocFragment.DOCUMENTATION)
    assert doc['options'] == {}
    intro, listed = doc['notes'][0], doc['notes'][1:]
    assert 'RV(error_code)' in intro
    assert listed == ['C(%s): %s.' % item for item in ERROR_CODES.items()]


def test_every_module_extends_the_fragment_and_returns_error_code():
    for path in sorted(glob.glob(os.path.join(ROOT, 'plugins', 'modules', '*.py'))):
        module = ast.parse(open(path).read(), path)
        strings = {
            node.targets[0].id: node.value.value
            for node in module.body
            if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name)
            if isinstance(node.value, ast.Constant)
        }
        documentation, returned = yaml.safe_load(strings['DOCUMENTATION']), yaml.safe_load(strings['RETURN'])
        assert 'barman.postgresql.error_codes' in documentation['extends_documentation_fragment'], path
        assert returned['error_code']['type'] == 'str', path
        assert all(isinstance(line, str) for line in returned['error_code']['description']), path
        assert returned['error_code']['sample'] in ERROR_CODES, path
