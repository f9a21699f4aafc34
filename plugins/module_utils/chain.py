# Copyright: barman.postgresql contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Chains of block-level incremental backups (PostgreSQL 17+): each incremental names its parent in
``parent_backup_id`` (Barman's field), the parent lists it in ``children_backup_ids``. The parent pointers
are the truth; the children lists are kept for Barman, which reads them.

A chain is restored by ``pg_combinebackup`` into a directory of its own under the server's catalog, with
hard links into the chain's files where the program can (PostgreSQL 18's ``--link``), so that combining
costs neither a copy nor its space; the copy to the destination then reads that directory like any backup.
"""

import os
import shutil
import subprocess
import tempfile
from typing import Any, List, Mapping, Optional

from ansible_collections.barman.postgresql.plugins.module_utils import catalog, infofile, pgtools
from ansible_collections.barman.postgresql.plugins.module_utils.errors import BarmanError

# The mode Barman writes for a backup taken with pg_basebackup (backup_method = postgres).
POSTGRES_MODE = 'postgres'
# pg_combinebackup --link: PostgreSQL 18.
LINK_VERSION = 180000
# The directory a chain is combined into, under the server's catalog: .combine-<pid>-<random>.
COMBINE_PREFIX = '.combine-'


class ChainError(BarmanError):
    """A chain is broken or could not be combined; nothing was changed in the catalog."""

    code = 'BROKEN_CHAIN'


def is_incremental(info: Mapping[str, Any]) -> bool:
    return bool(info.get('parent_backup_id'))


def backup_type(info: Mapping[str, Any]) -> str:
    """Barman's backup type: rsync, or for pg_basebackup's backups full or incremental."""
    if (info.get('mode') or '').startswith('rsync'):
        return 'rsync'
    return 'incremental' if is_incremental(info) else 'full'


def version_text(version: Any) -> Optional[str]:
    """PostgreSQL's server_version_num as people write it: 180006 -> '18.6', 150018 -> '15.18'."""
    try:
        number = int(version)
    except (TypeError, ValueError):
        return None
    return '%d.%d' % (number // 10000, number % 10000)


def ancestry(infos: Mapping[str, Mapping[str, Any]], backup_id: str) -> List[str]:
    """[full backup, ..., backup_id]: the backups a restore of ``backup_id`` combines, oldest first.

    Refuses a chain with a parent missing from the catalog or not DONE: it cannot be restored."""
    chain = [backup_id]
    while is_incremental(infos[chain[0]]):
        parent = infos[chain[0]]['parent_backup_id']
        if parent not in infos or infos[parent]['status'] != infofile.DONE or parent in chain:
            raise ChainError(
                'backup %s is an incremental whose parent %s is %s: %s cannot be restored'
                % (chain[0], parent, infos[parent]['status'] if parent in infos else 'not in the catalog', backup_id),
                'Restore an older complete backup (backup_id), or take a new full backup',
                backup_id=backup_id,
                parent_backup_id=parent,
            )
        chain.insert(0, parent)
    return chain


def children(infos: Mapping[str, Mapping[str, Any]], backup_id: str) -> List[str]:
    """The backups built on ``backup_id``; a FAILED one is not (it is never restored, and Barman lists none)."""
    return sorted(
        b
        for b, info in infos.items()
        if info.get('parent_backup_id') == backup_id and info['status'] != infofile.FAILED
    )


def descendants(infos: Mapping[str, Mapping[str, Any]], backup_id: str) -> List[str]:
    """Every backup built on ``backup_id`` (children, their children ...), in id order."""
    found, todo = [], children(infos, backup_id)
    while todo:
        child = todo.pop(0)
        if child not in found:
            found.append(child)
            todo += children(infos, child)
    return sorted(found)


def set_children(layout: catalog.ServerLayout, parent_id: str, infos: Mapping[str, Mapping[str, Any]]) -> None:
    """Rewrite the parent's children_backup_ids from the parent pointers of ``infos`` (atomic write)."""
    path = layout.backup_info_path(parent_id)
    if not os.path.exists(path):
        return
    info = infofile.read_backup_info(path)
    listed = children(infos, parent_id) or None
    if info.get('children_backup_ids') != listed:
        info['children_backup_ids'] = listed
        infofile.write_backup_info(path, info)


def combined_size(layout: catalog.ServerLayout, infos: Mapping[str, Mapping[str, Any]], chain: List[str]) -> int:
    """What the combined data weighs: the chain's newest known cluster size, at least its full backup's size."""
    sizes = [infos[chain[0]].get('size') or 0] + [infos[b].get('cluster_size') or 0 for b in chain]
    return max(sizes)


def links_files(info: Mapping[str, Any]) -> bool:
    """pg_combinebackup of this backup's major version can hard-link unchanged files (PostgreSQL 18+)."""
    return int(info['version']) >= LINK_VERSION


def check_combine_space(layout: catalog.ServerLayout, size: int) -> None:
    """Refuse a combine that copies (PostgreSQL 17) when the catalog's filesystem cannot hold it."""
    free = shutil.disk_usage(layout.root).free
    if size > free:
        raise ChainError(
            'combining the incremental backup needs %d MiB on the backup server (%s), which has %d MiB free'
            % (size >> 20, layout.root, free >> 20),
            'Free space on the backup server (retention), or recover a full backup (backup_id); nothing was copied',
            code='NOT_ENOUGH_SPACE',
            needed_bytes=size,
            free_bytes=free,
        )


def sweep_combined(layout: catalog.ServerLayout) -> List[str]:
    """Remove what a recovery killed while combining left (``.combine-<pid>-*`` of a process gone): on
    PostgreSQL 18 its hard links would keep the space of backups that retention deletes."""
    removed = []
    for entry in os.listdir(layout.root) if os.path.isdir(layout.root) else []:
        if not entry.startswith(COMBINE_PREFIX):
            continue
        pid = entry[len(COMBINE_PREFIX) :].split('-', 1)[0]
        if pid.isdigit() and not os.path.exists('/proc/%s' % pid):
            shutil.rmtree(os.path.join(layout.root, entry), ignore_errors=True)
            removed.append(entry)
    return removed


class Combined:
    """A chain combined into ``<catalog>/.combine-*/``: ``data`` and one directory per tablespace oid.
    Removed on exit; with hard links into the chain, it must only ever be read."""

    def __init__(
        self,
        layout: catalog.ServerLayout,
        infos: Mapping[str, Mapping[str, Any]],
        chain: List[str],
        pg_bindir: Optional[str],
    ) -> None:
        self.layout = layout
        self.infos = infos
        self.chain = chain
        self.major = int(infos[chain[-1]]['version']) // 10000
        self.bindir = pgtools.bindir(pg_bindir, self.major)
        self.root = None  # type: Optional[str]
        self.method = None  # type: Optional[str]

    def tablespace_dir(self, oid: int) -> str:
        return os.path.join(self.root, str(oid))

    @property
    def data(self) -> str:
        return os.path.join(self.root, 'data')

    def tool(self) -> str:
        """pg_combinebackup of the chain's major version, refused before anything is done when missing."""
        return pgtools.local_tool(
            self.bindir, 'pg_combinebackup', self.major, 'restoring an incremental backup', exact=True
        )

    def __enter__(self) -> 'Combined':
        tool = self.tool()
        sweep_combined(self.layout)
        self.root = tempfile.mkdtemp(prefix='%s%d-' % (COMBINE_PREFIX, os.getpid()), dir=self.layout.root)
        # PostgreSQL 18 links the unchanged files instead of copying them (same filesystem: the catalog's).
        self.method = 'link' if links_files(self.infos[self.chain[-1]]) else 'copy'
        # --no-sync: the directory lives for one copy to the destination, which syncs what it writes.
        argv = [tool, '--no-sync', '--output', self.data] + (['--link'] if self.method == 'link' else [])
        # Tablespaces go beside the combined data, never where the newest backup keeps its own.
        for tablespace in self.infos[self.chain[-1]].get('tablespaces') or []:
            argv.append(
                '--tablespace-mapping=%s=%s'
                % (
                    self.layout.backup_tablespace_dir(self.chain[-1], tablespace.oid),
                    self.tablespace_dir(tablespace.oid),
                )
            )
        argv += [self.layout.backup_data_dir(b) for b in self.chain]
        proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, check=False)
        if proc.returncode != 0:
            self.__exit__(None, None, None)
            raise ChainError(
                'pg_combinebackup could not combine %s: %s'
                % (' + '.join(self.chain), proc.stdout.decode('utf-8', 'replace').strip()[-2000:]),
                'Check the chain with verify.yml; restore an older complete backup (backup_id) meanwhile',
                code='COMBINE_FAILED',
                chain=self.chain,
            )
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.root:
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = None
