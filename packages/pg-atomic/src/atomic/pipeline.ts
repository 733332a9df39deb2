/**
 * One round trip for the control statements a user statement needs and the statement itself,
 * with one Sync point, so that the statement can never run outside the transaction or savepoint
 * it was issued in.
 *
 * The mechanism (see docs/design/pipelining.md): a node-postgres submittable — a subclass of pg's
 * own `Query`, so rows, fields, type parsers, `rowMode` and errors behave exactly as for
 * `client.query()` — writes, before the statement's Parse/Bind/Describe/Execute/Sync, a
 * Parse/Bind/Execute for each control statement (BEGIN, SET LOCAL, SAVEPOINT, RELEASE, ROLLBACK
 * TO), and no Sync between them. After an error PostgreSQL skips every message up to the Sync: if
 * a control statement fails, the user statement is not executed at all. pg's own `pipeline` mode
 * gives every query its own Sync, which does not give that guarantee.
 *
 * Only plain statements are pipelined ({@link canPipeline}); the others keep a round trip of their
 * own for the control statements (the behaviour before pipelining). Values are serialised before
 * anything is sent ({@link withSerializedValues}), so a value pg cannot serialise fails with
 * nothing on the wire.
 *
 * @module
 * @internal
 */
import pg from 'pg'
import type { QueryConfig, QueryResult, QueryResultRow } from 'pg'
import { readKeyword, skipInsignificant } from '../sql/lexer'
import { hasSeveralStatements } from '../sql/scan'

/** The part of pg's internal connection the submittable writes to. */
interface ProtocolConnection {
  readonly stream: { cork?(): void; uncork?(): void }
  parse(query: { text: string }): void
  bind(config?: Record<string, never>): void
  execute(config?: Record<string, never>): void
}

/** The members of pg's `Query` that are not in its published types. */
interface QueryInternals {
  submit(connection: ProtocolConnection): Error | null
  handleCommandComplete(msg: unknown, connection: ProtocolConnection): void
  handleDataRow(msg: unknown): void
}

/**
 * `COPY`: in copy-in mode the server ignores the Sync already written, so a pipelined `COPY ... FROM
 * STDIN` would wait for a Sync that never comes. COPY keeps the simple protocol.
 */
function isCopy(sql: string): boolean {
  return readKeyword(sql, skipInsignificant(sql, 0), 4) === 'copy'
}

/** node-postgres' value serialisation (what `Bind` would do), run before anything is written. */
// eslint-disable-next-line @typescript-eslint/no-require-imports
const { prepareValue } = require('pg/lib/utils') as { prepareValue(value: unknown): unknown }

const BaseQuery = pg.Query as unknown as new (
  config: QueryConfig & { queryMode: 'extended' },
  values: undefined,
  callback: (error: Error | undefined, result: unknown) => void,
) => QueryInternals

/**
 * Whether `config` can share a round trip with control statements: one statement (the extended
 * protocol refuses several in one Parse), not a named prepared statement, no row paging or portal
 * of its own, and not forced to the simple protocol.
 */
export function canPipeline(config: QueryConfig): boolean {
  const c = config as QueryConfig & { rows?: unknown; portal?: unknown; queryMode?: unknown; callback?: unknown }
  return (
    c.name === undefined &&
    c.rows === undefined &&
    c.portal === undefined &&
    c.queryMode !== 'simple' &&
    c.callback === undefined &&
    !hasSeveralStatements(c.text) &&
    !isCopy(c.text)
  )
}

/**
 * pg's `Query` with control statements written ahead of it, before the same Sync. The control
 * statements' CommandComplete messages are counted, not added to the result.
 */
class PipelinedQuery extends BaseQuery {
  /** Control statements whose CommandComplete has arrived. */
  completed = 0

  constructor(
    config: QueryConfig,
    protected readonly controls: readonly { readonly sql: string }[],
    callback: (error: Error | undefined, result: unknown) => void,
  ) {
    super({ ...config, queryMode: 'extended' }, undefined, callback)
  }

  override submit(connection: ProtocolConnection): Error | null {
    const stream = connection.stream
    stream.cork?.()
    try {
      for (const control of this.controls) {
        connection.parse({ text: control.sql })
        connection.bind()
        connection.execute()
      }
      return super.submit(connection)
    } finally {
      stream.uncork?.()
    }
  }

  override handleCommandComplete(msg: unknown, connection: ProtocolConnection): void {
    if (this.completed < this.controls.length) {
      this.completed++
      return
    }
    super.handleCommandComplete(msg, connection)
  }
}

/**
 * A {@link PipelinedQuery} whose control statements return rows (`select set_config(...)`): those
 * rows are not the statement's. A subclass of its own, so that the block's pipelined statements
 * (whose control statements return none) keep pg's row handling untouched.
 */
class RowSkippingPipelinedQuery extends PipelinedQuery {
  override handleDataRow(msg: unknown): void {
    if (this.completed < this.controls.length) return
    super.handleDataRow(msg)
  }
}

/**
 * `config` with its values serialised as pg's Bind would serialise them (strings, buffers, null).
 * Called before anything is checked out or sent: a value pg cannot serialise (a circular object,
 * a throwing `toPostgres`) fails here, so no control statement goes out without its statement.
 */
export function withSerializedValues(config: QueryConfig): QueryConfig {
  const values = config.values as unknown[] | undefined
  if (values === undefined || values.length === 0) return config
  return { ...config, values: values.map((value) => prepareValue(value)) }
}

/** What a pipelined round trip did: the result, or the error and how far the control statements got. */
export type PipelineOutcome<R extends QueryResultRow> =
  | { readonly ok: true; readonly result: QueryResult<R> }
  | { readonly ok: false; readonly error: unknown; readonly controlsCompleted: number }

/** A client that accepts submittables. */
interface SubmittingClient {
  query(submittable: object): unknown
}

/**
 * Sends `controls` and then `config` on `client` in one round trip. Never rejects: the outcome says
 * whether a control statement failed (`controlsCompleted < controls.length`: the statement did not
 * run) or the statement itself. `controlsReturnRows`: the control statements' rows are dropped.
 */
export function runPipelined<R extends QueryResultRow>(
  client: SubmittingClient,
  controls: readonly { readonly sql: string }[],
  config: QueryConfig,
  controlsReturnRows = false,
): Promise<PipelineOutcome<R>> {
  return new Promise((resolve) => {
    const Submittable = controlsReturnRows ? RowSkippingPipelinedQuery : PipelinedQuery
    const query: PipelinedQuery = new Submittable(config, controls, (error, result) => {
      if (error !== undefined && error !== null) resolve({ ok: false, error, controlsCompleted: query.completed })
      else resolve({ ok: true, result: result as QueryResult<R> })
    })
    client.query(query)
  })
}

const SimpleQuery = pg.Query as unknown as new (
  config: QueryConfig,
  values: undefined,
  callback: (error: Error | undefined, result: unknown) => void,
) => QueryInternals

/** pg's `Query` (simple protocol) that also records the command tag of each statement that completed. */
class TaggingQuery extends SimpleQuery {
  constructor(
    text: string,
    private readonly tags: string[],
    callback: (error: Error | undefined, result: unknown) => void,
  ) {
    super({ text }, undefined, callback)
  }

  override handleCommandComplete(msg: unknown, connection: ProtocolConnection): void {
    const text = (msg as { text?: unknown }).text
    this.tags.push(typeof text === 'string' ? text : '')
    super.handleCommandComplete(msg, connection)
  }
}

/**
 * Sends `sql` (one or more statements, simple protocol) on `client`, as `client.query(sql)` does,
 * and pushes onto `tags` the command tag (`COMMIT`, `ROLLBACK`, `SELECT 1`) of each statement whose
 * CommandComplete arrived, in order: after a rejection, `tags.length` says how many statements
 * had completed before the error (COMMIT's own tag says whether it committed).
 */
export function queryRecordingTags(
  client: SubmittingClient,
  sql: string,
  tags: string[],
): Promise<QueryResult | QueryResult[]> {
  return new Promise((resolve, reject) => {
    const query = new TaggingQuery(sql, tags, (error, result) => {
      if (error !== undefined && error !== null) reject(error)
      else resolve(result as QueryResult | QueryResult[])
    })
    client.query(query)
  })
}
