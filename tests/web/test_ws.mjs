// test_ws.mjs — a real `steer serve` driven by Node's `ws` (npm) with @msgpack/msgpack, the libraries
// of the browser client's world: hello and welcome, frames that decode as PNGs of the model's size
// with every field the protocol names, credit honoured exactly, stop/stopped, walk frames closer to
// each other than gallery frames, malformed messages answered with the right error on a connection
// that stays up, the wrong subprotocol refused, and SIGTERM closing every socket with 1001 and
// exiting 0. Prints TAP; exits non-zero on failure. No speed is asserted: waits are generous
// timeouts, or "nothing more arrives within QUIET ms".
import net from 'node:net';
import { inflateSync } from 'node:zlib';

import { decode, encode } from '@msgpack/msgpack';
import WebSocket from 'ws';

import { sleep, startServer, stopServer, Tap } from './harness.mjs';

const T = 30000; // anything that should come, comes within this
const QUIET = 700; // how long "nothing more arrives" is watched

// A connection with a queue of decoded messages and a wait for the next one.
function open(url, protocol = 'steer.v1') {
    return new Promise((resolve, reject) => {
        const ws = protocol === null ? new WebSocket(url) : new WebSocket(url, protocol);
        const c = { ws, queue: [], waiters: [], closeCode: null, policies: [] };
        ws.on('message', (data, isBinary) => {
            let m;
            try {
                m = isBinary ? decode(data) : { t: 'text from server', data: String(data) };
            } catch (e) {
                m = { t: 'undecodable', error: e.message };
            }
            if (m && m.t === 'policy') { // status (learning from this user), not a reply
                c.policies.push(m);
                return;
            }
            const w = c.waiters.shift();
            if (w) w(m);
            else c.queue.push(m);
        });
        c.closed = new Promise((r) => ws.on('close', (code) => { c.closeCode = code; r(code); }));
        ws.on('open', () => resolve(c));
        ws.on('unexpected-response', (req, res) => reject(new Error('HTTP ' + res.statusCode)));
        ws.on('error', reject);
    });
}

function next(c, ms = T) {
    if (c.queue.length) return Promise.resolve(c.queue.shift());
    return new Promise((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error('no message within ' + ms + ' ms')), ms);
        c.waiters.push((m) => { clearTimeout(timer); resolve(m); });
    });
}

// Everything that arrives within ms (usually the test expects nothing).
async function quiet(c, ms = QUIET) {
    await sleep(ms);
    return c.queue.splice(0);
}

// n frames in order; throws on any other message.
async function frames(c, n) {
    const out = [];
    for (let i = 0; i < n; i++) {
        const m = await next(c);
        if (m.t !== 'frame') throw new Error('expected a frame, got ' + JSON.stringify(m));
        out.push(m);
    }
    return out;
}

const send = (c, m) => c.ws.send(encode(m));

async function hello(url, user) {
    const c = await open(url);
    send(c, user === undefined ? { t: 'hello' } : { t: 'hello', user });
    c.welcome = await next(c);
    return c;
}

// A PNG decoded far enough to trust it: signature, IHDR, IDAT inflated and unfiltered (RFC 2083
// filters 0-4), IEND last. Returns {w, h, c, pixels} (8-bit, HWC) or throws saying what is wrong.
function pngDecode(buf) {
    const sig = [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a];
    if (buf.length < 8 || sig.some((b, i) => buf[i] !== b)) throw new Error('no PNG signature');
    const dv = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
    let off = 8, ihdr = null, last = '';
    const idat = [];
    while (off + 12 <= buf.length) {
        const len = dv.getUint32(off);
        const type = String.fromCharCode(...buf.subarray(off + 4, off + 8));
        if (off + 12 + len > buf.length) throw new Error(`chunk ${type} runs past the end`);
        const body = buf.subarray(off + 8, off + 8 + len);
        if (off === 8 && type !== 'IHDR') throw new Error('first chunk is ' + type);
        if (type === 'IHDR') ihdr = { w: dv.getUint32(off + 8), h: dv.getUint32(off + 12), depth: body[8], color: body[9], interlace: body[12] };
        if (type === 'IDAT') idat.push(body);
        last = type;
        off += 12 + len;
    }
    if (last !== 'IEND' || off !== buf.length) throw new Error('does not end with IEND');
    const channels = { 0: 1, 2: 3 }[ihdr.color];
    if (ihdr.depth !== 8 || !channels || ihdr.interlace !== 0)
        throw new Error(`unexpected IHDR ${JSON.stringify(ihdr)}`);
    const raw = inflateSync(Buffer.concat(idat));
    const stride = ihdr.w * channels;
    if (raw.length !== ihdr.h * (stride + 1)) throw new Error(`IDAT inflates to ${raw.length} bytes`);
    const px = new Uint8Array(ihdr.h * stride);
    for (let y = 0; y < ihdr.h; y++) {
        const filter = raw[y * (stride + 1)];
        for (let x = 0; x < stride; x++) {
            const v = raw[y * (stride + 1) + 1 + x];
            const a = x >= channels ? px[y * stride + x - channels] : 0;
            const b = y > 0 ? px[(y - 1) * stride + x] : 0;
            const cc = x >= channels && y > 0 ? px[(y - 1) * stride + x - channels] : 0;
            let p;
            if (filter === 0) p = 0;
            else if (filter === 1) p = a;
            else if (filter === 2) p = b;
            else if (filter === 3) p = (a + b) >> 1;
            else if (filter === 4) {
                const q = a + b - cc, pa = Math.abs(q - a), pb = Math.abs(q - b), pc = Math.abs(q - cc);
                p = pa <= pb && pa <= pc ? a : pb <= pc ? b : cc;
            } else throw new Error('filter type ' + filter);
            px[y * stride + x] = (v + p) & 255;
        }
    }
    return { w: ihdr.w, h: ihdr.h, c: channels, pixels: px };
}

function variance(px) {
    let s = 0, s2 = 0;
    for (const v of px) { s += v; s2 += v * v; }
    const m = s / px.length;
    return s2 / px.length - m * m;
}

function meanAbsDiff(a, b) {
    let d = 0;
    for (let i = 0; i < a.length; i++) d += Math.abs(a[i] - b[i]);
    return d / a.length;
}

// A WebSocket client on a bare TCP socket that behaves like a browser at the end: it answers the
// server's close frame with its own at once (RFC 6455, 5.5.1) and records every close frame it
// gets. A server must send exactly one; browsers fail the connection (1006) on a second.
function rawOpen(url) {
    const u = new URL(url);
    return new Promise((resolve, reject) => {
        const s = net.connect(Number(u.port), u.hostname);
        const c = { closes: [], upgraded: false };
        let buf = Buffer.alloc(0);
        const mask = Buffer.from([0x12, 0x34, 0x56, 0x78]);
        c.send = (op, payload) => {
            const p = Buffer.from(payload).map((b, i) => b ^ mask[i % 4]);
            s.write(Buffer.concat([Buffer.from([0x80 | op, 0x80 | p.length]), mask, p]));
        };
        c.ended = new Promise((r) => s.on('close', r));
        s.on('error', reject);
        s.on('connect', () => s.write(`GET /ws HTTP/1.1\r\nHost: ${u.host}\r\nUpgrade: websocket\r\n` +
            'Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n' +
            'Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: steer.v1\r\n\r\n'));
        s.on('data', (d) => {
            buf = Buffer.concat([buf, d]);
            if (!c.upgraded) {
                const i = buf.indexOf('\r\n\r\n');
                if (i < 0) return;
                if (!/^HTTP\/1.1 101/.test(buf.toString('latin1', 0, i))) return reject(new Error('no 101'));
                c.upgraded = true;
                buf = buf.subarray(i + 4);
                c.send(2, encode({ t: 'hello' }));
                resolve(c);
            }
            for (;;) {
                if (buf.length < 2) return;
                let len = buf[1] & 127, off = 2;
                if (len === 126) { if (buf.length < 4) return; len = buf.readUInt16BE(2); off = 4; }
                else if (len === 127) { if (buf.length < 10) return; len = Number(buf.readBigUInt64BE(2)); off = 10; }
                if (buf.length < off + len) return;
                const op = buf[0] & 15, p = buf.subarray(off, off + len);
                buf = buf.subarray(off + len);
                if (op === 9) c.send(10, p); // pong: the server's read confirmation needs it
                if (op === 8) {
                    c.closes.push(p.length >= 2 ? p.readUInt16BE(0) : null);
                    if (c.closes.length === 1) c.send(8, p.subarray(0, 2));
                }
            }
        });
    });
}

const isUint = (v) => Number.isSafeInteger(v) && v >= 0;

// ---- tests ----------------------------------------------------------------------------------

async function testWelcome(tap, srv) {
    const c = await hello(srv.wsUrl, 'node-ws');
    const w = c.welcome;
    tap.ok(w.t === 'welcome' && w.protocol === 'steer.v1' && w.server === 'steer' && w.user === 'node-ws',
        'hello is answered with welcome: protocol, server, user', w);
    tap.eq(c.ws.protocol, 'steer.v1', 'the handshake agreed on subprotocol steer.v1');
    tap.ok(isUint(w.session), 'welcome: session is an unsigned integer', w.session);
    const m = w.model || {};
    tap.ok(isUint(m.version) && typeof m.name === 'string' && m.width === 32 && m.height === 32 &&
        m.channels === 1 && isUint(m.z_dim) && m.z_dim > 0 && m.classes === 10,
    'welcome: the 32x32 gray conditional model, with version, name and z_dim', m);
    const l = w.limits || {};
    tap.ok(['max_message', 'max_streams', 'max_credit', 'queue_frames', 'history'].every((k) => isUint(l[k]) && l[k] > 0),
        'welcome: limits has max_message, max_streams, max_credit, queue_frames, history', l);
    c.ws.close();

    const anon = await hello(srv.wsUrl);
    tap.eq(anon.welcome.user, 'anon-' + anon.welcome.session, 'hello without user: user anon-<session>');
    await sleep(100);
    tap.ok(c.policies.length === 1 && c.policies[0].version === 0 && c.policies[0].class_probs.length === 10,
        'after welcome: one policy message, the prior (version 0, 10 class probabilities)', c.policies);
    tap.ok(anon.welcome.session !== w.session, 'two connections, two sessions');
    anon.ws.close();
    return w;
}

async function testFrames(tap, srv, w, spawnMs) {
    const c = await hello(srv.wsUrl);
    // Credit: exactly n frames, then nothing until more is granted.
    send(c, { t: 'stream', id: 7, n: 5 });
    const got = await frames(c, 5);
    tap.ok(got.every((f) => f.stream === 7), 'stream n 5: five frames on stream 7');
    tap.eq(got.map((f) => f.seq).join(','), '0,1,2,3,4', 'seq counts 0..4');
    tap.ok(got.every((f) => f.model_version === w.model.version && f.policy_version === 0),
        'frames carry the served model_version and policy_version 0', got.map((f) => [f.model_version, f.policy_version]));
    tap.ok(got.every((f) => Number.isInteger(f.class) && f.class >= 0 && f.class < 10),
        'class -1 (default) draws classes 0..9', got.map((f) => f.class));
    tap.ok(got.every((f) => f.w === 32 && f.h === 32 && f.c === 1 && f.format === 'png' && f.data instanceof Uint8Array),
        'w 32, h 32, c 1, format png, data bin');
    const ids = got.map((f) => f.frame);
    tap.ok(ids.every(isUint) && new Set(ids).size === 5, 'frame ids are unique unsigned integers', ids);
    // The ids start at the server's start time in microseconds (clocks of one machine; 60 s slack).
    tap.ok(ids.every((id) => id >= (spawnMs - 60000) * 1000 && id <= (Date.now() + 60000) * 1000),
        'frame ids count from the server start time in µs', { ids, spawnUs: spawnMs * 1000 });
    const decoded = [];
    let why = null;
    for (const f of got) {
        try { decoded.push(pngDecode(f.data)); } catch (e) { why = e.message; }
    }
    tap.ok(why === null && decoded.every((p) => p.w === 32 && p.h === 32 && p.c === 1),
        'each frame is a complete 32x32 8-bit gray PNG (signature, IHDR, IDAT inflates, IEND)', why);
    tap.ok(decoded.length === 5 && decoded.every((p) => variance(p.pixels) > 100),
        'each frame has non-blank pixels', decoded.map((p) => variance(p.pixels).toFixed(0)));

    tap.eq((await quiet(c)).length, 0, 'no sixth frame without credit');
    send(c, { t: 'credit', id: 7, n: 2 });
    const more = await frames(c, 2);
    tap.eq(more.map((f) => f.seq).join(','), '5,6', 'credit 2 brings seq 5 and 6');
    tap.eq((await quiet(c)).length, 0, 'and nothing after them');

    send(c, { t: 'stop', id: 7 });
    const s = await next(c);
    tap.ok(s.t === 'stopped' && s.id === 7 && s.sent === 7, 'stop: stopped {id 7, sent 7}', s);
    send(c, { t: 'credit', id: 7, n: 1 });
    const e = await next(c);
    tap.ok(e.t === 'error' && e.code === 'unknown_stream', 'credit on a stopped stream: unknown_stream', e);

    // A stream opened with n 0 waits for credit; stop with credit outstanding ends it at once.
    send(c, { t: 'stream', id: 8, n: 0, class: 3 });
    tap.eq((await quiet(c)).length, 0, 'stream n 0: no frame');
    send(c, { t: 'credit', id: 8, n: 3 });
    const c3 = await frames(c, 3);
    tap.ok(c3.every((f) => f.stream === 8 && f.class === 3), 'class 3: every frame is class 3', c3.map((f) => f.class));
    send(c, { t: 'credit', id: 8, n: 1000 });
    send(c, { t: 'stop', id: 8 });
    let m;
    let late = 0;
    while ((m = await next(c)).t === 'frame') late++;
    tap.ok(m.t === 'stopped' && m.id === 8 && m.sent === 3 + late && late < 1000,
        'stop with 1000 frames granted: stopped, its sent counting every frame', { m, late });
    const after = await quiet(c);
    tap.eq(after.length, 0, 'no frame of a stream after its stopped', after.map((x) => x.t));
    c.ws.close();
}

// Walk frames are a smooth path; gallery frames are independent samples. Same class for both, so
// the comparison is about the latents, not the class.
async function testWalk(tap, srv) {
    const c = await hello(srv.wsUrl);
    send(c, { t: 'stream', id: 1, mode: 'walk', n: 12, class: 7, seed: 42 });
    const walk = await frames(c, 12);
    send(c, { t: 'stream', id: 2, mode: 'gallery', n: 12, class: 7, seed: 42 });
    const gallery = await frames(c, 12);
    tap.ok(walk.every((f) => f.stream === 1 && f.class === 7) && gallery.every((f) => f.stream === 2),
        'a walk and a gallery stream, class 7, 12 frames each');
    const diffs = (fs) => {
        const px = fs.map((f) => pngDecode(f.data).pixels);
        let d = 0;
        for (let i = 1; i < px.length; i++) d += meanAbsDiff(px[i - 1], px[i]);
        return d / (px.length - 1);
    };
    const dw = diffs(walk), dg = diffs(gallery);
    tap.ok(dw < dg * 0.7, 'consecutive walk frames are closer than consecutive gallery frames',
        { walk: dw.toFixed(2), gallery: dg.toFixed(2) });

    // Same seed, same mode, same model: same frames.
    send(c, { t: 'stream', id: 3, mode: 'walk', n: 12, class: 7, seed: 42 });
    const again = await frames(c, 12);
    tap.ok(again.every((f, i) => Buffer.compare(f.data, walk[i].data) === 0),
        'a second walk with the same seed draws the same 12 frames');
    c.ws.close();
}

// Each bad message gets exactly one error of the expected code; the connection stays up.
async function testErrors(tap, srv) {
    const c = await open(srv.wsUrl);
    send(c, { t: 'stream', id: 1, n: 1 });
    const nh = await next(c);
    tap.ok(nh.t === 'error' && nh.code === 'no_hello', 'stream before hello: no_hello', nh);
    send(c, { t: 'hello' });
    tap.eq((await next(c)).t, 'welcome', 'hello after that: welcome');

    const cases = [
        ['hello again', encode({ t: 'hello' }), 'already_hello'],
        ['byte 0xc1 (never used in msgpack)', Buffer.from([0xc1]), 'bad_message'],
        ['an empty message', Buffer.alloc(0), 'bad_message'],
        ['a text message', 'hello', 'bad_message'],
        ['an array', encode([1, 2, 3]), 'bad_message'],
        ['a map and trailing bytes', Buffer.concat([encode({ t: 'credit', id: 1, n: 1 }), Buffer.from([0x01])]), 'bad_message'],
        ['str32 declaring 4 GiB', Buffer.from([0x81, 0xa1, 0x74, 0xdb, 0xff, 0xff, 0xff, 0xff]), 'bad_message'],
        ['map32 declaring 2^32-1 pairs', Buffer.from([0xdf, 0xff, 0xff, 0xff, 0xff]), 'bad_message'],
        ['a map without t', encode({ id: 1 }), 'bad_type'],
        ['t 42', encode({ t: 42 }), 'bad_type'],
        ['t "crdit"', encode({ t: 'crdit', id: 1 }), 'unknown_type'],
        ['stream without id', encode({ t: 'stream' }), 'bad_field'],
        ['stream id -1', encode({ t: 'stream', id: -1 }), 'bad_field'],
        ['stream id 2^32', encode({ t: 'stream', id: 2 ** 32 }), 'bad_field'],
        ['stream mode "spiral"', encode({ t: 'stream', id: 1, mode: 'spiral' }), 'bad_field'],
        ['stream format "jpeg"', encode({ t: 'stream', id: 1, format: 'jpeg' }), 'bad_field'],
        ['stream class 10', encode({ t: 'stream', id: 1, class: 10 }), 'bad_field'],
        ['stream step 0', encode({ t: 'stream', id: 1, mode: 'walk', step: 0 }), 'bad_field'],
        ['stream fps 1000', encode({ t: 'stream', id: 1, fps: 1000 }), 'bad_field'],
        ['stream n 1025', encode({ t: 'stream', id: 1, n: 1025 }), 'bad_field'],
        ['credit for stream 99 (not open)', encode({ t: 'credit', id: 99, n: 1 }), 'unknown_stream', 99],
        ['stop for stream 99 (not open)', encode({ t: 'stop', id: 99 }), 'unknown_stream', 99],
        ['feedback naming an unknown frame', encode({ t: 'feedback', id: 1, kind: 'rate', frame: 1, value: 1 }), 'unknown_frame'],
        ['job without an op', encode({ t: 'job' }), 'bad_field'],
        ['job list without the admin token', encode({ t: 'job', op: 'list' }), 'unauthorized'],
    ];
    for (const [what, bytes, code, ref] of cases) {
        c.ws.send(bytes);
        const m = await next(c);
        tap.ok(m.t === 'error' && m.code === code && typeof m.msg === 'string' && m.msg.length > 0 &&
            (ref === undefined || m.ref === ref), `${what}: error ${code}` + (ref !== undefined ? ` ref ${ref}` : ''), m);
    }

    // Stream-level errors name the stream in ref.
    send(c, { t: 'stream', id: 5, n: 0 });
    send(c, { t: 'stream', id: 5, n: 0 });
    const dup = await next(c);
    tap.ok(dup.t === 'error' && dup.code === 'stream_exists' && dup.ref === 5, 'a second stream id 5: stream_exists ref 5', dup);
    // Two grants of 1000 back to back: too few frames can be sent between them to make room.
    send(c, { t: 'credit', id: 5, n: 1000 });
    send(c, { t: 'credit', id: 5, n: 1000 });
    let ov;
    while ((ov = await next(c)).t === 'frame');
    tap.ok(ov.t === 'error' && ov.code === 'credit_overflow' && ov.ref === 5,
        'credit past max_credit: credit_overflow ref 5', ov);
    send(c, { t: 'stop', id: 5 });
    let m;
    while ((m = await next(c)).t === 'frame');
    tap.ok(m.t === 'stopped' && m.id === 5, 'stop 5: stopped', m);
    for (let id = 10; id < 18; id++) send(c, { t: 'stream', id, n: 0 });
    send(c, { t: 'stream', id: 18, n: 0 });
    const many = await next(c);
    tap.ok(many.t === 'error' && many.code === 'too_many_streams', 'a 9th open stream: too_many_streams', many);

    // After all of that the connection still serves.
    send(c, { t: 'credit', id: 10, n: 2 });
    const f = await frames(c, 2);
    tap.ok(f.every((x) => x.stream === 10), 'the connection still streams afterwards');
    tap.eq(c.ws.readyState, WebSocket.OPEN, 'and was never closed');
    c.ws.close();
}

async function testRefused(tap, srv) {
    for (const [what, protocol] of [['another subprotocol', 'chat'], ['no subprotocol', null]]) {
        let got;
        try {
            const x = await open(srv.wsUrl, protocol);
            x.ws.close();
            got = 'accepted';
        } catch (e) {
            got = e.message;
        }
        tap.ok(/^HTTP 4\d\d$/.test(got), `a handshake with ${what} is refused with HTTP 4xx`, got);
    }
    const metrics = await (await fetch(srv.url + 'metrics')).text();
    const refused = Number((/^steer_connections_refused_total\{reason="protocol"\} (\d+)/m.exec(metrics) || [])[1]);
    tap.ok(refused >= 2, '/metrics counts them under reason="protocol"', refused);
}

// A client that leaves with frames granted does not disturb the server or the others.
async function testLeave(tap, srv) {
    const a = await hello(srv.wsUrl);
    send(a, { t: 'stream', id: 1, n: 500 });
    await frames(a, 1);
    a.ws.terminate();
    const b = await hello(srv.wsUrl);
    send(b, { t: 'stream', id: 1, n: 2 });
    const f = await frames(b, 2);
    tap.ok(f.length === 2, 'a client that drops its TCP connection mid-stream leaves the others served');
    return b;
}

const tap = new Tap();
const spawnMs = Date.now();
const srv = await startServer();
let last = null;
try {
    const tests = [
        ['welcome', async () => { const w = await testWelcome(tap, srv); await testFrames(tap, srv, w, spawnMs); }],
        ['walk', () => testWalk(tap, srv)],
        ['errors', () => testErrors(tap, srv)],
        ['refused', () => testRefused(tap, srv)],
        ['leave', async () => { last = await testLeave(tap, srv); }],
    ];
    for (const [name, run] of tests) {
        try {
            await run();
        } catch (e) {
            tap.ok(false, `${name}: no exception`, String(e && e.stack || e));
        }
    }

    // SIGTERM with a stream open: the connection is closed with 1001, the server exits 0.
    const raw = await rawOpen(srv.wsUrl);
    await sleep(200);
    if (last) send(last, { t: 'credit', id: 1, n: 3 });
    const code = await stopServer(srv);
    const closeCode = last ? await Promise.race([last.closed, sleep(T).then(() => 'timeout')]) : 'no connection';
    tap.eq(closeCode, 1001, 'SIGTERM closes the open connection with 1001');
    await Promise.race([raw.ended, sleep(T)]);
    tap.eq(JSON.stringify(raw.closes), '[1001]',
        'a client that answers the close frame gets exactly one close frame (1001), as browsers require');
    tap.eq(code, 0, 'the server exits 0 on SIGTERM');
} catch (e) {
    tap.ok(false, 'no exception', String(e && e.stack || e));
    await stopServer(srv);
}
tap.done();
