/**
 * Holding a `node:http` response until the request's transaction has an outcome: the status,
 * headers and body a handler writes stay in memory, and leave only when told. The response's own
 * `writeHead`, `write`, `end` and `flushHeaders` are wrapped on the instance, the way the
 * `compression` middleware wraps them; nothing else of Node's internals is used.
 *
 * - `end()` while holding: the response is complete (`complete(status)`).
 * - `write()` or `flushHeaders()` while holding, a piped stream included: the response starts
 *   streaming (`stream(status)`); the bytes are held until the outcome is known.
 * - `release()` sends what is held, in order, and lets everything through afterwards.
 * - `discard()` drops it, puts the status and headers back as they were when the hold began (the
 *   handler's cookies and other headers are removed, those of earlier middleware kept), and lets
 *   only an error response through.
 *
 * @module
 * @internal
 */
import type { OutgoingHttpHeader, OutgoingHttpHeaders, ServerResponse } from 'node:http'
import type { Readable } from 'node:stream'
import { AtomicError } from '../errors'

/** Whom the hold tells that the response wants to leave. @internal */
export interface HoldListener {
  /** `end()` was called while holding: the response is complete. */
  complete(status: number): void
  /** Bytes would leave before the response is complete. */
  stream(status: number): void
}

type WriteCallback = (error?: Error | null) => void

interface Held {
  readonly chunk: unknown
  readonly encoding: BufferEncoding | undefined
  readonly callback: WriteCallback | undefined
}

interface Originals {
  readonly writeHead: ServerResponse['writeHead']
  readonly write: ServerResponse['write']
  readonly end: ServerResponse['end']
  readonly flushHeaders: ServerResponse['flushHeaders']
}

/**
 * `holding`: nothing wants to leave yet. `pending`: the response is complete or streaming, waiting
 * for the outcome. `passing`: released, or never held. `discarded`: the handler's response was
 * dropped; only an error response goes through.
 */
type Mode = 'holding' | 'pending' | 'passing' | 'discarded'

const DISCARDED_MESSAGE =
  "The response was discarded because the request's transaction failed, so this write was not " +
  'sent; an error response replaces it.'

/** The hold of one response. @internal */
export class ResponseHold {
  private mode: Mode = 'holding'
  private chunks: Held[] = []
  private ending: Held | undefined
  private flushRequested = false
  private bytes = 0
  private askedToWait = false
  private readonly sources = new Set<Readable>()
  private readonly original: Originals
  private readonly snapshot: {
    readonly statusCode: number
    readonly statusMessage: string
    readonly headers: ReadonlyMap<string, number | string | string[]>
  }

  constructor(
    private readonly res: ServerResponse,
    /** Bytes held while the outcome is pending before `write()` asks the writer to wait. */
    public limitBytes: number,
    private readonly listener: HoldListener,
  ) {
    const headers = new Map<string, number | string | string[]>()
    for (const [name, value] of Object.entries(res.getHeaders())) {
      if (value !== undefined) headers.set(name, Array.isArray(value) ? [...value] : value)
    }
    this.snapshot = { statusCode: res.statusCode, statusMessage: res.statusMessage, headers }
    this.original = {
      writeHead: res.writeHead,
      write: res.write,
      end: res.end,
      flushHeaders: res.flushHeaders,
    }
    res.on('pipe', (source: Readable) => this.sources.add(source))
    res.on('unpipe', (source: Readable) => this.sources.delete(source))
    res.writeHead = ((...args: unknown[]) => this.writeHead(args)) as ServerResponse['writeHead']
    res.write = ((...args: unknown[]) => this.write(args)) as ServerResponse['write']
    res.end = ((...args: unknown[]) => this.end(args)) as ServerResponse['end']
    res.flushHeaders = () => this.flushHeaders()
  }

  /** Sends what is held, in order, and lets everything through from now on. */
  release(): void {
    if (this.mode === 'passing') return
    this.mode = 'passing'
    const { chunks, ending } = this
    this.chunks = []
    this.ending = undefined
    const res = this.res
    try {
      if (this.flushRequested) this.original.flushHeaders.call(res)
      let flowing = true
      for (const held of chunks) flowing = (this.original.write as (...a: unknown[]) => boolean).apply(res, args(held))
      if (ending !== undefined) (this.original.end as (...a: unknown[]) => ServerResponse).apply(res, args(ending))
      else if (this.askedToWait && flowing) res.emit('drain')
    } catch (error) {
      // Node refused what the handler wrote (an invalid header, say): end the exchange rather
      // than leave the client waiting.
      res.destroy(error instanceof Error ? error : undefined)
    }
  }

  /**
   * Drops the held response and restores the status and headers of when the hold began, so an
   * error response can replace it; streams piped into the response are unpiped, and later writes
   * of the handler are dropped.
   */
  discard(): void {
    if (this.mode === 'passing') return
    this.drop()
    for (const source of this.sources) source.unpipe(this.res)
    this.mode = 'discarded'
  }

  /** Drops the held response and holds again, for another run of the handler. */
  reset(): void {
    if (this.mode === 'passing') return
    this.drop()
    this.mode = 'holding'
  }

  private drop(): void {
    const dropped = this.ending === undefined ? this.chunks : [...this.chunks, this.ending]
    this.chunks = []
    this.ending = undefined
    this.flushRequested = false
    this.bytes = 0
    for (const held of dropped) failLater(held.callback)
    const res = this.res
    const { headers, statusCode, statusMessage } = this.snapshot
    for (const name of res.getHeaderNames()) if (!headers.has(name)) res.removeHeader(name)
    for (const [name, value] of headers) res.setHeader(name, value)
    res.statusCode = statusCode
    res.statusMessage = statusMessage
  }

  private writeHead(args: unknown[]): ServerResponse {
    const res = this.res
    if (this.mode === 'passing' || this.mode === 'discarded') {
      return (this.original.writeHead as (...a: unknown[]) => ServerResponse).apply(res, args)
    }
    const [statusCode, reasonOrHeaders, maybeHeaders] = args
    if (typeof statusCode !== 'number' || !Number.isInteger(statusCode) || statusCode < 100 || statusCode > 999) {
      throw new RangeError('Invalid status code: writeHead() expects a whole number from 100 to 999.')
    }
    res.statusCode = statusCode
    let headers = maybeHeaders
    if (typeof reasonOrHeaders === 'string') res.statusMessage = reasonOrHeaders
    else headers = reasonOrHeaders
    if (Array.isArray(headers)) {
      // Node's rule for a flat [name, value, name, value] list: it replaces earlier values of
      // those names and keeps its own duplicates.
      const list = headers as OutgoingHttpHeader[]
      for (let i = 0; i + 1 < list.length; i += 2) res.removeHeader(String(list[i]))
      for (let i = 0; i + 1 < list.length; i += 2) res.appendHeader(String(list[i]), list[i + 1] as string | string[])
    } else if (typeof headers === 'object' && headers !== null) {
      for (const [name, value] of Object.entries(headers as OutgoingHttpHeaders)) {
        if (name !== '') res.setHeader(name, value as number | string | readonly string[])
      }
    }
    return res
  }

  private flushHeaders(): void {
    const res = this.res
    if (this.mode === 'passing' || this.mode === 'discarded') {
      this.original.flushHeaders.call(res)
      return
    }
    this.flushRequested = true
    this.streaming()
  }

  private write(args: unknown[]): boolean {
    const res = this.res
    if (this.mode === 'passing') return (this.original.write as (...a: unknown[]) => boolean).apply(res, args)
    const held = normalize(args)
    if (this.mode === 'discarded' || this.ending !== undefined) {
      failLater(held.callback)
      return false
    }
    this.chunks.push(held)
    this.bytes += byteLength(held)
    this.streaming()
    if (this.bytes <= this.limitBytes) return true
    this.askedToWait = true
    return false
  }

  private end(args: unknown[]): ServerResponse {
    const res = this.res
    if (this.mode === 'passing') return (this.original.end as (...a: unknown[]) => ServerResponse).apply(res, args)
    if (this.mode === 'discarded') {
      // Only an error response may replace a discarded one: never a 2xx or 3xx.
      if (res.statusCode < 400) res.statusCode = 500
      this.mode = 'passing'
      return (this.original.end as (...a: unknown[]) => ServerResponse).apply(res, args)
    }
    const held = normalize(args)
    if (this.ending !== undefined) {
      if (held.callback !== undefined) res.once('finish', () => held.callback?.())
      return res
    }
    this.ending = held
    if (this.mode === 'holding') {
      this.mode = 'pending'
      this.listener.complete(res.statusCode)
    }
    return res
  }

  private streaming(): void {
    if (this.mode !== 'holding') return
    this.mode = 'pending'
    this.listener.stream(this.res.statusCode)
  }
}

/** `write(chunk, encoding?, callback?)` / `end(callback?)` / `end(chunk, encoding?, callback?)`. */
function normalize(args: unknown[]): Held {
  let [chunk, encoding, callback] = args
  if (typeof chunk === 'function') {
    callback = chunk
    chunk = undefined
  }
  if (typeof encoding === 'function') {
    callback = encoding
    encoding = undefined
  }
  return {
    chunk,
    encoding: typeof encoding === 'string' ? (encoding as BufferEncoding) : undefined,
    callback: typeof callback === 'function' ? (callback as WriteCallback) : undefined,
  }
}

function args(held: Held): unknown[] {
  const list: unknown[] = [held.chunk]
  if (held.encoding !== undefined) list.push(held.encoding)
  if (held.callback !== undefined) list.push(held.callback)
  return list
}

function byteLength(held: Held): number {
  const { chunk } = held
  if (typeof chunk === 'string') return Buffer.byteLength(chunk, held.encoding)
  if (chunk instanceof Uint8Array) return chunk.byteLength
  return 0
}

function failLater(callback: WriteCallback | undefined): void {
  if (callback !== undefined) process.nextTick(callback, new AtomicError(DISCARDED_MESSAGE))
}
