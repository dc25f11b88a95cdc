"""hospital-assisted recovery: escrow shares (the home share, the share held for another
hospital) and recovery cases

Revision ID: b2d4f6a8c0e4
Revises: a1c3e5f7b9d2
Create Date: 2026-12-03 08:20:00

"""
from alembic import op
import sqlalchemy as sa


revision = 'b2d4f6a8c0e4'
down_revision = 'a1c3e5f7b9d2'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        'escrows',
        sa.Column('user_id', sa.Integer(), nullable=False),
        sa.Column('enabled', sa.Boolean(), nullable=False),
        sa.Column('holder', sa.String(length=64), nullable=True),
        sa.Column('share', sa.LargeBinary(length=128), nullable=True),
        sa.Column('pending', sa.LargeBinary(length=256), nullable=True),
        sa.Column('updated_at', sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(['user_id'], ['users.id'], ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('user_id'),
    )
    op.create_table(
        'escrow_held_shares',
        sa.Column('account', sa.String(length=36), nullable=False),
        sa.Column('home_node', sa.String(length=64), nullable=False),
        sa.Column('share', sa.LargeBinary(length=256), nullable=False),
        sa.Column('received_at', sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint('account', 'home_node'),
    )
    op.create_table(
        'recovery_cases',
        sa.Column('id', sa.String(length=36), nullable=False),
        sa.Column('account', sa.String(length=36), nullable=False),
        sa.Column('home_node', sa.String(length=64), nullable=False),
        sa.Column('holder_node', sa.String(length=64), nullable=False),
        sa.Column('status', sa.String(length=16), nullable=False),
        sa.Column('identity_check', sa.String(length=200), nullable=False),
        sa.Column('opened_by_node', sa.String(length=64), nullable=False),
        sa.Column('opened_by_account', sa.String(length=36), nullable=False),
        sa.Column('opened_by_name', sa.String(length=120), nullable=False),
        sa.Column('opened_at', sa.DateTime(), nullable=False),
        sa.Column('approved_by_node', sa.String(length=64), nullable=True),
        sa.Column('approved_by_account', sa.String(length=36), nullable=True),
        sa.Column('approved_by_name', sa.String(length=120), nullable=True),
        sa.Column('approved_at', sa.DateTime(), nullable=True),
        sa.Column('peer_share', sa.LargeBinary(length=256), nullable=True),
        sa.Column('code_hash', sa.String(length=64), nullable=True),
        sa.Column('wrapped_key', sa.LargeBinary(length=128), nullable=True),
        sa.Column('code_expires_at', sa.DateTime(), nullable=True),
        sa.Column('issued_at', sa.DateTime(), nullable=True),
        sa.Column('completed_at', sa.DateTime(), nullable=True),
        sa.Column('tx_hash', sa.String(length=64), nullable=True),
        sa.PrimaryKeyConstraint('id'),
    )
    with op.batch_alter_table('recovery_cases', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_recovery_cases_account'), ['account'], unique=False)
        batch_op.create_index(batch_op.f('ix_recovery_cases_status'), ['status'], unique=False)


def downgrade():
    with op.batch_alter_table('recovery_cases', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_recovery_cases_status'))
        batch_op.drop_index(batch_op.f('ix_recovery_cases_account'))
    op.drop_table('recovery_cases')
    op.drop_table('escrow_held_shares')
    op.drop_table('escrows')
