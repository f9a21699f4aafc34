# Copyright: barman.postgresql contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Tests for module_utils/ssh.py."""

import os
import re
import shlex
import shutil
import stat
import subprocess
import tempfile

import pytest

from ansible_collections.barman.postgresql.plugins.module_utils import ssh
from ansible_collections.barman.postgresql.plugins.module_utils.errors import BarmanError

# Generated with ssh-keygen (OpenSSH 9.2) for these tests only.
ED25519_B64 = 'AAAAC3NzaC1lZDI1NTE5AAAAINe8VDmOb0FWy4kvWSQ1SD90YS45z2rAMaGF3+vzjntx'
ED25519_KEY = 'ssh-ed25519 %s barman@backup' % ED25519_B64
ECDSA_B64 = (
    'AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBLqE6mqeTjdoDmNBuK5UstvnEXPDPbuEGjJ62I4WvZWSlsBI6SIhoO'
    '+7xRkn0XPPn5exRKnTMdOfz+xaq3QawA0='
)

TARGET = ssh.SshTarget('barman', 'db1.example.com', None)

# Anything that would turn host key verification off or make ssh prompt.
UNSAFE_OPTION = re.compile(
    r'StrictHostKeyChecking=(no|off|accept-new|ask)|/dev/null|BatchMode=no|UpdateHostKeys', re.IGNORECASE
)

NASTY_ARGS = [
    'plain',
    'with space',
    "single'quote",
    'double"quote',
    'semi;colon && rm -rf / | cat',
    '$(id) `id` $HOME ${X}',
    '-o ProxyCommand=evil',
    '--',
    '',
    'glob*?[a]',
    'back\\slash',
    'tab\there',
    'ünïcode',
]


def dequote_sshd_option(value):
    """What sshd does to a command="..." value: only \\" becomes "."""
    return value.replace('\\"', '"')


# --------------------------------------------------------------------------- targets


@pytest.mark.parametrize(
    'user, host, port, expected',
    [
        ('barman', 'db1.example.com', None, ssh.SshTarget('barman', 'db1.example.com', None)),
        ('postgres', '10.0.0.5', 2222, ssh.SshTarget('postgres', '10.0.0.5', 2222)),
        ('pg_user.1', 'db-1', '22', ssh.SshTarget('pg_user.1', 'db-1', 22)),
        ('u', '2001:db8::1', 65535, ssh.SshTarget('u', '2001:db8::1', 65535)),
        ('u', '[2001:db8::1]', 1, ssh.SshTarget('u', '2001:db8::1', 1)),
        ('u', 'host.example.com.', None, ssh.SshTarget('u', 'host.example.com.', None)),
        ('machine$', 'h', None, ssh.SshTarget('machine$', 'h', None)),
    ],
)
def test_validate_ssh_target_accepts(user, host, port, expected):
    assert ssh.validate_ssh_target(user, host, port) == expected


@pytest.mark.parametrize(
    'user, host, port',
    [
        ('-oProxyCommand=x', 'h', None),
        ('bar man', 'h', None),
        ('user@x', 'h', None),
        ('', 'h', None),
        (None, 'h', None),
        ('u', '-oProxyCommand=x', None),
        ('u', 'a b', None),
        ('u', 'x@y', None),
        ('u', 'h:22', None),
        ('u', 'h/x', None),
        ('u', '', None),
        ('u', 'a..b', None),
        ('u', '[db1.example.com]', None),
        ('u', 'h\nx', None),
        ('u', 'h', 0),
        ('u', 'h', 65536),
        ('u', 'h', -1),
        ('u', 'h', True),
        ('u', 'h', '22x'),
        ('u', 'h', 22.0),
        ('u', 'h', '\u0663'),  # ARABIC-INDIC DIGIT THREE
    ],
)
def test_validate_ssh_target_refuses(user, host, port):
    with pytest.raises(ssh.InvalidSshTarget) as caught:
        ssh.validate_ssh_target(user, host, port)
    assert isinstance(caught.value, BarmanError)
    assert isinstance(caught.value, ValueError)


def test_ssh_target_port_defaults_to_none():
    assert ssh.SshTarget('u', 'h').port is None


# --------------------------------------------------------------------------- options


def test_ssh_options_defaults():
    assert ssh.ssh_options() == [
        '-o',
        'BatchMode=yes',
        '-o',
        'StrictHostKeyChecking=yes',
        '-o',
        ssh.BULK_CIPHERS,
        '-o',
        'ConnectTimeout=10',
        '-o',
        'ServerAliveInterval=15',
    ]


def test_ssh_options_everything():
    assert ssh.ssh_options(
        known_hosts_file='/etc/barman/known_hosts',
        identity_file='~/.ssh/id_ed25519',
        port=2222,
        connect_timeout=5,
        server_alive_interval=None,
        control_path='~/.ssh/barman-%C',
    ) == [
        '-o',
        'BatchMode=yes',
        '-o',
        'StrictHostKeyChecking=yes',
        '-o',
        ssh.BULK_CIPHERS,
        '-o',
        'UserKnownHostsFile=/etc/barman/known_hosts',
        '-o',
        'IdentityFile=~/.ssh/id_ed25519',
        '-o',
        'IdentitiesOnly=yes',
        '-o',
        'ConnectTimeout=5',
        '-o',
        'ControlMaster=auto',
        '-o',
        'ControlPersist=60',
        '-o',
        'ControlPath=~/.ssh/barman-%C',
        '-p',
        '2222',
    ]


@pytest.mark.parametrize(
    'kwargs',
    [
        dict(known_hosts_file='/dev/null'),
        dict(known_hosts_file='relative/known_hosts'),
        dict(known_hosts_file='/tmp/a b'),
        dict(known_hosts_file='/tmp/known_hosts -o StrictHostKeyChecking=no'),
        dict(known_hosts_file='/tmp/"x"'),
        dict(known_hosts_file='/tmp/%h'),
        dict(known_hosts_file='/tmp/x\n'),
        dict(known_hosts_file=''),
        dict(identity_file='/tmp/id key'),
        dict(identity_file='-i'),
        dict(control_path='/tmp/c m'),
        dict(port=0),
        dict(connect_timeout=0),
        dict(connect_timeout=True),
        dict(server_alive_interval='15'),
    ],
)
def test_ssh_options_refuses(kwargs):
    with pytest.raises((ssh.InvalidSshArgument, ssh.InvalidSshTarget)):
        ssh.ssh_options(**kwargs)


@pytest.mark.parametrize(
    'kwargs',
    [
        dict(),
        dict(known_hosts_file='/k', identity_file='/i', port=2200, control_path='/c/%C'),
        dict(connect_timeout=None, server_alive_interval=None),
    ],
)
def test_no_host_key_disabling_option_can_appear(kwargs):
    options = ssh.ssh_options(**kwargs)
    joined = ' '.join(options)
    assert not UNSAFE_OPTION.search(joined)
    assert options[:4] == ['-o', 'BatchMode=yes', '-o', 'StrictHostKeyChecking=yes']
    argv = ssh.ssh_argv(ssh.SshTarget('u', 'h', kwargs.get('port')), ['true'], **kwargs)
    assert not UNSAFE_OPTION.search(' '.join(argv))
    assert not UNSAFE_OPTION.search(ssh.rsync_rsh(**kwargs))


def test_ssh_option_values_cannot_smuggle_options():
    # Every "-o" is followed by exactly one KEY=VALUE without whitespace.
    options = ssh.ssh_options(known_hosts_file='/k', identity_file='/i', control_path='/c')
    pairs = [options[i : i + 2] for i in range(0, len(options), 2)]
    for flag, value in pairs:
        assert flag == '-o'
        assert re.match(r'\A[A-Za-z]+=\S+\Z', value)


# --------------------------------------------------------------------------- ssh_argv


def test_ssh_argv_exact():
    assert ssh.ssh_argv(TARGET, ['pg_controldata', '/var/lib/postgresql/15/main']) == [
        'ssh',
        '-o',
        'BatchMode=yes',
        '-o',
        'StrictHostKeyChecking=yes',
        '-o',
        ssh.BULK_CIPHERS,
        '-o',
        'ConnectTimeout=10',
        '-o',
        'ServerAliveInterval=15',
        'barman@db1.example.com',
        '--',
        'pg_controldata /var/lib/postgresql/15/main',
    ]


def test_ssh_argv_with_port_and_known_hosts():
    target = ssh.validate_ssh_target('postgres', '2001:db8::7', 2222)
    assert ssh.ssh_argv(
        target,
        ['ls', '-l', 'a b'],
        known_hosts_file='/etc/k',
        connect_timeout=None,
        server_alive_interval=None,
    ) == [
        'ssh',
        '-o',
        'BatchMode=yes',
        '-o',
        'StrictHostKeyChecking=yes',
        '-o',
        ssh.BULK_CIPHERS,
        '-o',
        'UserKnownHostsFile=/etc/k',
        '-p',
        '2222',
        'postgres@2001:db8::7',
        '--',
        "ls -l 'a b'",
    ]


def test_ssh_argv_remote_command_round_trips_through_shlex():
    argv = ssh.ssh_argv(TARGET, NASTY_ARGS)
    assert argv[-2] == '--'
    assert shlex.split(argv[-1]) == NASTY_ARGS
    # The remote command is one argv element: ssh never sees the nasty words as its options.
    assert argv.count('-o') == 5


def test_remote_command_string_gives_the_same_argv_to_a_real_shell():
    command = ssh.shell_join(['printf', '%s\\0'] + NASTY_ARGS)
    output = subprocess.run(['sh', '-c', command], stdout=subprocess.PIPE, check=True).stdout
    assert output.decode('utf-8').split('\0')[:-1] == NASTY_ARGS


@pytest.mark.parametrize('remote_argv', [[], (), 'ls -l', None, ['ls', 3], ['echo', 'a\nb'], ['x\x00']])
def test_ssh_argv_refuses_bad_remote_argv(remote_argv):
    with pytest.raises(ssh.InvalidSshArgument):
        ssh.ssh_argv(TARGET, remote_argv)


def test_ssh_argv_needs_a_validated_target():
    with pytest.raises(ssh.InvalidSshArgument):
        ssh.ssh_argv(('u', 'h', None), ['true'])


@pytest.mark.parametrize(
    'target',
    [
        ssh.SshTarget('-oProxyCommand=x', 'h'),
        ssh.SshTarget('u', '-oProxyCommand=x'),
        ssh.SshTarget('u', 'h', 0),
    ],
)
def test_hand_made_targets_are_validated_again(target):
    with pytest.raises(ssh.InvalidSshTarget):
        ssh.ssh_argv(target, ['true'])
    with pytest.raises(ssh.InvalidSshTarget):
        ssh.remote_path(target, '/x')


def test_ssh_argv_refuses_conflicting_ports():
    with pytest.raises(ssh.InvalidSshArgument):
        ssh.ssh_argv(ssh.SshTarget('u', 'h', 22), ['true'], port=2222)
    assert '-p' in ssh.ssh_argv(ssh.SshTarget('u', 'h', 2222), ['true'], port=2222)


# --------------------------------------------------------------------------- rsync_rsh / remote_path


def test_rsync_rsh_exact():
    assert ssh.rsync_rsh(known_hosts_file='/etc/barman/known_hosts', port=2222) == (
        "ssh -o BatchMode=yes -o StrictHostKeyChecking=yes -o '%s'"
        ' -o UserKnownHostsFile=/etc/barman/known_hosts -o ConnectTimeout=10'
        ' -o ServerAliveInterval=15 -p 2222' % ssh.BULK_CIPHERS
    )


def test_rsync_rsh_splits_back_into_the_ssh_argv():
    kwargs = dict(identity_file='/i', control_path='/run/barman/%C', port=2200)
    assert shlex.split(ssh.rsync_rsh(**kwargs)) == ['ssh'] + ssh.ssh_options(**kwargs)


@pytest.mark.parametrize(
    'target, path, expected',
    [
        (ssh.SshTarget('postgres', 'db1', None), '/var/lib/pg/', 'postgres@db1:/var/lib/pg/'),
        (ssh.SshTarget('postgres', 'db1', 2222), 'a b/c', 'postgres@db1:a b/c'),
        (ssh.SshTarget('postgres', '2001:db8::1', None), '/d/', 'postgres@[2001:db8::1]:/d/'),
        (ssh.SshTarget('postgres', '10.1.2.3', None), '/d', 'postgres@10.1.2.3:/d'),
    ],
)
def test_remote_path(target, path, expected):
    assert ssh.remote_path(target, path) == expected


@pytest.mark.parametrize('path', ['', 'a\nb', 'a\rb', 'a\x00b', None])
def test_remote_path_refuses(path):
    with pytest.raises(ssh.InvalidSshArgument):
        ssh.remote_path(TARGET, path)


# --------------------------------------------------------------------------- authorized_keys


def test_authorized_keys_line_exact():
    line = ssh.authorized_keys_line(ED25519_KEY, ['/usr/bin/rrsync', '-ro', '/var/lib/postgresql/15/main'])
    assert line == (
        'restrict,command="/usr/bin/rrsync -ro /var/lib/postgresql/15/main" ssh-ed25519 %s barman@backup' % ED25519_B64
    )


def test_authorized_keys_line_comment_replaces_and_is_optional():
    key = 'ecdsa-sha2-nistp256 %s' % ECDSA_B64
    assert ssh.authorized_keys_line(key, ['true']) == 'restrict,command="true" %s' % key
    assert ssh.authorized_keys_line(ED25519_KEY, ['true'], comment='barman on backup1') == (
        'restrict,command="true" ssh-ed25519 %s barman on backup1' % ED25519_B64
    )


def test_authorized_keys_forced_command_round_trips():
    line = ssh.authorized_keys_line(ED25519_KEY, NASTY_ARGS)
    match = re.match(r'\Arestrict,command="((?:[^"\\]|\\.)*)" ssh-ed25519 ', line)
    assert match, line
    assert '\n' not in line
    assert shlex.split(dequote_sshd_option(match.group(1))) == NASTY_ARGS


@pytest.mark.parametrize(
    'public_key',
    [
        'command="sh" ' + ED25519_KEY,
        'from="*" ' + ED25519_KEY,
        'restrict ' + ED25519_KEY,
        ED25519_KEY + '\nssh-ed25519 %s second' % ED25519_B64,
        ED25519_KEY + '\r\ncommand="sh" ssh-ed25519 %s' % ED25519_B64,
        'ssh-dss %s' % ED25519_B64,
        'ssh-ed25519',
        'ssh-ed25519 not*base64',
        'ssh-ed25519 AAAA',
        'ssh-rsa %s' % ED25519_B64,  # blob says ssh-ed25519
        'ssh-ed25519 %s' % ED25519_B64[:-1],  # broken padding
        '',
        None,
    ],
)
def test_authorized_keys_line_refuses_bad_keys(public_key):
    with pytest.raises(ssh.InvalidPublicKey):
        ssh.authorized_keys_line(public_key, ['true'])


@pytest.mark.parametrize(
    'forced_command_argv, comment',
    [
        (['true', 'x\n'], None),
        (['true\r'], None),
        ('rrsync -ro /', None),
        ([], None),
        (['true'], 'two\nlines'),
        (['true'], 'nul\x00'),
    ],
)
def test_authorized_keys_line_refuses_injection(forced_command_argv, comment):
    with pytest.raises(ssh.InvalidSshArgument):
        ssh.authorized_keys_line(ED25519_KEY, forced_command_argv, comment=comment)


def test_authorized_keys_line_quote_in_command_cannot_close_the_option():
    line = ssh.authorized_keys_line(ED25519_KEY, ['echo', '" ,command="sh'])
    # The only unescaped quotes are the two that delimit the option.
    assert len(re.findall(r'(?<!\\)"', line)) == 2


def test_authorized_keys_line_is_accepted_by_openssh(tmp_path):
    authorized_keys = tmp_path / 'authorized_keys'
    authorized_keys.write_text(ssh.authorized_keys_line(ED25519_KEY, NASTY_ARGS) + '\n')
    result = subprocess.run(
        ['ssh-keygen', '-l', '-f', str(authorized_keys)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert b'ED25519' in result.stdout


def test_parse_public_key():
    assert ssh.parse_public_key('  %s  ' % ED25519_KEY) == ('ssh-ed25519', ED25519_B64, 'barman@backup')


# --------------------------------------------------------------------------- known_hosts


@pytest.mark.parametrize(
    'host, port, expected_host_field',
    [
        ('db1.example.com', None, 'db1.example.com'),
        ('db1.example.com', 22, 'db1.example.com'),
        ('db1.example.com', 2222, '[db1.example.com]:2222'),
        ('10.0.0.5', '2222', '[10.0.0.5]:2222'),
        ('2001:db8::1', None, '2001:db8::1'),
        ('[2001:db8::1]', 2222, '[2001:db8::1]:2222'),
    ],
)
def test_known_hosts_line(host, port, expected_host_field):
    assert ssh.known_hosts_line(host, port, 'ssh-ed25519', ED25519_B64) == '%s ssh-ed25519 %s' % (
        expected_host_field,
        ED25519_B64,
    )


def test_known_hosts_line_ecdsa():
    assert ssh.known_hosts_line('h', 2200, 'ecdsa-sha2-nistp256', ECDSA_B64) == (
        '[h]:2200 ecdsa-sha2-nistp256 %s' % ECDSA_B64
    )


@pytest.mark.parametrize(
    'host, port, key_type, key_base64',
    [
        ('h', None, 'ssh-rsa', ED25519_B64),  # type does not match the blob
        ('h', None, 'ssh-dss', ED25519_B64),
        ('h', None, 'sk-ssh-ed25519@openssh.com', ED25519_B64),
        ('h', None, 'ssh-ed25519', ED25519_B64 + ' extra'),
        ('h', None, 'ssh-ed25519', ED25519_B64 + '\n* ssh-ed25519 ' + ED25519_B64),
        ('h', None, 'ssh-ed25519', ''),
        ('h', None, 'ssh-ed25519', None),
    ],
)
def test_known_hosts_line_refuses_bad_keys(host, port, key_type, key_base64):
    with pytest.raises(ssh.InvalidPublicKey):
        ssh.known_hosts_line(host, port, key_type, key_base64)


@pytest.mark.parametrize('host, port', [('*', None), ('a,b', None), ('h x', None), ('h', 0), ('|1|x', None)])
def test_known_hosts_line_refuses_bad_hosts(host, port):
    with pytest.raises(ssh.InvalidSshTarget):
        ssh.known_hosts_line(host, port, 'ssh-ed25519', ED25519_B64)


def test_known_hosts_line_is_found_by_ssh_keygen(tmp_path):
    known_hosts = tmp_path / 'known_hosts'
    known_hosts.write_text(ssh.known_hosts_line('db1.example.com', 2222, 'ssh-ed25519', ED25519_B64) + '\n')
    result = subprocess.run(
        ['ssh-keygen', '-F', '[db1.example.com]:2222', '-f', str(known_hosts)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert ED25519_B64.encode() in result.stdout


# --------------------------------------------------------------------------- one master per operation


def expanded_control_path(control_path, target=TARGET):
    """The socket path ssh itself makes of control_path for target (``ssh -G`` prints it, connects to nothing)."""
    argv = ssh.ssh_argv(target, ['true'], control_path=control_path)
    argv = [argv[0], '-G'] + argv[1 : argv.index('--')]
    out = subprocess.run(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, check=True
    ).stdout
    return [line.split(' ', 1)[1] for line in out.splitlines() if line.startswith('controlpath ')][0]


@pytest.fixture
def server_root():
    """A server root as short as /var/lib/barman/pg1 (pytest's tmp_path is too long for a socket under it)."""
    path = tempfile.mkdtemp(prefix='pg1-', dir='/tmp')
    yield path
    shutil.rmtree(path)


def test_a_backup_and_a_recovery_of_one_server_get_masters_of_their_own(server_root):
    with ssh.operation_control_path(server_root) as backup_path:
        with ssh.operation_control_path(server_root) as recovery_path:
            backup_socket = expanded_control_path(backup_path)
            recovery_socket = expanded_control_path(recovery_path)
            assert backup_socket != recovery_socket, 'one socket: the first to end would close the other'
            for path in (backup_path, recovery_path):
                directory = os.path.dirname(path)
                assert os.path.dirname(directory) == server_root and path.endswith('/%C')
                assert stat.S_IMODE(os.stat(directory).st_mode) == 0o700
            # Ending one (ssh -O exit) names its own socket only.
            exit_argv = ssh.control_exit_argv(TARGET, control_path=backup_path)
            assert 'ControlPath=%s' % backup_path in exit_argv and recovery_path not in ' '.join(exit_argv)
        assert not os.path.exists(os.path.dirname(recovery_path)), 'the ended operation leaves nothing'
        assert os.path.isdir(os.path.dirname(backup_path)), 'the other one keeps its directory'
    assert os.listdir(server_root) == []


def test_the_control_directory_goes_even_when_the_operation_fails(tmp_path):
    with pytest.raises(RuntimeError):
        with ssh.operation_control_path(str(tmp_path)) as control_path:
            open(os.path.join(os.path.dirname(control_path), 'left-by-ssh'), 'w').close()
            raise RuntimeError('rsync failed')
    assert os.listdir(str(tmp_path)) == []


@pytest.mark.parametrize('length', [10, 40, 200])
def test_the_socket_path_always_fits_a_unix_socket(tmp_path, length):
    # A long barman_home or server name: the directory moves to /tmp rather than ssh failing to bind.
    base = tmp_path / ('d' * length)
    base.mkdir()
    target = ssh.SshTarget('postgres', 'a-rather-long-host-name.db.example.com', 2222)
    with ssh.operation_control_path(str(base)) as control_path:
        socket = expanded_control_path(control_path, target)
        # ssh binds "<socket>.<16 random characters>" first, then links it to its name.
        assert len(socket) + len('.0123456789abcdef') < ssh.SOCKET_PATH_LIMIT, socket
        parent = os.path.dirname(os.path.dirname(control_path))
        fits = len(str(base)) + len('/.ssh-12345678/') + 40 + 17 < ssh.SOCKET_PATH_LIMIT
        assert parent == (str(base) if fits else ssh.FALLBACK_CONTROL_PARENT), (length, parent)


def test_a_base_dir_ssh_could_not_take_falls_back_to_tmp(tmp_path):
    odd = tmp_path / 'with space'
    odd.mkdir()
    assert ssh.control_dir_parent(str(odd)) == ssh.FALLBACK_CONTROL_PARENT
    assert ssh.control_dir_parent(str(tmp_path / 'missing')) == ssh.FALLBACK_CONTROL_PARENT
    assert ssh.control_dir_parent('/var/lib/barman/pg1') in ('/var/lib/barman/pg1', ssh.FALLBACK_CONTROL_PARENT)
