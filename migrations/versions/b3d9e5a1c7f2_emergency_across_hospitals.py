"""emergency across hospitals: member nodes' emergency keys, one opt-in grant per hospital

Hand-checked on SQLite and PostgreSQL (batch mode for SQLite's ALTER limits).

Revision ID: b3d9e5a1c7f2
Revises: a7c1f0e2b9d4
Create Date: 2026-12-02 04:40:00

"""
from alembic import op
import sqlalchemy as sa


revision = 'b3d9e5a1c7f2'
down_revision = 'a7c1f0e2b9d4'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('member_nodes', schema=None) as batch_op:
        batch_op.add_column(sa.Column('emergency_key', sa.LargeBinary(length=33), nullable=True))
    with op.batch_alter_table('grants', schema=None) as batch_op:
        batch_op.add_column(sa.Column('hospital_node', sa.String(length=64), nullable=True))


def downgrade():
    with op.batch_alter_table('grants', schema=None) as batch_op:
        batch_op.drop_column('hospital_node')
    with op.batch_alter_table('member_nodes', schema=None) as batch_op:
        batch_op.drop_column('emergency_key')
