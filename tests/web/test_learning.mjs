// test_learning.mjs — steering by feedback in a real browser: Debian's chromium, headless, driven by
// npm's playwright-core, against a real `steer serve`. Pair mode shows one A/B pair side by side and
// holds at most one more; "A", "Can't tell" and the right-arrow key send pair feedback (read off the
// WebSocket as the page sent it) that the server acknowledges ("saved"). The server's `policy`
// messages reach window.steer and the Learning panel: the feedback count grows, the plot and the
// class bars are drawn, and the frames' policy_version (shown next to the model version) rises once
// the policy has learned. The walk's "More like this" and "Less like this" are acknowledged. No
// console error, page error or failed request on the way. Prints TAP; exits non-zero on failure.
// No timing is asserted: every wait is a generous timeout.
import { decode } from '@msgpack/msgpack';
import { chromium } from 'playwright-core';

import { sleep, startServer, stopServer, Tap } from './harness.mjs';

const CHROMIUM = process.env.STEER_CHROMIUM || '/usr/bin/chromium';
const T = 30000;
const FASHION_MNIST = ['T-shirt/top', 'Trouser', 'Pullover', 'Dress', 'Coat', 'Sandal', 'Shirt',
    'Sneaker', 'Bag', 'Ankle boot'];

// Size and variance of a canvas's first channel, read back in the page.
function canvasStats(selector) {
    const c = document.querySelector(selector);
    if (!c) return null;
    const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
    let sum = 0, sum2 = 0;
    for (let i = 0; i < d.length; i += 4) {
        sum += d[i];
        sum2 += d[i] * d[i];
    }
    const n = d.length / 4, mean = sum / n;
    return { w: c.width, h: c.height, variance: sum2 / n - mean * mean };
}

// Pixels of the plot drawn opaque in the colour of CSS variable `name` (a line or its dots).
function plotPixels(name) {
    const c = document.querySelector('#learn-plot');
    const hex = getComputedStyle(document.documentElement).getPropertyValue(name).trim();
    const want = [1, 3, 5].map((i) => parseInt(hex.slice(i, i + 2), 16));
    const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
    let n = 0;
    for (let i = 0; i < d.length; i += 4)
        if (d[i + 3] > 200 && Math.abs(d[i] - want[0]) + Math.abs(d[i + 1] - want[1]) + Math.abs(d[i + 2] - want[2]) < 40) n++;
    return n;
}

const tap = new Tap();
const srv = await startServer();
let browser = null;
const problems = [];
const sent = []; // feedback messages as the page put them on the WebSocket
try {
    browser = await chromium.launch({ executablePath: CHROMIUM, args: ['--no-sandbox'] });
    const page = await browser.newPage({ viewport: { width: 1200, height: 900 } });
    page.on('console', (m) => { if (m.type() === 'error') problems.push('console: ' + m.text()); });
    page.on('pageerror', (e) => problems.push('pageerror: ' + e.message));
    page.on('requestfailed', (r) => problems.push('request failed: ' + r.url()));
    page.on('websocket', (ws) => ws.on('framesent', ({ payload }) => {
        if (typeof payload === 'string') return;
        const m = decode(payload);
        if (m && m.t === 'feedback') sent.push(m);
    }));
    // The feedback message the page sent with this id.
    const wire = (id) => sent.find((m) => m.id === id) || null;
    const acked = (n) => page.waitForFunction((k) => window.steer.feedbackAcked >= k, n, { timeout: T });

    await page.goto(srv.url + '?user=learner');
    await page.waitForFunction(() => window.steer && window.steer.state === 'live', null, { timeout: T });
    tap.ok(true, 'the page connects and says hello (state live)');

    // The policy right after welcome: a new user's is the prior.
    await page.waitForFunction(() => window.steer.policy !== null, null, { timeout: T });
    const p0 = await page.evaluate(() => window.steer.policy);
    tap.ok(p0.version === 0 && p0.feedback === 0 && p0.comparisons === 0,
        'a policy message arrives after welcome: the prior of a new user (version, feedback, comparisons 0)', p0);
    tap.ok(await page.isVisible('#learning'), 'the Learning panel is shown');
    tap.eq(await page.textContent('#learn-feedback'), '0', 'the panel shows feedback 0');
    tap.eq(await page.textContent('#learn-accuracy'), p0.accuracy === null ? '—' : (100 * p0.accuracy).toFixed(1) + ' %',
        'the panel shows the held-out accuracy ("—" while unknown)');

    // Pair mode: two images side by side and three answers; no more than one pair waiting behind.
    const received0 = await page.evaluate(() => window.steer.framesReceived);
    await page.click('#mode-pair');
    await page.waitForFunction(() => window.steer.pairsShown >= 1, null, { timeout: T });
    tap.eq(await page.getAttribute('#mode-pair', 'aria-pressed'), 'true', 'the Pair button shows pressed');
    tap.ok(await page.isVisible('#pair') && await page.isHidden('#gallery') && await page.isHidden('#walk'),
        'pair mode shows the pair view and hides gallery and walk');
    const sa = await page.evaluate(canvasStats, '#pair-a');
    const sb = await page.evaluate(canvasStats, '#pair-b');
    tap.ok(sa && sb && sa.w === 32 && sb.w === 32 && sa.variance > 100 && sb.variance > 100,
        'A and B are 32x32 images with non-blank pixels', [sa, sb]);
    const boxes = await page.evaluate(() => ['#pair-a', '#pair-b'].map((s) => {
        const r = document.querySelector(s).getBoundingClientRect();
        return { left: r.left, right: r.right, top: r.top, width: r.width };
    }));
    tap.ok(Math.abs(boxes[0].top - boxes[1].top) < 1 && boxes[0].right <= boxes[1].left && boxes[0].width >= 96,
        'A and B are side by side, upscaled', boxes);
    const pair1 = await page.evaluate(() => window.steer.pair);
    tap.ok(pair1 && pair1.a === pair1.pair && pair1.b !== pair1.a, 'the pair on screen is (A, B), named by A', pair1);
    for (const id of ['#pair-pick-a', '#pair-tie', '#pair-pick-b'])
        tap.ok(await page.isEnabled(id), `${id} is enabled while a pair is shown`);
    await sleep(500);
    const ahead = await page.evaluate((r0) => window.steer.framesReceived - r0, received0);
    tap.ok(ahead >= 2 && ahead <= 4, 'pair frames do not stream ahead: at most the pair shown and one more', ahead);

    // "A": pair feedback A over B, acknowledged, shown saved.
    const ack0 = await page.evaluate(() => window.steer.feedbackAcked);
    await page.click('#pair-pick-a');
    await acked(ack0 + 1);
    let fb = await page.evaluate(() => window.steer.lastFeedback);
    let m = wire(fb.id);
    tap.ok(m && m.kind === 'pair' && m.winner === pair1.a && m.loser === pair1.b && m.tie === false &&
        typeof m.id === 'string', '"A" sends {kind: pair, winner: A, loser: B, tie: false} under a string id', m);
    await page.waitForFunction(() => document.querySelector('#pair-status').dataset.state === 'saved', null, { timeout: T });
    tap.ok(/saved/.test(await page.textContent('#pair-status')), 'the server acknowledges it and the page says saved',
        await page.textContent('#pair-status'));

    // The next pair, then "Can't tell": a tie, A named as the winner.
    await page.waitForFunction(() => window.steer.pairsShown >= 2 && window.steer.pair !== null, null, { timeout: T });
    const pair2 = await page.evaluate(() => window.steer.pair);
    tap.ok(pair2.pair !== pair1.pair, 'answering shows the next pair', pair2);
    await page.click('#pair-tie');
    await acked(ack0 + 2);
    fb = await page.evaluate(() => window.steer.lastFeedback);
    m = wire(fb.id);
    tap.ok(m && m.kind === 'pair' && m.winner === pair2.a && m.loser === pair2.b && m.tie === true,
        '"Can\'t tell" sends {kind: pair, winner: A, loser: B, tie: true} and is acknowledged', m);
    tap.ok(sent.length === 2 && new Set(sent.map((x) => x.id)).size === 2,
        'every feedback has its own id', sent.map((x) => x.id));

    // The right-arrow key answers B.
    await page.waitForFunction(() => window.steer.pairsShown >= 3 && window.steer.pair !== null, null, { timeout: T });
    const pair3 = await page.evaluate(() => window.steer.pair);
    await page.keyboard.press('ArrowRight');
    await acked(ack0 + 3);
    fb = await page.evaluate(() => window.steer.lastFeedback);
    m = wire(fb.id);
    tap.ok(m && m.kind === 'pair' && m.winner === pair3.b && m.loser === pair3.a && m.tie === false,
        'the right-arrow key sends B over A, acknowledged', m);
    const held = await page.evaluate((r0) => window.steer.framesReceived - r0 - 2 * window.steer.pairsShown, received0);
    tap.ok(held >= 0 && held <= 2, 'after three answers still at most one pair waits behind the one shown', held);

    // The policy learns from them: its feedback count grows; panel, plot and class bars follow.
    let policy = null;
    try {
        await page.waitForFunction(() => window.steer.policy.feedback >= 3, null, { timeout: T });
        policy = await page.evaluate(() => window.steer.policy);
    } catch (e) {
        policy = await page.evaluate(() => window.steer.policy);
    }
    tap.ok(policy.feedback >= 3 && policy.version > p0.version && policy.comparisons >= 3,
        'the policy has learned from the three answers (feedback, version, comparisons grow)', policy);
    const history = await page.evaluate(() => window.steer.policyHistory);
    tap.ok(history.length >= 2 && history.every((p, i) => i === 0 || p.feedback >= history[i - 1].feedback),
        'window.steer.policyHistory holds every policy message, feedback never falling', history.map((p) => p.feedback));
    tap.eq(await page.textContent('#learn-feedback'), String(policy.feedback), 'the panel shows the feedback count');
    tap.eq(await page.textContent('#learn-version'), String(policy.version), 'the panel shows the policy version');
    tap.eq(await page.textContent('#learn-comparisons'), String(policy.comparisons), 'the panel shows the comparisons');
    tap.eq(await page.textContent('#learn-kl'), policy.kl.toFixed(3) + ' nats', 'the panel shows the KL in nats');
    tap.ok(await page.evaluate(plotPixels, '--warn') > 0, 'the plot draws the KL');
    tap.ok(policy.accuracy === null || await page.evaluate(plotPixels, '--ok') > 0,
        'the plot draws the held-out accuracy when known', policy.accuracy);
    const bars = await page.$$eval('#class-probs li', (ls) => ls.map((l) => ({
        name: l.querySelector('.name').textContent, p: Number(l.dataset.p),
        width: l.querySelector('.fill').getBoundingClientRect().width })));
    tap.ok(Array.isArray(policy.class_probs) && policy.class_probs.length === 10 &&
        Math.abs(policy.class_probs.reduce((a, b) => a + b, 0) - 1) < 1e-3,
        'class_probs: ten probabilities summing to 1', policy.class_probs);
    tap.ok(bars.length === 10 && bars.every((b, k) => b.name === FASHION_MNIST[k]) && bars.some((b) => b.width > 0),
        'the class bars name the ten Fashion-MNIST classes and are drawn', bars);

    // Frames drawn after the update carry the new policy_version, shown beside the model version.
    const v0 = Number(await page.textContent('#policy-version'));
    // The pair on screen may have been asked for before the update: answer up to six more.
    for (let i = 0; i < 6 && Number(await page.textContent('#policy-version')) <= p0.version; i++) {
        await page.waitForFunction(() => window.steer.pair !== null, null, { timeout: T });
        const shown = await page.evaluate(() => window.steer.pairsShown);
        await page.click('#pair-pick-a');
        await page.waitForFunction((n) => window.steer.pairsShown > n, shown, { timeout: T });
    }
    const pv = Number(await page.textContent('#policy-version'));
    tap.ok(pv > p0.version, 'pair frames drawn after the update show a higher policy_version', { before: v0, after: pv });
    tap.eq(await page.evaluate(() => window.steer.policyVersion), pv, 'window.steer.policyVersion is the one shown');

    // Walk: "More like this" and "Less like this" rate the image on screen.
    let shown = await page.evaluate(() => window.steer.framesShown);
    await page.click('#mode-walk');
    await page.waitForFunction((n) => window.steer.framesShown >= n + 3 && window.steer.lastFrame.mode === 'walk',
        shown, { timeout: T });
    tap.ok(Number(await page.textContent('#policy-version')) >= pv, 'walk frames come from the learned policy too',
        await page.textContent('#policy-version'));
    let acks = await page.evaluate(() => window.steer.feedbackAcked);
    const before = await page.evaluate(() => window.steer.lastFrame.frame);
    await page.click('#walk-more');
    const after = await page.evaluate(() => window.steer.lastFrame.frame);
    await acked(acks + 1);
    m = wire((await page.evaluate(() => window.steer.lastFeedback)).id);
    tap.ok(m && m.kind === 'rate' && m.value === 1 && m.frame >= before && m.frame <= after,
        '"More like this" rates the walk image on screen +1', { m, before, after });
    await page.waitForFunction(() => document.querySelector('#walk-more').dataset.state === 'saved', null, { timeout: T });
    tap.ok(true, '"More like this" is acknowledged and shows saved');
    acks = await page.evaluate(() => window.steer.feedbackAcked);
    await page.click('#walk-less');
    await acked(acks + 1);
    m = wire((await page.evaluate(() => window.steer.lastFeedback)).id);
    tap.ok(m && m.kind === 'rate' && m.value === -1, '"Less like this" rates -1 and is acknowledged', m);

    await acked(sent.length);
    const metrics = await page.evaluate(async () => (await fetch('/metrics')).text());
    const stored = Number((/^steer_feedback_total\{result="stored"\} (\d+)/m.exec(metrics) || [])[1]);
    tap.eq(stored, sent.length, '/metrics: every feedback the page sent is stored once');
    tap.eq(await page.evaluate(() => window.steer.feedbackAcked), sent.length, 'and acknowledged');
    tap.eq(await page.evaluate(() => window.steer.lastError), null, 'no error reached the page');
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
