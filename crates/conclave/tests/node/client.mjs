// A real Yjs editor for the tests: a Y.Doc with a Y.Text named "text",
// synced through a stock provider: y-websocket's WebsocketProvider, or with
// "protocol":"hocuspocus" @hocuspocus/provider's HocuspocusProvider. It is
// driven by JSON commands on stdin (one per line). Each command gets one
// JSON answer line on stdout with the same id; events (status, synced,
// close, authenticated...) are lines without an id.
//
//   node client.mjs '{"url":"ws://127.0.0.1:8080/collab","room":"pad","token":"cd1...","user":"alice"}'
//   node client.mjs '{"protocol":"hocuspocus","url":"ws://127.0.0.1:8080/hocuspocus","room":"pad","token":"cd1...","user":"bob"}'

import * as Y from 'yjs'
import { WebsocketProvider } from 'y-websocket'
import { HocuspocusProvider } from '@hocuspocus/provider'
import WebSocket from 'ws'
import readline from 'node:readline'

const options = JSON.parse(process.argv[2])
const hocuspocus = options.protocol === 'hocuspocus'
const doc = new Y.Doc()
const text = doc.getText('text')
const emit = (line) => process.stdout.write(JSON.stringify(line) + '\n')
const closes = []
const auth = { scope: null, failures: [] }
const stateless = []
const onClose = (event) => {
  const close = { code: event ? event.code : null, reason: event ? String(event.reason) : null }
  closes.push(close)
  emit({ event: 'close', ...close })
}

const provider = hocuspocus
  ? new HocuspocusProvider({
    url: options.url,
    name: options.room,
    document: doc,
    token: options.token,
    WebSocketPolyfill: WebSocket,
    onAuthenticated: ({ scope }) => { auth.scope = scope; emit({ event: 'authenticated', scope }) },
    onAuthenticationFailed: ({ reason }) => { auth.failures.push(reason); emit({ event: 'authentication_failed', reason }) },
    onStateless: ({ payload }) => { stateless.push(payload) },
    onClose: ({ event }) => onClose(event)
  })
  : new WebsocketProvider(options.url, options.room, doc, {
    WebSocketPolyfill: WebSocket,
    params: { token: options.token },
    // Node has a BroadcastChannel: without this, clients in one process
    // would sync through it instead of through the server.
    disableBc: true
  })
provider.awareness.setLocalStateField('user', { name: options.user })

provider.on('status', ({ status }) => emit({ event: 'status', status }))
if (hocuspocus) {
  provider.on('synced', () => emit({ event: 'synced' }))
} else {
  provider.on('sync', (synced) => { if (synced) emit({ event: 'synced' }) })
  provider.on('connection-close', onClose)
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

/** Polls `check` until it returns a value other than undefined. */
const waitFor = async (what, timeoutMs, check) => {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    const value = check()
    if (value !== undefined) return value
    if (Date.now() >= deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`)
    await sleep(10)
  }
}

/** Names of the other clients' awareness states. */
const peers = () => {
  const names = []
  provider.awareness.getStates().forEach((state, clientId) => {
    if (clientId !== doc.clientID && state && state.user) names.push(state.user.name)
  })
  return names.sort()
}

const commands = {
  async wait_synced ({ timeout_ms }) {
    await waitFor('sync', timeout_ms, () => (provider.synced ? true : undefined))
    return { text: text.toString() }
  },
  // Inserts `count` chunks `${prefix}${i};` one by one, at the start or
  // the end, yielding between them so that edits interleave with a peer's.
  async burst ({ prefix, count, at_start }) {
    for (let i = 0; i < count; i++) {
      const index = at_start ? 0 : text.length
      text.insert(index, `${prefix}${i};`)
      await sleep(2)
    }
    return { text: text.toString() }
  },
  async insert ({ index, chunk }) {
    text.insert(index ?? text.length, chunk)
    return { text: text.toString() }
  },
  async text () {
    return { text: text.toString() }
  },
  async wait_text ({ contains = [], equals, timeout_ms }) {
    const current = await waitFor(`text containing ${JSON.stringify(contains)}`, timeout_ms, () => {
      const now = text.toString()
      const ok = contains.every((part) => now.includes(part)) && (equals === undefined || now === equals)
      return ok ? now : undefined
    })
    return { text: current }
  },
  async wait_peer ({ name, present, timeout_ms }) {
    await waitFor(`peer ${name} ${present ? 'present' : 'gone'}`, timeout_ms, () =>
      peers().includes(name) === present ? true : undefined)
    return { peers: peers() }
  },
  async peers () {
    return { peers: peers() }
  },
  async closes () {
    return { count: closes.length }
  },
  // Hocuspocus only: the scope the server granted, or why it refused.
  async wait_auth ({ timeout_ms }) {
    await waitFor('an auth answer', timeout_ms, () =>
      (auth.scope !== null || auth.failures.length > 0) ? true : undefined)
    return { scope: auth.scope, failures: auth.failures }
  },
  // Hocuspocus only: edits the server has not confirmed storing yet.
  async unsynced () {
    return { count: provider.unsyncedChanges }
  },
  async wait_all_stored ({ timeout_ms }) {
    await waitFor('every change stored', timeout_ms, () => (provider.unsyncedChanges === 0 ? true : undefined))
    return {}
  },
  async send_stateless ({ payload }) {
    provider.sendStateless(payload)
    return {}
  },
  async wait_stateless ({ count, timeout_ms }) {
    await waitFor(`${count} stateless messages`, timeout_ms, () => (stateless.length >= count ? true : undefined))
    return { payloads: stateless }
  },
  async wait_close ({ timeout_ms }) {
    const close = await waitFor('a close', timeout_ms, () => closes[0])
    return close
  },
  async exit () {
    provider.destroy()
    setTimeout(() => process.exit(0), 50)
    return {}
  }
}

const input = readline.createInterface({ input: process.stdin })
input.on('line', async (line) => {
  let request
  try {
    request = JSON.parse(line)
    const run = commands[request.cmd]
    if (!run) throw new Error(`unknown command ${request.cmd}`)
    emit({ id: request.id, ok: true, ...(await run(request)) })
  } catch (err) {
    emit({ id: request ? request.id : null, ok: false, error: String(err && err.stack ? err.stack : err) })
  }
})
// The test closed our stdin, or died: stop rather than reconnect forever.
input.on('close', () => process.exit(0))
