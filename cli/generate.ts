/**
 * `kvfold generate`: stream a completion to stdout.
 *
 * @module
 */

import { JsonGrammar, type JsonSchema, KvfoldError, readBoundedText } from "../mod.ts";
import {
  bool,
  CACHE,
  cacheFromArgs,
  COMMON,
  defineCommand,
  dtypeOpt,
  intOpt,
  many,
  need,
  numOpt,
  openEngine,
  parseCommand,
  seedOpt,
  str,
} from "./_options.ts";
import { cacheNote, decodeRate, interruptSignal, note, write } from "./_console.ts";

/** `kvfold generate`'s usage and options. */
export const GENERATE = defineCommand({
  name: "generate",
  summary: "stream a completion to stdout",
  usage: ["generate --model DIR --prompt TEXT [options]"],
  options: {
    model: str("DIR", "model folder (Hugging Face layout) or GGUF file"),
    prompt: str("TEXT", "the prompt"),
    "max-tokens": str("N", "tokens to generate at most (default 128)"),
    temperature: str("T", "sampling temperature (0: greedy)"),
    "top-p": str("P", "nucleus sampling threshold"),
    "top-k": str("K", "sample among the K likeliest tokens"),
    "min-p": str("P", "drop tokens below P times the likeliest's probability"),
    "repetition-penalty": str("R", "penalty on tokens already seen"),
    seed: str("S", "sampling seed"),
    stop: many("TEXT", "stop when TEXT is generated"),
    chat: bool("wrap the prompt in the model's chat template"),
    system: str("TEXT", "a system message (implies --chat)"),
    "context-size": str("N", "context positions (default: the model's)"),
    adapter: str("DIR", "a PEFT LoRA adapter folder"),
    "json-schema": str("FILE", "write compact JSON valid against this JSON Schema (constrained decoding)"),
    json: bool("write one JSON value (constrained decoding)"),
    ...COMMON,
    ...CACHE,
  },
});

export async function cmdGenerate(args: string[]) {
  const { values: v } = parseCommand(args, GENERATE);
  const dir = need(v.model, "model");
  const prompt = need(v.prompt, "prompt");
  const grammar = await grammarFromArgs(v["json-schema"], v.json);
  using kv = await openEngine(v);
  using model = await kv.loadModel(dir, { dtype: dtypeOpt(v) });
  using interrupt = interruptSignal(); // Ctrl-C aborts within one token
  const messages = v.system !== undefined
    ? [{ role: "system", content: v.system }, { role: "user", content: prompt }]
    : [{ role: "user", content: prompt }];
  const ids = v.chat || v.system !== undefined
    ? model.tokenizer.encodeChat(messages)
    : model.encodePrompt(prompt);
  const adapter = v.adapter === undefined ? null : (await model.adapters.load(v.adapter)).name;
  using session = model.session({
    contextSize: intOpt(v["context-size"], "context-size"),
    cache: cacheFromArgs(model, v),
  });
  for await (
    const piece of session.generate({
      prompt: ids,
      adapter,
      maxTokens: intOpt(v["max-tokens"], "max-tokens") ?? 128,
      temperature: numOpt(v.temperature, "temperature"),
      topP: numOpt(v["top-p"], "top-p"),
      topK: intOpt(v["top-k"], "top-k"),
      minP: numOpt(v["min-p"], "min-p"),
      repetitionPenalty: numOpt(v["repetition-penalty"], "repetition-penalty"),
      seed: seedOpt(v.seed),
      stop: v.stop,
      signal: interrupt.signal,
      grammar,
    })
  ) write(piece);
  const s = session.lastStats!;
  write("\n");
  note(
    `[${s.promptTokens} prompt tokens in ${s.prefillMs.toFixed(0)} ms; ${s.generatedTokens} generated at ` +
      `${decodeRate(s.generatedTokens, s.decodeMs)}; stop: ${s.stopReason}]`,
  );
  cacheNote(session);
}

/** The grammar of `--json-schema FILE` (compiled now, so a bad schema fails before the model loads) or `--json`. */
async function grammarFromArgs(schemaPath: string | undefined, json: boolean | undefined) {
  if (schemaPath !== undefined && json) {
    throw new KvfoldError("INVALID_ARGUMENT", "Cannot generate: give --json-schema or --json, not both");
  }
  if (json) return "json" as const;
  if (schemaPath === undefined) return undefined;
  const text = await readBoundedText(schemaPath, {
    action: "read the JSON schema",
    maxBytes: 16 * 1024 * 1024,
  });
  let schema: unknown;
  try {
    schema = JSON.parse(text);
  } catch (e) {
    throw new KvfoldError(
      "FORMAT",
      `Cannot read the JSON schema: ${schemaPath} is not JSON (${(e as Error).message})`,
    );
  }
  if (
    typeof schema !== "boolean" && (typeof schema !== "object" || schema === null || Array.isArray(schema))
  ) {
    throw new KvfoldError("FORMAT", `Cannot read the JSON schema: ${schemaPath} holds no JSON object`);
  }
  return JsonGrammar.fromSchema(schema as JsonSchema);
}
