// A small token issuer for the registry's token auth (the Bearer flow ghcr.io, Docker Hub and
// Harbor use): GET /token?service=S&scope=repository:NAME:pull,push with Basic credentials answers
// a JWT signed (RS256) by a self-signed certificate the registry trusts (rootcertbundle); the
// certificate rides in the x5c header. Wrong credentials: 401. No credentials: a token granting nothing.
import { createSign } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { execa } from 'execa';

export interface TokenServer {
  realm: string;
  issuer: string;
  certPath: string;
  /** Scopes asked for so far (to check what a client requested). */
  requests: Array<{ scope: string[]; user?: string }>;
  stop(): Promise<void>;
}

const b64url = (b: Buffer | string) => Buffer.from(b).toString('base64url');

export async function startTokenServer(opts: {
  dir: string;
  user: string;
  password: string;
  service: string;
}): Promise<TokenServer> {
  const keyPath = join(opts.dir, 'token.key');
  const certPath = join(opts.dir, 'token.crt');
  await execa('openssl', [
    'req',
    '-x509',
    '-newkey',
    'rsa:2048',
    '-nodes',
    '-days',
    '2',
    '-subj',
    '/CN=overlay-action test token issuer',
    '-keyout',
    keyPath,
    '-out',
    certPath,
  ]);
  const key = await readFile(keyPath, 'utf8');
  const der = Buffer.from(
    (await readFile(certPath, 'utf8')).replace(/-----[^-]+-----/g, '').replace(/\s+/g, ''),
    'base64',
  );
  const issuer = 'overlay-action-test-issuer';
  const requests: TokenServer['requests'] = [];
  const server = createServer((req, res) => {
    const url = new URL(req.url!, 'http://x');
    const scope = url.searchParams.getAll('scope').flatMap((s) => s.split(' '));
    const basic = /^Basic (.+)$/i.exec(req.headers.authorization ?? '');
    let user: string | undefined;
    if (basic) {
      const [u, ...p] = Buffer.from(basic[1]!, 'base64').toString().split(':');
      if (u !== opts.user || p.join(':') !== opts.password) {
        requests.push({ scope, user: u });
        res.writeHead(401, { 'content-type': 'application/json' });
        res.end('{"details":"wrong credentials"}');
        return;
      }
      user = u;
    }
    requests.push({ scope, user });
    const access = user
      ? scope.map((s) => {
          const [type, ...rest] = s.split(':');
          const actions = rest.pop()!.split(',');
          return { type, name: rest.join(':'), actions };
        })
      : [];
    const now = Math.floor(Date.now() / 1000);
    const header = { alg: 'RS256', typ: 'JWT', x5c: [der.toString('base64')] };
    const claims = {
      iss: issuer,
      sub: user ?? '',
      aud: url.searchParams.get('service') ?? opts.service,
      exp: now + 300,
      nbf: now - 10,
      iat: now,
      jti: `${now}-${Math.random()}`,
      access,
    };
    const body = `${b64url(JSON.stringify(header))}.${b64url(JSON.stringify(claims))}`;
    const sig = createSign('RSA-SHA256').update(body).sign(key);
    const token = `${body}.${b64url(sig)}`;
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ token, access_token: token, expires_in: 300 }));
  });
  await new Promise<void>((ok) => server.listen(0, '127.0.0.1', ok));
  const port = (server.address() as AddressInfo).port;
  return {
    realm: `http://127.0.0.1:${port}/token`,
    issuer,
    certPath,
    requests,
    stop: () => new Promise((ok) => server.close(() => ok())),
  };
}
