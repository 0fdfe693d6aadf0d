// Compiles kvfold's TypeScript into dist/ for Node.js and Bun: `npm run build`.
//
// Every .ts file of the package is its own entry point and every import stays external, so dist/
// mirrors the source tree file for file (import.meta.url keeps pointing where src/ expects), and
// only the import specifiers change:
//   npm:pkg@1.2.3/sub        -> pkg/sub          (Deno's npm specifiers, resolved from node_modules)
//   ./file.ts                -> ./file.js
//   node:sqlite (in src/)    -> dist/node/sqlite.js (Node.js 20 has no node:sqlite)
// Types are stripped; `using` and decorators are lowered for Node.js 20. The .d.ts beside each .js
// come from node/declarations.mjs (tsc).
import * as esbuild from "esbuild";
import { readdirSync, rmSync } from "node:fs";
import { dirname, join, relative, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { writeDeclarations } from "./declarations.mjs";

const root = resolve(dirname(fileURLToPath(import.meta.url)), "..");
const outdir = join(root, "dist");

/** .ts files under `dir`, tests excluded. */
function sources(dir) {
  return readdirSync(join(root, dir), { withFileTypes: true, recursive: true })
    .filter((e) => e.isFile() && e.name.endsWith(".ts") && !e.name.endsWith("_test.ts"))
    .map((e) => relative(root, join(e.parentPath ?? e.path, e.name)));
}

// tests/reference_forward.ts (the float64 forward pass) comes along for tests/node/ to check numerics.
const entryPoints = [
  "mod.ts",
  ...sources("src"),
  ...sources("cli"),
  ...sources("testing"),
  ...sources("integrations"),
  ...sources("demo"),
  ...sources("node"),
  "tests/reference_forward.ts",
];

/** `npm:@scope/name@1.2.3/sub` -> `@scope/name/sub`; null for anything else. */
function npmSpecifier(spec) {
  const m = /^npm:(@[^/]+\/[^@/]+|[^@/]+)(?:@[^/]+)?(\/.*)?$/.exec(spec);
  return m ? m[1] + (m[2] ?? "") : null;
}

/** @type {esbuild.Plugin} */
const specifiers = {
  name: "kvfold-specifiers",
  setup(build) {
    build.onResolve({ filter: /.*/ }, (args) => {
      if (args.kind === "entry-point") return undefined;
      const npm = npmSpecifier(args.path);
      if (npm) return { path: npm, external: true };
      if (args.path === "node:sqlite" && !args.importer.startsWith(join(root, "node"))) {
        let rel = relative(dirname(args.importer), join(root, "node", "sqlite.js"));
        if (!rel.startsWith(".")) rel = `./${rel}`;
        return { path: rel, external: true };
      }
      if (args.path.startsWith(".") && args.path.endsWith(".ts")) {
        return { path: args.path.replace(/\.ts$/, ".js"), external: true };
      }
      return { path: args.path, external: true };
    });
  },
};

rmSync(outdir, { recursive: true, force: true });
const result = await esbuild.build({
  absWorkingDir: root,
  entryPoints,
  outdir,
  outbase: root,
  bundle: true, // resolution runs only when bundling; the plugin keeps every import external
  format: "esm",
  platform: "node",
  target: "node20",
  sourcemap: "linked",
  plugins: [specifiers],
  logLevel: "warning",
});
if (result.errors.length > 0) process.exit(1);
// Declarations of the package's own modules (the test helper stays without).
writeDeclarations(root, outdir, entryPoints.filter((f) => !f.startsWith("tests/")));
console.error(`kvfold: built ${entryPoints.length} modules into ${relative(process.cwd(), outdir) || "."}`);
