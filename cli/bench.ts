/**
 * `kvfold bench decode|prefill`: tokens/s and the fraction of the memory-bandwidth limit.
 *
 * @module
 */

import { KvfoldError, measureDecode, measurePrefill } from "../mod.ts";
import { COMMON, defineCommand, dtypeOpt, intOpt, need, openEngine, parseCommand, str } from "./_options.ts";
import { write } from "./_console.ts";

/** `kvfold bench`'s usage and options. */
export const BENCH = defineCommand({
  name: "bench",
  summary: "tokens/s and the fraction of the memory-bandwidth limit",
  usage: ["bench decode|prefill --model DIR [--tokens N] [--repeats N]"],
  options: {
    model: str("DIR", "model folder (Hugging Face layout) or GGUF file"),
    tokens: str("N", "tokens per run"),
    repeats: str("N", "runs (the best and the median are reported)"),
    ...COMMON,
  },
  positionals: true,
});

export async function cmdBench(args: string[]) {
  const { values: v, positionals } = parseCommand(args, BENCH);
  const kind = positionals[0];
  if (kind !== "decode" && kind !== "prefill") {
    throw new KvfoldError("INVALID_ARGUMENT", "Usage: kvfold bench decode|prefill --model DIR");
  }
  const dir = need(v.model, "model");
  using kv = await openEngine(v);
  using model = await kv.loadModel(dir, { dtype: dtypeOpt(v) });
  const bw = await kv.measureReadBandwidth();
  const tokens = intOpt(v.tokens, "tokens", 1);
  const repeats = intOpt(v.repeats, "repeats", 1);
  const r = kind === "decode"
    ? await measureDecode(model, { tokens, repeats })
    : await measurePrefill(model, { tokens, repeats });
  const gb = model.info.weightBytes / 1e9;
  write(
    [
      `model:            ${dir} (${model.info.modelType}, ${
        (model.info.params / 1e6).toFixed(1)
      }M params, ${model.info.weightDType})`,
      `engine:           ${kv.name}, ${kv.threads} thread(s)`,
      `read bandwidth:   ${bw.toFixed(2)} GB/s (measured now)`,
      `${kind}:`.padEnd(18) +
      `${r.tokensPerSecond.toFixed(1)} tok/s best, ${
        r.medianTokensPerSecond.toFixed(1)
      } median (${r.tokens} tokens x ${r.repeats})`,
      kind === "decode"
        ? `bandwidth limit:  ${(bw / gb).toFixed(1)} tok/s; reached ${
          ((100 * r.tokensPerSecond * gb) / bw).toFixed(1)
        }%`
        : `compute:          ${
          ((2 * (model.info.weightBytes / (model.info.weightDType === "f32" ? 4 : 2) -
            model.info.vocabSize * model.info.hiddenSize) *
            r.tokensPerSecond) / 1e9).toFixed(1)
        } GFLOP/s (2 x layer weights x tok/s)`,
    ].join("\n") + "\n",
  );
}
