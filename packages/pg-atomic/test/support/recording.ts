import pg from 'pg'

/** The protocol messages of pg's connection that carry SQL text. */
interface RecordedConnection {
  query(text: string): void
  parse(query: { text: string }): void
  on(event: string, fn: () => void): void
}

/**
 * A pg `Client` class that records, in order, the SQL text of every statement it sends to the
 * server, at the protocol level: the text of each simple-protocol Query message (control
 * statements pg-atomic sends together in one string appear as that one string, `'BEGIN; SAVEPOINT
 * "pga_1"'`) and of each Parse message of the extended protocol (a statement with parameters, a
 * cursor, and each statement of a pipelined round trip: `'BEGIN'`, then the statement). Round
 * trips (ReadyForQuery messages) are reported through `onReadyForQuery`, with the statements sent
 * by this client since the previous one: the statements that shared that round trip.
 */
export function recordingClient(statements: string[], onReadyForQuery?: (batch: string[]) => void): typeof pg.Client {
  return class RecordingClient extends pg.Client {
    constructor(config?: string | pg.ClientConfig) {
      super(config)
      const connection = (this as unknown as { connection: RecordedConnection }).connection
      const query = connection.query.bind(connection)
      const parse = connection.parse.bind(connection)
      let batch: string[] = []
      connection.query = (text: string): void => {
        statements.push(text)
        batch.push(text)
        query(text)
      }
      connection.parse = (q: { text: string }): void => {
        statements.push(q.text)
        batch.push(q.text)
        parse(q)
      }
      if (onReadyForQuery !== undefined) {
        connection.on('readyForQuery', () => {
          const sent = batch
          batch = []
          onReadyForQuery(sent)
        })
      }
    }
  }
}
