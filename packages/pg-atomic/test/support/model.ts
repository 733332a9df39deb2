/**
 * Model-based testing of atomic(): random programs of nested blocks, their generator (fast-check),
 * a printer for failure reports, and a small pure reference model of the semantics that predicts
 * what a program observes. model.test.ts runs every program against PostgreSQL through pg-atomic
 * and compares the observations with the prediction.
 *
 * The model is Django's rules (../shared/reference/django-semantics.md §1.3–1.8, §1.11) plus the
 * deliberate differences of pg-atomic (docs/differences-from-django.md):
 *
 * 1. Any query error dooms the block (Django: only ORM writes do); the next query is refused with
 *    TransactionManagementError "An error occurred ..." whose cause is that error.
 * 2. A block that must roll back because of an error that was swallowed inside it rejects with
 *    TransactionManagementError (cause = the swallowed error) instead of rolling back silently;
 *    `setRollback(true)` stays a silent rollback, `setRollback(false)` clears the doom.
 * 3. A COMMIT answered with ROLLBACK (the server transaction had failed) is a failure.
 * 4. onRollback hooks run when the savepoint they were registered under is rolled back (hooks of
 *    inner blocks included) and after the outermost ROLLBACK.
 * Plus: a nested `durable` block is refused before any SQL; a block entered while the transaction
 * is doomed gets no savepoint (Django); onCommit hooks run FIFO after the outermost COMMIT and are
 * dropped with a rolled-back savepoint, inner blocks included; sibling blocks entered with
 * Promise.all run one after the other in entry order.
 *
 * What the server does is modelled too, because `setRollback(false)` after a failed statement
 * (misuse that Django documents as "only after rolling back to a savepoint by hand") lets later
 * statements reach a transaction that PostgreSQL has aborted: they fail with 25P02, and a control
 * statement failing that way (the SAVEPOINT of a block entered afterwards, or a deferred RELEASE
 * sent with it) makes the transaction unusable ("A transaction control statement failed ...").
 * Only there does the model need to know when pg-atomic sends SAVEPOINT and RELEASE (lazily, just
 * before the first statement that needs them; issue 2 §5).
 */
import fc from 'fast-check'

// ---- Programs ---------------------------------------------------------------------------------

/** How a `throw` statement throws: an Error subclass, a plain object, or a string. */
export type ThrownKind = 'error' | 'object' | 'string'

/** A failing statement: `select 1/0` (22012) or a two-row insert violating the primary key (23505). */
export type FailingSql = 'division' | 'unique'

/**
 * How a statement reaches the block: ambiently (`db.query`, `setRollback()`, `onCommit()`), through
 * the running block's handle (`tx.query`), or through the outermost block's handle (which routes
 * to the innermost block running in the caller's context). All three must behave the same.
 */
export type Via = 'ambient' | 'handle' | 'outer-handle'

/** One statement of a block body. */
export type Op =
  /** `insert into t (x) values ($1)`; `x` is unique within the program. */
  | { readonly op: 'insert'; readonly value: number; readonly via: Via }
  /** The same insert with a value another `insert` uses: a unique violation iff that row is visible. */
  | { readonly op: 'dup'; readonly value: number; readonly via: Via }
  | { readonly op: 'fail'; readonly sql: FailingSql; readonly via: Via }
  | { readonly op: 'throw'; readonly id: number; readonly as: ThrownKind }
  | { readonly op: 'setRollback'; readonly flag: boolean; readonly via: Via }
  /** `onCommit(hook, { robust })`; with `throws` the hook throws `new HookError(label)`. */
  | {
      readonly op: 'onCommit'
      readonly label: string
      readonly via: Via
      readonly robust: boolean
      readonly throws: boolean
    }
  /** `onRollback(hook)`; with `throws` the hook throws `new HookError(label)`. */
  | { readonly op: 'onRollback'; readonly label: string; readonly via: Via; readonly throws: boolean }
  /** `await atomic({ savepoint, durable }, body)` */
  | { readonly op: 'block'; readonly block: BlockSpec }
  /**
   * `await Promise.all([atomic(...), db.query(...), atomic(...)])`: sibling blocks, possibly mixed
   * with statements of the enclosing block (the catch waits for all members to settle).
   */
  | { readonly op: 'siblings'; readonly members: readonly Member[] }
  /** `try { body } catch (e) { record e }`: the enclosing block's code catches at this level. */
  | { readonly op: 'try'; readonly id: number; readonly body: readonly Op[] }

/** A statement (insert, dup or failing). */
export type QueryOp = Extract<Op, { op: 'insert' | 'dup' | 'fail' }>

/** A member of a `Promise.all` group: a nested block or a statement. */
export type Member = { readonly block: BlockSpec } | { readonly query: QueryOp }

/** One `atomic()` block. Block 0 is the outermost one. */
export interface BlockSpec {
  readonly id: number
  readonly savepoint: boolean
  readonly durable: boolean
  readonly body: readonly Op[]
}

/** A whole program: one outermost block. */
export interface Program {
  readonly outermost: BlockSpec
}

/** The statement every insert sends. */
export const INSERT_SQL = 'insert into t (x) values ($1)'
/** The failing statements. */
export const FAILING_SQL: Readonly<Record<FailingSql, string>> = {
  division: 'select 1/0',
  unique: 'insert into t (x) values (0), (0)',
}
/** What the outermost block returns; a nested block returns `block <id>`. */
export const OUTERMOST_RESULT = 'result'

// ---- Observations -----------------------------------------------------------------------------

/** Why pg-atomic raised a TransactionManagementError. */
export type TmeReason =
  'doomed' | 'swallowed' | 'aborted' | 'durable-nested' | 'control-failed' | 'commit-answered-rollback'

/** An error, reduced to what the comparison needs. */
export type ErrorShape =
  /** The very value a `throw` statement threw (identity checked). */
  | { readonly thrown: number }
  /** A PostgreSQL error with this SQLSTATE. */
  | { readonly db: string }
  /** OnCommitHookError (the transaction was committed) whose cause is the error of hook `label`. */
  | { readonly hookFailed: string }
  | { readonly tme: TmeReason; readonly cause?: ErrorShape }
  /** Anything else (never expected). */
  | { readonly other: string }

export type Outcome = { readonly ok: string } | { readonly error: ErrorShape }

/** Everything a program observes; the model predicts all of it. */
export interface Observation {
  /** How the outermost `atomic()` settled. */
  readonly outcome: Outcome
  /** The committed rows of `t`, ascending. */
  readonly rows: readonly number[]
  /**
   * Hook calls in the order they happened (`commit:c1`, `rollback:r2`), with `logged:<label>` when
   * the database's logger reported a hook's error (robust onCommit hooks, onRollback hooks).
   */
  readonly hooks: readonly string[]
  /** How each nested `atomic()` settled, by block id. */
  readonly blocks: Readonly<Record<number, Outcome>>
  /** What each `try` caught, by try id (absent: nothing was caught or it did not run). */
  readonly caught: Readonly<Record<number, ErrorShape>>
}

// ---- Generator --------------------------------------------------------------------------------

type RawOp =
  | { readonly op: 'insert'; readonly via: Via }
  | { readonly op: 'dup'; readonly pick: number; readonly via: Via }
  | { readonly op: 'fail'; readonly sql: FailingSql; readonly via: Via }
  | { readonly op: 'throw'; readonly as: ThrownKind }
  | { readonly op: 'setRollback'; readonly flag: boolean; readonly via: Via }
  | { readonly op: 'onCommit'; readonly via: Via; readonly robust: boolean; readonly throws: boolean }
  | { readonly op: 'onRollback'; readonly via: Via; readonly throws: boolean }
  | { readonly op: 'block'; readonly block: RawBlock }
  | {
      readonly op: 'siblings'
      readonly members: ReadonlyArray<{ readonly block: RawBlock } | { readonly query: RawOp }>
    }
  | { readonly op: 'try'; readonly body: readonly RawOp[] }

interface RawBlock {
  readonly savepoint: boolean
  readonly durable: boolean
  readonly body: readonly RawOp[]
}

const via: fc.Arbitrary<Via> = fc.oneof(
  { weight: 4, arbitrary: fc.constant('ambient' as const) },
  { weight: 1, arbitrary: fc.constant('handle' as const) },
  { weight: 1, arbitrary: fc.constant('outer-handle' as const) },
)

const queryOp: fc.Arbitrary<RawOp> = fc.oneof(
  { weight: 6, arbitrary: via.map((v) => ({ op: 'insert' as const, via: v })) },
  { weight: 2, arbitrary: fc.record({ pick: fc.nat(15), via }).map((r) => ({ op: 'dup' as const, ...r })) },
  {
    weight: 3,
    arbitrary: fc
      .record({ sql: fc.constantFrom<FailingSql>('division', 'unique'), via })
      .map((r) => ({ op: 'fail' as const, ...r })),
  },
)

const leafOp: fc.Arbitrary<RawOp> = fc.oneof(
  { weight: 11, arbitrary: queryOp },
  {
    weight: 2,
    arbitrary: fc.constantFrom<ThrownKind>('error', 'object', 'string').map((as) => ({ op: 'throw' as const, as })),
  },
  { weight: 3, arbitrary: fc.record({ flag: fc.boolean(), via }).map((r) => ({ op: 'setRollback' as const, ...r })) },
  {
    weight: 2,
    arbitrary: fc
      .record({
        via,
        robust: fc.boolean(),
        throws: fc.oneof({ weight: 6, arbitrary: fc.constant(false) }, { weight: 1, arbitrary: fc.constant(true) }),
      })
      .map((r) => ({ op: 'onCommit' as const, ...r })),
  },
  {
    weight: 2,
    arbitrary: fc
      .record({
        via,
        throws: fc.oneof({ weight: 6, arbitrary: fc.constant(false) }, { weight: 1, arbitrary: fc.constant(true) }),
      })
      .map((r) => ({ op: 'onRollback' as const, ...r })),
  },
)

const raw = fc.letrec<{ op: RawOp; body: readonly RawOp[]; block: RawBlock }>((tie) => ({
  op: fc.oneof(
    { maxDepth: 3, depthIdentifier: 'program' },
    { weight: 8, arbitrary: leafOp },
    { weight: 3, arbitrary: tie('block').map((block) => ({ op: 'block' as const, block })) },
    {
      weight: 1,
      arbitrary: fc
        .array(
          fc.oneof(
            { weight: 3, arbitrary: tie('block').map((block) => ({ block })) },
            { weight: 1, arbitrary: queryOp.map((query) => ({ query })) },
          ),
          {
            minLength: 2,
            maxLength: 3,
          },
        )
        .map((members) => ({ op: 'siblings' as const, members })),
    },
    { weight: 4, arbitrary: tie('body').map((body) => ({ op: 'try' as const, body })) },
  ),
  body: fc.array(tie('op'), { maxLength: 4, depthIdentifier: 'program' }),
  block: fc.record({
    savepoint: fc.oneof({ weight: 3, arbitrary: fc.constant(true) }, { weight: 1, arbitrary: fc.constant(false) }),
    durable: fc.oneof({ weight: 20, arbitrary: fc.constant(false) }, { weight: 1, arbitrary: fc.constant(true) }),
    body: tie('body'),
  }),
}))

/** Numbers blocks, tries, thrown values, insert values and hook labels in program order. */
function number(outermost: RawBlock): Program {
  const counters = { block: 0, try: 0, thrown: 0, insert: 0, commit: 0, rollback: 0 }
  // First pass: count the inserts, so that `dup` can pick one of their values.
  const countInserts = (ops: readonly RawOp[]): number =>
    ops.reduce((n, o) => {
      if (o.op === 'insert') return n + 1
      if (o.op === 'block') return n + countInserts(o.block.body)
      if (o.op === 'siblings')
        return (
          n + o.members.reduce((m, x) => m + ('block' in x ? countInserts(x.block.body) : countInserts([x.query])), 0)
        )
      if (o.op === 'try') return n + countInserts(o.body)
      return n
    }, 0)
  const inserts = countInserts(outermost.body)
  const block = (b: RawBlock): BlockSpec => {
    const id = counters.block++
    return { id, savepoint: b.savepoint, durable: b.durable, body: ops(b.body) }
  }
  const ops = (list: readonly RawOp[]): Op[] =>
    list.map((o): Op => {
      switch (o.op) {
        case 'insert':
          return { op: 'insert', value: ++counters.insert, via: o.via }
        case 'dup':
          return { op: 'dup', value: inserts === 0 ? 1 : (o.pick % inserts) + 1, via: o.via }
        case 'fail':
          return o
        case 'throw':
          return { op: 'throw', id: ++counters.thrown, as: o.as }
        case 'setRollback':
          return o
        case 'onCommit':
          return { op: 'onCommit', label: `c${++counters.commit}`, via: o.via, robust: o.robust, throws: o.throws }
        case 'onRollback':
          return { op: 'onRollback', label: `r${++counters.rollback}`, via: o.via, throws: o.throws }
        case 'block':
          return { op: 'block', block: block(o.block) }
        case 'siblings':
          return {
            op: 'siblings',
            members: o.members.map((m): Member =>
              'block' in m ? { block: block(m.block) } : { query: ops([m.query])[0] as QueryOp },
            ),
          }
        case 'try':
          return { op: 'try', id: ++counters.try, body: ops(o.body) }
      }
    })
  return { outermost: block(outermost) }
}

/** Random programs: at most 3 levels of nesting, at most 4 statements per body. */
export const programArbitrary: fc.Arbitrary<Program> = fc
  .record({
    durable: fc.oneof({ weight: 4, arbitrary: fc.constant(false) }, { weight: 1, arbitrary: fc.constant(true) }),
    body: fc.array(raw.op, { minLength: 1, maxLength: 5, depthIdentifier: 'program' }),
  })
  .map(({ durable, body }) => number({ savepoint: true, durable, body }))

// ---- Printer ----------------------------------------------------------------------------------

/** The program as the TypeScript model.test.ts runs, for failure reports. */
export function renderProgram(program: Program): string {
  const lines: string[] = []
  const options = (b: BlockSpec, outermost: boolean): string => {
    const parts: string[] = []
    if (!outermost && !b.savepoint) parts.push('savepoint: false')
    if (b.durable) parts.push('durable: true')
    return parts.length === 0 ? '' : `{ ${parts.join(', ')} }, `
  }
  const block = (
    b: BlockSpec,
    indent: string,
    prefix: string,
    suffix: string,
    outermost = false,
    member = false,
  ): void => {
    lines.push(
      `${indent}${prefix}atomic(${options(b, outermost)}async (${outermost ? 'outer' : 'tx'}) => { // block ${b.id}`,
    )
    if (member) lines.push(`${indent}  await Promise.resolve() // members of Promise.all start after all were called`)
    body(b.body, `${indent}  `, outermost)
    if (b.body[b.body.length - 1]?.op !== 'throw')
      lines.push(`${indent}  return '${outermost ? OUTERMOST_RESULT : `block ${b.id}`}'`)
    lines.push(`${indent}})${suffix}`)
  }
  const target = (v: Via, ambient: string, inOutermost: boolean): string =>
    v === 'ambient' ? ambient : v === 'handle' && !inOutermost ? 'tx.' : 'outer.'
  const body = (ops: readonly Op[], indent: string, inOutermost = false): void => {
    for (const o of ops) {
      switch (o.op) {
        case 'insert':
        case 'dup':
          lines.push(
            `${indent}await ${target(o.via, 'db.', inOutermost)}query('${INSERT_SQL}', ` +
              `[${o.value}])${o.op === 'dup' ? ' // dup' : ''}`,
          )
          break
        case 'fail':
          lines.push(`${indent}await ${target(o.via, 'db.', inOutermost)}query('${FAILING_SQL[o.sql]}')`)
          break
        case 'throw':
          {
            const value =
              o.as === 'error'
                ? `new ProgramError(${o.id})`
                : o.as === 'object'
                  ? `{ thrownId: ${o.id} }`
                  : `'thrown ${o.id}'`
            lines.push(`${indent}throw ${value}`)
          }
          break
        case 'setRollback':
          lines.push(`${indent}${target(o.via, '', inOutermost)}setRollback(${o.flag})`)
          break
        case 'onCommit':
        case 'onRollback':
          {
            const kind = o.op === 'onCommit' ? 'commit' : 'rollback'
            const rethrow = o.throws ? `; throw new HookError('${o.label}')` : ''
            const run = `log('${kind}:${o.label}')${rethrow}`
            const options = o.op === 'onCommit' && o.robust ? ', { robust: true }' : ''
            lines.push(`${indent}${target(o.via, '', inOutermost)}${o.op}(() => { ${run} }${options})`)
            break
          }
          break
        case 'block':
          block(o.block, indent, 'await ', '')
          break
        case 'siblings':
          lines.push(`${indent}await Promise.all([`)
          for (const m of o.members) {
            if ('block' in m) block(m.block, `${indent}  `, '', ',', false, true)
            else {
              const text =
                m.query.op === 'fail' ? `'${FAILING_SQL[m.query.sql]}'` : `'${INSERT_SQL}', [${m.query.value}]`
              lines.push(`${indent}  ${target(m.query.via, 'db.', inOutermost)}query(${text}),`)
            }
          }
          lines.push(`${indent}])`)
          break
        case 'try':
          lines.push(`${indent}try { // try ${o.id}`)
          body(o.body, `${indent}  `, inOutermost)
          lines.push(`${indent}} catch {}`)
          break
      }
    }
  }
  block(program.outermost, '', 'await db.', '', true)
  return lines.join('\n')
}

// ---- Reference model --------------------------------------------------------------------------

/** An error travelling through the model's interpreter. */
class ModelError {
  constructor(readonly shape: ErrorShape) {}
}

const tme = (reason: TmeReason, cause?: ErrorShape): ModelError =>
  new ModelError(cause === undefined ? { tme: reason } : { tme: reason, cause })
const dbError = (code: string): ModelError => new ModelError({ db: code })

interface ModelBlock {
  readonly parent: ModelBlock | undefined
  readonly depth: number
  readonly savepoint: boolean
  /** Innermost block, this one included, that can roll back on its own (savepoint or outermost). */
  readonly owner: ModelBlock
  /** Its BEGIN / SAVEPOINT has been sent (or, without a savepoint, would have been). */
  materialized: boolean
}

function within(owner: ModelBlock, block: ModelBlock): boolean {
  for (let b: ModelBlock | undefined = owner; b !== undefined; b = b.parent) if (b === block) return true
  return false
}

/**
 * Runs `program` against the reference model.
 *
 * @returns what running it through pg-atomic on an empty table `t (x int primary key)` must observe.
 */
export function runModel(program: Program): Observation {
  // Transaction state (Django's needs_rollback, plus pg-atomic's cause and unusable flags).
  let needsRollback = false
  let byError = false
  let cause: ErrorShape | undefined
  let controlFailed: ErrorShape | undefined
  // Server state: BEGIN sent; the server transaction aborted by a failed statement.
  let begun = false
  let aborted = false
  /** The statement error that aborted the server transaction (kept while it stays aborted). */
  let abortCause: ErrorShape | undefined
  /** Depths of released savepoints whose RELEASE is still deferred. */
  let pendingReleases: number[] = []
  const stack: ModelBlock[] = []
  let rows: Array<{ value: number; owner: ModelBlock }> = []
  let hooks: Array<{
    kind: 'commit' | 'rollback'
    label: string
    owner: ModelBlock
    robust: boolean
    throws: boolean
  }> = []
  const hookLog: string[] = []
  const blocks: Record<number, Outcome> = {}
  const caught: Record<number, ErrorShape> = {}

  const top = (): ModelBlock => stack[stack.length - 1] as ModelBlock

  /** A statement failed on the server: the server transaction is aborted. */
  const abort = (error: ModelError): void => {
    if (!aborted) abortCause = error.shape
    aborted = true
  }

  const statementFailed = (error: ModelError): never => {
    needsRollback = true
    if (!byError) {
      byError = true
      cause = error.shape
    }
    throw error
  }

  const query = (run: () => void): void => {
    // Refused before anything is sent.
    if (controlFailed !== undefined) throw tme('control-failed', controlFailed)
    if (needsRollback) throw tme('doomed', cause)
    // BEGIN / SAVEPOINTs of blocks entered since the last statement, with deferred RELEASEs.
    if (stack.some((b) => !b.materialized)) {
      const sends = !begun || pendingReleases.length > 0 || stack.some((b) => !b.materialized && b.savepoint)
      begun = true
      pendingReleases = []
      for (const b of stack) b.materialized = true
      if (sends && aborted) {
        // PostgreSQL refuses the control statement: the transaction can only be rolled back.
        controlFailed = { db: '25P02' }
        throw dbError('25P02')
      }
    }
    if (aborted) statementFailed(dbError('25P02'))
    run()
  }

  const insert = (value: number): void =>
    query(() => {
      if (rows.some((r) => r.value === value)) {
        abort(dbError('23505'))
        statementFailed(dbError('23505'))
      }
      rows.push({ value, owner: top().owner })
    })

  const runOps = (ops: readonly Op[]): void => {
    for (const o of ops) runOp(o)
  }

  const runOp = (o: Op): void => {
    switch (o.op) {
      case 'insert':
      case 'dup':
        return insert(o.value)
      case 'fail':
        return query(() => {
          const error = dbError(o.sql === 'division' ? '22012' : '23505')
          abort(error)
          statementFailed(error)
        })
      case 'throw':
        throw new ModelError({ thrown: o.id })
      case 'setRollback':
        needsRollback = o.flag
        byError = false
        cause = undefined
        return
      case 'onCommit':
        hooks.push({ kind: 'commit', label: o.label, owner: top().owner, robust: o.robust, throws: o.throws })
        return
      case 'onRollback':
        hooks.push({ kind: 'rollback', label: o.label, owner: top().owner, robust: true, throws: o.throws })
        return
      case 'block':
        return void settle(o.block, () => nested(o.block), true)
      case 'siblings': {
        // Promise.all rejects with the first rejection in time. Refused when called, before any
        // member runs: a durable block, and a statement issued while the transaction is unusable
        // (decided then, even if a member queued ahead of it clears the doom with setRollback(false)
        // before its turn: refusal is decided when a statement is issued).
        // Block members start with an await (see model.test.ts), so "when called" is the group's start.
        const refusedQuery =
          controlFailed !== undefined
            ? tme('control-failed', controlFailed)
            : needsRollback
              ? tme('doomed', cause)
              : undefined
        const errors: ModelError[] = []
        const queued: Member[] = []
        for (const m of o.members) {
          if ('block' in m && m.block.durable) errors.push(settle(m.block, () => nested(m.block), false) as ModelError)
          else if ('query' in m && refusedQuery !== undefined) errors.push(refusedQuery)
          else queued.push(m)
        }
        // The others run one after the other, in the order they were called.
        for (const m of queued) {
          if ('block' in m) {
            const error = settle(m.block, () => nested(m.block), false)
            if (error !== undefined) errors.push(error)
            continue
          }
          try {
            runOp(m.query)
          } catch (error) {
            if (!(error instanceof ModelError)) throw error
            errors.push(error)
          }
        }
        if (errors.length > 0) throw errors[0]
        return
      }
      case 'try':
        try {
          runOps(o.body)
        } catch (error) {
          if (!(error instanceof ModelError)) throw error
          caught[o.id] = error.shape
        }
        return
    }
  }

  /** Records how a nested block settled; rethrows (`rethrow`) or returns its error. */
  const settle = (spec: BlockSpec, run: () => string, rethrow: boolean): ModelError | undefined => {
    try {
      blocks[spec.id] = { ok: run() }
      return undefined
    } catch (error) {
      if (!(error instanceof ModelError)) throw error
      blocks[spec.id] = { error: error.shape }
      if (rethrow) throw error
      return error
    }
  }

  /** onRollback hooks: an error is reported to the logger and the others still run. */
  const runRollbackHook = (hook: { label: string; throws: boolean }): void => {
    hookLog.push(`rollback:${hook.label}`)
    if (hook.throws) hookLog.push(`logged:${hook.label}`)
  }

  const rollbackSavepoint = (block: ModelBlock, materialized: boolean): void => {
    if (materialized) {
      // ROLLBACK TO + RELEASE: the server transaction is usable again (the savepoint predates any
      // failure, or its SAVEPOINT would have failed); deferred RELEASEs inside it are dropped.
      aborted = false
      abortCause = undefined
      pendingReleases = pendingReleases.filter((d) => d < block.depth)
    }
    rows = rows.filter((r) => !within(r.owner, block))
    const keep: typeof hooks = []
    for (const hook of hooks) {
      if (!within(hook.owner, block)) keep.push(hook)
      else if (hook.kind === 'rollback') runRollbackHook(hook)
    }
    hooks = keep
  }

  const nested = (spec: BlockSpec): string => {
    if (spec.durable) throw tme('durable-nested')
    if (controlFailed !== undefined) throw tme('control-failed', controlFailed)
    const parent = top()
    // Django: no savepoint in a doomed transaction, so the doom cannot be undone by this block.
    const savepoint = spec.savepoint && !needsRollback
    const block: ModelBlock = {
      parent,
      depth: parent.depth + 1,
      savepoint,
      owner: undefined as unknown as ModelBlock,
      materialized: false,
    }
    ;(block as { owner: ModelBlock }).owner = savepoint ? block : parent.owner
    stack.push(block)
    let thrown: ModelError | undefined
    try {
      runOps(spec.body)
    } catch (error) {
      if (!(error instanceof ModelError)) throw error
      thrown = error
    }
    stack.pop()
    const result = `block ${spec.id}`
    if (controlFailed !== undefined) {
      // Nothing can be sent any more; the outermost block rolls back (and runs the hooks).
      if (thrown !== undefined) throw thrown
      throw tme('control-failed', controlFailed)
    }
    if (!savepoint) {
      // Joined the enclosing block: an error dooms it up to the nearest savepoint.
      if (thrown !== undefined) {
        needsRollback = true
        if (!byError) {
          byError = true
          cause = thrown.shape
        }
        throw thrown
      }
      if (needsRollback && byError) throw tme('swallowed', cause)
      return result
    }
    // Issue 7 §1.5: the flag was cleared with setRollback(false) while the server transaction was
    // aborted by a failure inside this block (its SAVEPOINT was sent before the failure): its work is
    // lost, so it rolls back and rejects instead of reporting success.
    const lostWork = !needsRollback && aborted && block.materialized
    const why2 = abortCause
    if (thrown === undefined && !needsRollback && !lostWork) {
      if (block.materialized) pendingReleases.push(block.depth)
      return result
    }
    const wasByError = byError
    const why = cause
    needsRollback = false
    byError = false
    cause = undefined
    rollbackSavepoint(block, block.materialized)
    if (thrown !== undefined) throw thrown
    if (lostWork) throw tme('aborted', why2)
    if (wasByError) throw tme('swallowed', why)
    return result
  }

  const outermost = (spec: BlockSpec): Outcome => {
    const block: ModelBlock = {
      parent: undefined,
      depth: 1,
      savepoint: false,
      owner: undefined as unknown as ModelBlock,
      materialized: false,
    }
    ;(block as { owner: ModelBlock }).owner = block
    stack.push(block)
    let thrown: ModelError | undefined
    try {
      runOps(spec.body)
    } catch (error) {
      if (!(error instanceof ModelError)) throw error
      thrown = error
    }
    stack.pop()
    const runRollbackHooks = (): void => {
      for (const hook of hooks) if (hook.kind === 'rollback') runRollbackHook(hook)
      hooks = []
    }
    if (thrown === undefined && !needsRollback && controlFailed === undefined) {
      if (begun && aborted) {
        // COMMIT of an aborted transaction is answered with ROLLBACK: nothing was committed.
        rows = []
        runRollbackHooks()
        return {
          error:
            abortCause === undefined
              ? { tme: 'commit-answered-rollback' }
              : { tme: 'commit-answered-rollback', cause: abortCause },
        }
      }
      // FIFO after COMMIT. A robust hook's error is logged; a plain hook's error ends the run of
      // hooks and comes out of the block as OnCommitHookError (the data is committed).
      const committedHooks = hooks
      hooks = []
      for (const hook of committedHooks) {
        if (hook.kind !== 'commit') continue
        hookLog.push(`commit:${hook.label}`)
        if (!hook.throws) continue
        if (!hook.robust) return { error: { hookFailed: hook.label } }
        hookLog.push(`logged:${hook.label}`)
      }
      return { ok: OUTERMOST_RESULT }
    }
    rows = []
    runRollbackHooks()
    if (thrown !== undefined) return { error: thrown.shape }
    if (controlFailed !== undefined) return { error: { tme: 'control-failed', cause: controlFailed } }
    if (byError) return { error: { tme: 'swallowed', ...(cause === undefined ? {} : { cause }) } }
    return { ok: OUTERMOST_RESULT }
  }

  const outcome = outermost(program.outermost)
  return {
    outcome,
    rows: rows.map((r) => r.value).sort((a, b) => a - b),
    hooks: hookLog,
    blocks,
    caught,
  }
}
