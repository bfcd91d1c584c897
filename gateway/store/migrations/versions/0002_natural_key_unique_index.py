"""natural key (source, record_key): a unique index instead of a table constraint

A first ingest into SQLite drops a dataset table's indexes while it writes and builds them at its
end (gateway/sync.py, bulk load); SQLite cannot drop a UNIQUE table constraint, only an index.
Same name, same columns, same uniqueness; SQLite copies each table once to remove the constraint.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24 07:00:00
"""

from __future__ import annotations

from alembic import op


revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None

TABLES = ("aid_granted", "assistance", "disability", "poverty", "residents", "students")


def upgrade() -> None:
    for table in TABLES:
        name = f"uq_{table}_source_record_key"
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.drop_constraint(name, type_="unique")
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.create_index(name, ["source", "record_key"], unique=True)


def downgrade() -> None:
    for table in TABLES:
        name = f"uq_{table}_source_record_key"
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.drop_index(name)
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.create_unique_constraint(name, ["source", "record_key"])
