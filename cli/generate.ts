/**
 * `kvfold generate`: stream a completion to stdout.
 *
 * @module
 */

import {
  BOOLEAN,
  CACHE,
  cacheFromArgs,
  COMMON,
  dtypeOpt,
  intOpt,
  need,
  numOpt,
  openEngine,
  parseCommand,
  seedOpt,
  STRING,
} from "./_options.ts";
import { cacheNote, decodeRate, interruptSignal, note, write } from "./_console.ts";

export async function cmdGenerate(args: string[]) {
  const { values: v } = parseCommand(args, {
    ...COMMON,
    model: STRING,
    prompt: STRING,
    "max-tokens": STRING,
    temperature: STRING,
    "top-p": STRING,
    "top-k": STRING,
    "min-p": STRING,
    "repetition-penalty": STRING,
    seed: STRING,
    stop: { ...STRING, multiple: true },
    chat: BOOLEAN,
    system: STRING,
    "context-size": STRING,
    adapter: STRING,
    ...CACHE,
  });
  const dir = need(v.model, "model");
  const prompt = need(v.prompt, "prompt");
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
