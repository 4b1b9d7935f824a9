// dashboard.js: the Training tab of steer's browser client, for admins. With the server's
// --admin-token-file token (typed once, kept in localStorage) the page says hello as an admin and
// drives background training through `job` messages (docs/protocol.md, docs/jobs.md): the jobs with
// their progress, losses and FD, live as the server's `job {op: "update"}` messages arrive; a loss plot
// of the selected job and an FD plot of the finished ones (drawn by hand on canvases); a form that
// submits a JSON spec; the model registry with rollback. Pause, resume, cancel and promote are buttons
// on each job, shown as its state allows.
//
// It is not a page of its own: app.js owns the WebSocket and hands this module the messages it does not
// handle itself (`job`, `model`, job errors) through the object create() returns. Without a token it
// sends nothing, so a viewer's page behaves exactly as without it. Loss history lives only in the
// page: it is collected from update messages while the page is open.
'use strict';

(function () {
    const TOKEN_KEY = 'steer.adminToken';
    const OPEN_KEY = 'steer.dashboardOpen';
    const LOSS_POINTS = 4000; // per job; past it every other point is dropped (the plot keeps its shape)
    const FD_JOBS = 24; // the FD plot shows the most recent finished jobs
    const SPEC_EXAMPLE = { config: 'tiny', steps: 200, batch: 16, save_every: 50, log_every: 10, eval_n: 500 };
    const isNum = (x) => typeof x === 'number' && Number.isFinite(x);

    function storageGet(key) {
        try { return window.localStorage.getItem(key); } catch (e) { return null; }
    }
    function storageSet(key, value) {
        try {
            if (value === null) window.localStorage.removeItem(key);
            else window.localStorage.setItem(key, value);
        } catch (e) { /* private mode: the token lasts as long as the page */ }
    }

    // app: {steer, send(msg) -> bool, reconnect(), niceCeil(x), cssVar(name)} from app.js.
    function create(app) {
        const steer = app.steer;
        const $ = (id) => document.getElementById(id);
        const el = {
            tab: $('tab-training'), box: $('dashboard'), body: $('dash-body'),
            adminForm: $('admin-form'), token: $('admin-token'), tokenClear: $('admin-token-clear'),
            adminStatus: $('admin-status'), error: $('dash-error'),
            jobs: document.querySelector('#jobs tbody'), jobsEmpty: $('jobs-empty'), jobsRefresh: $('jobs-refresh'),
            lossJob: $('loss-job'), lossPlot: $('loss-plot'), fdPlot: $('fd-plot'),
            submitForm: $('submit-form'), spec: $('job-spec'), submitStatus: $('submit-status'),
            models: document.querySelector('#models tbody'), modelsRefresh: $('models-refresh'),
            servedVersion: $('served-version'),
        };

        let token = storageGet(TOKEN_KEY) || '';
        let refusedAtHello = false; // the server (--token-file) closed a hello that carried the token
        let lastOp = null; // the last job op sent, to name the request an error answers
        let jobOpsSent = false; // a job message went out on this socket: ref-less bad_field errors are ours
        const jobs = new Map(); // id -> job object as the server last sent it
        const rows = new Map(); // id -> {tr, cells, buttons}
        let modelsPending = []; // `model` entries of a listing in progress
        let plotsDirty = false;

        Object.assign(steer, {
            admin: null, // null: not known (no token, or no answer yet); true: job messages answered; false: refused
            hasAdminToken: token !== '',
            dashboardOpen: false,
            jobs: [], // every job seen, newest first
            jobLoss: {}, // job id -> [{step, loss_d, loss_g}] collected from its messages
            selectedJob: null, // the job whose losses the plot shows
            models: [], // the registry's versions from the last `models` listing, oldest first
            servedVersion: null, // the version of the served generator
            dashError: null, // {code, msg, op}: the last error a job request got
            lastSubmitted: null, // id of the job the form submitted last
        });

        // ---- small helpers ----

        const fmt = (x, digits) => (isNum(x) ? x.toFixed(digits) : '—');

        function sendJob(op, fields) {
            lastOp = op;
            jobOpsSent = true;
            return app.send(Object.assign({ t: 'job', op }, fields || {}));
        }

        function setAdmin(value, detail) {
            steer.admin = value;
            el.adminStatus.dataset.state = value === true ? 'admin' : value === false ? 'refused' : (token ? 'waiting' : 'none');
            el.adminStatus.textContent = detail;
            el.body.hidden = value !== true;
        }

        function showDashError(code, msg, op) {
            steer.dashError = { code, msg, op };
            el.error.hidden = false;
            el.error.dataset.code = code;
            el.error.textContent = (op ? op + ': ' : '') + code + (msg ? ': ' + msg : '');
        }

        function clearDashError() {
            steer.dashError = null;
            el.error.hidden = true;
            el.error.textContent = '';
            delete el.error.dataset.code;
        }

        function setOpen(open) {
            steer.dashboardOpen = open;
            el.box.hidden = !open;
            el.tab.setAttribute('aria-pressed', String(open));
            storageSet(OPEN_KEY, open ? '1' : null);
            if (open) plotsDirty = true;
        }

        // ---- jobs ----

        // Adds a job's losses at its step to its history. A resumed job may report a step again (it
        // continues from its last checkpoint): the points past it are dropped.
        function collectLoss(j) {
            if (!isNum(j.step) || !isNum(j.loss_d) || !isNum(j.loss_g)) return;
            const h = steer.jobLoss[j.id] || (steer.jobLoss[j.id] = []);
            while (h.length && h[h.length - 1].step >= j.step) {
                if (h[h.length - 1].step === j.step && h[h.length - 1].loss_d === j.loss_d) return;
                h.pop();
            }
            h.push({ step: j.step, loss_d: j.loss_d, loss_g: j.loss_g });
            if (h.length > LOSS_POINTS) steer.jobLoss[j.id] = h.filter((p, i) => i % 2 === 0 || i === h.length - 1);
        }

        function makeRow(id) {
            const tr = document.createElement('tr');
            tr.dataset.job = String(id);
            const cells = {};
            for (const name of ['id', 'state', 'progress', 'ips', 'lossD', 'lossG', 'fd', 'parentFd', 'model',
                'message', 'actions']) {
                const td = document.createElement('td');
                td.className = 'c-' + name;
                cells[name] = td;
                tr.append(td);
            }
            cells.id.textContent = String(id);
            const wrap = document.createElement('div');
            wrap.className = 'progress';
            const bar = document.createElement('progress');
            const text = document.createElement('span');
            text.className = 'steps';
            wrap.append(bar, text);
            cells.progress.append(wrap);
            cells.bar = bar;
            cells.steps = text;
            const buttons = {};
            for (const [op, label] of [['pause', 'Pause'], ['resume', 'Resume'], ['cancel', 'Cancel'],
                ['promote', 'Promote']]) {
                const b = document.createElement('button');
                b.type = 'button';
                b.className = 'small';
                b.textContent = label;
                b.dataset.op = op;
                b.addEventListener('click', (ev) => {
                    ev.stopPropagation();
                    b.disabled = true; // until the job's next update or an error
                    clearDashError();
                    if (!sendJob(op, { id })) b.disabled = false;
                });
                buttons[op] = b;
                cells.actions.append(b);
            }
            tr.addEventListener('click', () => select(id));
            const row = { tr, cells, buttons };
            rows.set(id, row);
            return row;
        }

        // Which ops a job in this state takes (server/jobs.c says the same, and refuses the others).
        function allowed(j) {
            return {
                pause: j.state === 'queued' || j.state === 'running',
                resume: j.state === 'paused' || j.state === 'failed',
                cancel: j.state === 'queued' || j.state === 'running' || j.state === 'paused',
                promote: j.state === 'done' && !j.model_version,
            };
        }

        function renderRow(j) {
            const row = rows.get(j.id) || makeRow(j.id);
            const c = row.cells;
            row.tr.dataset.state = j.state;
            c.state.textContent = j.state;
            const steps = isNum(j.steps) && j.steps > 0 ? j.steps : 0;
            const step = isNum(j.step) ? j.step : 0;
            c.bar.max = steps || 1;
            c.bar.value = Math.min(step, steps || 1);
            // progressive growing: the resolution the job trains at, and its fade-in
            const grow = isNum(j.resolution) ? ' ' + j.resolution + 'px' +
                (isNum(j.alpha) && j.alpha < 1 ? ' α' + j.alpha.toFixed(2) : '') : '';
            c.steps.textContent = step + '/' + (steps || '?') + grow;
            c.progress.title = c.steps.textContent;
            c.ips.textContent = fmt(j.images_per_s, 0);
            c.lossD.textContent = fmt(j.loss_d, 3);
            c.lossG.textContent = fmt(j.loss_g, 3);
            c.fd.textContent = fmt(j.fd, 2);
            c.parentFd.textContent = fmt(j.parent_fd, 2);
            c.model.textContent = j.model_version ? 'v' + j.model_version : '—';
            c.message.textContent = j.message || '';
            c.message.title = j.message || '';
            const ok = allowed(j);
            for (const op in row.buttons) {
                row.buttons[op].hidden = !ok[op];
                row.buttons[op].disabled = false;
            }
        }

        // Rows in id order, newest first; existing rows are moved, not rebuilt.
        function renderJobs() {
            steer.jobs = [...jobs.values()].sort((a, b) => b.id - a.id);
            for (const j of steer.jobs) el.jobs.append(rows.get(j.id).tr);
            el.jobsEmpty.hidden = steer.jobs.length > 0;
        }

        function select(id) {
            steer.selectedJob = id;
            for (const [k, row] of rows) row.tr.classList.toggle('selected', k === id);
            el.lossJob.textContent = id === null ? '–' : String(id);
            plotsDirty = true;
        }

        function onJobObject(j, op) {
            if (!j || !isNum(j.id)) return;
            const before = jobs.get(j.id);
            // The submit answer comes after the row's COMMIT and may trail the job's first update.
            if (op === 'submit' && before) return;
            jobs.set(j.id, j);
            collectLoss(j);
            renderRow(j);
            if (!before) renderJobs();
            else steer.jobs = [...jobs.values()].sort((a, b) => b.id - a.id);
            if (steer.selectedJob === null) select(j.id);
            // A promotion registers a version: the registry listing is stale.
            if (before && j.model_version && before.model_version !== j.model_version) sendJob('models');
            plotsDirty = true;
        }

        // ---- models ----

        function renderModels() {
            el.models.textContent = '';
            for (const m of steer.models) {
                const tr = document.createElement('tr');
                tr.dataset.version = String(m.version);
                const cells = [m.version, m.parent || '—', m.job || '—', fmt(m.fd, 2),
                    typeof m.sha256 === 'string' ? m.sha256.slice(0, 12) : '—'];
                for (const v of cells) {
                    const td = document.createElement('td');
                    td.textContent = String(v);
                    tr.append(td);
                }
                tr.children[4].title = (m.sha256 || '') + (m.path ? '\n' + m.path : '');
                tr.children[4].className = 'mono';
                const act = document.createElement('td');
                const badge = document.createElement('span');
                badge.className = 'badge';
                badge.textContent = 'served';
                const b = document.createElement('button');
                b.type = 'button';
                b.className = 'small';
                b.dataset.op = 'rollback';
                b.textContent = 'Rollback';
                b.title = 'serve version ' + m.version + ' again';
                b.addEventListener('click', () => {
                    b.disabled = true;
                    clearDashError();
                    if (sendJob('rollback', { version: m.version })) el.servedVersion.textContent =
                        steer.servedVersion + ' (rolling back to ' + m.version + ')';
                    else b.disabled = false;
                });
                act.append(badge, b);
                tr.append(act);
                el.models.append(tr);
            }
            markServed();
        }

        function markServed() {
            const v = steer.servedVersion;
            el.servedVersion.textContent = v === null ? '–' : String(v);
            for (const tr of el.models.children) {
                const served = Number(tr.dataset.version) === v;
                tr.classList.toggle('served', served);
                tr.querySelector('.badge').hidden = !served;
                const b = tr.querySelector('button');
                b.hidden = served;
                b.disabled = false;
            }
        }

        function setServed(v) {
            if (!isNum(v) || v <= 0) return;
            steer.servedVersion = v;
            markServed();
        }

        // ---- plots ----

        // Axes shared by both plots: horizontal grid lines at three values of [y0, y1] labelled on
        // the left. The canvas is twice its CSS size, so everything is drawn at scale 2.
        function frame(c, y0, y1, box) {
            const ctx = c.getContext('2d');
            const W = c.width / 2, H = c.height / 2;
            ctx.setTransform(2, 0, 0, 2, 0, 0);
            ctx.clearRect(0, 0, W, H);
            ctx.lineWidth = 1;
            ctx.font = '9px system-ui, sans-serif';
            ctx.textBaseline = 'middle';
            ctx.textAlign = 'right';
            const py = (v) => box.top + (1 - (v - y0) / (y1 - y0)) * (H - box.top - box.bottom);
            for (const f of [0, 0.5, 1]) {
                const v = y0 + f * (y1 - y0), y = py(v);
                ctx.strokeStyle = app.cssVar('--line');
                ctx.beginPath();
                ctx.moveTo(box.left, y);
                ctx.lineTo(W - box.right, y);
                ctx.stroke();
                ctx.fillStyle = app.cssVar('--muted');
                ctx.fillText(String(+v.toPrecision(3)), box.left - 4, y);
            }
            return { ctx, W, H, py };
        }

        // loss_d and loss_g of the selected job against its step, from 0 to the last step reported (a
        // long job's curve would otherwise be squeezed against the left edge).
        function drawLoss() {
            const c = el.lossPlot;
            const id = steer.selectedJob;
            const h = (id !== null && steer.jobLoss[id]) || [];
            const j = id !== null ? jobs.get(id) : null;
            let y0 = Infinity, y1 = -Infinity;
            for (const p of h) {
                y0 = Math.min(y0, p.loss_d, p.loss_g);
                y1 = Math.max(y1, p.loss_d, p.loss_g);
            }
            if (!(y0 <= y1)) { y0 = 0; y1 = 1; }
            const pad = Math.max(0.05, (y1 - y0) * 0.08);
            y0 -= pad;
            y1 += pad;
            const box = { left: 40, right: 10, top: 8, bottom: 20 };
            const { ctx, W, H, py } = frame(c, y0, y1, box);
            let x1 = h.length ? h[h.length - 1].step : (j && isNum(j.steps) && j.steps > 0 ? j.steps : 1);
            if (!(x1 > 0)) x1 = 1;
            const px = (s) => box.left + s / x1 * (W - box.left - box.right);
            ctx.fillStyle = app.cssVar('--muted');
            ctx.textBaseline = 'top';
            ctx.textAlign = 'left';
            ctx.fillText('0', box.left, H - box.bottom + 5);
            ctx.textAlign = 'right';
            ctx.fillText(String(x1), W - box.right, H - box.bottom + 5);
            ctx.textAlign = 'center';
            ctx.fillText(h.length ? 'step' : 'no losses yet', (box.left + W - box.right) / 2, H - box.bottom + 5);
            for (const [key, color] of [['loss_d', app.cssVar('--accent')], ['loss_g', app.cssVar('--warn')]]) {
                ctx.strokeStyle = color;
                ctx.fillStyle = color;
                ctx.lineWidth = 1.5;
                ctx.beginPath();
                h.forEach((p, i) => (i ? ctx.lineTo(px(p.step), py(p[key])) : ctx.moveTo(px(p.step), py(p[key]))));
                ctx.stroke();
                if (h.length <= 200) for (const p of h) ctx.fillRect(px(p.step) - 1.5, py(p[key]) - 1.5, 3, 3);
            }
            ctx.setTransform(1, 0, 0, 1, 0, 0);
        }

        // Each finished job with an FD: its parent's FD and its own side by side (green when promoted),
        // on a common axis from 0.
        function drawFd() {
            const c = el.fdPlot;
            const done = steer.jobs.filter((j) => isNum(j.fd)).sort((a, b) => a.id - b.id).slice(-FD_JOBS);
            let top = 0;
            for (const j of done) top = Math.max(top, j.fd, isNum(j.parent_fd) ? j.parent_fd : 0);
            top = app.niceCeil(top * 1.05);
            const box = { left: 40, right: 10, top: 8, bottom: 20 };
            const { ctx, W, H, py } = frame(c, 0, top, box);
            const slot = (W - box.left - box.right) / Math.max(done.length, 4);
            const bw = Math.min(18, slot * 0.35);
            ctx.textBaseline = 'top';
            ctx.textAlign = 'center';
            done.forEach((j, i) => {
                const x = box.left + slot * (i + 0.5);
                if (isNum(j.parent_fd)) {
                    ctx.fillStyle = app.cssVar('--muted');
                    ctx.fillRect(x - bw - 1, py(j.parent_fd), bw, py(0) - py(j.parent_fd));
                }
                ctx.fillStyle = app.cssVar(j.model_version ? '--ok' : '--accent');
                ctx.fillRect(x + 1, py(j.fd), bw, py(0) - py(j.fd));
                ctx.fillStyle = app.cssVar('--muted');
                ctx.fillText('job ' + j.id, x, H - box.bottom + 5);
            });
            if (!done.length) {
                ctx.fillStyle = app.cssVar('--muted');
                ctx.fillText('no finished job with an FD yet', (box.left + W - box.right) / 2, H - box.bottom + 5);
            }
            ctx.setTransform(1, 0, 0, 1, 0, 0);
        }

        // Updates can come many times a second; the plots are drawn at most once per animation frame.
        function drawPlots() {
            requestAnimationFrame(drawPlots);
            if (!plotsDirty || el.box.hidden || el.body.hidden) return;
            plotsDirty = false;
            drawLoss();
            drawFd();
        }

        // ---- controls ----

        el.token.value = token;
        el.spec.value = JSON.stringify(SPEC_EXAMPLE, null, 2);
        el.tab.addEventListener('click', () => setOpen(!steer.dashboardOpen));
        el.adminForm.addEventListener('submit', (ev) => {
            ev.preventDefault();
            token = el.token.value.trim();
            storageSet(TOKEN_KEY, token || null);
            steer.hasAdminToken = token !== '';
            refusedAtHello = false;
            clearDashError();
            setAdmin(null, token ? 'connecting as admin…' : 'no admin token');
            app.reconnect();
        });
        el.tokenClear.addEventListener('click', () => {
            el.token.value = '';
            el.adminForm.requestSubmit();
        });
        el.jobsRefresh.addEventListener('click', () => sendJob('list'));
        el.modelsRefresh.addEventListener('click', () => sendJob('models'));
        el.submitForm.addEventListener('submit', (ev) => {
            ev.preventDefault();
            clearDashError();
            let spec;
            try {
                spec = JSON.parse(el.spec.value);
            } catch (e) {
                showDashError('bad_json', 'the spec is not JSON: ' + e.message, 'submit');
                return;
            }
            if (!spec || typeof spec !== 'object' || Array.isArray(spec)) {
                showDashError('bad_json', 'the spec must be a JSON object {"key": value, ...}', 'submit');
                return;
            }
            if (sendJob('submit', { spec })) {
                el.submitStatus.textContent = 'submitting…';
                el.submitStatus.dataset.state = 'sent';
            } else {
                showDashError('offline', 'not connected', 'submit');
            }
        });

        setAdmin(null, token ? 'admin token set' : 'no admin token');
        setOpen(storageGet(OPEN_KEY) === '1');
        requestAnimationFrame(drawPlots);

        // ---- what app.js calls ----

        return {
            // The token hello carries: the admin token unless the server refused it at hello.
            helloToken(fallback) {
                return token && !refusedAtHello ? token : fallback;
            },

            onWelcome(w) {
                jobOpsSent = false;
                setServed(w.model && w.model.version);
                if (!token || refusedAtHello) {
                    setAdmin(refusedAtHello ? false : null, refusedAtHello ? 'token refused at hello' :
                        'no admin token');
                    return;
                }
                if (steer.admin !== true) setAdmin(null, 'asking the server…');
                sendJob('list');
                sendJob('models');
            },

            // The tables stay as they are while the page reconnects; the listing refreshes them.
            onClose() {
                if (steer.admin === true) el.adminStatus.textContent = 'admin (reconnecting…)';
            },

            onJob(m) {
                if (steer.admin !== true) clearDashError();
                if (el.adminStatus.textContent !== 'admin') setAdmin(true, 'admin');
                switch (m.op) {
                case 'submit':
                    onJobObject(m.job, 'submit');
                    if (m.job && isNum(m.job.id)) {
                        steer.lastSubmitted = m.job.id;
                        el.submitStatus.textContent = 'submitted job ' + m.job.id;
                        el.submitStatus.dataset.state = 'saved';
                        select(m.job.id);
                    }
                    break;
                case 'list':
                case 'update':
                    if (m.job) onJobObject(m.job, m.op);
                    else setServed(m.served); // the end of a listing: {count, served}
                    break;
                case 'model':
                    if (m.model && isNum(m.model.version)) modelsPending.push(m.model);
                    break;
                case 'models':
                    steer.models = modelsPending.sort((a, b) => a.version - b.version);
                    modelsPending = [];
                    steer.servedVersion = isNum(m.served) ? m.served : steer.servedVersion;
                    renderModels();
                    plotsDirty = true;
                    break;
                case 'rollback':
                    break; // the load started; `model {version}` follows once it is served
                default:
                    break;
                }
            },

            // The served generator changed (every session gets this, admin or not).
            onModel(m) {
                setServed(m.version);
                if (steer.admin === true) sendJob('models');
            },

            // A server error: true when it answers a job request (it is then shown on the dashboard).
            onError(m, welcomed) {
                const code = String(m.code);
                if (!welcomed) {
                    if (code === 'unauthorized' && token && !refusedAtHello) {
                        refusedAtHello = true; // the next hello goes without it, so the page still works
                        setAdmin(false, 'token refused');
                        showDashError(code, (m.msg || '') + ' (the admin token was refused at hello)', 'hello');
                        return true;
                    }
                    return false;
                }
                const ours = code === 'unauthorized' || code === 'not_implemented' ||
                    (jobOpsSent && m.ref === undefined &&
                        (code === 'bad_field' || code === 'shutting_down' ||
                         (code === 'internal' && /^(model version|job)/.test(String(m.msg)))));
                if (!ours) return false;
                if (code === 'unauthorized' || code === 'not_implemented')
                    setAdmin(false, code === 'unauthorized' ? 'not an admin: token refused' : 'jobs are off on this server');
                if (lastOp === 'submit') {
                    el.submitStatus.textContent = 'refused';
                    el.submitStatus.dataset.state = 'failed';
                }
                showDashError(code, m.msg, /^model version/.test(String(m.msg)) ? 'rollback' : lastOp);
                for (const j of jobs.values()) renderRow(j); // re-enables the clicked button
                markServed();
                return true;
            },
        };
    }

    window.SteerDashboard = { create };
})();
