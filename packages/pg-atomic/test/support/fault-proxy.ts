/**
 * A TCP proxy in front of the test PostgreSQL server that injects faults at exact points of the
 * wire protocol, for the fault-injection tests.
 *
 * It parses both directions just enough to see message boundaries:
 * - client → server: the untyped startup packet (and an SSLRequest before it), then typed messages;
 *   the text of every simple Query ('Q') and Parse ('P') message is logged in `queries`;
 * - server → client: typed messages, to learn each connection's backend pid (BackendKeyData, 'K').
 *
 * Faults:
 * - `armCommitFault('lost-before-server')`: the next simple Query whose text ends with `COMMIT` is
 *   not forwarded; both sockets of that connection are destroyed instead. The server sees the
 *   client go away inside the transaction and rolls it back.
 * - `armCommitFault('response-lost')`: the next such COMMIT is forwarded; the server's answer is
 *   swallowed and both sockets are destroyed as soon as it arrives (so COMMIT has been executed).
 * - `armStatementFault(test, mode)`: acts on the next Parse message (extended protocol) whose text
 *   matches `test`, from any connection — `'fail'` rewrites its text to `SELECT 1/0` (the server
 *   answers 22012 and skips every message up to the next Sync), `'cut-before'` destroys both
 *   sockets before it reaches the server, `'cut-after'` forwards it with its Bind and Execute (so
 *   the server runs it) and destroys both sockets right after.
 * - `connection.freeze()` / `thaw()`: while frozen, nothing the server sends (or its closing the
 *   socket) reaches the client, so a backend can be terminated without the client noticing; `thaw()`
 *   delivers what was held and then the close.
 */
import net from 'node:net'

/** Where a COMMIT is lost. */
export type CommitFault = 'lost-before-server' | 'response-lost'

/** What happens to a statement sent with the extended protocol (see {@link FaultProxy.armStatementFault}). */
export type StatementFault = 'fail' | 'cut-before' | 'cut-after'

/** The text a `'fail'` statement fault puts in place of the statement's. */
export const INJECTED_FAILURE_SQL = 'SELECT 1/0'

/** One client connection through the proxy. */
export interface ProxyConnection {
  /** Backend pid from BackendKeyData, once the server has sent it. */
  readonly pid: number | undefined
  /** Whether both sockets are gone. */
  readonly closed: boolean
  /** Holds everything the server sends (and its close) until `thaw()`. */
  freeze(): void
  /** Delivers what was held; if the server closed meanwhile, then closes the client's socket. */
  thaw(): void
}

export interface FaultProxy {
  readonly host: string
  readonly port: number
  /** Texts of the Query and Parse messages clients sent, in the order the proxy received them. */
  readonly queries: string[]
  /** `url` (a postgres:// URL of the target server) with host and port replaced by the proxy's. */
  urlFor(url: string): string
  /** Loses the next COMMIT as `mode` says; resolves with the COMMIT's text once it happened. */
  armCommitFault(mode: CommitFault): Promise<string>
  /**
   * Applies `mode` to the next Parse message whose text matches `test`; resolves with that text
   * once done.
   */
  armStatementFault(test: RegExp, mode: StatementFault): Promise<string>
  /** Resolves with the text of the next Query/Parse message matching `test`, from any connection. */
  nextQuery(test: RegExp): Promise<{ text: string; connection: ProxyConnection }>
  /** The connection whose backend has `pid`. */
  connectionOf(pid: number): ProxyConnection | undefined
  /** Number of connections ever accepted. */
  readonly accepted: number
  /** Stops listening and destroys every connection. */
  close(): Promise<void>
}

const SSL_REQUEST_CODE = 80877103
const GSSENC_REQUEST_CODE = 80877104
const COMMIT_AT_END = /(?:^|;)\s*COMMIT\s*;?\s*$/i

interface Waiter {
  readonly test: RegExp
  readonly resolve: (value: { text: string; connection: ProxyConnection }) => void
}

class Connection implements ProxyConnection {
  pid: number | undefined = undefined
  closed = false
  private frozen = false
  private held: Buffer[] = []
  private serverEnded = false
  /** Parsing state, client → server. */
  private inbound: Buffer = Buffer.alloc(0)
  private startup = true
  /** Parsing state, server → client. */
  private outbound: Buffer = Buffer.alloc(0)
  private expectSslAnswer = false
  /** 'response-lost' fault in progress: the next bytes from the server are swallowed. */
  private swallowResponse: (() => void) | undefined = undefined
  /** 'cut-after' fault in progress: the connection is cut after the next Execute message. */
  private cutAfterExecute: (() => void) | undefined = undefined

  constructor(
    private readonly proxy: Proxy,
    private readonly client: net.Socket,
    private readonly server: net.Socket,
  ) {
    // Errors (ECONNRESET, EPIPE) are expected when faults are injected: never let them go unhandled.
    client.on('error', () => this.destroy())
    server.on('error', () => {
      if (!this.frozen) return this.destroy()
      this.serverEnded = true
      server.destroy()
    })
    client.on('data', (chunk: Buffer) => this.fromClient(chunk))
    server.on('data', (chunk: Buffer) => this.fromServer(chunk))
    client.on('close', () => this.destroy())
    server.on('close', () => {
      this.serverEnded = true
      if (!this.frozen) this.destroy()
    })
  }

  freeze(): void {
    this.frozen = true
  }

  thaw(): void {
    this.frozen = false
    const held = this.held
    this.held = []
    for (const chunk of held) if (this.client.writable) this.client.write(chunk)
    if (this.serverEnded) this.client.end()
  }

  destroy(): void {
    this.closed = true
    this.client.destroy()
    this.server.destroy()
  }

  private fromClient(chunk: Buffer): void {
    this.inbound = this.inbound.length === 0 ? chunk : Buffer.concat([this.inbound, chunk])
    let forwardFrom = 0
    let offset = 0
    for (;;) {
      const buf = this.inbound
      if (this.startup) {
        if (buf.length - offset < 8) break
        const length = buf.readInt32BE(offset)
        if (buf.length - offset < length) break
        const code = buf.readInt32BE(offset + 4)
        if (code === SSL_REQUEST_CODE || code === GSSENC_REQUEST_CODE) this.expectSslAnswer = true
        else this.startup = false
        offset += length
        continue
      }
      if (buf.length - offset < 5) break
      const type = String.fromCharCode(buf[offset] as number)
      const length = buf.readInt32BE(offset + 1)
      if (buf.length - offset < 1 + length) break
      const body = buf.subarray(offset + 5, offset + 1 + length)
      if (type === 'E' && this.cutAfterExecute !== undefined) {
        const done = this.cutAfterExecute
        this.cutAfterExecute = undefined
        this.forward(buf.subarray(forwardFrom, offset + 1 + length))
        this.inbound = Buffer.alloc(0)
        // Let the server read what was forwarded before the connection goes.
        setTimeout(() => {
          this.destroy()
          done()
        }, 50)
        return
      }
      const text = type === 'Q' ? cString(body, 0) : type === 'P' ? cString(body, body.indexOf(0) + 1) : undefined
      const statementFault = type === 'P' && text !== undefined ? this.proxy.takeStatementFault(text) : undefined
      if (statementFault !== undefined && text !== undefined) {
        this.proxy.queries.push(text)
        this.proxy.sawQuery(text, this)
        this.forward(buf.subarray(forwardFrom, offset))
        if (statementFault.mode === 'cut-before') {
          this.inbound = Buffer.alloc(0)
          this.destroy()
          statementFault.done(text)
          return
        }
        if (statementFault.mode === 'cut-after') {
          this.cutAfterExecute = () => statementFault.done(text)
          forwardFrom = offset
        } else {
          this.forward(rewriteParse(body, INJECTED_FAILURE_SQL))
          forwardFrom = offset + 1 + length
          statementFault.done(text)
        }
        offset += 1 + length
        continue
      }
      if (text !== undefined) {
        this.proxy.queries.push(text)
        this.proxy.sawQuery(text, this)
        const fault = type === 'Q' && COMMIT_AT_END.test(text) ? this.proxy.takeCommitFault() : undefined
        if (fault !== undefined) {
          // Everything before the COMMIT goes through as usual.
          this.forward(buf.subarray(forwardFrom, offset))
          if (fault.mode === 'lost-before-server') {
            this.inbound = Buffer.alloc(0)
            this.destroy()
            fault.done(text)
            return
          }
          this.swallowResponse = () => {
            this.destroy()
            fault.done(text)
          }
          forwardFrom = offset
        }
      }
      offset += 1 + length
    }
    this.forward(this.inbound.subarray(forwardFrom, offset))
    this.inbound = this.inbound.subarray(offset)
  }

  private forward(bytes: Buffer): void {
    if (bytes.length > 0 && this.server.writable) this.server.write(bytes)
  }

  private fromServer(chunk: Buffer): void {
    if (this.swallowResponse !== undefined) {
      const done = this.swallowResponse
      this.swallowResponse = undefined
      done()
      return
    }
    this.learnPid(chunk)
    if (this.frozen) this.held.push(chunk)
    else if (this.client.writable) this.client.write(chunk)
  }

  /** Finds BackendKeyData in the server's stream (the rest is passed through untouched). */
  private learnPid(chunk: Buffer): void {
    if (this.pid !== undefined) return
    this.outbound = this.outbound.length === 0 ? chunk : Buffer.concat([this.outbound, chunk])
    let offset = 0
    if (this.expectSslAnswer && this.outbound.length > 0) {
      this.expectSslAnswer = false
      offset = 1
    }
    const buf = this.outbound
    while (buf.length - offset >= 5) {
      const type = String.fromCharCode(buf[offset] as number)
      const length = buf.readInt32BE(offset + 1)
      if (buf.length - offset < 1 + length) break
      if (type === 'K') {
        this.pid = buf.readInt32BE(offset + 5)
        this.outbound = Buffer.alloc(0)
        return
      }
      offset += 1 + length
    }
    this.outbound = buf.subarray(offset)
  }
}

/** A Parse message with the same statement name and parameter types, and `text` as its SQL. */
function rewriteParse(body: Buffer, text: string): Buffer {
  const nameEnd = body.indexOf(0)
  const textEnd = body.indexOf(0, nameEnd + 1)
  const name = body.subarray(0, nameEnd + 1)
  const rest = body.subarray(textEnd + 1)
  const sql = Buffer.from(`${text}\0`, 'utf8')
  const header = Buffer.alloc(5)
  header.write('P', 0, 'latin1')
  header.writeInt32BE(4 + name.length + sql.length + rest.length, 1)
  return Buffer.concat([header, name, sql, rest])
}

function cString(buf: Buffer, start: number): string {
  const end = buf.indexOf(0, start)
  return buf.toString('utf8', start, end === -1 ? buf.length : end)
}

class Proxy implements FaultProxy {
  readonly host = '127.0.0.1'
  port = 0
  readonly queries: string[] = []
  accepted = 0
  private readonly connections = new Set<Connection>()
  private commitFault: { mode: CommitFault; done: (text: string) => void } | undefined = undefined
  private statementFault: { test: RegExp; mode: StatementFault; done: (text: string) => void } | undefined = undefined
  private waiters: Waiter[] = []
  private readonly server: net.Server

  constructor(private readonly target: { host: string; port: number }) {
    this.server = net.createServer((client) => {
      this.accepted++
      const upstream = net.connect(this.target.port, this.target.host)
      // No Nagle delay: the tests count on messages going out as soon as they are written.
      client.setNoDelay(true)
      upstream.setNoDelay(true)
      const connection = new Connection(this, client, upstream)
      this.connections.add(connection)
      client.on('close', () => this.connections.delete(connection))
    })
  }

  async listen(): Promise<void> {
    await new Promise<void>((resolve, reject) => {
      this.server.once('error', reject)
      this.server.listen(0, this.host, () => {
        this.server.off('error', reject)
        resolve()
      })
    })
    this.port = (this.server.address() as net.AddressInfo).port
  }

  urlFor(url: string): string {
    const u = new URL(url)
    u.hostname = this.host
    u.port = String(this.port)
    return u.toString()
  }

  armCommitFault(mode: CommitFault): Promise<string> {
    if (this.commitFault !== undefined) throw new Error('a COMMIT fault is already armed')
    return new Promise((resolve) => {
      this.commitFault = { mode, done: resolve }
    })
  }

  /** @internal */
  takeCommitFault(): { mode: CommitFault; done: (text: string) => void } | undefined {
    const fault = this.commitFault
    this.commitFault = undefined
    return fault
  }

  armStatementFault(test: RegExp, mode: StatementFault): Promise<string> {
    if (this.statementFault !== undefined) throw new Error('a statement fault is already armed')
    return new Promise((resolve) => {
      this.statementFault = { test, mode, done: resolve }
    })
  }

  /** @internal */
  takeStatementFault(text: string): { mode: StatementFault; done: (text: string) => void } | undefined {
    const fault = this.statementFault
    if (fault === undefined || !fault.test.test(text)) return undefined
    this.statementFault = undefined
    return fault
  }

  nextQuery(test: RegExp): Promise<{ text: string; connection: ProxyConnection }> {
    return new Promise((resolve) => this.waiters.push({ test, resolve }))
  }

  /** @internal */
  sawQuery(text: string, connection: Connection): void {
    if (this.waiters.length === 0) return
    const matched = this.waiters.filter((w) => w.test.test(text))
    this.waiters = this.waiters.filter((w) => !matched.includes(w))
    for (const w of matched) w.resolve({ text, connection })
  }

  connectionOf(pid: number): ProxyConnection | undefined {
    for (const c of this.connections) if (c.pid === pid) return c
    return undefined
  }

  async close(): Promise<void> {
    for (const c of this.connections) c.destroy()
    this.connections.clear()
    await new Promise<void>((resolve) => this.server.close(() => resolve()))
  }
}

/** Starts a proxy on 127.0.0.1 (a free port) forwarding to `target`. */
export async function startFaultProxy(target: { host: string; port: number }): Promise<FaultProxy> {
  const proxy = new Proxy(target)
  await proxy.listen()
  return proxy
}

/** Host and port of a postgres:// URL (default port 5432). */
export function targetOf(url: string): { host: string; port: number } {
  const u = new URL(url)
  return {
    host: u.hostname === '' || u.hostname === 'localhost' ? '127.0.0.1' : u.hostname,
    port: u.port === '' ? 5432 : Number(u.port),
  }
}
