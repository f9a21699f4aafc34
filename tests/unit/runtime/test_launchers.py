"""The Python launchers the common role installs start their program from exactly the files the role
copies (runtime_files), with nothing else on the path."""

import json
import os
import shutil
import subprocess
import sys

import jinja2
import pytest
from ansible_collections.barman.postgresql.plugins.filter.runtime import COLLECTION_ROOT, runtime_files

PROGRAMS = ['runtime/walreceiver.py', 'runtime/walsender.py', 'runtime/catalogreader.py', 'runtime/walforwarder.py']


@pytest.fixture(scope='module')
def lib_dir(tmp_path_factory):
    """barman_lib_dir as the role fills it: the runtime files under ansible_collections/, nothing more."""
    lib = tmp_path_factory.mktemp('lib')
    for relative in runtime_files(PROGRAMS):
        target = lib / 'ansible_collections' / 'barman' / 'postgresql' / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(os.path.join(COLLECTION_ROOT, relative), str(target))
    return lib


@pytest.mark.parametrize('module', ['walreceiver', 'walsender', 'catalogreader', 'walforwarder'])
def test_each_launcher_starts_its_program_from_the_installed_files(lib_dir, module):
    template = os.path.join(COLLECTION_ROOT, 'roles', 'common', 'templates', 'launcher.py.j2')
    environment = jinja2.Environment(keep_trailing_newline=True)
    environment.filters['to_json'] = json.dumps
    with open(template) as handle:
        text = environment.from_string(handle.read()).render(
            ansible_managed='test', barman_lib_dir=str(lib_dir), item=dict(module=module)
        )
    launcher = lib_dir / ('launcher-%s.py' % module)
    launcher.write_text(text)
    # -I -S as the shebang says: the checkout is not importable, only what the role installed.
    proc = subprocess.run(
        [sys.executable, '-I', '-S', str(launcher), '--help'], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert 'usage:' in proc.stdout
