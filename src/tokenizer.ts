/**
 * Tokenization (`tokenizer.json` through `@huggingface/tokenizers`) and chat prompts (the model's
 * `chat_template` through `@huggingface/jinja`).
 *
 * @module
 */

import { Tokenizer } from "npm:@huggingface/tokenizers@0.2.0";
import { Template } from "npm:@huggingface/jinja@0.5.11";
import { KvfoldError } from "./errors.ts";
import { readBoundedJson } from "./_bounded_read.ts";
import { checkTokenizerJson, describe } from "./formats/_tokenizer_json.ts";
import { tokenByteStrings } from "./grammar/token_bytes.ts";
import { readGgufMetadata } from "./formats/gguf_read.ts";
import { tokenizerFromGguf } from "./formats/gguf_tokenizer_read.ts";

/** One chat message, as chat templates expect it. */
export interface ChatMessage {
  role: "system" | "user" | "assistant" | string;
  content: string;
}

/** Options of {@link TextTokenizer.applyChatTemplate}. */
export interface ChatTemplateOptions {
  /** Open the assistant's turn at the end; default true. */
  addGenerationPrompt?: boolean;
  /**
   * Tools for templates that list them (the `tools` variable, in the Hugging Face form
   * `[{type: "function", function: {name, description, parameters}}]`).
   */
  tools?: readonly Record<string, unknown>[];
}

// A missing optional file reads as absent; anything else wrong with it is an error.
async function readJson(path: string, optional = false): Promise<Record<string, unknown> | undefined> {
  let v: unknown;
  try {
    v = await readBoundedJson(path, { action: "load tokenizer" });
  } catch (e) {
    if (optional && e instanceof KvfoldError && e.cause instanceof Deno.errors.NotFound) return undefined;
    throw e;
  }
  if (typeof v !== "object" || v === null || Array.isArray(v)) {
    throw new KvfoldError("FORMAT", `Cannot load tokenizer: ${path} is ${describe(v)}, not a JSON object`);
  }
  return v as Record<string, unknown>;
}

function tokenText(v: unknown): string | undefined {
  if (typeof v === "string") return v;
  if (v && typeof v === "object" && typeof (v as { content?: unknown }).content === "string") {
    return (v as { content: string }).content;
  }
  return undefined;
}

/**
 * A model's tokenizer and chat template.
 *
 * @example
 * ```ts ignore
 * const tok = await TextTokenizer.fromModelDir("./models/tiny");
 * const ids = tok.encode("Hello world");
 * console.log(tok.decode(ids));
 * ```
 */
export class TextTokenizer {
  #tok: Tokenizer;
  #template: Template | null;
  #ids = new Map<string, number>();
  /** Text of the beginning-of-sequence token, if any. */
  readonly bosToken?: string;
  /** Text of the end-of-sequence token, if any. */
  readonly eosToken?: string;
  /** Whether `encode` adds BOS (tokenizer_config.json `add_bos_token`). */
  readonly addBosToken: boolean;
  /** The chat template source, if the model has one. */
  readonly chatTemplate?: string;

  #source: string;
  #json: Record<string, unknown>;
  #bytes?: { size: number; bytes: readonly (Uint8Array | null)[] };
  /** The largest token id tokenizer.json defines (its vocab and added tokens). */
  readonly maxTokenId: number;

  private constructor(json: Record<string, unknown>, config: Record<string, unknown>, source: string) {
    this.#source = source;
    this.#json = json;
    this.maxTokenId = checkTokenizerJson(json, source);
    try {
      this.#tok = new Tokenizer(json, config);
    } catch (e) {
      // The library's own errors ("Unknown PreTokenizer type: X") say what is wrong; a JS
      // TypeError ("x.split is not a function") only says where it broke, so it stays in `cause`.
      const said = e instanceof TypeError || e instanceof RangeError ? "" : ` (${(e as Error).message})`;
      throw new KvfoldError(
        "FORMAT",
        `Cannot load tokenizer: ${source} has a part of the wrong type or an unknown setting${said}`,
        { cause: e },
      );
    }
    this.bosToken = tokenText(config.bos_token);
    this.eosToken = tokenText(config.eos_token);
    this.addBosToken = config.add_bos_token === true;
    let template = config.chat_template;
    if (Array.isArray(template)) {
      // Newer configs hold named templates; "default" is the chat one.
      const named = template.find((t) => t?.name === "default") ?? template[0];
      template = named?.template;
    }
    this.chatTemplate = typeof template === "string" ? template : undefined;
    try {
      this.#template = this.chatTemplate ? new Template(this.chatTemplate) : null;
    } catch (e) {
      throw new KvfoldError(
        "FORMAT",
        `Cannot load tokenizer: chat_template does not parse: ${(e as Error).message}`,
        {
          cause: e,
        },
      );
    }
    for (const t of [this.bosToken, this.eosToken]) {
      if (t === undefined) continue;
      const id = this.#library("load tokenizer", () => this.#tok.token_to_id(t));
      if (id !== undefined) this.#ids.set(t, id);
    }
  }

  // Runs a call into the tokenizer library: a throw there means tokenizer.json is unusable.
  #library<T>(action: string, f: () => T): T {
    try {
      return f();
    } catch (e) {
      const said = e instanceof TypeError || e instanceof RangeError ? "" : ` (${(e as Error).message})`;
      throw new KvfoldError("FORMAT", `Cannot ${action}: the tokenizer of ${this.#source} failed${said}`, {
        cause: e,
      });
    }
  }

  /** Loads `tokenizer.json` (+ `tokenizer_config.json` when present) from a model folder. */
  static async fromModelDir(dir: string): Promise<TextTokenizer> {
    const path = `${dir}/tokenizer.json`;
    const json = (await readJson(path))!;
    const config = await readJson(`${dir}/tokenizer_config.json`, true) ?? {};
    return new TextTokenizer(json, config, path);
  }

  /**
   * The tokenizer of a GGUF model file: the `tokenizer.json` (and `tokenizer_config.json`) beside
   * it when there is one, else rebuilt from its `tokenizer.ggml.*` metadata (byte-level BPE only);
   * with the metadata's end-of-sequence id when it was read.
   */
  static async fromGgufFile(path: string): Promise<{ tokenizer: TextTokenizer; eosTokenIds: number[] }> {
    const slash = path.lastIndexOf("/");
    const dir = slash < 0 ? "." : slash === 0 ? "/" : path.slice(0, slash);
    try {
      if ((await Deno.stat(`${dir}/tokenizer.json`)).isFile) {
        const tokenizer = await TextTokenizer.fromModelDir(dir);
        return { tokenizer, eosTokenIds: tokenizer.eosTokenId === undefined ? [] : [tokenizer.eosTokenId] };
      }
    } catch (e) {
      if (!(e instanceof Deno.errors.NotFound)) throw e;
    }
    const meta = await readGgufMetadata(path);
    const { tokenizerJson, tokenizerConfig } = tokenizerFromGguf(meta, path);
    const tokenizer = new TextTokenizer(tokenizerJson, tokenizerConfig, `${path} (tokenizer.ggml.*)`);
    const ids = new Set<number>();
    const eos = meta.get("tokenizer.ggml.eos_token_id");
    if (typeof eos === "number") ids.add(eos);
    if (tokenizer.eosTokenId !== undefined) ids.add(tokenizer.eosTokenId);
    return { tokenizer, eosTokenIds: [...ids] };
  }

  /** Where the tokenizer was read from: a tokenizer.json path, or a GGUF file's metadata. */
  get source(): string {
    return this.#source;
  }

  /** Id of the end-of-sequence token, if the vocabulary has it. */
  get eosTokenId(): number | undefined {
    return this.eosToken === undefined ? undefined : this.#ids.get(this.eosToken);
  }

  /** Id of the beginning-of-sequence token, if the vocabulary has it. */
  get bosTokenId(): number | undefined {
    return this.bosToken === undefined ? undefined : this.#ids.get(this.bosToken);
  }

  /** Id of a token string, if present. */
  tokenToId(token: string): number | undefined {
    return this.#library("look up a token", () => this.#tok.token_to_id(token));
  }

  /**
   * Token ids of `text`. With `addSpecialTokens` (default false) the tokenizer's post-processor
   * runs, which for most Llama tokenizers prepends BOS.
   */
  encode(text: string, options: { addSpecialTokens?: boolean } = {}): number[] {
    const ids = this.#library(
      "encode text",
      () => this.#tok.encode(text, { add_special_tokens: options.addSpecialTokens ?? false }).ids,
    );
    // A vocab without the pieces its merges make (or without its unk token) yields undefined ids.
    for (const id of ids) {
      if (!Number.isSafeInteger(id) || id < 0) {
        throw new KvfoldError(
          "FORMAT",
          `Cannot encode text: the tokenizer of ${this.#source} gave the token id ${describe(id)}; ` +
            `its vocab is incomplete`,
        );
      }
    }
    return ids;
  }

  /** Text of `ids`; special tokens are dropped unless `skipSpecialTokens` is false. */
  decode(ids: readonly number[], options: { skipSpecialTokens?: boolean } = {}): string {
    if (ids.length === 0) return "";
    const bad = ids.findIndex((id) => !Number.isSafeInteger(id));
    if (bad >= 0) throw new RangeError(`Cannot decode tokens: id ${ids[bad]} at ${bad} is not an integer`);
    return this.#library(
      "decode tokens",
      () => this.#tok.decode([...ids], { skip_special_tokens: options.skipSpecialTokens ?? true }),
    );
  }

  /**
   * The bytes each id below `size` stands for (null: special tokens and ids the vocabulary lacks),
   * as constrained decoding matches them against a grammar. Computed once.
   */
  tokenBytes(size: number): readonly (Uint8Array | null)[] {
    if (this.#bytes?.size !== size) {
      const bytes = tokenByteStrings(
        this.#json,
        size,
        (id) => this.decode([id], { skipSpecialTokens: false }),
      );
      this.#bytes = { size, bytes };
    }
    return this.#bytes.bytes;
  }

  /** Whether the model ships a chat template. */
  get hasChatTemplate(): boolean {
    return this.#template !== null;
  }

  /** Renders `messages` through the chat template (with the assistant turn opened by default). */
  applyChatTemplate(
    messages: readonly ChatMessage[],
    options: ChatTemplateOptions = {},
  ): string {
    if (!this.#template) {
      throw new KvfoldError("UNSUPPORTED", "Cannot build a chat prompt: the model has no chat_template");
    }
    try {
      return this.#template.render({
        messages,
        add_generation_prompt: options.addGenerationPrompt ?? true,
        ...(options.tools ? { tools: options.tools } : {}),
        bos_token: this.bosToken ?? "",
        eos_token: this.eosToken ?? "",
      });
    } catch (e) {
      throw new KvfoldError(
        "FORMAT",
        `Cannot build a chat prompt: the chat_template failed: ${(e as Error).message}`,
        {
          cause: e,
        },
      );
    }
  }

  /**
   * Ids for a chat: the rendered template, tokenized with special tokens recognised. BOS is added
   * only when the template did not already write it.
   */
  encodeChat(messages: readonly ChatMessage[], options: ChatTemplateOptions = {}): number[] {
    const text = this.applyChatTemplate(messages, options);
    const ids = this.encode(text);
    const bos = this.bosTokenId;
    if (this.addBosToken && bos !== undefined && ids[0] !== bos) ids.unshift(bos);
    return ids;
  }
}
