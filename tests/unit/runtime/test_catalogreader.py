# Copyright: barman.postgresql contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Tests for runtime/catalogreader.py: the mirror key's forced command, run in-process on a real catalog,
and end to end behind the real rsync client."""

import datetime
import hashlib
import io
import json
import os
import random
import shlex
import shutil
import subprocess
import sys

import pytest

from ansible_collections.barman.postgresql.plugins.module_utils import catalog, identityfile, infofile, rsync, xlogdb
from ansible_collections.barman.postgresql.plugins.module_utils.errors import shown
from ansible_collections.barman.postgresql.runtime import catalogreader

SYSID = '7319180283384717360'
UNREADABLE = '20261010T101010'  # its backup.info does not parse
# Daylight saving time ends: the backup begun first has the later id; begin_time orders them.
FIRST_BEGUN, SECOND_BEGUN = '20261025T023000', '20261025T021500'
FAILED = '20261125T101010'
NEWEST = '20261130T101010'
HA_BACKUP = '20261130T111111'
OTHER_BACKUP = '20261130T121212'
UNREADABLE_TEXT = 'this is not a backup.info\n'
USAGE_END = "; this key only reads the catalogs of pg1, ha: 'list SERVER [WAL]' and rsync reads of their backups\n"
# As an rsync 3.2.7 (and 3.5.0) client sends them to its sender, by client options:
A_NUMERIC_IDS = '-logDtpre.iLsfxCIvu --numeric-ids'  # -a --numeric-ids, with or without --link-dest, -i, --stats
SENDER_OPTIONS = [
    A_NUMERIC_IDS,
    '-logDtprce.iLsfxCIvu --numeric-ids',  # --checksum
    '-nlogDtpre.iLsfxCIvu --numeric-ids',  # --dry-run
    '-lHogDtpre.iLsfxCIvu --numeric-ids',  # -H
    '-nlHogDtprce.iLsfxCIvu --numeric-ids',  # all of them
    '-vlogDtpre.iLsfxCIvu',  # -av
    '-logDtpr',  # a client without capabilities
    '-e.iLsfxCIvu --checksum',
    '-logDtpre.iLsfxCIvu --bwlimit=1000 --numeric-ids',  # the mirror's rsync_argv with bandwidth_limit_kbps
]
# (segment or other WAL file, time) in the order they were archived: 3 arrives late.
XLOG_DB = [
    ('000000010000000000000001', 1000.0),
    ('000000010000000000000002', 1010.0),
    ('000000010000000000000002.00000028.backup', 1011.0),
    ('000000010000000000000004', 1030.0),
    ('000000010000000000000003', 1031.0),
    ('00000002.history', 1035.0),
    ('000000020000000000000004', 1040.0),
    ('000000020000000000000005', 1050.5),
]


def utc(*fields):
    return datetime.datetime(*fields, tzinfo=datetime.timezone.utc)


def write_backup(layout, backup_id, status, begin):
    catalog.ensure_directories(layout)
    os.makedirs(layout.backup_data_dir(backup_id), exist_ok=True)
    infofile.write_backup_info(
        layout.backup_info_path(backup_id),
        dict(status=status, begin_time=begin, begin_wal='000000010000000000000002', server_name=layout.server),
    )


def write_file(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, 'wb') as handle:
        handle.write(data)


@pytest.fixture
def home(tmp_path):
    """A Barman home: pg1 with backups, WAL and identity; ha with one backup; other with one; secrets."""
    home = str(tmp_path / 'barman')
    os.mkdir(home)
    pg1 = catalog.ServerLayout(home, 'pg1')
    catalog.ensure_directories(pg1)
    identityfile.check_identity(pg1.identity_file, SYSID, 160002)
    write_backup(pg1, NEWEST, infofile.DONE, utc(2026, 11, 30, 9, 10, 10))
    write_backup(pg1, FAILED, infofile.FAILED, utc(2026, 11, 25, 9, 10, 10))
    write_backup(pg1, SECOND_BEGUN, infofile.DONE, utc(2026, 10, 25, 1, 15))
    write_backup(pg1, FIRST_BEGUN, infofile.DONE, utc(2026, 10, 25, 0, 30))
    write_file(pg1.backup_info_path(UNREADABLE), UNREADABLE_TEXT.encode())
    write_file(os.path.join(pg1.meta_dir, 'notes-backup.info'), b'status=DONE\n')  # not a backup id
    write_file(pg1.verification_path(NEWEST), b'{}\n')
    xlogdb.append_xlog_db(
        pg1.xlog_db, [(name, 16 * 1024 * 1024 if len(name) == 24 else 300, when, 'gzip') for name, when in XLOG_DB]
    )
    data = pg1.backup_data_dir(NEWEST)
    rnd = random.Random(NEWEST)
    write_file(os.path.join(data, 'PG_VERSION'), b'16\n')
    write_file(os.path.join(data, 'global', 'pg_control'), rnd.randbytes(8192))
    write_file(os.path.join(data, 'base', '1', '1259'), rnd.randbytes(300 * 1024))
    os.link(os.path.join(data, 'base', '1', '1259'), os.path.join(data, 'base', '1', '1259_hardlink'))
    write_file(os.path.join(data, 'with space'), b'a name rsync escapes\n')
    write_file(os.path.join(pg1.backup_dir(NEWEST), '16385', 'PG_16_202307071', 'table'), rnd.randbytes(4096))
    os.makedirs(os.path.join(data, 'pg_tblspc'))
    os.symlink('../../16385', os.path.join(data, 'pg_tblspc', '16385'))  # stays in the backup
    os.chmod(os.path.join(data, 'PG_VERSION'), 0o640)
    os.utime(os.path.join(data, 'PG_VERSION'), (1700000000, 1700000000))
    write_backup(catalog.ServerLayout(home, 'ha'), HA_BACKUP, infofile.DONE, utc(2026, 11, 30, 10, 11, 11))
    write_backup(catalog.ServerLayout(home, 'other'), OTHER_BACKUP, infofile.DONE, utc(2026, 11, 30, 11, 12, 12))
    write_file(os.path.join(home, '.ssh', 'authorized_keys'), b'restrict,command="..." ssh-ed25519 AAAA\n')
    write_file(os.path.join(home, '.pgpass'), b'*:*:*:barman:secret\n')
    write_file(os.path.join(home, '.pg1-backup.lock'), b'')
    return home


def backup_dir(home, backup_id=NEWEST, server='pg1'):
    return catalog.ServerLayout(home, server).backup_dir(backup_id)


def tree(root):
    """What is under ``root``: every entry's kind, mode and content (a file's digest and whole-second
    mtime, a link's target), so that two trees, or one before and after, compare equal."""
    found = {}
    for directory, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(directory, name)
            stat = os.lstat(path)
            relative = os.path.relpath(path, root)
            if os.path.islink(path):
                found[relative] = ('link', os.readlink(path))
            elif os.path.isdir(path):
                found[relative] = ('dir', stat.st_mode)
            else:
                with open(path, 'rb') as handle:
                    digest = hashlib.sha256(handle.read()).hexdigest()
                found[relative] = ('file', stat.st_mode, int(stat.st_mtime), digest)
    return found


class Executed(Exception):
    """What the fake execvp raises instead of becoming rsync."""


@pytest.fixture
def execs(monkeypatch):
    """The execvp calls of the reader, each (file, argv); the call raises Executed."""
    calls = []

    def fake_execvp(file, argv):
        calls.append((file, list(argv)))
        raise Executed()

    monkeypatch.setattr(catalogreader.os, 'execvp', fake_execvp)
    return calls


def run(home, command, servers=('pg1', 'ha')):
    """main() as sshd runs it for the key; (exit code, stdout bytes, stderr text)."""
    out, err = io.BytesIO(), io.StringIO()
    argv = ['--barman-home', home]
    for server in servers:
        argv += ['--server', server]
    environ = {} if command is None else {'SSH_ORIGINAL_COMMAND': command}
    code = catalogreader.main(argv, environ=environ, stdin=io.BytesIO(), stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


def listing(home, command):
    code, out, err = run(home, command)
    assert (code, err) == (catalogreader.EXIT_OK, '')
    assert out.endswith(b'\n') and out.count(b'\n') == 1, 'one JSON object on one line'
    return json.loads(out)


# list


def test_list_gives_identity_backups_oldest_first_with_their_text_and_the_wal_summary(home):
    answer = listing(home, 'list pg1')
    assert sorted(answer) == ['backups', 'identity', 'server', 'wal']
    assert answer['server'] == 'pg1'
    assert answer['identity'] == {'systemid': SYSID, 'version': '16'}
    meta = catalog.ServerLayout(home, 'pg1').meta_dir
    expected = []
    for backup_id, status in [
        (UNREADABLE, None),
        (FIRST_BEGUN, 'DONE'),
        (SECOND_BEGUN, 'DONE'),
        (FAILED, 'FAILED'),
        (NEWEST, 'DONE'),
    ]:
        with open(os.path.join(meta, backup_id + '-backup.info'), encoding='utf-8') as handle:
            expected.append({'id': backup_id, 'status': status, 'info': handle.read()})
    assert answer['backups'] == expected
    assert answer['backups'][0]['info'] == UNREADABLE_TEXT, 'an unreadable backup.info comes as it is'
    assert answer['wal'] == {
        'newest': '000000020000000000000005',
        'newest_time': 1050.5,
        'segments': 6,
        'after': 6,
        'first_after_time': 1000.0,
    }


@pytest.mark.parametrize(
    'after, count, first_time',
    [
        ('000000010000000000000003', 3, 1030.0),  # the late 3 is not counted, 4 is the first after it
        ('000000010000000000000000', 6, 1000.0),
        ('000000010000000000000004', 2, 1040.0),  # the new timeline sorts after the old one
        ('000000020000000000000005', 0, None),
        ('0000000A0000000000000001', 0, None),
    ],
)
def test_list_with_a_wal_counts_the_segments_after_it(home, after, count, first_time):
    answer = listing(home, 'list pg1 %s' % after)
    assert answer['wal'] == {
        'newest': '000000020000000000000005',
        'newest_time': 1050.5,
        'segments': 6,
        'after': count,
        'first_after_time': first_time,
    }


def test_list_of_a_new_server_is_empty_not_an_error(home):
    ha = catalog.ServerLayout(home, 'ha')
    shutil.rmtree(ha.root)
    empty_wal = {'newest': None, 'newest_time': None, 'segments': 0, 'after': 0, 'first_after_time': None}
    assert listing(home, 'list ha') == {'server': 'ha', 'identity': None, 'backups': [], 'wal': empty_wal}
    catalog.ensure_directories(ha)
    assert listing(home, 'list ha 000000010000000000000001') == {
        'server': 'ha',
        'identity': None,
        'backups': [],
        'wal': empty_wal,
    }


def test_list_of_the_second_server_of_the_key(home):
    answer = listing(home, 'list ha')
    assert [(backup['id'], backup['status']) for backup in answer['backups']] == [(HA_BACKUP, 'DONE')]


@pytest.mark.parametrize(
    'damage, path',
    [
        ('000000010000000000000009\tnot-a-size\n', 'wals/pg1-xlog.db'),
        ('{"version": "16"}', 'identity.json'),
    ],
)
def test_list_of_a_damaged_catalog_fails_for_now_and_says_which_file(home, damage, path):
    target = os.path.join(home, 'pg1', path)
    with open(target, 'a' if path.endswith('.db') else 'w') as handle:
        handle.write(damage)
    code, out, err = run(home, 'list pg1')
    assert (code, out) == (catalogreader.EXIT_TEMPORARY, b'')
    assert err.startswith('barman-catalog-reader: cannot list pg1: ') and target in err
    assert err.count('\n') == 1


# Refusals


REFUSED = [
    (None, 'refused an empty request'),
    ('', 'refused an empty request'),
    ('bash', "refused 'bash': 'bash' is not a request this key answers"),
    ('bash -c "cat .pgpass"', "'bash' is not a request this key answers"),
    ('sftp', "'sftp' is not a request"),
    ('put 000000010000000000000001 16777216', "'put' is not a request"),
    ('rm -rf {home}/pg1', "'rm' is not a request"),
    ('scp -f {home}/.pgpass', "'scp' is not a request"),
    ('cat {home}/.ssh/authorized_keys', "'cat' is not a request"),
    ('LIST pg1', "'LIST' is not a request"),
    ('list "pg1', 'its quoting does not parse'),
    ('list', 'list takes a server name and, optionally, a WAL segment name'),
    ('list pg1 000000010000000000000001 000000010000000000000002', 'list takes a server name'),
    ('list other', "server 'other' is not one this key may read"),
    ('list ../pg1', "Server name '../pg1' is not valid: it contains a slash"),
    ('list .ssh', "Server name '.ssh' is not valid"),
    ('list pg1 00000002.history', "'00000002.history' is not a WAL segment name"),
    ('list pg1 000000010000000000000002.00000028.backup', 'is not a WAL segment name'),
    ('list pg1 ../../.pgpass', 'is not a WAL segment name'),
    # rsync: what a client sends for a push, a delete, a list from a file, or arguments after the check
    ('rsync {home}/.pgpass /tmp/copy', 'only an rsync client pulling a backup reaches rsync here'),
    ('rsync --server -logDtpre.iLsfxCIvu --numeric-ids . {backup}/', 'refused rsync --server without --sender'),
    ('rsync --server -logDtpre.iLsfxCIvu --sender . {backup}/', 'without --sender: the client would write'),
    ('rsync --sender --server -logDtpre.iLsfxCIvu . {backup}/', 'only an rsync client pulling a backup'),
    ('rsync --server --sender', "rsync needs its flags, '.' and one path"),
    ('rsync --server --sender --numeric-ids . {backup}/', "'--numeric-ids' where the short-flag bundle"),
    ('rsync --server --sender {options} --remove-source-files . {backup}/', '--remove-source-files: it deletes'),
    ('rsync --server --sender {options} --remove-sent-files . {backup}/', '--remove-sent-files: it deletes'),
    ('rsync --server --sender {options} --delete . {backup}/', 'option --delete: it deletes files'),
    ('rsync --server --sender {options} --delete-after . {backup}/', 'option --delete-after: it deletes files'),
    ('rsync --server --sender {options} --delete-excluded . {backup}/', 'option --delete-excluded: it deletes'),
    ('rsync --server --sender {options} --files-from=- --from0 . {backup}/', 'option --files-from: it reads a list'),
    ('rsync --server --sender -logDtpRe.LsfxCIvu --files-from=- --from0 . {backup}/', 'flag -R: relative paths'),
    ('rsync --server --sender {options} --include-from=/etc/passwd . {backup}/', 'option --include-from'),
    ('rsync --server --sender {options} --exclude-from=/etc/passwd . {backup}/', 'option --exclude-from'),
    ('rsync --server --sender -slogDtpre.iLsfxCIvu', 'refused rsync flag -s: protect-args sends the real arguments'),
    ('rsync --server --sender {options} --protect-args . {backup}/', 'option --protect-args: it sends the real'),
    ('rsync --server --sender {options} --secluded-args . {backup}/', 'option --secluded-args'),
    ('rsync --server --sender {options} -- . {backup}/', "refused rsync argument '--'"),
    ('rsync --server --sender -lLogDtpre.iLsfxCIvu . {backup}/', 'flag -L: copy-links follows symbolic links'),
    ('rsync --server --sender -lkogDtpre.iLsfxCIvu . {backup}/', 'flag -k: copy-dirlinks follows'),
    ('rsync --server --sender {options} --copy-unsafe-links . {backup}/', 'option --copy-unsafe-links: it follows'),
    ('rsync --server --sender -logDtprxe.iLsfxCIvu . {backup}/', "flag '-x': not one of the read-only flags"),
    ('rsync --server --sender -logDtpr@e.iLsfxCIvu . {backup}/', "flag '-@': not one of the read-only flags"),
    ('rsync --server --sender -logDtpre.iL/fx . {backup}/', 'the capabilities after "e" are not letters'),
    ('rsync --server --sender {options} --timeout=30 . {backup}/', "option '--timeout': not one of the options"),
    ('rsync --server --sender {options} --daemon . {backup}/', "option '--daemon': not one of the options"),
    ('rsync --server --sender {options} --bwlimit=1M . {backup}/', "option '--bwlimit': not one of the options"),
    ('rsync --server --sender {options} --bwlimit . {backup}/', "option '--bwlimit': not one of the options"),
    ('rsync --server --sender {options} -v . {backup}/', "flags '-v': only one short-flag bundle is allowed"),
    ('rsync --server --sender {options} {backup}/ . {backup}/', "before '.': the one path comes after it"),
    ('rsync --server --sender {options} {backup}/', "rsync must end with '.' and the one path to read"),
    ('rsync --server --sender {options} .', "rsync reads exactly one path after '.', not 0"),
    ('rsync --server --sender {options} . {backup}/ {home}/ha/base/%s/' % HA_BACKUP, 'exactly one path'),
    ('rsync --server --sender {options} . --remove-source-files', 'it must be absolute'),
]


@pytest.mark.parametrize('command, why', REFUSED)
def test_anything_but_a_read_is_refused_with_why_and_nothing_touched(home, execs, command, why):
    before = tree(home)
    if command is not None:
        command = command.format(home=home, backup=backup_dir(home), options=A_NUMERIC_IDS)
    code, out, err = run(home, command)
    assert (code, out, execs) == (catalogreader.EXIT_REFUSED, b'', [])
    assert err.startswith('barman-catalog-reader: refused ')
    assert err.endswith(USAGE_END) and err.count('\n') == 1
    assert why in err
    assert tree(home) == before


PATHS_REFUSED = [
    ('{backup}/../../meta/', '".." may not appear in it'),
    ('{backup}/data/../../../../ha/base/%s/' % HA_BACKUP, '".." may not appear in it'),
    ('{home}/pg1/meta/', 'only the backups in {home}/pg1/base/BACKUP_ID are read with rsync, not meta/ or wals/'),
    ('{home}/pg1/meta/%s-backup.info' % NEWEST, 'not meta/ or wals/'),
    ('{home}/pg1/wals/', 'not meta/ or wals/'),
    ('{home}/pg1/wals/pg1-xlog.db', 'not meta/ or wals/'),
    ('{home}/pg1/identity.json', 'not meta/ or wals/'),
    ('{home}/pg1/', 'not meta/ or wals/'),
    ('{home}/pg1/base', 'not meta/ or wals/'),
    ('{home}/other/base/%s/' % OTHER_BACKUP, 'it is not in the catalog of a server this key may read (pg1, ha)'),
    ('{home}/.ssh/authorized_keys', 'not in the catalog of a server this key may read'),
    ('{home}/.ssh/', 'not in the catalog of a server this key may read'),
    ('{home}/.pgpass', 'not in the catalog of a server this key may read'),
    ('{home}/.pg1-backup.lock', 'not in the catalog of a server this key may read'),
    ('{home}/', 'not in the catalog of a server this key may read'),
    ('/etc/passwd', 'it is not in the Barman home {home}'),
    ('pg1/base/%s/' % NEWEST, 'it must be absolute'),
    ('~/pg1/base/%s/' % NEWEST, 'it must be absolute'),
    ('{home}/pg1/base/latest/', "Backup id 'latest' is not valid"),
    ('{home}/pg1/base/20261301T000000/', 'it is not a real date and time'),
    ('{home}/pg1/base/20261201T000000/', 'backup 20261201T000000 is not in the catalog of pg1 (no meta/'),
]


@pytest.mark.parametrize('path, why', PATHS_REFUSED)
def test_rsync_reads_nothing_but_the_backups_of_the_key_servers(home, execs, path, why):
    os.makedirs(backup_dir(home, '20261201T000000'))  # a directory without backup.info is no backup
    path, why = path.format(home=home, backup=backup_dir(home)), why.format(home=home)
    before = tree(home)
    code, out, err = run(home, 'rsync --server --sender %s . %s' % (A_NUMERIC_IDS, shlex.quote(path)))
    assert (code, out, execs) == (catalogreader.EXIT_REFUSED, b'', [])
    assert err.startswith('barman-catalog-reader: refused rsync path %s: ' % shown(path))
    assert why in err and err.endswith(USAGE_END)
    assert tree(home) == before


def test_no_symbolic_link_leads_rsync_out_of_a_backup(home, execs):
    pg1 = catalog.ServerLayout(home, 'pg1')
    to_etc, to_ha = '20261201T000000', '20261202T000000'
    for backup_id, target in [(to_etc, '/etc'), (to_ha, os.path.join('..', '..', 'ha', 'base', HA_BACKUP))]:
        write_file(pg1.backup_info_path(backup_id), b'status=DONE\n')
        os.symlink(target, pg1.backup_dir(backup_id))
    data = pg1.backup_data_dir(NEWEST)
    os.symlink('/etc', os.path.join(data, 'escape'))
    os.symlink('../../../wals', os.path.join(data, 'to_wals'))
    os.symlink('../../%s/data' % FAILED, os.path.join(data, 'to_failed'))
    os.symlink(os.path.join(home, '.pgpass'), os.path.join(data, 'pgpass'))
    cases = [
        (pg1.backup_dir(to_etc) + '/', '/etc', to_etc),
        (pg1.backup_dir(to_etc) + '/passwd', '/etc/passwd', to_etc),
        (pg1.backup_dir(to_ha) + '/', backup_dir(home, HA_BACKUP, 'ha'), to_ha),
        (os.path.join(data, 'escape') + '/', '/etc', NEWEST),
        (os.path.join(data, 'escape', 'passwd'), '/etc/passwd', NEWEST),
        (os.path.join(data, 'escape'), '/etc', NEWEST),
        (os.path.join(data, 'to_wals', 'pg1-xlog.db'), pg1.xlog_db, NEWEST),
        (os.path.join(data, 'to_failed') + '/', pg1.backup_data_dir(FAILED), NEWEST),
        (os.path.join(data, 'pgpass'), os.path.join(home, '.pgpass'), NEWEST),
    ]
    for path, real, backup_id in cases:
        code, out, err = run(home, 'rsync --server --sender %s . %s' % (A_NUMERIC_IDS, path))
        assert (code, out, execs) == (catalogreader.EXIT_REFUSED, b'', []), path
        assert 'a symbolic link leads it to %s, out of backup %s' % (shown(real), backup_id) in err, err


@pytest.mark.parametrize('options', SENDER_OPTIONS)
def test_rsync_becomes_the_sender_the_client_asked_for(home, execs, options):
    path = backup_dir(home) + '/'
    with pytest.raises(Executed):
        run(home, 'rsync --server --sender %s . %s' % (options, path))
    assert execs == [('rsync', ['rsync', '--server', '--sender'] + options.split() + ['.', path])]


@pytest.mark.parametrize(
    'asked, given',
    [
        ('{backup}', '{backup}'),  # without the slash rsync sends the directory itself
        ('{backup}/.', '{backup}/'),
        ('{home}//pg1/./base/%s/' % NEWEST, '{backup}/'),
        ('{backup}/data/PG_VERSION', '{backup}/data/PG_VERSION'),
        ('{backup}/data/pg_tblspc/16385/', '{backup}/data/pg_tblspc/16385/'),  # a link that stays in the backup
        (r'{backup}/data/with\ space', '{backup}/data/with space'),  # as a 3.2.4+ client escapes it
        ("'{backup}/data/with space'", '{backup}/data/with space'),
        ('{backup}/data/*', '{backup}/data/*'),  # as it is: no shell expands it, and rsync does not
        ('{home}/ha/base/%s/' % HA_BACKUP, '{home}/ha/base/%s/' % HA_BACKUP),
    ],
)
def test_rsync_gets_the_checked_path(home, execs, asked, given):
    values = dict(home=home, backup=backup_dir(home))
    with pytest.raises(Executed):
        run(home, 'rsync --server --sender %s . %s' % (A_NUMERIC_IDS, asked.format(**values)))
    assert execs[0][1][-2:] == ['.', given.format(**values)]


def test_refusals_name_what_was_refused_and_what_the_key_allows(home, execs):
    assert run(home, 'rsync --server --sender %s --remove-source-files . %s/' % (A_NUMERIC_IDS, backup_dir(home))) == (
        2,
        b'',
        'barman-catalog-reader: refused rsync option --remove-source-files: it deletes the files it sends' + USAGE_END,
    )
    wals = os.path.join(home, 'pg1', 'wals') + '/'
    assert run(home, 'rsync --server --sender %s . %s' % (A_NUMERIC_IDS, wals))[2] == (
        'barman-catalog-reader: refused rsync path %s: only the backups in %s/pg1/base/BACKUP_ID are read with '
        'rsync, not meta/ or wals/' % (shown(wals), home) + USAGE_END
    )
    assert run(home, 'list other')[2] == (
        "barman-catalog-reader: refused 'list other': server 'other' is not one this key may read" + USAGE_END
    )
    assert run(home, 'rsync --server -logDtpre.iLsfxCIvu . %s/' % backup_dir(home))[2] == (
        'barman-catalog-reader: refused rsync --server without --sender: the client would write to this server, '
        'and this key only reads' + USAGE_END
    )
    assert run(home, 'list pg1', servers=['pg1'])[0] == 0
    assert run(home, 'list ha', servers=['pg1'])[2].endswith(
        "; this key only reads the catalogs of pg1: 'list SERVER [WAL]' and rsync reads of their backups\n"
    )
    assert execs == []


def test_a_key_line_with_a_bad_server_name_refuses_everything(home):
    code, out, err = run(home, 'list pg1', servers=['pg1', 'all'])
    assert (code, out) == (catalogreader.EXIT_REFUSED, b'')
    assert err.startswith('barman-catalog-reader: Server name \'all\' is not valid: "all" is reserved by Barman')


def test_a_missing_rsync_is_a_temporary_failure(home, monkeypatch):
    monkeypatch.setenv('PATH', os.path.join(home, 'nothing-here'))
    code, out, err = run(home, 'rsync --server --sender %s . %s/' % (A_NUMERIC_IDS, backup_dir(home)))
    assert (code, out) == (catalogreader.EXIT_TEMPORARY, b'')
    assert err.startswith('barman-catalog-reader: cannot run rsync: ')


# End to end: the real rsync client, with the reader behind a fake ssh


FAKE_SSH = '''#!{python}
"""ssh for the tests: runs the catalog reader on this host, as sshd runs the key's forced command."""
import os, sys
sys.path[:0] = {path!r}
arguments = sys.argv[1:]
while arguments[0].startswith('-'):  # what rsync gives ssh before the host: "-l USER"
    arguments = arguments[2:] if arguments[0] == '-l' else arguments[1:]
# ssh joins the words of the remote command with spaces; sshd hands that string over as it is.
os.environ['SSH_ORIGINAL_COMMAND'] = ' '.join(arguments[1:])
with open({log!r}, 'a') as log:
    log.write(os.environ['SSH_ORIGINAL_COMMAND'] + '\\n')
from ansible_collections.barman.postgresql.runtime import catalogreader
sys.exit(catalogreader.main({argv!r}))
'''


class Mirror:
    """The mirror's side: the real rsync client pulling from "barman@primary" through the fake ssh."""

    def __init__(self, tmp_path, home):
        self.home = home
        self.log = str(tmp_path / 'ssh.log')
        self.ssh = str(tmp_path / 'ssh')
        with open(self.ssh, 'w') as handle:
            handle.write(
                FAKE_SSH.format(
                    python=sys.executable,
                    path=[entry for entry in sys.path if entry],
                    log=self.log,
                    argv=['--barman-home', home, '--server', 'pg1', '--server', 'ha'],
                )
            )
        os.chmod(self.ssh, 0o755)

    def rsync(self, source, destination, *options):
        return subprocess.run(
            ['rsync'] + list(options) + ['-e', self.ssh, 'barman@primary:' + source, destination],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    def commands(self):
        with open(self.log) as handle:
            return handle.read().splitlines()


@pytest.fixture
def mirror(tmp_path, home):
    return Mirror(tmp_path, home)


def test_the_mirror_pulls_a_backup_whole_through_the_reader(mirror, home, tmp_path):
    source = backup_dir(home)
    before = tree(home)
    copy = str(tmp_path / 'copy')
    options = ['-a', '--numeric-ids', '-H', '--checksum', '--itemize-changes', '--stats']
    result = mirror.rsync(source + '/', copy + '/', *options)
    assert result.returncode == 0, result.stderr
    assert mirror.commands() == ['rsync --server --sender -lHogDtprce.iLsfxCIvu --numeric-ids . %s/' % source]
    assert tree(copy) == tree(source)
    assert os.readlink(os.path.join(copy, 'data', 'pg_tblspc', '16385')) == '../../16385'
    hard = [os.stat(os.path.join(copy, 'data', 'base', '1', name)).st_ino for name in ('1259', '1259_hardlink')]
    assert hard[0] == hard[1], '-H keeps the hard link'
    assert tree(home) == before, 'a read changes nothing'


def test_link_dest_and_dry_run_work_through_the_reader(mirror, home, tmp_path):
    first, second, dry = (str(tmp_path / name) for name in ('first', 'second', 'dry'))
    source = backup_dir(home) + '/'
    assert mirror.rsync(source, first + '/', '-a', '--numeric-ids').returncode == 0
    result = mirror.rsync(source, second + '/', '-a', '--numeric-ids', '--link-dest=' + first)
    assert result.returncode == 0, result.stderr
    assert tree(second) == tree(first)
    for name in ('PG_VERSION', os.path.join('base', '1', '1259')):
        assert os.stat(os.path.join(second, 'data', name)).st_ino == os.stat(os.path.join(first, 'data', name)).st_ino
    result = mirror.rsync(source, dry + '/', '-a', '--numeric-ids', '--dry-run', '--itemize-changes')
    assert result.returncode == 0, result.stderr
    assert 'data/PG_VERSION' in result.stdout and not os.path.exists(dry)
    assert mirror.commands()[1:] == [
        'rsync --server --sender -logDtpre.iLsfxCIvu --numeric-ids . %s' % source,
        'rsync --server --sender -nlogDtpre.iLsfxCIvu --numeric-ids . %s' % source,
    ], '--link-dest does not reach the sender'


def test_the_collection_rsync_argv_of_a_mirror_copy_passes(mirror, home, tmp_path):
    """What the mirror runs (rsync.rsync_argv, without --protect-args so that the reader sees the path)."""
    first, second = str(tmp_path / 'first') + '/', str(tmp_path / 'second') + '/'
    source = 'barman@primary:' + backup_dir(home) + '/'
    # As mirror.copy_backup calls it: whole files on a fast link, rsync's delta with a bandwidth limit.
    for destination, link_dest, limit in ((first, None, None), (second, first, 100000)):
        argv = rsync.rsync_argv(
            source,
            destination,
            rsh=mirror.ssh,
            link_dest=link_dest,
            whole_file=not limit,
            bandwidth_limit_kbps=limit,
            protect_args=False,
        )
        result = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
        assert result.returncode == 0, result.stderr
    assert tree(second) == tree(backup_dir(home))
    assert mirror.commands()[-2:] == [
        'rsync --server --sender -lWogDtpre.iLsfxCIvu --numeric-ids . %s/' % backup_dir(home),
        'rsync --server --sender -logDtpre.iLsfxCIvu --bwlimit=100000 --numeric-ids . %s/' % backup_dir(home),
    ]
    pg_version = os.path.join('data', 'PG_VERSION')
    assert os.stat(second + pg_version).st_ino == os.stat(first + pg_version).st_ino


def test_remove_source_files_is_refused_and_the_backup_stays(mirror, home, tmp_path):
    before = tree(home)
    copy = str(tmp_path / 'copy')
    result = mirror.rsync(backup_dir(home) + '/', copy + '/', '-a', '--numeric-ids', '--remove-source-files')
    assert result.returncode != 0
    assert 'barman-catalog-reader: refused rsync option --remove-source-files: it deletes the files it sends' in (
        result.stderr
    )
    assert tree(home) == before
    assert os.path.isfile(os.path.join(backup_dir(home), 'data', 'base', '1', '1259'))
    assert not os.path.exists(copy) or tree(copy) == {}


def test_a_push_is_refused_and_writes_nothing(mirror, home, tmp_path):
    before = tree(home)
    payload = tmp_path / 'payload'
    payload.mkdir()
    (payload / 'authorized_keys').write_text('ssh-ed25519 AAAA intruder\n')
    for target in (home + '/.ssh/', backup_dir(home) + '/'):
        result = subprocess.run(
            ['rsync', '-a', '-e', mirror.ssh, str(payload) + '/', 'barman@primary:' + target],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert result.returncode != 0
        assert 'barman-catalog-reader: refused rsync --server without --sender' in result.stderr
    assert tree(home) == before


def test_the_reader_runs_from_the_installed_files_alone(home, tmp_path):
    """Only collection modules and the stdlib: the files the common role would copy are enough."""
    from ansible_collections.barman.postgresql.plugins.filter.runtime import COLLECTION_ROOT, runtime_files

    lib = tmp_path / 'lib'
    for relative in runtime_files(['runtime/catalogreader.py']):
        target = lib / 'ansible_collections' / 'barman' / 'postgresql' / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(os.path.join(COLLECTION_ROOT, relative), str(target))
    code = (
        'import sys; sys.path.insert(0, %r); '
        'from ansible_collections.barman.postgresql.runtime.catalogreader import main; '
        'sys.exit(main(["--barman-home", %r, "--server", "pg1"]))' % (str(lib), home)
    )
    result = subprocess.run(
        [sys.executable, '-I', '-S', '-c', code],
        env=dict(os.environ, SSH_ORIGINAL_COMMAND='list pg1 000000010000000000000004'),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)['wal']['after'] == 2
