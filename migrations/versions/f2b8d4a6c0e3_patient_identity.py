"""patient identity: date of birth, hospital number (unique per hospital), checked in person

Hand-checked on SQLite and PostgreSQL (batch mode for SQLite's ALTER limits).

Revision ID: f2b8d4a6c0e3
Revises: e9a5c3f7b1d6
Create Date: 2026-12-02 19:00:00

"""
from alembic import op
import sqlalchemy as sa


revision = 'f2b8d4a6c0e3'
down_revision = 'e9a5c3f7b1d6'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('users', schema=None) as batch_op:
        batch_op.add_column(sa.Column('date_of_birth', sa.Date(), nullable=True))
        batch_op.add_column(sa.Column('mrn', sa.String(length=40), nullable=True))
        batch_op.add_column(sa.Column('verified_at', sa.DateTime(), nullable=True))
        batch_op.add_column(sa.Column('verified_by_id', sa.Integer(), nullable=True))
        batch_op.create_foreign_key(
            'fk_users_verified_by_id_users', 'users', ['verified_by_id'], ['id'], ondelete='SET NULL'
        )
        batch_op.create_unique_constraint('uq_users_home_node_mrn', ['home_node', 'mrn'])


def downgrade():
    with op.batch_alter_table('users', schema=None) as batch_op:
        batch_op.drop_constraint('uq_users_home_node_mrn', type_='unique')
        batch_op.drop_constraint('fk_users_verified_by_id_users', type_='foreignkey')
        batch_op.drop_column('verified_by_id')
        batch_op.drop_column('verified_at')
        batch_op.drop_column('mrn')
        batch_op.drop_column('date_of_birth')
