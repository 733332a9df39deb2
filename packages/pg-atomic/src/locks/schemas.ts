/**
 * The zod pieces the lock helpers share (identifiers, timeouts, `using`), each with the sentence
 * that says what a value must be. Validation itself goes through `../validation` (one approach,
 * one message style).
 *
 * @module
 * @internal
 */
import { z } from 'zod'
import { identifierProblem } from '../sql/identifier'
import { MAX_IDENTIFIER_BYTES, MAX_TIMEOUT_MS } from '../vocabulary'

/** `table` or `schema.table`: at most one dot, every part a valid identifier. */
function isTableName(name: string): boolean {
  const parts = name.split('.')
  return parts.length <= 2 && parts.every((part) => identifierProblem(part) === undefined)
}

/** One name of `FOR UPDATE OF`: a valid identifier without a dot (PostgreSQL refuses qualified names there). */
function isUnqualifiedName(name: string): boolean {
  return !name.includes('.') && identifierProblem(name) === undefined
}

const tableName = z.string().refine(isTableName)
const unqualifiedName = z.string().refine(isUnqualifiedName)

/** One table name or a non-empty list of them. @internal */
export const tablesSchema = z.union([tableName, z.array(tableName).min(1).readonly()])

/** What `tables` must be. @internal */
export const TABLES_EXPECTATION =
  `a table name such as 'accounts' or 'public.accounts', or a non-empty list of them; names are ` +
  `taken literally (exact case, quoted by pg-atomic), with at most one dot, and each part is ` +
  `non-empty, without NUL character and at most ${MAX_IDENTIFIER_BYTES} bytes of UTF-8 (PostgreSQL ` +
  `would cut a longer name and lock another table)`

/** One name or a non-empty list of them, for `FOR UPDATE OF`. @internal */
export const unqualifiedNamesSchema = z.union([unqualifiedName, z.array(unqualifiedName).min(1).readonly()])

/** What `of` must be. @internal */
export const OF_EXPECTATION =
  `a table name or alias exactly as written in the FROM clause, or a non-empty list of them; ` +
  `each taken literally (quoted by pg-atomic), without schema (no dot), non-empty, without NUL ` +
  `character and at most ${MAX_IDENTIFIER_BYTES} bytes of UTF-8`

/** A `lock_timeout` for one statement, in ms. @internal */
export const timeoutMsSchema = z.int().min(0).max(MAX_TIMEOUT_MS)

/** What `timeoutMs` must be. @internal */
export const TIMEOUT_MS_EXPECTATION =
  `a whole number of milliseconds from 0 to ${MAX_TIMEOUT_MS} ` + '(0 waits without limit)'

/** An alias. @internal */
export const usingSchema = z.string().min(1)

/** What `using` must be. @internal */
export const USING_EXPECTATION = 'a non-empty string naming a registered database'
