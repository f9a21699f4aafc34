# Copyright: barman.postgresql contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Tests for backup.sync_filesystem: the copy is made durable before the backup can become DONE."""

import ctypes
import os

import pytest

from ansible_collections.barman.postgresql.plugins.module_utils import backup


def _tree(root):
    os.makedirs(os.path.join(root, 'data', 'base', '1'))
    with open(os.path.join(root, 'data', 'base', '1', '1259'), 'wb') as handle:
        handle.write(os.urandom(65536))
    os.link(os.path.join(root, 'data', 'base', '1', '1259'), os.path.join(root, 'data', 'base', '1', 'linked'))
    os.symlink('/nonexistent/elsewhere', os.path.join(root, 'data', 'dangling'))


def test_this_platform_has_syncfs():
    # The backup servers run Linux (Debian 12): one syncfs, not the per-file fallback.
    assert getattr(ctypes.CDLL(None, use_errno=True), 'syncfs', None) is not None


def test_a_backup_directory_is_synced(tmp_path):
    _tree(str(tmp_path))
    backup.sync_filesystem(str(tmp_path))


def test_the_fallback_fsyncs_files_and_directories_and_skips_links(tmp_path):
    _tree(str(tmp_path))
    backup._fsync_tree(str(tmp_path))


@pytest.mark.parametrize('what', ['missing', 'file'])
def test_a_path_that_cannot_be_synced_raises(tmp_path, what):
    path = tmp_path / 'x'
    if what == 'file':
        path.write_text('')
    with pytest.raises(OSError):
        backup.sync_filesystem(str(path))
