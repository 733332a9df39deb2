/**
 * Pure unit tests of the reader of query builders' transaction control (sql/builder-control.ts):
 * what maps onto nested blocks, and what is left to be refused. No server needed.
 */
import { parseBuilderControl } from '../src/sql/builder-control'

const NO_MODES = { isolationLevel: undefined, readOnly: undefined, deferrable: undefined }

test.each([
  ['begin', { kind: 'begin', modes: NO_MODES }],
  ['BEGIN', { kind: 'begin', modes: NO_MODES }],
  ['begin work;', { kind: 'begin', modes: NO_MODES }],
  ['start transaction', { kind: 'begin', modes: NO_MODES }],
  [
    'start transaction isolation level serializable, read only, deferrable',
    { kind: 'begin', modes: { isolationLevel: 'serializable', readOnly: true, deferrable: true } },
  ],
  [
    'begin isolation level repeatable read read write not deferrable',
    { kind: 'begin', modes: { isolationLevel: 'repeatable read', readOnly: false, deferrable: false } },
  ],
  ['/* kysely */ begin -- comment', { kind: 'begin', modes: NO_MODES }],
  ['commit', { kind: 'commit' }],
  ['END TRANSACTION', { kind: 'commit' }],
  ['rollback', { kind: 'rollback' }],
  ['abort work', { kind: 'rollback' }],
  ['savepoint sp1', { kind: 'savepoint', name: 'sp1' }],
  ['SAVEPOINT Sp1', { kind: 'savepoint', name: 'sp1' }],
  ['savepoint "Sp ""1"""', { kind: 'savepoint', name: 'Sp "1"' }],
  ['release savepoint sp1', { kind: 'release', name: 'sp1' }],
  ['release "sp1"', { kind: 'release', name: 'sp1' }],
  ['rollback to savepoint sp1', { kind: 'rollback-to', name: 'sp1' }],
  ['ROLLBACK TRANSACTION TO "sp1"', { kind: 'rollback-to', name: 'sp1' }],
])('%s', (sql, expected) => {
  expect(parseBuilderControl(sql)).toEqual(expected)
})

test.each([
  'begin; select 1',
  'commit; begin',
  'begin isolation level bogus',
  'begin read',
  'savepoint',
  'savepoint a b',
  'release savepoint',
  'rollback to',
  'set transaction isolation level serializable',
  'prepare transaction $$x$$',
  'select 1',
  "insert into t values ('begin')",
  '',
])('%j is not a builder control statement', (sql) => {
  expect(parseBuilderControl(sql)).toBeUndefined()
})
