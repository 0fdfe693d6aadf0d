// Shared fixtures of the Node.js/Bun tests: test models generated once per process into a temp
// folder, and one CPU engine. They mirror tests/_fixtures.ts; the package is imported by its name,
// as a user would, so these run against dist/ (`npm run build`).
import { Kvfold } from "kvfold";
import { makeTestModel } from "kvfold/test-model";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";

/** A test model big enough that long prefills take measurable time (8 layers, hidden 256). */
export const WIDE_MODEL = {
  hiddenSize: 256,
  numLayers: 8,
  numHeads: 4,
  intermediateSize: 512,
  maxPositionEmbeddings: 2048,
  seed: 3,
};

/** The tiny AutoCompressor of the LLoCO tests (summary_length 4). */
export const TEST_COMPRESSOR = { summaryLength: 4, seed: 21 };

let root = null;
const made = new Map();

/** A test model folder for these options (written once per process). */
export function testModel(name, options = {}) {
  let p = made.get(name);
  if (!p) {
    p = (async () => {
      root ??= await mkdtemp(join(tmpdir(), "kvfold-node-test-"));
      const dir = join(root, name);
      await makeTestModel(dir, { preset: "tiny", seed: 1, ...options });
      return dir;
    })();
    made.set(name, p);
  }
  return p;
}

/** A fresh temp folder; the caller removes it. */
export function tempDir() {
  return mkdtemp(join(tmpdir(), "kvfold-node-test-"));
}

/** Removes the models folder (call from an `after` hook). */
export async function removeTestModels() {
  if (root) await rm(root, { recursive: true, force: true });
  root = null;
  made.clear();
}

let engine = null;

/** One shared CPU engine with 2 threads. */
export function testEngine() {
  engine ??= Kvfold.open({ backend: "cpu", threads: 2 });
  return engine;
}

/** max |a - b| / max |b|: the relative error used against the float64 reference. */
export function relativeError(a, b) {
  if (a.length !== b.length) throw new Error(`length ${a.length} != ${b.length}`);
  let num = 0, den = 0;
  for (let i = 0; i < a.length; i++) {
    num = Math.max(num, Math.abs(a[i] - b[i]));
    den = Math.max(den, Math.abs(b[i]));
  }
  return num / den;
}

/** Deterministic pseudo-random token ids in [lo, hi). */
export function someIds(n, hi, seed = 3, lo = 3) {
  const out = [];
  let x = seed >>> 0;
  for (let i = 0; i < n; i++) {
    x = (Math.imul(x, 1103515245) + 12345) >>> 0;
    out.push(lo + ((x >>> 8) % (hi - lo)));
  }
  return out;
}

/** The concatenated pieces of a text stream. */
export async function collect(pieces) {
  let text = "";
  for await (const p of pieces) text += p;
  return text;
}
