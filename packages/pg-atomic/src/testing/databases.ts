/**
 * A database per test worker, cloned from a template the application prepares once (schema
 * migrations run once, then `CREATE DATABASE … TEMPLATE` per worker), dropped afterwards.
 *
 * @module
 */
import pg from 'pg'
import { InvalidOptionError } from '../errors'
import { identifierProblem, quoteIdentifier } from '../sql/identifier'

/** Where the template lives and what it is called. */
export interface TemplateDatabaseOptions {
  /**
   * URL of a role that may create and drop databases (`CREATEDB` or a superuser), on any database
   * of the server, e.g. `process.env.DATABASE_URL`. Required.
   */
  serverUrl: string
  /** Name of the template database, e.g. `'myapp_test'`; workers' clones are `<template>_worker_<id>`. Required. */
  template: string
}

/** Options of {@link prepareTemplateDatabase}. */
export interface PrepareTemplateOptions extends TemplateDatabaseOptions {
  /**
   * Brings the fresh template's schema up to date (migrations, reference data), given its URL.
   * Every connection it opens must be closed when it resolves: PostgreSQL refuses to copy a
   * database that has sessions.
   */
  migrate(templateUrl: string): Promise<void>
}

/** Options of {@link workerDatabaseUrl}. */
export interface WorkerDatabaseOptions extends TemplateDatabaseOptions {
  /**
   * The worker's id. Default: `JEST_WORKER_ID` (jest), else `VITEST_POOL_ID` (vitest), else the
   * process id (node:test runs each file in a process of its own).
   */
  workerId?: string
}

const DUPLICATE_DATABASE = '42P04'

function checkedName(field: string, name: unknown): string {
  if (typeof name !== 'string' || identifierProblem(name) !== undefined) {
    throw new InvalidOptionError(
      field,
      `The database name ${JSON.stringify(name)} (${field}) cannot be used: give 1 to 63 bytes without NUL ` +
        '(a clone adds "_worker_" and the worker id to the template name, which must fit too).',
    )
  }
  return name
}

function urlOf(serverUrl: string, database: string): string {
  const url = new URL(serverUrl)
  url.pathname = `/${encodeURIComponent(database)}`
  return url.toString()
}

async function withServer<T>(serverUrl: string, fn: (client: pg.Client) => Promise<T>): Promise<T> {
  if (typeof serverUrl !== 'string' || serverUrl === '') {
    throw new InvalidOptionError('serverUrl', 'The option "serverUrl" must be the URL of the PostgreSQL server.')
  }
  const client = new pg.Client({ connectionString: serverUrl })
  await client.connect()
  try {
    return await fn(client)
  } finally {
    await client.end()
  }
}

async function dropAll(client: pg.Client, template: string): Promise<void> {
  const { rows } = await client.query<{ datname: string }>(
    'select datname from pg_database where datname = $1 or starts_with(datname, $2) order by datname desc',
    [template, `${template}_worker_`],
  )
  for (const { datname } of rows) {
    // A template cannot be dropped; FORCE ends the sessions still connected (PostgreSQL 13+).
    if (datname === template) await client.query(`alter database ${quoteIdentifier(datname)} is_template false`)
    await client.query(`drop database if exists ${quoteIdentifier(datname)} with (force)`)
  }
}

/**
 * Creates the template database afresh (dropping an earlier one and its clones), runs `migrate`
 * on it and marks it as a template. Call it once per run, before the workers start: jest's or
 * vitest's `globalSetup`, or a script before `node --test`.
 *
 * @returns the template's URL.
 */
export async function prepareTemplateDatabase(options: PrepareTemplateOptions): Promise<string> {
  const template = checkedName('template', options.template)
  if (typeof options.migrate !== 'function') {
    throw new InvalidOptionError('migrate', 'The option "migrate" must be a function that migrates the template.')
  }
  await withServer(options.serverUrl, async (client) => {
    await dropAll(client, template)
    await client.query(`create database ${quoteIdentifier(template)}`)
  })
  const url = urlOf(options.serverUrl, template)
  await options.migrate(url)
  await withServer(options.serverUrl, (client) =>
    client.query(`alter database ${quoteIdentifier(template)} is_template true`),
  )
  return url
}

/**
 * The URL of this worker's database, `<template>_worker_<workerId>`, cloned from the template on the
 * first call of the run (`CREATE DATABASE … TEMPLATE`) and reused by the worker's later files.
 * The template must have been prepared by {@link prepareTemplateDatabase} in this run.
 */
export async function workerDatabaseUrl(options: WorkerDatabaseOptions): Promise<string> {
  const template = checkedName('template', options.template)
  const id = options.workerId ?? process.env['JEST_WORKER_ID'] ?? process.env['VITEST_POOL_ID'] ?? String(process.pid)
  const name = checkedName('workerId', `${template}_worker_${id}`)
  await withServer(options.serverUrl, async (client) => {
    try {
      await client.query(`create database ${quoteIdentifier(name)} template ${quoteIdentifier(template)}`)
    } catch (error) {
      // Already cloned in this run by an earlier file of the same worker.
      if ((error as { code?: unknown }).code !== DUPLICATE_DATABASE) throw error
    }
  })
  return urlOf(options.serverUrl, name)
}

/**
 * Drops the template and every worker's clone (`WITH (FORCE)`). Call it once after the run:
 * jest's `globalTeardown`, the function vitest's `globalSetup` returns.
 */
export async function dropTemplateDatabases(options: TemplateDatabaseOptions): Promise<void> {
  const template = checkedName('template', options.template)
  await withServer(options.serverUrl, (client) => dropAll(client, template))
}
