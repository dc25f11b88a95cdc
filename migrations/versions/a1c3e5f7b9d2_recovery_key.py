"""patient recovery key: the user key wrapped under the recovery key, a pending slot, the notice after a reset;
access-log entries without a record (a reset of the patient's password, shown in their access log)

Hand-checked on SQLite and PostgreSQL (batch mode for SQLite's ALTER limits).

Revision ID: a1c3e5f7b9d2
Revises: f2b8d4a6c0e3
Create Date: 2026-12-03 08:00:00

"""
from alembic import op
import sqlalchemy as sa


revision = 'a1c3e5f7b9d2'
down_revision = 'f2b8d4a6c0e3'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('users', schema=None) as batch_op:
        batch_op.add_column(sa.Column('recovery_wrapped_user_key', sa.LargeBinary(length=128), nullable=True))
        batch_op.add_column(sa.Column('recovery_set_at', sa.DateTime(), nullable=True))
        batch_op.add_column(sa.Column('recovery_pending', sa.LargeBinary(length=128), nullable=True))
        batch_op.add_column(sa.Column('recovery_pending_check', sa.LargeBinary(length=32), nullable=True))
        batch_op.add_column(sa.Column('recovery_pending_positions', sa.String(length=8), nullable=True))
        batch_op.add_column(sa.Column('recovered_at', sa.DateTime(), nullable=True))
        batch_op.add_column(sa.Column('recovered_method', sa.String(length=32), nullable=True))
        batch_op.add_column(
            sa.Column('recovered_notice', sa.Boolean(), server_default=sa.false(), nullable=False)
        )
    with op.batch_alter_table('access_entries', schema=None) as batch_op:
        batch_op.alter_column('record_id', existing_type=sa.String(length=36), nullable=True)


def downgrade():
    op.execute("DELETE FROM access_entries WHERE record_id IS NULL")
    with op.batch_alter_table('access_entries', schema=None) as batch_op:
        batch_op.alter_column('record_id', existing_type=sa.String(length=36), nullable=False)
    with op.batch_alter_table('users', schema=None) as batch_op:
        batch_op.drop_column('recovered_notice')
        batch_op.drop_column('recovered_method')
        batch_op.drop_column('recovered_at')
        batch_op.drop_column('recovery_pending_positions')
        batch_op.drop_column('recovery_pending_check')
        batch_op.drop_column('recovery_pending')
        batch_op.drop_column('recovery_set_at')
        batch_op.drop_column('recovery_wrapped_user_key')
