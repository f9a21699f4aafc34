# Copyright: barman.postgresql contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)


class ModuleDocFragment:
    # The libpq connection from the backup server to a PostgreSQL server (module_utils/postgres.py).
    DOCUMENTATION = r"""
options:
  pg_host:
    description:
      - Address of the PostgreSQL server, as the backup server reaches it.
    type: str
  pg_port:
    description:
      - Port of the PostgreSQL server.
    type: int
    default: 5432
  pg_user:
    description:
      - The backup role in PostgreSQL (not a superuser; see the wal_archiving role for its privileges).
    type: str
    default: barman
  pg_password:
    description:
      - Its password. Leave it unset to use C(~/.pgpass) of the user running the module, as the
        wal_archiving role sets it up.
    type: str
  pg_database:
    description:
      - Database to connect to.
    type: str
    default: postgres
  pg_connect_timeout:
    description:
      - Seconds to wait for the connection.
    type: int
    default: 10
requirements:
  - psycopg2 on the backup server
"""
