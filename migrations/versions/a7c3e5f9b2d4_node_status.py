"""node status: the leading producer's heartbeat and what it last learnt from peers and the
archive, published where every server of the node reads it

Revision ID: a7c3e5f9b2d4
Revises: e8b2d4f6a1c3
Create Date: 2026-12-04 10:00:00

"""
from alembic import op
import sqlalchemy as sa


revision = 'a7c3e5f9b2d4'
down_revision = 'e8b2d4f6a1c3'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        'node_status',
        sa.Column('name', sa.String(length=64), nullable=False),
        sa.Column('value', sa.JSON(), nullable=False),
        sa.Column('updated_at', sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint('name'),
    )


def downgrade():
    op.drop_table('node_status')
