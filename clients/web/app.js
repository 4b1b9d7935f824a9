// app.js: steer's browser client. It connects to the server that served the page over a WebSocket
// (`/ws`, subprotocol steer.v1, one msgpack map per binary message; docs/protocol.md), says hello,
// opens one stream at a time (a gallery of independent samples, a walk through latent space, or A/B
// pairs to choose between) and shows its PNG frames, gallery and walk paced to a target rate. What the
// user thinks of the frames goes back as `feedback` (thumbs, "more/less like this", "A or B?"), and
// the Learning panel shows what the server's policy made of it (`policy` messages). The Training tab
// (dashboard.js) is the admin's: this file hands it the `job` and `model` messages and job errors.
//
// Flow control: a gallery or walk stream holds at most `creditWindow()` frames granted-but-unreceived
// plus received-but-unpainted. Credit is handed back only when a frame is painted, so a tab that stops
// painting (hidden, slow) stops the server drawing for it instead of buffering without bound. A pair
// stream holds one pair on screen and at most one more (PAIR_AHEAD frames): two frames of credit are
// granted per answered pair, so pairs arrive only as fast as the user answers them.
//
// It is deliberately not a framework app: no build step, no dependencies beyond the msgpack library
// the server vends at /vendor/msgpack.min.js; the learning plot is drawn by hand on a canvas.
'use strict';

(function () {
    const PROTOCOL = 'steer.v1';
    const TILES = 16; // gallery: a 4x4 grid, refilled round-robin
    const BACKOFF_MIN_MS = 500;
    const BACKOFF_MAX_MS = 15000;
    const MAX_ERRORS_SHOWN = 8;
    const FPS_WINDOW_MS = 2000; // frames/s is counted over the last two seconds of paints
    const PAIR_AHEAD = 4; // pair mode's initial credit: the pair on screen and the next one
    const FEEDBACK_RESENDS = 3; // reconnects a feedback is sent again on before it counts as refused
    const POLICY_HISTORY = 2000; // policy messages kept for the plot (one per update of the policy)
    const FASHION_MNIST = ['T-shirt/top', 'Trouser', 'Pullover', 'Dress', 'Coat', 'Sandal', 'Shirt',
        'Sneaker', 'Bag', 'Ankle boot'];

    // The state tests read (tests/web/test_browser.mjs); the page updates it in place.
    const steer = {
        state: 'connecting', // connecting | hello | live | reconnecting
        framesReceived: 0, // frames of the current streams received, over the page's life
        framesShown: 0, // frames painted
        modelVersion: null, // from welcome, then from each frame's model_version
        model: null,
        lastError: null, // {source: 'server'|'client', code, msg, ref}
        mode: 'gallery',
        classId: -1,
        fps: 0,
        lastFrame: null, // {stream, frame, seq, class, mode} of the last painted frame
        closeCode: null, // code of the last WebSocket close
        feedbackSent: 0, // feedback messages sent (retries included)
        feedbackAcked: 0, // acks received: the server stored them
        lastFeedback: null, // the last feedback message sent (not a retry)
        policyVersion: null, // policy_version of the last painted frame
        pair: null, // the pair on screen: {pair, a, b} frame ids, null while none is
        pairsShown: 0,
        pairsAnswered: 0,
        policy: null, // the last `policy` message: how learning from this user goes
        policyHistory: [], // every `policy` message of the page's life, oldest first
        // dashboard.js adds admin, jobs, jobLoss, models, servedVersion, dashError, ... (see there)
    };
    window.steer = steer;

    const $ = (id) => document.getElementById(id);
    const el = {
        status: $('status'), statusText: $('status-text'),
        modelName: $('model-name'), modelVersion: $('model-version'),
        modelSize: $('model-size'), modelClasses: $('model-classes'),
        fps: $('fps'), gallery: $('gallery'), walk: $('walk'),
        walkCanvas: $('walk-canvas'), walkCaption: $('walk-caption'),
        pair: $('pair'), pairA: $('pair-a'), pairB: $('pair-b'),
        pairACaption: $('pair-a-caption'), pairBCaption: $('pair-b-caption'), pairStatus: $('pair-status'),
        answerButtons: document.querySelectorAll('[data-answer]'),
        policyVersion: $('policy-version'),
        learning: $('learning'), learnVersion: $('learn-version'), learnFeedback: $('learn-feedback'),
        learnComparisons: $('learn-comparisons'), learnAccuracy: $('learn-accuracy'), learnKl: $('learn-kl'),
        learnPlot: $('learn-plot'), classProbsBox: $('class-probs-box'), classProbs: $('class-probs'),
        classLabel: $('class-label'), classSelect: $('class-select'),
        speedLabel: $('speed-label'), speedSelect: $('speed-select'),
        errors: $('errors'), errorList: $('error-list'),
        modeButtons: document.querySelectorAll('[data-mode]'),
    };

    let ws = null; // the current socket; events of older sockets are ignored
    let welcome = null; // the server's welcome on the current socket
    // The open stream: {id, mode, outstanding, pending[], nextPaint}; pair mode adds pairs[] (arrived,
    // {id, a, b} slots) and current (the pair on screen).
    let stream = null;
    let nextStreamId = 1;
    let backoffMs = BACKOFF_MIN_MS;
    let reconnectTimer = 0;
    let targetFps = Number(el.speedSelect.value);
    let nextTile = 0;
    let walkFrame = null; // frame id of the walk image on screen
    const paintTimes = []; // performance.now() of recent paints, for frames/s
    const tiles = [];
    // Feedback not yet acknowledged, by id: {msg, onState, resends}. Sent again after a reconnect:
    // the server acknowledges an id it already stored, so a retry is safe.
    const unacked = new Map();
    let feedbackCounter = 0;
    let pairAnswer = 0; // number of the latest pair answer, whose state the pair status shows

    // ---- small helpers ----

    function setState(state, detail) {
        steer.state = state;
        el.status.dataset.state = state;
        el.statusText.textContent = detail ? state + ' (' + detail + ')' : state;
    }

    function className(k) {
        if (k === undefined || k === null || k < 0) return '';
        const m = steer.model;
        if (m && m.classes === FASHION_MNIST.length && /^fmnist/.test(m.name)) return FASHION_MNIST[k] || '';
        return 'class ' + k;
    }

    function showError(source, code, msg, ref) {
        const err = { source, code: String(code), msg: String(msg || ''), ref };
        steer.lastError = err;
        const li = document.createElement('li');
        const when = new Date().toLocaleTimeString();
        li.textContent = when + '  ' + (source === 'client' ? 'client: ' : '') + err.code +
            (err.msg ? ': ' + err.msg : '') + (ref !== undefined ? ' (stream ' + ref + ')' : '');
        el.errorList.prepend(li);
        while (el.errorList.children.length > MAX_ERRORS_SHOWN) el.errorList.lastChild.remove();
        el.errors.hidden = false;
        if (source === 'client') console.warn('steer:', err.code, err.msg);
    }

    function send(msg) {
        if (!ws || ws.readyState !== WebSocket.OPEN) return false;
        ws.send(MessagePack.encode(msg));
        return true;
    }

    // Frames ahead of the painter: enough to cover a quarter second of generation latency at the
    // target rate, never more than the server would queue for us.
    function creditWindow() {
        let n = Math.min(16, Math.max(2, Math.ceil(targetFps * 0.25)));
        if (welcome && welcome.limits) {
            const l = welcome.limits;
            if (l.queue_frames > 0) n = Math.min(n, l.queue_frames);
            if (l.max_credit > 0) n = Math.min(n, l.max_credit);
        }
        return n;
    }

    // ---- the page ----

    // ---- feedback ----

    function feedbackId() {
        feedbackCounter++;
        const rnd = (window.crypto && crypto.randomUUID) ? crypto.randomUUID()
            : Math.random().toString(36).slice(2) + Date.now().toString(36);
        return 'w-' + rnd + '-' + feedbackCounter;
    }

    // Sends feedback `body` ({kind, ...}) under a fresh id and keeps it until its ack. onState(state)
    // is told 'sent' now, 'saved' on the ack, 'failed' if it was refused on every resend.
    function sendFeedback(body, onState) {
        const msg = Object.assign({ t: 'feedback', id: feedbackId() }, body);
        unacked.set(msg.id, { msg, onState, resends: 0 });
        steer.lastFeedback = msg;
        onState('sent');
        if (send(msg)) steer.feedbackSent++;
        return msg;
    }

    // After a reconnect: everything not yet acknowledged goes again, whatever its kind. One the server
    // has not acknowledged after FEEDBACK_RESENDS sessions was refused (its error is in the panel).
    function resendFeedback() {
        for (const [id, p] of unacked) {
            if (p.resends >= FEEDBACK_RESENDS) {
                unacked.delete(id);
                p.onState('failed');
                continue;
            }
            p.resends++;
            if (send(p.msg)) steer.feedbackSent++;
        }
    }

    function onAck(id) {
        const p = unacked.get(id);
        if (!p) return;
        unacked.delete(id);
        steer.feedbackAcked++;
        p.onState('saved');
    }

    // Rates the frame frameOf() returns: value +1 or -1. The button shows the feedback's state for as
    // long as it names that frame (a gallery tile that gets a new frame clears it).
    function rate(frameOf, value, button) {
        const frame = frameOf();
        if (frame === null || frame === undefined) return;
        button.dataset.frame = String(frame);
        sendFeedback({ kind: 'rate', frame, value }, (state) => {
            if (button.dataset.frame === String(frame)) button.dataset.state = state;
        });
    }

    // choices: [label, value, title, element id or ''].
    function feedbackButtons(frameOf, choices) {
        const box = document.createElement('div');
        box.className = 'thumbs';
        for (const [label, value, title, id] of choices) {
            const b = document.createElement('button');
            b.type = 'button';
            b.textContent = label;
            b.title = title;
            if (id) b.id = id;
            b.dataset.value = String(value);
            b.addEventListener('click', () => rate(frameOf, value, b));
            box.append(b);
        }
        return box;
    }

    // ---- learning ----

    const isNum = (x) => typeof x === 'number' && Number.isFinite(x);

    function onPolicy(p) {
        if (!isNum(p.version) || !isNum(p.feedback) || !isNum(p.comparisons)) {
            showError('client', 'bad_policy', 'policy message without numeric version, feedback, comparisons');
            return;
        }
        steer.policy = p;
        steer.policyHistory.push(p);
        if (steer.policyHistory.length > POLICY_HISTORY) steer.policyHistory.shift();
        el.learning.hidden = false;
        el.learnVersion.textContent = String(p.version);
        el.learnFeedback.textContent = String(p.feedback);
        el.learnComparisons.textContent = String(p.comparisons);
        el.learnAccuracy.textContent = isNum(p.accuracy) ? (100 * p.accuracy).toFixed(1) + ' %' : '—';
        el.learnKl.textContent = isNum(p.kl) ? p.kl.toFixed(3) + ' nats' : '—';
        drawLearning();
        showClassProbs(p.class_probs);
    }

    // 1, 2 or 5 times a power of ten, at least x: a round top for the KL axis.
    function niceCeil(x) {
        if (!(x > 0)) return 0.1;
        const p = Math.pow(10, Math.floor(Math.log10(x)));
        for (const m of [1, 2, 5, 10]) if (m * p >= x) return m * p;
        return 10 * p;
    }

    function cssVar(name) {
        return getComputedStyle(document.documentElement).getPropertyValue(name).trim();
    }

    // The plot: held-out accuracy (0..100 %, left axis) and KL (nats, right axis, from 0 to a round
    // number above the largest seen) of every policy message so far, against its feedback count. The
    // canvas is twice its CSS size, so everything is drawn at scale 2 in CSS pixels. An unknown
    // accuracy leaves a gap in its line.
    function drawLearning() {
        const c = el.learnPlot;
        const ctx = c.getContext('2d');
        const W = c.width / 2, H = c.height / 2;
        const left = 38, right = 40, top = 8, bottom = 22;
        ctx.setTransform(2, 0, 0, 2, 0, 0);
        ctx.clearRect(0, 0, W, H);
        const hist = steer.policyHistory;
        let x0 = Infinity, x1 = -Infinity, klTop = 0;
        for (const p of hist) {
            x0 = Math.min(x0, p.feedback);
            x1 = Math.max(x1, p.feedback);
            if (isNum(p.kl)) klTop = Math.max(klTop, p.kl);
        }
        if (!(x0 <= x1)) { x0 = 0; x1 = 1; }
        if (x1 === x0) x1 = x0 + 1;
        klTop = niceCeil(klTop * 1.05);
        const px = (f) => left + (f - x0) / (x1 - x0) * (W - left - right);
        const pyAcc = (a) => top + (1 - a) * (H - top - bottom);
        const pyKl = (k) => top + (1 - k / klTop) * (H - top - bottom);

        const muted = cssVar('--muted'), grid = cssVar('--line');
        ctx.lineWidth = 1;
        ctx.font = '9px system-ui, sans-serif';
        ctx.textBaseline = 'middle';
        for (const f of [0, 0.5, 1]) {
            const y = pyAcc(f);
            ctx.strokeStyle = grid;
            ctx.beginPath();
            ctx.moveTo(left, y);
            ctx.lineTo(W - right, y);
            ctx.stroke();
            ctx.fillStyle = cssVar('--ok');
            ctx.textAlign = 'right';
            ctx.fillText((100 * f).toFixed(0) + '%', left - 4, y);
            ctx.fillStyle = cssVar('--warn');
            ctx.textAlign = 'left';
            ctx.fillText(String(+(klTop * f).toPrecision(3)), W - right + 4, y);
        }
        ctx.fillStyle = muted;
        ctx.textBaseline = 'top';
        ctx.textAlign = 'left';
        ctx.fillText(String(x0), left, H - bottom + 5);
        ctx.textAlign = 'right';
        ctx.fillText(String(x1), W - right, H - bottom + 5);
        ctx.textAlign = 'center';
        ctx.fillText('feedback', (left + W - right) / 2, H - bottom + 5);

        const series = (value, py, color) => {
            ctx.strokeStyle = color;
            ctx.fillStyle = color;
            ctx.lineWidth = 1.5;
            ctx.beginPath();
            let drawing = false;
            for (const p of hist) {
                const v = value(p);
                if (!isNum(v)) { drawing = false; continue; }
                if (drawing) ctx.lineTo(px(p.feedback), py(v));
                else ctx.moveTo(px(p.feedback), py(v));
                drawing = true;
            }
            ctx.stroke();
            for (const p of hist) {
                const v = value(p);
                if (isNum(v)) ctx.fillRect(px(p.feedback) - 1.5, py(v) - 1.5, 3, 3);
            }
        };
        series((p) => p.kl, pyKl, cssVar('--warn'));
        series((p) => p.accuracy, pyAcc, cssVar('--ok'));
        ctx.setTransform(1, 0, 0, 1, 0, 0);
    }

    // Conditional models: the policy's probability of each class, as bars scaled to the largest, with
    // a tick where the prior's uniform probability would be.
    function showClassProbs(probs) {
        const ok = Array.isArray(probs) && probs.length > 0 && probs.every(isNum);
        el.classProbsBox.hidden = !ok;
        el.classProbs.textContent = '';
        if (!ok) return;
        const most = Math.max(...probs) || 1;
        probs.forEach((p, k) => {
            const li = document.createElement('li');
            const name = document.createElement('span');
            name.className = 'name';
            name.textContent = className(k) || 'class ' + k;
            const track = document.createElement('span');
            track.className = 'track';
            const fill = document.createElement('span');
            fill.className = 'fill';
            fill.style.width = (100 * p / most).toFixed(1) + '%';
            const uniform = document.createElement('span');
            uniform.className = 'uniform';
            uniform.style.left = Math.min(100, 100 / probs.length / most).toFixed(1) + '%';
            track.append(fill, uniform);
            const value = document.createElement('span');
            value.className = 'p';
            value.textContent = (100 * p).toFixed(1) + '%';
            li.dataset.p = String(p);
            li.append(name, track, value);
            el.classProbs.append(li);
        });
    }

    function buildGallery(w, h) {
        el.gallery.textContent = '';
        tiles.length = 0;
        nextTile = 0;
        for (let i = 0; i < TILES; i++) {
            const fig = document.createElement('figure');
            fig.className = 'tile';
            const canvas = document.createElement('canvas');
            canvas.width = w;
            canvas.height = h;
            const cap = document.createElement('figcaption');
            const tile = { fig, canvas, cap, frame: null };
            const thumbs = feedbackButtons(() => tile.frame,
                [['\u{1F44D}', 1, 'more like this', ''], ['\u{1F44E}', -1, 'less like this', '']]);
            fig.append(canvas, cap, thumbs);
            el.gallery.append(fig);
            tiles.push(tile);
        }
    }

    function showModel(model) {
        steer.model = model;
        steer.modelVersion = model.version;
        el.modelName.textContent = model.name;
        el.modelVersion.textContent = String(model.version);
        el.modelSize.textContent = model.width + '×' + model.height + (model.channels === 1 ? ' gray' : ' RGB');
        el.modelClasses.textContent = model.classes > 0 ? String(model.classes) : 'unconditional';
        if (tiles.length === 0 || tiles[0].canvas.width !== model.width || tiles[0].canvas.height !== model.height)
            buildGallery(model.width, model.height);
        for (const c of [el.walkCanvas, el.pairA, el.pairB]) {
            c.width = model.width;
            c.height = model.height;
        }

        // The class selector: only for conditional models; keep the user's choice across reconnects.
        const sel = el.classSelect;
        while (sel.options.length > 1) sel.remove(1);
        for (let k = 0; k < model.classes; k++) sel.add(new Option(className(k), String(k)));
        if (steer.classId >= model.classes) steer.classId = -1;
        sel.value = String(steer.classId);
        el.classLabel.hidden = !(model.classes > 0);
    }

    function showMode(mode) {
        for (const b of el.modeButtons) b.setAttribute('aria-pressed', String(b.dataset.mode === mode));
        el.gallery.hidden = mode !== 'gallery';
        el.walk.hidden = mode !== 'walk';
        el.pair.hidden = mode !== 'pair';
        el.speedLabel.hidden = mode === 'pair'; // pairs come as fast as they are answered
    }

    // Draws bitmap bmp on canvas c, sized to it, with crisp pixels.
    function draw(c, bmp) {
        if (c.width !== bmp.width || c.height !== bmp.height) {
            c.width = bmp.width;
            c.height = bmp.height;
        }
        const ctx = c.getContext('2d');
        ctx.imageSmoothingEnabled = false;
        ctx.clearRect(0, 0, c.width, c.height);
        ctx.drawImage(bmp, 0, 0);
    }

    // Counts frame f as shown and shows the model and policy versions that drew it.
    function noteShown(f, mode) {
        steer.framesShown++;
        steer.lastFrame = { stream: f.stream, frame: f.frame, seq: f.seq, class: f.class, mode,
            policy_version: f.policy_version, model_version: f.model_version };
        if (typeof f.model_version === 'number' && f.model_version !== steer.modelVersion) {
            steer.modelVersion = f.model_version;
            el.modelVersion.textContent = String(f.model_version);
        }
        if (typeof f.policy_version === 'number' && f.policy_version !== steer.policyVersion) {
            steer.policyVersion = f.policy_version;
            el.policyVersion.textContent = String(f.policy_version);
        }
        paintTimes.push(performance.now());
    }

    function paint(s, slot) {
        const f = slot.msg;
        let canvas;
        if (s.mode === 'walk') {
            canvas = el.walkCanvas;
            walkFrame = f.frame;
            el.walkCaption.textContent = (className(f.class) ? className(f.class) + ' · ' : '') + 'frame ' + f.seq;
        } else {
            const tile = tiles[nextTile];
            nextTile = (nextTile + 1) % tiles.length;
            tile.frame = f.frame;
            for (const b of tile.fig.querySelectorAll('.thumbs button')) {
                delete b.dataset.state;
                delete b.dataset.frame;
            }
            tile.cap.textContent = className(f.class);
            tile.fig.dataset.filled = '1';
            canvas = tile.canvas;
        }
        draw(canvas, slot.bitmap);
        noteShown(f, s.mode);
    }

    function updateFps() {
        const now = performance.now();
        while (paintTimes.length && paintTimes[0] < now - FPS_WINDOW_MS) paintTimes.shift();
        const fps = paintTimes.length / (FPS_WINDOW_MS / 1000);
        steer.fps = fps;
        el.fps.textContent = fps.toFixed(1);
        el.fps.dataset.fps = String(fps);
    }

    // ---- pair mode ----

    function pairWaiting(text) {
        steer.pair = null;
        el.pair.dataset.state = 'waiting';
        for (const b of el.answerButtons) b.disabled = true;
        if (text) el.pairStatus.textContent = text;
    }

    // Files a pair frame under its pair (`pair` is the id of the A frame, `side` 0 for A, 1 for B).
    function pairFile(s, slot) {
        const f = slot.msg;
        const id = typeof f.pair === 'number' ? f.pair : f.frame;
        let p = s.pairs.find((q) => q.id === id);
        if (!p) {
            p = { id, a: null, b: null };
            s.pairs.push(p);
        }
        if (f.side === 1) p.b = slot;
        else p.a = slot;
    }

    // Shows the first pair that arrived, once both its frames are decoded and none is on screen.
    function pairAdvance(s) {
        while (!s.current && s.pairs.length) {
            const p = s.pairs[0];
            if (!p.a || !p.b || !p.a.ready || !p.b.ready) break;
            s.pairs.shift();
            if (!p.a.bitmap || !p.b.bitmap) { // a frame that did not decode: ask for another pair
                releasePair(p);
                grant(s, 2);
                continue;
            }
            draw(el.pairA, p.a.bitmap);
            draw(el.pairB, p.b.bitmap);
            releasePair(p);
            const a = p.a.msg, b = p.b.msg;
            noteShown(a, 'pair');
            noteShown(b, 'pair');
            el.pairACaption.textContent = 'A' + (className(a.class) ? ' · ' + className(a.class) : '');
            el.pairBCaption.textContent = 'B' + (className(b.class) ? ' · ' + className(b.class) : '');
            s.current = { pair: p.id, a: a.frame, b: b.frame };
            steer.pair = s.current;
            steer.pairsShown++;
            el.pair.dataset.state = 'ready';
            for (const btn of el.answerButtons) btn.disabled = false;
        }
        if (!s.current) pairWaiting();
    }

    // The user's answer on the pair on screen: 'a', 'b' or 'tie' ("can't tell": A over B, tie).
    // It goes out as pair feedback; the next pair shows at once if it is here, and two frames of
    // credit ask for the one after it.
    function pairAnswerSend(answer) {
        const s = stream;
        if (!s || s.mode !== 'pair' || !s.current) return;
        const p = s.current;
        s.current = null;
        const b = answer === 'b';
        const body = { kind: 'pair', winner: b ? p.b : p.a, loser: b ? p.a : p.b, tie: answer === 'tie' };
        const label = answer === 'tie' ? "can't tell" : (b ? 'B' : 'A') + ' preferred';
        const n = ++pairAnswer;
        steer.pairsAnswered++;
        sendFeedback(body, (state) => {
            if (n !== pairAnswer) return; // the status line shows the latest answer only
            el.pairStatus.dataset.state = state;
            el.pairStatus.textContent = label + ': ' + state;
        });
        grant(s, 2);
        pairAdvance(s);
    }

    // ---- streams and credit ----

    function releasePair(p) {
        for (const slot of [p.a, p.b]) {
            if (slot && slot.bitmap) {
                slot.bitmap.close();
                slot.bitmap = null;
            }
        }
    }

    // Closes the decoded frames a stream still holds.
    function releaseStream(s) {
        for (const slot of s.pending) if (slot.bitmap) slot.bitmap.close();
        s.pending.length = 0;
        for (const p of s.pairs) releasePair(p);
        s.pairs.length = 0;
    }

    function stopStream() {
        const s = stream;
        if (!s) return;
        stream = null;
        send({ t: 'stop', id: s.id });
        releaseStream(s);
    }

    function openStream() {
        stopStream();
        if (steer.mode === 'pair') pairWaiting('waiting for a pair');
        if (!welcome) return;
        const id = nextStreamId;
        nextStreamId = nextStreamId >= 0xffffffff ? 1 : nextStreamId + 1;
        let n = creditWindow();
        if (steer.mode === 'pair') {
            n = PAIR_AHEAD;
            if (welcome.limits && welcome.limits.max_credit > 0) n = Math.min(n, welcome.limits.max_credit);
        }
        const msg = { t: 'stream', id, mode: steer.mode, format: 'png', n };
        if (welcome.model.classes > 0) msg.class = steer.classId;
        stream = { id, mode: steer.mode, outstanding: n, pending: [], nextPaint: 0, pairs: [], current: null };
        send(msg);
    }

    function grant(s, n) {
        if (send({ t: 'credit', id: s.id, n })) s.outstanding += n;
    }

    // Hands back credit for frames painted (or dropped) so that granted + queued stays at the window;
    // credit goes out in batches of half a window to keep the message count down.
    function topUp(s) {
        const want = creditWindow() - s.outstanding - s.pending.length;
        if (want <= 0) return;
        if (want < Math.ceil(creditWindow() / 2) && s.outstanding > 0) return;
        grant(s, want);
    }

    function onFrame(f) {
        const s = stream;
        if (!s || f.stream !== s.id) return; // a frame of a stream we already stopped
        steer.framesReceived++;
        s.outstanding = Math.max(0, s.outstanding - 1);
        // Decodes run in parallel; the painter takes slots in arrival order once each is ready (pair
        // mode: whole pairs, as the user answers them).
        const slot = { msg: f, bitmap: null, ready: false };
        if (s.mode === 'pair') pairFile(s, slot);
        else s.pending.push(slot);
        const ready = () => {
            slot.ready = true;
            if (s.mode === 'pair') pairAdvance(s);
        };
        if (f.format !== 'png' || !(f.data instanceof Uint8Array)) {
            showError('client', 'bad_frame', 'frame ' + f.seq + ' is not a PNG', f.stream);
            ready();
            return;
        }
        createImageBitmap(new Blob([f.data], { type: 'image/png' })).then((bmp) => {
            if (stream !== s) { bmp.close(); return; }
            slot.bitmap = bmp;
            ready();
        }, (e) => {
            if (stream !== s) return;
            showError('client', 'bad_frame', 'frame ' + f.seq + ' does not decode: ' + e.message, f.stream);
            ready();
        });
    }

    function tick(now) {
        requestAnimationFrame(tick);
        const s = stream;
        if (!s || s.mode === 'pair' || !s.pending.length || !s.pending[0].ready || now < s.nextPaint) return;
        const interval = 1000 / targetFps;
        // Keep a steady cadence, but do not try to catch up after a stall.
        s.nextPaint = now - s.nextPaint > interval ? now + interval : s.nextPaint + interval;
        const slot = s.pending.shift();
        if (slot.bitmap) {
            paint(s, slot);
            slot.bitmap.close();
        }
        topUp(s);
    }

    // ---- the connection ----

    function wsUrl() {
        return (location.protocol === 'https:' ? 'wss://' : 'ws://') + location.host + '/ws';
    }

    // `?user=NAME` names who is steering; `#token=T` (a fragment, so it never reaches logs) is for a
    // server started with --token-file.
    function helloMessage() {
        const hello = { t: 'hello' };
        const user = new URLSearchParams(location.search).get('user');
        if (user !== null) {
            if (/^[A-Za-z0-9_.@-]{1,64}$/.test(user)) hello.user = user;
            else showError('client', 'bad_user', 'user must be 1..64 of A-Z a-z 0-9 _ . @ -; using anonymous');
        }
        let token = new URLSearchParams(location.hash.slice(1)).get('token');
        if (dashboard) token = dashboard.helloToken(token); // the admin token also admits
        if (token) hello.token = token;
        return hello;
    }

    function onMessage(sock, data) {
        if (typeof data === 'string') {
            showError('client', 'bad_message', 'text message from the server');
            return;
        }
        let msg;
        try {
            msg = MessagePack.decode(new Uint8Array(data));
        } catch (e) {
            showError('client', 'bad_message', 'undecodable message: ' + e.message);
            return;
        }
        if (!msg || typeof msg !== 'object' || Array.isArray(msg) || typeof msg.t !== 'string') {
            showError('client', 'bad_message', 'message is not a map with a string t');
            return;
        }
        switch (msg.t) {
        case 'welcome':
            if (msg.protocol !== PROTOCOL || !msg.model) {
                showError('client', 'bad_welcome', 'server speaks ' + msg.protocol);
                sock.close(1002);
                return;
            }
            welcome = msg;
            backoffMs = BACKOFF_MIN_MS;
            showModel(msg.model);
            setState('live', 'session ' + msg.session + ', ' + msg.user);
            resendFeedback();
            openStream();
            if (dashboard) dashboard.onWelcome(msg);
            break;
        case 'frame':
            onFrame(msg);
            break;
        case 'ack':
            onAck(msg.id);
            break;
        case 'policy':
            onPolicy(msg);
            break;
        case 'model':
            onModel(msg);
            break;
        case 'job':
            if (dashboard) dashboard.onJob(msg);
            break;
        case 'error':
            if (dashboard) dashboard.onError(msg, welcome !== null); // shown there as well as here
            showError('server', msg.code, msg.msg, msg.ref);
            break;
        default:
            break; // `stopped`, and message types newer than this page, need nothing from it
        }
    }

    // The served generator changed: frames drawn from now on carry this version.
    function onModel(m) {
        if (!isNum(m.version)) return;
        steer.modelVersion = m.version;
        if (steer.model) steer.model.version = m.version;
        el.modelVersion.textContent = String(m.version);
        if (dashboard) dashboard.onModel(m);
    }

    function scheduleReconnect() {
        clearTimeout(reconnectTimer);
        // Exponential backoff with jitter, so a restarted server is not hit by every page at once.
        const delay = backoffMs / 2 + Math.random() * backoffMs / 2;
        backoffMs = Math.min(BACKOFF_MAX_MS, backoffMs * 2);
        setState('reconnecting', 'in ' + (delay / 1000).toFixed(1) + ' s' +
            (steer.closeCode !== null ? ', closed ' + steer.closeCode : ''));
        reconnectTimer = setTimeout(connect, delay);
    }

    function connect() {
        setState('connecting');
        let sock;
        try {
            sock = new WebSocket(wsUrl(), PROTOCOL);
        } catch (e) {
            showError('client', 'connect', e.message);
            scheduleReconnect();
            return;
        }
        sock.binaryType = 'arraybuffer';
        ws = sock;
        welcome = null;
        sock.onopen = () => {
            if (sock !== ws) return;
            setState('hello');
            send(helloMessage());
        };
        sock.onmessage = (ev) => {
            if (sock === ws) onMessage(sock, ev.data);
        };
        sock.onclose = (ev) => {
            if (sock !== ws) return;
            dropSocket();
            steer.closeCode = ev.code;
            scheduleReconnect();
        };
        // An error is always followed by close, which reconnects.
        sock.onerror = () => {};
    }

    // Forgets the current socket and what streamed on it; its later events are ignored.
    function dropSocket() {
        ws = null;
        welcome = null;
        if (stream) releaseStream(stream);
        stream = null;
        if (steer.mode === 'pair') pairWaiting('waiting for a pair');
        if (dashboard) dashboard.onClose();
    }

    // A new session at once (the admin token changed): the old socket is closed, not waited for.
    function reconnectNow() {
        clearTimeout(reconnectTimer);
        const old = ws;
        dropSocket();
        if (old) old.close(1000);
        backoffMs = BACKOFF_MIN_MS;
        connect();
    }

    // ---- controls ----

    for (const b of el.modeButtons) {
        b.addEventListener('click', () => {
            if (steer.mode === b.dataset.mode) return;
            steer.mode = b.dataset.mode;
            showMode(steer.mode);
            openStream();
        });
    }
    el.classSelect.addEventListener('change', () => {
        steer.classId = Number(el.classSelect.value);
        openStream();
    });
    el.speedSelect.addEventListener('change', () => {
        targetFps = Number(el.speedSelect.value);
        if (stream && stream.mode !== 'pair') topUp(stream);
    });
    for (const b of el.answerButtons) b.addEventListener('click', () => pairAnswerSend(b.dataset.answer));
    // Pair mode's keys: left A, right B, down "can't tell" (not while a selector has the focus).
    document.addEventListener('keydown', (ev) => {
        if (steer.mode !== 'pair' || ev.altKey || ev.ctrlKey || ev.metaKey || ev.shiftKey) return;
        if (ev.target && /^(SELECT|INPUT|TEXTAREA)$/.test(ev.target.tagName)) return;
        const answer = { ArrowLeft: 'a', ArrowRight: 'b', ArrowDown: 'tie' }[ev.key];
        if (!answer) return;
        ev.preventDefault();
        pairAnswerSend(answer);
    });

    const dashboard = window.SteerDashboard ? window.SteerDashboard.create({ steer, send, reconnect: reconnectNow,
        niceCeil, cssVar }) : null;

    el.walk.append(feedbackButtons(() => walkFrame, [['More like this', 1, 'rate the image on screen +1', 'walk-more'],
        ['Less like this', -1, 'rate the image on screen -1', 'walk-less']]));
    showMode(steer.mode);
    connect();
    requestAnimationFrame(tick);
    setInterval(updateFps, 250);
})();
