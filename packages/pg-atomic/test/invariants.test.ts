/**
 * Invariants under concurrency, with controls that prove the checks can fail:
 *
 * - Bank (Jepsen's classic): K accounts with a fixed total, W workers doing random transfers with
 *   naive read-compute-write code at SERIALIZABLE with automatic retry, auditors summing the
 *   balances in SERIALIZABLE READ ONLY DEFERRABLE blocks. The total never changes, no balance goes
 *   negative, every transfer is logged exactly once and the log explains every balance, and the
 *   retry events account for every extra attempt. Negative control: the same code at READ
 *   COMMITTED loses an update (orchestrated so that it must). Positive control: READ COMMITTED with
 *   `SELECT ... FOR NO KEY UPDATE` ordered by id keeps the invariant.
 * - Write skew ("doctors on call"): at SERIALIZABLE with retry at least one doctor stays on call;
 *   at REPEATABLE READ (negative control, orchestrated) nobody does.
 *
 * The random workload comes from a seeded PRNG; the seed is in the test name and can be set with
 * PG_ATOMIC_SEED=<n> to re-run the same plan.
 */
import diagnostics_channel from 'node:diagnostics_channel'
import { RETRY_CHANNEL, atomic } from 'pg-atomic'
import type { IsolationLevel, RetryEvent, RetryOptions } from 'pg-atomic'
import { setupHarness } from './support/harness'
import type { Harness } from './support/harness'
import { sleep } from './support/wait'

const SEED =
  process.env['PG_ATOMIC_SEED'] === undefined
    ? Math.floor(Math.random() * 2 ** 31)
    : Number(process.env['PG_ATOMIC_SEED'])
const ACCOUNTS = 8
const INITIAL = 1000
const TOTAL = ACCOUNTS * INITIAL
const WORKERS = 6
const TRANSFERS_PER_WORKER = 25
const AUDITORS = 2
const RETRY: RetryOptions = { maxAttempts: 30, baseDelayMs: 1, maxDelayMs: 20 }

let h: Harness
const retries: RetryEvent[] = []
const onRetry = (message: unknown): void => {
  retries.push(message as RetryEvent)
}

beforeAll(async () => {
  h = await setupHarness('invariants', { max: WORKERS + AUDITORS + 2 })
  await h.admin.query(`
    create table accounts (id int primary key, balance int not null check (balance >= 0));
    -- No unique key on id: a transfer applied twice must show up as two rows, not as an error.
    create table transfers (
      id text not null, from_id int not null, to_id int not null, amount int not null, applied boolean not null
    );
    create table doctors (name text primary key, on_call boolean not null);
  `)
  diagnostics_channel.subscribe(RETRY_CHANNEL, onRetry)
})
afterAll(async () => {
  diagnostics_channel.unsubscribe(RETRY_CHANNEL, onRetry)
  await h.close()
})
beforeEach(async () => {
  await h.admin.query('truncate accounts, transfers, doctors')
  await h.admin.query('insert into accounts (id, balance) select i, $1 from generate_series(1, $2) i', [
    INITIAL,
    ACCOUNTS,
  ])
  retries.length = 0
  h.reset()
})
afterEach(() => {
  expect(h.pool.idleCount).toBe(h.pool.totalCount)
})

/** Polls `predicate` every 5 ms; fails after `timeoutMs` (a bound, not a timing assertion). */
async function waitUntil(predicate: () => boolean | Promise<boolean>, what: string, timeoutMs = 5000): Promise<void> {
  const deadline = Date.now() + timeoutMs
  while (!(await predicate())) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`)
    await sleep(5)
  }
}

function gate(): { wait: Promise<void>; open: () => void; opened: () => boolean } {
  let isOpen = false
  let open!: () => void
  const wait = new Promise<void>((resolve) => {
    open = () => {
      isOpen = true
      resolve()
    }
  })
  return { wait, open, opened: () => isOpen }
}

/**
 * Resolves once `n` callers are waiting, or when `release()` is called (a participant failed before
 * arriving: the others must not wait forever, holding their transactions open).
 */
function barrier(n: number): { arrive: () => Promise<void>; release: () => void } {
  const all = gate()
  let arrived = 0
  return {
    arrive() {
      if (++arrived === n) all.open()
      return all.wait
    },
    release: all.open,
  }
}

/**
 * Bounds a wait of the workload. On expiry, fails with what the sessions of this test's database are
 * doing (and who blocks a safe snapshot: a SERIALIZABLE READ ONLY DEFERRABLE transaction waits for
 * serializable read-write transactions of every database of the server), then ends those sessions so
 * the rest of the file can run.
 */
async function bounded<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined
  const expired = new Promise<'expired'>((resolve) => {
    timer = setTimeout(() => resolve('expired'), ms)
  })
  try {
    const first = await Promise.race([promise, expired])
    if (first !== 'expired') return first
  } finally {
    clearTimeout(timer)
  }
  const sessions = await h.rows(
    `select a.pid, a.state, a.wait_event_type || '/' || a.wait_event as wait, left(a.query, 120) as query,
            (select json_agg(json_build_object('pid', b.pid, 'database', b.datname, 'application', b.application_name,
                                               'state', b.state, 'query', left(b.query, 120)))
               from pg_stat_activity b
              where b.pid = any(pg_safe_snapshot_blocking_pids(a.pid) || pg_blocking_pids(a.pid))) as blocked_by
       from pg_stat_activity a
      where a.datname = current_database() and a.pid <> pg_backend_pid() and a.state <> 'idle'`,
  )
  await h.admin.query(
    'select pg_terminate_backend(pid) from pg_stat_activity where datname = ' +
      "current_database() and pid <> pg_backend_pid() and state <> 'idle'",
  )
  throw new Error(
    `${what} did not finish within ${ms} ms (seed ${SEED}); busy sessions of the ` +
      `test database:\n${JSON.stringify(sessions, null, 2)}`,
  )
}

/** mulberry32: a small seeded PRNG with a 2^32 period, plenty for test plans. */
function prng(seed: number): () => number {
  let a = seed >>> 0
  return () => {
    a = (a + 0x6d2b79f5) >>> 0
    let t = a
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
}

interface Transfer {
  readonly id: string
  readonly from: number
  readonly to: number
  readonly amount: number
}

type Mode = 'serializable' | 'read committed' | 'read committed, for no key update'

interface TransferOptions {
  readonly retry?: RetryOptions
  /** Called after the balances were read, with the attempt number (orchestration of controls). */
  readonly afterRead?: (attempt: number) => Promise<void>
}

/**
 * One transfer, written the naive way: read both balances, compute in JavaScript, write the new
 * absolute values back, log the transfer. Whether that is correct depends only on `mode`.
 * Returns whether it was applied and how many attempts it took.
 */
async function transfer(
  t: Transfer,
  mode: Mode,
  options: TransferOptions = {},
): Promise<{ applied: boolean; attempts: number }> {
  const isolationLevel: IsolationLevel = mode === 'serializable' ? 'serializable' : 'read committed'
  const lock = mode === 'read committed, for no key update' ? ' for no key update' : ''
  let attempts = 0
  const applied = await atomic({ isolationLevel, retry: options.retry, name: 'transfer' }, async () => {
    const attempt = ++attempts
    const { rows } = await h.db.query<{ id: number; balance: number }>(
      `select id, balance from accounts where id = any($1::int[]) order by id${lock}`,
      [[t.from, t.to]],
    )
    await options.afterRead?.(attempt)
    const balance = new Map(rows.map((r) => [r.id, r.balance]))
    const from = balance.get(t.from) as number
    const to = balance.get(t.to) as number
    const ok = from >= t.amount
    if (ok) {
      // Rows are written in id order, so two transfers never wait for each other in a cycle.
      const writes: Array<[number, number]> = [
        [t.from, from - t.amount],
        [t.to, to + t.amount],
      ]
      writes.sort((a, b) => a[0] - b[0])
      for (const [id, value] of writes) await h.db.query('update accounts set balance = $2 where id = $1', [id, value])
    }
    await h.db.query('insert into transfers (id, from_id, to_id, amount, applied) values ($1, $2, $3, $4, $5)', [
      t.id,
      t.from,
      t.to,
      t.amount,
      ok,
    ])
    return ok
  })
  return { applied, attempts }
}

/** The plan of every worker: random distinct accounts and amounts, from the seed. */
function plan(seed: number): Transfer[][] {
  const random = prng(seed)
  const pick = (n: number) => 1 + Math.floor(random() * n)
  return Array.from({ length: WORKERS }, (_unused, w) =>
    Array.from({ length: TRANSFERS_PER_WORKER }, (_unused2, i) => {
      const from = pick(ACCOUNTS)
      const to = 1 + ((from - 1 + pick(ACCOUNTS - 1)) % ACCOUNTS) // never equal to from
      return { id: `w${w}-t${i}`, from, to, amount: pick(300) }
    }),
  )
}

const balances = () => h.column<number>('select balance from accounts order by id')

/** What the transfer log says each balance must be: the initial balance plus every applied transfer. */
async function balancesFromLog(): Promise<number[]> {
  const rows = await h.rows<{ from_id: number; to_id: number; amount: number }>(
    'select from_id, to_id, amount from transfers where applied',
  )
  const expected = Array.from({ length: ACCOUNTS }, () => INITIAL)
  for (const r of rows) {
    expected[r.from_id - 1] = (expected[r.from_id - 1] as number) - r.amount
    expected[r.to_id - 1] = (expected[r.to_id - 1] as number) + r.amount
  }
  return expected
}

interface WorkloadResult {
  readonly transfers: Transfer[]
  readonly applied: Map<string, boolean>
  readonly attempts: number
  readonly audits: Array<{ sum: number; count: number; min: number }>
}

/**
 * Runs every worker's plan concurrently, and the auditors until the workers are done.
 *
 * With `firstReadsTogether`, every worker's first transfer reads its balances before any worker
 * writes (a barrier). The first transfers touch 2 × 6 = 12 account slots among 8 accounts, so at
 * least two of them share an account: without isolation one of their updates must be lost, and at
 * SERIALIZABLE at least one of them must be retried. (Not with row locks: a transfer waiting for a
 * lock never reaches the barrier.)
 */
async function runWorkload(
  mode: Mode,
  retry: RetryOptions | undefined,
  firstReadsTogether: boolean,
): Promise<WorkloadResult> {
  const plans = plan(SEED)
  const allRead = barrier(WORKERS)
  const applied = new Map<string, boolean>()
  let attempts = 0
  let done = false
  const audits: WorkloadResult['audits'] = []
  const auditor = async () => {
    // At least one audit each, however fast the workers are; then until they finish.
    do {
      const audit = await atomic(
        { isolationLevel: 'serializable', readOnly: true, deferrable: true, name: 'audit' },
        async () => {
          const { rows } = await h.db.query<{ sum: number; count: number; min: number }>(
            'select sum(balance)::int as sum, count(*)::int as count, min(balance) as min from accounts',
          )
          return rows[0] as { sum: number; count: number; min: number }
        },
      )
      audits.push(audit)
    } while (!done)
  }
  const worker = async (transfers: Transfer[]) => {
    let arrived = !firstReadsTogether
    const afterRead = async () => {
      if (arrived) return
      arrived = true
      await allRead.arrive()
    }
    try {
      for (const t of transfers) {
        const result = await transfer(t, mode, { retry, afterRead })
        applied.set(t.id, result.applied)
        attempts += result.attempts
      }
    } catch (error) {
      allRead.release()
      throw error
    }
  }
  const auditors = Array.from({ length: AUDITORS }, auditor)
  try {
    await bounded(Promise.all(plans.map(worker)), 40_000, 'the workers')
  } finally {
    done = true
    const settled = Promise.allSettled(auditors)
    // On expiry the stuck sessions were ended: let their blocks settle before the next test.
    await bounded(settled, 10_000, 'the last audits').catch(async (error: unknown) => {
      await settled
      throw error
    })
  }
  await Promise.all(auditors)
  return { transfers: plans.flat(), applied, attempts, audits }
}

/** Every invariant of the bank, checked against the database and the workload's own record. */
async function expectBankInvariants(result: WorkloadResult): Promise<void> {
  // Every audit saw exactly the total: no transfer was ever half-visible.
  expect(result.audits.length).toBeGreaterThanOrEqual(AUDITORS)
  expect(result.audits.filter((a) => a.sum !== TOTAL || a.count !== ACCOUNTS || a.min < 0)).toEqual([])
  const final = await balances()
  expect(final.reduce((a, b) => a + b, 0)).toBe(TOTAL)
  expect(Math.min(...final)).toBeGreaterThanOrEqual(0)
  // Every transfer is in the log exactly once, with the outcome its worker saw.
  const logged = await h.rows<{ id: string; applied: boolean; n: number }>(
    'select id, bool_and(applied) as applied, count(*)::int as n from transfers group by id order by id',
  )
  expect(logged.filter((r) => r.n !== 1)).toEqual([])
  expect(logged.map((r) => r.id)).toEqual(result.transfers.map((t) => t.id).sort())
  for (const r of logged) expect([r.id, r.applied]).toEqual([r.id, result.applied.get(r.id)])
  // The log explains every balance: nothing applied twice, nothing lost.
  expect(final).toEqual(await balancesFromLog())
}

describe(`bank invariant (seed ${SEED}; re-run with PG_ATOMIC_SEED=${SEED})`, () => {
  // Bounded inside (40 s for the workers, 10 s for the last audits), with a diagnosis on expiry.
  test(
    `${WORKERS} workers × ${TRANSFERS_PER_WORKER} naive transfers at SERIALIZABLE ` +
      `with retry, ${AUDITORS} read-only deferrable auditors`,
    async () => {
      const result = await runWorkload('serializable', RETRY, true)
      await expectBankInvariants(result)
      // Every retry is counted: one event per extra attempt, all of them serialization failures.
      const transferRetries = retries.filter((r) => r.name === 'transfer')
      expect(transferRetries.length).toBe(result.attempts - result.transfers.length)
      expect(transferRetries.filter((r) => r.code !== '40001' && r.code !== '40P01')).toEqual([])
      expect(retries.filter((r) => r.name !== 'transfer')).toEqual([])
      // The first transfers contended (see runWorkload), so some were retried.
      expect(transferRetries.length).toBeGreaterThan(0)
    },
    60_000,
  )

  test(
    'negative control: the same workload at READ COMMITTED without row locks breaks ' + 'the invariants (lost updates)',
    async () => {
      const result = await runWorkload('read committed', undefined, true)
      const final = await balances()
      const fromLog = await balancesFromLog()
      // At least one update was lost: some balance disagrees with the transfers that were applied.
      expect(final).not.toEqual(fromLog)
      // ... which is exactly what the invariant check reports.
      await expect(expectBankInvariants(result)).rejects.toThrow()
      expect(retries).toEqual([])
    },
    60_000,
  )

  test(
    `positive control: the same workload at READ COMMITTED with SELECT ... FOR NO ` +
      `KEY UPDATE ordered by id, without retry`,
    async () => {
      const result = await runWorkload('read committed, for no key update', undefined, false)
      await expectBankInvariants(result)
      expect(result.attempts).toBe(result.transfers.length)
      expect(retries).toEqual([])
    },
    60_000,
  )
})

describe('one interleaving that loses an update unless the isolation level or a lock prevents it', () => {
  /**
   * Transfer 1 (100 from account 1 to 2) reads; transfer 2 (50 from account 1 to 3) starts and
   * either reads too or blocks on a row lock; transfer 1 writes and commits; then transfer 2 writes.
   * Only the first attempt is orchestrated.
   */
  async function interleave(
    mode: Mode,
    retry?: RetryOptions,
  ): Promise<{ first: { applied: boolean; attempts: number }; second: { applied: boolean; attempts: number } }> {
    const firstRead = gate()
    const secondRead = gate()
    const lockWaiters = () =>
      h.column<number>(
        "select pid from pg_stat_activity where datname = current_database() and wait_event_type = 'Lock'",
      )
    const first = transfer({ id: 'first', from: 1, to: 2, amount: 100 }, mode, {
      retry,
      afterRead: async (attempt) => {
        if (attempt > 1) return
        firstRead.open()
        await waitUntil(
          async () => secondRead.opened() || (await lockWaiters()).length > 0,
          'the second transfer to read or to wait for a lock',
        )
      },
    })
    await firstRead.wait
    const firstSettled = first.then(
      () => undefined,
      () => undefined,
    )
    const second = transfer({ id: 'second', from: 1, to: 3, amount: 50 }, mode, {
      retry,
      afterRead: async (attempt) => {
        if (attempt > 1) return
        secondRead.open()
        await firstSettled
      },
    })
    return bounded(
      Promise.all([first, second]).then(([a, b]) => ({ first: a, second: b })),
      20_000,
      'the two transfers',
    )
  }

  test(
    'negative control: READ COMMITTED without row locks loses the first update (the ' +
      'total changes, the log disagrees)',
    async () => {
      const { first, second } = await interleave('read committed')
      expect(first).toEqual({ applied: true, attempts: 1 })
      expect(second).toEqual({ applied: true, attempts: 1 })
      const final = await balances()
      // Account 1 was written from a stale read: 1000 − 50 instead of 1000 − 100 − 50.
      expect(final.slice(0, 3)).toEqual([950, 1100, 1050])
      expect(final.reduce((a, b) => a + b, 0)).toBe(TOTAL + 100)
      expect(final).not.toEqual(await balancesFromLog())
    },
  )

  test(
    'positive control: READ COMMITTED with FOR NO KEY UPDATE makes the second ' +
      'transfer wait and read the new balance',
    async () => {
      const { first, second } = await interleave('read committed, for no key update')
      expect(first).toEqual({ applied: true, attempts: 1 })
      expect(second).toEqual({ applied: true, attempts: 1 })
      const final = await balances()
      expect(final.slice(0, 3)).toEqual([850, 1100, 1050])
      expect(final.reduce((a, b) => a + b, 0)).toBe(TOTAL)
      expect(final).toEqual(await balancesFromLog())
    },
  )

  test('SERIALIZABLE with retry: the stale write fails with 40001 and the retry reads the new balance', async () => {
    const { first, second } = await interleave('serializable', { maxAttempts: 3, baseDelayMs: 0 })
    expect(first).toEqual({ applied: true, attempts: 1 })
    expect(second).toEqual({ applied: true, attempts: 2 })
    expect(retries).toEqual([expect.objectContaining({ attempt: 1, code: '40001', name: 'transfer' })])
    const final = await balances()
    expect(final.slice(0, 3)).toEqual([850, 1100, 1050])
    expect(final).toEqual(await balancesFromLog())
  })
})

describe('write skew: doctors on call', () => {
  /**
   * `n` doctors on call; each one's transaction counts the doctors on call and goes off call if at
   * least one other would remain. The first attempts all read before any writes (a barrier), which
   * is exactly the interleaving where snapshot isolation lets every one of them leave.
   */
  async function everyoneTriesToLeave(
    n: number,
    isolationLevel: IsolationLevel,
    retry?: RetryOptions,
  ): Promise<{ left: boolean[]; attempts: number[] }> {
    const names = Array.from({ length: n }, (_unused, i) => `doctor${i + 1}`)
    await h.admin.query('insert into doctors (name, on_call) select unnest($1::text[]), true', [names])
    const allRead = barrier(n)
    const attempts = names.map(() => 0)
    const left = await bounded(
      Promise.all(
        names.map((name, i) =>
          atomic({ isolationLevel, retry, name: 'off-call' }, async () => {
            const attempt = (attempts[i] = (attempts[i] ?? 0) + 1)
            const { rows } = await h.db.query<{ n: number }>('select count(*)::int as n from doctors where on_call')
            if (attempt === 1) await allRead.arrive()
            const onCall = (rows[0] as { n: number }).n
            if (onCall < 2) return false
            await h.db.query('update doctors set on_call = false where name = $1', [name])
            return true
          }).catch((error: unknown) => {
            allRead.release()
            throw error
          }),
        ),
      ),
      20_000,
      'the doctors',
    )
    return { left, attempts }
  }

  const onCall = () => h.column<string>('select name from doctors where on_call order by name')

  test.each([2, 4])('SERIALIZABLE with retry, %i doctors: exactly one stays on call', async (n) => {
    const { left, attempts } = await everyoneTriesToLeave(n, 'serializable', {
      maxAttempts: 10,
      baseDelayMs: 1,
      maxDelayMs: 10,
    })
    expect(left.filter(Boolean)).toHaveLength(n - 1)
    expect(await onCall()).toHaveLength(1)
    const offCallRetries = retries.filter((r) => r.name === 'off-call')
    expect(offCallRetries.length).toBeGreaterThan(0)
    expect(offCallRetries.length).toBe(attempts.reduce((a, b) => a + b, 0) - n)
    expect(offCallRetries.filter((r) => r.code !== '40001')).toEqual([])
  })

  test.each([2, 4])('negative control: REPEATABLE READ, %i doctors: all leave, nobody is on call', async (n) => {
    const { left, attempts } = await everyoneTriesToLeave(n, 'repeatable read', {
      maxAttempts: 10,
      baseDelayMs: 1,
      maxDelayMs: 10,
    })
    expect(left).toEqual(Array(n).fill(true))
    expect(attempts).toEqual(Array(n).fill(1))
    expect(await onCall()).toEqual([])
    expect(retries).toEqual([])
  })
})
