/**
 * The constructor check both integrations share: their classes take `{ model }`, a loaded kvfold
 * `Model`, and a path string or another object is a `TypeError` naming what came.
 *
 * @module
 */

/** Refuses a constructor argument that is not `{ model: <loaded Model> }`, naming what came. */
export function checkModelOption(cls: string, options: unknown): void {
  const model = (options as { model?: unknown } | null | undefined)?.model;
  if (typeof options === "string" || typeof model === "string") {
    throw new TypeError(
      `${cls} takes { model }, a loaded model (await kv.loadModel(path)), not the path string ` +
        JSON.stringify(typeof options === "string" ? options : model),
    );
  }
  if (
    typeof model !== "object" || model === null || typeof (model as { embed?: unknown }).embed !== "function"
  ) {
    const got = options === null || typeof options !== "object" ? kind(options) : `model: ${kind(model)}`;
    throw new TypeError(`${cls} takes { model }, a loaded kvfold Model; got ${got}`);
  }
}

function kind(v: unknown): string {
  if (v === null || v === undefined) return String(v);
  if (typeof v !== "object") return `${typeof v} ${String(v)}`;
  return `a ${(v as object).constructor?.name ?? "null-prototype object"}`;
}
