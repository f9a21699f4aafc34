# Copyright: barman.postgresql contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Argument lists and file lines for OpenSSH, built so that no input can change their meaning.

Everything here is a pure function returning plain values; nothing runs ssh.

Rules kept by every function:

* commands are argv lists; the only strings that go through a shell (the remote command that
  ssh hands to the remote login shell, the ``--rsh`` value that rsync splits, the forced
  command in authorized_keys) are built by :func:`shell_join`, one ``shlex.quote`` per argument;
* host keys are always verified: ``StrictHostKeyChecking=yes`` and never a ``/dev/null``
  known_hosts file;
* ssh never prompts: ``BatchMode=yes``.

One exception to "pure": :func:`operation_control_path` makes (and removes) the private directory
that holds one operation's shared connection.

The remote login shell must be a POSIX shell (sh, bash, dash, zsh, ksh): ``shlex.quote`` quotes
for that family, not for csh or fish.
"""

import base64
import binascii
import contextlib
import ipaddress
import os
import re
import shlex
import shutil
import struct
import tempfile
from collections import namedtuple
from typing import Any, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

from ansible_collections.barman.postgresql.plugins.module_utils.errors import BarmanError

SshTarget = namedtuple('SshTarget', ['user', 'host', 'port'])
SshTarget.__new__.__defaults__ = (None,)
SshTarget.__doc__ = 'Who to log in as, where: a validated user, host and optional port (None = 22).'

DEFAULT_SSH_PORT = 22

#: Key types accepted in authorized_keys (user keys). DSA and certificates are refused.
USER_KEY_TYPES = (
    'ssh-ed25519',
    'ssh-rsa',
    'ecdsa-sha2-nistp256',
    'ecdsa-sha2-nistp384',
    'ecdsa-sha2-nistp521',
    'sk-ssh-ed25519@openssh.com',
    'sk-ecdsa-sha2-nistp256@openssh.com',
)

#: Key types a host can present (what Ansible's ansible_ssh_host_key_*_public facts hold).
HOST_KEY_TYPES = (
    'ssh-ed25519',
    'ssh-rsa',
    'ecdsa-sha2-nistp256',
    'ecdsa-sha2-nistp384',
    'ecdsa-sha2-nistp521',
)

# POSIX portable user names (letters, digits, '.', '_', '-'), not starting with '-',
# optionally ending with '$' (Samba machine accounts).
_USER_NAME = re.compile(r'\A[A-Za-z0-9._][A-Za-z0-9._-]{0,255}\$?\Z')
_HOST_LABEL = re.compile(r'\A[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,62})\Z')
# Characters that ssh's option parser or its %-token / whitespace handling would reinterpret.
_UNSAFE_IN_OPTION_PATH = re.compile(r'[\s"\'\\\x00]')
_CONTROL_CHARS = re.compile(r'[\x00-\x1f\x7f]')


class InvalidSshTarget(BarmanError, ValueError):
    """The user, host or port cannot be used safely on an ssh command line."""

    code = 'INVALID_ARGUMENT'


class InvalidSshArgument(BarmanError, ValueError):
    """An ssh option, remote command, path or key line was refused."""

    code = 'INVALID_ARGUMENT'


class InvalidPublicKey(BarmanError, ValueError):
    """A public key is not one well-formed ``<type> <base64> [comment]`` line."""

    code = 'INVALID_ARGUMENT'


# --------------------------------------------------------------------------- quoting


def shell_join(argv: Iterable[str]) -> str:
    """Return ``argv`` as one POSIX shell string, each element quoted with ``shlex.quote``.

    This is the only place in the collection where a string meant for a shell is built.
    ``shlex.split(shell_join(argv)) == list(argv)`` always holds. Elements must be strings
    without NUL, carriage return or newline (newlines are legal in POSIX quoting but are not
    in an authorized_keys line and are mangled by some login shells).
    """
    if isinstance(argv, str):
        raise InvalidSshArgument('A command must be a list of arguments, not a string', argv=argv)
    argv = list(argv)
    if not argv:
        raise InvalidSshArgument('A command must have at least one argument')
    for argument in argv:
        if not isinstance(argument, str):
            raise InvalidSshArgument('Every command argument must be a string', argument=repr(argument), argv=argv)
        if '\x00' in argument or '\n' in argument or '\r' in argument:
            raise InvalidSshArgument(
                'A command argument contains a NUL, carriage return or newline',
                hint='Pass multi-line data on stdin instead',
                argument=argument,
            )
    return ' '.join(shlex.quote(argument) for argument in argv)


# --------------------------------------------------------------------------- targets


def _normalized_host(host):
    """Return ``host`` as a bare hostname or IP literal (IPv6 without brackets), or raise."""
    if not isinstance(host, str) or not host:
        raise InvalidSshTarget('The ssh host must be a non-empty string', host=host)
    candidate = host
    if candidate.startswith('[') and candidate.endswith(']'):
        candidate = candidate[1:-1]
    try:
        return str(ipaddress.ip_address(candidate))
    except ValueError:
        pass
    if candidate != host:
        raise InvalidSshTarget('Brackets are only allowed around an IPv6 address', host=host)
    if host.startswith('-'):
        raise InvalidSshTarget('The ssh host must not start with "-"', host=host)
    name = host[:-1] if host.endswith('.') else host
    if len(name) > 253 or not all(_HOST_LABEL.match(label) for label in name.split('.')):
        raise InvalidSshTarget(
            'The ssh host is neither a hostname nor an IP address',
            hint='Use letters, digits, "-", "_" and "." only (no spaces, "@", ":" or "/")',
            host=host,
        )
    return host


def _validated_port(port):
    if port is None:
        return None
    if isinstance(port, bool):
        raise InvalidSshTarget('The ssh port must be a number from 1 to 65535', port=port)
    if isinstance(port, str) and re.match(r'\A[0-9]{1,5}\Z', port):
        port = int(port)
    if not isinstance(port, int) or not 1 <= port <= 65535:
        raise InvalidSshTarget('The ssh port must be a number from 1 to 65535', port=port)
    return port


def validate_ssh_target(user: str, host: str, port: Union[int, str, None] = None) -> SshTarget:
    """Return an :class:`SshTarget` after checking each part, or raise :class:`InvalidSshTarget`.

    ``host`` may be a hostname, an IPv4 address or an IPv6 address (brackets optional; stored
    without them). ``port`` may be None (ssh's default, 22), an int or a string of digits.
    """
    if not isinstance(user, str) or not _USER_NAME.match(user):
        raise InvalidSshTarget(
            'The ssh user is not a valid user name',
            hint='Use letters, digits, ".", "_" and "-", not starting with "-"',
            user=user,
        )
    return SshTarget(user, _normalized_host(host), _validated_port(port))


def _host_for_uri(host):
    """IPv6 literals need brackets wherever a ':' follows the host."""
    return '[%s]' % host if ':' in host else host


def remote_path(target: SshTarget, path: str) -> str:
    """Return ``user@host:path`` for rsync (``user@[v6addr]:path`` for IPv6).

    The port cannot be written here: pass it to :func:`rsync_rsh` (``port=target.port``).
    Use rsync's ``--protect-args``/``-s`` (``rsync.rsync_argv`` does): the path is then sent
    through the rsync protocol and never split or expanded by the remote shell.
    """
    if not isinstance(target, SshTarget):
        raise InvalidSshArgument('remote_path needs an SshTarget from validate_ssh_target()')
    target = validate_ssh_target(*target)  # a hand-made SshTarget is checked too
    if not isinstance(path, str) or not path:
        raise InvalidSshArgument('The remote path must be a non-empty string', path=path)
    if _CONTROL_CHARS.search(path):
        raise InvalidSshArgument('The remote path contains a newline or control character', path=path)
    return '%s@%s:%s' % (target.user, _host_for_uri(target.host), path)


# --------------------------------------------------------------------------- options


def _option_path(name, value, allow_tokens=False):
    if not isinstance(value, str) or not value:
        raise InvalidSshArgument('%s must be a non-empty path' % name, value=value)
    if _UNSAFE_IN_OPTION_PATH.search(value) or _CONTROL_CHARS.search(value):
        raise InvalidSshArgument(
            '%s must not contain whitespace, quotes, backslashes or control characters' % name,
            hint='ssh splits these option values on whitespace; choose a simpler path',
            value=value,
        )
    if not (value.startswith('/') or value.startswith('~/')):
        raise InvalidSshArgument('%s must be an absolute path' % name, value=value)
    if not allow_tokens and '%' in value:
        raise InvalidSshArgument('%s must not contain "%%" (ssh expands %%-tokens in it)' % name, value=value)
    return value


def _positive_seconds(name, value):
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidSshArgument('%s must be a positive number of seconds or None' % name, value=value)
    return value


BULK_CIPHERS = 'Ciphers=^aes128-gcm@openssh.com,aes256-gcm@openssh.com'


def ssh_options(
    known_hosts_file: Optional[str] = None,
    identity_file: Optional[str] = None,
    port: Union[int, str, None] = None,
    connect_timeout: Optional[int] = 10,
    server_alive_interval: Optional[int] = 15,
    control_path: Optional[str] = None,
) -> List[str]:
    """Return the ssh options every connection uses, as a list of arguments.

    Always ``BatchMode=yes`` and ``StrictHostKeyChecking=yes``: an unknown or changed host key
    fails the connection. ``known_hosts_file`` adds ``UserKnownHostsFile`` (the system-wide
    file is still consulted too). ``identity_file`` adds ``IdentityFile`` and
    ``IdentitiesOnly=yes`` so no agent key is offered instead. ``port`` adds ``-p``.
    ``connect_timeout``/``server_alive_interval`` are seconds (None leaves ssh's default).

    ``control_path`` turns on connection sharing (``ControlMaster=auto``,
    ``ControlPersist=60``): later ssh/rsync calls with the same path reuse the first
    connection, which makes many small transfers cheap. It may contain ssh's %-tokens; ``%C``
    (a hash of the connection) keeps it short and unique, e.g. ``~/.ssh/barman-%C``. Its
    directory must not be writable by other users. Paths must be absolute and contain no
    whitespace or quotes.
    """
    # AES-GCM first (default list kept after it): with AES-NI it moves bulk data ~2.5x faster than chacha20.
    options = ['-o', 'BatchMode=yes', '-o', 'StrictHostKeyChecking=yes', '-o', BULK_CIPHERS]
    if known_hosts_file is not None:
        known_hosts_file = _option_path('known_hosts_file', known_hosts_file)
        if known_hosts_file == '/dev/null':
            raise InvalidSshArgument(
                'known_hosts_file must not be /dev/null: host keys are always verified',
                value=known_hosts_file,
            )
        options += ['-o', 'UserKnownHostsFile=%s' % known_hosts_file]
    if identity_file is not None:
        identity_file = _option_path('identity_file', identity_file)
        options += ['-o', 'IdentityFile=%s' % identity_file, '-o', 'IdentitiesOnly=yes']
    connect_timeout = _positive_seconds('connect_timeout', connect_timeout)
    if connect_timeout is not None:
        options += ['-o', 'ConnectTimeout=%d' % connect_timeout]
    server_alive_interval = _positive_seconds('server_alive_interval', server_alive_interval)
    if server_alive_interval is not None:
        options += ['-o', 'ServerAliveInterval=%d' % server_alive_interval]
    if control_path is not None:
        control_path = _option_path('control_path', control_path, allow_tokens=True)
        options += [
            '-o',
            'ControlMaster=auto',
            '-o',
            'ControlPersist=60',
            '-o',
            'ControlPath=%s' % control_path,
        ]
    port = _validated_port(port)
    if port is not None:
        options += ['-p', str(port)]
    return options


def ssh_argv(target: SshTarget, remote_argv: Sequence[str], **ssh_option_kwargs: Any) -> List[str]:
    """Return the argv that runs ``remote_argv`` on ``target`` over ssh.

    ``['ssh', <ssh_options()>, ['-p', port], 'user@host', '--', '<remote command>']``.

    ssh does not keep an argv: it sends the remote command as ONE string that the remote
    user's login shell parses. That string is built by :func:`shell_join` (``shlex.quote`` on
    each element), so the remote shell sees exactly ``remote_argv`` again. ``--`` stops ssh
    from reading a remote argument that starts with '-' as one of its own options.
    ``ssh_option_kwargs`` go to :func:`ssh_options`; the port comes from ``target``.
    """
    if not isinstance(target, SshTarget):
        raise InvalidSshArgument('ssh_argv needs an SshTarget from validate_ssh_target()')
    target = validate_ssh_target(*target)  # a hand-made SshTarget is checked too
    if ssh_option_kwargs.get('port') not in (None, target.port):
        raise InvalidSshArgument(
            'Two different ports were given', target_port=target.port, port=ssh_option_kwargs['port']
        )
    if isinstance(remote_argv, str) or not remote_argv:
        raise InvalidSshArgument('The remote command must be a non-empty list of arguments', argv=remote_argv)
    remote_command = shell_join(remote_argv)
    ssh_option_kwargs['port'] = target.port
    return ['ssh'] + ssh_options(**ssh_option_kwargs) + ['%s@%s' % (target.user, target.host), '--', remote_command]


def control_exit_argv(target: SshTarget, **ssh_option_kwargs: Any) -> List[str]:
    """The argv that ends the shared connection (ControlMaster) of ``target``, which would otherwise
    linger for ControlPersist seconds."""
    argv = ssh_argv(target, ['true'], **ssh_option_kwargs)
    return [argv[0], '-O', 'exit'] + argv[1 : argv.index('--')]


# A unix socket path holds 104 bytes on the BSDs and macOS (108 on Linux). ssh binds the master's
# socket as "<ControlPath>.<16 random characters>" first, then links it to its name; %C expands to
# 40 hexadecimal characters (a SHA-1 of the connection).
SOCKET_PATH_LIMIT = 104
_SSH_TEMPORARY_SUFFIX = len('.0123456789abcdef')
_EXPANDED_HASH_LENGTH = 40
_CONTROL_DIR_PREFIX = '.ssh-'
_CONTROL_DIR_NAME_LENGTH = len(_CONTROL_DIR_PREFIX) + 8  # tempfile.mkdtemp adds 8 random characters
FALLBACK_CONTROL_PARENT = '/tmp'


def control_dir_parent(base_dir: str) -> str:
    """Where one operation's control directory goes: ``base_dir``, or /tmp when a socket under it would
    not fit a unix socket path (or ssh could not take the path as an option value)."""
    expanded = (
        len(os.path.abspath(base_dir))
        + 1
        + _CONTROL_DIR_NAME_LENGTH
        + 1
        + _EXPANDED_HASH_LENGTH
        + _SSH_TEMPORARY_SUFFIX
    )
    if expanded < SOCKET_PATH_LIMIT and not _UNSAFE_IN_OPTION_PATH.search(base_dir) and os.path.isdir(base_dir):
        return os.path.abspath(base_dir)
    return FALLBACK_CONTROL_PARENT


@contextlib.contextmanager
def operation_control_path(base_dir: str) -> Iterator[str]:
    """A ControlPath for one operation (a backup, a recovery), yielded as ``<directory>/%C``.

    A ControlPath shared by two operations on the same host is one connection: the first to end
    sends ``ssh -O exit`` (:func:`control_exit_argv`) and cuts the other's rsync or ssh in the middle.
    Each operation gets a directory of its own, made by ``tempfile.mkdtemp`` (mode 0700, random name,
    never shared; ssh wants the socket's directory writable by no one else) under ``base_dir``
    (the server's root in the catalog), or under /tmp when that path would be too long for a
    socket. The directory and whatever is left in it are removed when the block ends, however it ends.
    """
    directory = tempfile.mkdtemp(prefix=_CONTROL_DIR_PREFIX, dir=control_dir_parent(base_dir))
    try:
        yield os.path.join(directory, '%C')
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def rsync_rsh(**ssh_option_kwargs: Any) -> str:
    """Return the value for rsync's ``--rsh``/``-e``: ``ssh`` plus :func:`ssh_options`, quoted.

    rsync splits this string itself (on spaces, honouring single and double quotes), so it is
    built with :func:`shell_join`. Pass ``port=target.port`` here: an rsync remote path has no
    place for a port.
    """
    return shell_join(['ssh'] + ssh_options(**ssh_option_kwargs))


# --------------------------------------------------------------------------- key lines


def _decoded_key_blob(key_type, key_base64, error):
    """Check that ``key_base64`` is strict base64 of an SSH key blob of type ``key_type``."""
    if not isinstance(key_base64, str) or not re.match(r'\A[A-Za-z0-9+/]+={0,2}\Z', key_base64):
        raise error('The key is not base64', key=key_base64)
    try:
        blob = base64.b64decode(key_base64, validate=True)
    except (binascii.Error, ValueError):
        raise error('The key is not valid base64', key=key_base64) from None
    # The blob starts with the key type as an SSH string (uint32 length, then the name).
    if len(blob) < 4:
        raise error('The key is too short to be an SSH key', key=key_base64)
    (length,) = struct.unpack('>I', blob[:4])
    if blob[4 : 4 + length] != key_type.encode('ascii'):
        raise error(
            'The key data does not match its type %s' % key_type,
            hint='Check that the type and the base64 part come from the same key',
            key_type=key_type,
        )
    return blob


def _validated_comment(comment):
    if comment is None:
        return None
    if not isinstance(comment, str) or _CONTROL_CHARS.search(comment.replace('\t', ' ')):
        raise InvalidSshArgument('The key comment must be one line of text', comment=comment)
    return comment.strip() or None


def parse_public_key(public_key: str) -> Tuple[str, str, Optional[str]]:
    """Split an OpenSSH public key line into ``(key_type, key_base64, comment_or_None)``.

    Refuses anything but ``<known type> <base64> [comment]`` on one line, in particular a line
    that starts with authorized_keys options (``command=...``, ``from=...``).
    """
    if not isinstance(public_key, str):
        raise InvalidPublicKey('The public key must be a string', public_key=public_key)
    text = public_key.strip()
    if '\n' in text or '\r' in text or '\x00' in text:
        raise InvalidPublicKey('The public key must be a single line', public_key=public_key)
    parts = text.split(None, 2)
    if len(parts) < 2 or parts[0] not in USER_KEY_TYPES:
        raise InvalidPublicKey(
            'The public key must start with a supported key type',
            hint='Expected one of %s followed by the base64 key; options are not allowed' % ', '.join(USER_KEY_TYPES),
            public_key=public_key,
        )
    key_type, key_base64 = parts[0], parts[1]
    _decoded_key_blob(key_type, key_base64, InvalidPublicKey)
    comment = _validated_comment(parts[2]) if len(parts) > 2 else None
    return key_type, key_base64, comment


def authorized_keys_line(public_key: str, forced_command_argv: Sequence[str], comment: Optional[str] = None) -> str:
    """Return ``restrict,command="<command>" <type> <base64> [comment]`` for authorized_keys.

    ``restrict`` (OpenSSH >= 7.2) turns off forwarding, pty and user rc; ``command`` forces
    ``forced_command_argv`` whatever the client asks (the client's request is then in
    ``$SSH_ORIGINAL_COMMAND``). The command is built with :func:`shell_join`, then every ``"``
    is written ``\\"`` as sshd's option parser expects (sshd turns ``\\"`` back into ``"`` and
    keeps every other backslash). ``comment`` replaces the key's own comment when given.
    """
    key_type, key_base64, key_comment = parse_public_key(public_key)
    command = shell_join(forced_command_argv).replace('"', '\\"')
    comment = _validated_comment(comment) if comment is not None else key_comment
    line = 'restrict,command="%s" %s %s' % (command, key_type, key_base64)
    if comment:
        line += ' ' + comment
    return line


def known_hosts_line(host: str, port: Union[int, str, None], key_type: str, key_base64: str) -> str:
    """Return one known_hosts line: ``host type key`` or ``[host]:port type key``.

    The bracketed form is used whenever ``port`` is set and is not 22, as ssh looks it up.
    Made for Ansible's gathered facts: ``ansible_ssh_host_key_ed25519_public`` holds only the
    base64 part, its type is ``ssh-ed25519`` (the ``*_keytype`` facts give the others).
    """
    host = _normalized_host(host)
    port = _validated_port(port)
    if key_type not in HOST_KEY_TYPES:
        raise InvalidPublicKey(
            'Unsupported host key type',
            hint='Expected one of %s' % ', '.join(HOST_KEY_TYPES),
            key_type=key_type,
        )
    _decoded_key_blob(key_type, key_base64, InvalidPublicKey)
    if port is None or port == DEFAULT_SSH_PORT:
        host_field = host
    else:
        host_field = '[%s]:%d' % (host, port)
    return '%s %s %s' % (host_field, key_type, key_base64)
