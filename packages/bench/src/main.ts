/**
 * Interleaved benchmark: each scenario is run by hand-written node-postgres code and by pg-atomic,
 * alternating in rounds so that server and machine noise hits both alike. Prints the median time
 * per operation, the overhead per operation, and heap growth. Run: `npm run bench`.
 *
 * Options (environment): BENCH_ROUNDS (default 7), BENCH_OPS (operations per round, default 2000).
 */
import { performance } from 'node:perf_hooks'
import pg from 'pg'
import { startDatabase } from '@pg-atomic/devdb'
import { atomic, createDatabase } from 'pg-atomic'

const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 7)
const OPS = Number(process.env.BENCH_OPS ?? 2000)

interface Contender {
  readonly label: string
  readonly op: () => Promise<unknown>
}

interface Scenario {
  readonly name: string
  readonly contenders: readonly Contender[]
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b)
  return sorted[Math.floor(sorted.length / 2)] as number
}

interface Sample {
  /** Wall-clock µs per operation. */
  readonly wall: number
  /** Client CPU µs per operation (user + system of this process): the library's own cost. */
  readonly cpu: number
}

async function time(op: () => Promise<unknown>, n: number): Promise<Sample> {
  const cpuStart = process.cpuUsage()
  const start = performance.now()
  for (let i = 0; i < n; i++) await op()
  const wall = ((performance.now() - start) * 1000) / n
  const cpu = process.cpuUsage(cpuStart)
  return { wall, cpu: (cpu.user + cpu.system) / n }
}

async function main(): Promise<void> {
  const server = await startDatabase()
  const pool = new pg.Pool({ connectionString: server.url, max: 2 })
  pool.on('error', () => undefined)
  const db = createDatabase({ pool })
  await pool.query(
    'drop table if exists bench_t; create table bench_t (id int primary key, v int); insert into bench_t select g, 0 from generate_series(1, 100) g',
  )

  const handWritten = async (body: (c: pg.PoolClient) => Promise<unknown>): Promise<void> => {
    const client = await pool.connect()
    try {
      await client.query('BEGIN')
      await body(client)
      await client.query('COMMIT')
      client.release()
    } catch (error) {
      await client.query('ROLLBACK')
      client.release()
      throw error
    }
  }

  const scenarios: Scenario[] = [
    {
      name: 'query outside a transaction (autocommit)',
      contenders: [
        { label: 'pg pool.query', op: () => pool.query('select 1') },
        { label: 'pg-atomic db.query', op: () => db.query('select 1') },
      ],
    },
    {
      name: 'transaction with one SELECT',
      contenders: [
        { label: 'pg BEGIN/SELECT/COMMIT', op: () => handWritten((c) => c.query('select 1')) },
        { label: 'pg-atomic atomic()', op: () => atomic(() => db.query('select 1')) },
      ],
    },
    {
      name: 'transaction with 5 statements',
      contenders: [
        {
          label: 'pg BEGIN/5×/COMMIT',
          op: () =>
            handWritten(async (c) => {
              for (let i = 1; i <= 5; i++) await c.query('update bench_t set v = v + 1 where id = $1', [i])
            }),
        },
        {
          label: 'pg-atomic atomic()',
          op: () =>
            atomic(async () => {
              for (let i = 1; i <= 5; i++) await db.query('update bench_t set v = v + 1 where id = $1', [i])
            }),
        },
      ],
    },
    {
      name: 'transaction with 1 insert and 3 nested blocks (third fails)',
      contenders: [
        {
          label: 'pg with savepoints',
          op: () =>
            handWritten(async (c) => {
              await c.query('select 1')
              for (let i = 1; i <= 3; i++) {
                await c.query(`SAVEPOINT s${i}`)
                await c.query('select $1::int', [i])
                if (i === 3) {
                  await c.query(`ROLLBACK TO SAVEPOINT s${i}`)
                  await c.query(`RELEASE SAVEPOINT s${i}`)
                } else await c.query(`RELEASE SAVEPOINT s${i}`)
              }
            }),
        },
        {
          label: 'pg-atomic nested atomic()',
          op: () =>
            atomic(async () => {
              await db.query('select 1')
              for (let i = 1; i <= 3; i++) {
                try {
                  await atomic(async () => {
                    await db.query('select $1::int', [i])
                    if (i === 3) throw new Error('third fails')
                  })
                } catch {
                  // expected for the third block
                }
              }
            }),
        },
      ],
    },
    {
      name: 'empty block (pg-atomic sends nothing)',
      contenders: [
        { label: 'pg BEGIN/COMMIT', op: () => handWritten(async () => undefined) },
        { label: 'pg-atomic atomic()', op: () => atomic(async () => undefined) },
      ],
    },
  ]

  console.log(
    `pg-atomic benchmark — ${ROUNDS} interleaved rounds × ${OPS} operations, PostgreSQL from ${server.source}, Node ${process.version}`,
  )
  for (const scenario of scenarios) {
    const samples = scenario.contenders.map(() => [] as Sample[])
    for (const c of scenario.contenders) await time(c.op, Math.min(200, OPS)) // warm-up
    const heapBefore = process.memoryUsage().heapUsed
    for (let r = 0; r < ROUNDS; r++) {
      for (let i = 0; i < scenario.contenders.length; i++) {
        const c = scenario.contenders[(i + r) % scenario.contenders.length] as Contender
        samples[scenario.contenders.indexOf(c)]?.push(await time(c.op, OPS))
      }
    }
    const heapAfter = process.memoryUsage().heapUsed
    console.log(`\n${scenario.name}`)
    const wall = (i: number): number => median((samples[i] as Sample[]).map((s) => s.wall))
    const cpu = (i: number): number => median((samples[i] as Sample[]).map((s) => s.cpu))
    const signed = (v: number): string => `${v >= 0 ? '+' : ''}${v.toFixed(1)}`
    console.log(`  ${''.padEnd(30)} ${'wall µs/op'.padStart(12)} ${'client CPU µs/op'.padStart(18)}`)
    scenario.contenders.forEach((c, i) => {
      const delta =
        i === 0
          ? ''
          : `   (${signed(wall(i) - wall(0))} wall, ${signed(cpu(i) - cpu(0))} CPU vs ${scenario.contenders[0]?.label})`
      console.log(
        `  ${c.label.padEnd(30)} ${wall(i).toFixed(1).padStart(12)} ${cpu(i).toFixed(1).padStart(18)}${delta}`,
      )
    })
    console.log(`  heap growth over the scenario: ${((heapAfter - heapBefore) / 1024).toFixed(0)} KiB`)
  }
  await db.close()
  await pool.end()
  await server.stop()
}

main().catch((error: unknown) => {
  console.error(error)
  process.exitCode = 1
})
