/**
 * Real HTTP for the per-request tests: a server on a free loopback port, and a way to close it
 * with its keep-alive connections.
 */
import http from 'node:http'
import type { AddressInfo } from 'node:net'

/** A listening server. */
export interface Served {
  /** `http://127.0.0.1:<port>`. */
  readonly url: string
  readonly server: http.Server
  /** Closes the server and every connection still open to it. */
  close(): Promise<void>
}

/** Starts `listener` (a node:http listener or an Express app) on 127.0.0.1, on a free port. */
export async function serve(listener: http.RequestListener): Promise<Served> {
  const server = http.createServer(listener)
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  const { port } = server.address() as AddressInfo
  return {
    url: `http://127.0.0.1:${port}`,
    server,
    close: () =>
      new Promise<void>((resolve, reject) => {
        server.close((error) => (error ? reject(error) : resolve()))
        server.closeAllConnections()
      }),
  }
}

/** A promise and the function that resolves it. */
export function gate<T = void>(): { wait: Promise<T>; open: (value: T) => void } {
  let open!: (value: T) => void
  const wait = new Promise<T>((resolve) => {
    open = resolve
  })
  return { wait, open }
}
