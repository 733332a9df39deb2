/**
 * Starts the proxy (proxy-process.ts) in a child process and talks to it: the benchmark's client
 * CPU and allocation figures then never include the proxy's work.
 *
 * @module
 */
import { fork } from 'node:child_process'
import type { ChildProcess } from 'node:child_process'
import path from 'node:path'
import type { ProxyCommand, ProxyReply, ProxyStats } from './protocol'

/** A running proxy. */
export interface Proxy {
  /** The port on 127.0.0.1 to connect to instead of the server's. */
  readonly port: number
  readonly delayMs: number
  /** Zeroes the counters (and starts keeping traces of the next transactions when `trace`). */
  reset(trace?: boolean): Promise<void>
  /** What was counted since the last reset. */
  stats(): Promise<ProxyStats>
  stop(): Promise<void>
}

/** Forks a proxy to `host:port` that adds `delayMs` in each direction. */
export async function startProxy(host: string, port: number, delayMs: number): Promise<Proxy> {
  const child = fork(path.join(__dirname, 'proxy-process.js'), [], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] })
  const waiting = new Map<number, (reply: ProxyReply) => void>()
  let nextId = 1
  let exited = false
  child.on('exit', () => {
    exited = true
    for (const resolve of waiting.values()) resolve({ type: 'done', id: -1 })
    waiting.clear()
  })
  child.on('message', (reply: ProxyReply) => {
    if (reply.type === 'listening') return
    waiting.get(reply.id)?.(reply)
    waiting.delete(reply.id)
  })

  const listening = new Promise<number>((resolve, reject) => {
    child.once('error', reject)
    child.once('exit', (code) => reject(new Error(`The proxy process exited (code ${code}) before listening.`)))
    child.on('message', (reply: ProxyReply) => {
      if (reply.type === 'listening') resolve(reply.port)
    })
  })
  const start: ProxyCommand = { type: 'start', host, port, delayMs }
  child.send(start)
  const proxyPort = await listening

  const ask = (command: ProxyCommand & { id: number }): Promise<ProxyReply> => {
    if (exited) return Promise.reject(new Error('The proxy process has exited.'))
    return new Promise((resolve) => {
      waiting.set(command.id, resolve)
      child.send(command)
    })
  }

  return {
    port: proxyPort,
    delayMs,
    async reset(trace = false) {
      await ask({ type: 'reset', id: nextId++, trace })
    },
    async stats() {
      const reply = await ask({ type: 'stats', id: nextId++ })
      if (reply.type !== 'stats') throw new Error('The proxy process exited before answering.')
      return reply.stats
    },
    stop: () => stopChild(child),
  }
}

function stopChild(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve()
  return new Promise((resolve) => {
    child.once('exit', () => resolve())
    child.disconnect()
  })
}
