// app.js: steer's browser client. It connects to the server that served the page over a WebSocket
// (`/ws`, subprotocol steer.v1, one msgpack map per binary message; docs/protocol.md), says hello,
// opens one stream at a time (a gallery of independent samples, or a walk through latent space) and
// shows its PNG frames, paced to a target rate.
//
// Flow control: a stream holds at most `creditWindow()` frames granted-but-unreceived plus
// received-but-unpainted. Credit is handed back only when a frame is painted, so a tab that stops
// painting (hidden, slow) stops the server drawing for it instead of buffering without bound.
//
// It is deliberately not a framework app: no build step, no dependencies beyond the msgpack library
// the server vends at /vendor/msgpack.min.js. Feedback controls arrive with the feedback messages.
'use strict';

(function () {
    const PROTOCOL = 'steer.v1';
    const TILES = 16; // gallery: a 4x4 grid, refilled round-robin
    const BACKOFF_MIN_MS = 500;
    const BACKOFF_MAX_MS = 15000;
    const MAX_ERRORS_SHOWN = 8;
    const FPS_WINDOW_MS = 2000; // frames/s is counted over the last two seconds of paints
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
    };
    window.steer = steer;

    const $ = (id) => document.getElementById(id);
    const el = {
        status: $('status'), statusText: $('status-text'),
        modelName: $('model-name'), modelVersion: $('model-version'),
        modelSize: $('model-size'), modelClasses: $('model-classes'),
        fps: $('fps'), gallery: $('gallery'), walk: $('walk'),
        walkCanvas: $('walk-canvas'), walkCaption: $('walk-caption'),
        classLabel: $('class-label'), classSelect: $('class-select'), speedSelect: $('speed-select'),
        errors: $('errors'), errorList: $('error-list'),
        modeButtons: document.querySelectorAll('[data-mode]'),
    };

    let ws = null; // the current socket; events of older sockets are ignored
    let welcome = null; // the server's welcome on the current socket
    let stream = null; // the open stream: {id, mode, outstanding, pending[], nextPaint}
    let nextStreamId = 1;
    let backoffMs = BACKOFF_MIN_MS;
    let reconnectTimer = 0;
    let targetFps = Number(el.speedSelect.value);
    let nextTile = 0;
    let walkFrame = null; // frame id of the walk image on screen
    const paintTimes = []; // performance.now() of recent paints, for frames/s
    const tiles = [];
    // Feedback not yet acknowledged, by id: {msg, button}. Sent again after a reconnect: the server
    // acknowledges an id it already stored, so a retry is safe.
    const unacked = new Map();
    let feedbackCounter = 0;

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

    // Rates the frame frameOf() returns: +1 or -1. The button shows `sent` until the ack comes.
    function rate(frameOf, value, button) {
        const frame = frameOf();
        if (frame === null || frame === undefined) return;
        const msg = { t: 'feedback', id: feedbackId(), kind: 'rate', frame, value };
        unacked.set(msg.id, { msg, button });
        button.dataset.state = 'sent';
        if (send(msg)) steer.feedbackSent++;
    }

    function feedbackButtons(frameOf) {
        const box = document.createElement('div');
        box.className = 'thumbs';
        for (const [label, value, title] of [['\u{1F44D}', 1, 'more like this'], ['\u{1F44E}', -1, 'less like this']]) {
            const b = document.createElement('button');
            b.type = 'button';
            b.textContent = label;
            b.title = title;
            b.dataset.value = String(value);
            b.addEventListener('click', () => rate(frameOf, value, b));
            box.append(b);
        }
        return box;
    }

    function onAck(id) {
        const p = unacked.get(id);
        if (!p) return;
        unacked.delete(id);
        steer.feedbackAcked++;
        if (p.button) p.button.dataset.state = 'saved';
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
            const tile = { fig, canvas, cap, ctx: canvas.getContext('2d'), frame: null };
            const thumbs = feedbackButtons(() => tile.frame);
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
        el.walkCanvas.width = model.width;
        el.walkCanvas.height = model.height;

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
    }

    function paint(s, slot) {
        const f = slot.msg;
        const bmp = slot.bitmap;
        let target;
        if (s.mode === 'walk') {
            target = { canvas: el.walkCanvas, ctx: el.walkCanvas.getContext('2d') };
            walkFrame = f.frame;
            el.walkCaption.textContent = (className(f.class) ? className(f.class) + ' · ' : '') + 'frame ' + f.seq;
        } else {
            target = tiles[nextTile];
            nextTile = (nextTile + 1) % tiles.length;
            target.frame = f.frame;
            for (const b of target.fig.querySelectorAll('.thumbs button')) delete b.dataset.state;
            target.cap.textContent = className(f.class);
            target.fig.dataset.filled = '1';
        }
        const c = target.canvas;
        if (c.width !== bmp.width || c.height !== bmp.height) {
            c.width = bmp.width;
            c.height = bmp.height;
        }
        target.ctx.imageSmoothingEnabled = false;
        target.ctx.clearRect(0, 0, c.width, c.height);
        target.ctx.drawImage(bmp, 0, 0);
        steer.framesShown++;
        steer.lastFrame = { stream: f.stream, frame: f.frame, seq: f.seq, class: f.class, mode: s.mode };
        if (typeof f.model_version === 'number' && f.model_version !== steer.modelVersion) {
            steer.modelVersion = f.model_version;
            el.modelVersion.textContent = String(f.model_version);
        }
        paintTimes.push(performance.now());
    }

    function updateFps() {
        const now = performance.now();
        while (paintTimes.length && paintTimes[0] < now - FPS_WINDOW_MS) paintTimes.shift();
        const fps = paintTimes.length / (FPS_WINDOW_MS / 1000);
        steer.fps = fps;
        el.fps.textContent = fps.toFixed(1);
        el.fps.dataset.fps = String(fps);
    }

    // ---- streams and credit ----

    function stopStream() {
        const s = stream;
        if (!s) return;
        stream = null;
        send({ t: 'stop', id: s.id });
        for (const slot of s.pending) if (slot.bitmap) slot.bitmap.close();
        s.pending.length = 0;
    }

    function openStream() {
        stopStream();
        if (!welcome) return;
        const id = nextStreamId;
        nextStreamId = nextStreamId >= 0xffffffff ? 1 : nextStreamId + 1;
        const n = creditWindow();
        const msg = { t: 'stream', id, mode: steer.mode, format: 'png', n };
        if (welcome.model.classes > 0) msg.class = steer.classId;
        stream = { id, mode: steer.mode, outstanding: n, pending: [], nextPaint: 0 };
        send(msg);
    }

    // Hands back credit for frames painted (or dropped) so that granted + queued stays at the window;
    // credit goes out in batches of half a window to keep the message count down.
    function topUp(s) {
        const want = creditWindow() - s.outstanding - s.pending.length;
        if (want <= 0) return;
        if (want < Math.ceil(creditWindow() / 2) && s.outstanding > 0) return;
        if (send({ t: 'credit', id: s.id, n: want })) s.outstanding += want;
    }

    function onFrame(f) {
        const s = stream;
        if (!s || f.stream !== s.id) return; // a frame of a stream we already stopped
        steer.framesReceived++;
        s.outstanding = Math.max(0, s.outstanding - 1);
        // Decodes run in parallel; the painter takes slots in arrival order once each is ready.
        const slot = { msg: f, bitmap: null, ready: false };
        s.pending.push(slot);
        if (f.format !== 'png' || !(f.data instanceof Uint8Array)) {
            showError('client', 'bad_frame', 'frame ' + f.seq + ' is not a PNG', f.stream);
            slot.ready = true;
            return;
        }
        createImageBitmap(new Blob([f.data], { type: 'image/png' })).then((bmp) => {
            if (stream !== s) { bmp.close(); return; }
            slot.bitmap = bmp;
            slot.ready = true;
        }, (e) => {
            if (stream !== s) return;
            showError('client', 'bad_frame', 'frame ' + f.seq + ' does not decode: ' + e.message, f.stream);
            slot.ready = true;
        });
    }

    function tick(now) {
        requestAnimationFrame(tick);
        const s = stream;
        if (!s || !s.pending.length || !s.pending[0].ready || now < s.nextPaint) return;
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
        const token = new URLSearchParams(location.hash.slice(1)).get('token');
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
            for (const p of unacked.values()) if (send(p.msg)) steer.feedbackSent++;
            openStream();
            break;
        case 'frame':
            onFrame(msg);
            break;
        case 'ack':
            onAck(msg.id);
            break;
        case 'error':
            showError('server', msg.code, msg.msg, msg.ref);
            break;
        default:
            break; // `stopped`, and message types newer than this page, need nothing from it
        }
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
            ws = null;
            welcome = null;
            stream && stream.pending.forEach((slot) => slot.bitmap && slot.bitmap.close());
            stream = null;
            steer.closeCode = ev.code;
            scheduleReconnect();
        };
        // An error is always followed by close, which reconnects.
        sock.onerror = () => {};
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
        if (stream) topUp(stream);
    });

    el.walk.append(feedbackButtons(() => walkFrame));
    showMode(steer.mode);
    connect();
    requestAnimationFrame(tick);
    setInterval(updateFps, 250);
})();
