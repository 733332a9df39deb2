/**
 * Reads both directions of one PostgreSQL connection (protocol 3: a type byte and a 4-byte length
 * per message, untyped startup messages first) and counts what a transaction costs on the wire.
 *
 * 1. Every ReadyForQuery ('Z') from the server ends one request cycle; its status byte says where
 *    the session is: 'I' idle, 'T' in a transaction, 'E' in a failed transaction.
 * 2. A transaction is the run of Z messages from the first one whose status is not 'I' to the next
 *    'I' inclusive. Its round trips are the Z messages in that run (the figure issue 8 targets).
 * 3. A flight is a Z after which nothing the client sent is still unanswered: a client that
 *    pipelines several Syncs waits once for all of them. Flights ≤ Z messages; they differ only for
 *    clients that pipeline (postgres.js with `Promise.all`, pg's `pipeline` mode).
 * 4. Optionally, the statements of the transaction are kept as a trace (one line per executed
 *    statement, `│` where the client waited for the server).
 *
 * The parser runs in the proxy's own process: it costs the client under test nothing.
 *
 * @module
 */

/** What one completed transaction cost. */
export interface TransactionCount {
  /** ReadyForQuery messages from its first to its last statement. */
  readonly z: number
  /** Times the client waited with nothing left in flight. */
  readonly flights: number
  /** How it ended: the tag of its last CommandComplete was COMMIT, or anything else (ROLLBACK). */
  readonly ending: 'commit' | 'rollback'
  /** The statements, when tracing. */
  readonly trace: readonly string[] | undefined
}

/** Receives what the parser finds. */
export interface CounterSink {
  transaction(count: TransactionCount): void
  /** A Z outside any transaction: an autocommit statement (or the end of the startup). */
  autocommit(startup: boolean): void
  /** An ErrorResponse from the server, with its SQLSTATE. */
  serverError(code: string): void
}

const SSL_REQUEST = 80877103
const GSSENC_REQUEST = 80877104
const CANCEL_REQUEST = 80877102
const MAX_TRACE_LINES = 200

/** The per-connection state shared by the two directions. */
export class ConnectionCounter {
  /** Syncs and simple queries sent but not yet answered with Z. */
  private outstanding = 0
  private inTransaction = false
  private started = false
  private z = 0
  private flights = 0
  private lastCommand = ''
  private lines: string[] = []
  /** Prepared statement texts by name, to trace executions of cached statements. */
  private readonly statements = new Map<string, string>()
  private readonly portals = new Map<string, string>()
  /** Bytes the server sends unframed: the one-byte answer to SSLRequest / GSSENCRequest. */
  private rawServerBytes = 0
  private clientStartup = true
  private readonly client = new Framer(false)
  private readonly server = new Framer(true)

  constructor(
    private readonly sink: CounterSink,
    private readonly tracing: () => boolean,
  ) {}

  /** Bytes from the client, in order. */
  fromClient(chunk: Buffer): void {
    this.client.push(chunk, (type, body) => this.clientMessage(type, body))
  }

  /** Bytes from the server, in order. */
  fromServer(chunk: Buffer): void {
    let data = chunk
    if (this.rawServerBytes > 0) {
      const n = Math.min(this.rawServerBytes, data.length)
      this.rawServerBytes -= n
      data = data.subarray(n)
      if (data.length === 0) return
    }
    this.server.push(data, (type, body) => this.serverMessage(type, body))
  }

  private clientMessage(type: number, body: Buffer): void {
    if (type === UNTYPED) {
      const code = body.length >= 4 ? body.readInt32BE(0) : 0
      if (code === SSL_REQUEST || code === GSSENC_REQUEST) this.rawServerBytes++
      else if (code !== CANCEL_REQUEST) this.clientStartup = false
      this.client.typed = !this.clientStartup
      return
    }
    switch (type) {
      case 0x51: // 'Q' simple query
        this.outstanding++
        this.trace(`Q ${cstring(body, 0).text}`)
        break
      case 0x53: // 'S' Sync
        this.outstanding++
        break
      case 0x50: {
        // 'P' Parse: statement name, text
        const name = cstring(body, 0)
        const text = cstring(body, name.end)
        this.statements.set(name.text, text.text)
        break
      }
      case 0x42: {
        // 'B' Bind: portal name, statement name
        const portal = cstring(body, 0)
        const statement = cstring(body, portal.end)
        this.portals.set(portal.text, statement.text)
        break
      }
      case 0x45: {
        // 'E' Execute: portal name
        const portal = cstring(body, 0).text
        const statement = this.portals.get(portal) ?? ''
        this.trace(this.statements.get(statement) ?? `<statement ${statement}>`)
        break
      }
      default:
        break
    }
  }

  private serverMessage(type: number, body: Buffer): void {
    switch (type) {
      case 0x43: // 'C' CommandComplete: remember the tag (COMMIT / ROLLBACK)
        this.lastCommand = cstring(body, 0).text
        break
      case 0x45: {
        // 'E' ErrorResponse: fields of a type byte and a string; 'C' is the SQLSTATE
        let at = 0
        while (at < body.length && body[at] !== 0) {
          const field = body[at] as number
          const value = cstring(body, at + 1)
          if (field === 0x43) {
            this.sink.serverError(value.text)
            this.trace(`  → error ${value.text}`)
          }
          at = value.end
        }
        break
      }
      case 0x5a: // 'Z' ReadyForQuery
        this.readyForQuery(body[0] ?? 0x49)
        break
      default:
        break
    }
  }

  private readyForQuery(status: number): void {
    if (this.outstanding > 0) this.outstanding--
    const flightEnded = this.outstanding === 0
    if (!this.started) {
      this.started = true
      this.sink.autocommit(true)
      this.lines = []
      return
    }
    const idle = status === 0x49 // 'I'
    if (!this.inTransaction && idle) {
      this.sink.autocommit(false)
      if (flightEnded) this.lines = []
      return
    }
    this.inTransaction = true
    this.z++
    if (flightEnded) {
      this.flights++
      this.trace('│')
    }
    if (!idle) return
    this.sink.transaction({
      z: this.z,
      flights: this.flights,
      ending: this.lastCommand === 'COMMIT' ? 'commit' : 'rollback',
      trace: this.tracing() ? this.lines : undefined,
    })
    this.inTransaction = false
    this.z = 0
    this.flights = 0
    this.lines = []
  }

  private trace(line: string): void {
    if (this.tracing() && this.lines.length < MAX_TRACE_LINES) this.lines.push(line.replace(/\s+/g, ' ').trim())
  }
}

const UNTYPED = -1

/** Splits a byte stream into messages; keeps only what a partial message needs. */
class Framer {
  private pending: Buffer | undefined

  /** The client's first messages (SSLRequest, StartupMessage) have no type byte. */
  constructor(public typed: boolean) {}

  push(chunk: Buffer, onMessage: (type: number, body: Buffer) => void): void {
    const data = this.pending === undefined ? chunk : Buffer.concat([this.pending, chunk])
    this.pending = undefined
    let at = 0
    for (;;) {
      const header = this.typed ? 5 : 4
      if (data.length - at < header) break
      const type = this.typed ? (data[at] as number) : UNTYPED
      const length = data.readInt32BE(this.typed ? at + 1 : at)
      const total = this.typed ? 1 + length : length
      if (data.length - at < total) break
      onMessage(type, data.subarray(at + header, at + total))
      at += total
    }
    if (at < data.length) this.pending = Buffer.from(data.subarray(at))
  }
}

function cstring(buffer: Buffer, start: number): { text: string; end: number } {
  const zero = buffer.indexOf(0, start)
  const end = zero === -1 ? buffer.length : zero
  return { text: buffer.toString('utf8', start, end), end: end + 1 }
}
