/**
 * The one way options are validated: a zod schema per options object, and one message style for
 * every failure, naming the field and what it must be (`Invalid option "x" for f(): it must be
 * ...`). Raised as `InvalidOptionError` before anything is sent to the server.
 *
 * @module
 * @internal
 */
import type { z } from 'zod'
import { InvalidOptionError } from './errors'

function describeIssue(
  subject: string,
  issue: z.core.$ZodIssue,
  accepted: readonly string[],
  allowed: Readonly<Record<string, string>>,
  refusedFields: Readonly<Record<string, string>>,
): InvalidOptionError {
  if (issue.code === 'unrecognized_keys' && issue.path.length > 0) {
    const parent = issue.path.map(String).join('.')
    const field = `${parent}.${issue.keys[0] ?? ''}`
    return new InvalidOptionError(
      field,
      `Unknown option "${field}" for ${subject}: "${parent}" must be ${allowed[parent] ?? 'valid'}.`,
    )
  }
  if (issue.code === 'unrecognized_keys') {
    const key = issue.keys[0] ?? ''
    const refused = refusedFields[key]
    if (refused !== undefined)
      return new InvalidOptionError(key, `Option "${key}" is not accepted by ${subject}. ${refused}`)
    return new InvalidOptionError(
      key,
      `Unknown option "${key}" for ${subject}. The accepted options are: ${accepted.join(', ')}.`,
    )
  }
  // The most specific documented field: 'retry.retryOn.0' is reported as 'retry.retryOn'.
  let field = issue.path.map(String).join('.') || 'options'
  while (allowed[field] === undefined && field.includes('.')) field = field.slice(0, field.lastIndexOf('.'))
  const expectation = allowed[field] ?? (issue.code === 'invalid_type' ? `of type ${issue.expected}` : 'valid')
  return new InvalidOptionError(field, `Invalid option "${field}" for ${subject}: it must be ${expectation}.`)
}

/**
 * Parses `input` with `schema` for `subject` (e.g. `'atomic()'`). `allowed` maps each field (dotted
 * path for nested ones) to what it must be; `refusedFields` maps known-but-refused keys to why.
 * Throws `InvalidOptionError` for the first problem.
 * @internal
 */
export function parseOptions<S extends z.ZodObject>(
  schema: S,
  input: unknown,
  subject: string,
  allowed: Readonly<Record<string, string>>,
  refusedFields: Readonly<Record<string, string>> = {},
): z.output<S> {
  if (typeof input !== 'object' || input === null || Array.isArray(input)) {
    throw new InvalidOptionError('options', `The options of ${subject} must be an object.`)
  }
  const result = schema.safeParse(input)
  if (!result.success) {
    const first = result.error.issues[0]
    throw first
      ? describeIssue(subject, first, Object.keys(schema.shape), allowed, refusedFields)
      : new InvalidOptionError('options', `Invalid options for ${subject}.`)
  }
  return result.data
}
