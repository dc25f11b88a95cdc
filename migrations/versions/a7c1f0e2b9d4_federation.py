"""federation: accounts of other hospitals, member nodes, requests on the ledger, blobs fetched on demand

Hand-checked on SQLite and PostgreSQL (batch mode for SQLite's ALTER limits).

Revision ID: a7c1f0e2b9d4
Revises: e613fbe47301
Create Date: 2026-12-02 02:10:00

"""
from alembic import op
import sqlalchemy as sa


revision = 'a7c1f0e2b9d4'
down_revision = 'e613fbe47301'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table('member_nodes',
    sa.Column('node_id', sa.String(length=64), nullable=False),
    sa.Column('hospital', sa.String(length=120), nullable=False),
    sa.Column('box_key', sa.LargeBinary(length=32), nullable=False),
    sa.Column('tx_hash', sa.String(length=64), nullable=False),
    sa.PrimaryKeyConstraint('node_id', name=op.f('pk_member_nodes'))
    )
    with op.batch_alter_table('users', schema=None) as batch_op:
        batch_op.add_column(sa.Column('home_node', sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column('resolved_at', sa.DateTime(), nullable=True))
        batch_op.create_index(batch_op.f('ix_users_home_node'), ['home_node'], unique=False)
        batch_op.alter_column('username', existing_type=sa.String(length=40), nullable=True)
        batch_op.alter_column('kdf_salt', existing_type=sa.LargeBinary(length=32), nullable=True)
        batch_op.alter_column('kdf_params', existing_type=sa.String(length=64), nullable=True)
        batch_op.alter_column('wrapped_user_key', existing_type=sa.LargeBinary(length=128), nullable=True)
        batch_op.alter_column('sealed_private_keys', existing_type=sa.LargeBinary(length=4096), nullable=True)
    with op.batch_alter_table('attachments', schema=None) as batch_op:
        batch_op.alter_column('ciphertext', existing_type=sa.LargeBinary(), nullable=True)
    with op.batch_alter_table('grants', schema=None) as batch_op:
        batch_op.alter_column('scope', existing_type=sa.String(length=2000), nullable=True)
    with op.batch_alter_table('access_requests', schema=None) as batch_op:
        batch_op.add_column(sa.Column('decision_tx_hash', sa.String(length=64), nullable=True))
        batch_op.drop_column('scope')
        batch_op.drop_column('days')


def downgrade():
    with op.batch_alter_table('access_requests', schema=None) as batch_op:
        batch_op.add_column(sa.Column('days', sa.Integer(), nullable=False, server_default='30'))
        batch_op.add_column(sa.Column('scope', sa.String(length=2000), nullable=False, server_default='{"type":"all"}'))
        batch_op.drop_column('decision_tx_hash')
    with op.batch_alter_table('grants', schema=None) as batch_op:
        batch_op.alter_column('scope', existing_type=sa.String(length=2000), nullable=False)
    with op.batch_alter_table('attachments', schema=None) as batch_op:
        batch_op.alter_column('ciphertext', existing_type=sa.LargeBinary(), nullable=False)
    with op.batch_alter_table('users', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_users_home_node'))
        batch_op.drop_column('resolved_at')
        batch_op.drop_column('home_node')
    op.drop_table('member_nodes')
