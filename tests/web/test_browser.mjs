// test_browser.mjs — the web client in a real browser: Debian's chromium, headless, driven by npm's
// playwright-core, against a real `steer serve`. The page loads, says hello, shows the model, and
// gallery frames appear with non-blank pixels; switching to the walk streams there too; frames/s
// shows above zero; /healthz and /metrics answer; and no console error or page error happens on the
// way. Prints TAP; exits non-zero on failure.
import { chromium } from 'playwright-core';

import { sleep, startServer, stopServer, Tap } from './harness.mjs';

const CHROMIUM = process.env.STEER_CHROMIUM || '/usr/bin/chromium';
const T = 30000;

// Mean and variance of a canvas's pixels, read back in the page.
function canvasStats(selector) {
    const c = document.querySelector(selector);
    if (!c) return null;
    const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
    let sum = 0, sum2 = 0, n = 0;
    for (let i = 0; i < d.length; i += 4) {
        sum += d[i];
        sum2 += d[i] * d[i];
        n++;
    }
    const mean = sum / n;
    return { w: c.width, h: c.height, mean, variance: sum2 / n - mean * mean };
}

const tap = new Tap();
const srv = await startServer();
let browser = null;
const problems = [];
try {
    browser = await chromium.launch({ executablePath: CHROMIUM, args: ['--no-sandbox'] });
    const page = await browser.newPage();
    page.on('console', (m) => { if (m.type() === 'error') problems.push('console: ' + m.text()); });
    page.on('pageerror', (e) => problems.push('pageerror: ' + e.message));
    page.on('requestfailed', (r) => problems.push('request failed: ' + r.url()));
    const resp = await page.goto(srv.url + '?user=chromium');
    tap.eq(resp.status(), 200, 'GET / answers 200');

    await page.waitForFunction(() => window.steer && window.steer.state === 'live', null, { timeout: T });
    tap.ok(true, 'the page connects and says hello (state live)');
    tap.eq(await page.textContent('#model-name'), 'fmnist32c', 'the page shows the model name');
    tap.eq(await page.textContent('#model-version'), '1', 'the page shows the model version');

    await page.waitForFunction(() => window.steer.framesShown >= 16, null, { timeout: T });
    tap.ok(true, 'gallery frames are painted (16 and more)');
    const tiles = await page.evaluate(() => document.querySelectorAll('#gallery canvas').length);
    tap.eq(tiles, 16, 'the gallery has 16 tiles');
    const stats = [];
    for (let i = 1; i <= 4; i++)
        stats.push(await page.evaluate(canvasStats, `#gallery figure:nth-child(${i}) canvas`));
    tap.ok(stats.every((s) => s && s.w === 32 && s.h === 32 && s.variance > 100),
        'gallery tiles hold 32x32 images with non-blank pixels', stats);

    // The walk: one canvas morphing.
    const shownBefore = await page.evaluate(() => window.steer.framesShown);
    await page.click('#mode-walk');
    await page.waitForFunction((n) => window.steer.framesShown >= n + 10 &&
        window.steer.lastFrame && window.steer.lastFrame.mode === 'walk', shownBefore, { timeout: T });
    tap.ok(await page.isVisible('#walk-canvas'), 'walk mode shows its canvas');
    const walk = await page.evaluate(canvasStats, '#walk-canvas');
    tap.ok(walk && walk.variance > 100, 'walk frames have non-blank pixels', walk);

    await page.waitForFunction(() => window.steer.fps > 0, null, { timeout: T });
    const fps = Number(await page.textContent('#fps'));
    tap.ok(fps > 0, 'frames/s is shown and above zero', fps);
    tap.eq(await page.evaluate(() => window.steer.lastError), null, 'no error reached the page');

    // The page's server answers its HTTP endpoints too.
    const health = await page.evaluate(async () => (await fetch('/healthz')).json());
    tap.ok(health.status === 'ok' && health.connections >= 1, '/healthz answers ok with the page connected',
        health);
    const metrics = await page.evaluate(async () => (await fetch('/metrics')).text());
    const sent = Number((/^steer_frames_sent_total (\d+)/m.exec(metrics) || [])[1]);
    tap.ok(sent >= 26, '/metrics counts the frames sent to the page', sent);

    await sleep(300);
    tap.ok(problems.length === 0, 'no console errors, page errors or failed requests', problems);
} catch (e) {
    tap.ok(false, 'no exception', String(e && e.stack || e));
    tap.ok(problems.length === 0, 'no console errors, page errors or failed requests', problems);
} finally {
    if (browser) await browser.close();
    tap.eq(await stopServer(srv), 0, 'the server exits 0 on SIGTERM');
}
tap.done();
