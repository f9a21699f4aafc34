# Copyright: barman.postgresql contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Unit tests of the pure parts of module_utils/recovery.py: target, backup choice, configuration."""

import datetime
import os
import re
import shlex
import stat

import pytest

from ansible_collections.barman.postgresql.plugins.module_utils import infofile, recovery, wal
from ansible_collections.barman.postgresql.plugins.module_utils.errors import BarmanError

UTC = datetime.timezone.utc


def at(*args, tz=UTC):
    return datetime.datetime(*args, tzinfo=tz)


def default_params(**overrides):
    """Module parameters as AnsibleModule would hand them over: the spec's defaults, then the case's values."""
    spec = recovery.module_spec()['argument_spec']
    params = dict((k, v.get('default')) for k, v in spec.items())
    params.update(destination_directory='/var/lib/postgresql/16/copy', wal_sender=['/usr/bin/barman-wal-sender'])
    params.update(overrides)
    return params


# -- parse_target_time -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    'text, expected',
    [
        ('2026-11-24 03:12:00+00', at(2026, 11, 24, 3, 12)),
        ('2026-11-24 03:12:00+00:00', at(2026, 11, 24, 3, 12)),
        ('2026-11-24 03:12:00Z', at(2026, 11, 24, 3, 12)),
        ('2026-11-24T03:12:00Z', at(2026, 11, 24, 3, 12)),
        ('2026-11-24T03:12:00+00', at(2026, 11, 24, 3, 12)),
        ('2026-11-24 03:12:00.123456+00', at(2026, 11, 24, 3, 12, 0, 123456)),
        ('2026-11-24 03:12:00.123+00:00', at(2026, 11, 24, 3, 12, 0, 123000)),
        (
            '2026-11-24 03:12:00+05:30',
            at(2026, 11, 24, 3, 12, tz=datetime.timezone(datetime.timedelta(hours=5, minutes=30))),
        ),
        ('2026-11-24 03:12:00-08', at(2026, 11, 24, 3, 12, tz=datetime.timezone(datetime.timedelta(hours=-8)))),
        ('  2026-11-24 03:12:00+00  ', at(2026, 11, 24, 3, 12)),
    ],
)
def test_parse_target_time_accepts(text, expected):
    parsed = recovery.parse_target_time(text)
    assert parsed == expected
    assert parsed.utcoffset() == expected.utcoffset()


def test_parse_target_time_offsets_are_the_same_instant():
    assert recovery.parse_target_time('2026-11-24 08:42:00+05:30') == recovery.parse_target_time('2026-11-24 03:12:00Z')
    assert recovery.parse_target_time('2026-11-23 19:12:00-08') == at(2026, 11, 24, 3, 12)


def test_parse_target_time_refuses_a_time_without_zone():
    with pytest.raises(recovery.RecoveryError) as excinfo:
        recovery.parse_target_time('2026-11-24 03:12:00')
    error = excinfo.value
    assert isinstance(error, BarmanError)
    assert "'2026-11-24 03:12:00'" in error.message
    assert 'time zone' in error.message
    assert "'2026-11-24 03:12:00+00'" in error.hint
    # The hint's suggestion is itself accepted.
    assert recovery.parse_target_time('2026-11-24 03:12:00+00') == at(2026, 11, 24, 3, 12)


@pytest.mark.parametrize('text', ['garbage', '2026-13-40 03:12:00+00', '03:12:00+00', 'yesterday +00'])
def test_parse_target_time_refuses_garbage(text):
    with pytest.raises(recovery.RecoveryError) as excinfo:
        recovery.parse_target_time(text)
    assert repr(text) in excinfo.value.message
    assert 'is not a time' in excinfo.value.message
    assert 'YYYY-MM-DD HH:MM:SS+00' in excinfo.value.hint
    assert '2026-11-24 03:12:00+00' in excinfo.value.hint
    assert 'YYYY-MM-DD HH:MM:SS+00' in str(excinfo.value)


@pytest.mark.parametrize('text', ['', '   ', None])
def test_parse_target_time_refuses_empty(text):
    with pytest.raises(recovery.RecoveryError) as excinfo:
        recovery.parse_target_time(text)
    assert "target_time ''" in excinfo.value.message
    assert 'YYYY-MM-DD HH:MM:SS+00' in excinfo.value.hint


@pytest.mark.parametrize(
    'text',
    [
        '2026-11-24 03:12:00',
        '2026-11-24',
    ],
)
def test_parse_target_time_no_zone_hint_example_is_accepted(text):
    with pytest.raises(recovery.RecoveryError) as excinfo:
        recovery.parse_target_time(text)
    example = re.search(r"for example '([^']*)'", excinfo.value.hint).group(1)
    assert recovery.parse_target_time(example).utcoffset() == datetime.timedelta(0)


# -- the_target ----------------------------------------------------------------------------------------


def test_the_target_none_given_is_the_end_of_the_archive():
    assert recovery.the_target(default_params()) == (None, None)
    assert recovery.the_target({}) == (None, None)
    assert recovery.the_target(dict(target_time='', target_name='', target_immediate=False)) == (None, None)


def test_the_target_time():
    kind, value = recovery.the_target(default_params(target_time='2026-11-24 03:12:00+00'))
    assert kind == 'target_time'
    assert value == at(2026, 11, 24, 3, 12)


def test_the_target_time_refused_without_zone():
    with pytest.raises(recovery.RecoveryError, match='no time zone'):
        recovery.the_target(default_params(target_time='2026-11-24 03:12:00'))


def test_the_target_lsn():
    assert recovery.the_target(default_params(target_lsn='16/B374D848')) == ('target_lsn', 0x16B374D848)
    assert recovery.the_target(default_params(target_lsn='0/5000028')) == ('target_lsn', wal.parse_lsn('0/5000028'))


@pytest.mark.parametrize('lsn', ['0/ZZ', '5000028', '0/5000028 ', '123456789/0', 'latest'])
def test_the_target_lsn_invalid_is_refused(lsn):
    with pytest.raises(recovery.RecoveryError) as excinfo:
        recovery.the_target(default_params(target_lsn=lsn))
    assert repr(lsn) in excinfo.value.message
    assert '0/5000028' in excinfo.value.hint


def test_the_target_xid():
    assert recovery.the_target(default_params(target_xid='7412')) == ('target_xid', '7412')


@pytest.mark.parametrize('xid', ['abc', '-5', '12 ', '0x10', '1.5'])
def test_the_target_xid_not_digits_is_refused(xid):
    with pytest.raises(recovery.RecoveryError) as excinfo:
        recovery.the_target(default_params(target_xid=xid))
    assert repr(xid) in excinfo.value.message
    assert 'not a transaction id' in excinfo.value.message
    assert 'number' in excinfo.value.hint


@pytest.mark.parametrize('xid', ['\u00b2', '\u0661\u0662'])
def test_the_target_xid_non_ascii_digits_are_refused(xid):
    with pytest.raises(recovery.RecoveryError):
        recovery.the_target(default_params(target_xid=xid))


def test_the_target_name():
    assert recovery.the_target(default_params(target_name='before upgrade')) == ('target_name', 'before upgrade')


def test_the_target_immediate():
    assert recovery.the_target(default_params(target_immediate=True)) == ('target_immediate', True)


def test_the_target_immediate_false_counts_as_not_given():
    params = default_params(target_immediate=False, target_name='nightly')
    assert recovery.the_target(params) == ('target_name', 'nightly')


@pytest.mark.parametrize(
    'given',
    [
        dict(target_time='2026-11-24 03:12:00+00', target_lsn='0/5000028'),
        dict(target_xid='12', target_name='n'),
        dict(target_lsn='0/5000028', target_immediate=True),
        dict(target_time='2026-11-24 03:12:00+00', target_immediate=True),
    ],
)
def test_the_target_two_given_are_refused_naming_both(given):
    with pytest.raises(recovery.RecoveryError) as excinfo:
        recovery.the_target(default_params(**given))
    for name in given:
        assert name in excinfo.value.message
    assert 'keep one' in excinfo.value.hint


def test_the_target_several_are_refused_before_parsing_them():
    # Two invalid values: the error is about there being two, not about either value.
    with pytest.raises(recovery.RecoveryError, match='several recovery targets given: target_time, target_lsn'):
        recovery.the_target(default_params(target_time='garbage', target_lsn='garbage'))


# -- choose_backup ------------------------------------------------------------------------------------


def backup_info(status, end_time=None, end_xlog=None):
    lines = ['status=%s' % status, 'pgdata=/var/lib/postgresql/16/main']
    lines.append('end_time=%s' % (end_time if end_time is not None else 'None'))
    lines.append('end_xlog=%s' % (end_xlog if end_xlog is not None else 'None'))
    return infofile.parse_backup_info('\n'.join(lines) + '\n')


@pytest.fixture
def infos():
    """Oldest first, as backup_infos() returns them."""
    return {
        '20261120T010000': backup_info(infofile.DONE, '2026-11-20 01:05:00+00:00', '0/3000100'),
        '20261121T010000': backup_info(infofile.FAILED),
        '20261122T010000': backup_info(infofile.DONE, '2026-11-22 01:05:00+00:00', '0/7000100'),
        '20261123T010000': backup_info(infofile.DONE, '2026-11-23 01:05:00+00:00', '0/B000100'),
        '20261124T010000': backup_info(infofile.STARTED),
    }


def test_backup_info_helper_builds_what_choose_backup_reads():
    info = backup_info(infofile.DONE, '2026-11-20 01:05:00+00:00', '0/3000100')
    assert info['status'] == infofile.DONE
    assert info['end_time'] == at(2026, 11, 20, 1, 5)
    assert info['end_xlog'] == '0/3000100'


def test_choose_backup_without_any_done_backup():
    for infos in ({}, {'20261121T010000': backup_info(infofile.FAILED), '20261124T010000': backup_info('STARTED')}):
        with pytest.raises(recovery.RecoveryError) as excinfo:
            recovery.choose_backup(infos, None, None)
        assert 'no DONE backup' in excinfo.value.message
        assert excinfo.value.code == 'NO_DONE_BACKUP'


@pytest.mark.parametrize('backup_id', [None, '', 'latest', 'last'])
def test_choose_backup_without_target_takes_the_newest_done(infos, backup_id):
    chosen_id, chosen = recovery.choose_backup(infos, None, None, backup_id)
    assert chosen_id == '20261123T010000'
    assert chosen is infos['20261123T010000']


def test_choose_backup_with_name_or_xid_target_takes_the_newest_done(infos):
    assert recovery.choose_backup(infos, 'target_name', 'n')[0] == '20261123T010000'
    assert recovery.choose_backup(infos, 'target_xid', '12')[0] == '20261123T010000'
    assert recovery.choose_backup(infos, 'target_immediate', True)[0] == '20261123T010000'


@pytest.mark.parametrize(
    'target, expected',
    [
        (at(2026, 11, 25), '20261123T010000'),
        (at(2026, 11, 23, 1, 5, 1), '20261123T010000'),
        (at(2026, 11, 23, 1, 5), '20261122T010000'),  # the end itself is not after the end
        (at(2026, 11, 22, 12), '20261122T010000'),
        (at(2026, 11, 21), '20261120T010000'),
        (at(2026, 11, 20, 1, 5, 0, 1), '20261120T010000'),
    ],
)
def test_choose_backup_time_target_takes_the_newest_done_ending_before(infos, target, expected):
    assert recovery.choose_backup(infos, 'target_time', target)[0] == expected


def test_choose_backup_time_target_compares_instants_not_wall_clocks(infos):
    # 2026-11-23 02:00+05:30 is 2026-11-22 20:30 UTC: before the third backup's end.
    target = recovery.parse_target_time('2026-11-23 02:00:00+05:30')
    assert recovery.choose_backup(infos, 'target_time', target)[0] == '20261122T010000'


@pytest.mark.parametrize('target', [at(2026, 11, 20, 1, 5), at(2026, 11, 19)])
def test_choose_backup_time_before_the_oldest_end_is_refused(infos, target):
    with pytest.raises(recovery.RecoveryError) as excinfo:
        recovery.choose_backup(infos, 'target_time', target)
    message = excinfo.value.message
    assert '20261120T010000' in message
    assert '2026-11-20 01:05:00+00:00' in message
    assert str(target) in message
    assert 'later target' in excinfo.value.hint


@pytest.mark.parametrize(
    'lsn, expected',
    [
        ('1/0', '20261123T010000'),
        ('0/B000100', '20261123T010000'),  # an LSN target at the backup's end is reachable
        ('0/B0000FF', '20261122T010000'),
        ('0/7000100', '20261122T010000'),
        ('0/3000100', '20261120T010000'),
    ],
)
def test_choose_backup_lsn_target_takes_the_newest_done_ending_before(infos, lsn, expected):
    assert recovery.choose_backup(infos, 'target_lsn', wal.parse_lsn(lsn))[0] == expected


def test_choose_backup_lsn_before_the_oldest_end_is_refused(infos):
    with pytest.raises(recovery.RecoveryError) as excinfo:
        recovery.choose_backup(infos, 'target_lsn', wal.parse_lsn('0/30000FF'))
    message = excinfo.value.message
    assert 'LSN 0/30000FF' in message
    assert '20261120T010000' in message
    assert '0/3000100' in message


def test_choose_backup_skips_failed_and_started_backups():
    infos = {
        '20261120T010000': backup_info(infofile.DONE, '2026-11-20 01:05:00+00:00', '0/3000100'),
        # A failed backup with an end before the target: never chosen.
        '20261122T010000': backup_info(infofile.FAILED, '2026-11-22 01:05:00+00:00', '0/7000100'),
        '20261123T010000': backup_info(infofile.WAITING_FOR_WALS, '2026-11-23 01:05:00+00:00', '0/B000100'),
        '20261124T010000': backup_info(infofile.STARTED),
    }
    assert recovery.choose_backup(infos, None, None)[0] == '20261120T010000'
    assert recovery.choose_backup(infos, 'target_time', at(2026, 11, 25))[0] == '20261120T010000'
    assert recovery.choose_backup(infos, 'target_lsn', wal.parse_lsn('1/0'))[0] == '20261120T010000'


def test_choose_backup_given_unknown_id_is_refused_listing_known_ones(infos):
    with pytest.raises(recovery.RecoveryError) as excinfo:
        recovery.choose_backup(infos, None, None, '20261101T000000')
    assert '20261101T000000' in excinfo.value.message
    for backup_id, info in infos.items():
        assert '%s (%s)' % (backup_id, info['status']) in excinfo.value.hint


@pytest.mark.parametrize('backup_id, status', [('20261121T010000', 'FAILED'), ('20261124T010000', 'STARTED')])
def test_choose_backup_given_not_done_is_refused(infos, backup_id, status):
    with pytest.raises(recovery.RecoveryError) as excinfo:
        recovery.choose_backup(infos, None, None, backup_id)
    assert backup_id in excinfo.value.message
    assert status in excinfo.value.message
    assert 'not DONE' in excinfo.value.message


def test_choose_backup_given_done_is_taken(infos):
    assert recovery.choose_backup(infos, None, None, '20261122T010000') == ('20261122T010000', infos['20261122T010000'])
    # An older backup than needed is fine: the target is after its end.
    assert recovery.choose_backup(infos, 'target_time', at(2026, 11, 25), '20261120T010000')[0] == '20261120T010000'
    assert recovery.choose_backup(infos, 'target_lsn', 0x7000100, '20261122T010000')[0] == '20261122T010000'
    assert recovery.choose_backup(infos, 'target_name', 'n', '20261120T010000')[0] == '20261120T010000'


@pytest.mark.parametrize('target', [at(2026, 11, 22, 1, 5), at(2026, 11, 21)])
def test_choose_backup_given_with_time_before_its_end_is_refused(infos, target):
    with pytest.raises(recovery.RecoveryError) as excinfo:
        recovery.choose_backup(infos, 'target_time', target, '20261122T010000')
    assert '20261122T010000' in excinfo.value.message
    assert '2026-11-22 01:05:00+00:00' in excinfo.value.message
    assert 'older backup' in excinfo.value.hint
    assert excinfo.value.fail_json_kwargs()['error_code'] == 'TARGET_BEFORE_BACKUP'


def test_choose_backup_given_with_lsn_before_its_end_is_refused(infos):
    with pytest.raises(recovery.RecoveryError) as excinfo:
        recovery.choose_backup(infos, 'target_lsn', wal.parse_lsn('0/70000FF'), '20261122T010000')
    assert 'LSN 0/70000FF' in excinfo.value.message
    assert '20261122T010000' in excinfo.value.message
    assert '0/7000100' in excinfo.value.message
    assert excinfo.value.code == 'TARGET_BEFORE_BACKUP'


@pytest.mark.parametrize('backup_id', ['oldest', 'first'])
def test_choose_backup_oldest_shortcut(infos, backup_id):
    assert recovery.choose_backup(infos, None, None, backup_id) == ('20261120T010000', infos['20261120T010000'])
    assert recovery.choose_backup(infos, 'target_time', at(2026, 11, 25), backup_id)[0] == '20261120T010000'


def test_choose_backup_latest_shortcut_with_target_fits_the_target(infos):
    assert recovery.choose_backup(infos, 'target_time', at(2026, 11, 22, 12), 'latest')[0] == '20261122T010000'
    with pytest.raises(recovery.RecoveryError, match='before the end of the oldest backup'):
        recovery.choose_backup(infos, 'target_time', at(2026, 11, 19), 'last')


@pytest.mark.parametrize(
    'kind, value',
    [('target_time', at(2026, 11, 19)), ('target_lsn', 0x1000000)],
)
def test_choose_backup_oldest_with_target_before_its_end_is_refused(infos, kind, value):
    with pytest.raises(recovery.RecoveryError):
        recovery.choose_backup(infos, kind, value, 'oldest')


# -- neutralised_config --------------------------------------------------------------------------------

PREFIX = '#barman.postgresql (recovered copy): '

POINTING = [
    "data_directory = '/var/lib/postgresql/16/main'",
    "hba_file = '/etc/postgresql/16/main/pg_hba.conf'",
    "ident_file='/etc/postgresql/16/main/pg_ident.conf'",
    "external_pid_file = '/run/postgresql/16-main.pid'",
    "include_dir 'conf.d'",
    "include '/etc/postgresql/extra.conf'",
    "include_if_exists = 'local.conf'",
    "archive_command = 'barman-wal-archive host pg1 %p'",
    "restore_command = 'cp /archive/%f %p'",
    "primary_conninfo = 'host=primary user=replicator'",
    "DATA_DIRECTORY = '/x'",
    "Archive_Command='x'",
    "   hba_file   =   '/x'   # indented, spaces around",
    "\tinclude\t'tabbed.conf'",
    "archive_command=''",
    'primary_conninfo',
]


@pytest.mark.parametrize('line', POINTING)
def test_neutralised_config_comments_out_settings_pointing_at_the_original(line):
    assert recovery.neutralised_config(line + '\n') == PREFIX + line + '\n'


@pytest.mark.parametrize(
    'line',
    [
        "data_directory_x = '/x'",
        "includes = 'x'",
        "archive_commander = 'x'",
        "my.data_directory = '/x'",
        "shared_buffers = '128MB'",
        'archive_mode = on',
        'archive_timeout = 60',
        "listen_addresses = '*'  # data_directory = '/x'",
        "# data_directory = '/x'",
        "#include 'x'",
        '',
        '   ',
        "cluster_name = 'restore_command'",
    ],
)
def test_neutralised_config_leaves_other_lines_alone(line):
    assert recovery.neutralised_config(line + '\n') == line + '\n'


def test_neutralised_config_a_whole_file():
    text = (
        '# PostgreSQL configuration\n'
        '\n'
        "data_directory = '/var/lib/postgresql/16/main'\t\t# use data in another directory\n"
        "listen_addresses = 'localhost'   # what IP address(es) to listen on;\n"
        'port = 5432\n'
        "archive_command = 'barman-wal-archive backup pg1 %p'\n"
        'archive_mode = on\n'
        "include_dir = 'conf.d'\n"
        "wal_level = replica     # minimal, replica, or logical \\ odd 'chars' é\n"
        '  \n'
        "  #restore_command = ''\n"
    )
    out = recovery.neutralised_config(text).split('\n')
    lines = text.split('\n')
    assert len(out) == len(lines)
    commented = {2, 5, 7}
    for number, (before, after) in enumerate(zip(lines, out)):
        if number in commented:
            assert after == PREFIX + before
        else:
            assert after == before


def test_neutralised_config_keep():
    text = "archive_command = 'a %p'\narchive_library = 'lib'\nrestore_command = 'r'\nARCHIVE_COMMAND = 'b'\n"
    out = recovery.neutralised_config(text, keep=('archive_command',)).split('\n')
    assert out[0] == "archive_command = 'a %p'"
    assert out[1] == PREFIX + "archive_library = 'lib'"
    assert out[2] == PREFIX + "restore_command = 'r'"
    assert out[3] == "ARCHIVE_COMMAND = 'b'"
    both = recovery.neutralised_config(text, keep=('archive_command', 'archive_library')).split('\n')
    assert both[:2] == ["archive_command = 'a %p'", "archive_library = 'lib'"]
    assert both[2] == PREFIX + "restore_command = 'r'"


def test_neutralised_config_empty_and_unterminated():
    assert recovery.neutralised_config('') == '\n'
    assert recovery.neutralised_config('port = 5432') == 'port = 5432\n'
    assert recovery.neutralised_config("hba_file = 'x'") == PREFIX + "hba_file = 'x'\n"


def test_neutralised_config_name_directly_followed_by_a_quote():
    assert recovery.neutralised_config("data_directory'/x'\n") == PREFIX + "data_directory'/x'\n"


def test_neutralised_config_only_splits_on_newlines():
    text = "# old settings\x0cwork_mem = '1GB'\nport = 5432\n"
    assert recovery.neutralised_config(text) == text


# -- pg_conf_value -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    'value, expected',
    [
        ('abc', "'abc'"),
        ('', "''"),
        (5433, "'5433'"),
        ("it's", "'it''s'"),
        ("''", "''''''"),
        ('C:\\data', "'C:\\\\data'"),
        ("a\\'b", "'a\\\\''b'"),
        ('cp barman_wal/%f %p', "'cp barman_wal/%f %p'"),
        ('é # not a comment', "'é # not a comment'"),
    ],
)
def test_pg_conf_value(value, expected):
    assert recovery.pg_conf_value(value) == expected


@pytest.mark.parametrize('value', ['a\nb', 'a\rb', '\n', 'x\r\n'])
def test_pg_conf_value_refuses_line_breaks(value):
    with pytest.raises(recovery.RecoveryError, match='line break'):
        recovery.pg_conf_value(value)


# -- recovery_settings ---------------------------------------------------------------------------------

_CONF_LINE = re.compile(r"([a-z_]+) = '((?:[^'\\]|''|\\.)*)'\Z")


def unquote(quoted):
    """PostgreSQL's reading of a single-quoted configuration value (the escapes pg_conf_value writes)."""
    return re.sub(r"''|\\(.)", lambda m: "'" if m.group(0) == "''" else m.group(1), quoted)


def parsed_settings(text):
    """[(name, value)] of the setting lines, in order; comments and blank lines must be the only others."""
    settings = []
    for line in text.split('\n'):
        if not line.strip() or line.startswith('#'):
            continue
        match = _CONF_LINE.match(line)
        assert match, 'not a setting line: %r' % line
        settings.append((match.group(1), unquote(match.group(2))))
    return settings


def effective(text):
    """The settings as PostgreSQL applies them: the last line of each name wins."""
    return dict(parsed_settings(text))


def test_recovery_settings_to_the_end_of_the_archive():
    text = recovery.recovery_settings(default_params(), '20261123T010000', None, None)
    assert text.startswith('\n# Recovery of backup 20261123T010000 by barman.postgresql, ')
    assert text.endswith('\n')
    settings = parsed_settings(text)
    names = [name for name, _value in settings]
    assert not any(name.startswith('recovery_target') and name != 'recovery_target_timeline' for name in names)
    assert dict(settings) == {
        'restore_command': '/usr/bin/barman-wal-sender get %f %p',
        'recovery_end_command': '/usr/bin/barman-wal-sender end-recovery',  # removes the look-ahead spool
        'recovery_target_timeline': 'latest',
        'archive_mode': 'off',
        'max_logical_replication_workers': '0',
    }
    assert len(names) == len(set(names))


def test_with_get_wal_the_copy_releases_its_hold_when_its_recovery_ends():
    hold = '20261123T010000-0123456789abcdef'
    settings = effective(recovery.recovery_settings(default_params(), '20261123T010000', None, None, hold=hold))
    assert settings['recovery_end_command'] == '/usr/bin/barman-wal-sender end-recovery --release-hold ' + hold
    copied = effective(
        recovery.recovery_settings(default_params(get_wal=False), '20261123T010000', None, None, hold=hold)
    )
    assert 'recovery_end_command' not in copied, 'WAL copied along: recover.yml releases the hold'
    standby = dict(conninfo='host=pg1 user=streaming_barman')
    streaming = effective(recovery.recovery_settings(default_params(), '20261123T010000', None, None, standby, hold))
    assert streaming['recovery_end_command'] == '/usr/bin/barman-wal-sender end-recovery', (
        'a failover never waits on it'
    )


def test_recovery_settings_header_comes_before_every_setting():
    text = recovery.recovery_settings(default_params(archive=False), 'b1', None, None)
    lines = text.split('\n')
    header = next(i for i, line in enumerate(lines) if line.startswith('# Recovery of backup b1'))
    assert lines[:header] == ['']
    archive_mode = lines.index("archive_mode = 'off'")
    restore = next(i for i, line in enumerate(lines) if line.startswith('restore_command = '))
    assert header < restore < archive_mode


def test_recovery_settings_target_time():
    value = recovery.parse_target_time('2026-11-24 03:12:00+05:30')
    settings = effective(recovery.recovery_settings(default_params(), 'b1', 'target_time', value))
    assert settings['recovery_target_time'] == '2026-11-24 03:12:00+05:30'
    assert settings['recovery_target_action'] == 'promote'
    assert settings['recovery_target_inclusive'] == 'on'
    assert settings['recovery_target_timeline'] == 'latest'
    assert 'recovery_target' not in settings
    # The written time is the same instant for PostgreSQL.
    assert recovery.parse_target_time(settings['recovery_target_time']) == value


def test_recovery_settings_target_time_keeps_fractional_seconds():
    value = recovery.parse_target_time('2026-11-24T03:12:00.250Z')
    settings = effective(recovery.recovery_settings(default_params(), 'b1', 'target_time', value))
    assert settings['recovery_target_time'] == '2026-11-24 03:12:00.250000+00:00'


def test_recovery_settings_target_lsn():
    params = default_params(target_inclusive=False, target_action='pause')
    settings = effective(recovery.recovery_settings(params, 'b1', 'target_lsn', 0x16B374D848))
    assert settings['recovery_target_lsn'] == '16/B374D848'
    assert settings['recovery_target_inclusive'] == 'off'
    assert settings['recovery_target_action'] == 'pause'


def test_recovery_settings_target_xid():
    settings = effective(recovery.recovery_settings(default_params(), 'b1', 'target_xid', '7412'))
    assert settings['recovery_target_xid'] == '7412'
    assert settings['recovery_target_inclusive'] == 'on'
    assert settings['recovery_target_action'] == 'promote'


def test_recovery_settings_target_name_is_quoted():
    name = "before 'upgrade' \\ 2"
    settings = parsed_settings(
        recovery.recovery_settings(default_params(target_action='shutdown'), 'b1', 'target_name', name)
    )
    as_dict = dict(settings)
    assert as_dict['recovery_target_name'] == name
    assert as_dict['recovery_target_action'] == 'shutdown'
    # inclusive means nothing for a named restore point: not written.
    assert 'recovery_target_inclusive' not in as_dict


def test_recovery_settings_target_name_with_a_line_break_is_refused():
    with pytest.raises(recovery.RecoveryError, match='line break'):
        recovery.recovery_settings(default_params(), 'b1', 'target_name', 'a\nport = 1')


@pytest.mark.parametrize('tli, expected', [('latest', 'current'), ('current', 'current'), ('3', '3')])
def test_recovery_settings_target_immediate(tli, expected):
    settings = effective(recovery.recovery_settings(default_params(target_tli=tli), 'b1', 'target_immediate', True))
    assert settings['recovery_target'] == 'immediate'
    assert settings['recovery_target_timeline'] == expected
    assert settings['recovery_target_action'] == 'promote'
    assert 'recovery_target_inclusive' not in settings


@pytest.mark.parametrize('kind, value', [(None, None), ('target_lsn', 0x5000028), ('target_name', 'n')])
def test_recovery_settings_latest_timeline_stays_latest_for_other_targets(kind, value):
    settings = effective(recovery.recovery_settings(default_params(), 'b1', kind, value))
    assert settings['recovery_target_timeline'] == 'latest'


def test_recovery_settings_explicit_timeline():
    settings = effective(recovery.recovery_settings(default_params(target_tli='2'), 'b1', None, None))
    assert settings['recovery_target_timeline'] == '2'


def test_recovery_settings_one_target_each():
    cases = [
        ('target_time', at(2026, 11, 24), 'recovery_target_time'),
        ('target_lsn', 0x5000028, 'recovery_target_lsn'),
        ('target_xid', '12', 'recovery_target_xid'),
        ('target_name', 'n', 'recovery_target_name'),
        ('target_immediate', True, 'recovery_target'),
    ]
    targets = {'recovery_target', 'recovery_target_time', 'recovery_target_lsn', 'recovery_target_xid'}
    targets.add('recovery_target_name')
    for kind, value, name in cases:
        settings = effective(recovery.recovery_settings(default_params(), 'b1', kind, value))
        assert targets & set(settings) == {name}


def test_recovery_settings_archive():
    off = effective(recovery.recovery_settings(default_params(), 'b1', None, None))
    assert off['archive_mode'] == 'off'
    on = effective(recovery.recovery_settings(default_params(archive=True), 'b1', None, None))
    assert 'archive_mode' not in on


def test_recovery_settings_port_and_listen_addresses():
    params = default_params(port=5433, listen_addresses='localhost,10.0.0.5')
    settings = effective(recovery.recovery_settings(params, 'b1', None, None))
    assert settings['port'] == '5433'
    assert settings['listen_addresses'] == 'localhost,10.0.0.5'
    without = effective(recovery.recovery_settings(default_params(), 'b1', None, None))
    assert 'port' not in without
    assert 'listen_addresses' not in without


def test_recovery_settings_restore_command_with_wal_sender():
    sender = ['ssh', '-o', 'BatchMode=yes', 'barman@backup host', "barman-wal-sender --server 'pg 1'"]
    settings = effective(recovery.recovery_settings(default_params(wal_sender=sender), 'b1', None, None))
    restore = settings['restore_command']
    assert restore.endswith(' get %f %p')
    assert shlex.split(restore) == sender + ['get', '%f', '%p']


def test_recovery_settings_restore_command_without_get_wal():
    for sender in (None, [], ['/usr/bin/barman-wal-sender']):
        params = default_params(get_wal=False, wal_sender=sender)
        settings = effective(recovery.recovery_settings(params, 'b1', None, None))
        assert settings['restore_command'] == 'cp barman_wal/%f %p'


@pytest.mark.parametrize('sender', [None, []])
def test_recovery_settings_get_wal_without_wal_sender_is_refused(sender):
    with pytest.raises(recovery.RecoveryError, match='wal_sender'):
        recovery.recovery_settings(default_params(get_wal=True, wal_sender=sender), 'b1', None, None)


# -- tablespace_locations ------------------------------------------------------------------------------


def tablespace_info(pgdata='/var/lib/postgresql/16/main'):
    return dict(
        pgdata=pgdata,
        tablespaces=[
            infofile.Tablespace('fast', 16387, '/srv/fast'),
            infofile.Tablespace('slow', 16388, '/mnt/slow/pg'),
        ],
    )


def test_tablespace_locations_beside_the_destination():
    params = default_params(destination_directory='/restore/pg16/')
    assert recovery.tablespace_locations(tablespace_info(), params) == {
        16387: ('fast', '/restore/pg16.tblspc/fast'),
        16388: ('slow', '/restore/pg16.tblspc/slow'),
    }


def test_tablespace_locations_in_place_keeps_the_original_locations():
    params = default_params(destination_directory='/var/lib/postgresql/16/main/')
    assert recovery.tablespace_locations(tablespace_info(), params) == {
        16387: ('fast', '/srv/fast'),
        16388: ('slow', '/mnt/slow/pg'),
    }


def test_tablespace_locations_by_name_and_by_oid():
    params = default_params(
        destination_directory='/restore/pg16', tablespace_map={'fast': '/ssd/fast/', '16388': '/hdd/slow'}
    )
    assert recovery.tablespace_locations(tablespace_info(), params) == {
        16387: ('fast', '/ssd/fast'),
        16388: ('slow', '/hdd/slow'),
    }


def test_tablespace_locations_map_wins_in_place_too():
    params = default_params(destination_directory='/var/lib/postgresql/16/main', tablespace_map={'slow': '/new'})
    locations = recovery.tablespace_locations(tablespace_info(), params)
    assert locations == {16387: ('fast', '/srv/fast'), 16388: ('slow', '/new')}


def test_tablespace_locations_name_before_oid():
    params = default_params(tablespace_map={'fast': '/by-name', '16387': '/by-oid'})
    assert recovery.tablespace_locations(tablespace_info(), params)[16387] == ('fast', '/by-name')


def test_tablespace_locations_without_tablespaces():
    for tablespaces in (None, []):
        info = dict(pgdata='/var/lib/postgresql/16/main', tablespaces=tablespaces)
        assert recovery.tablespace_locations(info, default_params(tablespace_map={'x': '/y'})) == {}


def test_tablespace_locations_from_a_parsed_backup_info():
    info = infofile.parse_backup_info(
        "pgdata=/var/lib/postgresql/16/main\ntablespaces=[('tbs1', 16387, '/srv/tbs1')]\nstatus=DONE\n"
    )
    params = default_params(destination_directory='/restore/x')
    assert recovery.tablespace_locations(info, params) == {16387: ('tbs1', '/restore/x.tblspc/tbs1')}


# -- configuration_files and _write_files: the pieces above put together in the copy's files ------------------


def write_configuration(staging, data, params, backup_id, locations, kind, value):
    recovery._write_files(staging, recovery.configuration_files(data, params, backup_id, locations, kind, value))


@pytest.fixture
def backup_data(tmp_path):
    data = tmp_path / 'data'
    data.mkdir()
    (data / 'postgresql.conf').write_text(
        "data_directory = '/var/lib/postgresql/16/main'\nport = 5432\narchive_command = 'send %p'\n"
    )
    (data / 'postgresql.auto.conf').write_text("# Do not edit this file manually!\nwork_mem = '64MB'\n")
    staging = tmp_path / 'staging'
    staging.mkdir()
    return data, staging


def test_write_configuration(backup_data):
    data, staging = backup_data
    params = default_params(port=5433)
    locations = {16388: ('slow', '/restore/x.tblspc/slow'), 16387: ('fast', '/ssd/fast')}
    value = recovery.parse_target_time('2026-11-24 03:12:00+00')
    write_configuration(str(staging), str(data), params, 'b1', locations, 'target_time', value)
    assert sorted(os.listdir(staging)) == [
        'pg_wal',
        'postgresql.auto.conf',
        'postgresql.conf',
        'recovery.signal',
        'tablespace_map',
    ]
    # A real, empty pg_wal (the backup's may be a link to the original's WAL directory).
    assert not os.path.islink(staging / 'pg_wal')
    assert os.listdir(staging / 'pg_wal') == ['archive_status']
    assert stat.S_IMODE(os.stat(staging / 'pg_wal').st_mode) == 0o700
    conf = (staging / 'postgresql.conf').read_text()
    assert conf == PREFIX + "data_directory = '/var/lib/postgresql/16/main'\nport = 5432\n" + PREFIX + (
        "archive_command = 'send %p'\n"
    )
    auto = (staging / 'postgresql.auto.conf').read_text()
    assert auto.startswith("# Do not edit this file manually!\nwork_mem = '64MB'\n\n# Recovery of backup b1")
    settings = effective(auto)
    assert settings['recovery_target_time'] == '2026-11-24 03:12:00+00:00'
    assert settings['port'] == '5433'
    assert (staging / 'tablespace_map').read_text() == '16387 /ssd/fast\n16388 /restore/x.tblspc/slow\n'
    assert (staging / 'recovery.signal').read_text() == ''
    for name in os.listdir(staging):
        if name != 'pg_wal':
            assert stat.S_IMODE(os.stat(staging / name).st_mode) == 0o600


def test_write_configuration_archive_keeps_archive_command(backup_data):
    data, staging = backup_data
    write_configuration(str(staging), str(data), default_params(archive=True), 'b1', {}, None, None)
    assert "\narchive_command = 'send %p'\n" in (staging / 'postgresql.conf').read_text()
    assert not (staging / 'tablespace_map').exists()
    assert 'archive_mode' not in effective((staging / 'postgresql.auto.conf').read_text())


def test_write_configuration_without_auto_conf(backup_data):
    data, staging = backup_data
    (data / 'postgresql.auto.conf').unlink()
    write_configuration(str(staging), str(data), default_params(), 'b1', {}, None, None)
    auto = (staging / 'postgresql.auto.conf').read_text()
    assert auto.startswith('\n\n# Recovery of backup b1')
    assert effective(auto)['archive_mode'] == 'off'


# A backup of a server that was itself recovered (in place) by this collection: its postgresql.auto.conf
# still holds the recovery settings of that first recovery (PostgreSQL ignores them once promoted).
EARLIER_RECOVERY = recovery.recovery_settings(
    default_params(archive=True), '20261101T010000', 'target_time', at(2026, 11, 1, 12)
)


@pytest.mark.parametrize(
    'kind, value',
    [(None, None), ('target_lsn', 0x9000028), ('target_name', 'n'), ('target_immediate', True)],
)
def test_write_configuration_forgets_an_earlier_recovery_target(backup_data, kind, value):
    data, staging = backup_data
    (data / 'postgresql.auto.conf').write_text("work_mem = '64MB'\n" + EARLIER_RECOVERY)
    assert effective(EARLIER_RECOVERY)['recovery_target_time'] == '2026-11-01 12:00:00+00:00'
    write_configuration(str(staging), str(data), default_params(), 'b2', {}, kind, value)
    settings = effective((staging / 'postgresql.auto.conf').read_text())
    targets = {'recovery_target', 'recovery_target_time', 'recovery_target_lsn', 'recovery_target_xid'}
    targets.add('recovery_target_name')
    active = {name for name in targets & set(settings) if settings[name] != ''}
    expected = {None: set(), 'target_lsn': {'recovery_target_lsn'}, 'target_name': {'recovery_target_name'}}
    expected['target_immediate'] = {'recovery_target'}
    assert active == expected[kind]


# -- the copy runs none of the original's duties ------------------------------------------------------------


@pytest.mark.parametrize(
    'line',
    [
        "recovery_end_command = '/usr/local/bin/notify-standby-promoted'",
        "archive_cleanup_command = 'pg_archivecleanup /mnt/archive %r'",
        "ssl_passphrase_command = '/usr/local/bin/fetch-key'",
    ],
)
def test_the_original_duties_are_commented_out(line):
    assert recovery.neutralised_config(line + '\n') == PREFIX + line + '\n'


def test_a_copy_starts_no_subscription_worker_unless_it_replaces_the_original():
    assert (
        effective(recovery.recovery_settings(default_params(), 'b1', None, None))['max_logical_replication_workers']
        == '0'
    )
    in_place = effective(recovery.recovery_settings(default_params(archive=True), 'b1', None, None))
    assert 'max_logical_replication_workers' not in in_place


# -- the plan: destination, free space, the least LSN recovery must reach --------------------------------------


def test_destination_directory_in_place_is_the_original_pgdata():
    info = {'pgdata': '/var/lib/postgresql/15/main/'}
    assert recovery.destination_directory(default_params(in_place=True), info) == '/var/lib/postgresql/15/main'
    assert recovery.destination_directory(default_params(destination_directory='/x/y/'), info) == '/x/y'
    # None given: a new directory beside the original, named by the time of the call (UTC).
    beside = recovery.destination_directory(default_params(destination_directory=None), info, now=1764470400.0)
    assert beside == '/var/lib/postgresql/15/main.recovered-20251130T024000'


MIB = 1024 * 1024


def test_free_space_is_summed_per_filesystem_and_refused_with_the_figures():
    filesystems = {'/srv/copy': ('/srv', 500 * MIB), '/srv/copy.tblspc/t': ('/srv', 500 * MIB)}
    filesystems['/var/lib/postgresql/15/main'] = ('/', 10000 * MIB)
    needs = {'/srv/copy': 300 * MIB, '/srv/copy.tblspc/t': 300 * MIB}
    with pytest.raises(recovery.RecoveryError) as excinfo:
        recovery.check_free_space(filesystems, needs, '/var/lib/postgresql/15/main', False)
    error = excinfo.value
    assert '/srv on the destination has 500 MiB free' in error.message and 'needs 600 MiB' in error.message
    assert error.data == {'needed_bytes': 600 * MIB, 'free_bytes': 500 * MIB}
    assert 'nothing was copied' in error.hint
    needs['/srv/copy.tblspc/t'] = 200 * MIB
    assert recovery.check_free_space(filesystems, needs, '/var/lib/postgresql/15/main', False) == []


def test_a_copy_beside_the_live_server_on_its_filesystem_is_warned_about():
    filesystems = {'/data/copy': ('/data', 100 * MIB), '/data/main': ('/data', 100 * MIB)}
    warnings = recovery.check_free_space(filesystems, {'/data/copy': MIB}, '/data/main', False)
    assert len(warnings) == 1 and '/data/main' in warnings[0] and '/data' in warnings[0]
    assert recovery.check_free_space(filesystems, {'/data/main': MIB}, '/data/main', True) == []


def test_minimum_end_lsn():
    info = {'xlog_segment_size': 16 * MIB, 'end_xlog': '0/5000100'}
    # No target: recovery must have read into the newest archived segment.
    assert recovery.minimum_end_lsn(info, None, None, '000000010000000000000009') == 0x9000001
    assert recovery.minimum_end_lsn(info, 'target_lsn', 0x7000028, '000000010000000000000009') == 0x7000028
    # Exclusive: PostgreSQL stops at the end of the record before the target, short of it by padding.
    assert recovery.minimum_end_lsn(info, 'target_lsn', 0x7000028, '000000010000000000000009', False) == 0x5000100
    for kind in ('target_time', 'target_xid', 'target_name', 'target_immediate'):
        assert recovery.minimum_end_lsn(info, kind, 'x', '000000010000000000000009') == 0x5000100


def test_get_wal_without_a_sender_is_refused_while_planning():
    with pytest.raises(recovery.RecoveryError) as excinfo:
        recovery.configuration_files('/nonexistent', default_params(wal_sender=None), 'b1', {}, None, None)
    assert 'wal_sender' in excinfo.value.message and 'nothing was copied' in excinfo.value.hint


def test_wal_copied_along_must_leave_a_tenth_of_the_catalog_filesystem_free(tmp_path):
    recovery.check_staging_space(str(tmp_path), 1 << 20)
    stat = os.statvfs(str(tmp_path))
    with pytest.raises(recovery.RecoveryError, match='less than a tenth free') as refused:
        recovery.check_staging_space(str(tmp_path), stat.f_bavail * stat.f_frsize)
    assert refused.value.code == 'NOT_ENOUGH_SPACE'


# -- recovery as a standby ---------------------------------------------------------------------------


def test_a_standby_streams_from_the_primary_and_follows_its_timeline(tmp_path):
    (tmp_path / 'postgresql.auto.conf').write_text("archive_command = 'send %p'\n")
    standby = dict(primary='ha2', conninfo="host='10.0.0.16' port='5446' user='streaming_barman'")
    params = default_params(standby=True, archive=True, primary_slot_name='ha1')
    files = recovery.configuration_files(str(tmp_path), params, '20261130T090000', {}, None, None, standby)
    assert 'standby.signal' in files and 'recovery.signal' not in files
    conf = files['postgresql.auto.conf']
    assert "primary_conninfo = 'host=''10.0.0.16'' port=''5446'' user=''streaming_barman'''" in conf
    assert "primary_slot_name = 'ha1'" in conf and "recovery_target_timeline = 'latest'" in conf
    assert "archive_command = 'send %p'" in conf and 'recovery_target_action' not in conf


def test_a_standby_with_a_target_or_without_members_is_refused_before_anything():
    with pytest.raises(BarmanError) as refused:
        recovery.standby_conninfo(default_params(standby=True, server='ha'), 'target_time')
    assert refused.value.code == 'INVALID_TARGET'
    with pytest.raises(BarmanError) as refused:
        recovery.standby_conninfo(default_params(standby=True, server='ha', members=None), None)
    assert refused.value.code == 'NO_PRIMARY' and 'members' in str(refused.value)
    assert recovery.standby_conninfo(default_params(), 'target_time') is None
