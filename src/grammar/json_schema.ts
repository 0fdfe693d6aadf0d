/**
 * JSON Schema → the value grammar that constrained decoding walks ({@link ValueNode}). Covers what
 * zod's JSON Schema output uses: objects (properties, required, additionalProperties), arrays
 * (items, prefixItems, minItems, maxItems), enum, const, string (minLength, maxLength), number and
 * integer (minimum, maximum, exclusive bounds), boolean, null, nullable, anyOf, type lists and local
 * `$ref`s. A keyword the grammar cannot express (pattern, format, not, if/then, allOf, oneOf,
 * recursive `$ref`, ...) is refused with an UNSUPPORTED error naming it and where it is.
 *
 * @module
 */

import { KvfoldError } from "../errors.ts";

/** A number's bounds, inclusive or not. */
export interface NumberBounds {
  min?: number;
  minExclusive?: boolean;
  max?: number;
  maxExclusive?: boolean;
}

/** One object property: its key as written (`"name":` in UTF-8) and its value. */
export interface PropertyNode {
  name: string;
  keyBytes: Uint8Array;
  required: boolean;
  value: ValueNode;
}

/** The compiled grammar of one JSON value. `id` numbers nodes for cache keys; `minBytes` is the shortest value's length. */
export type ValueNode =
  & { id: number; minBytes: number }
  & (
    | { kind: "any" }
    | { kind: "object"; properties: PropertyNode[]; freeValues: ValueNode | null }
    | { kind: "array"; prefix: ValueNode[]; items: ValueNode | null; minItems: number; maxItems: number }
    | { kind: "string"; minLength: number; maxLength: number }
    | { kind: "number"; integer: boolean; bounds: NumberBounds | null }
    | { kind: "literal"; texts: Uint8Array[] }
    | { kind: "union"; options: ValueNode[] }
  );

/** Keywords that only annotate: read and ignored. */
const ANNOTATIONS = new Set([
  "$schema",
  "$id",
  "$comment",
  "$defs",
  "definitions",
  "title",
  "description",
  "default",
  "examples",
  "deprecated",
  "readOnly",
  "writeOnly",
  "markdownDescription",
  "strict",
]);

/** Keywords compiled, per JSON type they apply to. */
const HANDLED = new Set([
  "type",
  "enum",
  "const",
  "anyOf",
  "oneOf",
  "propertyNames",
  "$ref",
  "nullable",
  "properties",
  "required",
  "additionalProperties",
  "items",
  "prefixItems",
  "additionalItems",
  "minItems",
  "maxItems",
  "minLength",
  "maxLength",
  "minimum",
  "maximum",
  "exclusiveMinimum",
  "exclusiveMaximum",
]);

const TYPES = ["object", "array", "string", "number", "integer", "boolean", "null"] as const;
type JsonType = typeof TYPES[number];

/** The largest integer magnitude the grammar writes: 15 digits, exact as a double. */
export const MAX_INTEGER_DIGITS = 15;

const encoder = new TextEncoder();

function unsupported(where: string, what: string): never {
  throw new KvfoldError(
    "UNSUPPORTED",
    `Cannot compile JSON schema: ${what} at ${where || "#"} cannot be expressed by the decoding grammar`,
  );
}

function invalid(where: string, what: string): never {
  throw new KvfoldError("INVALID_ARGUMENT", `Cannot compile JSON schema: ${where || "#"} ${what}`);
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

function pointerEscape(s: string): string {
  return s.replaceAll("~", "~0").replaceAll("/", "~1");
}

/** Compiles schemas: node ids, `$ref` resolution against the root, recursion detection. */
class SchemaCompiler {
  #nextId = 0;
  readonly #root: unknown;
  readonly #resolving: string[] = [];

  constructor(root: unknown) {
    this.#root = root;
  }

  #node<T extends Omit<ValueNode, "id">>(n: T): T & { id: number } {
    return { ...n, id: this.#nextId++ };
  }

  any(): ValueNode {
    return this.#node({ kind: "any", minBytes: 1 });
  }

  compile(schema: unknown, where: string): ValueNode {
    if (schema === true || (isObject(schema) && Object.keys(schema).every((k) => ANNOTATIONS.has(k)))) {
      return this.any();
    }
    if (schema === false) unsupported(where, "the schema false (no value is valid)");
    if (!isObject(schema)) invalid(where, "is not a schema object");
    for (const key of Object.keys(schema)) {
      if (!ANNOTATIONS.has(key) && !HANDLED.has(key)) unsupported(where, `the keyword "${key}"`);
    }
    if (schema.$ref !== undefined) return this.#ref(schema, where);
    if (schema.anyOf !== undefined) return this.#anyOf(schema, where, "anyOf");
    if (schema.oneOf !== undefined) return this.#anyOf(schema, where, "oneOf");
    if (schema.const !== undefined) return this.#literal([schema.const], where);
    if (schema.enum !== undefined) {
      if (!Array.isArray(schema.enum) || schema.enum.length === 0) {
        invalid(where, "has an empty or non-array enum");
      }
      return this.#literal(schema.enum, where);
    }
    let types: JsonType[];
    if (schema.type === undefined) {
      types = schema.properties !== undefined || schema.additionalProperties !== undefined
        ? ["object"]
        : schema.items !== undefined || schema.prefixItems !== undefined
        ? ["array"]
        : [...TYPES].filter((t) => t !== "integer");
    } else {
      const list = Array.isArray(schema.type) ? schema.type : [schema.type];
      for (const t of list) {
        if (!TYPES.includes(t as JsonType)) {
          invalid(`${where}/type`, `names the unknown type ${JSON.stringify(t)}`);
        }
      }
      types = list as JsonType[];
    }
    if (schema.nullable === true && !types.includes("null")) types = [...types, "null"];
    if (types.includes("number")) types = types.filter((t) => t !== "integer");
    const nodes = types.map((t) => this.#typed(t, schema, where));
    return nodes.length === 1 ? nodes[0] : this.#union(nodes);
  }

  #union(options: ValueNode[]): ValueNode {
    const flat = options.flatMap((o) => o.kind === "union" ? o.options : [o]);
    return this.#node({ kind: "union", options: flat, minBytes: Math.min(...flat.map((o) => o.minBytes)) });
  }

  #ref(schema: Record<string, unknown>, where: string): ValueNode {
    const ref = schema.$ref;
    if (typeof ref !== "string" || !ref.startsWith("#")) {
      unsupported(`${where}/$ref`, `the non-local $ref ${JSON.stringify(ref)}`);
    }
    const siblings = Object.keys(schema).filter((k) => k !== "$ref" && !ANNOTATIONS.has(k));
    if (siblings.length > 0) unsupported(where, `"${siblings[0]}" beside a $ref`);
    if (this.#resolving.includes(ref)) unsupported(`${where}/$ref`, `the recursive $ref "${ref}"`);
    let target: unknown = this.#root;
    const path = ref.slice(1);
    if (path !== "") {
      if (!path.startsWith("/")) unsupported(`${where}/$ref`, `the anchor $ref "${ref}"`);
      for (const raw of path.slice(1).split("/")) {
        const part = decodeURIComponent(raw).replaceAll("~1", "/").replaceAll("~0", "~");
        if (!isObject(target) && !Array.isArray(target)) invalid(`${where}/$ref`, `"${ref}" points nowhere`);
        target = (target as Record<string, unknown>)[part];
        if (target === undefined) invalid(`${where}/$ref`, `"${ref}" points nowhere`);
      }
    }
    this.#resolving.push(ref);
    try {
      return this.compile(target, ref);
    } finally {
      this.#resolving.pop();
    }
  }

  #anyOf(schema: Record<string, unknown>, where: string, key: "anyOf" | "oneOf"): ValueNode {
    const list = schema[key];
    if (!Array.isArray(list) || list.length === 0) invalid(`${where}/${key}`, "is not a non-empty array");
    const others = Object.keys(schema).filter((k) => k !== key && k !== "nullable" && !ANNOTATIONS.has(k));
    if (others.length > 0) unsupported(where, `"${others[0]}" beside ${key}`);
    const options = list.map((s, i) => this.compile(s, `${where}/${key}/${i}`));
    if (schema.nullable === true) options.push(this.#literal([null], where));
    // oneOf: exactly one option may match, which the grammar can keep only when no value matches
    // two (different first bytes, or objects told apart by a required literal: a discriminator).
    if (key === "oneOf") {
      for (let i = 0; i < options.length; i++) {
        for (let j = i + 1; j < options.length; j++) {
          if (!disjoint(options[i], options[j])) {
            unsupported(`${where}/oneOf`, `oneOf whose options ${i} and ${j} may both match a value`);
          }
        }
      }
    }
    return options.length === 1 ? options[0] : this.#union(options);
  }

  #literal(values: unknown[], where: string): ValueNode {
    const texts = values.map((v, i) => {
      let text: string | undefined;
      try {
        text = JSON.stringify(v);
      } catch { /* a cycle: not JSON */ }
      if (text === undefined) invalid(where, `enum/const value ${i} is not JSON`);
      return encoder.encode(text);
    });
    return this.#node({ kind: "literal", texts, minBytes: Math.min(...texts.map((t) => t.length)) });
  }

  #count(schema: Record<string, unknown>, key: string, where: string, fallback: number): number {
    const v = schema[key];
    if (v === undefined) return fallback;
    if (typeof v !== "number" || !Number.isInteger(v) || v < 0) {
      invalid(`${where}/${key}`, "is not a non-negative integer");
    }
    return v;
  }

  #typed(type: JsonType, schema: Record<string, unknown>, where: string): ValueNode {
    switch (type) {
      case "null":
        return this.#literal([null], where);
      case "boolean":
        return this.#literal([true, false], where);
      case "string": {
        const minLength = this.#count(schema, "minLength", where, 0);
        const maxLength = this.#count(schema, "maxLength", where, Infinity);
        if (minLength > maxLength) invalid(where, `has minLength ${minLength} above maxLength ${maxLength}`);
        return this.#node({ kind: "string", minLength, maxLength, minBytes: 2 + minLength });
      }
      case "number":
      case "integer":
        return this.#number(type === "integer", schema, where);
      case "array":
        return this.#array(schema, where);
      case "object":
        return this.#object(schema, where);
    }
  }

  #number(integer: boolean, schema: Record<string, unknown>, where: string): ValueNode {
    const bounds: NumberBounds = {};
    const num = (key: string) => {
      const v = schema[key];
      if (v === undefined || typeof v === "boolean") return undefined;
      if (typeof v !== "number" || !Number.isFinite(v)) invalid(`${where}/${key}`, "is not a finite number");
      return v;
    };
    const min = num("minimum"), max = num("maximum");
    const xmin = num("exclusiveMinimum"), xmax = num("exclusiveMaximum");
    if (min !== undefined) bounds.min = min;
    if (xmin !== undefined && (bounds.min === undefined || xmin >= bounds.min)) {
      bounds.min = xmin;
      bounds.minExclusive = true;
    } else if (schema.exclusiveMinimum === true) bounds.minExclusive = true; // draft 4
    if (max !== undefined) bounds.max = max;
    if (xmax !== undefined && (bounds.max === undefined || xmax <= bounds.max)) {
      bounds.max = xmax;
      bounds.maxExclusive = true;
    } else if (schema.exclusiveMaximum === true) bounds.maxExclusive = true;
    const limit = 10 ** MAX_INTEGER_DIGITS;
    // Bounds wider than the grammar's numbers (zod's safe-integer bounds) constrain nothing more.
    if (bounds.min !== undefined && bounds.min <= -limit) delete bounds.min, delete bounds.minExclusive;
    if (bounds.max !== undefined && bounds.max >= limit) delete bounds.max, delete bounds.maxExclusive;
    const has = bounds.min !== undefined || bounds.max !== undefined;
    if (has) {
      const lo = bounds.min ?? -Infinity, hi = bounds.max ?? Infinity;
      const empty = integer
        ? integerLow(bounds) > integerHigh(bounds)
        : lo > hi || (lo === hi && (bounds.minExclusive || bounds.maxExclusive));
      if (empty) invalid(where, "has bounds no number satisfies");
    }
    const node = this.#node({
      kind: "number",
      integer,
      bounds: has ? bounds : null,
      minBytes: 1,
    });
    node.minBytes = has ? shortestNumberLength(node) : 1;
    return node;
  }

  #array(schema: Record<string, unknown>, where: string): ValueNode {
    let prefix: ValueNode[] = [];
    let items: ValueNode | null;
    const rawPrefix = Array.isArray(schema.prefixItems)
      ? schema.prefixItems
      : Array.isArray(schema.items)
      ? schema.items
      : null;
    if (rawPrefix) {
      const key = Array.isArray(schema.prefixItems) ? "prefixItems" : "items";
      prefix = rawPrefix.map((s, i) => this.compile(s, `${where}/${key}/${i}`));
      const restKey = key === "prefixItems" ? "items" : "additionalItems";
      const rest = schema[restKey];
      // Items past the tuple are written only when a schema says what they are (fewer is valid).
      items = rest === undefined || typeof rest === "boolean"
        ? null
        : this.compile(rest, `${where}/${restKey}`);
    } else {
      items = schema.items === undefined ? this.any() : this.compile(schema.items, `${where}/items`);
    }
    const minItems = this.#count(schema, "minItems", where, prefix.length);
    let maxItems = this.#count(schema, "maxItems", where, Infinity);
    if (items === null) maxItems = Math.min(maxItems, prefix.length);
    if (minItems > maxItems) invalid(where, `has minItems ${minItems} above the ${maxItems} items it allows`);
    const node = this.#node({ kind: "array", prefix, items, minItems, maxItems, minBytes: 0 });
    let bytes = 2 + Math.max(0, minItems - 1);
    for (let i = 0; i < minItems; i++) bytes += itemNode(node, i)!.minBytes;
    node.minBytes = bytes;
    return node;
  }

  #object(schema: Record<string, unknown>, where: string): ValueNode {
    const props = schema.properties ?? {};
    if (!isObject(props)) invalid(`${where}/properties`, "is not an object");
    const required = schema.required ?? [];
    if (!Array.isArray(required) || required.some((r) => typeof r !== "string")) {
      invalid(`${where}/required`, "is not an array of strings");
    }
    for (const r of required as string[]) {
      if (!(r in props)) {
        unsupported(`${where}/required`, `the required property "${r}" without a schema in properties`);
      }
    }
    const properties: PropertyNode[] = Object.entries(props).map(([name, s]) => ({
      name,
      keyBytes: encoder.encode(JSON.stringify(name) + ":"),
      required: (required as string[]).includes(name),
      value: this.compile(s, `${where}/properties/${pointerEscape(name)}`),
    }));
    const names = schema.propertyNames;
    if (
      names !== undefined &&
      !(isObject(names) && Object.keys(names).every((k) => k === "type" || ANNOTATIONS.has(k)) &&
        (names.type === undefined || names.type === "string"))
    ) {
      unsupported(`${where}/propertyNames`, 'propertyNames other than {type: "string"}');
    }
    const extra = schema.additionalProperties;
    let freeValues: ValueNode | null = null;
    // With no declared properties, keys are free: `{type: "object"}` and records (zod's z.record).
    if (properties.length === 0 && extra !== false) {
      freeValues = extra === undefined || extra === true
        ? this.any()
        : this.compile(extra, `${where}/additionalProperties`);
    } else if (extra !== undefined && typeof extra !== "boolean") {
      this.compile(extra, `${where}/additionalProperties`); // refused when it cannot be expressed
    }
    let bytes = 2;
    let n = 0;
    for (const p of properties) {
      if (!p.required) continue;
      bytes += p.keyBytes.length + p.value.minBytes + (n++ > 0 ? 1 : 0);
    }
    return this.#node({ kind: "object", properties, freeValues, minBytes: bytes });
  }
}

/** The bytes a value of `n` may start with. */
function firstBytes(n: ValueNode): Set<number> {
  switch (n.kind) {
    case "any":
      return new Set([...'{["-0123456789tfn'].map((c) => c.charCodeAt(0)));
    case "object":
      return new Set([0x7b]);
    case "array":
      return new Set([0x5b]);
    case "string":
      return new Set([0x22]);
    case "number":
      return new Set([..."-0123456789"].map((c) => c.charCodeAt(0)));
    case "literal":
      return new Set(n.texts.map((t) => t[0]));
    case "union":
      return new Set(n.options.flatMap((o) => [...firstBytes(o)]));
  }
}

/** Whether no JSON value matches both nodes (a sufficient test, not a complete one). */
function disjoint(a: ValueNode, b: ValueNode): boolean {
  const fa = firstBytes(a);
  if (![...firstBytes(b)].some((x) => fa.has(x))) return true;
  if (a.kind === "union") return a.options.every((o) => disjoint(o, b));
  if (b.kind === "union") return b.options.every((o) => disjoint(a, o));
  if (a.kind === "literal" && b.kind === "literal") {
    const texts = new Set(a.texts.map((t) => new TextDecoder().decode(t)));
    return !b.texts.some((t) => texts.has(new TextDecoder().decode(t)));
  }
  if (a.kind === "object" && b.kind === "object") {
    // A discriminator: a property both require, whose values cannot coincide.
    return a.properties.some((p) =>
      p.required && b.properties.some((q) => q.name === p.name && q.required && disjoint(p.value, q.value))
    );
  }
  return false;
}

/** The node an array's item `index` must match, or null when the array allows no such item. */
export function itemNode(node: Extract<ValueNode, { kind: "array" }>, index: number): ValueNode | null {
  if (index >= node.maxItems) return null;
  return node.prefix[index] ?? node.items;
}

/** The smallest integer the bounds allow (-Infinity when unbounded below). */
export function integerLow(b: NumberBounds): number {
  if (b.min === undefined) return -Infinity;
  return b.minExclusive ? Math.floor(b.min) + 1 : Math.ceil(b.min);
}

/** The largest integer the bounds allow (Infinity when unbounded above). */
export function integerHigh(b: NumberBounds): number {
  if (b.max === undefined) return Infinity;
  return b.maxExclusive ? Math.ceil(b.max) - 1 : Math.floor(b.max);
}

/** The length of the shortest number text within the bounds (integers when the node says so). */
function shortestNumberLength(node: Extract<ValueNode, { kind: "number" }>): number {
  const b = node.bounds!;
  const lo = node.integer ? integerLow(b) : b.min ?? -Infinity;
  const hi = node.integer ? integerHigh(b) : b.max ?? Infinity;
  if (
    lo <= 0 && hi >= 0 && !(lo === 0 && b.minExclusive && !node.integer) &&
    !(hi === 0 && b.maxExclusive && !node.integer)
  ) {
    return 1;
  }
  // Integers: the bound nearest zero is the shortest. Numbers: its integer neighbour inward, or
  // that plus a short fraction.
  if (node.integer) return String(lo > 0 ? lo : hi).length;
  const near = lo > 0 ? lo : hi;
  const text = String(near);
  return /e/i.test(text) ? 17 : text.length + 2;
}

/**
 * Compiles a JSON Schema (an object, or `true`) into the decoding grammar. Throws an UNSUPPORTED
 * `KvfoldError` naming the keyword and its location for what the grammar cannot express, and an
 * INVALID_ARGUMENT one for a malformed schema.
 *
 * @example
 * ```ts
 * import { compileJsonSchema } from "./json_schema.ts";
 * const node = compileJsonSchema({ type: "object", properties: { ok: { type: "boolean" } }, required: ["ok"] });
 * console.log(node.kind, node.minBytes); // object 11
 * ```
 */
export function compileJsonSchema(schema: unknown): ValueNode {
  return new SchemaCompiler(schema).compile(schema, "#");
}

/** The grammar of any JSON value (the `json` mode). */
export function anyJsonValue(): ValueNode {
  return new SchemaCompiler(true).any();
}
