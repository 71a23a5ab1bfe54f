// edgegate wire codec: bincode 2 `config::standard()` as documented in src/protocol/mod.rs.
//
// Frames are plain objects: { type: 'Publish', id: 1, channel: 'chat:x', mode: 'Reliable',
// key: null, data: Uint8Array }. Field names are the Rust ones (snake_case). Options are
// `null` when absent, byte fields are Uint8Array, u64 values decode to Number when they are
// safe integers and to BigInt otherwise (encoding accepts either).

const MODES = ['Reliable', 'Datagram', 'Latest'];

const POSITION = { struct: [['epoch', 'u64'], ['offset', 'u64']] };
const LIMITS = {
  struct: [
    ['max_frame', 'u32'], ['max_datagram_payload', 'u32'], ['max_subscriptions', 'u32'],
    ['publish_rate', 'u32'], ['publish_burst', 'u32'],
  ],
};
const MEMBER = { struct: [['session_id', 'str'], ['user', 'str'], ['info', 'bytes']] };
const SNAPSHOT_ENTRY = {
  struct: [['key', { opt: 'str' }], ['offset', 'u64'], ['time_ms', 'u64'], ['data', 'bytes']],
};
const MESSAGE_FIELDS = [
  ['channel', 'str'], ['mode', 'mode'], ['epoch', 'u64'], ['offset', 'u64'], ['time_ms', 'u64'],
  ['key', { opt: 'str' }], ['publisher', { opt: 'str' }], ['data', 'bytes'],
];
const MESSAGE = { struct: MESSAGE_FIELDS };

/** Client → server variants, in declaration order (the index is the wire tag). */
export const CLIENT = [
  ['Hello', [['protocol_version', 'u16'], ['token', 'str'], ['client_name', 'str'],
    ['resume', { opt: 'str' }], ['single_stream', 'bool']]],
  ['Subscribe', [['id', 'u32'], ['channel', 'str'], ['recover', { opt: POSITION }],
    ['presence', { opt: 'bytes' }], ['presence_events', 'bool']]],
  ['Unsubscribe', [['id', 'u32'], ['channel', 'str']]],
  ['Publish', [['id', 'u32'], ['channel', 'str'], ['mode', 'mode'], ['key', { opt: 'str' }],
    ['data', 'bytes']]],
  ['Presence', [['id', 'u32'], ['channel', 'str']]],
  ['History', [['id', 'u32'], ['channel', 'str'], ['since', { opt: POSITION }], ['limit', 'u32']]],
  ['Ping', [['nonce', 'u64']]],
  ['Pong', [['nonce', 'u64']]],
  ['Refresh', [['id', 'u32'], ['token', 'str']]],
];

/** Server → client variants, in declaration order. `Message` is a newtype of MESSAGE. */
export const SERVER = [
  ['Welcome', [['session_id', 'str'], ['node_id', 'str'], ['region', 'str'], ['limits', LIMITS],
    ['heartbeat_ms', 'u32']]],
  ['Ok', [['id', 'u32']]],
  ['Subscribed', [['id', 'u32'], ['channel', 'str'], ['position', POSITION], ['recovered', 'bool']]],
  ['Published', [['id', 'u32'], ['position', POSITION]]],
  ['Message', MESSAGE_FIELDS],
  ['Snapshot', [['channel', 'str'], ['position', POSITION], ['entries', { vec: SNAPSHOT_ENTRY }]]],
  ['PresenceList', [['id', 'u32'], ['channel', 'str'], ['members', { vec: MEMBER }]]],
  ['Join', [['channel', 'str'], ['member', MEMBER]]],
  ['Leave', [['channel', 'str'], ['member', MEMBER]]],
  ['HistoryPage', [['id', 'u32'], ['channel', 'str'], ['position', POSITION], ['complete', 'bool'],
    ['messages', { vec: MESSAGE }]]],
  ['Dropped', [['channel', 'str'], ['count', 'u64']]],
  ['Resync', [['channel', 'str'], ['position', POSITION]]],
  ['Unsubscribed', [['channel', 'str'], ['code', 'u16'], ['reason', 'str']]],
  ['Error', [['id', 'u32'], ['code', 'u16'], ['reason', 'str'], ['fatal', 'bool']]],
  ['Ping', [['nonce', 'u64']]],
  ['Pong', [['nonce', 'u64']]],
  ['GoingAway', [['reason', 'str'], ['reconnect_to', { opt: 'str' }], ['after_ms', 'u32']]],
  ['TokenExpiring', [['grace_ms', 'u32']]],
];

const MAX = { u16: 0xffffn, u32: 0xffffffffn, u64: 0xffffffffffffffffn };
const utf8 = new TextEncoder();
const fromUtf8 = new TextDecoder('utf-8', { fatal: true });

/** A decoding failure: the frame is malformed. */
export class DecodeError extends Error {}

class Writer {
  constructor() { this.buf = new Uint8Array(64); this.len = 0; }
  reserve(n) {
    if (this.len + n <= this.buf.length) return;
    let size = this.buf.length * 2;
    while (size < this.len + n) size *= 2;
    const b = new Uint8Array(size);
    b.set(this.buf.subarray(0, this.len));
    this.buf = b;
  }
  byte(b) { this.reserve(1); this.buf[this.len++] = b; }
  raw(bytes) { this.reserve(bytes.length); this.buf.set(bytes, this.len); this.len += bytes.length; }
  le(v, n) { // v: BigInt
    this.reserve(n);
    for (let i = 0; i < n; i++) { this.buf[this.len++] = Number(v & 0xffn); v >>= 8n; }
  }
  varint(value, type) {
    const v = BigInt(value);
    if (v < 0n || v > MAX[type]) throw new RangeError(`${value} does not fit ${type}`);
    if (v < 251n) this.byte(Number(v));
    else if (v <= 0xffffn) { this.byte(251); this.le(v, 2); }
    else if (v <= 0xffffffffn) { this.byte(252); this.le(v, 4); }
    else { this.byte(253); this.le(v, 8); }
  }
  done() { return this.buf.slice(0, this.len); }
}

class Reader {
  constructor(bytes) { this.b = bytes; this.pos = 0; }
  need(n) {
    if (this.pos + n > this.b.length) throw new DecodeError('unexpected end of frame');
  }
  byte() { this.need(1); return this.b[this.pos++]; }
  le(n) {
    this.need(n);
    let v = 0n;
    for (let i = n - 1; i >= 0; i--) v = (v << 8n) | BigInt(this.b[this.pos + i]);
    this.pos += n;
    return v;
  }
  varint(type) {
    const tag = this.byte();
    let v;
    if (tag < 251) v = BigInt(tag);
    else if (tag === 251) v = this.le(2);
    else if (tag === 252) v = this.le(4);
    else if (tag === 253) v = this.le(8);
    else throw new DecodeError(`invalid varint tag ${tag}`);
    if (v > MAX[type]) throw new DecodeError(`${v} does not fit ${type}`);
    return v <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(v) : v;
  }
  bytes(n) {
    this.need(n);
    const out = this.b.slice(this.pos, this.pos + n);
    this.pos += n;
    return out;
  }
  length() {
    const n = this.varint('u64');
    if (typeof n !== 'number' || this.pos + n > this.b.length) {
      throw new DecodeError('length runs past the end of the frame');
    }
    return n;
  }
}

function write(w, type, v) {
  if (typeof type === 'string') {
    switch (type) {
      case 'u16': case 'u32': case 'u64': return w.varint(v, type);
      case 'bool': return w.byte(v ? 1 : 0);
      case 'str': { const b = utf8.encode(v); w.varint(b.length, 'u64'); return w.raw(b); }
      case 'bytes': {
        const b = typeof v === 'string' ? utf8.encode(v) : v;
        w.varint(b.length, 'u64'); return w.raw(b);
      }
      case 'mode': {
        const i = MODES.indexOf(v);
        if (i < 0) throw new RangeError(`unknown mode ${v}`);
        return w.varint(i, 'u32');
      }
      default: throw new Error(`unknown type ${type}`);
    }
  }
  if (type.opt !== undefined) {
    if (v === null || v === undefined) return w.byte(0);
    w.byte(1); return write(w, type.opt, v);
  }
  if (type.vec !== undefined) {
    w.varint(v.length, 'u64');
    for (const x of v) write(w, type.vec, x);
    return undefined;
  }
  for (const [name, t] of type.struct) write(w, t, v[name]);
  return undefined;
}

function read(r, type) {
  if (typeof type === 'string') {
    switch (type) {
      case 'u16': case 'u32': case 'u64': return r.varint(type);
      case 'bool': {
        const b = r.byte();
        if (b > 1) throw new DecodeError(`invalid bool ${b}`);
        return b === 1;
      }
      case 'str': {
        try { return fromUtf8.decode(r.bytes(r.length())); } catch (e) {
          if (e instanceof DecodeError) throw e;
          throw new DecodeError('invalid UTF-8');
        }
      }
      case 'bytes': return r.bytes(r.length());
      case 'mode': {
        const i = r.varint('u32');
        if (MODES[i] === undefined) throw new DecodeError(`unknown mode ${i}`);
        return MODES[i];
      }
      default: throw new Error(`unknown type ${type}`);
    }
  }
  if (type.opt !== undefined) {
    const tag = r.byte();
    if (tag === 0) return null;
    if (tag !== 1) throw new DecodeError(`invalid option tag ${tag}`);
    return read(r, type.opt);
  }
  if (type.vec !== undefined) {
    const n = r.length(); // each element takes at least one byte
    const out = [];
    for (let i = 0; i < n; i++) out.push(read(r, type.vec));
    return out;
  }
  const out = {};
  for (const [name, t] of type.struct) out[name] = read(r, t);
  return out;
}

function encodeWith(variants, frame) {
  const i = variants.findIndex(([name]) => name === frame.type);
  if (i < 0) throw new RangeError(`unknown frame type ${frame.type}`);
  const w = new Writer();
  w.varint(i, 'u32');
  write(w, { struct: variants[i][1] }, frame);
  return w.done();
}

function decodeWith(variants, bytes, maxFrame) {
  if (bytes.length === 0) throw new DecodeError('empty frame');
  if (maxFrame !== undefined && bytes.length > maxFrame) {
    throw new DecodeError(`frame of ${bytes.length} bytes over the limit of ${maxFrame}`);
  }
  const r = new Reader(bytes);
  const i = r.varint('u32');
  const v = variants[i];
  if (!v) throw new DecodeError(`unknown variant ${i}`);
  const frame = { type: v[0], ...read(r, { struct: v[1] }) };
  if (r.pos !== bytes.length) throw new DecodeError('trailing bytes after the frame');
  return frame;
}

export const encodeClient = (f) => encodeWith(CLIENT, f);
export const decodeClient = (b, max) => decodeWith(CLIENT, b, max);
export const encodeServer = (f) => encodeWith(SERVER, f);
export const decodeServer = (b, max) => decodeWith(SERVER, b, max);

/** Prefixes a frame with its 4-byte little-endian length (stream framing). */
export function withLength(frame) {
  const out = new Uint8Array(frame.length + 4);
  new DataView(out.buffer).setUint32(0, frame.length, true);
  out.set(frame, 4);
  return out;
}

/** Reassembles length-prefixed frames from stream chunks. */
export class StreamDecoder {
  constructor(maxFrame = 16 * 1024 * 1024) {
    this.max = maxFrame; this.buf = new Uint8Array(0);
  }
  /** Adds a chunk; returns the complete frames it finished. Throws on a bad length. */
  push(chunk) {
    const b = new Uint8Array(this.buf.length + chunk.length);
    b.set(this.buf); b.set(chunk, this.buf.length);
    const frames = [];
    let pos = 0;
    while (b.length - pos >= 4) {
      const len = new DataView(b.buffer, b.byteOffset + pos, 4).getUint32(0, true);
      if (len === 0 || len > this.max) throw new DecodeError(`bad frame length ${len}`);
      if (b.length - pos - 4 < len) break;
      frames.push(b.slice(pos + 4, pos + 4 + len));
      pos += 4 + len;
    }
    this.buf = b.slice(pos);
    return frames;
  }
}
