// test_ws.mjs — a real `steer serve` driven by Node's `ws` (npm) with @msgpack/msgpack: hello and
// welcome, credit honoured exactly, frames that are real PNGs of the model's size, malformed
// messages answered with errors on a connection that stays up, the wrong subprotocol refused, and
// SIGTERM closing every socket with 1001 and exiting 0. Prints TAP; exits non-zero on failure.
import { decode, encode } from '@msgpack/msgpack';
import WebSocket from 'ws';

import { sleep, startServer, stopServer, Tap } from './harness.mjs';

const T = 30000;

// A connection with a queue of decoded messages and a wait for the next one.
function open(url, protocol = 'steer.v1') {
    return new Promise((resolve, reject) => {
        const ws = new WebSocket(url, protocol);
        const c = { ws, queue: [], waiters: [], closeCode: null };
        ws.on('message', (data, isBinary) => {
            const m = isBinary ? decode(data) : { t: 'text', data: String(data) };
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

const send = (c, m) => c.ws.send(encode(m));

// PNG signature, then IHDR's width and height (big-endian u32 at bytes 16 and 20).
function pngSize(buf) {
    const sig = [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a];
    if (buf.length < 24 || sig.some((b, i) => buf[i] !== b)) return null;
    const dv = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
    if (String.fromCharCode(...buf.slice(12, 16)) !== 'IHDR') return null;
    return [dv.getUint32(16), dv.getUint32(20)];
}

const tap = new Tap();
const srv = await startServer();
try {
    const c = await open(srv.wsUrl);
    send(c, { t: 'hello', user: 'node-ws' });
    const w = await next(c);
    tap.eq(w.t, 'welcome', 'hello is answered with welcome');
    tap.eq(w.user, 'node-ws', 'welcome echoes the user');
    tap.ok(w.model && w.model.width === 32 && w.model.height === 32 && w.model.classes === 10,
        'welcome describes the 32x32 conditional model', w.model);

    // Credit: exactly n frames, then nothing until more is granted.
    send(c, { t: 'stream', id: 7, n: 5 });
    const frames = [];
    for (let i = 0; i < 5; i++) frames.push(await next(c));
    tap.ok(frames.every((f) => f.t === 'frame' && f.stream === 7), 'five frames on stream 7');
    tap.ok(frames.every((f, i) => f.seq === i), 'seq counts 0..4', frames.map((f) => f.seq));
    const sizes = frames.map((f) => pngSize(f.data));
    tap.ok(sizes.every((s) => s && s[0] === 32 && s[1] === 32), 'each frame is a 32x32 PNG', sizes);
    tap.ok(new Set(frames.map((f) => f.frame)).size === 5, 'frame ids are unique');
    await sleep(500);
    tap.eq(c.queue.length, 0, 'no sixth frame without credit');
    send(c, { t: 'credit', id: 7, n: 2 });
    const more = [await next(c), await next(c)];
    tap.ok(more.every((f) => f.t === 'frame') && more[1].seq === 6, 'credit 2 brings seq 5 and 6');
    await sleep(500);
    tap.eq(c.queue.length, 0, 'and nothing after them');

    // Malformed messages: each gets an error, the connection stays up.
    const bad = [
        Buffer.from([0xc1]), Buffer.from([0xdf, 0xff, 0xff, 0xff, 0xff]), encode([1, 2, 3]),
        encode({ t: 'credit', id: 7, n: -1 }), encode({ t: 'nonsense' }), encode({ t: 'stream' }),
        encode({ t: 42 }), Buffer.alloc(0),
    ];
    for (const b of bad) c.ws.send(b);
    c.ws.send('a text message');
    const errors = [];
    for (let i = 0; i < bad.length + 1; i++) errors.push(await next(c));
    tap.ok(errors.every((e) => e.t === 'error' && typeof e.code === 'string'),
        `${bad.length + 1} malformed messages get ${bad.length + 1} errors`, errors.map((e) => e.code));
    send(c, { t: 'credit', id: 7, n: 1 });
    const after = await next(c);
    tap.ok(after.t === 'frame' && after.seq === 7, 'the connection still streams afterwards');

    // A handshake without steer.v1 is refused.
    let refused = null;
    try {
        const x = await open(srv.wsUrl, 'chat');
        x.ws.close();
        refused = 'accepted';
    } catch (e) {
        refused = e.message;
    }
    tap.eq(refused, 'HTTP 400', 'a handshake for another subprotocol is refused with HTTP 400');

    // SIGTERM: the open connection is closed with 1001, the server exits 0.
    send(c, { t: 'credit', id: 7, n: 3 });
    const code = await stopServer(srv);
    const closeCode = await Promise.race([c.closed, sleep(T).then(() => 'timeout')]);
    tap.eq(closeCode, 1001, 'SIGTERM closes the connection with 1001');
    tap.eq(code, 0, 'the server exits 0 on SIGTERM');
} catch (e) {
    tap.ok(false, 'no exception', String(e && e.stack || e));
    await stopServer(srv);
}
tap.done();
