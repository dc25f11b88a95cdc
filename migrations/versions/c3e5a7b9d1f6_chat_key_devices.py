"""chat keys per device: a device id on each key, one current key per device instead of one
per patient, the revocation of a removed device's key, and the device a sign-in runs on

Revision ID: c3e5a7b9d1f6
Revises: b2d4f6a8c0e4
Create Date: 2026-12-03 08:30:00

"""
from alembic import op
import sqlalchemy as sa


revision = 'c3e5a7b9d1f6'
down_revision = 'b2d4f6a8c0e4'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('chat_keys', schema=None) as batch_op:
        batch_op.add_column(sa.Column('device', sa.String(length=32), server_default='', nullable=False))
        batch_op.add_column(sa.Column('revoked_at', sa.DateTime(), nullable=True))
        batch_op.add_column(sa.Column('revoke_tx_hash', sa.String(length=64), nullable=True))
        batch_op.drop_constraint('uq_chat_keys_current_user_id', type_='unique')
        batch_op.create_unique_constraint('uq_chat_keys_current_user_id_device', ['current_user_id', 'device'])
    with op.batch_alter_table('auth_sessions', schema=None) as batch_op:
        batch_op.add_column(sa.Column('chat_device', sa.String(length=32), nullable=True))


def downgrade():
    with op.batch_alter_table('auth_sessions', schema=None) as batch_op:
        batch_op.drop_column('chat_device')
    # Back to one current key per patient: every device's key but the newest is superseded.
    op.execute(
        "UPDATE chat_keys SET current_user_id = NULL WHERE current_user_id IS NOT NULL AND id NOT IN "
        "(SELECT max(id) FROM chat_keys WHERE current_user_id IS NOT NULL GROUP BY current_user_id)"
    )
    with op.batch_alter_table('chat_keys', schema=None) as batch_op:
        batch_op.drop_constraint('uq_chat_keys_current_user_id_device', type_='unique')
        batch_op.create_unique_constraint('uq_chat_keys_current_user_id', ['current_user_id'])
        batch_op.drop_column('revoke_tx_hash')
        batch_op.drop_column('revoked_at')
        batch_op.drop_column('device')
