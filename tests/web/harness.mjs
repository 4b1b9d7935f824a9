// harness.mjs — what the Node tests share: start a real `steer serve --port 0` and read its URL,
// stop it with SIGTERM and report its exit status, and a TAP reporter whose failures make the
// process exit non-zero. Environment as in tests/server/README.md.
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const ROOT = process.env.STEER_ROOT ||
    path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
export const BIN = process.env.STEER_BIN || path.join(ROOT, 'build', 'steer');

export class Tap {
    constructor() { this.n = 0; this.failed = 0; }
    ok(cond, what, detail) {
        this.n++;
        if (cond) console.log(`ok ${this.n} - ${what}`);
        else {
            this.failed++;
            console.log(`not ok ${this.n} - ${what}`);
            if (detail !== undefined) console.log(`#   ${JSON.stringify(detail)}`);
        }
        return cond;
    }
    eq(got, want, what) { return this.ok(got === want, what, { got, want }); }
    done() {
        console.log(`1..${this.n}`);
        console.log(`# ${this.n - this.failed} passed, ${this.failed} failed`);
        process.exitCode = this.failed || this.n === 0 ? 1 : 0;
    }
}

// Starts the server; resolves to {url, wsUrl, proc, log()} once it prints its URL.
export function startServer(args = [], timeoutMs = 60000) {
    return new Promise((resolve, reject) => {
        // A feedback store of its own, removed when the test process ends.
        const data = fs.mkdtempSync(path.join(os.tmpdir(), 'steer_data_'));
        process.on('exit', () => fs.rmSync(data, { recursive: true, force: true }));
        const proc = spawn(BIN, ['serve', '--port', '0', '--data', data, ...args], { cwd: ROOT });
        let out = '';
        const timer = setTimeout(() => {
            proc.kill('SIGKILL');
            reject(new Error('server did not start: ' + out));
        }, timeoutMs);
        const onData = (d) => {
            out += d;
            const m = /serving .* at (http:\/\/[0-9.]+:(\d+)\/)/.exec(out);
            if (m) {
                clearTimeout(timer);
                proc.stdout.off('data', onData);
                proc.stdout.resume();
                resolve({ url: m[1], wsUrl: m[1].replace('http', 'ws') + 'ws', proc, log: () => out });
            }
        };
        proc.stdout.on('data', onData);
        proc.stderr.on('data', (d) => { out += d; });
        proc.on('exit', (code) => {
            clearTimeout(timer);
            reject(new Error(`server exited ${code} before serving: ${out}`));
        });
        process.on('exit', () => { if (proc.exitCode === null) proc.kill('SIGKILL'); });
    });
}

// SIGTERM, then the exit code (null on a signal death); SIGKILL after timeoutMs.
export function stopServer(srv, timeoutMs = 30000) {
    return new Promise((resolve) => {
        if (srv.proc.exitCode !== null) return resolve(srv.proc.exitCode);
        const timer = setTimeout(() => srv.proc.kill('SIGKILL'), timeoutMs);
        srv.proc.removeAllListeners('exit');
        srv.proc.on('exit', (code) => { clearTimeout(timer); resolve(code); });
        srv.proc.kill('SIGTERM');
    });
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
