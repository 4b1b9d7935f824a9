// test_dashboard.mjs — the Training tab (clients/web/dashboard.js) in a real browser: Debian's
// chromium, headless, driven by npm's playwright-core, against a real `steer serve` with
// --admin-token-file and a tiny served model trained first by `steer worker`. Without a token the tab
// sends nothing; a wrong token shows `unauthorized` and the page still streams; the right one (kept in
// localStorage across a reload) shows the jobs and the model registry. Through the form: a bad JSON
// and a refused spec show their error; a job fine-tuning the served model runs, its progress bar
// advances, its loss plot gets points, it is done with FD beside its parent's and promoted as version
// 2 (models table, header, frames); the Rollback button serves version 1 again; the Promote button
// promotes a job submitted with promote false; a long job is paused, resumed and cancelled with its
// buttons. A viewer's page (no token) follows every swap. No console error, page error or failed
// request on the way. Prints TAP; exits non-zero on failure. No timing is asserted: every wait is a
// generous timeout.
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import { decode } from '@msgpack/msgpack';
import { chromium } from 'playwright-core';

import { BIN, ROOT, sleep, startServer, stopServer, Tap } from './harness.mjs';

const CHROMIUM = process.env.STEER_CHROMIUM || '/usr/bin/chromium';
const T = 30000;
const T_JOB = 300000; // a job, FD included, on a loaded machine
const TOKEN = 'dashboard-secret';
const EXAMPLE = { config: 'tiny', steps: 200, batch: 16, save_every: 50, log_every: 10, eval_n: 500 };

// Pixels of canvas `selector` drawn opaque in the colour of CSS variable `name`, read in the page.
function plotPixels([selector, name]) {
    const c = document.querySelector(selector);
    const hex = getComputedStyle(document.documentElement).getPropertyValue(name).trim();
    const want = [1, 3, 5].map((i) => parseInt(hex.slice(i, i + 2), 16));
    const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
    let n = 0;
    for (let i = 0; i < d.length; i += 4)
        if (d[i + 3] > 200 && Math.abs(d[i] - want[0]) + Math.abs(d[i + 1] - want[1]) + Math.abs(d[i + 2] - want[2]) < 40) n++;
    return n;
}

// The served model: the tiny config trained for 20 steps by `steer worker` itself.
const root = fs.mkdtempSync(path.join(os.tmpdir(), 'steer_dash_'));
process.on('exit', () => fs.rmSync(root, { recursive: true, force: true }));
const baseDir = path.join(root, 'base');
fs.mkdirSync(baseDir);
fs.writeFileSync(path.join(baseDir, 'spec.json'),
    JSON.stringify({ config: 'tiny', steps: 20, batch: 16, save_every: 0, eval_n: 0 }));
const worker = spawnSync(BIN, ['worker', '--dir', baseDir], { cwd: ROOT, timeout: 600000 });
const base = path.join(baseDir, 'final.safetensors');
const tokenFile = path.join(root, 'admin.token');
fs.writeFileSync(tokenFile, TOKEN + '\n');

const tap = new Tap();
if (!tap.ok(worker.status === 0 && fs.existsSync(base), 'steer worker trains the tiny base model',
    String(worker.stderr).slice(-2000))) {
    tap.done();
    process.exit();
}
const srv = await startServer(['--model', base, '--admin-token-file', tokenFile, '--policy-pool', '0',
    '--batch', '8']);
let browser = null;
const problems = [];
const jobSent = { admin: [], viewer: [] }; // `job` messages as each page put them on the WebSocket

// A page that records console errors, page errors, failed requests and the job messages it sends.
async function openPage(context, who) {
    const page = await context.newPage();
    page.on('console', (m) => { if (m.type() === 'error') problems.push(who + ' console: ' + m.text()); });
    page.on('pageerror', (e) => problems.push(who + ' pageerror: ' + e.message));
    page.on('requestfailed', (r) => problems.push(who + ' request failed: ' + r.url()));
    page.on('websocket', (ws) => ws.on('framesent', ({ payload }) => {
        if (typeof payload === 'string') return;
        const m = decode(payload);
        if (m && m.t === 'job') jobSent[who].push(m);
    }));
    return page;
}

try {
    browser = await chromium.launch({ executablePath: CHROMIUM, args: ['--no-sandbox'] });
    const viewer = await openPage(await browser.newContext({ viewport: { width: 1200, height: 900 } }), 'viewer');
    await viewer.goto(srv.url + '?user=viewer');
    const page = await openPage(await browser.newContext({ viewport: { width: 1400, height: 1200 } }), 'admin');
    await page.goto(srv.url + '?user=admin');
    for (const p of [viewer, page])
        await p.waitForFunction(() => window.steer && window.steer.state === 'live' && window.steer.framesShown >= 4,
            null, { timeout: T });
    tap.ok(true, 'both pages connect and paint frames');

    // The jobs of a page's window.steer, and a wait on one of them.
    const job = (id) => page.evaluate((k) => window.steer.jobs.find((j) => j.id === k) || null, id);
    const waitJob = async (id, pred, timeout = T_JOB) => {
        try {
            await page.waitForFunction(([k, src]) => {
                const j = window.steer.jobs.find((x) => x.id === k);
                return j && (0, eval)(src)(j); // eslint-disable-line no-eval
            }, [id, pred.toString()], { timeout });
        } catch (e) { // say where the job stood
            throw new Error(`job ${id} never met ${pred}: ${JSON.stringify(await job(id))}; ${e.message}`);
        }
    };
    // Click a job's button and see its op leave on the WebSocket (a click that missed fails here, not
    // as a wait on the job's state).
    const clickOp = async (id, op) => {
        const before = jobSent.admin.filter((m) => m.op === op && m.id === id).length;
        await page.click(`#jobs tr[data-job="${id}"] button[data-op="${op}"]`);
        for (let t = 0; t < T && jobSent.admin.filter((m) => m.op === op && m.id === id).length === before; t += 50)
            await sleep(50);
        tap.ok(jobSent.admin.filter((m) => m.op === op && m.id === id).length > before,
            `the ${op} button of job ${id} sent ${op}`, await job(id));
    };
    const visibleOps = (id) => page.$$eval(`#jobs tr[data-job="${id}"] button[data-op]`,
        (bs) => bs.filter((b) => !b.hidden).map((b) => b.dataset.op));
    const served = (p, v) => p.waitForFunction((want) => window.steer.servedVersion === want &&
        document.querySelector('#model-version').textContent === String(want) &&
        window.steer.lastFrame && window.steer.lastFrame.model_version === want, v, { timeout: T_JOB });

    // Without a token the tab says so and the page sends no job message.
    tap.ok(await page.isHidden('#dashboard'), 'the dashboard starts closed');
    await page.click('#tab-training');
    tap.ok(await page.isVisible('#dashboard') && await page.isHidden('#dash-body'),
        'the Training tab opens the dashboard; without a token only the token field shows');
    tap.eq(await page.getAttribute('#tab-training', 'aria-pressed'), 'true', 'the Training tab shows pressed');
    tap.ok(/no admin token/.test(await page.textContent('#admin-status')), 'it says there is no admin token',
        await page.textContent('#admin-status'));
    tap.eq(jobSent.admin.length, 0, 'no job message without a token');

    // A wrong token: unauthorized, shown on the dashboard; the page goes on streaming.
    await page.fill('#admin-token', 'not-the-token');
    await page.click('#admin-token-save');
    await page.waitForFunction(() => window.steer.dashError && window.steer.dashError.code === 'unauthorized',
        null, { timeout: T });
    const errText = await page.textContent('#dash-error');
    tap.ok(await page.isVisible('#dash-error') && /unauthorized/.test(errText),
        'a wrong token: the dashboard shows the unauthorized error', errText);
    tap.ok(await page.evaluate(() => window.steer.admin) === false && await page.isHidden('#dash-body'),
        'window.steer.admin is false and the jobs stay hidden');
    tap.ok(jobSent.admin.some((m) => m.op === 'list'), 'the page asked for the job list with it',
        jobSent.admin);
    let shown = await page.evaluate(() => window.steer.framesShown);
    await page.waitForFunction((n) => window.steer.state === 'live' && window.steer.framesShown >= n + 8, shown,
        { timeout: T });
    tap.ok(true, 'with a wrong token the page still streams');

    // The right token: the jobs (none) and the registry (version 1, served).
    await page.fill('#admin-token', TOKEN);
    await page.click('#admin-token-save');
    await page.waitForFunction(() => window.steer.admin === true && window.steer.models.length === 1, null,
        { timeout: T });
    tap.ok(await page.isVisible('#dash-body') && await page.isHidden('#dash-error'),
        'the admin token: the jobs and models show, the error is gone');
    tap.eq(await page.evaluate(() => localStorage.getItem('steer.adminToken')), TOKEN, 'the token is kept in localStorage');
    tap.eq(await page.evaluate(() => window.steer.servedVersion), 1, 'window.steer.servedVersion is 1');
    tap.ok(await page.isVisible('#jobs-empty'), 'the job list says there is no job yet');
    tap.ok(await page.isVisible('#models tr[data-version="1"].served .badge') &&
        await page.isHidden('#models tr[data-version="1"] button[data-op="rollback"]'),
        'the models table shows version 1 served, without a rollback button');

    // The form: prefilled with an example; bad JSON and a refused spec show their error.
    const example = await page.inputValue('#job-spec');
    let parsed = null;
    try { parsed = JSON.parse(example); } catch (e) { /* fails below */ }
    tap.eq(JSON.stringify(parsed), JSON.stringify(EXAMPLE), 'the spec field is prefilled with a small example');
    const submits = () => jobSent.admin.filter((m) => m.op === 'submit').length;
    await page.fill('#job-spec', '{"steps": ');
    await page.click('#job-submit');
    await page.waitForFunction(() => window.steer.dashError && window.steer.dashError.code === 'bad_json', null,
        { timeout: T });
    tap.ok(submits() === 0 && /not JSON/.test(await page.textContent('#dash-error')),
        'a spec that is not JSON is not sent; the dashboard says why', await page.textContent('#dash-error'));
    await page.fill('#job-spec', '{"steps": 5, "bogus": 1}');
    await page.click('#job-submit');
    await page.waitForFunction(() => window.steer.dashError && window.steer.dashError.code === 'bad_field', null,
        { timeout: T });
    const refused = await page.textContent('#dash-error');
    tap.ok(/bogus/.test(refused) && /refused/.test(await page.textContent('#submit-status')),
        'a spec the server refuses: its error message shows', refused);
    const sub = jobSent.admin.filter((m) => m.op === 'submit');
    tap.ok(sub.length === 1 && sub[0].spec && sub[0].spec.steps === 5 && sub[0].spec.bogus === 1,
        'the spec goes out as a msgpack map', sub);

    // A job fine-tuning the served model: progress, losses, done, promoted as version 2.
    await page.evaluate(() => {
        // Every value the progress bars take, in order.
        window.__bars = [];
        new MutationObserver((records) => {
            for (const r of records) {
                const tr = r.target.closest('tr');
                if (r.target.tagName === 'PROGRESS' && tr) window.__bars.push([Number(tr.dataset.job), r.target.value]);
            }
        }).observe(document.querySelector('#jobs tbody'), { attributes: true, subtree: true, attributeFilter: ['value'] });
    });
    const specA = { init: base, steps: 30, batch: 16, save_every: 10, log_every: 5, eval_n: 300, fd_margin: 1000 };
    await page.fill('#job-spec', JSON.stringify(specA));
    await page.click('#job-submit');
    await page.waitForFunction(() => window.steer.lastSubmitted !== null, null, { timeout: T });
    const a = await page.evaluate(() => window.steer.lastSubmitted);
    tap.ok(/submitted job/.test(await page.textContent('#submit-status')) &&
        await page.isVisible(`#jobs tr[data-job="${a}"]`), 'the job is submitted and listed', a);
    tap.eq(await page.evaluate(() => window.steer.selectedJob), a, 'the submitted job is selected for the plot');
    await waitJob(a, (j) => j.step >= 10 && j.loss_d !== null);
    await page.waitForFunction((k) => (window.steer.jobLoss[k] || []).length >= 2, a, { timeout: T_JOB });
    await page.waitForFunction(plotPixels, ['#loss-plot', '--accent'], { timeout: T });
    await page.waitForFunction(plotPixels, ['#loss-plot', '--warn'], { timeout: T });
    tap.ok(true, 'the loss plot draws loss D and loss G');
    await waitJob(a, (j) => j.state === 'done' && j.model_version === 2);
    const losses = await page.evaluate((k) => window.steer.jobLoss[k], a);
    tap.ok(losses.length >= 3 && losses.every((p, i) => i === 0 || p.step > losses[i - 1].step) &&
        losses.every((p) => Number.isFinite(p.loss_d) && Number.isFinite(p.loss_g)),
        'window.steer.jobLoss holds the losses of every update, steps rising', losses);
    const bars = await page.evaluate((k) => window.__bars.filter(([id]) => id === k).map(([, v]) => v), a);
    tap.ok(bars.length >= 3 && bars.every((v, i) => i === 0 || v >= bars[i - 1]) &&
        new Set(bars.filter((v) => v > 0 && v < 30)).size >= 2 && bars[bars.length - 1] === 30,
        'the progress bar advances through the steps to 30', bars);
    const row = await page.$eval(`#jobs tr[data-job="${a}"]`, (tr) => ({
        state: tr.querySelector('.c-state').textContent, steps: tr.querySelector('.steps').textContent,
        max: tr.querySelector('progress').max, fd: tr.querySelector('.c-fd').textContent,
        parent: tr.querySelector('.c-parentFd').textContent, model: tr.querySelector('.c-model').textContent,
        ips: tr.querySelector('.c-ips').textContent, lossD: tr.querySelector('.c-lossD').textContent }));
    const ja = await job(a);
    tap.ok(row.state === 'done' && row.steps === '30/30' && row.max === 30 && row.model === 'v2' &&
        row.fd === ja.fd.toFixed(2) && row.parent === ja.parent_fd.toFixed(2) && row.ips !== '—' && row.lossD !== '—',
        'the row shows done, 30/30, images/s, losses, FD and parent FD, promoted as v2', { row, ja });
    tap.eq(JSON.stringify(await visibleOps(a)), '[]', 'a promoted done job has no pause/resume/cancel/promote button');
    await page.waitForFunction(plotPixels, ['#fd-plot', '--ok'], { timeout: T });
    tap.ok(true, 'the FD plot draws the promoted job\'s FD');

    // Version 2 is served: registry, header, frames; the viewer's page follows too.
    await page.waitForFunction(() => window.steer.models.length === 2, null, { timeout: T });
    const models = await page.evaluate(() => window.steer.models);
    tap.ok(models[1].version === 2 && models[1].parent === 1 && models[1].job === a &&
        /^[0-9a-f]{64}$/.test(models[1].sha256), 'window.steer.models: version 2, parent 1, from the job', models);
    await served(page, 2);
    tap.ok(true, 'the header says model version 2 and frames carry model_version 2');
    const m2 = await page.$eval('#models tr[data-version="2"]', (tr) => [...tr.children].map((td) => td.textContent));
    tap.ok(m2[0] === '2' && m2[1] === '1' && m2[2] === String(a) && m2[4] === models[1].sha256.slice(0, 12) &&
        await page.isVisible('#models tr[data-version="2"].served .badge') &&
        await page.isVisible('#models tr[data-version="1"] button[data-op="rollback"]'),
        'the models table: version 2 (parent 1, the job, short sha256) served; version 1 has Rollback', m2);
    await served(viewer, 2);
    tap.ok(true, 'the viewer\'s page shows version 2 and gets its frames');

    // Rollback to version 1 with the button.
    await page.click('#models tr[data-version="1"] button[data-op="rollback"]');
    await served(page, 1);
    tap.ok(await page.isVisible('#models tr[data-version="1"].served .badge') &&
        await page.isVisible('#models tr[data-version="2"] button[data-op="rollback"]'),
        'Rollback: version 1 is served again (header, frames, table)');
    tap.ok(jobSent.admin.some((m) => m.op === 'rollback' && m.version === 1), 'it sent rollback {version: 1}');
    await served(viewer, 1);
    tap.ok(true, 'the viewer\'s page follows the rollback');

    // A reload keeps the token and the open tab, and lists the job again.
    await page.reload();
    await page.waitForFunction(() => window.steer.admin === true && window.steer.jobs.length === 1 &&
        window.steer.models.length === 2, null, { timeout: T });
    tap.ok(await page.isVisible('#dash-body') && await page.inputValue('#admin-token') === TOKEN &&
        (await job(a)).state === 'done', 'after a reload: still admin, the job listed done');

    // The Promote button: a job submitted with promote false (promoting still takes the FD gate).
    const specC = { init: base, steps: 10, batch: 16, save_every: 0, eval_n: 300, fd_margin: 1000, promote: false };
    await page.fill('#job-spec', JSON.stringify(specC));
    await page.click('#job-submit');
    await page.waitForFunction(() => window.steer.lastSubmitted !== null, null, { timeout: T });
    const c = await page.evaluate(() => window.steer.lastSubmitted);
    await waitJob(c, (j) => j.state === 'done');
    tap.ok((await job(c)).model_version === 0 && JSON.stringify(await visibleOps(c)) === '["promote"]',
        'a done job that is not promoted shows only Promote', await job(c));
    tap.ok(/promote: false/.test(await page.textContent(`#jobs tr[data-job="${c}"] .c-message`)),
        'its message says why it was not promoted', await page.textContent(`#jobs tr[data-job="${c}"] .c-message`));
    await clickOp(c, 'promote');
    await waitJob(c, (j) => j.model_version === 3);
    await served(page, 3);
    tap.ok(await page.isVisible('#models tr[data-version="3"].served'), 'Promote: version 3 is registered and served');

    // A long job: pause, resume and cancel with its buttons.
    await page.fill('#job-spec', JSON.stringify({ config: 'tiny', steps: 100000, batch: 16, save_every: 10, eval_n: 0 }));
    await page.click('#job-submit');
    await page.waitForFunction((k) => window.steer.lastSubmitted !== k, c, { timeout: T });
    const l = await page.evaluate(() => window.steer.lastSubmitted);
    await waitJob(l, (j) => j.state === 'running' && j.message.startsWith('checkpoint'));
    tap.eq(JSON.stringify(await visibleOps(l)), '["pause","cancel"]', 'a running job shows Pause and Cancel');
    await clickOp(l, 'pause');
    await waitJob(l, (j) => j.state === 'paused');
    const paused = await job(l);
    tap.ok(paused.step >= 10 && await page.textContent(`#jobs tr[data-job="${l}"] .c-state`) === 'paused',
        'Pause: the job is paused after its checkpoint', paused);
    tap.eq(JSON.stringify(await visibleOps(l)), '["resume","cancel"]', 'a paused job shows Resume and Cancel');
    await clickOp(l, 'resume');
    await waitJob(l, (j) => j.state === 'running' && j.message.startsWith('running from step'));
    tap.eq((await job(l)).step, paused.step, 'Resume: it runs again from its checkpoint');
    await clickOp(l, 'cancel');
    await waitJob(l, (j) => j.state === 'cancelled');
    tap.ok(await page.textContent(`#jobs tr[data-job="${l}"] .c-state`) === 'cancelled' &&
        JSON.stringify(await visibleOps(l)) === '[]', 'Cancel: the job is cancelled, no button left');
    tap.ok(['pause', 'resume', 'cancel', 'promote'].every((op) =>
        jobSent.admin.some((m) => m.op === op && (m.id === l || m.id === c))), 'the buttons sent their ops with the job id');

    // The viewer: never an admin, never a job message, the normal page throughout.
    await viewer.click('#tab-training');
    tap.ok(await viewer.isHidden('#dash-body') && await viewer.evaluate(() => window.steer.admin === null) &&
        jobSent.viewer.length === 0, 'the viewer\'s Training tab asks for a token and sends no job message');
    await served(viewer, 3);
    tap.eq(await viewer.evaluate(() => window.steer.lastError), null, 'no error reached the viewer\'s page');
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
