// Writes the package's type declarations (.d.ts) beside the compiled .js in dist/: `npm run build`.
//
// The sources are Deno TypeScript: `npm:pkg@1.2.3/sub` specifiers, `.ts` extensions, `Deno.*` types.
// They are copied with the npm specifiers rewritten (as node/build.mjs rewrites them for the .js), and
// tsc emits declarations without type-checking (`deno check` is the checker; tsc has no Deno types).
// Then the .d.ts get the .js extensions and `node:sqlite` mapping of the .js, the FFI types of
// `Deno` the internal handles mention become plain types, and the entry points lose their import of
// the runtime layer (it needs @types/node and declares nothing). Any `Deno.` left outside a comment
// fails the build, so a new Deno type in a signature cannot reach consumers unnoticed.
import ts from "typescript";
import { mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { dirname, join, relative } from "node:path";

/** Deno's FFI types in internal signatures, as consumers may see them. */
const DENO_TYPES = [
  [/Deno\.DynamicLibrary<typeof SYMBOLS>\["symbols"\]/g, "Record<string, (...args: any[]) => any>"],
  [/Deno\.ForeignLibraryInterface/g, "Record<string, unknown>"],
  [/Deno\.PointerValue/g, "unknown"],
  [/Deno\.NativeType/g, "unknown"],
];

/** `npm:@scope/name@1.2.3/sub` -> `@scope/name/sub` in every string literal of `text`. */
function rewriteNpm(text) {
  return text.replace(
    /(["'])npm:(@[^/@"']+\/[^@/"']+|[^@/"']+)(?:@[^/"']+)?(\/[^"']*)?\1/g,
    (_m, q, name, sub) => `${q}${name}${sub ?? ""}${q}`,
  );
}

function walk(dir) {
  return readdirSync(dir, { withFileTypes: true, recursive: true })
    .filter((e) => e.isFile())
    .map((e) => join(e.parentPath ?? e.path, e.name));
}

/**
 * Emits `<outdir>/<file>.d.ts` for each of `entryPoints` (paths relative to `root`).
 * @param {string} root
 * @param {string} outdir
 * @param {string[]} entryPoints
 */
export function writeDeclarations(root, outdir, entryPoints) {
  const stage = join(outdir, ".declarations-src");
  rmSync(stage, { recursive: true, force: true });
  for (const f of entryPoints) {
    mkdirSync(dirname(join(stage, f)), { recursive: true });
    writeFileSync(join(stage, f), rewriteNpm(readFileSync(join(root, f), "utf8")));
  }
  const program = ts.createProgram(entryPoints.map((f) => join(stage, f)), {
    declaration: true,
    emitDeclarationOnly: true,
    noCheck: true,
    allowImportingTsExtensions: true,
    module: ts.ModuleKind.NodeNext,
    moduleResolution: ts.ModuleResolutionKind.NodeNext,
    target: ts.ScriptTarget.ES2022,
    lib: ["lib.es2022.d.ts", "lib.esnext.disposable.d.ts", "lib.dom.d.ts"],
    strict: true,
    skipLibCheck: true,
    types: [],
    rootDir: stage,
    outDir: outdir,
  });
  const emitted = program.emit();
  rmSync(stage, { recursive: true, force: true });
  if (emitted.emitSkipped) {
    throw new Error(ts.formatDiagnostics(emitted.diagnostics, ts.createCompilerHost({})));
  }
  const leaks = [];
  for (const path of walk(outdir).filter((p) => p.endsWith(".d.ts"))) {
    const rel = relative(outdir, path);
    let text = readFileSync(path, "utf8")
      // import/export specifiers (and import("...") types): ./x.ts -> ./x.js
      .replace(/((?:from |import\()\s*["'])(\.{1,2}\/[^"']+)\.ts(["'])/g, "$1$2.js$3")
      .replace(/^import ["']\.\/runtime\.(?:ts|js)["'];\n/m, rel.startsWith("node/") ? "" : "$&");
    if (!rel.startsWith("node/")) {
      let sqlite = relative(dirname(path), join(outdir, "node", "sqlite.js"));
      if (!sqlite.startsWith(".")) sqlite = `./${sqlite}`;
      text = text.replace(/(["'])node:sqlite\1/g, `"${sqlite}"`);
    }
    for (const [re, to] of DENO_TYPES) text = text.replace(re, to);
    writeFileSync(path, text);
    const code = text.replace(/\/\*[\s\S]*?\*\//g, "").replace(/\/\/.*$/gm, "");
    if (/\bDeno\./.test(code) && !rel.startsWith("node/runtime") && !rel.startsWith("node/ffi")) {
      leaks.push(`${rel}: ${/.*\bDeno\..*/.exec(code)[0].trim()}`);
    }
  }
  if (leaks.length > 0) {
    throw new Error(`kvfold: Deno types in the declarations (add them to DENO_TYPES):\n${leaks.join("\n")}`);
  }
}
