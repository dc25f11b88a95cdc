'use strict';

const DATE_TIME_FORMAT = new Intl.DateTimeFormat(undefined, { dateStyle: 'medium', timeStyle: 'short' });
const DATE_FORMAT = new Intl.DateTimeFormat(undefined, { dateStyle: 'medium' });
const TIME_FORMAT = new Intl.DateTimeFormat(undefined, { timeStyle: 'short' });
const RELATIVE_FORMAT = new Intl.RelativeTimeFormat(undefined, { numeric: 'always' });
const ISO_DATE = /^(\d{4})-(\d{2})-(\d{2})$/;
const MINUTE_MS = 60_000;
const HOUR_MS = 60 * MINUTE_MS;
const DAY_MS = 24 * HOUR_MS;
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

const FINGERPRINT_GROUP = 4; // hex digits per group, wherever a key fingerprint is shown

// A key fingerprint in groups of four hex digits, to read aloud and compare.
export function groupedFingerprint(fingerprint) {
  return String(fingerprint ?? '').match(new RegExp(`.{1,${FINGERPRINT_GROUP}}`, 'g'))?.join(' ') ?? '';
}

export function shortenHash(hash) {
  const text = String(hash ?? '');
  return text.length > HASH_HEAD + HASH_TAIL + 1 ? `${text.slice(0, HASH_HEAD)}…${text.slice(-HASH_TAIL)}` : text;
}

export function categoryLabel(category) {
  return category ? capitalise(category) : 'Uncategorised';
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

// "Dr. Eve Tester (St Mary's)": a person in a sentence.
export function personWithHospital(person) {
  if (!person) {
    return 'Unknown doctor';
  }
  return person.hospital ? `${person.display_name} (${person.hospital})` : person.display_name;
}

// A plain calendar date ("2025-03-01"), shown in the reader's own style.
export function formatDate(isoDate) {
  const found = ISO_DATE.exec(String(isoDate ?? ''));
  if (!found) {
    return String(isoDate ?? '');
  }
  const [, year, month, day] = found.map(Number);
  return DATE_FORMAT.format(new Date(year, month - 1, day));
}

// The time alone when it is today, else the date and time.
export function formatClock(iso) {
  const date = new Date(iso);
  if (Number.isNaN(date.getTime())) {
    return String(iso ?? '');
  }
  return date.toDateString() === new Date().toDateString() ? TIME_FORMAT.format(date) : DATE_TIME_FORMAT.format(date);
}

// "in 30 days", "in 5 hours", "3 days ago": how far a moment is from now.
export function formatFromNow(iso, now = Date.now()) {
  const diff = Date.parse(iso) - now;
  if (Number.isNaN(diff)) {
    return '';
  }
  const size = Math.abs(diff);
  if (size >= DAY_MS) {
    return RELATIVE_FORMAT.format(Math.round(diff / DAY_MS), 'day');
  }
  if (size >= HOUR_MS) {
    return RELATIVE_FORMAT.format(Math.round(diff / HOUR_MS), 'hour');
  }
  return RELATIVE_FORMAT.format(Math.round(diff / MINUTE_MS), 'minute');
}

// A grant's or request's scope in words (docs/access.md, "Scope").
export function scopeText(scope) {
  if (scope?.type === 'categories') {
    return `Only ${(scope.categories ?? []).map(categoryLabel).join(', ')}`;
  }
  if (scope?.type === 'dates') {
    return `Records dated ${formatDate(scope.from)} to ${formatDate(scope.to)}`;
  }
  return 'All your records';
}

export function daysText(days) {
  return Number(days) === 1 ? '1 day' : `${days} days`;
}

export function capitalise(text) {
  const value = String(text ?? '');
  return value.charAt(0).toUpperCase() + value.slice(1);
}
