/**
 * The bytes each token id stands for, read from `tokenizer.json`: what constrained decoding walks
 * the grammar with. Byte-level BPE vocabularies (GPT-2, Llama 3, Qwen) map printable characters back
 * to bytes; SentencePiece-style ones (Llama 2, Mistral) turn `▁` into a space and `<0xAB>` byte
 * fallback pieces into their byte. Special tokens stand for no bytes (null).
 *
 * @module
 */

/** GPT-2's printable character → byte map, inverted from the ByteLevel pre-tokenizer's. */
const CHAR_TO_BYTE: ReadonlyMap<string, number> = (() => {
  const bs: number[] = [];
  for (let b = 0x21; b <= 0x7e; b++) bs.push(b);
  for (let b = 0xa1; b <= 0xac; b++) bs.push(b);
  for (let b = 0xae; b <= 0xff; b++) bs.push(b);
  const map = new Map<string, number>();
  for (const b of bs) map.set(String.fromCharCode(b), b);
  let n = 0;
  for (let b = 0; b < 256; b++) {
    if (!bs.includes(b)) map.set(String.fromCharCode(256 + n++), b);
  }
  return map;
})();

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

/** Whether a decoder (or one in a Sequence) has this type. */
function hasDecoder(decoder: unknown, type: string): boolean {
  if (!isRecord(decoder)) return false;
  if (decoder.type === type) return true;
  return Array.isArray(decoder.decoders) && decoder.decoders.some((d) => hasDecoder(d, type));
}

const encoder = new TextEncoder();

function byteLevel(piece: string): Uint8Array | null {
  const out = new Uint8Array(piece.length);
  let i = 0;
  for (const ch of piece) {
    const b = CHAR_TO_BYTE.get(ch);
    if (b === undefined) return null;
    out[i++] = b;
  }
  return out.subarray(0, i);
}

function metaspace(piece: string, byteFallback: boolean): Uint8Array {
  const m = byteFallback ? /^<0x([0-9A-Fa-f]{2})>$/.exec(piece) : null;
  if (m) return Uint8Array.of(parseInt(m[1], 16));
  return encoder.encode(piece.replaceAll("\u2581", " "));
}

/**
 * Bytes of every token id below `size` (null: a special token, an id the vocabulary lacks, or a
 * piece the decoder turns into no fixed bytes). `decodeOne` is the fallback for vocabularies of
 * another kind: a piece whose decoding is whole UTF-8 text is taken as that text.
 */
export function tokenByteStrings(
  json: Record<string, unknown>,
  size: number,
  decodeOne: (id: number) => string,
): (Uint8Array | null)[] {
  const out: (Uint8Array | null)[] = new Array(size).fill(null);
  const model = isRecord(json.model) ? json.model : {};
  const decoder = json.decoder;
  const kind = hasDecoder(decoder, "ByteLevel") ? "byte-level" : hasDecoder(decoder, "Metaspace") ||
      hasDecoder(decoder, "ByteFallback") || hasDecoder(decoder, "Replace")
    ? "metaspace"
    : "other";
  const byteFallback = model.byte_fallback === true || hasDecoder(decoder, "ByteFallback");
  const pieces: [string, number][] = [];
  if (isRecord(model.vocab)) {
    for (const [piece, id] of Object.entries(model.vocab)) {
      if (typeof id === "number") pieces.push([piece, id]);
    }
  } else if (Array.isArray(model.vocab)) {
    model.vocab.forEach((entry, id) => {
      if (Array.isArray(entry) && typeof entry[0] === "string") pieces.push([entry[0], id]);
    });
  }
  for (const [piece, id] of pieces) {
    if (!Number.isInteger(id) || id < 0 || id >= size) continue;
    if (kind === "byte-level") out[id] = byteLevel(piece);
    else if (kind === "metaspace") out[id] = metaspace(piece, byteFallback);
    else {
      const text = decodeOne(id);
      out[id] = text === "" || text.includes("\ufffd") ? null : encoder.encode(text);
    }
  }
  // Added tokens: special ones are never text; others are their content as written.
  if (Array.isArray(json.added_tokens)) {
    for (const t of json.added_tokens) {
      if (!isRecord(t) || typeof t.id !== "number" || t.id < 0 || t.id >= size) continue;
      out[t.id] = t.special === true || typeof t.content !== "string" ? null : encoder.encode(t.content);
    }
  }
  for (let i = 0; i < size; i++) if (out[i]?.length === 0) out[i] = null;
  return out;
}
