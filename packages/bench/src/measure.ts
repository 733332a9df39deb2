/**
 * Runs a batch of planned operations and measures it: wall time, per-operation latency
 * (sequential), client CPU and bytes allocated.
 *
 * - **Client CPU**, two figures. The main thread's: its run time from the scheduler
 *   (`/proc/self/task/<pid>/schedstat`, nanoseconds; Linux), which is where the library, the driver
 *   and their system calls run. The whole process's: `process.cpuUsage()` (user + system of every
 *   thread, V8's GC and compiler helpers included), which moves more from round to round. The
 *   server and the proxy are other processes. Elsewhere than Linux both are `process.cpuUsage()`.
 * - **Bytes allocated**: Node 20 has no allocation counter (`total_allocated_bytes` came later in
 *   V8), so the batch runs under a `v8.GCProfiler`: allocated = growth of the used heap over the
 *   batch + what every GC during it freed (used heap before − after, per GC). Between GCs the used
 *   heap grows only by allocation, so the sum is the bytes allocated on the V8 heap — checked to the
 *   byte on known objects. Limits: memory outside the V8 heap (Buffer contents, sockets' native
 *   memory) is not counted, only the JS objects that hold it; a full GC whose sweeping is still
 *   running when the batch ends may be slightly off; the figure includes this harness's own small
 *   per-operation cost (measured once and shown as `harness`).
 *
 * @module
 */
import { existsSync, readFileSync } from 'node:fs'
import { performance } from 'node:perf_hooks'
import v8 from 'node:v8'
import type { Contestant } from './contestants'
import { RETRYABLE, sqlState } from './contestants/retry'
import type { Operation } from './workloads'

/** What one batch measured. */
export interface Batch {
  readonly ops: number
  /** Operations that rejected. */
  readonly errors: number
  /** Of which rejected with a serialization failure or deadlock after every attempt their retry allowed. */
  readonly retriesExhausted: number
  readonly firstError: string | undefined
  /** Transaction attempts (retries are attempts − successful operations). */
  readonly attempts: number
  readonly wallMs: number
  /** Client CPU of the main thread, µs for the whole batch. */
  readonly mainCpuUs: number
  /** Client CPU of the whole process (user + system, every thread), µs for the whole batch. */
  readonly cpuUs: number
  /** Bytes allocated on the V8 heap during the batch. */
  readonly allocatedBytes: number
  readonly gcs: number
  /** Per-operation latency in ms (sequential batches only). */
  readonly latenciesMs: readonly number[] | undefined
}

interface Counters {
  errors: number
  retriesExhausted: number
  firstError: string | undefined
  attempts: number
}

function describe(error: unknown): string {
  if (error instanceof Error) {
    const code = (error as { code?: unknown }).code
    return `${error.name}${typeof code === 'string' ? ` ${code}` : ''}: ${error.message}`
  }
  return String(error)
}

async function measured(run: (counters: Counters) => Promise<number[] | undefined>, ops: number): Promise<Batch> {
  const counters: Counters = { errors: 0, retriesExhausted: 0, firstError: undefined, attempts: 0 }
  const profiler = new v8.GCProfiler()
  const heapBefore = v8.getHeapStatistics().used_heap_size
  profiler.start()
  const cpuBefore = process.cpuUsage()
  const mainBefore = mainThreadCpuUs()
  const start = performance.now()
  const latenciesMs = await run(counters)
  const wallMs = performance.now() - start
  const main = mainThreadCpuUs()
  const cpu = process.cpuUsage(cpuBefore)
  const heapAfter = v8.getHeapStatistics().used_heap_size
  const gc = profiler.stop()
  let freed = 0
  for (const s of gc.statistics) freed += s.beforeGC.heapStatistics.usedHeapSize - s.afterGC.heapStatistics.usedHeapSize
  return {
    ops,
    errors: counters.errors,
    retriesExhausted: counters.retriesExhausted,
    firstError: counters.firstError,
    attempts: counters.attempts,
    wallMs,
    mainCpuUs: main === undefined || mainBefore === undefined ? cpu.user + cpu.system : main - mainBefore,
    cpuUs: cpu.user + cpu.system,
    allocatedBytes: heapAfter - heapBefore + freed,
    gcs: gc.statistics.length,
    latenciesMs,
  }
}

async function runOne(op: Operation, c: Contestant, counters: Counters, onAttempt: () => void): Promise<void> {
  try {
    await op(c, onAttempt)
  } catch (error) {
    counters.errors++
    if (RETRYABLE.has(sqlState(error) ?? '')) counters.retriesExhausted++
    counters.firstError ??= describe(error)
  }
}

const SCHEDSTAT = `/proc/self/task/${process.pid}/schedstat`
let schedstat = existsSync(SCHEDSTAT)

/** The main thread's time on a CPU in µs (Linux), or undefined. */
function mainThreadCpuUs(): number | undefined {
  if (!schedstat) return undefined
  try {
    return Number(readFileSync(SCHEDSTAT, 'utf8').split(' ')[0]) / 1000
  } catch {
    schedstat = false
    return undefined
  }
}

/** The operations one after the other; each one's latency is kept. */
export function sequential(c: Contestant, ops: readonly Operation[]): Promise<Batch> {
  return measured(async (counters) => {
    const latencies = new Array<number>(ops.length)
    const onAttempt = (): void => {
      counters.attempts++
    }
    for (let i = 0; i < ops.length; i++) {
      const t = performance.now()
      await runOne(ops[i] as Operation, c, counters, onAttempt)
      latencies[i] = performance.now() - t
    }
    return latencies
  }, ops.length)
}

/** The operations shared by `workers` loops, each taking the next one when it is done. */
export function concurrent(c: Contestant, ops: readonly Operation[], workers: number): Promise<Batch> {
  return measured(async (counters) => {
    let next = 0
    const onAttempt = (): void => {
      counters.attempts++
    }
    const worker = async (): Promise<void> => {
      while (next < ops.length) await runOne(ops[next++] as Operation, c, counters, onAttempt)
    }
    await Promise.all(Array.from({ length: workers }, worker))
    return undefined
  }, ops.length)
}

/**
 * The harness's own cost per operation (an operation that does nothing but await), to read the
 * CPU and allocation figures against.
 */
export async function harnessOverhead(): Promise<{ cpuUs: number; mainCpuUs: number; bytes: number }> {
  const nothing: Contestant = {
    id: 'pg',
    select1: () => Promise.resolve(1),
    tpcb: () => Promise.resolve(),
    nested: () => Promise.resolve(),
    transfer: () => Promise.resolve(),
    close: () => Promise.resolve(),
  }
  const op: Operation = async (c, onAttempt) => {
    onAttempt()
    await c.nested()
  }
  const ops = Array.from({ length: 20_000 }, () => op)
  await sequential(nothing, ops)
  const batch = await sequential(nothing, ops)
  return {
    cpuUs: batch.cpuUs / ops.length,
    mainCpuUs: batch.mainCpuUs / ops.length,
    bytes: batch.allocatedBytes / ops.length,
  }
}
