# Copyright: barman.postgresql contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Verification of a backup (pg_backup_verify's logic, verify.yml): proven restorable, or what is wrong.

1. files: the backup against its backup_manifest (pg_verifybackup, and our reader for the tablespaces or
   where the binary is missing), and every WAL from the backup's begin to its end (or to the archive's end)
   in the archive. A failure here stops before anything is copied.
2. restore: the backup recovered (recovery.recover) into a scratch directory of the verification host,
   started with pg_ctl until recovery ends; a copy that cannot finish recovery fails here.
3. checks: pg_checksums --check on the cleanly stopped copy (when data checksums are on), then pg_amcheck
   and the user's queries on the copy started again.
4. The outcome is recorded beside backup.info (verifyfile); the copy is stopped and removed, or kept
   after a failure when asked.

The copy listens on no TCP address: only its socket, in the scratch directory, which only the PostgreSQL
OS user of the verification host can enter; it trusts that socket (its own pg_hba file), archives
nothing and runs no subscription. Nothing of the backup or of the original server is changed.
"""

import base64
import os
import re
import subprocess
import time
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from ansible_collections.barman.postgresql.plugins.module_utils import (
    catalog,
    chain,
    lockfile,
    manifest,
    pgtools,
    recovery,
    recovery_hold,
    remote,
    server_catalog,
    ssh,
    verifyfile,
    wal,
)
from ansible_collections.barman.postgresql.plugins.module_utils.errors import BarmanError
from ansible_collections.barman.postgresql.plugins.module_utils.wal_store import WalArchive

REPLAY_CHOICES = ('immediate', 'all')
SKIPPED = 'SKIPPED'
# The copy's own hba file: only its socket, in the scratch directory, which only its OS user can enter.
HBA_FILE = 'pg_hba.verify.conf'
HBA_TEXT = '# barman.postgresql verification copy: its socket only\nlocal all all trust\n'
# Settings of the copy beyond recovery's own (port, no archiving, no subscriptions); the module's
# ``settings`` (barman_verify_settings) come after them and win.
COPY_SETTINGS = {
    # Its socket only, in the scratch directory: never a TCP address (the original's, or another copy's).
    'listen_addresses': '',
    # Nor must the copy match the original's max_connections and the like, as a hot standby would have to.
    'hot_standby': 'off',
    # The original's certificates and log collector are not the copy's: its log goes where pg_ctl -l says.
    'ssl': 'off',
    'logging_collector': 'off',
    'log_destination': 'stderr',
    # The verification host is not sized like the original: no huge pages required, modest shared memory.
    'huge_pages': 'try',
    'shared_buffers': '128MB',
    # Nothing of the database's own runs in the copy beyond what the checks need: no preloaded library (a
    # scheduler such as pg_cron would run the original's jobs), no autovacuum (it runs index functions).
    'shared_preload_libraries': '',
    'session_preload_libraries': '',
    'local_preload_libraries': '',
    'autovacuum': 'off',
}
# From PostgreSQL 17: login event triggers would run the database's own functions at each check's login.
COPY_SETTINGS_FROM_17 = {'event_triggers': 'off'}
# What keeps the copy to itself, and where the checks find it: never changed by the module's settings.
FIXED_SETTINGS = ('port', 'listen_addresses', 'unix_socket_directories', 'hba_file')
# The longest path of a Unix socket (sun_path, 108 bytes with its NUL on Linux).
SOCKET_PATH_MAX = 107
# Where a copy kept after a failure is marked: a later run never stops or removes it.
# The schema-qualified relation of (tablespace oid, filenode); only integers are put in (%d).
_RELATION_OF_FILENODE = (
    "SELECT n.nspname || '.' || c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
    'WHERE c.oid = pg_filenode_relation(%d, %d)'
)
KEPT_MARKER = 'KEPT'
# A run's scratch directory: <backup id>-<when it started>.
_SCRATCH_NAME = re.compile(r'\d{8}T\d{6}-\d{8}T\d{6}\Z')
# Lines of a tool's output or of the copy's log kept in a failure.
SHOWN_LINES = 20


class VerifyError(BarmanError):
    """The verification could not run (not: the backup failed it, which is a result)."""

    code = 'VERIFY_HOST_UNSUITABLE'


def module_spec() -> dict:
    """pg_backup_verify's AnsibleModule keyword arguments."""
    spec = catalog.catalog_argument_spec()
    spec.update(
        backup_id=dict(type='str'),
        replay=dict(type='str', choices=list(REPLAY_CHOICES), default='immediate'),
        directory=dict(type='path', required=True),
        port=dict(type='int', required=True),
        original_port=dict(type='int'),
        host=dict(type='str'),
        user=dict(type='str', default='barman-verify'),
        ssh_port=dict(type='int'),
        pg_bindir=dict(type='path'),
        superuser=dict(type='str', default='postgres'),
        heapallindexed=dict(type='bool', default=False),
        queries=dict(
            type='list',
            elements='dict',
            default=[],
            options=dict(
                sql=dict(type='str', required=True),
                expect=dict(type='raw', required=True),
                database=dict(type='str', default='postgres'),
                name=dict(type='str'),
            ),
        ),
        settings=dict(type='dict', default={}),
        keep_failed=dict(type='bool', default=False),
        timeout=dict(type='int', default=3600),
        hold_hours=dict(type='int', default=24),
    )
    return dict(argument_spec=spec, required_by=dict(ssh_port=('host',)))


# -- choosing -----------------------------------------------------------------------------------------


def choose_backup(server: server_catalog.ServerCatalog, requested: Optional[str]) -> Tuple[Optional[str], str]:
    """(backup id, why): the one asked for, else the newest DONE backup without a passing verification;
    (None, why) when every DONE backup has passed."""
    if requested:
        backup_id = server.resolve(requested)
        if server.infos[backup_id]['status'] != 'DONE':
            raise recovery.RecoveryError(
                'backup %s is %s, not DONE: only a DONE backup can be verified'
                % (backup_id, server.infos[backup_id]['status']),
                'Choose a DONE backup (pg_backup_catalog action=list)',
                code='BACKUP_NOT_DONE',
            )
        return backup_id, 'asked for'
    done = server.done_ids()
    if not done:
        raise recovery.RecoveryError(
            'there is no DONE backup of this server to verify',
            'Take one first (playbooks/backup.yml)',
            code='NO_DONE_BACKUP',
        )
    records = server.verifications
    unverified = [b for b in done if records.get(b, {}).get('result') != verifyfile.PASSED]
    if not unverified:
        return None, 'every DONE backup passed its last verification (the newest, %s, at %s)' % (
            done[-1],
            records[done[-1]]['verified_at'],
        )
    return unverified[-1], 'the newest DONE backup without a passing verification'


# -- the run --------------------------------------------------------------------------------------------


class Verification:
    """One verification: its steps and failures as they happen, the host and the copy."""

    def __init__(self, params: Mapping[str, Any], layout: catalog.ServerLayout, backup_id: str, info, control_path):
        self.params = params
        self.layout = layout
        self.backup_id = backup_id
        self.info = info
        self.steps = []  # type: List[Dict[str, Any]]
        self.failures = []  # type: List[Dict[str, Any]]
        major = int(info['version']) // 10000
        self.bindir = pgtools.bindir(params.get('pg_bindir'), major)
        target = None
        if params.get('host'):
            target = ssh.validate_ssh_target(params['user'], params['host'], params.get('ssh_port'))
        self.host = remote.Remote(target, control_path)
        self.where = params.get('host') or 'the backup server'
        # A name of its own per run: a copy kept from an earlier failure is never in the way.
        self.scratch = os.path.join(params['directory'], '%s-%s' % (backup_id, time.strftime('%Y%m%dT%H%M%S')))
        self.data = os.path.join(self.scratch, 'data')
        self.log = os.path.join(self.scratch, 'postgresql.log')
        self.running = False
        self.holds = []  # type: List[str]

    def step(self, name: str, result: str, detail: str) -> None:
        self.steps.append(dict(name=name, result=result, detail=detail))

    def fail(self, step: str, message: str, **where: Any) -> None:
        self.failures.append(dict(step=step, message=message, **where))

    def stops_before_copy(self) -> bool:
        """A file or WAL of the backup failed; a missing or unreadable manifest alone does not stop the copy,
        whose checks then still tell whether the data is sound."""
        return any(f['step'] == 'wal' or f.get('file') != manifest.MANIFEST for f in self.failures)

    def failed_since(self, count: int) -> bool:
        return len(self.failures) > count

    def tool(self, name: str) -> str:
        return os.path.join(self.bindir, name)

    # -- the host -------------------------------------------------------------------------------------

    def check_host(self) -> None:
        """Refuse, before anything is copied, a host that cannot run the copy or a place that is the original's."""
        params = self.params
        if params.get('original_port') == params['port']:
            raise VerifyError(
                "the verification copy would take port %d, the original server's" % params['port'],
                'Give the copy another port (barman_verify_port)',
                port=params['port'],
            )
        pgdata = os.path.normpath(self.info['pgdata'])
        scratch = os.path.normpath(params['directory'])
        if os.path.commonpath([pgdata, scratch]) in (pgdata, scratch):
            raise VerifyError(
                'the scratch directory %s and the original data directory %s contain one another' % (scratch, pgdata),
                'Give a scratch directory of its own (barman_verify_dir)',
            )
        fixed = sorted(set(params.get('settings') or {}) & set(FIXED_SETTINGS))
        if fixed:
            raise VerifyError(
                'settings may not change %s of the verification copy' % ', '.join(fixed),
                'Give the port as the port option (barman_verify_port); the copy keeps its own socket, no TCP address '
                'and its own pg_hba file; nothing was copied',
                code='INVALID_ARGUMENT',
            )
        socket = os.path.join(self.scratch, '.s.PGSQL.%d' % params['port'])
        if len(os.fsencode(socket)) > SOCKET_PATH_MAX:
            raise VerifyError(
                "the copy's socket %s would be longer than a Unix socket path may be (%d bytes)"
                % (socket, SOCKET_PATH_MAX),
                'Give a shorter scratch directory (barman_verify_dir); nothing was copied',
            )
        major = int(self.info['version']) // 10000
        tools = ('pg_ctl', 'pg_controldata', 'pg_checksums', 'pg_amcheck', 'pg_isready', 'psql')
        missing = self.missing_tools(tools)
        version = self.run([self.tool('pg_ctl'), '--version'])[1] if not missing else ''
        found = re.search(r'\(PostgreSQL\) (\d+)', version)
        if missing or not found or int(found.group(1)) != major:
            raise VerifyError(
                '%s has %s in %s: PostgreSQL %d binaries are needed to verify this backup'
                % (
                    self.where,
                    'no ' + ', '.join(missing)
                    if missing
                    else 'PostgreSQL %s' % (version.strip() or 'of no known version'),
                    self.bindir,
                    major,
                ),
                'Install them there (the server packages with contrib), give barman_pg_bindir, or choose another '
                'verification host (barman_verify_host); nothing was copied',
                pg_bindir=self.bindir,
            )

    def missing_tools(self, names: Sequence[str]) -> List[str]:
        """Those of ``names`` that are not executables in the binaries' directory there (one round trip)."""
        script = 'for t; do [ -x "$t" ] || echo "$t"; done'
        out = self.run(['sh', '-c', script, 'sh'] + [self.tool(n) for n in names])[1]
        return [os.path.basename(line) for line in out.splitlines()]

    def run(self, argv: Sequence[str]) -> Tuple[int, str, str]:
        return self.host.run(argv)

    def pg_ctl(self, action: str, *options: str) -> Tuple[int, str, str]:
        return self.run(
            [self.tool('pg_ctl'), '-D', self.data, '-l', self.log, '-w', '-t', str(self.params['timeout'])]
            + list(options)
            + [action]
        )

    def log_tail(self) -> str:
        return self.run(['tail', '-n', str(SHOWN_LINES), self.log])[1].strip()

    def sql(self, database: str, query: str) -> Tuple[int, str, str]:
        """Run ``query`` in ``database`` of the copy: (exit code, output, error). The SQL goes in on stdin, as
        base64 on the command line: over ssh a command line is one line, and SQL may span several."""
        psql = [self.tool('psql'), '-X', '-A', '-t', '-q', '-v', 'ON_ERROR_STOP=1', '-f', '-']
        script = 'sql=$1; shift; printf %s "$sql" | base64 -d | "$@"'
        encoded = base64.b64encode(query.encode('utf-8')).decode('ascii')
        return self.run(['sh', '-c', script, 'sh', encoded] + psql + self.connection(database))

    def connection(self, database: Optional[str] = None) -> List[str]:
        options = ['-h', self.scratch, '-p', str(self.params['port']), '-U', self.params['superuser']]
        # A database name from the copy may hold '=': as a conninfo value it is only ever a name.
        return options + (
            ['-d', "dbname='%s'" % database.replace('\\', '\\\\').replace("'", "\\'")] if database else []
        )

    # -- 1. files and WAL --------------------------------------------------------------------------------

    def check_files(self) -> None:
        oids = [t.oid for t in self.info['tablespaces'] or []]
        if not os.path.exists(self.layout.manifest_path(self.backup_id)):
            if 'manifest_time' in (self.info.get('copy_stats') or {}):
                self.fail(
                    'files', 'backup_manifest, written when the backup was taken, is missing', file=manifest.MANIFEST
                )
                self.step('files', verifyfile.FAILED, 'the manifest')
                return
            self.step(
                'files',
                SKIPPED,
                'no backup_manifest (a backup taken before manifests): '
                'pg_backup_catalog action=manifest writes one; the restore and checks below still run',
            )
            return
        tool = self.tool('pg_verifybackup')
        before = len(self.failures)
        try:
            parsed = manifest.read(self.layout.manifest_path(self.backup_id))  # a bad one is ours to name, not a file
            if os.access(tool, os.X_OK):  # on the backup server, whatever host runs the copy
                how = 'pg_verifybackup, and the tablespaces against the manifest'
                self._pg_verifybackup(tool)
                problems = manifest.check_files(
                    self.layout, self.backup_id, oids, only_under=manifest.TABLESPACES, parsed=parsed
                )
            else:
                how = 'every file against the manifest (size and checksum)'
                problems = manifest.check_files(
                    self.layout, self.backup_id, oids, parsed=parsed, ignored=self._config_copied_after()
                )
        except manifest.MalformedManifest as exc:
            self.fail('files', str(exc), file=manifest.MANIFEST)
            problems = []
            how = 'the manifest'
        for problem in problems:
            self.fail('files', '%s: %s' % (problem['file'], problem['problem']), file=problem['file'])
        self.step('files', verifyfile.FAILED if self.failed_since(before) else verifyfile.PASSED, how)

    def _config_copied_after(self) -> List[str]:
        """The configuration files kept outside PGDATA (Debian) that a backup by pg_basebackup got beside its own
        manifest (rsync backups list them in theirs)."""
        if self.info.get('mode') != chain.POSTGRES_MODE:
            return []
        pgdata = os.path.normpath(self.info['pgdata']) + '/'
        return sorted(
            set(
                os.path.basename(self.info[key])
                for key in ('config_file', 'hba_file', 'ident_file')
                if self.info.get(key) and not self.info[key].startswith(pgdata)
            )
        )

    def _pg_verifybackup(self, tool: str) -> None:
        # Tablespaces are checked by our reader: pg_tblspc/<oid> in the catalog still links to the original.
        ignored = [manifest.TABLESPACES] + self._config_copied_after()
        proc = subprocess.run(
            [tool, '--no-parse-wal']
            + ['--ignore=%s' % name for name in ignored]
            + [self.layout.backup_data_dir(self.backup_id)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            check=False,
        )
        if proc.returncode == 0:
            return
        lines = [line for line in proc.stderr.decode(errors='replace').splitlines() if 'error:' in line]
        for line in lines[:SHOWN_LINES] or ['pg_verifybackup exited %d' % proc.returncode]:
            message = line.split('error:', 1)[-1].strip()
            quoted = re.search(r'"([^"]+)"', message)
            self.fail('files', 'pg_verifybackup: ' + message, **(dict(file=quoted.group(1)) if quoted else {}))

    def check_wal(self, wal_archive: WalArchive) -> None:
        info = self.info
        before = len(self.failures)
        size = info['xlog_segment_size']
        names = wal.segments_between(info['begin_wal'], info['end_wal'], size)
        for name in names:
            if wal_archive.locate(name) is None:
                self.fail(
                    'wal',
                    'WAL %s, which the backup needs (it spans %s..%s), is not in the archive'
                    % (name, info['begin_wal'], info['end_wal']),
                    wal=name,
                )
        if not self.failed_since(before):
            try:
                recovery.wal_needed_for_target(wal_archive, info, self.target_kind(), None)
            except recovery.RecoveryError as exc:
                self.fail('wal', str(exc))
        detail = 'WAL %s..%s%s' % (info['begin_wal'], info['end_wal'], ' and all after it' if self.replay_all() else '')
        self.step('wal', verifyfile.FAILED if self.failed_since(before) else verifyfile.PASSED, detail)

    def replay_all(self) -> bool:
        return self.params['replay'] == 'all'

    def target_kind(self) -> Optional[str]:
        return None if self.replay_all() else 'target_immediate'

    # -- 2. restore and start ----------------------------------------------------------------------------

    def restore(self) -> None:
        """Recover into the scratch directory and start it."""
        code, _out, err = self.run(['mkdir', '-p', '-m', '0700', '--', self.params['directory']])
        if code == 0:
            code, _out, err = self.run(['mkdir', '-m', '0700', '--', self.scratch])
        if code != 0:
            raise VerifyError(
                'cannot make the scratch directory %s on %s: %s' % (self.scratch, self.where, err),
                'Check that its parent exists and that the verification user may write there (barman_verify_dir)',
            )
        params = self.params
        settings = dict(COPY_SETTINGS, **(COPY_SETTINGS_FROM_17 if int(self.info['version']) >= 170000 else {}))
        settings.update(unix_socket_directories=self.scratch, hba_file=os.path.join(self.data, HBA_FILE))
        settings.update(params.get('settings') or {})
        planned = recovery.recover(
            dict(
                server=params['server'],
                barman_home=params['barman_home'],
                backup_id=self.backup_id,
                target_time=None,
                target_xid=None,
                target_name=None,
                target_lsn=None,
                target_immediate=not self.replay_all(),
                target_tli='latest',
                target_inclusive=True,
                target_action='promote',
                destination_host=params.get('host'),
                destination_user=params['user'],
                destination_port=params.get('ssh_port'),
                destination_directory=self.data,
                in_place=False,
                tablespace_map={},
                delta=False,
                port=params['port'],
                listen_addresses='',
                settings=settings,
                get_wal=False,
                wal_sender=None,
                archive=False,
                hold_hours=params['hold_hours'],
                pg_bindir=params.get('pg_bindir'),  # pg_combinebackup's, for an incremental
            ),
            extra_files={HBA_FILE: HBA_TEXT},
        )
        self.holds.append(planned['hold'])
        started = time.monotonic()
        problem = self.start()
        if problem:
            self.fail('restore', 'PostgreSQL did not finish recovering the copy: %s' % problem)
            self.step('restore', verifyfile.FAILED, 'copied to %s on %s' % (self.data, self.where))
        else:
            self.step(
                'restore',
                verifyfile.PASSED,
                'recovered to %s in %s on %s, started in %.1f s'
                % (
                    'the end of the archive' if self.replay_all() else 'the end of the backup',
                    self.data,
                    self.where,
                    time.monotonic() - started,
                ),
            )

    def start(self) -> Optional[str]:
        """Start the copy and wait until it accepts connections (recovery ended); None, or what went wrong.

        pg_ctl -w returns as soon as a copy with hot_standby off is in recovery, so pg_isready tells the end.
        """
        self.running = True  # until shown otherwise: a failure below must still stop it
        code, _out, err = self.pg_ctl('start')
        if code != 0:
            self.running = self.has_pid()
            return 'pg_ctl start exited %d (%s); its log ends: %s' % (code, err or 'no message', self.log_tail())
        deadline = time.monotonic() + self.params['timeout']
        pause = 0.05
        while self.run([self.tool('pg_isready'), '-q'] + self.connection())[0] != 0:
            if self.run([self.tool('pg_ctl'), 'status', '-D', self.data])[0] != 0:
                self.running = False
                return 'it stopped during recovery; its log ends: %s' % self.log_tail()
            if time.monotonic() > deadline:
                return 'recovery did not end within %d s (timeout); its log ends: %s' % (
                    self.params['timeout'],
                    self.log_tail(),
                )
            time.sleep(pause)
            pause = min(pause * 2, 1.0)
        return None

    def has_pid(self) -> bool:
        return self.run(['test', '-e', os.path.join(self.data, 'postmaster.pid')])[0] == 0

    def stop(self, mode: str = 'fast', check: bool = True) -> None:
        """Stop the copy if it runs; a copy that does not stop raises (unless not ``check``: the error of a
        failure already under way is the one to report) and keeps ``running``, so its directory stays."""
        if not self.running:
            return
        code, _out, err = self.pg_ctl('stop', '-m', mode)
        self.running = code != 0 and self.has_pid()
        if self.running and check:
            raise VerifyError(
                'the verification copy in %s on %s did not stop: %s' % (self.data, self.where, err),
                'Stop it by hand (pg_ctl -D %s stop -m immediate) before removing the directory' % self.data,
            )

    # -- 3. checks ---------------------------------------------------------------------------------------

    def check_checksums(self) -> List[Dict[str, str]]:
        """pg_checksums on the stopped copy; the damaged [{file, block}] for naming their relations."""
        code, out, err = self.run([self.tool('pg_controldata'), '-D', self.data])
        version = re.search(r'^Data page checksum version:\s*(\d+)', out, re.M)
        if code != 0 or version is None:
            self.fail('checksums', 'pg_controldata cannot read the copy: %s' % err)
            self.step('checksums', verifyfile.FAILED, 'pg_controldata')
            return []
        if version.group(1) == '0':
            self.step('checksums', SKIPPED, 'data checksums are off in this cluster')
            return []
        code, out, err = self.run([self.tool('pg_checksums'), '--check', '-D', self.data])
        damaged = []
        for line in (out + '\n' + err).splitlines():
            found = re.search(r'checksum verification failed in file "([^"]+)", block (\d+)', line)
            if found:
                damaged.append(dict(file=os.path.relpath(found.group(1), self.data), block=found.group(2)))
        if code != 0 and not damaged:
            self.fail('checksums', 'pg_checksums --check failed (exit %d): %s' % (code, (err or out).strip()))
        summary = re.search(r'Bad checksums:\s*(\d+)', out)
        self.step(
            'checksums',
            verifyfile.FAILED if code != 0 else verifyfile.PASSED,
            'pg_checksums --check: %s bad blocks' % (summary.group(1) if summary else len(damaged)),
        )
        return damaged

    def name_relations(self, damaged: Sequence[Mapping[str, str]]) -> None:
        """A failure per damaged block, naming its relation (asked of the started copy)."""
        for item in damaged:
            relation = self.relation_of(item['file'])
            self.fail(
                'checksums',
                'checksum mismatch in %s, block %s (file %s)'
                % (relation or 'an unknown relation', item['block'], item['file']),
                file=item['file'],
                block=int(item['block']),
                relation=relation,
            )

    def relation_of(self, path: str) -> Optional[str]:
        """database.schema.relation of a data file's path, asked of the started copy; None when unknown."""
        found = filenode_of(path)
        if found is None:
            return None
        tablespace, database, node = found
        # Only integers go into the SQL (%d): nothing to inject.
        code, name, _err = self.sql('postgres', 'SELECT datname FROM pg_database WHERE oid = %d' % database)  # noqa: S608
        if code != 0 or not name.strip():
            return None
        code, relation, _err = self.sql(name.strip(), _RELATION_OF_FILENODE % (tablespace, node))
        return '%s.%s' % (name.strip(), relation.strip()) if code == 0 and relation.strip() else None

    def check_amcheck(self) -> None:
        argv = [self.tool('pg_amcheck'), '--all', '--install-missing'] + self.connection()
        if self.params['heapallindexed']:
            argv.append('--heapallindexed')
        code, out, err = self.run(argv)
        lines = [line for line in (out + '\n' + err).splitlines() if line.strip()]
        if code != 0:
            relations = sorted(set(re.findall(r'^(?:heap table|btree index) "([^"]+)"', out, re.M)))
            self.fail(
                'amcheck',
                'pg_amcheck (exit %d): %s' % (code, ' | '.join(lines[:SHOWN_LINES])),
                **(dict(relation=', '.join(relations)) if relations else {}),
            )
        detail = 'pg_amcheck --all%s' % (' --heapallindexed' if self.params['heapallindexed'] else '')
        self.step('amcheck', verifyfile.FAILED if code != 0 else verifyfile.PASSED, detail)

    def check_queries(self) -> None:
        queries = self.params['queries']
        if not queries:
            self.step('queries', SKIPPED, 'no verify_queries given')
            return
        before = len(self.failures)
        for query in queries:
            code, out, err = self.sql(query['database'], query['sql'])
            got, expected = out.strip(), expected_output(query['expect'])
            where = dict(query=query['sql'], database=query['database'], expected=expected, got=got)
            label = query.get('name') or query['sql']
            if code != 0:
                self.fail('queries', '%s failed in database %s: %s' % (label, query['database'], err), **where)
            elif got != expected:
                self.fail('queries', '%s returned %r, expected %r' % (label, got, expected), **where)
        self.step(
            'queries',
            verifyfile.FAILED if self.failed_since(before) else verifyfile.PASSED,
            '%d of %d as expected' % (len(queries) - (len(self.failures) - before), len(queries)),
        )

    def stop_leftovers(self) -> List[str]:
        """Stop and remove the copies of earlier runs that died before their end; their directories.

        Only directories named as a run names them and not kept for a human (a kept copy carries
        KEPT_MARKER: a human may start it); the verify lock keeps out any live run of this server. A copy
        is stopped only when its own socket answers (a stale pid may be another process's by now), and a
        directory removed only once nothing answers there (or it never started: a run cut during the copy).
        """
        listing = 'for d in "$1"/*/; do [ -d "$d" ] && [ ! -e "$d/%s" ] && echo "$d"; done; true'
        found = self.run(['sh', '-c', listing % KEPT_MARKER, 'sh', self.params['directory']])[1].splitlines()
        removed = []
        for scratch in (os.path.normpath(d) for d in found):
            if not _SCRATCH_NAME.match(os.path.basename(scratch)):
                continue
            data = os.path.join(scratch, 'data')
            code, port, _err = self.run(['sed', '-n', '4p', os.path.join(data, 'postmaster.pid')])
            port = port.strip()
            if code == 0 and port:  # a pid file: a server started there
                if not port.isdigit():
                    continue  # cannot tell whether it runs: never remove it
                if self.answers(scratch, port):
                    self.run([self.tool('pg_ctl'), '-D', data, '-m', 'immediate', '-w', 'stop'])
                if self.answers(scratch, port):
                    continue  # still running: never remove what a server uses
            if self.run(['rm', '-rf', '--', scratch])[0] == 0:
                removed.append(scratch)
        return removed

    def answers(self, socket_dir: str, port: str) -> bool:
        """Whether a server listens on the socket in ``socket_dir`` (pg_isready: 0 accepting, 1 rejecting)."""
        return self.run([self.tool('pg_isready'), '-q', '-h', socket_dir, '-p', port])[0] in (0, 1)

    def keep_scratch(self) -> None:
        self.run(['touch', os.path.join(self.scratch, KEPT_MARKER)])

    def remove_scratch(self) -> None:
        code, _out, err = self.run(['rm', '-rf', '--', self.scratch])
        if code != 0:
            raise VerifyError('cannot remove the scratch directory %s on %s: %s' % (self.scratch, self.where, err))


def expected_output(expect: Any) -> str:
    """A query's expected output as psql prints it: YAML's true/false (also yes/no, on/off) are t/f."""
    if isinstance(expect, bool):
        return 't' if expect else 'f'
    return str(expect).strip()


def filenode_of(path: str) -> Optional[Tuple[int, int, int]]:
    """(tablespace oid, database oid, filenode) of a relation file's path in PGDATA (0 for the default
    tablespace): base/<db>/<node>[_fork][.segment] or pg_tblspc/<ts>/<version dir>/<db>/<node>...; else None."""
    found = re.match(r'(?:base|pg_tblspc/(\d+)/[^/]+)/(\d+)/(\d+)(?:_[a-z]+)?(?:\.\d+)?\Z', path)
    if found is None:
        return None
    return int(found.group(1) or 0), int(found.group(2)), int(found.group(3))


def failed_verification(result: Mapping[str, Any]) -> BarmanError:
    """The error a FAILED outcome fails the task with: its first failure in words, and the whole outcome."""
    first = result['failures'][0]
    return BarmanError(
        'backup %s of %s FAILED its verification at step %s: %s (%d failures in all; see failures)'
        % (result['backup_id'], result['server'], first['step'], first['message'], len(result['failures'])),
        code='VERIFICATION_FAILED',
        **result,
    )


def verify(params: Mapping[str, Any], check_mode: bool = False) -> Dict[str, Any]:
    """Verify one backup of a server (see the module's docstring); the outcome, recorded unless check_mode."""
    layout = server_catalog.server_layout(params['barman_home'], params['server'])
    with lockfile.ServerLock(layout, 'verify'), ssh.operation_control_path(layout.root) as control_path:
        server = server_catalog.ServerCatalog(layout)
        backup_id, why = choose_backup(server, params.get('backup_id'))
        result = dict(server=params['server'], backup_id=backup_id, why=why)
        if backup_id is None:
            return dict(result, changed=False, result=SKIPPED)
        run = Verification(params, layout, backup_id, server.infos[backup_id], control_path)
        try:
            run.check_host()
            if check_mode:
                return dict(result, changed=False, result=None, directory=run.scratch, pg_bindir=run.bindir)
            result['removed_leftovers'] = run.stop_leftovers()
            return dict(result, **_carry_out(run, WalArchive(params['barman_home'], params['server'])))
        finally:
            run.host.close()


def _carry_out(run: Verification, wal_archive: WalArchive) -> Dict[str, Any]:
    started = time.monotonic()
    # Held from the first step: retention must not remove the backup or its WAL while they are read.
    run.holds.append(
        recovery_hold.take(
            run.layout,
            run.backup_id,
            run.info['begin_wal'],
            'verification on %s:%s' % (run.where, run.scratch),
            run.params['hold_hours'] * 3600,
        )
    )
    created = False
    try:
        try:
            run.check_files()
            run.check_wal(wal_archive)
            if not run.stops_before_copy():
                created = True
                before = len(run.failures)
                run.restore()
                if run.running and not run.failed_since(before):
                    run.stop()
                    damaged = run.check_checksums()
                    problem = run.start()
                    if problem:
                        run.fail('restore', 'the copy did not start again after a clean stop: %s' % problem)
                    else:
                        run.name_relations(damaged)
                        run.check_amcheck()
                        run.check_queries()
            run.stop()
        except BaseException:
            run.stop('immediate', check=False)
            if created and not run.running:
                run.remove_scratch()
            raise
        passed = not run.failures
        kept = created and not passed and run.params['keep_failed']
        if kept:
            run.keep_scratch()  # marked before the record: a later run never removes it
        record = dict(
            backup_id=run.backup_id,
            result=verifyfile.PASSED if passed else verifyfile.FAILED,
            verified_at=verifyfile.format_time(catalog.now_utc()),
            duration=round(time.monotonic() - started, 3),
            replay=run.params['replay'],
            host=run.params.get('host') or 'local',
            pg_bindir=run.bindir,
            kept=run.scratch if kept else None,
            steps=run.steps,
            failures=run.failures,
        )
        # Recorded while the backup is still held: retention cannot have removed it meanwhile.
        verifyfile.write_verification(run.layout, run.backup_id, record)
        if created and not kept:
            run.remove_scratch()
        return dict(record, changed=True, record=run.layout.verification_path(run.backup_id))
    finally:
        for hold in run.holds:
            recovery_hold.release(run.layout, hold)
