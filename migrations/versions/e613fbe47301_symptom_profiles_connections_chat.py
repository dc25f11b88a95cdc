"""symptom profiles, pseudonyms, blocks, connections, chat messages and keys, chat sockets, rate events

Hand-checked on SQLite and PostgreSQL: plain tables, named constraints, no dialect types.

Revision ID: e613fbe47301
Revises: 76a6e3349438
Create Date: 2026-11-24 01:38:55.131357

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = 'e613fbe47301'
down_revision = '76a6e3349438'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table('blocks',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('blocker_id', sa.Integer(), nullable=False),
    sa.Column('blocked_id', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['blocked_id'], ['users.id'], name=op.f('fk_blocks_blocked_id_users'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['blocker_id'], ['users.id'], name=op.f('fk_blocks_blocker_id_users'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_blocks')),
    sa.UniqueConstraint('blocker_id', 'blocked_id', name='uq_blocks_pair')
    )
    with op.batch_alter_table('blocks', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_blocks_blocked_id'), ['blocked_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_blocks_blocker_id'), ['blocker_id'], unique=False)

    op.create_table('chat_keys',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('user_id', sa.Integer(), nullable=False),
    sa.Column('current_user_id', sa.Integer(), nullable=True),
    sa.Column('key', sa.String(length=100), nullable=False),
    sa.Column('fingerprint', sa.String(length=64), nullable=False),
    sa.Column('salt', sa.String(length=32), nullable=False),
    sa.Column('subject', sa.String(length=64), nullable=False),
    sa.Column('tx_hash', sa.String(length=64), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('superseded_at', sa.DateTime(), nullable=True),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_chat_keys_user_id_users'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_chat_keys')),
    sa.UniqueConstraint('current_user_id', name=op.f('uq_chat_keys_current_user_id'))
    )
    with op.batch_alter_table('chat_keys', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_chat_keys_user_id'), ['user_id'], unique=False)

    op.create_table('connections',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('requester_id', sa.Integer(), nullable=False),
    sa.Column('addressee_id', sa.Integer(), nullable=False),
    sa.Column('low_user_id', sa.Integer(), nullable=False),
    sa.Column('high_user_id', sa.Integer(), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('decided_at', sa.DateTime(), nullable=True),
    sa.ForeignKeyConstraint(['addressee_id'], ['users.id'], name=op.f('fk_connections_addressee_id_users'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['requester_id'], ['users.id'], name=op.f('fk_connections_requester_id_users'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_connections')),
    sa.UniqueConstraint('low_user_id', 'high_user_id', name='uq_connections_pair')
    )
    with op.batch_alter_table('connections', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_connections_addressee_id'), ['addressee_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_connections_requester_id'), ['requester_id'], unique=False)

    op.create_table('pseudonyms',
    sa.Column('user_id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_pseudonyms_user_id_users'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('user_id', name=op.f('pk_pseudonyms')),
    sa.UniqueConstraint('name', name=op.f('uq_pseudonyms_name'))
    )
    op.create_table('symptom_profiles',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('user_id', sa.Integer(), nullable=False),
    sa.Column('sealed', sa.LargeBinary(), nullable=False),
    sa.Column('tokens', sa.Text(), nullable=False),
    sa.Column('discoverable', sa.Boolean(), nullable=False),
    sa.Column('updated_at', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_symptom_profiles_user_id_users'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_symptom_profiles')),
    sa.UniqueConstraint('user_id', name=op.f('uq_symptom_profiles_user_id'))
    )
    with op.batch_alter_table('symptom_profiles', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_symptom_profiles_updated_at'), ['updated_at'], unique=False)

    op.create_table('chat_messages',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('connection_id', sa.Integer(), nullable=False),
    sa.Column('sender_id', sa.Integer(), nullable=False),
    sa.Column('recipient_id', sa.Integer(), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('body', sa.Text(), nullable=False),
    sa.Column('cid', sa.String(length=64), nullable=True),
    sa.Column('sent_at', sa.DateTime(), nullable=False),
    sa.Column('delivered_at', sa.DateTime(), nullable=True),
    sa.ForeignKeyConstraint(['connection_id'], ['connections.id'], name=op.f('fk_chat_messages_connection_id_connections'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['recipient_id'], ['users.id'], name=op.f('fk_chat_messages_recipient_id_users'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['sender_id'], ['users.id'], name=op.f('fk_chat_messages_sender_id_users'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_chat_messages')),
    sa.UniqueConstraint('connection_id', 'sender_id', 'cid', name='uq_chat_messages_cid')
    )
    with op.batch_alter_table('chat_messages', schema=None) as batch_op:
        batch_op.create_index('ix_chat_messages_connection_order', ['connection_id', 'id'], unique=False)
        batch_op.create_index('ix_chat_messages_recipient_delivered', ['recipient_id', 'delivered_at', 'id'], unique=False)
        batch_op.create_index('ix_chat_messages_sender_sent', ['sender_id', 'sent_at'], unique=False)

    op.create_table('chat_sockets',
    sa.Column('sid', sa.String(length=64), nullable=False),
    sa.Column('session_id', sa.Integer(), nullable=False),
    sa.Column('connected_at', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['session_id'], ['auth_sessions.id'], name=op.f('fk_chat_sockets_session_id_auth_sessions'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('sid', name=op.f('pk_chat_sockets'))
    )
    with op.batch_alter_table('chat_sockets', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_chat_sockets_session_id'), ['session_id'], unique=False)

    op.create_table('rate_events',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('user_id', sa.Integer(), nullable=False),
    sa.Column('action', sa.String(length=32), nullable=False),
    sa.Column('at', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_rate_events_user_id_users'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_rate_events'))
    )
    with op.batch_alter_table('rate_events', schema=None) as batch_op:
        batch_op.create_index('ix_rate_events_user_action_at', ['user_id', 'action', 'at'], unique=False)


def downgrade():
    with op.batch_alter_table('chat_sockets', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_chat_sockets_session_id'))

    op.drop_table('chat_sockets')
    with op.batch_alter_table('rate_events', schema=None) as batch_op:
        batch_op.drop_index('ix_rate_events_user_action_at')

    op.drop_table('rate_events')
    with op.batch_alter_table('chat_messages', schema=None) as batch_op:
        batch_op.drop_index('ix_chat_messages_sender_sent')
        batch_op.drop_index('ix_chat_messages_recipient_delivered')
        batch_op.drop_index('ix_chat_messages_connection_order')

    op.drop_table('chat_messages')
    with op.batch_alter_table('symptom_profiles', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_symptom_profiles_updated_at'))

    op.drop_table('symptom_profiles')
    op.drop_table('pseudonyms')
    with op.batch_alter_table('connections', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_connections_requester_id'))
        batch_op.drop_index(batch_op.f('ix_connections_addressee_id'))

    op.drop_table('connections')
    with op.batch_alter_table('chat_keys', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_chat_keys_user_id'))

    op.drop_table('chat_keys')
    with op.batch_alter_table('blocks', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_blocks_blocker_id'))
        batch_op.drop_index(batch_op.f('ix_blocks_blocked_id'))

    op.drop_table('blocks')
