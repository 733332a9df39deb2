/**
 * The library's own sentences never carry a bind value or a server message (issue 7 §1.2).
 * Regression: a robust onCommit hook whose query failed logged "Error calling ... in onCommit()
 * during transaction 4 (invalid input syntax for type integer: "SECRETBIND")": the server's
 * message carried the bind value into the log line.
 *
 * Every scenario of the hook and fault suites that makes the library log, publish or raise
 * something is run with a planted secret as bind value; every log line, every diagnostics event
 * (all fields but `error`, which is the error object itself, for the application to handle) and
 * the message of every error the library raises itself is searched for it. The error objects
 * passed along must still carry it (so the search can fail).
 */
import diagnostics_channel from 'node:diagnostics_channel'
import {
  AtomicError,
  ConnectionLostError,
  HOOK_ERROR_CHANNEL,
  RETRY_CHANNEL,
  STATEMENT_CHANNEL,
  TransactionManagementError,
  createDatabase,
  onCommit,
  onRollback,
} from 'pg-atomic'
import type { Database } from 'pg-atomic'
import { setupHarness, testDirect } from './support/harness'
import type { Harness } from './support/harness'
import { rejection } from './support/errors'
import { waitUntil } from './support/wait'

const SECRET = 'SECRETBIND-7f3a9c'
const BAD_INT = 'select $1::int as n'

let h: Harness
let db: Database
const lines: string[] = []
const attached: unknown[] = []
const events: Array<{ channel: string; payload: Record<string, unknown> }> = []
const raised: unknown[] = []
const listeners = new Map<string, (message: unknown) => void>()

beforeAll(async () => {
  h = await setupHarness('secrets')
  await h.admin.query('create table t (x text primary key deferrable initially deferred)')
  db = createDatabase({
    connectionString: h.testDb.url,
    alias: 'secrets',
    max: 2,
    logger: {
      error(message, error) {
        lines.push(message)
        attached.push(error)
      },
    },
  })
  for (const channel of [STATEMENT_CHANNEL, HOOK_ERROR_CHANNEL, RETRY_CHANNEL]) {
    const listener = (message: unknown): void =>
      void events.push({ channel, payload: message as Record<string, unknown> })
    listeners.set(channel, listener)
    diagnostics_channel.subscribe(channel, listener)
  }
})

afterAll(async () => {
  for (const [channel, listener] of listeners) diagnostics_channel.unsubscribe(channel, listener)
  await db.close()
  await h.close()
})

/** Every string reachable from `value` (objects and arrays walked, errors skipped). */
function strings(value: unknown, seen = new Set<unknown>()): string[] {
  if (typeof value === 'string') return [value]
  if (typeof value !== 'object' || value === null || seen.has(value) || value instanceof Error) return []
  seen.add(value)
  return Object.values(value).flatMap((v) => strings(v, seen))
}

function carriesSecret(error: unknown): boolean {
  for (let e: unknown = error; e !== undefined && e !== null; e = (e as { cause?: unknown }).cause) {
    if (
      e instanceof Error &&
      (e.message.includes(SECRET) || String((e as { detail?: unknown }).detail).includes(SECRET))
    )
      return true
  }
  return false
}

async function capture(promise: Promise<unknown>): Promise<void> {
  raised.push(await rejection(promise))
}

test(
  'hooks: robust onCommit, onRollback, and onCommit outside a block, each failing ' +
    'with the secret in its statement',
  async () => {
    const failing = async (): Promise<void> => {
      await db.query(BAD_INT, [SECRET])
    }
    await db.atomic(async () => {
      await db.query('insert into t (x) values ($1)', ['a'])
      onCommit(failing, { robust: true })
    })
    await capture(
      db.atomic(async () => {
        await db.query('insert into t (x) values ($1)', ['b'])
        onRollback(failing)
        throw new Error('roll back')
      }),
    )
    onCommit(failing, { robust: true, using: 'secrets' })
    await waitUntil(() => lines.length === 3, 'the failing hook run outside a block to be logged')
    expect(lines).toHaveLength(3)
  },
)

test(
  'statements: a failing statement dooms the block, a swallowed one is reported, a ' + 'nested one rolls back',
  async () => {
    await capture(
      db.atomic(async () => {
        await rejection(db.query(BAD_INT, [SECRET]))
        await db.query('select 1')
      }),
    )
    await capture(
      db.atomic(async () => {
        await rejection(db.query(BAD_INT, [SECRET]))
      }),
    )
    await db.atomic(async () => {
      await capture(db.atomic(() => db.query(BAD_INT, [SECRET])))
    })
    const library = raised.filter((e) => e instanceof TransactionManagementError)
    expect(library.length).toBeGreaterThanOrEqual(2)
  },
)

test(
  'COMMIT: a deferred unique violation naming the secret in its detail, and a ' + 'serialization failure retried',
  async () => {
    await db.query('insert into t (x) values ($1)', [SECRET])
    await capture(db.atomic(() => db.query('insert into t (x) values ($1)', [SECRET])))
    let attempt = 0
    await db.atomic({ retry: 2, isolationLevel: 'serializable' }, async () => {
      attempt++
      if (attempt === 1) {
        const error = Object.assign(new Error(`could not serialize access (${SECRET})`), { code: '40001' })
        throw error
      }
    })
    expect(events.some((e) => e.channel === RETRY_CHANNEL)).toBe(true)
  },
)

testDirect(
  'faults: the connection is terminated after a statement with the secret, and an idle pooled connection dies',
  async () => {
    await capture(
      db.atomic(async () => {
        await db.query('select $1::text as s', [SECRET])
        const { rows } = await db.query<{ pid: number }>('select pg_backend_pid() as pid')
        await h.admin.query('select pg_terminate_backend($1)', [rows[0]?.pid])
        await db.query('select $1::text as s', [SECRET])
      }),
    )
    expect(raised[raised.length - 1]).toBeInstanceOf(ConnectionLostError)
    const { rows } = await db.query<{ pid: number }>('select pg_backend_pid() as pid, $1::text as s', [SECRET])
    const before = lines.length
    await h.admin.query('select pg_terminate_backend($1)', [rows[0]?.pid])
    await waitUntil(() => lines.length > before, 'the pool to notice the dead idle connection and log it')
    expect(lines.length).toBe(before + 1)
  },
)

test('no log line, no event field and no message of a library error carries the secret; the attached errors do', () => {
  for (const line of lines) expect(line).not.toContain(SECRET)
  for (const { payload } of events) for (const s of strings(payload)) expect(s).not.toContain(SECRET)
  for (const error of raised) {
    if (error instanceof AtomicError) expect(error.message).not.toContain(SECRET)
  }
  // The planting worked: the errors handed to the logger, the events and the callers carry it.
  expect(attached.filter(carriesSecret).length).toBeGreaterThanOrEqual(3)
  expect(events.filter((e) => carriesSecret(e.payload['error'])).length).toBeGreaterThanOrEqual(3)
  expect(raised.filter(carriesSecret).length).toBeGreaterThanOrEqual(4)
})
