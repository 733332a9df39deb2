/** A started server: its URL and how to stop it. */
export interface StartedServer {
  /** Superuser connection URL. */
  url: string
  /** Stops the server and deletes its data. */
  stop(): Promise<void>
}

/**
 * Starts PostgreSQL in Docker with `@testcontainers/postgresql`, which is an
 * optional dependency and therefore only imported dynamically.
 *
 * @param image - Docker image, e.g. `postgres:17-alpine`.
 * @param log - receives progress lines.
 * @returns the container's superuser URL and a stop function.
 */
export async function startTestcontainers(image: string, log: (line: string) => void): Promise<StartedServer> {
  let mod: typeof import('@testcontainers/postgresql')
  try {
    mod = await import('@testcontainers/postgresql')
  } catch (error) {
    throw new Error(
      'PG_ATOMIC_TESTCONTAINERS=1 but @testcontainers/postgresql could not be loaded ' +
        `(install it with \`npm install -D @testcontainers/postgresql\`): ${String(error)}`,
    )
  }
  log(`devdb: starting ${image} with Testcontainers`)
  const started = Date.now()
  let container: Awaited<ReturnType<InstanceType<typeof mod.PostgreSqlContainer>['start']>>
  try {
    container = await new mod.PostgreSqlContainer(image)
      .withCommand(['postgres', '-c', 'max_connections=200', '-c', 'fsync=off'])
      .start()
  } catch (error) {
    throw new Error(
      `Testcontainers could not start ${image} (is a Docker engine running?): ` +
        (error instanceof Error ? error.message : String(error)),
    )
  }
  log(`devdb: container ready in ${Date.now() - started} ms`)
  return {
    url: container.getConnectionUri(),
    stop: async () => {
      await container.stop()
    },
  }
}
