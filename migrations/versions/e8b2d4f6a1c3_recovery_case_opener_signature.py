"""recovery cases: the opening admin's own signature over the case's approval statement, which
the node holding the other share checks (with the second admin's) before it releases it

Revision ID: e8b2d4f6a1c3
Revises: d4f6b8c0e2a8
Create Date: 2026-12-03 12:30:00

"""
from alembic import op
import sqlalchemy as sa


revision = 'e8b2d4f6a1c3'
down_revision = 'd4f6b8c0e2a8'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('recovery_cases', schema=None) as batch_op:
        batch_op.add_column(sa.Column('opened_signature', sa.LargeBinary(length=512), nullable=True))


def downgrade():
    with op.batch_alter_table('recovery_cases', schema=None) as batch_op:
        batch_op.drop_column('opened_signature')
