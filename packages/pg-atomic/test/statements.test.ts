/**
 * Pure unit tests of the SQL the library builds (statements.ts) and of the scanner that recognises
 * transaction control in user SQL (`findTransactionControl`). No server needed.
 */
import fc from 'fast-check'
import {
  COMMIT,
  ROLLBACK,
  beginStatement,
  releaseStatement,
  resetLocalStatement,
  rollbackToStatement,
  savepointName,
  savepointStatement,
  setLocalStatement,
} from '../src/sql/transaction'
import { findTransactionControl } from '../src/sql/scan'
import { ISOLATION_LEVELS } from 'pg-atomic'
import type { IsolationLevel } from 'pg-atomic'

describe('findTransactionControl: leading keywords', () => {
  test.each([
    ['begin', 'BEGIN'],
    ['BEGIN', 'BEGIN'],
    ['Begin Transaction', 'BEGIN'],
    ['begin isolation level serializable', 'BEGIN'],
    ['start transaction', 'START'],
    ['START TRANSACTION READ ONLY', 'START'],
    ['commit', 'COMMIT'],
    ['COMMIT AND CHAIN', 'COMMIT'],
    ["commit prepared 'x'", 'COMMIT'],
    ['end', 'END'],
    ['End;', 'END'],
    ['rollback', 'ROLLBACK'],
    ['ROLLBACK TO SAVEPOINT s1', 'ROLLBACK'],
    ["rollback prepared 'x'", 'ROLLBACK'],
    ['abort', 'ABORT'],
    ['savepoint s1', 'SAVEPOINT'],
    ['SaVePoInT "x y"', 'SAVEPOINT'],
    ['release savepoint s1', 'RELEASE'],
    ['release s1', 'RELEASE'],
    ['set transaction isolation level serializable', 'SET TRANSACTION'],
    ['SET TRANSACTION READ ONLY', 'SET TRANSACTION'],
    ['set session characteristics as transaction read only', 'SET SESSION CHARACTERISTICS'],
    ['SET   SESSION\n\tCHARACTERISTICS AS TRANSACTION ISOLATION LEVEL SERIALIZABLE', 'SET SESSION CHARACTERISTICS'],
    ["prepare transaction 'gid'", 'PREPARE TRANSACTION'],
    ["PREPARE /* c */ TRANSACTION 'gid'", 'PREPARE TRANSACTION'],
  ])('%j → %s', (sql, expected) => {
    expect(findTransactionControl(sql)).toBe(expected)
  })

  test.each([
    ['leading spaces, tabs and newlines', ' \t\r\n  commit', 'COMMIT'],
    ['a line comment', '-- first\ncommit', 'COMMIT'],
    ['several line comments', '-- a\n   -- b\n\ncommit', 'COMMIT'],
    ['a block comment', '/* hello */ begin', 'BEGIN'],
    ['a block comment without spaces', '/*x*/begin', 'BEGIN'],
    ['a nested block comment', '/* outer /* inner */ still comment */ rollback', 'ROLLBACK'],
    ['comments between set and transaction', 'set /* a */ -- b\n transaction read only', 'SET TRANSACTION'],
    [
      'comments between set, session and characteristics',
      'set -- x\n session /* y */ characteristics as transaction read write',
      'SET SESSION CHARACTERISTICS',
    ],
    ['a form feed and vertical tab', '\f\v savepoint a', 'SAVEPOINT'],
  ])('after %s', (_label, sql, expected) => {
    expect(findTransactionControl(sql)).toBe(expected)
  })
})

describe('findTransactionControl: multi-statement strings', () => {
  test.each([
    ['select 1; commit', 'COMMIT'],
    ['select 1;commit', 'COMMIT'],
    ['insert into t values (1); BEGIN', 'BEGIN'],
    ['select 1; select 2; rollback', 'ROLLBACK'],
    ['select 1; /* c */ savepoint a', 'SAVEPOINT'],
    ['select 1; -- c\n release savepoint a', 'RELEASE'],
    ['select 1;\n\n  end', 'END'],
    ["select ';'; commit", 'COMMIT'],
    ["select 'it''s'; commit", 'COMMIT'],
    ["select E'\\\\'; commit", 'COMMIT'],
    ['select "a;b"; commit', 'COMMIT'],
    ['select "a""b"; commit', 'COMMIT'],
    ['select $$ x $$; commit', 'COMMIT'],
    ['select $t$ x $t$; commit', 'COMMIT'],
    ['select 1 /* ; */; commit', 'COMMIT'],
    ['select 1 -- ;\n; commit', 'COMMIT'],
    ['select $1::int; commit', 'COMMIT'],
    ['select 1; set transaction read only', 'SET TRANSACTION'],
    ["select 1; prepare transaction 'x'", 'PREPARE TRANSACTION'],
  ])('%j → %s', (sql, expected) => {
    expect(findTransactionControl(sql)).toBe(expected)
  })

  test('the first statement wins when several are control statements', () => {
    expect(findTransactionControl('commit; begin')).toBe('COMMIT')
    expect(findTransactionControl('select 1; begin; commit')).toBe('BEGIN')
  })
})

describe('findTransactionControl: no false positives', () => {
  test.each([
    ['select 1'],
    [''],
    ['   '],
    ['-- commit'],
    ['/* commit */'],
    ['/* commit; */ select 1'],
    ['select 1;'],
    ['select 1; '],
    ['select 1; -- commit'],
    ['select 1; /* commit */'],
    ['select 1; /* outer /* commit */ ; commit */ select 2'],
    ['select 1 /* a /* b */ ; commit */'],
    ["select '; commit'"],
    ["insert into t (s) values ('x; begin; commit')"],
    ["select 'it''s; commit'"],
    ["select ''''; select '; rollback'"],
    ["select E'it\\'s; commit'"],
    ["select e'\\'; commit; \\''"],
    ['select "; commit"'],
    ['select "x"""; select 1'],
    ['select 1 as "a;commit"'],
    ['select $$; commit$$'],
    ["select $$ it's; commit $$"],
    ['select $tag$; commit; $$ ; rollback $tag$'],
    ['select $a$ $b$ ; commit $b$ ; begin $a$'],
    ['select $_x1$; commit$_x1$'],
    ['do $$ begin perform 1; end $$'],
    ['create function f() returns int language sql as $fn$ select 1; $fn$'],
    ['select 1 -- ; commit'],
    ['select 1 -- ; commit\n, 2'],
    ['select 1; beginning'],
    ['select 1; commit_log'],
    ['select 1; ends'],
    ['select 1; set transaction_isolation_ok = 1'],
    ['select 1; settings'],
    ['select 1; set session authorization default'],
    ['select 1; prepare q as select 1'],
    ['set local lock_timeout = 100'],
    ['set statement_timeout = 100'],
    ['select begin from t'],
    ['update t set "commit" = 1'],
    ['with x as (select 1) select * from x'],
    ['select case when true then 1 end'],
    ['select case when true then 1 end; select 2'],
    ['explain select 1'],
  ])('%j → undefined', (sql) => {
    expect(findTransactionControl(sql)).toBeUndefined()
  })

  // With standard_conforming_strings on (PostgreSQL's default since 9.1), a backslash is an ordinary
  // character in '...' strings: 'a\' is a complete string. Only E'...' strings have escapes.
  test("a backslash at the end of a standard '...' string does not swallow the closing quote", () => {
    // Valid SQL: two columns, 'a\' and '; commit'. Nothing in it is transaction control.
    expect(findTransactionControl("select 'a\\', '; commit'")).toBeUndefined()
  })

  test("a backslash at the end of a standard '...' string does not hide a following commit", () => {
    // Valid SQL: a string 'C:\' then a real COMMIT.
    expect(findTransactionControl("select 'C:\\'; commit")).toBe('COMMIT')
  })

  // Identifiers may contain '$' after their first character (a$$b is a valid identifier), so a '$$'
  // inside an identifier does not open a dollar-quoted string.
  test('a $$ inside an identifier does not open a dollar quote (no false positive)', () => {
    expect(findTransactionControl("select 1 as a$$b, '$$; commit'")).toBeUndefined()
  })

  test('a $$ inside an identifier does not open a dollar quote (no missed commit)', () => {
    expect(findTransactionControl('select 1 as a$$b; commit')).toBe('COMMIT')
  })
})

describe('findTransactionControl: properties', () => {
  /** Text made of the characters and words that matter to the scanner, so that shrinking finds real cases. */
  const tricky = fc.string({
    unit: fc.constantFrom("'", '\\', ';', ' ', '\n', 'commit', 'begin', 'x', '$', '$q$', '"', '--', '/*', '*/', 'E'),
    maxLength: 20,
  })

  /** Text made of what matters inside a string literal. */
  const stringTricky = fc.string({ unit: fc.constantFrom("'", '\\', ';', ' ', 'commit', 'x'), maxLength: 12 })

  // The property of the brief over SQL-significant tokens: whatever the text, once its quotes are
  // doubled it is the content of one standard string literal.
  test("any text inside a '...' literal is never transaction control (significant tokens)", () => {
    fc.assert(
      fc.property(fc.oneof(stringTricky, tricky), (s) => {
        expect(findTransactionControl("select '" + s.replace(/'/g, "''") + "'")).toBeUndefined()
      }),
      // The first example is the shrunk counterexample fast-check finds: a backslash before a quote.
      { numRuns: 2000, examples: [["\\';commit"], ['x']] },
    )
  })

  test("any text without backslashes inside a '...' literal is never transaction control (significant tokens)", () => {
    fc.assert(
      fc.property(fc.oneof(stringTricky, tricky), (s) => {
        expect(findTransactionControl("select '" + s.replace(/\\/g, '').replace(/'/g, "''") + "'")).toBeUndefined()
      }),
      { numRuns: 2000 },
    )
  })

  test("any text inside an E'...' literal is never transaction control (significant tokens)", () => {
    fc.assert(
      fc.property(fc.oneof(stringTricky, tricky), (s) => {
        const escaped = s.replace(/\\/g, '\\\\').replace(/'/g, "\\'")
        expect(findTransactionControl("select E'" + escaped + "'")).toBeUndefined()
      }),
      { numRuns: 2000 },
    )
  })

  test("any text without backslashes inside a '...' literal is never transaction control (any code points)", () => {
    fc.assert(
      fc.property(fc.string({ unit: 'binary', maxLength: 40 }), (s) => {
        const quoted = s.replace(/\\/g, '').replace(/'/g, "''")
        return findTransactionControl("select '" + quoted + "'") === undefined
      }),
      { numRuns: 1000 },
    )
  })

  test("any text inside an E'...' literal (quotes and backslashes escaped) is never transaction control", () => {
    fc.assert(
      fc.property(fc.string({ unit: 'grapheme-ascii', maxLength: 60 }), (s) => {
        const escaped = s.replace(/\\/g, '\\\\').replace(/'/g, "\\'")
        expect(findTransactionControl("select E'" + escaped + "'")).toBeUndefined()
      }),
      { numRuns: 500 },
    )
  })

  test('any text inside a quoted identifier, a dollar-quoted body or a comment is never transaction control', () => {
    fc.assert(
      fc.property(fc.oneof(tricky, fc.string({ unit: 'grapheme-ascii', maxLength: 60 })), (s) => {
        expect(findTransactionControl('select 1 as "' + s.replace(/"/g, '""') + '"')).toBeUndefined()
        expect(findTransactionControl('select $q$' + s.replace(/\$q\$/g, '') + '$q$')).toBeUndefined()
        expect(findTransactionControl('select $$' + s.replace(/\$/g, '') + '$$')).toBeUndefined()
        expect(findTransactionControl('select 1 /*' + s.replace(/[*/]/g, '') + '*/')).toBeUndefined()
        expect(findTransactionControl('select 1 --' + s.replace(/[\n\r]/g, ''))).toBeUndefined()
      }),
      { numRuns: 1000 },
    )
  })

  test('a control keyword after a semicolon is found whatever harmless statement precedes it', () => {
    const keywords = fc.constantFrom(
      'begin',
      'COMMIT',
      'Rollback',
      'savepoint x',
      'release x',
      'end',
      'abort',
      'start transaction',
    )
    fc.assert(
      fc.property(fc.string({ unit: 'grapheme-ascii', maxLength: 40 }), keywords, (s, keyword) => {
        const literal = s.replace(/\\/g, '').replace(/'/g, "''")
        const expected = keyword.split(' ')[0]?.toUpperCase()
        expect(findTransactionControl(`select '${literal}'; ${keyword}`)).toBe(expected)
      }),
      { numRuns: 300 },
    )
  })
})

describe('beginStatement', () => {
  const levels: Array<[IsolationLevel | undefined, string]> = [
    [undefined, ''],
    ['read committed', ' ISOLATION LEVEL READ COMMITTED'],
    ['repeatable read', ' ISOLATION LEVEL REPEATABLE READ'],
    ['serializable', ' ISOLATION LEVEL SERIALIZABLE'],
    ['read uncommitted', ' ISOLATION LEVEL READ UNCOMMITTED'],
  ]
  const readOnly: Array<[boolean | undefined, string]> = [
    [undefined, ''],
    [true, ' READ ONLY'],
    [false, ' READ WRITE'],
  ]
  const deferrable: Array<[boolean | undefined, string]> = [
    [undefined, ''],
    [true, ' DEFERRABLE'],
    [false, ' NOT DEFERRABLE'],
  ]
  const cases: Array<[IsolationLevel | undefined, boolean | undefined, boolean | undefined, string]> = []
  for (const [l, ls] of levels)
    for (const [r, rs] of readOnly) for (const [d, ds] of deferrable) cases.push([l, r, d, `BEGIN${ls}${rs}${ds}`])

  test('covers every isolation level the library accepts', () => {
    expect(
      levels
        .map(([l]) => l)
        .filter((l) => l !== undefined)
        .sort(),
    ).toEqual([...ISOLATION_LEVELS].sort())
  })

  test.each(cases)('isolationLevel %j, readOnly %j, deferrable %j → %s', (isolationLevel, ro, def, expected) => {
    expect(beginStatement({ isolationLevel, readOnly: ro, deferrable: def })).toBe(expected)
  })

  test('the statement the library sends is itself recognised as transaction control', () => {
    for (const [l, r, d] of cases)
      expect(findTransactionControl(beginStatement({ isolationLevel: l, readOnly: r, deferrable: d }))).toBe('BEGIN')
  })
})

describe('the other statement builders', () => {
  test('savepoint names are a fixed prefix and a counter, always quoted', () => {
    expect(savepointName(1)).toBe('pga_1')
    expect(savepointName(42)).toBe('pga_42')
    expect(savepointStatement('pga_1')).toBe('SAVEPOINT "pga_1"')
    expect(releaseStatement('pga_2')).toBe('RELEASE SAVEPOINT "pga_2"')
    expect(rollbackToStatement('pga_3')).toBe('ROLLBACK TO SAVEPOINT "pga_3"')
    expect(savepointStatement('we"ird')).toBe('SAVEPOINT "we""ird"')
  })

  test('SET LOCAL statements for each timeout option', () => {
    expect(setLocalStatement('statementTimeout', 150)).toBe('SET LOCAL statement_timeout = 150')
    expect(setLocalStatement('lockTimeout', 0)).toBe('SET LOCAL lock_timeout = 0')
    expect(setLocalStatement('idleInTransactionSessionTimeout', 2147483647)).toBe(
      'SET LOCAL idle_in_transaction_session_timeout = 2147483647',
    )
    expect(resetLocalStatement('lockTimeout')).toBe('SET LOCAL lock_timeout TO DEFAULT')
    expect(resetLocalStatement('statementTimeout')).toBe('SET LOCAL statement_timeout TO DEFAULT')
  })

  test('COMMIT and ROLLBACK', () => {
    expect(COMMIT).toBe('COMMIT')
    expect(ROLLBACK).toBe('ROLLBACK')
  })

  test('every control statement the library builds is recognised by the scanner', () => {
    expect(findTransactionControl(savepointStatement('pga_1'))).toBe('SAVEPOINT')
    expect(findTransactionControl(releaseStatement('pga_1'))).toBe('RELEASE')
    expect(findTransactionControl(rollbackToStatement('pga_1'))).toBe('ROLLBACK')
    expect(findTransactionControl(COMMIT)).toBe('COMMIT')
    expect(findTransactionControl(ROLLBACK)).toBe('ROLLBACK')
    // SET LOCAL of a setting is not transaction control.
    expect(findTransactionControl(setLocalStatement('lockTimeout', 5))).toBeUndefined()
  })
})
