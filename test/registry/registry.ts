// A real OCI registry for tests: Debian's docker-registry (CNCF distribution 2.8) on 127.0.0.1 with
// filesystem storage in a temp dir, in one of three auth modes (none, htpasswd Basic, token auth
// with our own issuer from token-server.ts). In front of it sits a small HTTP forwarder that counts
// the body bytes each way (what a client really moved) and can inject faults (5xx, a connection cut
// mid-body). The registry's own access log is kept too (`accessLog()`).
import { type ChildProcess, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { createWriteStream } from 'node:fs';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { createServer, type IncomingMessage, request, type Server } from 'node:http';
import { type AddressInfo, createServer as netServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { execa } from 'execa';
import { startTokenServer, type TokenServer } from './token-server';

export type AuthMode = 'none' | 'htpasswd' | 'token';

/** What the forwarder does with one request: answer it with a status, or cut the response body. */
export type Fault = { status: number } | { cutAfterBytes: number } | { delayMs: number } | undefined;

export interface TestRegistry {
  /** host:port clients use (the forwarder). */
  host: string;
  /** Where the registry keeps blobs (to corrupt one in a test). */
  storageDir: string;
  user: string;
  password: string;
  /** Bytes of request bodies received and response bodies sent, and requests seen, since reset. */
  traffic(): { up: number; down: number; requests: Array<{ method: string; path: string; status: number }> };
  resetTraffic(): void;
  /** Called for each request; return a fault to inject it. */
  fault?: (req: IncomingMessage) => Fault;
  accessLog(): Promise<string>;
  /** Path of a stored blob's data file. */
  blobPath(digest: string): string;
  stop(): Promise<void>;
}

async function freePort(): Promise<number> {
  const s = netServer();
  await new Promise<void>((ok) => s.listen(0, '127.0.0.1', ok));
  const port = (s.address() as AddressInfo).port;
  await new Promise((ok) => s.close(ok));
  return port;
}

async function waitForHttp(url: string, child: ChildProcess, log: string): Promise<void> {
  for (let i = 0; i < 300; i++) {
    if (child.exitCode !== null) throw new Error(`docker-registry exited: ${await readFile(log, 'utf8')}`);
    try {
      await fetch(url);
      return;
    } catch {
      await sleep(100);
    }
  }
  throw new Error(`docker-registry did not answer on ${url}`);
}

export async function startRegistry(opts: { auth?: AuthMode } = {}): Promise<TestRegistry> {
  const auth = opts.auth ?? 'none';
  const dir = await mkdtemp(join(tmpdir(), 'ov-registry-'));
  const storageDir = join(dir, 'storage');
  const user = 'tester';
  const password = randomBytes(9).toString('base64url');
  let tokens: TokenServer | undefined;
  let authYaml = '';
  if (auth === 'htpasswd') {
    const { stdout } = await execa('htpasswd', ['-Bbn', user, password]);
    await writeFile(join(dir, 'htpasswd'), `${stdout.trim()}\n`);
    authYaml = `auth:\n  htpasswd:\n    realm: test-registry\n    path: ${join(dir, 'htpasswd')}\n`;
  } else if (auth === 'token') {
    tokens = await startTokenServer({ dir, user, password, service: 'test-registry' });
    authYaml = [
      'auth:',
      '  token:',
      `    realm: ${tokens.realm}`,
      '    service: test-registry',
      `    issuer: ${tokens.issuer}`,
      `    rootcertbundle: ${tokens.certPath}`,
      '',
    ].join('\n');
  }
  const port = await freePort();
  const config = join(dir, 'config.yml');
  await writeFile(
    config,
    [
      'version: 0.1',
      'log:',
      '  level: warn',
      '  accesslog:',
      '    disabled: false',
      'storage:',
      '  filesystem:',
      `    rootdirectory: ${storageDir}`,
      '  delete:',
      '    enabled: true',
      '  maintenance:',
      '    uploadpurging:',
      '      enabled: false',
      'http:',
      `  addr: 127.0.0.1:${port}`,
      `  secret: ${randomBytes(16).toString('hex')}`,
      authYaml,
    ].join('\n'),
  );
  const logPath = join(dir, 'registry.log');
  const log = createWriteStream(logPath);
  await new Promise((ok) => log.once('open', ok));
  // spawned directly (no shell), so child.pid is the registry's own pid
  const child = spawn('docker-registry', ['serve', config], { stdio: ['ignore', log, log] });
  await waitForHttp(`http://127.0.0.1:${port}/v2/`, child, logPath);

  let up = 0;
  let down = 0;
  let requests: Array<{ method: string; path: string; status: number }> = [];
  const reg: Partial<TestRegistry> = {};
  const proxy: Server = createServer(async (req, res) => {
    const fault = reg.fault?.(req);
    if (fault && 'delayMs' in fault) await sleep(fault.delayMs);
    if (fault && 'status' in fault) {
      req.resume();
      requests.push({ method: req.method!, path: req.url!, status: fault.status });
      res.writeHead(fault.status, { 'content-type': 'application/json' });
      res.end('{"errors":[{"code":"UNAVAILABLE","message":"injected fault"}]}');
      return;
    }
    const upstream = request(
      { host: '127.0.0.1', port, method: req.method, path: req.url, headers: req.headers },
      (ures) => {
        requests.push({ method: req.method!, path: req.url!, status: ures.statusCode! });
        res.writeHead(ures.statusCode!, ures.statusMessage, ures.headers);
        let sent = 0;
        ures.on('data', (b: Buffer) => {
          if (fault && 'cutAfterBytes' in fault && sent + b.length > fault.cutAfterBytes) {
            res.write(b.subarray(0, Math.max(0, fault.cutAfterBytes - sent)));
            down += Math.max(0, fault.cutAfterBytes - sent);
            res.socket?.destroy(); // the connection drops mid-body
            ures.destroy();
            return;
          }
          sent += b.length;
          down += b.length;
          res.write(b);
        });
        ures.on('end', () => res.end());
      },
    );
    upstream.on('error', () => res.destroy());
    req.on('data', (b: Buffer) => {
      up += b.length;
    });
    req.pipe(upstream);
  });
  await new Promise<void>((ok) => proxy.listen(0, '127.0.0.1', ok));
  const proxyPort = (proxy.address() as AddressInfo).port;

  Object.assign(reg, {
    host: `127.0.0.1:${proxyPort}`,
    storageDir,
    user,
    password,
    traffic: () => ({ up, down, requests: [...requests] }),
    resetTraffic: () => {
      up = 0;
      down = 0;
      requests = [];
    },
    accessLog: () => readFile(logPath, 'utf8'),
    blobPath: (digest: string) => {
      const hex = digest.replace(/^sha256:/, '');
      return join(storageDir, 'docker/registry/v2/blobs/sha256', hex.slice(0, 2), hex, 'data');
    },
    async stop() {
      proxy.closeAllConnections();
      await new Promise((ok) => proxy.close(ok));
      if (child.exitCode === null) {
        child.kill('SIGTERM');
        await Promise.race([new Promise((ok) => child.once('exit', ok)), sleep(10_000)]);
        if (child.exitCode === null) child.kill('SIGKILL');
      }
      await tokens?.stop();
      log.end();
      await rm(dir, { recursive: true, force: true });
    },
  } satisfies TestRegistry);
  return reg as TestRegistry;
}
