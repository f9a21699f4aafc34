# Copyright: barman.postgresql contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""``backup_manifest`` in PostgreSQL's own format, written into every backup, and read back to check it.

The format is the one pg_basebackup writes (src/backend/backup/backup_manifest.c) and pg_verifybackup
reads: version 1 up to PostgreSQL 16, version 2 (with the system identifier) from 17; one line per file
with its path relative to PGDATA (tablespace files under ``pg_tblspc/<oid>/``), size, modification time
and SHA256; the WAL range the backup needs; and a SHA256 of the manifest itself, over every byte up to
and including its penultimate newline.

In the catalog a tablespace lives in ``base/<id>/<oid>/`` while ``data/pg_tblspc/<oid>`` is still the
link to the original location, so pg_verifybackup runs with ``--ignore=pg_tblspc`` and
:func:`check_files` checks the tablespace files (or every file, where pg_verifybackup is missing).
"""

import concurrent.futures
import hashlib
import json
import os
import time
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

from ansible_collections.barman.postgresql.plugins.module_utils import catalog, wal
from ansible_collections.barman.postgresql.plugins.module_utils.errors import BarmanError

MANIFEST = 'backup_manifest'
ALGORITHM = 'SHA256'
# What pg_verifybackup never checks (pg_basebackup -R may rewrite the last ones); we do not either.
IGNORED = ('backup_manifest', 'pg_wal', 'postgresql.auto.conf', 'recovery.signal', 'standby.signal')
TABLESPACES = 'pg_tblspc'
_HASHES = {'SHA224': hashlib.sha224, 'SHA256': hashlib.sha256, 'SHA384': hashlib.sha384, 'SHA512': hashlib.sha512}
_CHUNK = 1024 * 1024
# hashlib lets go of the GIL on large buffers: a few threads read and hash files side by side.
_WORKERS = min(8, os.cpu_count() or 1)


class MalformedManifest(BarmanError, ValueError):
    """A backup_manifest that is not PostgreSQL's format, or whose own checksum does not match."""

    code = 'MALFORMED_MANIFEST'


def manifest_version(server_version: int) -> int:
    """The manifest version PostgreSQL ``server_version`` (e.g. 150004) writes."""
    return 2 if server_version >= 170000 else 1


def _file_hash(path: str, algorithm: str = ALGORITHM) -> str:
    digest = _HASHES[algorithm]()
    with open(path, 'rb') as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b''):
            digest.update(chunk)
    return digest.hexdigest()


def backup_files(
    layout: catalog.ServerLayout, backup_id: str, tablespace_oids: Sequence[int]
) -> Iterator[Tuple[str, str]]:
    """(path as the manifest names it, path in the catalog) of every regular file of a backup."""
    roots = [('', layout.backup_data_dir(backup_id))]
    roots += [('%s/%d/' % (TABLESPACES, oid), layout.backup_tablespace_dir(backup_id, oid)) for oid in tablespace_oids]
    for prefix, root in roots:
        for directory, subdirs, files in os.walk(root):
            relative = os.path.relpath(directory, root)
            relative = '' if relative == '.' else relative + '/'
            if not prefix and not relative:
                # pg_tblspc/<oid> are links to the original locations: the copies are the other roots.
                subdirs[:] = [d for d in subdirs if d not in (TABLESPACES, 'pg_wal')]
            for name in files:
                path = os.path.join(directory, name)
                manifest_path = prefix + relative + name
                if manifest_path != MANIFEST and os.path.isfile(path) and not os.path.islink(path):
                    yield manifest_path, path


def _path_field(manifest_path: str) -> Dict[str, str]:
    raw = os.fsencode(manifest_path)
    try:
        return {'Path': raw.decode('utf-8')}
    except UnicodeDecodeError:  # as PostgreSQL does for a name that is not UTF-8
        return {'Encoded-Path': raw.hex()}


def render(
    version: int,
    system_identifier: Optional[int],
    files: Sequence[Mapping[str, Any]],
    wal_ranges: Sequence[Tuple[int, int, int]],
) -> bytes:
    """The manifest's bytes: ``files`` [{Path, Size, Last-Modified, Checksum}] and ``wal_ranges``
    [(timeline, start LSN, end LSN)], laid out as PostgreSQL lays them out."""
    head = '{ "PostgreSQL-Backup-Manifest-Version": %d,\n' % version
    if version >= 2:
        head += '"System-Identifier": %d,\n' % int(system_identifier)
    lines = []
    for entry in files:
        fields = ['%s: %s' % (json.dumps(k), json.dumps(v)) for k, v in _path_field(entry['Path']).items()]
        fields.append('"Size": %d' % entry['Size'])
        fields.append('"Last-Modified": %s' % json.dumps(entry['Last-Modified']))
        fields.append('"Checksum-Algorithm": "%s", "Checksum": "%s"' % (ALGORITHM, entry['Checksum']))
        lines.append('{ %s }' % ', '.join(fields))
    ranges = [
        '{ "Timeline": %d, "Start-LSN": "%s", "End-LSN": "%s" }' % (tli, wal.format_lsn(start), wal.format_lsn(end))
        for tli, start, end in wal_ranges
    ]
    body = head + '"Files": [\n' + ',\n'.join(lines) + '\n],\n"WAL-Ranges": [\n' + ',\n'.join(ranges) + '\n],\n'
    data = body.encode('utf-8', errors='surrogateescape')
    return data + b'"Manifest-Checksum": "' + hashlib.sha256(data).hexdigest().encode() + b'"}\n'


def _linked_checksums(layout, backup_id, reference_id, tablespace_oids):
    """{manifest path: checksum} of the reference backup's files that this backup shares by hard link."""
    if not reference_id:
        return {}
    try:
        reference = read(layout.manifest_path(reference_id))
    except (OSError, MalformedManifest):
        return {}
    if reference['algorithm'] != ALGORITHM:
        return {}
    shared = {}
    for entry in reference['files']:
        mine = resolve(layout, backup_id, entry['path'], tablespace_oids)
        theirs = resolve(layout, reference_id, entry['path'], tablespace_oids)
        try:
            if os.path.samefile(mine, theirs):  # one inode: the same bytes, hashed already
                shared[entry['path']] = entry['checksum']
        except OSError:
            continue
    return shared


def write_manifest(
    layout: catalog.ServerLayout,
    backup_id: str,
    info: Mapping[str, Any],
    end_lsn: Any,
    reference_id: Optional[str] = None,
) -> Dict[str, Any]:
    """Write ``backup_manifest`` into the backup's data directory (atomically) from the files on disk.

    ``info``: the backup's backup.info fields (version, systemid, timeline, begin_xlog, tablespaces);
    ``end_lsn``: where pg_backup_stop() ended it. Files hard-linked to ``reference_id``'s take their
    checksum from its manifest. Returns {files, bytes, hashed_bytes, seconds}.
    """
    started = time.monotonic()
    oids = [t.oid for t in info.get('tablespaces') or []]
    shared = _linked_checksums(layout, backup_id, reference_id, oids)
    entries = []
    to_hash = []
    for manifest_path, path in backup_files(layout, backup_id, oids):
        st = os.stat(path)
        entry = {
            'Path': manifest_path,
            'Size': st.st_size,
            'Last-Modified': time.strftime('%Y-%m-%d %H:%M:%S GMT', time.gmtime(st.st_mtime)),
            'Checksum': shared.get(manifest_path),
        }
        entries.append(entry)
        if entry['Checksum'] is None:
            to_hash.append((entry, path))
    with concurrent.futures.ThreadPoolExecutor(_WORKERS) as pool:
        for (entry, _path), checksum in zip(to_hash, pool.map(lambda item: _file_hash(item[1]), to_hash)):
            entry['Checksum'] = checksum
    entries.sort(key=lambda e: e['Path'])
    ranges = [(info['timeline'], wal.parse_lsn(info['begin_xlog']), wal.parse_lsn(end_lsn))]
    data = render(manifest_version(int(info['version'])), info.get('systemid'), entries, ranges)
    catalog.atomic_write(layout.manifest_path(backup_id), data, 0o600)
    return dict(
        files=len(entries),
        bytes=sum(e['Size'] for e in entries),
        hashed_bytes=sum(e['Size'] for e, _p in to_hash),
        seconds=round(time.monotonic() - started, 3),
    )


# -- reading it back -------------------------------------------------------------------------------------


def parse(data: bytes, source: str = MANIFEST) -> Dict[str, Any]:
    """{version, system_identifier, algorithm, files: [{path, size, algorithm, checksum}], wal_ranges} of a
    manifest's bytes, after checking its own checksum; MalformedManifest otherwise."""

    def refuse(why):
        return MalformedManifest(
            '%s is not a PostgreSQL backup manifest: %s' % (source, why),
            'Write it again with pg_backup_catalog action=manifest (the backup itself is not changed)',
            path=source,
        )

    body_end = data.rfind(b'\n', 0, len(data.rstrip(b'\n')))
    if body_end < 0:
        raise refuse('it has no line structure')
    try:
        document = json.loads(data.decode('utf-8', errors='surrogateescape'))
        expected = document['Manifest-Checksum']
        files = [
            dict(
                path=f['Path'] if 'Path' in f else os.fsdecode(bytes.fromhex(f['Encoded-Path'])),
                size=int(f['Size']),
                algorithm=f.get('Checksum-Algorithm', 'NONE'),
                checksum=f.get('Checksum'),
            )
            for f in document['Files']
        ]
        ranges = [
            (int(r['Timeline']), wal.parse_lsn(r['Start-LSN']), wal.parse_lsn(r['End-LSN']))
            for r in document['WAL-Ranges']
        ]
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise refuse('%s: %s' % (type(exc).__name__, exc)) from None
    if hashlib.sha256(data[: body_end + 1]).hexdigest() != expected:
        raise refuse('its Manifest-Checksum does not match its content (it was changed or cut short)')
    algorithms = set(f['algorithm'] for f in files)
    return dict(
        version=document.get('PostgreSQL-Backup-Manifest-Version'),
        system_identifier=document.get('System-Identifier'),
        algorithm=algorithms.pop() if len(algorithms) == 1 else 'mixed',
        files=files,
        wal_ranges=ranges,
    )


def read(path: str) -> Dict[str, Any]:
    with open(path, 'rb') as handle:
        return parse(handle.read(), path)


def resolve(layout: catalog.ServerLayout, backup_id: str, manifest_path: str, tablespace_oids: Sequence[int]) -> str:
    """Where a manifest path lives in the catalog (``pg_tblspc/<oid>/...`` in ``base/<id>/<oid>/``)."""
    parts = manifest_path.split('/', 2)
    if parts[0] == TABLESPACES and len(parts) == 3 and parts[1].isdigit() and int(parts[1]) in tablespace_oids:
        return os.path.join(layout.backup_tablespace_dir(backup_id, int(parts[1])), parts[2])
    return os.path.join(layout.backup_data_dir(backup_id), manifest_path)


def _ignored(manifest_path: str) -> bool:
    return any(manifest_path == i or manifest_path.startswith(i + '/') for i in IGNORED)


def check_files(
    layout: catalog.ServerLayout,
    backup_id: str,
    tablespace_oids: Sequence[int],
    only_under: Optional[str] = None,
    parsed: Optional[Mapping[str, Any]] = None,
    ignored: Sequence[str] = (),
) -> List[Dict[str, str]]:
    """What differs between a backup and its manifest: [{file, problem}] (empty: every file is as
    written). ``only_under``: check only the paths below this manifest directory (e.g. pg_tblspc).
    ``parsed``: the manifest as :func:`read` returned it, when the caller read it already. ``ignored``: more
    paths that are not in the manifest by design."""
    parsed = parsed or read(layout.manifest_path(backup_id))

    def wanted(path):
        return not _ignored(path) and path not in ignored and (only_under is None or path.startswith(only_under + '/'))

    problems = []
    listed = set()
    to_hash = []
    for entry in parsed['files']:
        if not wanted(entry['path']):
            continue
        listed.add(entry['path'])
        path = resolve(layout, backup_id, entry['path'], tablespace_oids)
        try:
            size = os.stat(path).st_size
        except FileNotFoundError:
            problems.append(dict(file=entry['path'], problem='missing from the backup'))
            continue
        if size != entry['size']:
            problems.append(dict(file=entry['path'], problem='size %d, the manifest says %d' % (size, entry['size'])))
        elif entry['algorithm'] in _HASHES:
            to_hash.append((entry, path))
    with concurrent.futures.ThreadPoolExecutor(_WORKERS) as pool:
        hashes = pool.map(lambda item: _file_hash(item[1], item[0]['algorithm']), to_hash)
        for (entry, _path), checksum in zip(to_hash, hashes):
            if checksum != entry['checksum']:
                problems.append(dict(file=entry['path'], problem='checksum mismatch (the content changed)'))
    for manifest_path, _path in backup_files(layout, backup_id, tablespace_oids):
        if wanted(manifest_path) and manifest_path not in listed:
            problems.append(dict(file=manifest_path, problem='present in the backup but not in the manifest'))
    return sorted(problems, key=lambda p: p['file'])
