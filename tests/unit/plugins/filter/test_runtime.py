"""The files installed with the WAL receiver and sender follow their imports."""

import ast
import os

import pytest
from ansible.errors import AnsibleFilterError
from ansible_collections.barman.postgresql.plugins.filter.runtime import COLLECTION_ROOT, runtime_files

PROGRAMS = ['runtime/walreceiver.py', 'runtime/walsender.py']


def test_the_list_holds_the_programs_and_everything_they_import_and_nothing_else():
    files = runtime_files(PROGRAMS)
    assert set(PROGRAMS) <= set(files)
    for relative in files:
        assert os.path.isfile(os.path.join(COLLECTION_ROOT, relative)), relative
    # Closed: each file imports only files of the list (a missing one would fail on the host).
    for relative in files:
        with open(os.path.join(COLLECTION_ROOT, relative)) as handle:
            tree = ast.parse(handle.read())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or '').startswith('ansible_collections.barman.'):
                package = node.module.split('.', 3)[3].replace('.', '/')
                candidates = ['%s/%s.py' % (package, a.name) for a in node.names] + [package + '.py']
                assert any(c in files for c in candidates), (relative, node.module)
    # Nothing the programs do not use: the modules' own logic stays on the controller side.
    assert 'plugins/module_utils/recovery.py' not in files and 'plugins/module_utils/backup.py' not in files


def test_a_program_that_is_not_there_is_an_error_that_names_it():
    with pytest.raises(AnsibleFilterError, match='runtime/nothere.py'):
        runtime_files(['runtime/nothere.py'])
