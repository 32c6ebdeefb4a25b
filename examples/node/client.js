#!/usr/bin/env node
// vaultgate example client in Node.js (@grpc/grpc-js + @grpc/proto-loader + grpc-health-check).
//
// Loads the repository's proto/ at run time (proto-loader; the well-known types come with
// protobufjs), then exercises a running `vaultgate dev` as its demo callers and checks every
// answer. Exits 0 when all checks pass, 1 on the first wrong answer (with a message saying
// what was expected), 2 on a usage error.
//
//   npm ci && node client.js [--addr 127.0.0.1:50051] [--dir .dev]
//
// --addr defaults to $VAULTGATE_ADDR or 127.0.0.1:50051; --dir (the dev directory holding
// callers/*.jwt) to $VAULTGATE_DEV_DIR or .dev.
'use strict';

const { spawnSync } = require('node:child_process');
const nodeCrypto = require('node:crypto');
const fs = require('node:fs');
const path = require('node:path');
const { parseArgs } = require('node:util');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');
const healthCheck = require('grpc-health-check');

const PROTO_ROOT = path.resolve(__dirname, '..', '..', 'proto');
// The recommended gRPC service config (retries of UNAVAILABLE and RESOURCE_EXHAUSTED on the
// idempotent RPCs, honouring the gateway's retry pushback; per-method timeouts).
const SERVICE_CONFIG = fs.readFileSync(path.join(PROTO_ROOT, 'vaultgate', 'v1', 'service_config.json'), 'utf8');
const TIMEOUT_MS = 10_000; // the deadline of every call

class CheckFailed extends Error {}

// Fails with `what` (a claim, then ": got ..." detail) unless cond; prints the claim when it holds.
function check(cond, what) {
  if (!cond) throw new CheckFailed(what);
  console.log(`  ok  ${what.split(': got ')[0].split(': expected ')[0]}`);
}

const deadline = () => ({ deadline: Date.now() + TIMEOUT_MS });

// Promise form of a unary call.
function call(client, method, request, metadata = new grpc.Metadata()) {
  return new Promise((resolve, reject) => {
    client[method](request, metadata, deadline(), (err, response) => (err ? reject(err) : resolve(response)));
  });
}

// The next message of a server stream that is not a heartbeat.
function nextMessage(stream) {
  return new Promise((resolve, reject) => {
    const done = () => { stream.off('data', onData); stream.off('error', onError); stream.off('end', onEnd); };
    const onData = (m) => { if (!m.heartbeat) { done(); resolve(m); } };
    const onError = (e) => { done(); reject(e); };
    const onEnd = () => { done(); reject(new Error('the stream ended')); };
    stream.on('data', onData);
    stream.on('error', onError);
    stream.on('end', onEnd);
  });
}

// Writes to dev mode's Vault with its root token (dev only: what an operator would do).
async function vaultWrite(devDir, vaultPath, body) {
  const addr = fs.readFileSync(path.join(devDir, 'vault-addr'), 'utf8').trim();
  const token = fs.readFileSync(path.join(devDir, 'root-token'), 'utf8').trim();
  const r = await fetch(`${addr}/v1/${vaultPath}`, { method: 'POST', headers: { 'X-Vault-Token': token }, body: JSON.stringify(body), signal: AbortSignal.timeout(10000) });
  check(r.ok, `Vault write ${vaultPath}: got HTTP ${r.status}`);
}

// Logs in to dev mode's PostgreSQL with psql as user/password: {ok, out} (current_user or the error).
function pgLogin(devDir, user, password) {
  const addr = fs.readFileSync(path.join(devDir, 'postgres-addr'), 'utf8').trim();
  if (!addr) throw new CheckFailed('cannot check the database user: dev mode runs without PostgreSQL (postgres-addr is empty)');
  const at = addr.lastIndexOf(':');
  const r = spawnSync('psql', ['-h', addr.slice(0, at), '-p', addr.slice(at + 1), '-U', user, '-d', 'postgres', '-Atc', 'select current_user'],
    { env: { ...process.env, PGPASSWORD: password, PGCONNECT_TIMEOUT: '5' }, encoding: 'utf8', timeout: 30_000 });
  if (r.error) throw new CheckFailed(`cannot check the database user: psql: ${r.error.message}`);
  return { ok: r.status === 0, out: (r.status === 0 ? r.stdout : r.stderr).trim() };
}

function bearer(jwt) {
  const md = new grpc.Metadata();
  md.set('authorization', `Bearer ${jwt}`);
  return md;
}

const codeName = (code) => Object.keys(grpc.status).find((k) => grpc.status[k] === code) ?? String(code);

async function expectCode(promise, code, what) {
  try {
    await promise;
  } catch (err) {
    if (err.code === undefined) throw err;
    check(err.code === code, `${what}: expected ${codeName(code)}, got ${codeName(err.code)}: ${err.details}`);
    return;
  }
  throw new CheckFailed(`${what}: expected ${codeName(code)}, but the call succeeded`);
}

function loadServices() {
  const files = ['vaultgate/v1/encryption.proto', 'vaultgate/v1/secret.proto', 'vaultgate/v1/database.proto',
    'vaultgate/v1/pki.proto'];
  const definition = protoLoader.loadSync(files, {
    includeDirs: [PROTO_ROOT],
    keepCase: true, // field names as in the .proto (lease_id, not leaseId)
    longs: String,
    enums: String,
    defaults: true,
    oneofs: true,
  });
  return grpc.loadPackageDefinition(definition).vaultgate.v1;
}

async function run(addr, devDir) {
  const billing = bearer(fs.readFileSync(path.join(devDir, 'callers', 'billing.jwt'), 'utf8').trim());
  const reports = bearer(fs.readFileSync(path.join(devDir, 'callers', 'reports.jwt'), 'utf8').trim());
  const v1 = loadServices();
  const creds = grpc.credentials.createInsecure();

  // Standard health-check client (grpc.health.v1), no credentials.
  const HealthClient = grpc.makeClientConstructor(healthCheck.service, 'grpc.health.v1.Health');
  const health = new HealthClient(addr, creds);
  await new Promise((resolve, reject) =>
    health.waitForReady(Date.now() + TIMEOUT_MS, (err) =>
      err ? reject(new CheckFailed(`cannot connect to ${addr} within ${TIMEOUT_MS / 1000}s (is \`vaultgate dev\` running?)`)) : resolve()));
  for (const service of ['', 'vaultgate.v1.EncryptionService', 'vaultgate.v1.SecretService', 'vaultgate.v1.DatabaseService']) {
    const r = await call(health, 'Check', { service });
    check(r.status === 'SERVING', `health ${service || '(server)'} is SERVING: got ${r.status}`);
  }

  // Encrypt / Decrypt round trip (one channel shared by all three service clients).
  const crypto = new v1.EncryptionService(addr, creds, { 'grpc.service_config': SERVICE_CONFIG });
  const secrets = new v1.SecretService(addr, creds, { channelOverride: crypto.getChannel() });
  const dbs = new v1.DatabaseService(addr, creds, { channelOverride: crypto.getChannel() });
  const certs = new v1.PkiService(addr, creds, { channelOverride: crypto.getChannel() });
  try {
    const e = await call(crypto, 'Encrypt', { key: 'billing', plaintext: Buffer.from('hello') }, billing);
    check(e.ciphertext.startsWith('vault:v') && e.key_version >= 1,
      `Encrypt returns a vault:vN: ciphertext: got ${JSON.stringify(e.ciphertext)}, key_version ${e.key_version}`);
    const d = await call(crypto, 'Decrypt', { key: 'billing', ciphertext: e.ciphertext }, billing);
    check(d.plaintext.toString() === 'hello' && d.key_version === e.key_version,
      `Decrypt returns the plaintext: got ${JSON.stringify(d.plaintext.toString())}, key_version ${d.key_version}`);

    // EncryptBatch, then DecryptBatch of its results.
    const plaintexts = [Buffer.from('alpha'), Buffer.alloc(0), Buffer.from([...Array(256).keys()])];
    const b = await call(crypto, 'EncryptBatch',
      { key: 'billing', items: plaintexts.map((plaintext) => ({ plaintext })) }, billing);
    check(b.results.length === plaintexts.length, `EncryptBatch answers every item: got ${b.results.length} results`);
    b.results.forEach((res, i) => check(!res.error && res.ciphertext.startsWith('vault:v'),
      `EncryptBatch item ${i} succeeded: got error ${JSON.stringify(res.error?.message)}, ciphertext ${JSON.stringify(res.ciphertext)}`));
    const db = await call(crypto, 'DecryptBatch',
      { key: 'billing', items: b.results.map((res) => ({ ciphertext: res.ciphertext })) }, billing);
    check(db.results.length === plaintexts.length && db.results.every((res, i) => !res.error && res.plaintext.equals(plaintexts[i])),
      `DecryptBatch returns the plaintexts in order: got ${JSON.stringify(db.results.map((res) => res.plaintext.toString('hex')))}`);

    // GetSecret: data is a google.protobuf.Struct ({fields: {name: {kind, stringValue, ...}}}).
    const s = await call(secrets, 'GetSecret', { path: 'billing/api-keys' }, billing);
    const fields = s.data?.fields ?? {};
    check(fields.stripe_key?.stringValue === 'sk_test_demo' && s.version >= 1,
      `GetSecret billing/api-keys has stripe_key == sk_test_demo: got keys ${JSON.stringify(Object.keys(fields))}, version ${s.version}`);

    // GetDbCreds: the credentials log in to PostgreSQL; RenewLease and RevokeLease send the
    // lease_token back (empty unless the gateway has [leases]; with it any replica can verify that
    // this caller owns the lease); after RevokeLease the user is dropped.
    const c = await call(dbs, 'GetDbCreds', { role: 'billing' }, billing);
    const seconds = Number(c.lease_duration?.seconds ?? 0);
    check(c.username && c.password && c.lease_id.startsWith('database/creds/billing/') && seconds > 0,
      `GetDbCreds billing returns credentials and a lease: got username ${JSON.stringify(c.username)}, lease_id ${JSON.stringify(c.lease_id)}, lease_duration ${seconds}s`);
    const before = pgLogin(devDir, c.username, c.password);
    check(before.ok && before.out === c.username, `the credentials log in to PostgreSQL: got ${JSON.stringify(before.out)}`);
    const lease = { lease_id: c.lease_id, lease_token: c.lease_token };
    const r = await call(dbs, 'RenewLease', lease, billing);
    check(Number(r.lease_duration?.seconds ?? 0) > 0,
      `RenewLease with its lease_token: got lease_duration ${JSON.stringify(r.lease_duration)}`);
    await call(dbs, 'RevokeLease', lease, billing);
    const after = pgLogin(devDir, c.username, c.password);
    check(!after.ok, `RevokeLease dropped the database user (its login is refused): got ${JSON.stringify(after.out)}`);

    // WatchSecret: the current version first; each new version follows (here written straight
    // to Vault with dev mode's root token, as an operator would). Heartbeats carry nothing: skip.
    const watch = secrets.WatchSecret({ path: 'billing/api-keys' }, billing, { deadline: Date.now() + 30000 });
    const first = await nextMessage(watch);
    check(first.data?.fields?.stripe_key?.stringValue === 'sk_test_demo',
      `WatchSecret sends the current version first: got version ${first.version}`);
    const secondP = nextMessage(watch);
    await vaultWrite(devDir, 'secret/data/billing/api-keys', { data: { stripe_key: 'sk_test_demo' } });
    const second = await secondP;
    check(second.version === first.version + 1, `WatchSecret sends the new version: got ${second.version}`);
    watch.on('error', () => {});
    watch.cancel();

    // WatchDbCreds: credentials at once (ISSUED), then RENEWED/ROTATED while the stream is open;
    // the gateway revokes the lease after watch.rotation_grace_ms once it closes.
    const held = dbs.WatchDbCreds({ role: 'billing' }, billing, { deadline: Date.now() + 30000 });
    const dbIssued = await nextMessage(held);
    check(dbIssued.event === 'WATCH_DB_CREDS_EVENT_ISSUED' && dbIssued.lease_id.startsWith('database/creds/billing/'),
      `WatchDbCreds sends ISSUED credentials: got ${dbIssued.event}, lease ${JSON.stringify(dbIssued.lease_id)}`);
    const login = pgLogin(devDir, dbIssued.username, dbIssued.password);
    check(login.ok && login.out === dbIssued.username, `the watched credentials log in to PostgreSQL: got ${JSON.stringify(login.out)}`);
    held.on('error', () => {});
    held.cancel();

    // Sign / Verify with the ed25519 key billing-signing: a changed input does not verify.
    const sig = await call(crypto, 'Sign', { key: 'billing-signing', input: Buffer.from('invoice 42') }, billing);
    check(sig.signature.startsWith('vault:v') && sig.key_version >= 1,
      `Sign returns a vault:vN: signature: got ${JSON.stringify(sig.signature)}`);
    const good = await call(crypto, 'Verify',
      { key: 'billing-signing', input: Buffer.from('invoice 42'), signature: sig.signature }, billing);
    check(good.valid === true, `Verify of that signature is valid: got ${good.valid}`);
    const changed = await call(crypto, 'Verify',
      { key: 'billing-signing', input: Buffer.from('invoice 43'), signature: sig.signature }, billing);
    check(changed.valid === false, `Verify of a changed input is valid=false: got ${changed.valid}`);

    // IssueCertificate: Node's own X.509 code checks the CA's signature and the key pair.
    const issued = await call(certs, 'IssueCertificate',
      { role: 'billing', common_name: 'api.billing.svc.cluster.local' }, billing);
    const leaf = new nodeCrypto.X509Certificate(issued.certificate);
    const issuing = new nodeCrypto.X509Certificate(issued.ca_chain[0]);
    check(leaf.checkIssued(issuing) && leaf.verify(issuing.publicKey) && issuing.ca,
      `IssueCertificate's certificate is signed by the first CA of its chain: got issuer ${JSON.stringify(leaf.issuer)}`);
    check(leaf.checkHost('api.billing.svc.cluster.local') === 'api.billing.svc.cluster.local',
      `the certificate names api.billing.svc.cluster.local: got ${JSON.stringify(leaf.subjectAltName)}`);
    check(leaf.checkPrivateKey(nodeCrypto.createPrivateKey(issued.private_key)),
      'the private key belongs to the certificate');
    await expectCode(call(certs, 'IssueCertificate', { role: 'billing', common_name: 'api.reports.svc.cluster.local' }, billing),
      grpc.status.INVALID_ARGUMENT, 'a name outside billing.svc.cluster.local refused');

    // Refusals.
    await expectCode(call(crypto, 'Encrypt', { key: 'billing', plaintext: Buffer.from('x') }, reports),
      grpc.status.PERMISSION_DENIED, 'reports caller refused Transit key billing');
    await expectCode(call(secrets, 'GetSecret', { path: 'billing/api-keys' }, reports),
      grpc.status.PERMISSION_DENIED, 'reports caller refused secret billing/api-keys');
    await expectCode(call(crypto, 'Encrypt', { key: 'billing', plaintext: Buffer.from('x') }),
      grpc.status.UNAUTHENTICATED, 'call without credentials refused');
  } finally {
    crypto.close();
    health.close();
  }
}

async function main() {
  const { values } = parseArgs({
    options: {
      addr: { type: 'string', default: process.env.VAULTGATE_ADDR || '127.0.0.1:50051' },
      dir: { type: 'string', default: process.env.VAULTGATE_DEV_DIR || '.dev' },
    },
  });
  if (!fs.existsSync(path.join(values.dir, 'callers', 'billing.jwt'))) {
    console.error(`node client: FAIL: ${values.dir}/callers/billing.jwt not found (--dir must be vaultgate dev's directory)`);
    return 2;
  }
  console.log(`node client: ${values.addr}, node ${process.version}, @grpc/grpc-js ${require('@grpc/grpc-js/package.json').version}`);
  try {
    await run(values.addr, values.dir);
  } catch (err) {
    if (err instanceof CheckFailed) console.error(`node client: FAIL: ${err.message}`);
    else if (err.code !== undefined && err.details !== undefined) console.error(`node client: FAIL: unexpected ${codeName(err.code)}: ${err.details}`);
    else console.error(`node client: FAIL: ${err.stack || err}`);
    return 1;
  }
  console.log('node client: all checks passed');
  return 0;
}

main().then((code) => { process.exitCode = code; });
