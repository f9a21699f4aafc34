# Copyright: barman.postgresql contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""identity.json: ``{"systemid": "...", "version": "16"}``, so that a server name never receives the
backups of another cluster."""

import json
from typing import Any, Dict, Optional, Union

from ansible_collections.barman.postgresql.plugins.module_utils.catalog import (
    CatalogError,
    InvalidName,
    atomic_write,
    read_text,
)
from ansible_collections.barman.postgresql.plugins.module_utils.errors import is_int, shown


class MalformedIdentity(CatalogError, ValueError):
    """An identity.json file that cannot be read back."""

    code = 'MALFORMED_IDENTITY'


class IdentityMismatch(CatalogError):
    """The PostgreSQL cluster is not the one whose backups this server directory holds."""

    code = 'IDENTITY_MISMATCH'


# identity.json


def _major_version(version):
    """Barman's identity version: the major version as text, '16' or '9.6'."""
    if version is None:
        return None
    if is_int(version) and version < 1000:
        return str(version)
    if is_int(version):
        return str(version // 10000) if version >= 100000 else '%d.%d' % (version // 10000, version // 100 % 100)
    parts = str(version).strip().split('.')
    return '.'.join(parts[:1] if parts[0].isdigit() and int(parts[0]) >= 10 else parts[:2])


def read_identity(path: str) -> Optional[Dict[str, Any]]:
    """The dict in identity.json at ``path``, or None if the file does not exist."""
    text = read_text(path)
    if text is None:
        return None
    try:
        identity = json.loads(text)
    except ValueError as exc:
        identity = exc
    if not isinstance(identity, dict) or not identity.get('systemid'):
        raise MalformedIdentity(
            '%s is not a JSON object with a "systemid"' % path,
            'Restore it from a copy, or remove it to record the system id of the cluster at the next backup',
            path=path,
        )
    return identity


def check_identity(path: str, systemid: Union[int, str], version: Union[int, str, None] = None) -> Dict[str, Any]:
    """Check that ``systemid`` is the one recorded in identity.json; record it if there is none.

    ``version`` is the PostgreSQL major version ('16', or 160002 from server_version_num).
    Returns the recorded identity. Raises IdentityMismatch for a different system id.
    """
    systemid = str(systemid)
    if not systemid.isdigit():
        raise InvalidName(
            'PostgreSQL system identifier %s is not a number' % shown(systemid),
            'Take it from pg_control_system() or IDENTIFY_SYSTEM',
            code='INVALID_ARGUMENT',
            systemid=systemid,
        )
    recorded = read_identity(path)
    if recorded is None:
        recorded = {'systemid': systemid, 'version': _major_version(version)}
        atomic_write(path, json.dumps(recorded, indent=4, sort_keys=True) + '\n', 0o600)
        return recorded
    if str(recorded['systemid']) != systemid:
        raise IdentityMismatch(
            'PostgreSQL system identifier %s does not match %s recorded in %s: this is another cluster'
            % (systemid, recorded['systemid'], path),
            'Back up a different cluster under a new server name. If this cluster replaced the old one '
            'on purpose, move the old server directory (with its backups) away first',
            path=path,
            systemid=systemid,
            recorded_systemid=recorded['systemid'],
        )
    return recorded
