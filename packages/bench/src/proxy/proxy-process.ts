/**
 * The proxy, run in a process of its own (forked by proxy.ts) so that its CPU is never counted as
 * the client's: listens on 127.0.0.1, forwards each connection to the PostgreSQL server, holds every
 * chunk `delayMs` in each direction (0: forwards at once), and counts round trips per transaction
 * (wire-counter.ts). Commands and answers travel over the IPC channel (see ProxyCommand).
 *
 * The delay is a Node timer per chunk: never shorter than asked, often a little longer (timers have
 * millisecond granularity, and the process may be descheduled on a busy machine: it raises its own
 * priority when it may); the delay actually applied is measured and reported with the stats.
 *
 * @module
 */
import net from 'node:net'
import os from 'node:os'
import { performance } from 'node:perf_hooks'
import { ConnectionCounter } from './wire-counter'
import type { CounterSink, TransactionCount } from './wire-counter'
import type { ProxyCommand, ProxyReply, ProxyStats } from './protocol'

const KEPT_TRACES = 3
const DELAY_SAMPLES = 20_000

class Stats implements CounterSink {
  transactions = 0
  commits = 0
  z = 0
  flights = 0
  zHistogram: Record<string, number> = {}
  autocommits = 0
  connections = 0
  serverErrors: Record<string, number> = {}
  traces: string[][] = []
  delays: number[] = []

  transaction(count: TransactionCount): void {
    this.transactions++
    if (count.ending === 'commit') this.commits++
    this.z += count.z
    this.flights += count.flights
    this.zHistogram[count.z] = (this.zHistogram[count.z] ?? 0) + 1
    if (count.trace !== undefined && this.traces.length < KEPT_TRACES) this.traces.push([...count.trace])
  }

  autocommit(startup: boolean): void {
    if (startup) this.connections++
    else this.autocommits++
  }

  serverError(code: string): void {
    this.serverErrors[code] = (this.serverErrors[code] ?? 0) + 1
  }

  delay(ms: number): void {
    if (this.delays.length < DELAY_SAMPLES) this.delays.push(ms)
  }

  snapshot(requestedMs: number): ProxyStats {
    const sorted = [...this.delays].sort((a, b) => a - b)
    const at = (q: number): number => sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))] ?? 0
    return {
      transactions: this.transactions,
      commits: this.commits,
      z: this.z,
      flights: this.flights,
      zHistogram: { ...this.zHistogram },
      autocommit: this.autocommits,
      connections: this.connections,
      serverErrors: { ...this.serverErrors },
      traces: this.traces.map((t) => [...t]),
      delay: { requestedMs, samples: sorted.length, p50Ms: at(0.5), p99Ms: at(0.99), maxMs: sorted.at(-1) ?? 0 },
    }
  }
}

let stats = new Stats()
let tracing = false
let delayMs = 0

function send(reply: ProxyReply): void {
  process.send?.(reply)
}

/** Writes `chunk` to `to` after the delay, keeping the order of the chunks. */
function forward(to: net.Socket, chunk: Buffer): void {
  if (delayMs === 0) {
    to.write(chunk)
    return
  }
  const received = performance.now()
  setTimeout(() => {
    stats.delay(performance.now() - received)
    if (!to.destroyed) to.write(chunk)
  }, delayMs)
}

function later(fn: () => void): void {
  if (delayMs === 0) fn()
  else setTimeout(fn, delayMs)
}

function serve(host: string, port: number): net.Server {
  return net.createServer((client) => {
    const server = net.connect({ host, port })
    client.setNoDelay(true)
    server.setNoDelay(true)
    // A reset replaces `stats`: the counter reports to whatever is current.
    const sink: CounterSink = {
      transaction: (c) => stats.transaction(c),
      autocommit: (s) => stats.autocommit(s),
      serverError: (c) => stats.serverError(c),
    }
    const counted = new ConnectionCounter(sink, () => tracing)
    client.on('data', (chunk: Buffer) => {
      counted.fromClient(chunk)
      forward(server, chunk)
    })
    server.on('data', (chunk: Buffer) => {
      counted.fromServer(chunk)
      forward(client, chunk)
    })
    client.on('end', () => later(() => server.end()))
    server.on('end', () => later(() => client.end()))
    client.on('error', () => server.destroy())
    server.on('error', () => client.destroy())
    client.on('close', () => later(() => server.destroy()))
    server.on('close', () => later(() => client.destroy()))
  })
}

let listener: net.Server | undefined

process.on('message', (command: ProxyCommand) => {
  switch (command.type) {
    case 'start':
      delayMs = command.delayMs
      // A network does not slow down when the CPUs are busy: on a loaded machine the proxy would be
      // descheduled and add more than its delay. A higher priority keeps it close (when allowed).
      try {
        os.setPriority(-10)
      } catch {
        // not permitted: the measured delay shows the difference
      }
      listener = serve(command.host, command.port)
      listener.listen(0, '127.0.0.1', () => {
        const address = listener?.address()
        send({ type: 'listening', port: typeof address === 'object' && address !== null ? address.port : 0 })
      })
      break
    case 'reset':
      stats = new Stats()
      tracing = command.trace
      send({ type: 'done', id: command.id })
      break
    case 'stats':
      send({ type: 'stats', id: command.id, stats: stats.snapshot(delayMs) })
      break
  }
})

// The proxy never outlives the benchmark.
process.on('disconnect', () => process.exit(0))
