// Shared by the compressor-training gradient tests (pairs, summary targets): the trainer settings,
// a small test model with its float64 reference, and the check of embed_summary.weight and a few
// base tensors against central finite differences of the reference objective.
import type { ModelTrainer } from "../src/model_train.ts";
import type { Model } from "../src/model.ts";
import { loadReferenceModel, type ReferenceModel } from "./reference_forward.ts";
import { checkEntries, type ReferenceDocument } from "./_reference_train.ts";
import { someIds, testEngine, testModel } from "./_fixtures.ts";

/** Trainer settings of the compressor gradient tests: summaries of 2 rows over segments of 5. */
export const COMPRESSOR_SETTINGS = {
  summaryLength: 2,
  segmentLength: 5,
  lmWeight: 0.7,
  qaWeight: 1.3,
  summaryInitStd: 0.5,
  seed: 4,
} as const;

/** A 4-head, 2-KV-head test model (seeded) loaded natively and in the float64 reference. */
export async function compressorSetup(
  name: string,
  seed: number,
): Promise<{ model: Model; ref: ReferenceModel }> {
  const dir = await testModel(name, { seed, numHeads: 4, numKeyValueHeads: 2 });
  const kv = await testEngine();
  return { model: await kv.loadModel(dir), ref: await loadReferenceModel(dir) };
}

/**
 * Checks embed_summary.weight and `names` (native gradients of `tr`) against central differences of
 * `objective`; returns the worst error relative to each tensor's largest gradient.
 */
export function checkCompressorTensors(
  tr: ModelTrainer,
  ref: ReferenceModel,
  doc: ReferenceDocument,
  objective: () => number,
  names: readonly string[],
): number {
  let worst = checkEntries(
    "embed_summary.weight",
    tr.read("embed_summary.weight", "grad"),
    doc.summaryRows,
    objective,
    [1],
  );
  for (const name of names) {
    worst = Math.max(
      worst,
      checkEntries(name, tr.read(name, "grad"), ref.tensors.get(name)!, objective, [1]),
    );
  }
  return worst;
}

/**
 * The reference document over 12 seeded ids (segments of 5, 5 and 2: summary rows 0..5) with the
 * trainer's embed_summary rows and the settings' weights; `extra` adds pairs, targets and the like.
 */
export function compressorDocument(
  tr: ModelTrainer,
  V: number,
  idSeed: number,
  extra: Partial<ReferenceDocument> = {},
): ReferenceDocument {
  return {
    ids: someIds(12, V, idSeed),
    question: [],
    answer: [],
    segmentLength: 5,
    summaryRows: Float64Array.from(tr.read("embed_summary.weight")),
    lmWeight: COMPRESSOR_SETTINGS.lmWeight,
    qaWeight: COMPRESSOR_SETTINGS.qaWeight,
    ...extra,
  };
}
