/**
 * A reader of PyTorch `torch.save` zip checkpoints (`pytorch_model.bin`, `adapter_model.bin`) and a
 * converter to safetensors, written from scratch and distrustful of its input: the zip layer
 * (`torch_zip.ts`) checks every entry's CRC-32 and local header and inflates no further than the
 * declared sizes; the pickle layer (`torch_pickle.ts`) builds data only, from an allow-list of
 * globals, and refuses anything a plain state dict would not do; this layer checks every tensor view
 * against its storage and charges every allocation to a memory budget before making it.
 *
 * @module
 */

import { basename, dirname, join, resolve } from "node:path";
import { readBoundedFile, readBoundedJson } from "../_bounded_read.ts";
import { KvfoldError } from "../errors.ts";
import { DTYPE_SIZES, type TensorView, writeSafetensorsFile } from "./safetensors.ts";
import { PTensor, type PValue, unpickle } from "./torch_pickle.ts";
import { formatError, ZipArchive } from "./torch_zip.ts";

/** Options of {@link readTorchCheckpoint} and {@link convertTorchCheckpoint}. */
export interface TorchCheckpointOptions {
  /**
   * Most bytes one checkpoint file may account for: the file itself, what is inflated from it and
   * every tensor taken from it (a copy, or a view into the file that is written out all the same).
   * Default: three times the file's size plus 1 GiB, room for every tensor twice over (tied
   * weights, transposed views, deflated entries) but not for a view, a tensor repeated under many
   * names or an entry that turns a few bytes into gigabytes.
   */
  maxBytes?: number;
}

const GiB = 1024 * 1024 * 1024;
const MAX_RANK = 64;
const MAX_DEPTH = 32;

/**
 * Names of real tensors: state-dict keys are module attribute names (Python identifiers) and list
 * indices joined by dots, so letters, digits, `_`, `.` and `-`; not absurdly long.
 */
const PLAUSIBLE_NAME = /^[\p{L}\p{N}_.\-]{1,1024}$/u;

function checkMaxBytes(max: number | undefined): void {
  if (max !== undefined && (!Number.isSafeInteger(max) || max <= 0)) {
    throw new RangeError(`maxBytes must be a positive integer, got ${max}`);
  }
}

/** The default budget of a file of `size` bytes. */
function defaultBudget(size: number): number {
  return 3 * size + GiB;
}

function outOfMemory(name: string, what: string, bytes: number, budget: number): KvfoldError {
  return new KvfoldError(
    "OUT_OF_MEMORY",
    `Cannot convert ${name}: ${what} would take ${bytes} bytes, past the memory budget of ${budget} bytes ` +
      "for this file (raise it with maxBytes, or --max-memory on the command line)",
  );
}

/** Runs `fn`, turning any JS exception malformed input provokes into a KvfoldError naming `name`. */
function guarded<T>(name: string, fn: () => T): T {
  try {
    return fn();
  } catch (e) {
    throw asKvfoldError(name, e);
  }
}

function asKvfoldError(name: string, e: unknown): KvfoldError {
  if (e instanceof KvfoldError) return e;
  const msg = e instanceof Error ? e.message : String(e);
  if (/allocation failed|out of memory|invalid (typed )?array (buffer )?length|array buffer/i.test(msg)) {
    return new KvfoldError("OUT_OF_MEMORY", `Cannot convert ${name}: out of memory (${msg})`, { cause: e });
  }
  return new KvfoldError("FORMAT", `Cannot convert ${name}: the checkpoint is malformed (${msg})`, {
    cause: e,
  });
}

/**
 * Checks a view against its storage, charges its size to the budget and returns its bytes: a view
 * into `src` when it is contiguous, else a copy.
 */
function materialise(
  t: PTensor,
  src: Uint8Array,
  tensor: string,
  name: string,
  reserve: (bytes: number, what: string) => void,
): Uint8Array {
  const { shape, stride, offset } = t;
  const { numel, dtype } = t.storage;
  const esize = DTYPE_SIZES[dtype];
  const bad = (what: string) => formatError(name, `tensor ${tensor} ${what}`);
  if (shape.length !== stride.length) throw bad(`has ${shape.length} sizes but ${stride.length} strides`);
  if (shape.length > MAX_RANK) throw bad(`has ${shape.length} dimensions`);
  if (shape.some((d) => d < 0) || stride.some((s) => s < 0) || offset < 0) {
    throw bad("has a negative size, stride or offset");
  }
  if (shape.includes(0)) return new Uint8Array(0);
  let n = 1;
  for (const d of shape) n *= d;
  // Exact below 2^53; a sum past it is past any storage, rounding or not.
  let last = offset;
  for (let i = 0; i < shape.length; i++) last += (shape[i] - 1) * stride[i];
  if (last >= numel) {
    throw bad(
      `reaches past the end of its storage ${t.storage.key}: element ${last} of ${numel} ` +
        `(offset ${offset}, size [${shape}], stride [${stride}])`,
    );
  }
  let contiguous = true;
  let expect = 1;
  for (let i = shape.length - 1; i >= 0; i--) {
    if (shape[i] !== 1 && stride[i] !== expect) contiguous = false;
    expect *= shape[i];
  }
  // Charged even as a view: it is written out, and one storage may back any number of tensors.
  reserve(n * esize, `tensor ${tensor} (size [${shape}], stride [${stride}])`);
  if (contiguous) return src.subarray(offset * esize, (offset + n) * esize);
  const out = new Uint8Array(n * esize);
  const rank = shape.length;
  const inner = shape[rank - 1];
  const rowBytes = inner * esize;
  const innerStride = stride[rank - 1] * esize;
  const idx = new Array<number>(rank).fill(0);
  let base = offset;
  let o = 0;
  const rows = n / inner;
  for (let r = 0; r < rows; r++) {
    let s = base * esize;
    if (stride[rank - 1] === 1) {
      out.set(src.subarray(s, s + rowBytes), o);
      o += rowBytes;
    } else {
      for (let j = 0; j < inner; j++) {
        for (let b = 0; b < esize; b++) out[o++] = src[s + b];
        s += innerStride;
      }
    }
    // Advance the odometer over the outer dimensions.
    for (let d = rank - 2; d >= 0; d--) {
      idx[d]++;
      base += stride[d];
      if (idx[d] < shape[d]) break;
      base -= stride[d] * shape[d];
      idx[d] = 0;
    }
  }
  return out;
}

/** The tensors of a state dict by flat dotted name, refusing what a state dict does not hold. */
function collectTensors(root: PValue, name: string): Map<string, PTensor> {
  if (!(root instanceof Map)) throw formatError(name, "the pickle does not hold a state dict");
  const out = new Map<string, PTensor>();
  const walk = (d: Map<PValue, PValue>, path: string, depth: number) => {
    if (depth > MAX_DEPTH) throw formatError(name, `the state dict nests deeper than ${MAX_DEPTH} levels`);
    for (const [k, v] of d) {
      if (typeof k !== "string") {
        throw formatError(
          name,
          `the state dict has a key that is not a string (${typeof k}) under "${path}"`,
        );
      }
      const key = path + k;
      if (v instanceof PTensor) {
        if (!PLAUSIBLE_NAME.test(key)) {
          throw formatError(name, `the state dict has an implausible tensor name ${JSON.stringify(key)}`);
        }
        if (out.has(key)) throw formatError(name, `tensor name ${key} appears twice`);
        out.set(key, v);
      } else if (v instanceof Map) {
        walk(v, key + ".", depth + 1);
      } else if (v !== null && typeof v === "object") {
        throw formatError(name, `the state dict entry ${JSON.stringify(key)} is neither a tensor nor a dict`);
      }
      // Plain numbers, strings and None (a training step, a version) are metadata: skipped.
    }
  };
  walk(root, "", 0);
  if (out.size === 0) throw formatError(name, "the state dict holds no tensors");
  return out;
}

/**
 * Reads a `torch.save` zip checkpoint holding a state dict and returns its tensors by name as
 * contiguous row-major bytes (views, storage offsets and transposes resolved): a view into `bytes`
 * where the tensor already is contiguous, else a copy. Nested dicts are flattened with dotted names;
 * plain numbers and strings beside the tensors are skipped. `name` is used in error messages.
 *
 * Errors: `KvfoldError("FORMAT")` when the bytes are not a torch zip checkpoint, an entry fails its
 * CRC-32 or disagrees with the zip directory, the pickle uses an opcode outside the supported set,
 * references any global that a plain state dict does not need (the pickle is refused before it is
 * interpreted; nothing is ever executed) or is otherwise malformed, a view reaches past its storage,
 * or the state dict holds no tensors; `KvfoldError("OUT_OF_MEMORY")` when the tensors would take
 * more than `options.maxBytes`.
 *
 * @example
 * ```ts ignore
 * import { readTorchCheckpoint } from "./torch_bin.ts";
 * const tensors = readTorchCheckpoint(await Deno.readFile("pytorch_model.bin"), "pytorch_model.bin");
 * for (const [name, t] of tensors) console.log(name, t.dtype, t.shape);
 * ```
 */
export function readTorchCheckpoint(
  bytes: Uint8Array,
  name: string,
  options: TorchCheckpointOptions = {},
): Map<string, TensorView> {
  checkMaxBytes(options.maxBytes);
  return guarded(name, () => {
    const budget = options.maxBytes ?? defaultBudget(bytes.length);
    let used = 0;
    const reserve = (n: number, what: string) => {
      if (used + n > budget) throw outOfMemory(name, what, n, budget);
      used += n;
    };
    reserve(bytes.length, "the file");
    const zip = new ZipArchive(bytes, name, reserve);
    let pklName: string | undefined;
    for (const n of zip.entries.keys()) {
      if (n === "data.pkl" || n.endsWith("/data.pkl")) {
        if (pklName === undefined || n.length < pklName.length) pklName = n;
      }
    }
    if (pklName === undefined) {
      throw formatError(name, "the zip archive holds no data.pkl (not a torch.save file)");
    }
    const prefix = pklName.slice(0, pklName.length - "data.pkl".length);
    let bigEndian = false;
    const bo = zip.entries.get(`${prefix}byteorder`);
    if (bo !== undefined) {
      const text = new TextDecoder().decode(zip.read(bo)).trim();
      if (text !== "little" && text !== "big") throw formatError(name, `unknown byteorder "${text}"`);
      bigEndian = text === "big";
    }
    const root = unpickle(zip.read(zip.entries.get(pklName)!), {
      name,
      checkStorage(key, dtype, numel) {
        const entry = zip.entries.get(`${prefix}data/${key}`);
        if (entry === undefined) return "the archive lacks";
        if (entry.size < numel * DTYPE_SIZES[dtype]) {
          return `holds ${entry.size} bytes, fewer than ${numel} ${dtype} elements need`;
        }
        return null;
      },
    });
    const refs = collectTensors(root, name);
    // torch.save writes the storages its tensors reach, no others: one nobody uses lost its tensor.
    const referenced = new Set([...refs.values()].map((t) => t.storage.key));
    for (const n of zip.entries.keys()) {
      if (n.startsWith(`${prefix}data/`) && !referenced.has(n.slice(prefix.length + 5))) {
        throw formatError(name, `no tensor of the state dict uses storage ${n} (was a tensor lost?)`);
      }
    }

    const storages = new Map<string, Uint8Array>();
    const storage = (t: PTensor): Uint8Array => {
      const { key, dtype } = t.storage;
      const cached = storages.get(key);
      if (cached !== undefined) return cached;
      let data = zip.read(zip.entries.get(`${prefix}data/${key}`)!);
      const esize = DTYPE_SIZES[dtype];
      if (bigEndian && esize > 1) {
        reserve(data.length, `storage ${key} (byte-swapped)`);
        data = data.slice();
        for (let i = 0; i + esize <= data.length; i += esize) data.subarray(i, i + esize).reverse();
      }
      storages.set(key, data);
      return data;
    };
    const out = new Map<string, TensorView>();
    for (const [key, t] of refs) {
      const data = materialise(t, storage(t), key, name, reserve);
      out.set(key, { dtype: t.storage.dtype, shape: t.shape, data });
    }
    zip.verifyUnread();
    return out;
  });
}

// ---------------------------------------------------------------------------------------------
// Conversion

async function statOrNull(path: string): Promise<Deno.FileInfo | null> {
  try {
    return await Deno.stat(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return null;
    throw new KvfoldError("IO", `Cannot convert ${path}: ${e instanceof Error ? e.message : String(e)}`, {
      cause: e,
    });
  }
}

async function readBin(path: string, options: TorchCheckpointOptions): Promise<Map<string, TensorView>> {
  const info = await statOrNull(path);
  const budget = options.maxBytes ?? defaultBudget(info?.size ?? 0);
  if (info !== null && info.isFile && info.size > budget) {
    throw outOfMemory(path, "the file", info.size, budget);
  }
  const bytes = await readBoundedFile(path, { action: "convert", maxBytes: budget });
  return readTorchCheckpoint(bytes, path, { maxBytes: budget });
}

function sortedInputs(tensors: Map<string, TensorView>, names?: Iterable<string>) {
  const list = [...(names ?? tensors.keys())].sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
  return list.map((n) => {
    const t = tensors.get(n)!;
    return { name: n, dtype: t.dtype, shape: t.shape, data: t.data };
  });
}

async function ensureDir(path: string): Promise<void> {
  try {
    await Deno.mkdir(path, { recursive: true });
  } catch (e) {
    throw new KvfoldError("IO", `Cannot create ${path}: ${e instanceof Error ? e.message : String(e)}`, {
      cause: e,
    });
  }
}

const LLAMA_FAMILY: ReadonlySet<string> = new Set(["llama", "mistral", "qwen2"]);

/**
 * The tensors a Llama-family `config.json` requires, by name (shapes are the loader's to check):
 * the names `expected_tensors` in ffi/src/model_config.cpp lists as not optional. Null when the
 * config is of another model type, so that nothing can be said.
 */
function requiredTensors(config: unknown, path: string): string[] | null {
  if (config === null || typeof config !== "object" || Array.isArray(config)) {
    throw new KvfoldError("FORMAT", `Cannot convert: ${path} is not a JSON object`);
  }
  const c = config as Record<string, unknown>;
  if (typeof c.model_type !== "string" || !LLAMA_FAMILY.has(c.model_type)) return null;
  const layers = c.num_hidden_layers;
  if (typeof layers !== "number" || !Number.isInteger(layers) || layers < 1 || layers > 4096) {
    throw new KvfoldError("FORMAT", `Cannot convert: ${path} has no valid num_hidden_layers`);
  }
  const qwen2 = c.model_type === "qwen2";
  const qkvBias = qwen2 || (c.model_type === "llama" && c.attention_bias === true);
  const names = ["model.embed_tokens.weight", "model.norm.weight"];
  if (c.tie_word_embeddings !== true) names.push("lm_head.weight");
  for (let i = 0; i < layers; i++) {
    const p = `model.layers.${i}.`;
    for (
      const s of [
        "input_layernorm.weight",
        "post_attention_layernorm.weight",
        "self_attn.q_proj.weight",
        "self_attn.k_proj.weight",
        "self_attn.v_proj.weight",
        "self_attn.o_proj.weight",
        "mlp.gate_proj.weight",
        "mlp.up_proj.weight",
        "mlp.down_proj.weight",
      ]
    ) names.push(p + s);
    if (qkvBias) { for (const m of ["q", "k", "v"]) names.push(`${p}self_attn.${m}_proj.bias`); }
    if (c.model_type === "llama" && c.attention_bias === true) names.push(`${p}self_attn.o_proj.bias`);
  }
  return names;
}

/**
 * Refuses a model checkpoint that lacks a tensor its `config.json` (in `dir`) requires, so that a
 * damaged pickle cannot silently drop one (say `lm_head.weight`). No config, nothing to check.
 */
async function checkAgainstConfig(dir: string, names: Iterable<string>, what: string): Promise<void> {
  const path = join(dir, "config.json");
  const info = await statOrNull(path);
  if (info === null) return;
  const required = requiredTensors(await readBoundedJson(path, { action: "convert" }), path);
  if (required === null) return;
  const have = new Set(names);
  const missing = required.filter((n) => !have.has(n));
  if (missing.length > 0) {
    throw new KvfoldError(
      "FORMAT",
      `Cannot convert ${what}: it lacks tensor${missing.length > 1 ? "s" : ""} ` +
        `${missing.slice(0, 5).join(", ")}${missing.length > 5 ? ` and ${missing.length - 5} more` : ""}, ` +
        `which ${path} requires`,
    );
  }
}

const METADATA = { format: "pt" };
const SMALL_FILE = 64 * 1024 * 1024;

/**
 * Converts a PyTorch checkpoint to safetensors. `src` may be:
 * - a `.bin` file: written to `dst` when `dst` ends in `.safetensors`, else into folder `dst` as
 *   `model.safetensors` (`adapter_model.safetensors` for `adapter_model.bin`);
 * - a folder with `pytorch_model.bin.index.json` (shards become `model-0000k-of-0000n.safetensors`
 *   plus `model.safetensors.index.json`, same grouping), `pytorch_model.bin` (→ `model.safetensors`)
 *   and/or `adapter_model.bin` (→ `adapter_model.safetensors`). Other small files of the folder
 *   (`config.json`, `adapter_config.json`, tokenizer files) are copied into folder `dst`.
 *
 * When a Llama-family `config.json` lies beside a model checkpoint, every tensor it requires must be
 * present. Tensors are written sorted by name, with `{"format": "pt"}` metadata. One checkpoint file
 * is held in memory at a time, within `options.maxBytes`. Returns the paths written (safetensors
 * files, index and copied files) and the number of tensors converted.
 *
 * Errors: `KvfoldError("IO")` when `src` is missing or files cannot be read or written,
 * `KvfoldError("FORMAT")` when a checkpoint is malformed, corrupt, its pickle is refused, or it
 * lacks a tensor the config requires; `KvfoldError("OUT_OF_MEMORY")` past the memory budget.
 *
 * @example
 * ```ts ignore
 * import { convertTorchCheckpoint } from "./torch_bin.ts";
 * const { files, tensors } = await convertTorchCheckpoint("./llama-bin", "./llama-st");
 * console.log(files, tensors);
 * ```
 */
export async function convertTorchCheckpoint(
  src: string,
  dst: string,
  options: TorchCheckpointOptions = {},
): Promise<{ files: string[]; tensors: number }> {
  checkMaxBytes(options.maxBytes);
  try {
    return await convert(src, dst, options);
  } catch (e) {
    throw asKvfoldError(src, e);
  }
}

async function convert(
  src: string,
  dst: string,
  options: TorchCheckpointOptions,
): Promise<{ files: string[]; tensors: number }> {
  const info = await statOrNull(src);
  if (info === null) throw new KvfoldError("IO", `Cannot convert ${src}: it does not exist`);
  const files: string[] = [];
  let count = 0;

  if (info.isFile) {
    const tensors = await readBin(src, options);
    if (basename(src) === "pytorch_model.bin") await checkAgainstConfig(dirname(src), tensors.keys(), src);
    let out = dst;
    if (!dst.endsWith(".safetensors")) {
      await ensureDir(dst);
      out = join(
        dst,
        basename(src) === "adapter_model.bin" ? "adapter_model.safetensors" : "model.safetensors",
      );
    }
    await writeSafetensorsFile(out, sortedInputs(tensors), METADATA);
    return { files: [out], tensors: tensors.size };
  }

  const indexPath = join(src, "pytorch_model.bin.index.json");
  const single = join(src, "pytorch_model.bin");
  const adapter = join(src, "adapter_model.bin");
  const hasIndex = (await statOrNull(indexPath))?.isFile === true;
  const hasSingle = (await statOrNull(single))?.isFile === true;
  const hasAdapter = (await statOrNull(adapter))?.isFile === true;
  if (!hasIndex && !hasSingle && !hasAdapter) {
    throw new KvfoldError(
      "FORMAT",
      `Cannot convert ${src}: it holds no pytorch_model.bin, pytorch_model.bin.index.json or adapter_model.bin`,
    );
  }
  await ensureDir(dst);

  if (hasIndex) {
    const index = await readBoundedJson(indexPath, { action: "convert" }) as { weight_map?: unknown };
    const weightMap = index?.weight_map as Record<string, string> | null | undefined;
    if (weightMap === null || typeof weightMap !== "object" || Array.isArray(weightMap)) {
      throw new KvfoldError("FORMAT", `Cannot convert ${indexPath}: it has no weight_map`);
    }
    if (Object.keys(weightMap).length === 0) {
      throw new KvfoldError("FORMAT", `Cannot convert ${indexPath}: its weight_map names no tensors`);
    }
    // Every tensor of the index must turn up in its shard (checked below), so check the index.
    await checkAgainstConfig(src, Object.keys(weightMap), indexPath);
    const shards = [...new Set(Object.values(weightMap))].sort();
    const n = shards.length;
    const pad = (k: number) => String(k).padStart(5, "0");
    const newWeightMap: Record<string, string> = {};
    let totalSize = 0;
    for (let i = 0; i < n; i++) {
      const shard = shards[i];
      if (typeof shard !== "string" || shard.includes("/") || shard.includes("\\") || shard.startsWith(".")) {
        throw new KvfoldError("FORMAT", `Cannot convert ${indexPath}: bad shard name ${String(shard)}`);
      }
      const shardPath = join(src, shard);
      const tensors = await readBin(shardPath, options);
      const outName = `model-${pad(i + 1)}-of-${pad(n)}.safetensors`;
      const names = Object.keys(weightMap).filter((k) => weightMap[k] === shard);
      for (const k of names) {
        if (!tensors.has(k)) {
          throw new KvfoldError(
            "FORMAT",
            `Cannot convert ${shardPath}: it lacks tensor ${k} named in the index`,
          );
        }
      }
      // Tensors present in the shard but absent from the index still belong to this shard.
      for (const k of tensors.keys()) if (weightMap[k] === undefined) names.push(k);
      const inputs = sortedInputs(tensors, names);
      for (const t of inputs) {
        newWeightMap[t.name] = outName;
        totalSize += t.data.length;
      }
      const out = join(dst, outName);
      await writeSafetensorsFile(out, inputs, METADATA);
      files.push(out);
      count += inputs.length;
    }
    const sortedMap: Record<string, string> = {};
    for (const k of Object.keys(newWeightMap).sort()) sortedMap[k] = newWeightMap[k];
    const indexOut = join(dst, "model.safetensors.index.json");
    try {
      await Deno.writeTextFile(
        indexOut,
        JSON.stringify({ metadata: { total_size: totalSize }, weight_map: sortedMap }, null, 2) + "\n",
      );
    } catch (e) {
      throw new KvfoldError("IO", `Cannot write ${indexOut}: ${e instanceof Error ? e.message : e}`, {
        cause: e,
      });
    }
    files.push(indexOut);
  } else if (hasSingle) {
    const tensors = await readBin(single, options);
    await checkAgainstConfig(src, tensors.keys(), single);
    const out = join(dst, "model.safetensors");
    await writeSafetensorsFile(out, sortedInputs(tensors), METADATA);
    files.push(out);
    count += tensors.size;
  }
  if (hasAdapter) {
    const tensors = await readBin(adapter, options);
    const out = join(dst, "adapter_model.safetensors");
    await writeSafetensorsFile(out, sortedInputs(tensors), METADATA);
    files.push(out);
    count += tensors.size;
  }

  // Copy the small companion files (configs, tokenizer) unless converting in place.
  if (resolve(src) !== resolve(dst)) {
    try {
      for await (const e of Deno.readDir(src)) {
        if (!e.isFile || e.name.startsWith(".")) continue;
        if (/\.(bin|safetensors|pt|pth|ckpt)$/.test(e.name) || e.name === "pytorch_model.bin.index.json") {
          continue;
        }
        const from = join(src, e.name);
        if ((await Deno.stat(from)).size > SMALL_FILE) continue;
        const to = join(dst, e.name);
        await Deno.copyFile(from, to);
        files.push(to);
      }
    } catch (e) {
      if (e instanceof KvfoldError) throw e;
      throw new KvfoldError("IO", `Cannot copy files of ${src}: ${e instanceof Error ? e.message : e}`, {
        cause: e,
      });
    }
  }
  return { files, tensors: count };
}
