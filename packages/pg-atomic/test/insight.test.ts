/**
 * Lock insight (`pg-atomic/insight`) against real concurrent sessions: locksHeld() inside a block,
 * the lockWaits() tree (a holder idle in transaction, an ALTER TABLE queued behind it, a SELECT
 * queued behind the ALTER, an advisory-lock waiter), idleInTransaction() and its olderThanMs
 * filter, terminateSessions(), serverInfo(), and explainLocks(): the locks of SELECT / UPDATE /
 * ALTER TABLE, row locks with and without pgrowlocks, refusals before anything is sent
 * (assertExplainable()), and no trace left behind.
 */
import pg from 'pg'
import { InvalidOptionError, TransactionManagementError, atomic, createDatabase } from 'pg-atomic'
import {
  INSIGHT_DEFAULTS,
  assertExplainable,
  explainLocks,
  idleInTransaction,
  lockWaits,
  locksHeld,
  serverInfo,
  terminateSessions,
} from 'pg-atomic/insight'
import type { LockInfo, LockWaitNode } from 'pg-atomic/insight'
import { splitStatements } from '../src/sql/lexer'
import { rejection, thrown } from './support/errors'
import { setupHarness } from './support/harness'
import type { Harness } from './support/harness'
import { recordedDatabase } from './support/locks'

let h: Harness

beforeAll(async () => {
  h = await setupHarness('insight')
  await h.admin.query('create table accounts (id int primary key, balance int not null)')
})
afterAll(() => h.close())
beforeEach(async () => {
  await h.admin.query('drop extension if exists pgrowlocks')
  await h.admin.query('truncate accounts')
  await h.admin.query('insert into accounts select g, 100 from generate_series(1, 5) g')
  h.reset()
})

interface Session {
  readonly client: pg.Client
  readonly pid: number
  /** Errors the connection reported (e.g. after pg_terminate_backend). */
  readonly errors: unknown[]
}

const opened: Session[] = []

/** A plain second session, named so that it can be recognised in pg_stat_activity. */
async function session(name: string): Promise<Session> {
  const client = new pg.Client({ connectionString: h.testDb.url })
  const errors: unknown[] = []
  client.on('error', (error) => errors.push(error))
  await client.connect()
  await client.query("select set_config('application_name', $1, false), set_config('lock_timeout', '15s', false)", [
    name,
  ])
  const { rows } = await client.query<{ pid: number }>('select pg_backend_pid() as pid')
  const s = { client, pid: (rows[0] as { pid: number }).pid, errors }
  opened.push(s)
  return s
}

afterEach(async () => {
  for (const s of opened.splice(0)) await s.client.end()
})

/** Polls `check` every 20 ms for at most 10 s. */
async function waitUntil(what: string, check: () => Promise<boolean>): Promise<void> {
  const deadline = Date.now() + 10_000
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out after 10 s waiting for ${what}`)
    await new Promise((resolve) => setTimeout(resolve, 20))
  }
}

async function waitingForLock(pid: number): Promise<void> {
  await waitUntil(`pid ${pid} to wait for a lock`, async () => {
    const rows = await h.rows<{ wait_event_type: string | null }>(
      'select wait_event_type from pg_stat_activity where pid = $1',
      [pid],
    )
    return rows[0]?.wait_event_type === 'Lock'
  })
}

/** Holder: idle in transaction with a row lock, a table lock and an advisory lock. */
async function holder(): Promise<Session> {
  const s = await session('holder')
  await s.client.query('begin')
  await s.client.query('select * from accounts where id = 1 for update')
  await s.client.query('select pg_advisory_xact_lock(4294967303)')
  await s.client.query('lock table accounts in share mode')
  return s
}

const summary = (locks: readonly LockInfo[]) => locks.map((l) => `${l.type} ${l.target} ${l.mode}`)

describe('locksHeld()', () => {
  test('outside a block: TransactionManagementError before anything is sent', async () => {
    const error = await rejection(locksHeld())
    expect(error).toBeInstanceOf(TransactionManagementError)
    expect((error as Error).message).toBe(
      'locksHeld() cannot be used outside of a transaction: call it inside an atomic() block to list ' +
        'the locks of that transaction (outside a block every statement is its own transaction, which ' +
        'holds nothing once it ends).',
    )
    expect(h.statements).toEqual([])
  })

  test(
    "lists the block's locks: relations named, advisory keys decoded, both modes; the inspection " + 'adds none',
    async () => {
      await atomic(async () => {
        await h.db.query('update accounts set balance = balance - 1 where id = 1')
        await h.db.query(
          'select pg_advisory_xact_lock(4294967303), pg_advisory_xact_lock(-1), pg_advisory_xact_lock(-5, 2)',
        )
        const first = await locksHeld()
        const second = await locksHeld({ using: h.db })
        expect(summary(second)).toEqual(summary(first))

        const table = first.find((l) => l.type === 'relation' && l.relation?.kind === 'table')
        expect(table).toMatchObject({
          type: 'relation',
          relation: { schema: 'public', name: 'accounts', qualifiedName: 'public.accounts', kind: 'table' },
          mode: 'RowExclusiveLock',
          lockMode: 'row exclusive',
          granted: true,
          waitStartedAt: null,
          target: 'table public.accounts',
          advisoryKey: null,
        })
        expect(table?.relation?.oid).toBe(Number((await h.column<string>("select 'accounts'::regclass::oid"))[0]))
        const advisory = first.filter((l) => l.type === 'advisory')
        expect(advisory.map((l) => l.advisoryKey)).toEqual(expect.arrayContaining([4294967303n, -1n, [-5, 2]]))
        expect(advisory.map((l) => l.target).sort()).toEqual([
          'advisory key (-5, 2)',
          'advisory key -1',
          'advisory key 4294967303',
        ])
        expect(advisory.every((l) => l.mode === 'ExclusiveLock' && l.lockMode === 'exclusive')).toBe(true)
        expect(first.map((l) => l.type)).toEqual([
          'relation',
          'relation',
          'advisory',
          'advisory',
          'advisory',
          'transactionid',
          'virtualxid',
        ])
        expect(first.map((l) => l.target).slice(0, 2)).toEqual(['table public.accounts', 'index public.accounts_pkey'])
        const xid = first.find((l) => l.type === 'transactionid')
        expect(xid?.transactionId).toMatch(/^[0-9]+$/)
        expect(first.find((l) => l.type === 'virtualxid')?.virtualTransactionId).toMatch(/^[0-9]+\/[0-9]+$/)
        expect(new Set(first.map((l) => l.pid)).size).toBe(1)
      })
      expect(h.statements.filter((s) => s.includes('pg_lock_status'))).toHaveLength(2)
    },
  )

  test(
    'regression (issue 7, defect 6): without using, the locks of the innermost block, whatever ' +
      "its database ('reports' only)",
    async () => {
      const reports = recordedDatabase(h, 'reports')
      try {
        await atomic({ using: 'reports' }, async () => {
          await reports.db.query('select pg_advisory_xact_lock(31)')
          const held = await locksHeld()
          expect(held.filter((l) => l.type === 'advisory').map((l) => l.target)).toEqual(['advisory key 31'])
          // Nested in the reports block, a block of 'default' is the innermost one.
          await atomic(async () => {
            await h.db.query('select pg_advisory_xact_lock(32)')
            expect((await locksHeld()).filter((l) => l.type === 'advisory').map((l) => l.target)).toEqual([
              'advisory key 32',
            ])
            expect(
              (await locksHeld({ using: 'reports' })).filter((l) => l.type === 'advisory').map((l) => l.target),
            ).toEqual(['advisory key 31'])
          })
        })
        expect(reports.statements.filter((t) => t.includes('pg_lock_status'))).toHaveLength(2)
        expect(h.statements.filter((t) => t.includes('pg_lock_status'))).toHaveLength(1)
      } finally {
        await reports.close()
      }
    },
  )

  test('unknown option and bad "using" are InvalidOptionError', async () => {
    await expect(atomic(() => locksHeld({ usign: 'default' } as never))).rejects.toMatchObject({
      name: 'InvalidOptionError',
      field: 'usign',
      message: 'Unknown option "usign" for locksHeld(). The accepted options are: using.',
    })
    await expect(atomic(() => locksHeld({ using: 42 } as never))).rejects.toMatchObject({
      name: 'InvalidOptionError',
      field: 'using',
      message:
        'Invalid option "using" for locksHeld(): it must be the alias of a registered database (a non-empty ' +
        'string) or a Database returned by createDatabase().',
    })
  })
})

describe('lockWaits() and idleInTransaction() with real sessions', () => {
  test(
    'the tree: holder at the root, ALTER waiting for it, SELECT queued behind the ALTER, an advisory ' + 'waiter',
    async () => {
      const hold = await holder()
      const alter = await session('migrate')
      const reader = await session('reader')
      const advisory = await session('advisory')
      await alter.client.query('begin')
      const altering = alter.client.query('alter table accounts add column note text')
      await waitingForLock(alter.pid)
      const reading = reader.client.query('select count(*) from accounts')
      await waitingForLock(reader.pid)
      const locking = advisory.client.query('select pg_advisory_xact_lock(4294967303)')
      await waitingForLock(advisory.pid)

      const roots = await lockWaits({ using: h.db })
      expect(roots.map((r) => r.pid)).toEqual([hold.pid])
      const root = roots[0] as LockWaitNode
      expect(root).toMatchObject({
        kind: 'session',
        applicationName: 'holder',
        state: 'idle in transaction',
        waitKind: null,
        waitingFor: null,
        waitMs: null,
        blockedBy: [],
        cycle: false,
        query: 'lock table accounts in share mode',
      })
      expect(root.transactionAgeMs).toBeGreaterThan(0)
      expect(root.transactionStartedAt).toBeInstanceOf(Date)
      expect(root.blocking.map((n) => n.pid)).toEqual([alter.pid, advisory.pid].sort((a, b) => a - b))

      const alterNode = root.blocking.find((n) => n.pid === alter.pid) as LockWaitNode
      expect(alterNode).toMatchObject({
        applicationName: 'migrate',
        state: 'active',
        waitEventType: 'Lock',
        waitEvent: 'relation',
        waitKind: 'lock',
        query: 'alter table accounts add column note text',
        blockedBy: [hold.pid],
        waitingFor: {
          type: 'relation',
          relation: { qualifiedName: 'public.accounts', kind: 'table' },
          mode: 'AccessExclusiveLock',
          lockMode: 'access exclusive',
          granted: false,
          target: 'table public.accounts',
        },
      })
      expect(alterNode.waitMs).toBeGreaterThanOrEqual(0)
      expect(alterNode.waitStartedAt).toBeInstanceOf(Date)
      expect(alterNode.blocking.map((n) => n.pid)).toEqual([reader.pid])
      expect(alterNode.blocking[0]).toMatchObject({
        applicationName: 'reader',
        blockedBy: [alter.pid],
        waitingFor: {
          mode: 'AccessShareLock',
          lockMode: 'access share',
          target: 'table public.accounts',
          granted: false,
        },
        blocking: [],
      })

      const advisoryNode = root.blocking.find((n) => n.pid === advisory.pid) as LockWaitNode
      expect(advisoryNode).toMatchObject({
        applicationName: 'advisory',
        waitEvent: 'advisory',
        blockedBy: [hold.pid],
        waitingFor: {
          type: 'advisory',
          advisoryKey: 4294967303n,
          mode: 'ExclusiveLock',
          target: 'advisory key 4294967303',
          granted: false,
        },
      })

      // Queries are truncated to queryLength, with an ellipsis.
      const short = await lockWaits({ queryLength: 10 })
      expect(short[0]?.blocking.find((n) => n.pid === alter.pid)?.query).toBe('alter tab…')

      // The holder is idle in transaction, with its locks.
      const idle = await idleInTransaction()
      const held = idle.find((s) => s.pid === hold.pid)
      expect(held).toMatchObject({
        applicationName: 'holder',
        state: 'idle in transaction',
        query: 'lock table accounts in share mode',
      })
      expect(idle.map((s) => s.pid)).not.toContain(alter.pid)
      expect(held?.locks.filter((l) => l.relation?.kind === 'table').map((l) => l.mode)).toEqual([
        'ShareLock',
        'RowShareLock',
      ])
      expect(held?.locks.filter((l) => l.type === 'advisory').map((l) => l.advisoryKey)).toEqual([4294967303n])
      expect(held?.locks.every((l) => l.granted && l.pid === hold.pid)).toBe(true)

      await hold.client.query('rollback')
      await altering
      await alter.client.query('rollback')
      await reading
      await locking
      expect(await lockWaits()).toEqual([])
      expect(
        await h.column(
          'select column_name from information_schema.columns where table_name = $1 order by ordinal_position',
          ['accounts'],
        ),
      ).toEqual(['id', 'balance'])
    },
  )

  test('a DEFERRABLE transaction waiting for a safe snapshot appears under the serializable writer', async () => {
    const writer = await session('writer')
    const reporter = await session('reporter')
    await writer.client.query('begin isolation level serializable')
    await writer.client.query('select count(*) from accounts')
    await reporter.client.query('begin isolation level serializable read only deferrable')
    const reading = reporter.client.query('select count(*) from accounts')
    await waitUntil(
      'the reporter to wait for a safe snapshot',
      async () =>
        (await h.column('select wait_event from pg_stat_activity where pid = $1', [reporter.pid]))[0] ===
        'SafeSnapshot',
    )
    // Serializable transactions are tracked across the cluster: a deferrable transaction also waits
    // for serializable writers of other databases (other test files), which appear as roots too.
    const roots = await lockWaits()
    const root = roots.find((r) => r.pid === writer.pid)
    expect(root).toMatchObject({ applicationName: 'writer', state: 'idle in transaction', blockedBy: [] })
    expect(root?.blocking).toEqual([
      expect.objectContaining({
        pid: reporter.pid,
        waitKind: 'safe snapshot',
        waitingFor: null,
        waitMs: null,
        waitEventType: 'IPC',
        waitEvent: 'SafeSnapshot',
      }),
    ])
    expect(root?.blocking[0]?.blockedBy).toContain(writer.pid)
    await writer.client.query('commit')
    // It may still wait for serializable writers of other databases: cancel rather than wait.
    await h.admin.query('select pg_cancel_backend($1)', [reporter.pid])
    const outcome = await reading.then(
      () => 'completed',
      (error: { code?: string }) => error.code,
    )
    expect(['completed', '57014']).toContain(outcome)
    await reporter.client.query('rollback')
  })

  test('inside a block it runs in the block and is not stale on a second call', async () => {
    const hold = await holder()
    const waiter = await session('waiter')
    await atomic(async () => {
      expect(await lockWaits()).toEqual([])
      const updating = waiter.client.query('update accounts set balance = 0 where id = 2')
      await waitingForLock(waiter.pid)
      const roots = await lockWaits()
      expect(roots.map((r) => [r.pid, r.blocking.map((c) => c.pid)])).toEqual([[hold.pid, [waiter.pid]]])
      expect(roots[0]?.blocking[0]?.waitingFor).toMatchObject({
        mode: 'RowExclusiveLock',
        target: 'table public.accounts',
      })
      await hold.client.query('rollback')
      await updating
    })
  })

  test(
    'idleInTransaction(): olderThanMs filters on idle time; aborted sessions are listed; invalid ' + 'values refused',
    async () => {
      const hold = await holder()
      const aborted = await session('aborted')
      await aborted.client.query('begin')
      await expect(aborted.client.query('select 1 / 0')).rejects.toMatchObject({ code: '22012' })
      await waitUntil('the holder to be idle for 300 ms', async () => {
        const rows = await h.rows<{ ok: boolean }>(
          "select clock_timestamp() - state_change > interval '300 ms' as ok from pg_stat_activity where pid = $1",
          [hold.pid],
        )
        return rows[0]?.ok === true
      })

      const all = await idleInTransaction({ olderThanMs: 0 })
      expect(all.map((s) => s.pid).sort((a, b) => a - b)).toEqual([hold.pid, aborted.pid].sort((a, b) => a - b))
      const a = all.find((s) => s.pid === aborted.pid)
      expect(a).toMatchObject({
        state: 'idle in transaction (aborted)',
        applicationName: 'aborted',
        query: 'select 1 / 0',
      })
      expect(a?.locks.filter((l) => l.type === 'relation' || l.type === 'advisory')).toEqual([])
      const held = all.find((s) => s.pid === hold.pid)
      expect(held?.idleMs).toBeGreaterThanOrEqual(300)
      expect(held?.idleSince).toBeInstanceOf(Date)
      expect(held?.transactionAgeMs).toBeGreaterThanOrEqual(held?.idleMs as number)

      expect((await idleInTransaction({ olderThanMs: 200 })).map((s) => s.pid)).toContain(hold.pid)
      expect((await idleInTransaction({ olderThanMs: 3_600_000 })).map((s) => s.pid)).toEqual([])

      for (const olderThanMs of [-1, 1.5, '5m', Number.NaN]) {
        await expect(idleInTransaction({ olderThanMs } as never)).rejects.toMatchObject({
          name: 'InvalidOptionError',
          field: 'olderThanMs',
          message:
            'Invalid option "olderThanMs" for idleInTransaction(): it must be a whole number of milliseconds ' +
            'of at least 0.',
        })
      }
      await expect(idleInTransaction({ olderThan: 5 } as never)).rejects.toMatchObject({
        name: 'InvalidOptionError',
        field: 'olderThan',
        message:
          'Unknown option "olderThan" for idleInTransaction(). The accepted options are: using, olderThanMs, ' +
          'queryLength.',
      })
      await expect(idleInTransaction({ queryLength: 0 })).rejects.toMatchObject({
        name: 'InvalidOptionError',
        field: 'queryLength',
        message:
          'Invalid option "queryLength" for idleInTransaction(): it must be a whole number of characters ' +
          'from 1 to 1000000.',
      })
      await hold.client.query('rollback')
      await aborted.client.query('rollback')
    },
  )
})

describe('terminateSessions() and serverInfo()', () => {
  test(
    'ends a session still idle in the same transaction; skips one that ran a statement since it ' + 'was listed',
    async () => {
      const hold = await holder()
      const busy = await session('busy')
      await busy.client.query('begin')
      await busy.client.query('select 1')
      const listed = await idleInTransaction()
      expect(listed.map((s) => s.pid).sort((a, b) => a - b)).toEqual([hold.pid, busy.pid].sort((a, b) => a - b))
      // busy runs another statement: its state_change moves, so it is no longer "the same" idle transaction.
      await busy.client.query('select 2')
      h.reset()
      const outcomes = await terminateSessions(listed)
      expect(outcomes).toEqual(
        listed.map((s) =>
          s.pid === hold.pid
            ? { pid: hold.pid, outcome: 'terminated', reason: null, code: null, error: null }
            : {
                pid: busy.pid,
                outcome: 'skipped',
                reason:
                  'It is no longer idle in the same transaction (it ran a statement, or its transaction ended, ' +
                  'since it was listed), so it was left alone.',
                code: null,
                error: null,
              },
        ),
      )
      expect(Object.isFrozen(outcomes)).toBe(true)
      expect(h.statements[0]).toBe("SELECT pg_catalog.current_setting('server_version_num')::int AS version")
      expect(h.statements.slice(1).every((t) => t.includes('pg_catalog.pg_terminate_backend(s.pid'))).toBe(true)
      await waitUntil(
        'the terminated session to end',
        async () => (await h.column('select count(*)::int from pg_stat_activity where pid = $1', [hold.pid]))[0] === 0,
      )
      expect(await h.column('select state from pg_stat_activity where pid = $1', [busy.pid])).toEqual([
        'idle in transaction',
      ])
      await busy.client.query('rollback')
      expect(await terminateSessions([])).toEqual([])
    },
  )

  test("a refusal by the server is that session's 'failed' outcome, with code and error", async () => {
    const role = `pga_insight_${process.pid}`
    await h.admin.query(`create role ${role} login password 'pw' in role pg_read_all_stats`)
    try {
      const hold = await holder()
      const url = new URL(h.testDb.url)
      url.username = role
      url.password = 'pw'
      const pool = new pg.Pool({ connectionString: url.toString(), max: 1 })
      const db = createDatabase({ alias: 'limited', pool })
      try {
        const listed = (await idleInTransaction({ using: db })).filter((s) => s.pid === hold.pid)
        const [outcome] = await terminateSessions(listed, { using: db })
        expect(outcome).toMatchObject({
          pid: hold.pid,
          outcome: 'failed',
          reason:
            "Permission denied: ending another role's session needs superuser, membership in that role, " +
            "or the pg_signal_backend role (and a superuser's session needs superuser).",
          code: '42501',
        })
        expect(outcome?.error).toBeInstanceOf(pg.DatabaseError)
        expect(await h.column('select state from pg_stat_activity where pid = $1', [hold.pid])).toEqual([
          'idle in transaction',
        ])
      } finally {
        await db.close()
        await pool.end()
      }
      await hold.client.query('rollback')
    } finally {
      await waitUntil(
        `the sessions of ${role} to end`,
        async () => (await h.column('select count(*)::int from pg_stat_activity where usename = $1', [role]))[0] === 0,
      )
      await h.admin.query(`drop role ${role}`)
    }
  })

  test('refused inside a block, and invalid arguments, before anything is sent', async () => {
    await expect(atomic(() => terminateSessions([]))).rejects.toMatchObject({
      name: 'TransactionManagementError',
      message:
        'terminateSessions() cannot be used inside an atomic() block: terminating a session is not ' +
        'part of any transaction (a rollback would not undo it), and a refused termination would doom ' +
        'the block. Call it outside atomic().',
    })
    await expect(terminateSessions([{ pid: 1 }] as never)).rejects.toMatchObject({
      name: 'InvalidOptionError',
      field: 'sessions',
      message:
        'Invalid option "sessions" for terminateSessions(): it must be a list of sessions, each { pid, ' +
        'idleSince } as idleInTransaction() returns them.',
    })
    await expect(terminateSessions([], { exitTimeoutMs: -1 })).rejects.toMatchObject({
      name: 'InvalidOptionError',
      field: 'exitTimeoutMs',
      message:
        'Invalid option "exitTimeoutMs" for terminateSessions(): it must be a whole number of milliseconds ' +
        'from 0 to 2147483647.',
    })
    expect(h.statements).toEqual([])
  })

  test('serverInfo(): the database, role and server version; the defaults are exported', async () => {
    const info = await serverInfo()
    expect(info).toEqual({
      database: h.testDb.name,
      role: (await h.column<string>('select current_user'))[0],
      serverVersion: Number((await h.column<string>("select current_setting('server_version_num')"))[0]),
    })
    expect(INSIGHT_DEFAULTS).toEqual({
      queryLength: 200,
      olderThanMs: 0,
      exitTimeoutMs: 5000,
      lockTimeout: 1000,
      statementTimeout: 30_000,
      rowLocks: true,
      maxRowLocks: 100,
    })
    expect(Object.isFrozen(INSIGHT_DEFAULTS)).toBe(true)
  })
})

describe('explainLocks()', () => {
  const prelude = 'BEGIN; SET LOCAL lock_timeout = 1000; SET LOCAL statement_timeout = 30000'

  test('SELECT: AccessShareLock on the table and its index, blocking only ACCESS EXCLUSIVE statements', async () => {
    const report = await explainLocks('select * from accounts where id = 1')
    expect(report).toMatchObject({ sql: 'select * from accounts where id = 1', command: 'SELECT', rowCount: 1 })
    expect(report.locks.map((l) => `${l.target} ${l.mode}`)).toEqual([
      'table public.accounts AccessShareLock',
      'index public.accounts_pkey AccessShareLock',
    ])
    expect(report.locks[0]).toMatchObject({
      lockMode: 'access share',
      conflictsWith: ['access exclusive'],
      granted: true,
    })
    expect(report.locks[0]?.blocks).toEqual([
      'DROP TABLE',
      'TRUNCATE',
      'ALTER TABLE (most forms)',
      'CLUSTER',
      'VACUUM FULL',
      'REFRESH MATERIALIZED VIEW',
      'LOCK TABLE (default mode)',
    ])
    expect(report.rowLocks).toEqual({
      source: 'none',
      rows: [],
      truncated: false,
      note: 'The statement took no RowShareLock or RowExclusiveLock on a table, so it locked no rows.',
      error: null,
    })
    expect(h.statements[0]).toBe(prelude)
    expect(h.statements[1]).toBe('select * from accounts where id = 1')
    expect(h.statements[h.statements.length - 1]).toBe('ROLLBACK')
  })

  test(
    'UPDATE without pgrowlocks: RowExclusiveLock, the transaction id, and a note that rows are ' +
      'not listed; nothing kept',
    async () => {
      const report = await explainLocks('update accounts set balance = 0 where id <= $1', [2])
      expect(report).toMatchObject({ command: 'UPDATE', rowCount: 2 })
      expect(report.locks.map((l) => `${l.type} ${l.mode}`)).toEqual([
        'relation RowExclusiveLock',
        'relation RowExclusiveLock',
        'transactionid ExclusiveLock',
      ])
      expect(report.locks[0]).toMatchObject({
        target: 'table public.accounts',
        lockMode: 'row exclusive',
        conflictsWith: ['share', 'share row exclusive', 'exclusive', 'access exclusive'],
      })
      expect(report.locks[0]?.blocks).toContain('CREATE INDEX (not CONCURRENTLY)')
      expect(report.locks[2]?.blocks).toEqual([
        'transactions waiting to lock or change the rows this one changed or locked (until it ends)',
      ])
      expect(report.rowLocks).toMatchObject({ source: 'not installed', rows: [], truncated: false, error: null })
      expect(report.rowLocks.note).toBe(
        'Row locks are not kept in pg_locks and the pgrowlocks extension is not installed, so they ' +
          'are not listed; the RowShareLock / RowExclusiveLock on public.accounts shows the statement ' +
          'locked or changed rows there (CREATE EXTENSION pgrowlocks lists them).',
      )
      expect(report.notes).toContain(report.rowLocks.note)
      expect(await h.column('select balance from accounts order by id')).toEqual([100, 100, 100, 100, 100])
    },
  )

  test('with pgrowlocks: the rows locked and changed, seen from another session', async () => {
    await h.admin.query('create extension pgrowlocks')
    const update = await explainLocks('update accounts set balance = 0 where id <= 2')
    expect(update.rowLocks.source).toBe('pgrowlocks')
    expect(update.rowLocks.rows.map((r) => [r.relation.qualifiedName, r.modes])).toEqual([
      ['public.accounts', ['no key update']],
      ['public.accounts', ['no key update']],
    ])
    expect(update.rowLocks.rows[0]?.ctid).toMatch(/^\([0-9]+,[0-9]+\)$/)
    expect(update.rowLocks.rows[0]?.blocks).toEqual([
      'SELECT ... FOR UPDATE / FOR NO KEY UPDATE / FOR SHARE',
      'UPDATE',
      'DELETE',
    ])

    const mixed = await explainLocks('delete from accounts where id = 4; select * from accounts where id = 3 for share')
    expect(mixed.command).toBe('SELECT')
    expect(mixed.rowLocks.rows.map((r) => r.modes).sort()).toEqual([['for share'], ['update']])

    const limited = await explainLocks('select * from accounts for update', undefined, { maxRowLocks: 3 })
    expect(limited.rowLocks).toMatchObject({ source: 'pgrowlocks', truncated: true })
    expect(limited.rowLocks.rows).toHaveLength(3)
    expect(limited.locks[0]).toMatchObject({ target: 'table public.accounts', mode: 'RowShareLock' })

    expect(
      (await explainLocks('update accounts set balance = 1', undefined, { rowLocks: false })).rowLocks.source,
    ).toBe('disabled')
    expect(await h.column('select count(*)::int from accounts where balance = 100')).toEqual([5])
  })

  test('ALTER TABLE ADD COLUMN: AccessExclusiveLock that blocks even SELECT; the column is not added', async () => {
    const report = await explainLocks('alter table accounts add column note text')
    const table = report.locks.find((l) => l.target === 'table public.accounts')
    expect(table).toMatchObject({ mode: 'AccessExclusiveLock', lockMode: 'access exclusive' })
    expect(table?.conflictsWith).toHaveLength(8)
    expect(table?.blocks.slice(0, 3)).toEqual([
      'SELECT',
      'SELECT ... FOR UPDATE / FOR NO KEY UPDATE / FOR SHARE / FOR KEY SHARE',
      'INSERT',
    ])
    expect(report.locks[0]).toBe(table)
    expect(report.notes[0]).toBe(
      'AccessExclusiveLock on public.accounts blocks every other statement on it, even SELECT, until ' +
        'the transaction ends; while it waits for the lock, statements queued behind it wait too.',
    )
    expect(report.rowLocks.source).toBe('none')
    expect(
      await h.column(
        'select column_name from information_schema.columns where table_name = $1 order by ordinal_position',
        ['accounts'],
      ),
    ).toEqual(['id', 'balance'])
  })

  test('advisory locks, even session-level ones, are reported and do not survive', async () => {
    const report = await explainLocks('select pg_advisory_xact_lock(7), pg_advisory_lock_shared(3, 4)')
    expect(report.locks.map((l) => [l.target, l.mode, l.blocks])).toEqual([
      ['advisory key (3, 4)', 'ShareLock', ['exclusive advisory locks on the same key']],
      ['advisory key 7', 'ExclusiveLock', ['advisory locks on the same key (shared or exclusive)']],
    ])
    await waitUntil(
      'the explain connection to close',
      async () =>
        (
          await h.column(
            "select count(*)::int from pg_locks where locktype = 'advisory' and database = (select oid " +
              'from pg_database where datname = current_database())',
          )
        )[0] === 0,
    )
  })

  test('refused before anything is sent: VACUUM, CREATE INDEX CONCURRENTLY, COMMIT, CHECKPOINT', async () => {
    const cases: Array<[string, string]> = [
      [
        'vacuum accounts',
        'explainLocks() cannot explain VACUUM: it cannot run inside a transaction block (PostgreSQL ' +
          'refuses it with SQLSTATE 25001), so it could not be rolled back afterwards. Nothing was sent ' +
          'to the server.',
      ],
      [
        'create index concurrently accounts_balance on accounts (balance)',
        'explainLocks() cannot explain CREATE INDEX CONCURRENTLY: it cannot run inside a transaction ' +
          'block (PostgreSQL refuses it with SQLSTATE 25001), so it could not be rolled back afterwards. ' +
          'Nothing was sent to the server.',
      ],
      [
        'select 1; commit',
        'explainLocks() refuses COMMIT: it runs the statement in a transaction of its own and always ' +
          'rolls it back, so transaction control cannot be part of it. Pass only the statement whose ' +
          'locks you want to see. Nothing was sent to the server.',
      ],
      [
        'checkpoint',
        'explainLocks() refuses CHECKPOINT: rolling back would not undo it (a checkpoint is written ' +
          'at once and is not part of any transaction). Nothing was sent to the server.',
      ],
    ]
    for (const [sql, message] of cases) {
      const error = await rejection(explainLocks(sql))
      expect(error).toBeInstanceOf(TransactionManagementError)
      expect((error as Error).message).toBe(message)
    }
    expect(h.statements).toEqual([])
    expect(await h.column("select count(*)::int from pg_indexes where indexname = 'accounts_balance'")).toEqual([0])
    await expect(explainLocks('  -- nothing\n;')).rejects.toMatchObject({
      name: 'InvalidOptionError',
      field: 'sql',
      message:
        'Invalid option "sql" for explainLocks(): it must be the SQL statement to explain (a non-empty ' +
        'string with at least one statement).',
    })
    await expect(explainLocks('select 1', 'x' as never)).rejects.toMatchObject({
      name: 'InvalidOptionError',
      field: 'params',
      message:
        'Invalid option "params" for explainLocks(): it must be an array of values for $1, $2, ... (or undefined).',
    })
    await expect(explainLocks('select 1', [], { lockTimeout: -1 })).rejects.toMatchObject({
      name: 'InvalidOptionError',
      field: 'lockTimeout',
      message:
        'Invalid option "lockTimeout" for explainLocks(): it must be a whole number of milliseconds ' +
        'from 0 to 2147483647.',
    })
    expect(h.statements).toEqual([])
  })

  test(
    'a 25001 the scanner did not foresee becomes TransactionManagementError; statement errors pass ' +
      'through; always rolled back',
    async () => {
      const error = await rejection(explainLocks("do $$ begin execute 'vacuum accounts'; end $$"))
      expect(error).toBeInstanceOf(TransactionManagementError)
      expect((error as Error).message).toBe(
        'explainLocks() cannot explain this statement: PostgreSQL refused to run it inside a transaction ' +
          "block (SQLSTATE 25001; the server's message is in cause), so it could not be rolled back afterwards. " +
          'Nothing was changed.',
      )
      expect((error as Error).cause).toMatchObject({
        code: '25001',
        message: 'VACUUM cannot run inside a transaction block',
      })
      await expect(explainLocks('select * from missing_table')).rejects.toMatchObject({ name: 'error', code: '42P01' })
      expect(h.statements.filter((s) => s === 'ROLLBACK')).toHaveLength(2)
    },
  )

  test(
    "a statement that waits longer than lockTimeout fails with 55P03, also when the caller's own " +
      'block holds the lock',
    async () => {
      const hold = await holder()
      await expect(
        explainLocks('alter table accounts add column note text', undefined, { lockTimeout: 100 }),
      ).rejects.toMatchObject({ code: '55P03' })
      await hold.client.query('rollback')
      await atomic(async () => {
        await h.db.query('lock table accounts')
        await expect(explainLocks('select 1 from accounts', undefined, { lockTimeout: 100 })).rejects.toMatchObject({
          code: '55P03',
          message: 'canceling statement due to lock timeout',
        })
      })
      expect(await lockWaits()).toEqual([])
    },
  )
})

describe('the statement classifier (assertExplainable) on the one lexer', () => {
  test.each([
    'insert into accounts values (9, 1) returning id',
    "insert into t values ('; commit')",
    "select E'\\'; commit'",
    'select $$ vacuum $$; select $x$; begin$x$',
    '/* vacuum */ select 1 -- ; commit',
    'reindex table accounts',
    'refresh materialized view concurrently mv',
    'cluster accounts using accounts_pkey',
    'copy accounts to stdout',
    'copy accounts from stdin',
    'create function f() returns int language sql begin atomic select 1; select case when true then 2 end; end',
    'create rule r as on insert to t do also (insert into u values (1); insert into u values (2))',
    'lock table accounts in access exclusive mode',
    'set transaction isolation level serializable',
    'lock table "we""ird; vacuum" in share mode',
    "select U&'d\\0061t; vacuum'",
  ])('allows %s', (sql) => {
    expect(() => assertExplainable(sql)).not.toThrow()
  })

  test.each([
    ['begin', 'BEGIN'],
    ['START TRANSACTION', 'START TRANSACTION'],
    ['select 1; rollback', 'ROLLBACK'],
    ['savepoint a', 'SAVEPOINT'],
    ["prepare transaction 'x'", 'PREPARE TRANSACTION'],
    ["commit prepared 'x'", 'COMMIT PREPARED'],
    ['VACUUM FULL accounts', 'VACUUM'],
    ['create unique index concurrently i on t (x)', 'CREATE INDEX CONCURRENTLY'],
    ['drop index concurrently i', 'DROP INDEX CONCURRENTLY'],
    ['reindex (verbose) table concurrently t', 'REINDEX ... CONCURRENTLY'],
    ['reindex database d', 'REINDEX DATABASE'],
    ['create database d', 'CREATE DATABASE'],
    ['drop tablespace s', 'DROP TABLESPACE'],
    ["alter system set work_mem = '1MB'", 'ALTER SYSTEM'],
    ['alter database d set tablespace s', 'ALTER DATABASE ... SET TABLESPACE'],
    ['alter table p detach partition c concurrently', 'ALTER TABLE ... DETACH PARTITION ... CONCURRENTLY'],
    ['cluster verbose', 'CLUSTER (without a table)'],
    ['discard all', 'DISCARD ALL'],
    ["copy accounts to '/tmp/accounts.csv'", 'COPY ... TO a file'],
    ["copy accounts from program 'cat /etc/passwd'", 'COPY ... PROGRAM'],
    ['drop subscription s', 'DROP SUBSCRIPTION'],
    ["select 'x'; /* ; */ VACUUM", 'VACUUM'],
  ])('refuses %s (%s)', (sql, command) => {
    const error = thrown(() => assertExplainable(sql))
    expect(error).toBeInstanceOf(TransactionManagementError)
    expect((error as Error).message).toContain(` ${command}`)
  })

  test('splits on top-level semicolons only, not inside parentheses or BEGIN ATOMIC bodies', () => {
    const words = (sql: string): string[][] =>
      splitStatements(sql).map((st) => st.filter((t) => t.kind === 'word').map((t) => t.text))
    expect(words("select ';'; select (1); ; -- x\n")).toEqual([['SELECT'], ['SELECT']])
    expect(words('create function f() returns int language sql begin atomic select 1; end; vacuum')).toEqual([
      ['CREATE', 'FUNCTION', 'F', 'RETURNS', 'INT', 'LANGUAGE', 'SQL', 'BEGIN', 'ATOMIC', 'SELECT', 'END'],
      ['VACUUM'],
    ])
    expect(words("select $1, \"a;b\", $q$;$q$, E'\\'; x'; commit")).toEqual([['SELECT'], ['COMMIT']])
  })

  test('an empty statement or a non-string is an InvalidOptionError', () => {
    for (const sql of ['', ' ; ; ', '/* only a comment */', 42]) {
      const error = thrown(() => assertExplainable(sql as string))
      expect(error).toBeInstanceOf(InvalidOptionError)
      expect(error).toMatchObject({ field: 'sql' })
    }
  })
})
