"""two-factor sign-in: TOTP secrets sealed under the user key, recovery code hashes

Hand-checked on SQLite and PostgreSQL (batch mode for SQLite's ALTER limits).

Revision ID: e9a5c3f7b1d6
Revises: d7f3b9c1e5a4
Create Date: 2026-12-02 16:00:00

"""
from alembic import op
import sqlalchemy as sa


revision = 'e9a5c3f7b1d6'
down_revision = 'd7f3b9c1e5a4'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('users', schema=None) as batch_op:
        batch_op.add_column(sa.Column('totp_sealed', sa.LargeBinary(length=128), nullable=True))
        batch_op.add_column(sa.Column('totp_pending', sa.LargeBinary(length=128), nullable=True))
        batch_op.add_column(sa.Column('totp_last_step', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('totp_recovery', sa.Text(), nullable=True))


def downgrade():
    with op.batch_alter_table('users', schema=None) as batch_op:
        batch_op.drop_column('totp_recovery')
        batch_op.drop_column('totp_last_step')
        batch_op.drop_column('totp_pending')
        batch_op.drop_column('totp_sealed')
