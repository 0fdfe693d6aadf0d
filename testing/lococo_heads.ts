/**
 * Random LoCoCo heads for a test model folder, as `makeTestModel` makes random models.
 *
 * @module
 */

import { dirname, join } from "node:path";
import { KvfoldError } from "../src/errors.ts";
import { readBoundedJson } from "../src/_bounded_read.ts";
import {
  checkLococoShape,
  writeLococoHeads,
  type WriteLococoHeadsOptions,
} from "../src/formats/lococo_heads.ts";

/** Options of {@link makeTestLococoHeads}. */
export interface TestLococoHeadsOptions {
  /** The model folder whose config.json gives the layer count and head_dim. */
  base: string;
  /** Default 0. */
  seed?: number;
  /** M. Default 512. */
  slots?: number;
  /** r. Default 0.5. */
  keepRate?: number;
  /** k. Default 21. */
  kernel?: number;
  /** B. Default 512. */
  segment?: number;
  /** λ. Default 0.5. */
  lambda?: number;
}

/** What {@link makeTestLococoHeads} wrote. */
export interface TestLococoHeadsInfo
  extends Pick<WriteLococoHeadsOptions, "layers" | "headDim" | "slots" | "keepRate" | "kernel" | "segment"> {
  path: string;
  fusedSlots: number;
}

/**
 * Writes random heads for the model folder `options.base` (num_hidden_layers; head_dim, or
 * hidden_size / num_attention_heads) to the file `outPath`, creating its folder.
 *
 * @example
 * ```ts ignore
 * await makeTestModel("./models/tiny");
 * await makeTestLococoHeads("./heads/tiny.safetensors", { base: "./models/tiny", slots: 64, segment: 32 });
 * ```
 */
export async function makeTestLococoHeads(
  outPath: string,
  options: TestLococoHeadsOptions,
): Promise<TestLococoHeadsInfo> {
  const json = await readBoundedJson(join(options.base, "config.json"), { action: "make test LoCoCo heads" });
  const cfg = json as Record<string, unknown>;
  if (typeof json !== "object" || json === null || Array.isArray(json)) {
    throw new KvfoldError(
      "FORMAT",
      `Cannot make test LoCoCo heads: ${options.base}/config.json is not a JSON object`,
    );
  }
  const layers = cfg.num_hidden_layers;
  const headDim = cfg.head_dim ?? (Number(cfg.hidden_size) / Number(cfg.num_attention_heads));
  if (typeof layers !== "number" || !Number.isSafeInteger(layers) || layers < 1) {
    throw new KvfoldError(
      "FORMAT",
      `Cannot make test LoCoCo heads: ${options.base}/config.json has no valid num_hidden_layers`,
    );
  }
  if (typeof headDim !== "number" || !Number.isSafeInteger(headDim) || headDim < 1) {
    throw new KvfoldError(
      "FORMAT",
      `Cannot make test LoCoCo heads: ${options.base}/config.json gives no integer head_dim ` +
        `(head_dim, or hidden_size / num_attention_heads)`,
    );
  }
  const info = {
    path: outPath,
    layers,
    headDim,
    slots: options.slots ?? 512,
    keepRate: options.keepRate ?? 0.5,
    kernel: options.kernel ?? 21,
    segment: options.segment ?? 512,
    fusedSlots: 0,
  };
  info.fusedSlots = checkLococoShape(
    info,
    (why) => new KvfoldError("INVALID_ARGUMENT", `Cannot make test LoCoCo heads: ${why}`),
  );
  try {
    await Deno.mkdir(dirname(outPath), { recursive: true });
  } catch (e) {
    throw new KvfoldError("IO", `Cannot make test LoCoCo heads: cannot create ${dirname(outPath)}`, {
      cause: e,
    });
  }
  await writeLococoHeads(outPath, { ...info, seed: options.seed ?? 0, lambda: options.lambda });
  return info;
}
