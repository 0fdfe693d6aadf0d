/**
 * Shared test fixtures: test models generated once per process into a temp folder, and one engine.
 *
 * @module
 */

import { compressIntoStore, Compressor, DocumentStore, Kvfold, type SourceDocument } from "../mod.ts";
import { makeTestModel, type TestModelOptions } from "../testing/mod.ts";
import { repoRoot } from "../src/_native_build.ts";

/** A test model big enough that long prefills take measurable time (8 layers, hidden 256). */
export const WIDE_MODEL: TestModelOptions = {
  hiddenSize: 256,
  numLayers: 8,
  numHeads: 4,
  intermediateSize: 512,
  maxPositionEmbeddings: 2048,
  seed: 3,
};

/** The tiny AutoCompressor the compressor and LLoCO tests share (summary_length 4). */
export const TEST_COMPRESSOR: TestModelOptions = { summaryLength: 4, seed: 21 };

/** A model whose matrices are whole k-quant blocks (rows of 256 and 512 values), for GGUF k-quant tests. */
export const TEST_KQUANT: TestModelOptions = {
  seed: 12,
  hiddenSize: 256,
  numHeads: 4,
  intermediateSize: 512,
};

let root: string | null = null;
const made = new Map<string, Promise<string>>();

// Every temp folder a test file makes goes when its process ends, so a test run leaves /tmp as it was.
const temps = new Set<string>();
globalThis.addEventListener("unload", () => {
  for (const dir of temps) {
    try {
      Deno.removeSync(dir, { recursive: true });
    } catch { /* already removed by its test */ }
  }
});

/** A test model folder for these options (written once per process). */
export function testModel(name: string, options: TestModelOptions = {}): Promise<string> {
  let p = made.get(name);
  if (!p) {
    p = (async () => {
      root ??= await tempDir();
      const dir = `${root}/${name}`;
      await makeTestModel(dir, { preset: "tiny", seed: 1, ...options });
      return dir;
    })();
    made.set(name, p);
  }
  return p;
}

/** A fresh temp folder (removed when the test process ends, if its test has not removed it). */
export function tempDirSync(prefix = "kvfold-test-"): string {
  const dir = Deno.makeTempDirSync({ prefix });
  temps.add(dir);
  return dir;
}

/** {@link tempDirSync} for `await` (making a folder is too quick to be worth an async twin). */
export function tempDir(prefix = "kvfold-test-"): Promise<string> {
  return Promise.resolve(tempDirSync(prefix));
}

/** Runs the kvfold CLI (`cli/main.ts`) as a subprocess: its exit code, stdout and stderr. */
export async function runCli(...args: string[]): Promise<{ code: number; out: string; err: string }> {
  const o = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", `${repoRoot()}/cli/main.ts`, ...args],
    stdout: "piped",
    stderr: "piped",
  }).output();
  const d = new TextDecoder();
  return { code: o.code, out: d.decode(o.stdout), err: d.decode(o.stderr) };
}

let engine: Promise<Kvfold> | null = null;

/** One shared CPU engine with 2 threads (tests run several files in parallel processes). */
export function testEngine(): Promise<Kvfold> {
  engine ??= Kvfold.open({ backend: "cpu", threads: 2 });
  return engine;
}

/**
 * Whether two byte arrays are equal: what to assert on whole files, where a failing `deepEqual` would
 * format a diff of megabytes (enough to exhaust memory) instead of naming the file.
 */
export function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && a.every((x, i) => x === b[i]);
}

/** max |a - b| / max |b|: the relative error used against the float64 reference. */
export function relativeError(a: ArrayLike<number>, b: ArrayLike<number>): number {
  if (a.length !== b.length) throw new Error(`length ${a.length} != ${b.length}`);
  let num = 0, den = 0;
  for (let i = 0; i < a.length; i++) {
    num = Math.max(num, Math.abs(a[i] - b[i]));
    den = Math.max(den, Math.abs(b[i]));
  }
  return num / den;
}

/** `n` deterministic uniform numbers in [-scale, scale) from `seed` (mulberry32). */
export function uniformValues(n: number, seed: number, scale = 1): Float64Array {
  let a = seed >>> 0;
  return Float64Array.from({ length: n }, () => {
    a = (a + 0x6d2b79f5) | 0;
    let t = Math.imul(a ^ (a >>> 15), 1 | a);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((((t ^ (t >>> 14)) >>> 0) / 4294967296) * 2 - 1) * scale;
  });
}

/** Deterministic pseudo-random token ids in [lo, hi). */
export function someIds(n: number, hi: number, seed = 3, lo = 3): number[] {
  const out: number[] = [];
  let x = seed >>> 0;
  for (let i = 0; i < n; i++) {
    x = (Math.imul(x, 1103515245) + 12345) >>> 0;
    out.push(lo + ((x >>> 8) % (hi - lo)));
  }
  return out;
}

/**
 * Runs `fn` with the shared test compressor and a new store in a temp folder (`kb.sqlite`), holding
 * `docs` compressed in 64-token chunks of two 32-token segments; closed and removed afterwards.
 */
export async function withCompressorAndStore(
  fn: (compressor: Compressor, store: DocumentStore, dir: string) => Promise<void> | void,
  docs: readonly SourceDocument[] = [],
): Promise<void> {
  const dir = await tempDir();
  try {
    using compressor = await Compressor.load(
      await testEngine(),
      await testModel("compressor", TEST_COMPRESSOR),
    );
    using store = DocumentStore.open(`${dir}/kb.sqlite`);
    for (const d of docs) {
      await compressIntoStore(compressor, store, d, { chunkTokens: 64, segmentLength: 32 });
    }
    await fn(compressor, store, dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}
