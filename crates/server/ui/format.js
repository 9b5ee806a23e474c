// Small helpers: building DOM nodes without HTML strings, and words for sizes and times.

/**
 * Makes an element: h('a', {href: '#/x', class: 'c'}, 'text', child…). Attributes whose value
 * is false, null or undefined are left out; `on…` functions become listeners; text is never
 * parsed as HTML.
 */
export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === false || value === null || value === undefined) continue;
    if (key.startsWith('on') && typeof value === 'function') el.addEventListener(key.slice(2), value);
    else if (key === 'class') el.className = value;
    else if (value === true) el.setAttribute(key, '');
    else el.setAttribute(key, String(value));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    if (Array.isArray(child)) append(el, child);
    else el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

/** An SVG element (for the storage chart). */
export function svg(tag, attrs, ...children) {
  const el = document.createElementNS('http://www.w3.org/2000/svg', tag);
  for (const [key, value] of Object.entries(attrs || {})) el.setAttribute(key, String(value));
  append(el, children);
  return el;
}

const UNITS = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];

/** 1536 → "1.5 KiB". */
export function bytes(n) {
  if (n === null || n === undefined) return '—';
  let value = Number(n);
  let unit = 0;
  while (value >= 1024 && unit < UNITS.length - 1) {
    value /= 1024;
    unit += 1;
  }
  const digits = unit === 0 || value >= 100 ? 0 : value >= 10 ? 1 : 2;
  return `${parseFloat(value.toFixed(digits))} ${UNITS[unit]}`;
}

/** Seconds → "3 min", "2 h", "4 days". */
export function span(seconds) {
  const s = Math.abs(Math.round(seconds));
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.round(s / 60)} min`;
  if (s < 86400 * 2) return `${Math.round(s / 3600)} h`;
  return `${Math.round(s / 86400)} days`;
}

/** A timestamp → "5 min ago" (or "in 5 min"), against the browser's clock. */
export function ago(ts) {
  if (!ts) return '—';
  const seconds = (Date.now() - Date.parse(ts)) / 1000;
  return seconds >= 0 ? `${span(seconds)} ago` : `in ${span(seconds)}`;
}

/** A timestamp → "2026-11-30 01:45" in the browser's time zone. */
export function when(ts) {
  if (!ts) return '—';
  const d = new Date(ts);
  const pad = (n) => String(n).padStart(2, '0');
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}`;
}

/** A <time> element showing `text`, with the exact time as its title. */
export function time(ts, text) {
  if (!ts) return '—';
  return h('time', { datetime: ts, title: when(ts) }, text === undefined ? ago(ts) : text);
}

/** A status badge: its words, and a class per status for its colour. */
export function status(s) {
  return h('span', { class: `status status-${s}` }, s);
}
