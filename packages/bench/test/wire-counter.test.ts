/**
 * The benchmark's round-trip counter on synthetic protocol streams: what a transaction costs is
 * read from ReadyForQuery messages, whatever the chunking, and pipelined Syncs are one wait.
 * (Sends no SQL.)
 */
import { ConnectionCounter } from '../src/proxy/wire-counter'
import type { CounterSink, TransactionCount } from '../src/proxy/wire-counter'

function message(type: string, body: Buffer = Buffer.alloc(0)): Buffer {
  const header = Buffer.alloc(5)
  header.write(type, 0, 'latin1')
  header.writeInt32BE(4 + body.length, 1)
  return Buffer.concat([header, body])
}

const cstr = (text: string): Buffer => Buffer.from(`${text}\0`, 'utf8')

function startup(): Buffer {
  const body = Buffer.concat([Buffer.from([0, 3, 0, 0]), cstr('user'), cstr('postgres'), Buffer.from([0])])
  const length = Buffer.alloc(4)
  length.writeInt32BE(4 + body.length)
  return Buffer.concat([length, body])
}

const query = (sql: string): Buffer => message('Q', cstr(sql))
const parse = (sql: string, name = ''): Buffer =>
  message('P', Buffer.concat([cstr(name), cstr(sql), Buffer.from([0, 0])]))
const bind = (name = ''): Buffer => message('B', Buffer.concat([cstr(''), cstr(name), Buffer.alloc(6)]))
const execute = (): Buffer => message('E', Buffer.concat([cstr(''), Buffer.alloc(4)]))
const sync = (): Buffer => message('S')
const extended = (sql: string): Buffer => Buffer.concat([parse(sql), bind(), execute(), sync()])

const ready = (status: 'I' | 'T' | 'E'): Buffer => message('Z', Buffer.from(status, 'latin1'))
const complete = (tag: string): Buffer => message('C', cstr(tag))
const error = (code: string): Buffer =>
  message('E', Buffer.concat([Buffer.from('S'), cstr('ERROR'), Buffer.from('C'), cstr(code), Buffer.from([0])]))
const authOk = (): Buffer => message('R', Buffer.alloc(4))

class Recorder implements CounterSink {
  readonly transactions: TransactionCount[] = []
  readonly errors: string[] = []
  autocommits = 0
  startups = 0
  transaction(count: TransactionCount): void {
    this.transactions.push(count)
  }
  autocommit(isStartup: boolean): void {
    if (isStartup) this.startups++
    else this.autocommits++
  }
  serverError(code: string): void {
    this.errors.push(code)
  }
}

/** Feeds a conversation, each direction's chunks as given, in order. */
function converse(steps: readonly (readonly ['client' | 'server', Buffer])[], split = 0): Recorder {
  const sink = new Recorder()
  const counter = new ConnectionCounter(sink, () => true)
  for (const [side, data] of steps) {
    const chunks =
      split > 0
        ? Array.from({ length: Math.ceil(data.length / split) }, (_, i) => data.subarray(i * split, (i + 1) * split))
        : [data]
    for (const chunk of chunks) {
      if (side === 'client') counter.fromClient(chunk)
      else counter.fromServer(chunk)
    }
  }
  return sink
}

const connect = [
  ['client', startup()],
  ['server', Buffer.concat([authOk(), ready('I')])],
] as const

describe('ConnectionCounter', () => {
  const handWritten = [
    ...connect,
    ['client', query('BEGIN')],
    ['server', Buffer.concat([complete('BEGIN'), ready('T')])],
    ['client', extended('select 1')],
    ['server', Buffer.concat([message('1'), message('2'), complete('SELECT 1'), ready('T')])],
    ['client', query('COMMIT')],
    ['server', Buffer.concat([complete('COMMIT'), ready('I')])],
  ] as const

  it('counts one ReadyForQuery per round trip of a transaction, and keeps its statements', () => {
    const sink = converse(handWritten)
    expect(sink.startups).toBe(1)
    expect(sink.transactions).toEqual([
      { z: 3, flights: 3, ending: 'commit', trace: ['Q BEGIN', '│', 'select 1', '│', 'Q COMMIT', '│'] },
    ])
  })

  it('gives the same counts whatever the chunking', () => {
    for (const split of [1, 2, 3, 7])
      expect(converse(handWritten, split).transactions).toEqual(converse(handWritten).transactions)
  })

  it('counts statements before one Sync as one round trip, and Syncs sent together as one wait', () => {
    const sink = converse([
      ...connect,
      // BEGIN and the statement before one Sync: one ReadyForQuery.
      ['client', Buffer.concat([parse('BEGIN'), bind(), execute(), extended('select 1')])],
      ['server', Buffer.concat([complete('BEGIN'), complete('SELECT 1'), ready('T')])],
      // Two statements, each with its Sync, sent together: two ReadyForQuery, one wait.
      ['client', Buffer.concat([extended('select 2'), extended('select 3')])],
      ['server', Buffer.concat([complete('SELECT 1'), ready('T'), complete('SELECT 1'), ready('T')])],
      ['client', query('COMMIT')],
      ['server', Buffer.concat([complete('COMMIT'), ready('I')])],
    ])
    expect(sink.transactions).toMatchObject([{ z: 4, flights: 3, ending: 'commit' }])
  })

  it('reports a COMMIT answered with ROLLBACK as a rollback, and the SQLSTATE of errors', () => {
    const sink = converse([
      ...connect,
      ['client', query('BEGIN')],
      ['server', Buffer.concat([complete('BEGIN'), ready('T')])],
      ['client', extended('update t set v = 1')],
      ['server', Buffer.concat([error('40001'), ready('E')])],
      ['client', query('COMMIT')],
      ['server', Buffer.concat([complete('ROLLBACK'), ready('I')])],
    ])
    expect(sink.errors).toEqual(['40001'])
    expect(sink.transactions).toMatchObject([{ z: 3, flights: 3, ending: 'rollback' }])
  })

  it('counts autocommit statements apart, and skips the one-byte answer to SSLRequest', () => {
    const sslRequest = Buffer.alloc(8)
    sslRequest.writeInt32BE(8)
    sslRequest.writeInt32BE(80877103, 4)
    const sink = converse([
      ['client', sslRequest],
      ['server', Buffer.from('N')],
      ...connect,
      ['client', query('select 1')],
      ['server', Buffer.concat([complete('SELECT 1'), ready('I')])],
    ])
    expect(sink.startups).toBe(1)
    expect(sink.autocommits).toBe(1)
    expect(sink.transactions).toEqual([])
  })

  it('resolves executions of named prepared statements to their text', () => {
    const sink = converse([
      ...connect,
      ['client', Buffer.concat([parse('select $1::int', 's1'), sync()])],
      ['server', Buffer.concat([message('1'), ready('I')])],
      ['client', query('begin')],
      ['server', Buffer.concat([complete('BEGIN'), ready('T')])],
      ['client', Buffer.concat([bind('s1'), execute(), sync()])],
      ['server', Buffer.concat([message('2'), complete('SELECT 1'), ready('T')])],
      ['client', query('commit')],
      ['server', Buffer.concat([complete('COMMIT'), ready('I')])],
    ])
    expect(sink.transactions[0]?.trace).toEqual(['Q begin', '│', 'select $1::int', '│', 'Q commit', '│'])
  })
})
