'use strict';
// sbserver is a small Azure Service Bus TEST server for the clusterbus
// azservicebus adapter tests. IT IS NOT SERVICE BUS, nor the official
// emulator: it speaks just enough of the Service Bus AMQP 1.0 dialect (on the
// npm library rhea) and of the ATOM management API (plain HTTP) for the Go SDK
// github.com/Azure/azure-sdk-for-go/sdk/messaging/azservicebus to send,
// receive in peek-lock and receive-and-delete, renew locks, complete, abandon,
// dead-letter, schedule, accept message batches (message-format 0x80013700,
// one encoded message per data section), and for its admin client to create, get and delete
// queues, topics and subscriptions (not update them). Test-only extras on
// the admin port: GET /$status (counts per entity) and
// POST /$fault/detach-receivers (force-detaches every receiver link).
// State lives in memory; with --state FILE it is written to FILE on
// SIGTERM/SIGINT (or stdin closing) and read back at start, so a clean
// restart keeps entities and messages (held locks are dropped and their
// messages made available again); a crash (SIGKILL) loses everything.
// No authentication (SASL ANONYMOUS, any token accepted), no partitions, no
// sessions, no transactions, no peek, no deferral, no quotas, no message
// TTL; AutoDeleteOnIdle counts only time without a receiver link; messages
// over 256 KiB are refused at the link (max-message-size).
// A delivery whose lock expired and that the client never settles keeps one
// of its session's 2048 delivery slots until the link closes.
//
// Usage: node server.js [--host 127.0.0.1] [--port 0] [--admin-port 0] [--state FILE]
//                        [--exit-on-stdin-close true]  (the tests use it so a killed test binary leaves no server behind)
// It prints one JSON line {"amqp":PORT,"admin":PORT} on stdout once both
// listeners are up. Connection string for the SDK:
//   Endpoint=sb://127.0.0.1:PORT;SharedAccessKeyName=k;SharedAccessKey=v;UseDevelopmentEmulator=true

const rhea = require('rhea');
const http = require('http');
const crypto = require('crypto');
const fs = require('fs');

const args = { host: '127.0.0.1', port: 0, 'admin-port': 0, state: '', 'exit-on-stdin-close': '' };
for (let i = 2; i < process.argv.length; i += 2) {
  const k = process.argv[i].replace(/^--/, '');
  if (!(k in args)) { console.error('sbserver: unknown flag --' + k + '; accepted: --host, --port, --admin-port, --state, --exit-on-stdin-close true'); process.exit(2); }
  args[k] = process.argv[i + 1];
}

const T = rhea.types;
const MAX_MESSAGE_BYTES = 256 * 1024; // Standard tier limit.
const BATCH_FORMAT = 0x80013700; // message-format of a Service Bus message batch
const entities = new Map(); // lower-case path -> entity
let nextSeq = 1;

// ---------- entities ----------

function isoDurationMs(s, dflt) {
  const m = /^P(?:(\d+)D)?(?:T(?:(\d+)H)?(?:(\d+)M)?(?:([\d.]+)S)?)?$/.exec(s || '');
  if (!m) return dflt;
  return (((+(m[1] || 0) * 24 + +(m[2] || 0)) * 60 + +(m[3] || 0)) * 60 + +(m[4] || 0)) * 1000;
}
function xmlField(xml, name) {
  const m = new RegExp('<' + name + '>([^<]*)</' + name + '>').exec(xml);
  return m ? m[1] : undefined;
}

function applyDesc(e, xml) {
  e.xml = xml;
  e.lockMs = isoDurationMs(xmlField(xml, 'LockDuration'), 60000);
  e.maxDelivery = +(xmlField(xml, 'MaxDeliveryCount') || 10);
  e.dedupe = xmlField(xml, 'RequiresDuplicateDetection') === 'true';
  e.dedupeMs = isoDurationMs(xmlField(xml, 'DuplicateDetectionHistoryTimeWindow'), 600000);
  e.autoDeleteMs = isoDurationMs(xmlField(xml, 'AutoDeleteOnIdle'), Infinity);
}

function newEntity(path, kind, xml, parent) {
  const e = {
    path, kind, parent, ready: [], scheduled: [], locks: new Map(), seen: new Map(),
    links: new Set(), rr: 0, lastActive: Date.now(),
  };
  applyDesc(e, xml);
  entities.set(path, e);
  if (kind === 'queue' || kind === 'subscription') {
    const d = newEntity(path + '/$deadletterqueue', 'dlq', '', e);
    d.lockMs = e.lockMs; d.maxDelivery = Infinity;
  }
  return e;
}

function deleteEntity(path) {
  for (const p of [...entities.keys()]) {
    if (p === path || p.startsWith(path + '/')) {
      const e = entities.get(p);
      entities.delete(p);
      for (const l of e.links) l.close({ condition: 'amqp:not-found', description: 'entity ' + p + ' was deleted' });
    }
  }
}

// ---------- messages ----------

function enqueue(e, msg, now) {
  e.lastActive = now;
  if (e.kind === 'topic') {
    for (const s of entities.values()) if (s.kind === 'subscription' && s.parent === e) enqueue(s, cloneMsg(msg), now);
    return;
  }
  if (e.dedupe && msg.message_id !== undefined) {
    const id = String(msg.message_id);
    const at = e.seen.get(id);
    if (at !== undefined && now - at < e.dedupeMs) return; // duplicate: accepted and dropped
    e.seen.set(id, now);
  }
  const ann = msg.message_annotations || {};
  const sched = ann['x-opt-scheduled-enqueue-time'];
  const rec = { seq: nextSeq++, msg, deliveries: 0, enqueued: now };
  if (sched instanceof Date && sched.getTime() > now) {
    rec.visibleAt = sched.getTime();
    e.scheduled.push(rec);
  } else {
    insertReady(e, rec);
  }
  return rec.seq;
}

function cloneMsg(m) { return Object.assign({}, m, { message_annotations: Object.assign({}, m.message_annotations || {}), application_properties: Object.assign({}, m.application_properties || {}) }); }

function insertReady(e, rec) {
  let i = e.ready.length;
  while (i > 0 && e.ready[i - 1].seq > rec.seq) i--;
  e.ready.splice(i, 0, rec);
  setImmediate(() => pump(e));
}

function deadLetter(e, rec, reason, description) {
  const d = entities.get(e.path + '/$deadletterqueue');
  if (!d) return;
  const m = cloneMsg(rec.msg);
  m.application_properties.DeadLetterReason = reason;
  m.application_properties.DeadLetterErrorDescription = description;
  m.message_annotations['x-opt-deadletter-source'] = e.path;
  insertReady(d, { seq: rec.seq, msg: m, deliveries: rec.deliveries, enqueued: rec.enqueued });
}

// release puts a locked message back (abandon, lock expiry) or dead-letters it
// once its delivery count reaches MaxDeliveryCount, as Service Bus does.
function giveBack(e, rec) {
  if (rec.deliveries >= e.maxDelivery) {
    deadLetter(e, rec, 'MaxDeliveryCountExceeded', 'Message could not be consumed after ' + e.maxDelivery + ' delivery attempts.');
  } else {
    insertReady(e, rec);
  }
}

function dotnetGuidBytes(b) { // RFC 4122 order <-> .NET Guid.ToByteArray order
  const t = Buffer.from(b);
  t[0] = b[3]; t[1] = b[2]; t[2] = b[1]; t[3] = b[0]; t[4] = b[5]; t[5] = b[4]; t[6] = b[7]; t[7] = b[6];
  return t;
}

function pump(e) {
  if (!entities.has(e.path)) return;
  const links = [...e.links];
  while (e.ready.length && links.length) {
    let link = null;
    for (let i = 0; i < links.length; i++) {
      const l = links[(e.rr + i) % links.length];
      if (l.is_open() && l.sendable()) { link = l; e.rr = (e.rr + i + 1) % links.length; break; }
    }
    if (!link) return;
    const rec = e.ready.shift();
    const now = Date.now();
    e.lastActive = now;
    const out = cloneMsg(rec.msg);
    out.delivery_count = rec.deliveries;
    out.message_annotations['x-opt-sequence-number'] = T.wrap_long(rec.seq);
    out.message_annotations['x-opt-enqueued-time'] = T.wrap_timestamp(rec.enqueued);
    rec.deliveries++;
    if (link.remote.attach.snd_settle_mode === 1) { // receive-and-delete
      link.send(out);
      continue;
    }
    const token = crypto.randomBytes(16);
    const lock = { rec, until: now + e.lockMs, entity: e, token: token.toString('hex') };
    out.message_annotations['x-opt-locked-until'] = T.wrap_timestamp(lock.until);
    e.locks.set(lock.token, lock);
    const d = link.send(out, dotnetGuidBytes(token));
    d.sbLock = lock;
  }
}

function lockValid(lock) {
  return lock && lock.entity.locks.get(lock.token) === lock && lock.until > Date.now();
}

function settle(lock, outcome, info) {
  const e = lock.entity;
  e.locks.delete(lock.token);
  switch (outcome) {
    case 'complete': break;
    case 'abandon': giveBack(e, lock.rec); break;
    case 'release': lock.rec.deliveries--; insertReady(e, lock.rec); break;
    case 'deadletter':
      deadLetter(e, lock.rec, String((info && info.DeadLetterReason) || ''), String((info && info.DeadLetterErrorDescription) || ''));
      break;
  }
}

const lockLost = () => rhea.message.rejected({ error: { condition: 'com.microsoft:message-lock-lost', description: 'The lock supplied is invalid. Either the lock expired, or the message has already been removed from the queue.' } }).described();

// onDisposition answers a client's (unsettled, receiver-settle-mode second)
// disposition with a settled one. The client sends nothing after that, so the
// delivery is marked remotely settled too: rhea frees a session's delivery
// slots (2048) only when both sides have settled.
function onDisposition(context, outcome) {
  const d = context.delivery;
  const lock = d.sbLock;
  if (context.sender && !context.sender.is_open()) {
    // The link was detached (deleted entity, fault injection): settle on the
    // management link instead, as the SDK does when its link is gone.
    return;
  }
  if (!lock) {
    d.update(true);
  } else if (!lockValid(lock)) {
    d.update(true, lockLost());
  } else {
    let info;
    if (outcome === 'deadletter') info = (d.remote_state && d.remote_state.error && d.remote_state.error.info) || {};
    settle(lock, outcome, info);
    d.update(true);
  }
  d.remote_settled = true;
}

setInterval(() => {
  const now = Date.now();
  for (const e of [...entities.values()]) {
    for (const lock of [...e.locks.values()]) {
      if (lock.until <= now) { e.locks.delete(lock.token); giveBack(e, lock.rec); }
    }
    if (e.scheduled.length) {
      const due = e.scheduled.filter(r => r.visibleAt <= now);
      e.scheduled = e.scheduled.filter(r => r.visibleAt > now);
      for (const r of due) insertReady(e, r);
    }
    for (const [id, at] of e.seen) if (now - at >= e.dedupeMs) e.seen.delete(id);
    if (e.kind === 'subscription' && e.links.size === 0 && now - e.lastActive > e.autoDeleteMs) deleteEntity(e.path);
  }
}, 50);

// ---------- AMQP ----------

const container = rhea.create_container({ id: 'sbserver' });
container.sasl_server_mechanisms.enable_anonymous();
const replyLinks = new Map(); // client reply address -> server sender link

function entityPath(addr) {
  return String(addr || '').replace(/^amqps?:\/\/[^/]*\//, '').replace(/^\//, '').toLowerCase();
}

function echoAttach(link) {
  const r = link.remote.attach;
  link.local.attach.snd_settle_mode = r.snd_settle_mode;
  link.local.attach.rcv_settle_mode = r.rcv_settle_mode;
  if (r.source) link.set_source({ address: r.source.address });
  if (r.target) link.set_target({ address: r.target.address });
}

container.on('sender_open', (context) => { // a client receiver
  const link = context.sender;
  echoAttach(link);
  const path = entityPath(link.remote.attach.source && link.remote.attach.source.address);
  if (path.endsWith('$management') || path === '$cbs') {
    replyLinks.set(link.remote.attach.target.address, link);
    return;
  }
  const e = entities.get(path);
  if (!e || e.kind === 'topic') { link.close({ condition: 'amqp:not-found', description: 'The messaging entity ' + path + ' could not be found.' }); return; }
  link.sbEntity = e;
  e.links.add(link);
  e.lastActive = Date.now();
});

container.on('receiver_open', (context) => { // a client sender
  const link = context.receiver;
  echoAttach(link);
  link.local.attach.max_message_size = MAX_MESSAGE_BYTES; // the SDK refuses larger messages itself
  const path = entityPath(link.remote.attach.target && link.remote.attach.target.address);
  if (path.endsWith('$management') || path === '$cbs') return;
  const e = entities.get(path);
  if (!e || e.kind === 'dlq' || e.kind === 'subscription') link.close({ condition: 'amqp:not-found', description: 'The messaging entity ' + path + ' could not be found.' });
});

container.on('sendable', (context) => { if (context.sender.sbEntity) pump(context.sender.sbEntity); });

function dropLink(link) {
  if (link.sbEntity) link.sbEntity.links.delete(link);
  if (link.remote && link.remote.attach && link.remote.attach.target) {
    const a = link.remote.attach.target.address;
    if (replyLinks.get(a) === link) replyLinks.delete(a);
  }
}
container.on('sender_close', (c) => dropLink(c.sender));
container.on('sender_error', (c) => dropLink(c.sender));
container.on('session_close', (c) => { for (const l of Object.values(c.session.links || {})) dropLink(l); });
container.on('disconnected', (c) => {
  for (const e of entities.values()) for (const l of [...e.links]) if (l.connection === c.connection) e.links.delete(l);
  for (const [a, l] of replyLinks) if (l.connection === c.connection) replyLinks.delete(a);
});
container.on('error', (err) => { console.error('sbserver: ' + err); });
container.on('connection_error', () => {});
container.on('protocol_error', (c) => console.error('sbserver: protocol error ' + c.error));

container.on('accepted', (c) => onDisposition(c, 'complete'));
container.on('rejected', (c) => {
  const st = c.delivery.remote_state;
  const cond = st && st.error && st.error.condition;
  onDisposition(c, String(cond) === 'com.microsoft:dead-letter' ? 'deadletter' : 'abandon');
});
container.on('released', (c) => { // rhea reports modified as released
  const st = c.delivery.remote_state;
  const modified = st && st.constructor && st.constructor.composite_type === 'modified';
  onDisposition(c, modified ? 'abandon' : 'release');
});

function reply(req, status, description, body) {
  const link = replyLinks.get(req.reply_to);
  if (!link) { console.error('sbserver: no reply link for ' + req.reply_to); return; }
  link.send({
    correlation_id: req.message_id,
    application_properties: { 'status-code': T.wrap_int(status), 'status-description': description },
    body: body === undefined ? null : body,
  });
}

function management(path, req) {
  const op = req.application_properties && req.application_properties.operation;
  const e = entities.get(path);
  if (!e) return reply(req, 404, 'The messaging entity ' + path + ' could not be found.');
  const body = req.body || {};
  switch (op) {
    case 'com.microsoft:renew-lock': {
      const out = [];
      for (const t of body['lock-tokens'] || []) {
        const lock = e.locks.get(Buffer.from(t).toString('hex'));
        if (!lockValid(lock)) return reply(req, 410, 'The lock supplied is invalid. Either the lock expired, or the message has already been removed from the queue.');
        lock.until = Date.now() + e.lockMs;
        out.push(lock.until);
      }
      return reply(req, 200, 'OK', { expirations: T.wrap_array(out, 0x83) });
    }
    case 'com.microsoft:update-disposition': {
      const status = body['disposition-status'];
      for (const t of body['lock-tokens'] || []) {
        const lock = e.locks.get(Buffer.from(t).toString('hex'));
        if (!lockValid(lock)) return reply(req, 410, 'The lock supplied is invalid.');
        const outcome = { completed: 'complete', abandoned: 'abandon', suspended: 'deadletter' }[status];
        if (!outcome) return reply(req, 400, 'unsupported disposition-status ' + status + ' in this test server');
        settle(lock, outcome, { DeadLetterReason: body['deadletter-reason'], DeadLetterErrorDescription: body['deadletter-description'] });
      }
      return reply(req, 200, 'OK', {});
    }
    case 'com.microsoft:schedule-message': {
      const seqs = [];
      for (const item of body.messages || []) {
        const m = rhea.message.decode(Buffer.from(item.message));
        seqs.push(enqueue(e, m, Date.now()) || 0);
      }
      return reply(req, 200, 'OK', { 'sequence-numbers': T.wrap_array(seqs, 0x81) });
    }
    default:
      return reply(req, 501, 'operation ' + op + ' is not implemented by this test server');
  }
}

container.on('message', (context) => {
  const link = context.receiver;
  const req = context.message;
  const path = entityPath(link.remote.attach.target && link.remote.attach.target.address);
  if (path === '$cbs') return reply(req, 200, 'OK'); // put-token: any token is accepted
  if (path.endsWith('/$management') || path === '$management') return management(path.replace(/\/?\$management$/, ''), req);
  const e = entities.get(path);
  if (!e) { context.delivery.reject({ condition: 'amqp:not-found', description: 'entity ' + path + ' was deleted' }); return; }
  const now = Date.now();
  if (context.format === BATCH_FORMAT) {
    // A message batch (SendMessageBatch); rhea hands over the raw bytes of
    // a non-zero message-format. Each data section is one encoded message,
    // stored in order, all or nothing.
    let msgs;
    try {
      const body = rhea.message.decode(req).body;
      const parts = body && body.typecode === 0x75 ? (body.multiple ? body.content : [body.content]) : null;
      if (!parts) throw new Error('batch without data sections');
      msgs = parts.map((p) => rhea.message.decode(p));
    } catch (err) {
      context.delivery.reject({ condition: 'amqp:decode-error', description: 'bad message batch: ' + err.message });
      return;
    }
    for (const m of msgs) enqueue(e, m, now);
    return;
  }
  enqueue(e, req, now);
});

// ---------- ATOM management (HTTP) ----------

function handleAdmin(req, res) {
  let body = '';
  req.on('data', (c) => { body += c; });
  req.on('end', () => {
    const url = new URL(req.url, 'http://x');
    const path = decodeURIComponent(url.pathname).replace(/^\/+|\/+$/g, '').toLowerCase();
    const e = entities.get(path);
    const send = (code, xml) => { res.writeHead(code, { 'Content-Type': 'application/atom+xml;type=entry;charset=utf-8' }); res.end(xml || ''); };
    const notFound = () => send(404, '<Error><Code>404</Code><Detail>Entity ' + path + ' does not exist.</Detail></Error>');
    if (req.method === 'POST' && path === '$fault/detach-receivers') { // fault injection for tests, not Service Bus
      let n = 0;
      for (const x of entities.values()) for (const l of [...x.links]) { x.links.delete(l); l.close({ condition: 'amqp:link:detach-forced', description: 'test server fault injection' }); n++; }
      res.writeHead(200, { 'Content-Type': 'application/json' });
      return res.end(JSON.stringify({ detached: n }));
    }
    if (req.method === 'GET' && path === '$status') { // debugging aid, not Service Bus
      const st = {};
      for (const x of entities.values()) st[x.path] = { ready: x.ready.length, locked: x.locks.size, scheduled: x.scheduled.length, links: [...x.links].map(l => ({ open: l.is_open(), credit: l.credit, sendable: l.sendable() })) };
      res.writeHead(200, { 'Content-Type': 'application/json' });
      return res.end(JSON.stringify(st, null, 1));
    }
    if (req.method === 'GET') return e && e.kind !== 'dlq' ? send(200, e.xml) : notFound();
    if (req.method === 'DELETE') { if (!e || e.kind === 'dlq') return notFound(); deleteEntity(path); return send(200); }
    if (req.method !== 'PUT') return send(405);
    let kind = /<QueueDescription/.test(body) ? 'queue' : /<TopicDescription/.test(body) ? 'topic' : /<SubscriptionDescription/.test(body) ? 'subscription' : '';
    if (!kind) return send(400, '<Error><Code>400</Code><Detail>unsupported entity description</Detail></Error>');
    const parts = path.split('/');
    let parent;
    if (kind === 'subscription') {
      if (parts.length !== 3 || parts[1] !== 'subscriptions') return send(400, '<Error><Code>400</Code><Detail>want TOPIC/Subscriptions/NAME</Detail></Error>');
      parent = entities.get(parts[0]);
      if (!parent || parent.kind !== 'topic') return notFound();
    } else if (parts.length !== 1) {
      return send(400, '<Error><Code>400</Code><Detail>bad entity path</Detail></Error>');
    }
    if (e) return send(409, '<Error><Code>409</Code><Detail>The messaging entity ' + path + ' already exists (this test server does not update entities).</Detail></Error>');
    newEntity(path, kind, body, parent);
    return send(201, body);
  });
}

let ready = 0;
const ports = {};
function announce() { if (++ready === 2) process.stdout.write(JSON.stringify(ports) + '\n'); }
const amqpServer = container.listen({ host: args.host, port: +args.port });
amqpServer.on('listening', () => { ports.amqp = amqpServer.address().port; announce(); });
const adminServer = http.createServer(handleAdmin);
adminServer.listen(+args['admin-port'], args.host, () => { ports.admin = adminServer.address().port; announce(); });
// ---------- clean restart: --state FILE ----------

function saveState(file) {
  const recs = (list) => list.map(r => ({ seq: r.seq, deliveries: r.deliveries, enqueued: r.enqueued, visibleAt: r.visibleAt, msg: rhea.message.encode(r.msg).toString('base64') }));
  const out = { nextSeq, entities: [] };
  for (const e of entities.values()) {
    const ready = [...e.ready, ...[...e.locks.values()].map(l => l.rec)].sort((a, b) => a.seq - b.seq);
    out.entities.push({ path: e.path, kind: e.kind, xml: e.xml, parent: e.parent && e.parent.path, ready: recs(ready), scheduled: recs(e.scheduled), seen: [...e.seen] });
  }
  fs.writeFileSync(file + '.tmp', JSON.stringify(out));
  fs.renameSync(file + '.tmp', file);
}

function loadState(file) {
  if (!fs.existsSync(file)) return;
  const st = JSON.parse(fs.readFileSync(file, 'utf8'));
  nextSeq = st.nextSeq;
  const order = { topic: 0, queue: 1, subscription: 1, dlq: 2 };
  st.entities.sort((a, b) => order[a.kind] - order[b.kind]);
  const recs = (list) => list.map(r => ({ seq: r.seq, deliveries: r.deliveries, enqueued: r.enqueued, visibleAt: r.visibleAt, msg: rhea.message.decode(Buffer.from(r.msg, 'base64')) }));
  for (const x of st.entities) {
    const e = x.kind === 'dlq' ? entities.get(x.path) : newEntity(x.path, x.kind, x.xml, x.parent && entities.get(x.parent));
    if (!e) continue;
    e.ready = recs(x.ready);
    e.scheduled = recs(x.scheduled);
    e.seen = new Map(x.seen);
  }
}

if (args.state) loadState(args.state);
function shutdown() {
  if (args.state) saveState(args.state);
  process.exit(0);
}
for (const sig of ['SIGTERM', 'SIGINT']) process.on(sig, shutdown);
if (args['exit-on-stdin-close'] === 'true') {
  process.stdin.on('end', shutdown);
  process.stdin.resume();
}
