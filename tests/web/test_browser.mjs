// test_browser.mjs — the web client in a real browser: Debian's chromium, headless, driven by npm's
// playwright-core, against a real `steer serve`. The page loads, says hello and shows the model;
// gallery tiles fill with non-blank, crisply upscaled frames; the class selector narrows them to one
// class; the walk streams one morphing image; frames/s shows above zero; the page keeps its frame
// buffer within its credit window; /healthz, /metrics, the vendored msgpack and 404s answer; no
// console error, page error or failed request happens on the way. Last, the server restarts on the
// same port and the page reconnects by itself. Prints TAP; exits non-zero on failure.
import http from 'node:http';

import { chromium } from 'playwright-core';

import { sleep, startServer, stopServer, Tap } from './harness.mjs';

const CHROMIUM = process.env.STEER_CHROMIUM || '/usr/bin/chromium';
const T = 30000;
const FASHION_MNIST = ['T-shirt/top', 'Trouser', 'Pullover', 'Dress', 'Coat', 'Sandal', 'Shirt',
    'Sneaker', 'Bag', 'Ankle boot'];

// Size, mean, variance and the first channel of a canvas's pixels, read back in the page.
function canvasStats(selector) {
    const c = document.querySelector(selector);
    if (!c) return null;
    const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
    const px = [];
    let sum = 0, sum2 = 0;
    for (let i = 0; i < d.length; i += 4) {
        px.push(d[i]);
        sum += d[i];
        sum2 += d[i] * d[i];
    }
    const mean = sum / px.length;
    return { w: c.width, h: c.height, mean, variance: sum2 / px.length - mean * mean, px };
}

// A GET with the path sent exactly as given (fetch would normalize `..` away).
function rawGet(url, path) {
    const u = new URL(url);
    return new Promise((resolve, reject) => {
        const req = http.get({ host: u.hostname, port: u.port, path }, (res) => {
            let body = '';
            res.on('data', (d) => { body += d; });
            res.on('end', () => resolve({ status: res.statusCode, type: res.headers['content-type'] || '', body }));
        });
        req.on('error', reject);
        req.setTimeout(T, () => req.destroy(new Error('timeout')));
    });
}

const tap = new Tap();
let srv = await startServer();
let browser = null;
const problems = [];
let restarting = false; // while the server is down, the browser's failed reconnects are expected
try {
    browser = await chromium.launch({ executablePath: CHROMIUM, args: ['--no-sandbox'] });
    const page = await browser.newPage({ viewport: { width: 1200, height: 900 } });
    page.on('console', (m) => {
        if (m.type() !== 'error') return;
        if (restarting && /^WebSocket connection to .* failed: Error in connection establishment/.test(m.text())) return;
        problems.push('console: ' + m.text());
    });
    page.on('pageerror', (e) => problems.push('pageerror: ' + e.message));
    page.on('requestfailed', (r) => {
        if (!(restarting && r.url().endsWith('/ws'))) problems.push('request failed: ' + r.url());
    });
    const resp = await page.goto(srv.url + '?user=chromium');
    tap.eq(resp.status(), 200, 'GET / answers 200');

    await page.waitForFunction(() => window.steer && window.steer.state === 'live', null, { timeout: T });
    tap.ok(true, 'the page connects and says hello (state live)');
    const health = await (await fetch(srv.url + 'healthz')).json();
    tap.ok(/chromium/.test(await page.textContent('#status')), 'the status shows the user from ?user=',
        await page.textContent('#status'));
    tap.eq(await page.textContent('#model-name'), health.model.name, 'the page shows the model name');
    tap.eq(await page.textContent('#model-version'), String(health.model.version),
        'the page shows the model version /healthz reports');
    tap.eq(await page.evaluate(() => window.steer.modelVersion), health.model.version,
        'window.steer.modelVersion is that version');
    tap.eq(await page.textContent('#model-size'), '32×32 gray', 'the page shows the size');
    tap.eq(await page.textContent('#model-classes'), '10', 'the page shows the class count');

    // The gallery: 16 tiles, each filled with a frame, scaled up with crisp pixels.
    await page.waitForFunction(() => window.steer.framesShown >= 16, null, { timeout: T });
    tap.ok(true, 'gallery frames are painted (16 and more)');
    tap.eq(await page.locator('#gallery figure[data-filled="1"] canvas').count(), 16, 'all 16 gallery tiles are filled');
    const stats = [];
    for (let i = 1; i <= 16; i++)
        stats.push(await page.evaluate(canvasStats, `#gallery figure:nth-child(${i}) canvas`));
    tap.ok(stats.every((s) => s && s.w === 32 && s.h === 32 && s.variance > 100),
        'every tile holds a 32x32 image with non-blank pixels', stats.map((s) => s && s.variance.toFixed(0)));
    const look = await page.evaluate(() => {
        const c = document.querySelector('#gallery canvas');
        return { rendering: getComputedStyle(c).imageRendering, width: c.getBoundingClientRect().width };
    });
    tap.ok(look.rendering === 'pixelated' && look.width >= 96, 'tiles are upscaled (>= 3x) with image-rendering: pixelated', look);
    const held = await page.evaluate(() => window.steer.framesReceived - window.steer.framesShown);
    tap.ok(held >= 0 && held <= 16, 'frames received but not painted stay within the credit window', held);

    // The class selector: Fashion-MNIST's names; choosing one fills the gallery with that class only.
    const options = await page.$$eval('#class-select option', (os) => os.map((o) => o.textContent));
    tap.eq(JSON.stringify(options), JSON.stringify(['all classes', ...FASHION_MNIST]),
        'the class selector lists all classes and the ten Fashion-MNIST names');
    await page.selectOption('#class-select', '1');
    let shown = await page.evaluate(() => window.steer.framesShown);
    await page.waitForFunction((n) => window.steer.framesShown >= n + 20, shown, { timeout: T });
    const captions = await page.$$eval('#gallery figcaption', (cs) => cs.map((c) => c.textContent));
    tap.ok(captions.length === 16 && captions.every((c) => c === 'Trouser'),
        'class Trouser: every tile is captioned Trouser', captions);
    tap.eq(await page.evaluate(() => window.steer.lastFrame.class), 1, 'and the frames say class 1');
    await page.selectOption('#class-select', '-1');

    // The walk: one canvas, morphing.
    shown = await page.evaluate(() => window.steer.framesShown);
    await page.click('#mode-walk');
    await page.waitForFunction((n) => window.steer.framesShown >= n + 10 &&
        window.steer.lastFrame && window.steer.lastFrame.mode === 'walk', shown, { timeout: T });
    tap.ok(await page.isVisible('#walk-canvas') && !(await page.isVisible('#gallery')),
        'walk mode shows its canvas and hides the gallery');
    tap.eq(await page.getAttribute('#mode-walk', 'aria-pressed'), 'true', 'the Walk button shows pressed');
    const walk1 = await page.evaluate(canvasStats, '#walk-canvas');
    tap.ok(walk1 && walk1.variance > 100, 'walk frames have non-blank pixels', walk1 && walk1.variance);
    shown = await page.evaluate(() => window.steer.framesShown);
    await page.waitForFunction((n) => window.steer.framesShown >= n + 3, shown, { timeout: T });
    const walk2 = await page.evaluate(canvasStats, '#walk-canvas');
    const moved = walk1.px.reduce((d, v, i) => d + Math.abs(v - walk2.px[i]), 0) / walk1.px.length;
    tap.ok(moved > 0, 'the walk image changes from frame to frame', moved);
    const walkBox = await page.evaluate(() => document.querySelector('#walk-canvas').getBoundingClientRect().width);
    tap.ok(walkBox >= 256, 'the walk is shown big (>= 256 px wide)', walkBox);

    // Feedback: thumbs on the walk image, then on a gallery tile; each is stored and acknowledged.
    await page.click('#walk .thumbs button[data-value="1"]');
    await page.waitForFunction(() => window.steer.feedbackAcked >= 1, null, { timeout: T });
    tap.eq(await page.getAttribute('#walk .thumbs button[data-value="1"]', 'data-state'), 'saved',
        'thumbs up on the walk: the server acknowledges it and the button shows saved');
    // Back to the gallery, until every tile shows a fresh frame (older ones may have left the
    // server's per-session history).
    const before = await page.evaluate(() => window.steer.framesShown);
    await page.click('#mode-gallery');
    await page.waitForFunction((n) => window.steer.framesShown >= n + 16 &&
        window.steer.lastFrame.mode === 'gallery', before, { timeout: T });
    await page.click('#gallery figure:nth-child(2) .thumbs button[data-value="-1"]');
    await page.waitForFunction(() => window.steer.feedbackAcked >= 2, null, { timeout: T });
    tap.ok(true, 'thumbs down on a gallery tile is acknowledged too');
    const stored = await page.evaluate(async () => {
        const t = await (await fetch('/metrics')).text();
        return Number((/^steer_feedback_total\{result="stored"\} (\d+)/m.exec(t) || [])[1]);
    });
    tap.eq(stored, 2, '/metrics: the two feedbacks are stored');
    await page.click('#mode-walk');

    await page.waitForFunction(() => window.steer.fps > 0, null, { timeout: T });
    const fps = Number(await page.textContent('#fps'));
    tap.ok(fps > 0, 'frames/s is shown and above zero', fps);
    tap.eq(await page.evaluate(() => window.steer.lastError), null, 'no error reached the page');
    tap.ok(await page.isHidden('#errors'), 'the server-errors panel stays hidden');

    // The server's HTTP endpoints, as the page sees them.
    const h = await page.evaluate(async () => {
        const r = await fetch('/healthz');
        return { status: r.status, type: r.headers.get('content-type'), body: await r.json() };
    });
    tap.ok(h.status === 200 && /json/.test(h.type) && h.body.status === 'ok' && h.body.protocol === 'steer.v1' &&
        h.body.connections >= 1 && h.body.streams >= 1, '/healthz: 200 JSON, ok, steer.v1, the page connected and streaming', h);
    // The page's count is read before the server's, so every frame it counts was already sent.
    const m = await page.evaluate(async () => {
        const received = window.steer.framesReceived;
        const r = await fetch('/metrics');
        return { status: r.status, type: r.headers.get('content-type'), text: await r.text(), received };
    });
    const received = m.received;
    const sent = Number((/^steer_frames_sent_total (\d+)/m.exec(m.text) || [])[1]);
    tap.ok(m.status === 200 && /^text\/plain/.test(m.type) && sent >= received,
        '/metrics: 200 text/plain, steer_frames_sent_total counts the frames the page received', { type: m.type, sent, received });
    const vendor = await rawGet(srv.url, '/vendor/msgpack.min.js');
    tap.ok(vendor.status === 200 && /javascript/.test(vendor.type) && vendor.body.includes('MessagePack'),
        'GET /vendor/msgpack.min.js serves the msgpack library as JavaScript', { status: vendor.status, type: vendor.type });
    tap.eq((await rawGet(srv.url, '/no-such-page')).status, 404, 'GET /no-such-page: 404');
    for (const p of ['/../Makefile', '/%2e%2e/Makefile', '/..%2fMakefile', '/vendor/../../Makefile']) {
        const r = await rawGet(srv.url, p);
        tap.ok(r.status >= 400 && !r.body.includes('GNU Make'), `GET ${p} does not escape clients/web`, r.status);
    }

    await sleep(300);
    tap.ok(problems.length === 0, 'no console errors, page errors or failed requests', problems);

    // The server goes away (1001) and comes back on the same port: the page reconnects by itself.
    restarting = true;
    const port = new URL(srv.url).port;
    // The first close the page sees (later failed reconnects are 1006); its retries wait >= 250 ms.
    const firstClose = page.waitForFunction(() => window.steer.closeCode !== null &&
        window.steer.state === 'reconnecting' && window.steer.closeCode, null, { timeout: T, polling: 20 });
    tap.eq(await stopServer(srv), 0, 'the server exits 0 on SIGTERM with the page connected');
    tap.eq(await (await firstClose).jsonValue(), 1001, 'the page sees close 1001 and is reconnecting');
    srv = await startServer(['--port', port]);
    shown = await page.evaluate(() => window.steer.framesShown);
    await page.waitForFunction((n) => window.steer.state === 'live' && window.steer.framesShown >= n + 5, shown,
        { timeout: T });
    tap.ok(true, 'after a restart on the same port the page reconnects and streams again');
    restarting = false;
    await sleep(300);
    tap.ok(problems.length === 0, 'no page errors across the restart', problems);
} catch (e) {
    tap.ok(false, 'no exception', String(e && e.stack || e));
    tap.ok(problems.length === 0, 'no console errors, page errors or failed requests', problems);
} finally {
    if (browser) await browser.close();
    tap.eq(await stopServer(srv), 0, 'the server exits 0 on SIGTERM');
}
tap.done();
