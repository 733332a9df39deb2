/**
 * A jest transformer for the ECMAScript-module-only packages the NestJS tests load (NestJS 12
 * ships as ESM, which jest's CommonJS runtime cannot require on Node 20): each file is compiled to
 * CommonJS with TypeScript's transpiler. `import.meta.url` becomes the file's URL, and `import()`
 * becomes `require()` (TypeScript's CommonJS output), which is what NestJS uses them for
 * (`createRequire(import.meta.url)`, optional packages).
 */
import { createHash } from 'node:crypto'
import ts from 'typescript'

const compilerOptions = {
  module: ts.ModuleKind.CommonJS,
  target: ts.ScriptTarget.ES2022,
  esModuleInterop: true,
  allowJs: true,
  sourceMap: false,
  inlineSourceMap: false,
}

export default {
  getCacheKey(source, path) {
    return createHash('sha256').update('esm-to-commonjs 1\0').update(path).update('\0').update(source).digest('hex')
  },
  process(source, path) {
    const replaced = source.replace(/\bimport\.meta\.url\b/g, "require('node:url').pathToFileURL(__filename).href")
    const { outputText } = ts.transpileModule(replaced, { compilerOptions, fileName: path })
    return { code: outputText }
  },
}
