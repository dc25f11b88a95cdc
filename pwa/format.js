'use strict';

const DATE_TIME_FORMAT = new Intl.DateTimeFormat(undefined, { dateStyle: 'medium', timeStyle: 'short' });
const BYTE_UNITS = ['bytes', 'KB', 'MB', 'GB'];
const BYTES_PER_UNIT = 1024;
const HASH_HEAD = 10;
const HASH_TAIL = 6;
const SEPARATOR = ' · ';

export function formatDateTime(iso) {
  const date = new Date(iso);
  return Number.isNaN(date.getTime()) ? String(iso ?? '') : DATE_TIME_FORMAT.format(date);
}

export function formatBytes(size) {
  let value = Number(size) || 0;
  let unit = 0;
  while (value >= BYTES_PER_UNIT && unit < BYTE_UNITS.length - 1) {
    value /= BYTES_PER_UNIT;
    unit += 1;
  }
  const digits = unit === 0 || value >= 10 ? 0 : 1;
  return `${value.toFixed(digits)} ${BYTE_UNITS[unit]}`;
}

export function shortenHash(hash) {
  const text = String(hash ?? '');
  return text.length > HASH_HEAD + HASH_TAIL + 1 ? `${text.slice(0, HASH_HEAD)}…${text.slice(-HASH_TAIL)}` : text;
}

export function categoryLabel(category) {
  const text = String(category ?? '');
  return text ? text.charAt(0).toUpperCase() + text.slice(1) : 'Uncategorised';
}

export function isOnLedger(record) {
  return record.block_height !== null && record.block_height !== undefined;
}

export function ledgerStatus(record) {
  return isOnLedger(record) ? `On ledger${SEPARATOR}block ${record.block_height}` : 'Pending';
}

export function authorLine(author) {
  if (!author) {
    return 'Unknown author';
  }
  return [author.display_name, author.hospital].filter(Boolean).join(SEPARATOR);
}
