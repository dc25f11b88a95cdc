"""chat items addressed per device: the sender's device and the recipient's device on each
stored item ("" for an item from or for every device, as before), and the client message id
unique per recipient device, since one message is sealed once for every device

Revision ID: d4f6b8c0e2a8
Revises: c3e5a7b9d1f6
Create Date: 2026-12-03 12:10:00

"""
from alembic import op
import sqlalchemy as sa


revision = 'd4f6b8c0e2a8'
down_revision = 'c3e5a7b9d1f6'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('chat_messages', schema=None) as batch_op:
        batch_op.add_column(sa.Column('sender_device', sa.String(length=32), server_default='', nullable=False))
        batch_op.add_column(sa.Column('recipient_device', sa.String(length=32), server_default='', nullable=False))
        batch_op.drop_constraint('uq_chat_messages_cid', type_='unique')
        batch_op.create_unique_constraint(
            'uq_chat_messages_cid', ['connection_id', 'sender_id', 'recipient_id', 'recipient_device', 'cid']
        )


def downgrade():
    # Back to one item per message: the copies sealed for further devices go.
    op.execute("DELETE FROM chat_messages WHERE recipient_device <> '' AND cid IS NOT NULL AND id NOT IN "
               "(SELECT min(id) FROM chat_messages WHERE cid IS NOT NULL GROUP BY connection_id, sender_id, cid)")
    with op.batch_alter_table('chat_messages', schema=None) as batch_op:
        batch_op.drop_constraint('uq_chat_messages_cid', type_='unique')
        batch_op.create_unique_constraint('uq_chat_messages_cid', ['connection_id', 'sender_id', 'cid'])
        batch_op.drop_column('recipient_device')
        batch_op.drop_column('sender_device')
