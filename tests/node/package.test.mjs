// The npm package as a user gets it: `npm pack`, installed from the tarball into an empty folder,
// the README's Node example run there, a consumer type-checked against the shipped .d.ts, and the
// CLI's help printed as `kvfold`. Dependencies come from the npm cache (`npm ci` filled it).
import assert from "node:assert/strict";
import { execFileSync, spawnSync } from "node:child_process";
import {
  cpSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { after, before, test } from "node:test";
import { fileURLToPath } from "node:url";
import "../../dist/node/runtime.js"; // the Deno layer the modules below run on
import { buildDir, ensureNativeLibrary } from "../../dist/src/_native_build.js";
import { COMMANDS } from "../../dist/cli/main.js";
import { helpText } from "../../dist/cli/_options.js";

const root = resolve(fileURLToPath(import.meta.url), "../../..");
const work = mkdtempSync(join(tmpdir(), "kvfold-pack-"));
const app = join(work, "app");
let installed = "";

after(() => rmSync(work, { recursive: true, force: true }));

const npm = (args, cwd) =>
  execFileSync("npm", args, { cwd, encoding: "utf8", stdio: ["ignore", "pipe", "pipe"], timeout: 300_000 });

before(async () => {
  const packed = JSON.parse(npm(["pack", "--json", "--pack-destination", work], root))[0];
  mkdirSync(app);
  writeFileSync(join(app, "package.json"), JSON.stringify({ name: "app", private: true, type: "module" }));
  npm(["install", join(work, packed.filename), "--prefer-offline", "--no-audit", "--no-fund"], app);
  installed = join(app, "node_modules", "kvfold");
  // The library this test run already uses, copied where the installed package looks for it: its
  // manifest matches only if the tarball ships every source under ffi/ unchanged, so a missing file
  // shows as a rebuild (below) rather than costing a second compile on every run.
  if (!process.env.KVFOLD_LIB && !process.env.KVFOLD_BUILD_DIR) {
    await ensureNativeLibrary({ log: () => {} });
    const from = await buildDir();
    const to = await buildDir(installed);
    cpSync(from, to, { recursive: true, filter: (p) => !p.includes("/obj.") && !p.endsWith(".build-lock") });
  }
});

test("package: the tarball ships .d.ts types, a LICENSE, and is publishable", () => {
  const pkg = JSON.parse(readFileSync(join(installed, "package.json"), "utf8"));
  assert.equal(pkg.private, false);
  for (const [name, range] of Object.entries(pkg.peerDependencies)) {
    assert.match(range, /^\^\d/, `peer ${name} is pinned (${range}), not a range`);
  }
  for (const entry of Object.values(pkg.exports)) {
    assert.ok(existsSync(join(installed, entry.types)), entry.types);
  }
  assert.match(
    readFileSync(join(installed, "LICENSE"), "utf8"),
    /MIT License\s+Copyright \(c\) 2026 the kvfold authors/,
  );
  assert.ok(!readdirSync(join(installed, "ffi")).includes("tests"), "ffi/tests is not shipped");
});

test("package: the README's Node example runs in an empty folder", () => {
  const readme = readFileSync(join(root, "README.md"), "utf8");
  const example = /<!-- node-example -->\s*```js\n([\s\S]*?)```/.exec(readme)?.[1];
  assert.ok(example, "README.md has no <!-- node-example --> block");
  assert.doesNotMatch(example, /await using/, "Node.js 20 has no `await using`");
  writeFileSync(join(app, "example.mjs"), example);
  const r = spawnSync(process.execPath, ["example.mjs"], { cwd: app, encoding: "utf8", timeout: 600_000 });
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stdout, /^generated 8 tokens: ".*"$/m);
  if (!process.env.KVFOLD_LIB && !process.env.KVFOLD_BUILD_DIR) {
    assert.doesNotMatch(
      r.stderr,
      /building/,
      "the shipped ffi/ differs from the sources the library was built from",
    );
  }
});

test("package: a TypeScript consumer type-checks against the shipped declarations", () => {
  writeFileSync(
    join(app, "tsconfig.json"),
    JSON.stringify({
      compilerOptions: {
        module: "nodenext",
        moduleResolution: "nodenext",
        target: "es2022",
        lib: ["es2022", "esnext.disposable", "dom"],
        strict: true,
        noEmit: true,
        skipLibCheck: false,
        types: [],
      },
      files: ["consumer.ts"],
    }),
  );
  writeFileSync(
    join(app, "consumer.ts"),
    `import { Kvfold, KvfoldError, type ModelInfo } from "kvfold";
import { makeTestModel } from "kvfold/test-model";

const { dir } = await makeTestModel("./m", { preset: "tiny" });
const kv: Kvfold = await Kvfold.open({ backend: "cpu", threads: 1 });
const model = await kv.loadModel(dir);
const info: ModelInfo = model.info;
const n: number = info.vocabSize;
const e = new KvfoldError("IO", "Cannot read: x");
const code: "IO" | "FORMAT" | string = e.code;
// Types, not any: a wrong option is an error the consumer sees.
// @ts-expect-error backend is a word
await Kvfold.open({ backend: 3 });
export { code, n };
`,
  );
  const tsc = join(root, "node_modules", "typescript", "bin", "tsc");
  const r = spawnSync(process.execPath, [tsc, "-p", "."], { cwd: app, encoding: "utf8" });
  assert.equal(r.status, 0, r.stdout + r.stderr);
});

test("package: the installed kvfold bin prints the same help as the table, as `kvfold`", () => {
  const bin = join(app, "node_modules", ".bin", "kvfold");
  const top = spawnSync(bin, ["--help"], { cwd: app, encoding: "utf8" });
  assert.equal(top.status, 0, top.stderr);
  assert.match(top.stdout, /^Usage: kvfold <command>/m);
  assert.doesNotMatch(top.stdout, /deno task/);
  for (const { spec } of COMMANDS) {
    const r = spawnSync(bin, [spec.name, "--help"], { cwd: app, encoding: "utf8" });
    assert.equal(r.status, 0, r.stderr);
    assert.equal(r.stdout, helpText(spec));
  }
  const typo = spawnSync(bin, ["train", "--lrr", "1"], { cwd: app, encoding: "utf8" });
  assert.equal(typo.status, 2);
  assert.match(typo.stderr, /kvfold train: unknown option --lrr; did you mean --lr\?/);
});
