/**
 * Terminal output: aligned columns, colour only on a terminal (and never with `NO_COLOR`), and
 * JSON that survives `bigint` advisory keys.
 *
 * @module
 */

/** Colour functions; identity functions when colour is off. */
export interface Style {
  readonly enabled: boolean
  bold(text: string): string
  dim(text: string): string
  red(text: string): string
  yellow(text: string): string
  cyan(text: string): string
  green(text: string): string
}

function sgr(open: number, close: number): (text: string) => string {
  return (text) => (text === '' ? text : `\u001b[${open}m${text}\u001b[${close}m`)
}

const plain = (text: string): string => text

/**
 * Colour is on when `stream` is a terminal and `NO_COLOR` is unset or empty
 * (https://no-color.org).
 */
export function styleFor(stream: { isTTY?: boolean }, env: NodeJS.ProcessEnv): Style {
  const enabled = stream.isTTY === true && (env['NO_COLOR'] === undefined || env['NO_COLOR'] === '')
  if (!enabled) return { enabled, bold: plain, dim: plain, red: plain, yellow: plain, cyan: plain, green: plain }
  return {
    enabled,
    bold: sgr(1, 22),
    dim: sgr(2, 22),
    red: sgr(31, 39),
    yellow: sgr(33, 39),
    cyan: sgr(36, 39),
    green: sgr(32, 39),
  }
}

/** A table cell: its text, and how to colour it (applied after alignment). */
export interface Cell {
  readonly text: string
  readonly color?: (text: string) => string
}

/** One line per row, whitespace collapsed (query texts span lines). */
export function oneLine(text: string | null | undefined): string {
  return text === null || text === undefined ? '' : text.replace(/\s+/g, ' ').trim()
}

function cut(text: string, width: number): string {
  if (width <= 0) return ''
  const chars = [...text]
  return chars.length <= width ? text : `${chars.slice(0, Math.max(0, width - 1)).join('')}…`
}

function length(text: string): number {
  return [...text].length
}

/**
 * Renders rows under a header in aligned columns, two spaces apart. The last column is not
 * padded and, when `maxWidth` is given (the terminal's width), is cut to fit.
 */
export function table(
  headers: readonly string[],
  rows: readonly (readonly (Cell | string)[])[],
  style: Style,
  maxWidth?: number,
): string[] {
  const cells = rows.map((row) => row.map((c) => (typeof c === 'string' ? { text: c } : c)))
  const widths = headers.map((h, i) => Math.max(length(h), ...cells.map((row) => length(row[i]?.text ?? ''))))
  const last = headers.length - 1
  const offset = widths.slice(0, last).reduce((sum, w) => sum + w + 2, 0)
  const render = (row: readonly Cell[], header: boolean): string => {
    const parts = row.map((cell, i) => {
      let text = cell.text
      if (i === last && maxWidth !== undefined) text = cut(text, Math.max(10, maxWidth - offset))
      const padded = i === last ? text : text + ' '.repeat((widths[i] as number) - length(text))
      const color = header ? style.bold : cell.color
      if (color === undefined) return padded
      // Colour the text only, not the padding, so that columns stay aligned.
      return color(text) + padded.slice(text.length)
    })
    return parts.join('  ').replace(/\s+$/, '')
  }
  return [
    render(
      headers.map((text) => ({ text })),
      true,
    ),
    ...cells.map((row) => render(row, false)),
  ]
}

/**
 * `JSON.stringify` with `bigint` (advisory keys) as decimal strings, and errors (e.g. the
 * `rowLocks.error` of explain-locks) as `{ name, code, message }`.
 */
export function toJson(value: unknown, pretty: boolean): string {
  return JSON.stringify(
    value,
    (_key, v: unknown) => {
      if (typeof v === 'bigint') return v.toString()
      if (v instanceof Error) {
        const code = (v as { code?: unknown }).code
        return { name: v.name, ...(typeof code === 'string' ? { code } : {}), message: v.message }
      }
      return v
    },
    pretty ? 2 : undefined,
  )
}
