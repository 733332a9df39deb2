/**
 * Model-based random testing (issue 3 §4): fast-check generates random programs of nested blocks
 * (savepoint true/false, durable, inserts, failing statements, thrown values caught at random
 * levels, setRollback, onCommit (robust or not) / onRollback hooks that may throw, Promise.all of
 * sibling blocks mixed with statements, statements through ambient functions or handles); each
 * runs against PostgreSQL through pg-atomic and against the reference model in support/model.ts,
 * and the two must observe the same committed rows, hook calls and logged hook errors (in order),
 * outcome of the outermost and of every nested block, and what every `try` caught. After every
 * program the pool must be idle (the harness checks sessions and advisory locks at the end).
 *
 * Re-running a failure: the report prints `seed` and `path`;
 *   PG_ATOMIC_MODEL_SEED=<seed> PG_ATOMIC_MODEL_PATH=<path> npx jest packages/pg-atomic/test/model.test.ts
 * replays exactly that counterexample (without PATH: the same run from its start).
 * PG_ATOMIC_MODEL_RUNS changes the number of programs (default 5000, about 10 s). Past TIME_LIMIT_MS
 * the remaining programs are generated but not run (a slow machine checks fewer, never hangs CI).
 */
import { isDeepStrictEqual } from 'node:util'
import fc from 'fast-check'
import pg from 'pg'
import { OnCommitHookError, TransactionManagementError, atomic, onCommit, onRollback, setRollback } from 'pg-atomic'
import type { TransactionHandle } from 'pg-atomic'
import { assertPoolIdle } from './support/database'
import { setupHarness } from './support/harness'
import type { Harness } from './support/harness'
import { FAILING_SQL, INSERT_SQL, OUTERMOST_RESULT, programArbitrary, renderProgram, runModel } from './support/model'
import type { BlockSpec, ErrorShape, Observation, Op, Outcome, Program, QueryOp, TmeReason, Via } from './support/model'

const RUNS = Number(process.env['PG_ATOMIC_MODEL_RUNS'] ?? 5000)
const SEED =
  process.env['PG_ATOMIC_MODEL_SEED'] === undefined
    ? (Date.now() ^ (Math.random() * 0x100000000)) | 0
    : Number(process.env['PG_ATOMIC_MODEL_SEED'])
const PATH = process.env['PG_ATOMIC_MODEL_PATH']
/** After this long no new program is run (shrinking a failure found before is not limited). */
const TIME_LIMIT_MS = 75_000
/** One program takes a few milliseconds; one that has not settled after this long is stuck. */
const PROGRAM_TIMEOUT_MS = 10_000

let h: Harness
/** The logger of the database under test: records which hook's error it was told about. */
let logged: (label: string) => void = () => undefined

beforeAll(async () => {
  h = await setupHarness('model', {
    logger: {
      error: (_message, error) =>
        logged(error instanceof HookError ? error.label : `not a hook error: ${String(error)}`),
    },
  })
  await h.admin.query('create table t (x int primary key)')
})
afterAll(() => h.close())

/** The Error subclass a `throw` statement of kind 'error' throws. */
class ProgramError extends Error {
  override name = 'ProgramError'
  constructor(readonly thrownId: number) {
    super(`thrown ${thrownId}`)
  }
}

/** What a hook with `throws` throws. */
class HookError extends Error {
  override name = 'HookError'
  constructor(readonly label: string) {
    super(`hook ${label} failed`)
  }
}

const TME_MESSAGES: ReadonlyArray<[TmeReason, (message: string) => boolean]> = [
  [
    'doomed',
    (m) =>
      m ===
      "An error occurred in the current transaction. You can't execute queries until the end of the 'atomic' block.",
  ],
  [
    'swallowed',
    (m) =>
      m.startsWith(
        "The 'atomic' block finished normally, but an error inside it was caught and not " +
          're-raised, so its work was rolled back.',
      ),
  ],
  ['durable-nested', (m) => m === 'A durable atomic block cannot be nested within another atomic block.'],
  [
    'control-failed',
    (m) => m.startsWith('A transaction control statement failed, so the state of the transaction is unknown'),
  ],
  [
    'aborted',
    (m) =>
      m.startsWith(
        "The 'atomic' block finished normally, but a statement inside it failed and the " +
          'transaction was aborted on the server',
      ),
  ],
  ['commit-answered-rollback', (m) => m.startsWith('COMMIT was answered with ROLLBACK')],
]

/** Runs `program` through pg-atomic and records what it observes. */
async function runReal(program: Program): Promise<Observation> {
  const hooks: string[] = []
  const blocks: Record<number, Outcome> = {}
  const caught: Record<number, ErrorShape> = {}
  const thrownValues = new Map<number, unknown>()

  const shape = (error: unknown): ErrorShape => {
    for (const [id, value] of thrownValues) if (value === error) return { thrown: id }
    if (error instanceof pg.DatabaseError) return { db: error.code ?? '?' }
    if (error instanceof OnCommitHookError && error.cause instanceof HookError) return { hookFailed: error.cause.label }
    if (error instanceof TransactionManagementError) {
      const reason = TME_MESSAGES.find(([, matches]) => matches(error.message))?.[0]
      if (reason === undefined) return { other: `TransactionManagementError: ${error.message}` }
      return error.cause === undefined ? { tme: reason } : { tme: reason, cause: shape(error.cause) }
    }
    return { other: error instanceof Error ? `${error.name}: ${error.message}` : `${typeof error}: ${String(error)}` }
  }

  const thrownValue = (o: Extract<Op, { op: 'throw' }>): unknown => {
    const value = o.as === 'error' ? new ProgramError(o.id) : o.as === 'object' ? { thrownId: o.id } : `thrown ${o.id}`
    thrownValues.set(o.id, value)
    return value
  }

  /** The handles a statement can go through: the running block's and the outermost block's. */
  interface Handles {
    readonly tx: TransactionHandle
    readonly outer: TransactionHandle
  }
  const handle = (via: Exclude<Via, 'ambient'>, handles: Handles): TransactionHandle =>
    via === 'handle' ? handles.tx : handles.outer
  const query = (via: Via, handles: Handles, text: string, values?: unknown[]) =>
    via === 'ambient' ? h.db.query(text, values) : handle(via, handles).query(text, values)

  const memberQuery = (o: QueryOp, handles: Handles) =>
    o.op === 'fail' ? query(o.via, handles, FAILING_SQL[o.sql]) : query(o.via, handles, INSERT_SQL, [o.value])

  const runOps = async (ops: readonly Op[], handles: Handles): Promise<void> => {
    for (const o of ops) await runOp(o, handles)
  }

  const runOp = async (o: Op, handles: Handles): Promise<void> => {
    switch (o.op) {
      case 'insert':
      case 'dup':
        await query(o.via, handles, INSERT_SQL, [o.value])
        return
      case 'fail':
        await query(o.via, handles, FAILING_SQL[o.sql])
        return
      case 'throw':
        throw thrownValue(o)
      case 'setRollback':
        if (o.via === 'ambient') setRollback(o.flag)
        else handle(o.via, handles).setRollback(o.flag)
        return
      case 'onCommit': {
        const hook = () => {
          hooks.push(`commit:${o.label}`)
          if (o.throws) throw new HookError(o.label)
        }
        if (o.via === 'ambient') onCommit(hook, { robust: o.robust })
        else handle(o.via, handles).onCommit(hook, { robust: o.robust })
        return
      }
      case 'onRollback': {
        const hook = () => {
          hooks.push(`rollback:${o.label}`)
          if (o.throws) throw new HookError(o.label)
        }
        if (o.via === 'ambient') onRollback(hook)
        else handle(o.via, handles).onRollback(hook)
        return
      }
      case 'block':
        await enter(o.block, handles.outer)
        return
      case 'siblings': {
        // Each member is the library's own promise (no wrapper adding turns), as in user code.
        const entered = o.members.map((m): Promise<unknown> =>
          'block' in m ? enter(m.block, handles.outer, true) : memberQuery(m.query, handles),
        )
        try {
          await Promise.all(entered)
        } catch (error) {
          // Promise.all rejects with the first rejection; let the others settle before the
          // enclosing code goes on, so that what it does next does not race with them.
          await Promise.allSettled(entered)
          throw error
        }
        return
      }
      case 'try':
        try {
          await runOps(o.body, handles)
        } catch (error) {
          caught[o.id] = shape(error)
        }
        return
    }
  }

  /**
   * `atomic()` of a nested block. A member of a Promise.all group first yields once: otherwise the
   * first member's body would run synchronously up to its first await while the other members are
   * still being called, and what it does there (setRollback) would change how a later member is
   * received (a statement is refused at once when issued in a doomed transaction).
   */
  const enter = (spec: BlockSpec, outer: TransactionHandle, member = false): Promise<string> => {
    const entered = atomic({ savepoint: spec.savepoint, durable: spec.durable }, async (tx) => {
      if (member) await Promise.resolve()
      await runOps(spec.body, { tx, outer })
      return `block ${spec.id}`
    })
    entered.then(
      (value) => {
        blocks[spec.id] = { ok: value }
      },
      (error: unknown) => {
        blocks[spec.id] = { error: shape(error) }
      },
    )
    return entered
  }

  logged = (label) => hooks.push(`logged:${label}`)
  let outcome: Outcome
  try {
    const spec = program.outermost
    const value = await h.db.atomic({ durable: spec.durable }, async (outer) => {
      await runOps(spec.body, { tx: outer, outer })
      return OUTERMOST_RESULT
    })
    outcome = { ok: value }
  } catch (error) {
    outcome = { error: shape(error) }
  }
  // The recording handlers of nested blocks run one turn after they settle.
  await new Promise((resolve) => setImmediate(resolve))
  const rows = await h.column<number>('select x from t order by x')
  return { outcome, rows, hooks, blocks, caught }
}

/** Fails with the program instead of letting jest's timeout hide it when a program never settles. */
function within<T>(promise: Promise<T>, ms: number, program: Program): Promise<T> {
  let timer: NodeJS.Timeout | undefined
  const bound = new Promise<never>((_resolve, reject) => {
    timer = setTimeout(
      () =>
        reject(new Error(`This program did not settle within ${ms} ms (a deadlock?):\n\n${renderProgram(program)}`)),
      ms,
    )
  })
  return Promise.race([promise, bound]).finally(() => clearTimeout(timer))
}

function report(program: Program, expected: Observation, actual: Observation): string {
  const lines = ['pg-atomic and the model disagree on this program:', '', renderProgram(program), '']
  for (const key of ['outcome', 'rows', 'hooks', 'blocks', 'caught'] as const) {
    const same = isDeepStrictEqual(expected[key], actual[key])
    lines.push(
      `${same ? '  ' : '≠ '}${key}: model ` +
        `${JSON.stringify(expected[key])}${same ? '' : `\n    pg-atomic ${JSON.stringify(actual[key])}`}`,
    )
  }
  return lines.join('\n')
}

test(
  'random programs of nested blocks: pg-atomic on PostgreSQL observes what the reference model predicts',
  async () => {
    let runs = 0
    let failed = false
    const deadline = Date.now() + TIME_LIMIT_MS
    const property = fc.asyncProperty(programArbitrary, async (program) => {
      // fast-check's own interruptAfterTimeLimit abandons the running program (and its connection).
      if (!failed && Date.now() > deadline) return
      runs++
      try {
        await h.admin.query('delete from t')
        const expected = runModel(program)
        const actual = await within(runReal(program), PROGRAM_TIMEOUT_MS, program)
        // After every program the transaction's connection is back in the pool.
        assertPoolIdle(h.pool)
        if (!isDeepStrictEqual(expected, actual)) throw new Error(report(program, expected, actual))
      } catch (error) {
        failed = true
        throw error
      }
    })
    const started = Date.now()
    try {
      await fc.assert(property, {
        numRuns: RUNS,
        seed: SEED,
        ...(PATH === undefined ? {} : { path: PATH, endOnFailure: true }),
      })
    } catch (error) {
      ;(error as Error).message +=
        `\n\nRe-run: PG_ATOMIC_MODEL_SEED=${SEED} PG_ATOMIC_MODEL_PATH=<path above> npx ` +
        `jest packages/pg-atomic/test/model.test.ts`
      throw error
    }
    process.stderr.write(`[model.test] ${runs} programs in ${Date.now() - started} ms (seed ${SEED})\n`)
    // A run cut short by the time limit still has to have checked a meaningful number of programs
    // (a replay of one PATH checks just that one).
    if (PATH === undefined) expect(runs).toBeGreaterThanOrEqual(Math.min(RUNS, 500))
  },
  TIME_LIMIT_MS + 30_000,
)
