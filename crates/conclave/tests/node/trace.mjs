// A long editing trace replayed through the server by real Yjs clients, for
// crates/conclave/tests/collab_trace.rs.
//
// The trace stands in for crdt-benchmarks' "B4" (a recorded editing
// session: ~180k single-character edits of one text): a seeded PRNG types
// at a cursor that sometimes jumps, with runs of backspaces and deletions
// elsewhere. The expected final text comes from applying the same edits to
// a plain gap buffer, not through Yjs.
//
//   node trace.mjs '{"mode":"replay","url":"ws://127.0.0.1:8080/collab","room":"trace",
//                    "writer_token":"cd1...","reader_token":"cd1...","seed":4,"ops":180000,
//                    "single_ops":2000,"batch_ops":300,"window":64,"timeout_ms":120000,"stall_ms":30000}'
//   node trace.mjs '{"mode":"read","url":"...","room":"trace","token":"cd1...","seed":4,
//                    "ops":180000,"timeout_ms":60000}'
//
// replay: a writer and a reader connect (each its own Y.Doc and provider);
// once both are synced the writer replays the trace, the first `single_ops`
// edits one transaction (one update message) each, the rest `batch_ops` per
// transaction, never more than `window` transactions ahead of what the
// reader has received. Then the reader must hold exactly the expected text,
// and so must a client joining while the document is still open.
// read: one fresh client connects and must receive exactly the expected text.
// trace: no server; prints the trace's figures.
//
// Prints one line `{"result": {...}}` on stdout; progress goes to stderr.
// Exits 0 when every text matched, 1 otherwise.

import * as Y from 'yjs'
import { WebsocketProvider } from 'y-websocket'
import WebSocket from 'ws'
import { createHash } from 'node:crypto'

const options = JSON.parse(process.argv[2])
const started = Date.now()
const log = (message) => process.stderr.write(`[trace ${Date.now() - started} ms] ${message}\n`)
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))
// How long a client may receive nothing new before the run gives up on it.
const stallMs = options.stall_ms ?? 30000
const sha256 = (text) => createHash('sha256').update(text, 'utf8').digest('hex')

// ---------------------------------------------------------------------------
// The trace

/** mulberry32: a small seeded PRNG, uniform in [0, 1). */
const mulberry32 = (seed) => {
  let a = seed >>> 0
  return () => {
    a = (a + 0x6d2b79f5) >>> 0
    let t = a
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
}

// Single UTF-16 code units only: Yjs counts positions in code units and
// turns a split surrogate pair into U+FFFD, which a plain string would not.
// Some take more than one byte in UTF-8, as the server's yrs stores them.
const WIDE = ['é', 'ü', 'ß', 'ж', '—', '中', '€']

const nextChar = (rand) => {
  const r = rand()
  if (r < 0.17) return ' '
  if (r < 0.185) return '\n'
  if (r < 0.2) return '.,;:!?'[Math.floor(rand() * 6)]
  if (r < 0.205) return WIDE[Math.floor(rand() * WIDE.length)]
  return String.fromCharCode(97 + Math.floor(rand() * 26))
}

/**
 * `count` edits of one text: `pos[i]` and `chars[i]` (a one-code-unit
 * string to insert at pos, or null to delete the code unit at pos).
 */
const generateTrace = (seed, count) => {
  const rand = mulberry32(seed)
  const pos = new Int32Array(count)
  const chars = new Array(count)
  let n = 0
  let length = 0
  let cursor = 0
  const push = (at, ch) => {
    pos[n] = at
    chars[n] = ch
    n++
    length += ch === null ? -1 : 1
  }
  while (n < count) {
    const r = rand()
    if (r < 0.004) {
      // The cursor jumps: a click elsewhere in the text.
      cursor = Math.floor(rand() * (length + 1))
    } else if (r < 0.042) {
      // A run of backspaces.
      const run = 1 + Math.floor(rand() * rand() * 16)
      for (let i = 0; i < run && cursor > 0 && n < count; i++) {
        cursor--
        push(cursor, null)
      }
    } else if (r < 0.047 && length > 0) {
      // Select-and-delete somewhere else, one forward delete at a time.
      const at = Math.floor(rand() * length)
      const run = 1 + Math.floor(rand() * 40)
      for (let i = 0; i < run && at < length && n < count; i++) {
        push(at, null)
        if (cursor > at) cursor--
      }
    } else {
      push(cursor, nextChar(rand))
      cursor++
    }
  }
  return { pos, chars }
}

/**
 * The trace applied to a gap buffer of UTF-16 code units: what any correct
 * replay must end with. The first `check` edits are also applied to a plain
 * string by slicing, which must agree.
 */
const expectedText = ({ pos, chars }, check) => {
  let buf = new Uint16Array(1 << 16)
  let gapStart = 0
  let gapEnd = buf.length
  let plain = ''
  const moveGap = (at) => {
    if (at < gapStart) {
      const n = gapStart - at
      buf.copyWithin(gapEnd - n, at, gapStart)
      gapStart -= n
      gapEnd -= n
    } else if (at > gapStart) {
      const n = at - gapStart
      buf.copyWithin(gapStart, gapEnd, gapEnd + n)
      gapStart += n
      gapEnd += n
    }
  }
  const contents = () =>
    Buffer.from(buf.buffer, 0, gapStart * 2).toString('utf16le') +
    Buffer.from(buf.buffer, gapEnd * 2, (buf.length - gapEnd) * 2).toString('utf16le')
  for (let i = 0; i < pos.length; i++) {
    const at = pos[i]
    const length = buf.length - (gapEnd - gapStart)
    const ch = chars[i]
    if (at < 0 || at > length || (ch === null && at >= length)) {
      throw new Error(`edit ${i} at ${at} is outside the text (length ${length})`)
    }
    if (gapStart === gapEnd) {
      const grown = new Uint16Array(buf.length * 2)
      grown.set(buf.subarray(0, gapStart), 0)
      const tail = buf.length - gapEnd
      grown.set(buf.subarray(gapEnd), grown.length - tail)
      gapEnd = grown.length - tail
      buf = grown
    }
    moveGap(at)
    if (ch === null) {
      gapEnd++
    } else {
      buf[gapStart++] = ch.charCodeAt(0)
    }
    if (i < check) {
      plain = ch === null ? plain.slice(0, at) + plain.slice(at + 1) : plain.slice(0, at) + ch + plain.slice(at)
      if (i === check - 1 && plain !== contents()) {
        throw new Error(`the gap buffer and a plain string disagree after ${check} edits`)
      }
    }
  }
  return contents()
}

/** Where two texts first differ, with some context from each. */
const firstDifference = (expected, actual) => {
  if (expected === actual) return null
  let i = 0
  while (i < expected.length && i < actual.length && expected[i] === actual[i]) i++
  return {
    index: i,
    expected_length: expected.length,
    actual_length: actual.length,
    expected: expected.slice(Math.max(0, i - 40), i + 40),
    actual: actual.slice(Math.max(0, i - 40), i + 40)
  }
}

// ---------------------------------------------------------------------------
// Clients

/** A Y.Doc with a Y.Text "text" behind a stock WebsocketProvider. */
const connect = (name, token) => {
  const doc = new Y.Doc()
  const text = doc.getText('text')
  const provider = new WebsocketProvider(options.url, options.room, doc, {
    WebSocketPolyfill: WebSocket,
    params: { token },
    // Node has a BroadcastChannel: without this, clients in one process
    // would sync through it instead of through the server.
    disableBc: true
  })
  const client = { name, doc, text, provider, closes: [], leaving: false }
  // A reconnect sends sync step 2 both ways and would quietly repair a
  // lost update: every close is reported and fails the test.
  provider.on('connection-close', (event) => {
    if (client.leaving) return
    const close = { code: event ? event.code : null, reason: event ? String(event.reason) : null }
    client.closes.push(close)
    log(`${name}: connection closed ${JSON.stringify(close)}`)
  })
  return client
}

/** Polls `check` until it returns true; throws `describe()` on timeout. */
const waitFor = async (timeoutMs, check, describe) => {
  const deadline = Date.now() + timeoutMs
  while (!check()) {
    if (Date.now() >= deadline) throw new Error(describe())
    await sleep(5)
  }
}

const waitSynced = (client, timeoutMs) =>
  waitFor(timeoutMs, () => client.provider.synced, () => `${client.name}: not synced after ${timeoutMs} ms`)

/**
 * Waits until `client` holds exactly `expected`; prints progress every few
 * seconds. Returns what it holds at the end, equal or not.
 */
const waitForText = async (client, expected, timeoutMs) => {
  const deadline = Date.now() + timeoutMs
  let lastReport = Date.now()
  let lastProgress = Date.now()
  let lastState = null
  for (;;) {
    if (client.text.length === expected.length && client.text.toString() === expected) break
    if (Date.now() >= deadline) {
      log(`${client.name}: still not the expected text after ${timeoutMs} ms`)
      break
    }
    const state = Buffer.from(Y.encodeStateVector(client.doc)).toString('hex') + `/${client.text.length}`
    if (state !== lastState) {
      lastState = state
      lastProgress = Date.now()
    } else if (Date.now() - lastProgress > stallMs) {
      log(`${client.name}: received nothing new for ${stallMs} ms; ${pending(client)}`)
      break
    }
    if (Date.now() - lastReport > 5000) {
      lastReport = Date.now()
      log(`${client.name}: ${client.text.length} of ${expected.length} code units; ${pending(client)}`)
    }
    await sleep(20)
  }
  const text = client.text.toString()
  return { length: text.length, sha256: sha256(text), equal: text === expected, first_difference: firstDifference(expected, text) }
}

/** Whether the client holds updates it cannot apply yet: a gap before them. */
const pending = (client) =>
  `pending structs: ${client.doc.store.pendingStructs !== null}, pending deletes: ${client.doc.store.pendingDs !== null}`

const leave = (client) => {
  client.leaving = true
  client.provider.destroy()
}

const closesOf = (...clients) => Object.fromEntries(clients.map((client) => [client.name, [...client.closes]]))

// ---------------------------------------------------------------------------
// Modes

const replay = async (trace, expected) => {
  const singleOps = Math.min(options.single_ops, trace.pos.length)
  const batchOps = options.batch_ops
  const window = options.window
  const timeoutMs = options.timeout_ms

  const writer = connect('writer', options.writer_token)
  const reader = connect('reader', options.reader_token)
  await waitSynced(writer, timeoutMs)
  await waitSynced(reader, timeoutMs)
  if (writer.text.length !== 0 || reader.text.length !== 0) throw new Error('the document is not empty')

  // The writer's clock after each transaction: the reader has received
  // transaction k once its state for the writer reaches clocks[k] (edits
  // that only delete do not advance it; the window stays approximate).
  const writerId = writer.doc.clientID
  const clocks = []
  let transactions = 0
  let lastProgress = Date.now()
  let lastSeen = 0
  const replayStarted = Date.now()
  const pace = async () => {
    if (window <= 0 || clocks.length <= window) {
      await new Promise((resolve) => setImmediate(resolve))
      return
    }
    const target = clocks[clocks.length - 1 - window]
    for (;;) {
      const seen = Y.getState(reader.doc.store, writerId)
      if (seen !== lastSeen) {
        lastSeen = seen
        lastProgress = Date.now()
      }
      if (seen >= target) return
      if (Date.now() - lastProgress > stallMs) {
        throw new Error(
          `the reader got nothing new for ${stallMs} ms: it has the writer's clock ${seen}, ` +
            `waiting for ${target} (writer at ${Y.getState(writer.doc.store, writerId)}, ` +
            `transaction ${transactions}); ${pending(reader)}; closes ${JSON.stringify(closesOf(writer, reader))}`
        )
      }
      await sleep(1)
    }
  }
  const apply = (from, to) => {
    writer.doc.transact(() => {
      for (let i = from; i < to; i++) {
        const ch = trace.chars[i]
        if (ch === null) writer.text.delete(trace.pos[i], 1)
        else writer.text.insert(trace.pos[i], ch)
      }
    })
    transactions++
    clocks.push(Y.getState(writer.doc.store, writerId))
  }

  for (let i = 0; i < singleOps; i++) {
    apply(i, i + 1)
    await pace()
  }
  const singleMs = Date.now() - replayStarted
  log(`writer: ${singleOps} edits one by one in ${singleMs} ms`)
  for (let i = singleOps; i < trace.pos.length; i += batchOps) {
    apply(i, Math.min(i + batchOps, trace.pos.length))
    await pace()
    if (transactions % 100 === 0) log(`writer: ${transactions} transactions, ${Math.min(i + batchOps, trace.pos.length)} edits`)
  }
  const writerText = writer.text.toString()
  const sentMs = Date.now() - replayStarted
  log(`writer: replayed ${trace.pos.length} edits in ${transactions} transactions (${sentMs} ms)`)

  const read = await waitForText(reader, expected, timeoutMs)
  const replayMs = Date.now() - replayStarted
  log(`reader: ${read.equal ? 'equal' : 'DIFFERENT'} after ${replayMs} ms`)

  // A client joining while the document is still open (loaded in memory).
  const late = connect('late-open', options.reader_token)
  let lateRead
  try {
    await waitSynced(late, timeoutMs)
    lateRead = await waitForText(late, expected, 10000)
  } catch (err) {
    lateRead = { equal: false, error: String(err) }
  }

  const result = {
    mode: 'replay',
    ops: trace.pos.length,
    deletes: trace.chars.filter((ch) => ch === null).length,
    single_ops: singleOps,
    transactions,
    expected_length: expected.length,
    expected_sha256: sha256(expected),
    writer_equal: writerText === expected,
    reader: read,
    late_open: lateRead,
    closes: closesOf(writer, reader, late),
    single_ms: singleMs,
    sent_ms: sentMs,
    replay_ms: replayMs
  }
  for (const client of [writer, reader, late]) leave(client)
  return result
}

const readOnce = async (expected) => {
  const client = connect('late', options.token)
  await waitSynced(client, options.timeout_ms)
  const read = await waitForText(client, expected, 10000)
  const result = {
    mode: 'read',
    ops: options.ops,
    expected_length: expected.length,
    expected_sha256: sha256(expected),
    late: read,
    closes: closesOf(client)
  }
  leave(client)
  return result
}

const main = async () => {
  const trace = generateTrace(options.seed, options.ops)
  const expected = expectedText(trace, 5000)
  log(`trace: ${trace.pos.length} edits, final length ${expected.length}`)
  let result
  let ok
  if (options.mode === 'replay') {
    result = await replay(trace, expected)
    ok = result.writer_equal && result.reader.equal && result.late_open.equal
  } else if (options.mode === 'read') {
    result = await readOnce(expected)
    ok = result.late.equal
  } else {
    // Only the trace, for tuning it.
    result = {
      mode: 'trace',
      ops: trace.pos.length,
      deletes: trace.chars.filter((ch) => ch === null).length,
      expected_length: expected.length,
      expected_sha256: sha256(expected)
    }
    ok = true
  }
  result.elapsed_ms = Date.now() - started
  process.stdout.write(JSON.stringify({ result }) + '\n')
  // Let the providers' close frames go out before leaving.
  setTimeout(() => process.exit(ok ? 0 : 1), 100)
}

main().catch((err) => {
  process.stdout.write(JSON.stringify({ result: { error: String(err && err.stack ? err.stack : err) } }) + '\n')
  setTimeout(() => process.exit(1), 100)
})
