/**
 * Tokenization (`tokenizer.json` through `@huggingface/tokenizers`) and chat prompts (the model's
 * `chat_template` through `@huggingface/jinja`).
 *
 * @module
 */

import { Tokenizer } from "npm:@huggingface/tokenizers@0.2.0";
import { Template } from "npm:@huggingface/jinja@0.5.11";
import { KvfoldError } from "./errors.ts";

/** One chat message, as chat templates expect it. */
export interface ChatMessage {
  role: "system" | "user" | "assistant" | string;
  content: string;
}

async function readJson(path: string, what: string): Promise<Record<string, unknown>> {
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) {
      throw new KvfoldError("IO", `Cannot load tokenizer: ${path} does not exist`, { cause: e });
    }
    throw new KvfoldError("IO", `Cannot load tokenizer: ${path}: ${(e as Error).message}`, { cause: e });
  }
  try {
    const v = JSON.parse(text);
    if (typeof v !== "object" || v === null || Array.isArray(v)) throw new Error("not a JSON object");
    return v;
  } catch (e) {
    throw new KvfoldError(
      "FORMAT",
      `Cannot load tokenizer: ${what} is not valid JSON: ${(e as Error).message}`,
      {
        cause: e,
      },
    );
  }
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

  private constructor(json: Record<string, unknown>, config: Record<string, unknown>) {
    try {
      this.#tok = new Tokenizer(json, config);
    } catch (e) {
      throw new KvfoldError(
        "FORMAT",
        `Cannot load tokenizer: tokenizer.json is not usable: ${(e as Error).message}`,
        {
          cause: e,
        },
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
      const id = this.#tok.token_to_id(t);
      if (id !== undefined) this.#ids.set(t, id);
    }
  }

  /** Loads `tokenizer.json` (+ `tokenizer_config.json` when present) from a model folder. */
  static async fromModelDir(dir: string): Promise<TextTokenizer> {
    const json = await readJson(`${dir}/tokenizer.json`, "tokenizer.json");
    let config: Record<string, unknown> = {};
    try {
      config = await readJson(`${dir}/tokenizer_config.json`, "tokenizer_config.json");
    } catch (e) {
      if (!(e instanceof KvfoldError && e.code === "IO")) throw e;
    }
    return new TextTokenizer(json, config);
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
    return this.#tok.token_to_id(token);
  }

  /**
   * Token ids of `text`. With `addSpecialTokens` (default false) the tokenizer's post-processor
   * runs, which for most Llama tokenizers prepends BOS.
   */
  encode(text: string, options: { addSpecialTokens?: boolean } = {}): number[] {
    return this.#tok.encode(text, { add_special_tokens: options.addSpecialTokens ?? false }).ids;
  }

  /** Text of `ids`; special tokens are dropped unless `skipSpecialTokens` is false. */
  decode(ids: readonly number[], options: { skipSpecialTokens?: boolean } = {}): string {
    if (ids.length === 0) return "";
    return this.#tok.decode([...ids], { skip_special_tokens: options.skipSpecialTokens ?? true });
  }

  /** Whether the model ships a chat template. */
  get hasChatTemplate(): boolean {
    return this.#template !== null;
  }

  /** Renders `messages` through the chat template (with the assistant turn opened by default). */
  applyChatTemplate(
    messages: readonly ChatMessage[],
    options: { addGenerationPrompt?: boolean } = {},
  ): string {
    if (!this.#template) {
      throw new KvfoldError("UNSUPPORTED", "Cannot build a chat prompt: the model has no chat_template");
    }
    try {
      return this.#template.render({
        messages,
        add_generation_prompt: options.addGenerationPrompt ?? true,
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
  encodeChat(messages: readonly ChatMessage[], options: { addGenerationPrompt?: boolean } = {}): number[] {
    const text = this.applyChatTemplate(messages, options);
    const ids = this.encode(text);
    const bos = this.bosTokenId;
    if (this.addBosToken && bos !== undefined && ids[0] !== bos) ids.unshift(bos);
    return ids;
  }
}
