"""login throttling: failed sign-ins per account name and client address, and per user for the owner

Hand-checked on SQLite and PostgreSQL (batch mode for SQLite's ALTER limits).

Revision ID: c5e1a7d3f9b2
Revises: b3d9e5a1c7f2
Create Date: 2026-12-02 15:50:00

"""
from alembic import op
import sqlalchemy as sa


revision = 'c5e1a7d3f9b2'
down_revision = 'b3d9e5a1c7f2'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        'login_throttles',
        sa.Column('key', sa.String(length=64), nullable=False),
        sa.Column('failures', sa.Integer(), nullable=False),
        sa.Column('last_failure_at', sa.DateTime(), nullable=False),
        sa.Column('blocked_until', sa.DateTime(), nullable=True),
        sa.PrimaryKeyConstraint('key', name=op.f('pk_login_throttles')),
    )
    with op.batch_alter_table('login_throttles', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_login_throttles_blocked_until'), ['blocked_until'], unique=False)
    with op.batch_alter_table('users', schema=None) as batch_op:
        batch_op.add_column(sa.Column('failed_logins', sa.Integer(), server_default='0', nullable=False))
        batch_op.add_column(sa.Column('last_failed_login_at', sa.DateTime(), nullable=True))


def downgrade():
    with op.batch_alter_table('users', schema=None) as batch_op:
        batch_op.drop_column('last_failed_login_at')
        batch_op.drop_column('failed_logins')
    with op.batch_alter_table('login_throttles', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_login_throttles_blocked_until'))
    op.drop_table('login_throttles')
