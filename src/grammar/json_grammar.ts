/**
 * {@link JsonGrammar}: a compiled JSON Schema (or any JSON) that generation is constrained to, and
 * the per-generation {@link GrammarConstraint} that turns it into an allowed-token mask per step.
 *
 * @module
 */

import { KvfoldError } from "../errors.ts";
import type { TextTokenizer } from "../tokenizer.ts";
import { anyJsonValue, compileJsonSchema, type ValueNode } from "./json_schema.ts";
import {
  dedupeState,
  initialState,
  isClosed,
  type MatchState,
  minCompletion,
  stepBytes,
} from "./json_matcher.ts";
import { budgetBits, MaskCache, TokenTrie } from "./token_mask.ts";

/** The JSON Schema subset {@link JsonGrammar.fromSchema} takes: a schema object, or `true`. */
export type JsonSchema = Record<string, unknown> | boolean;

const tries = new WeakMap<TextTokenizer, TokenTrie>();

/** The tokenizer's vocabulary as a byte trie of `size` ids (built once per tokenizer). */
export function tokenTrie(tokenizer: TextTokenizer, size: number): TokenTrie {
  let trie = tries.get(tokenizer);
  if (trie?.size !== size) tries.set(tokenizer, trie = new TokenTrie(tokenizer.tokenBytes(size), size));
  return trie;
}

/**
 * A grammar generation can be held to: compact JSON matching a JSON Schema, or any JSON value.
 * Compile once and pass it to many `generate({ grammar })` calls: the masks it computed for a
 * vocabulary are kept (per grammar, up to 128 states per vocabulary).
 *
 * @example
 * ```ts
 * import { JsonGrammar } from "./json_grammar.ts";
 * const g = JsonGrammar.fromSchema({
 *   type: "object",
 *   properties: { city: { type: "string" }, days: { type: "integer", minimum: 1, maximum: 7 } },
 *   required: ["city", "days"],
 *   additionalProperties: false,
 * });
 * console.log(g.accepts('{"city":"Oslo","days":3}'), g.accepts('{"city":"Oslo","days":9}')); // true false
 * ```
 */
export class JsonGrammar {
  /** The compiled value grammar. */
  readonly root: ValueNode;
  /** The schema it was compiled from (`true` for any JSON). */
  readonly schema: JsonSchema;
  readonly #caches = new WeakMap<TokenTrie, MaskCache>();

  private constructor(root: ValueNode, schema: JsonSchema) {
    this.root = root;
    this.schema = schema;
  }

  /**
   * Compiles a JSON Schema. Throws an UNSUPPORTED `KvfoldError` naming the keyword (and where it
   * is) for what the grammar cannot express: pattern, format, not, if/then/else, allOf, oneOf,
   * patternProperties, uniqueItems, multipleOf, recursive `$ref`, non-local `$ref`, ...
   */
  static fromSchema(schema: JsonSchema): JsonGrammar {
    if (
      typeof schema !== "boolean" && (typeof schema !== "object" || schema === null || Array.isArray(schema))
    ) {
      throw new TypeError("Cannot compile JSON schema: the schema is not an object or a boolean");
    }
    return new JsonGrammar(compileJsonSchema(schema), schema);
  }

  /** Any one JSON value (the `json` grammar). */
  static anyValue(): JsonGrammar {
    return new JsonGrammar(anyJsonValue(), true);
  }

  /** Whether `text` is exactly a value this grammar generates (compact JSON, keys in schema order). */
  accepts(text: string): boolean {
    const state = stepBytes(initialState(this.root), new TextEncoder().encode(text));
    return state.length > 0 && minCompletion(state) === 0;
  }

  /** @internal the mask cache of this grammar over a vocabulary. */
  _cache(trie: TokenTrie): MaskCache {
    let cache = this.#caches.get(trie);
    if (!cache) this.#caches.set(trie, cache = new MaskCache(trie));
    return cache;
  }
}

/** What `generate` takes as its grammar: a compiled one, or `"json"` for any JSON value. */
export type GrammarOption = JsonGrammar | "json";

const compiled = new Map<string, JsonGrammar>();

/** The grammar of `generate`'s `grammar` / `jsonSchema` options (schemas compiled once, 32 kept). */
export function grammarOf(options: { grammar?: GrammarOption; jsonSchema?: JsonSchema }): JsonGrammar | null {
  const { grammar, jsonSchema } = options;
  if (grammar !== undefined && jsonSchema !== undefined) {
    throw new TypeError("Cannot generate: give grammar or jsonSchema, not both");
  }
  if (grammar === "json") return jsonGrammar ??= JsonGrammar.anyValue();
  if (grammar instanceof JsonGrammar) return grammar;
  if (grammar !== undefined) throw new TypeError('Cannot generate: grammar is not "json" or a JsonGrammar');
  if (jsonSchema === undefined) return null;
  let key: string;
  try {
    key = JSON.stringify(jsonSchema);
  } catch (e) {
    throw new TypeError("Cannot generate: jsonSchema is not JSON", { cause: e });
  }
  let g = compiled.get(key);
  if (!g) {
    g = JsonGrammar.fromSchema(jsonSchema);
    compiled.set(key, g);
    if (compiled.size > 32) compiled.delete(compiled.keys().next().value!);
  } else {
    compiled.delete(key);
    compiled.set(key, g);
  }
  return g;
}

let jsonGrammar: JsonGrammar | undefined;

/**
 * One generation under a grammar: the allowed-token mask for each step (keeping the tokens left
 * enough to close the value at one byte per token) and the matcher state as tokens are accepted.
 */
export class GrammarConstraint {
  readonly #trie: TokenTrie;
  readonly #cache: MaskCache;
  readonly #endIds: readonly number[];
  #state: MatchState;
  /** Masks computed by walking the trie / answered from the cache during this generation. */
  walks = 0;
  lookups = 0;

  constructor(grammar: JsonGrammar, trie: TokenTrie, endIds: readonly number[]) {
    this.#trie = trie;
    this.#cache = grammar._cache(trie);
    this.#endIds = endIds;
    this.#state = initialState(grammar.root);
  }

  /** Fewest bytes that finish the value from here. */
  get bytesLeft(): number {
    return minCompletion(this.#state);
  }

  /** Nothing more may be written (the value is complete and cannot go on). */
  get closed(): boolean {
    return isClosed(this.#state);
  }

  /**
   * The allowed ids as a bitmask for a step after which `budget` more tokens may come, or null
   * when the value is closed and no end token exists to sample.
   */
  mask(budget: number): Uint8Array | null {
    const misses = this.#cache.misses;
    const m = this.#cache.get(this.#state);
    if (this.#cache.misses > misses) this.walks++;
    else this.lookups++;
    if (m.closed && this.#endIds.length === 0) return null;
    if (m.ids.length === 0 && !(m.canEnd && this.#endIds.length > 0)) {
      throw new KvfoldError(
        "UNSUPPORTED",
        "Cannot generate: no token of the vocabulary continues the JSON value here " +
          "(the vocabulary lacks single-byte tokens the grammar needs)",
      );
    }
    return budgetBits(m, budget, this.#endIds, this.#trie.size);
  }

  /** Advances over a sampled id (end ids excepted: they end generation). */
  accept(id: number): void {
    const bytes = this.#trie.bytes[id];
    const next = bytes ? stepBytes(this.#state, bytes) : [];
    if (next.length === 0) {
      throw new KvfoldError(
        "INTERNAL",
        `Cannot generate: token ${id} was sampled but the grammar refuses it`,
      );
    }
    this.#state = dedupeState(next);
  }
}

/**
 * The constraint of one generation: `endIds` (EOS and stop tokens) end it once the value is whole.
 * Refuses a `maxTokens` below the bytes of the grammar's shortest value: the budget that closes
 * every value in time counts one byte per token.
 */
export function constrain(
  grammar: JsonGrammar,
  tokenizer: TextTokenizer,
  vocab: number,
  endIds: readonly number[],
  maxTokens: number,
): GrammarConstraint {
  const constraint = new GrammarConstraint(grammar, tokenTrie(tokenizer, vocab), [...new Set(endIds)]);
  if (constraint.bytesLeft > maxTokens) {
    throw new KvfoldError(
      "INVALID_ARGUMENT",
      `Cannot generate: the shortest value of the JSON schema takes ${constraint.bytesLeft} bytes, ` +
        `more than maxTokens ${maxTokens} can be relied on to write`,
    );
  }
  return constraint;
}
