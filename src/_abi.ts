/**
 * The layout of every public struct of `ffi/include/kvfold.h`, in one table per struct: field name,
 * C type and byte offset, as the header declares them (x86-64 and arm64 C layout). The Deno and the
 * Node.js bindings both read and write structs only through {@link NativeStruct}, so a layout
 * change is made here once. Two checks keep the tables true:
 *
 * - at module load, every table must be the natural C layout of its fields (offsets aligned, in
 *   order, no overlap, size rounded to the largest alignment), which catches a mistyped offset;
 * - at library load (`native()` in `_binding.ts`), every size must equal `kf_struct_size(name)`.
 *
 * @module
 */

/** A C field type: fixed-size integers, floats, a pointer, or a `char[n]` array. */
export type FieldType = "i32" | "u32" | "i64" | "u64" | "f32" | "f64" | "ptr" | `char[${number}]`;

/** One field: its C type and byte offset. */
export type Field = readonly [type: FieldType, offset: number];

const STRUCT_TABLES = {
  kf_control: {
    size: 512,
    fields: {
      cancel: ["i32", 0],
      reserved: ["i32", 4],
      done: ["i64", 8],
      total: ["i64", 16],
      error: ["char[488]", 24],
    },
  },
  kf_engine_params: {
    size: 16,
    fields: { backend: ["i32", 0], n_threads: ["i32", 4], device: ["i32", 8], memory_mib: ["i32", 12] },
  },
  kf_engine_info: {
    size: 72,
    fields: { backend: ["i32", 0], n_threads: ["i32", 4], name: ["char[64]", 8] },
  },
  kf_model_params: {
    size: 8,
    fields: { weight_dtype: ["i32", 0], use_mmap: ["i32", 4] },
  },
  kf_model_info: {
    size: 88,
    fields: {
      vocab_size: ["i32", 0],
      hidden_size: ["i32", 4],
      intermediate_size: ["i32", 8],
      n_layers: ["i32", 12],
      n_heads: ["i32", 16],
      n_kv_heads: ["i32", 20],
      head_dim: ["i32", 24],
      max_position_embeddings: ["i32", 28],
      weight_dtype: ["i32", 32],
      tied_embeddings: ["i32", 36],
      n_params: ["i64", 40],
      weight_bytes: ["i64", 48],
      model_type: ["char[32]", 56],
    },
  },
  kf_session_params: {
    size: 40,
    fields: {
      n_ctx: ["i32", 0],
      n_batch: ["i32", 4],
      cache_kind: ["i32", 8],
      slots: ["i32", 12],
      segment: ["i32", 16],
      sinks: ["i32", 20],
      window: ["i32", 24],
      reserved: ["i32", 28],
      heads: ["ptr", 32],
    },
  },
  kf_session_info: {
    size: 80,
    fields: {
      n_past: ["i32", 0],
      n_ctx: ["i32", 4],
      cache_kind: ["i32", 8],
      has_logits: ["i32", 12],
      kv_bytes: ["i64", 16],
      kv_slots: ["i64", 24],
      scratch_bytes: ["i64", 32],
      kv_slots_used: ["i64", 40],
      kv_slots_peak: ["i64", 48],
      compressions: ["i64", 56],
      compress_ns: ["i64", 64],
      slots: ["i32", 72],
      segment: ["i32", 76],
    },
  },
  kf_sampler_params: {
    size: 32,
    fields: {
      seed: ["u64", 0],
      temperature: ["f32", 8],
      top_p: ["f32", 12],
      top_k: ["i32", 16],
      repetition_penalty: ["f32", 20],
      repeat_last_n: ["i32", 24],
      min_p: ["f32", 28],
    },
  },
  kf_generate_params: {
    size: 16,
    fields: { pending: ["i32", 0], max_tokens: ["i32", 4], budget_us: ["i64", 8] },
  },
  kf_adapter_info: {
    size: 40,
    fields: {
      max_rank: ["i32", 0],
      proj_mask: ["u32", 4],
      n_users: ["i32", 8],
      rslora: ["i32", 12],
      alpha: ["f64", 16],
      n_params: ["i64", 24],
      bytes: ["i64", 32],
    },
  },
  kf_lococo_heads_info: {
    size: 40,
    fields: {
      slots: ["i32", 0],
      fused_slots: ["i32", 4],
      kernel: ["i32", 8],
      segment: ["i32", 12],
      keep_rate: ["f32", 16],
      n_layers: ["i32", 20],
      head_dim: ["i32", 24],
      n_users: ["i32", 28],
      bytes: ["i64", 32],
    },
  },
  kf_lora_train_params: {
    size: 64,
    fields: {
      rank: ["i32", 0],
      alpha: ["f32", 4],
      target_mask: ["u32", 8],
      use_rslora: ["i32", 12],
      seed: ["u64", 16],
      lr: ["f32", 24],
      weight_decay: ["f32", 28],
      beta1: ["f32", 32],
      beta2: ["f32", 36],
      eps: ["f32", 40],
      max_grad_norm: ["f32", 44],
      min_lr_ratio: ["f32", 48],
      warmup_steps: ["i32", 52],
      total_steps: ["i32", 56],
      reserved: ["i32", 60],
    },
  },
  kf_lora_trainer_info: {
    size: 40,
    fields: {
      rank: ["i32", 0],
      target_mask: ["u32", 4],
      n_layers: ["i32", 8],
      accumulated: ["i32", 12],
      step: ["i64", 16],
      n_params: ["i64", 24],
      alpha: ["f32", 32],
      scale: ["f32", 36],
    },
  },
  kf_train_step_info: {
    size: 24,
    fields: {
      step: ["i64", 0],
      lr: ["f32", 8],
      grad_norm: ["f32", 12],
      examples: ["i32", 16],
      reserved: ["i32", 20],
    },
  },
  kf_lococo_train_params: {
    size: 64,
    fields: {
      slots: ["i32", 0],
      segment: ["i32", 4],
      kernel: ["i32", 8],
      keep_rate: ["f32", 12],
      seed: ["u64", 16],
      init_lambda: ["f32", 24],
      lr: ["f32", 28],
      weight_decay: ["f32", 32],
      beta1: ["f32", 36],
      beta2: ["f32", 40],
      eps: ["f32", 44],
      max_grad_norm: ["f32", 48],
      min_lr_ratio: ["f32", 52],
      warmup_steps: ["i32", 56],
      total_steps: ["i32", 60],
    },
  },
  kf_model_train_params: {
    size: 72,
    fields: {
      seed: ["u64", 0],
      lr: ["f32", 8],
      weight_decay: ["f32", 12],
      beta1: ["f32", 16],
      beta2: ["f32", 20],
      eps: ["f32", 24],
      max_grad_norm: ["f32", 28],
      min_lr_ratio: ["f32", 32],
      warmup_steps: ["i32", 36],
      total_steps: ["i32", 40],
      summary_length: ["i32", 44],
      segment_length: ["i32", 48],
      backprop_segments: ["i32", 52],
      lm_weight: ["f32", 56],
      qa_weight: ["f32", 60],
      init_std: ["f32", 64],
      reserved: ["i32", 68],
    },
  },
  kf_model_trainer_info: {
    size: 32,
    fields: {
      step: ["i64", 0],
      n_params: ["i64", 8],
      accumulated: ["i32", 16],
      n_tensors: ["i32", 20],
      summary_length: ["i32", 24],
      tied: ["i32", 28],
    },
  },
} as const satisfies Record<string, { size: number; fields: Record<string, Field> }>;

/** The name of a public native struct, e.g. `"kf_session_params"`. */
export type StructName = keyof typeof STRUCT_TABLES;
/** The field names of one struct. */
export type FieldName<N extends StructName> = keyof (typeof STRUCT_TABLES)[N]["fields"] & string;

/** Every struct's table, by name. */
export const STRUCTS: Readonly<
  Record<StructName, { size: number; fields: Readonly<Record<string, Field>> }>
> = STRUCT_TABLES;

/** Size and alignment of a field type. */
function sizeOf(type: FieldType): { size: number; align: number } {
  const arr = /^char\[(\d+)\]$/.exec(type);
  if (arr) return { size: Number(arr[1]), align: 1 };
  const size = type === "i32" || type === "u32" || type === "f32" ? 4 : 8;
  return { size, align: size };
}

/**
 * Throws unless `table` is the natural C layout of its fields in declaration order: each offset the
 * previous end rounded up to the field's alignment, and `size` the end rounded up to the largest one.
 */
export function checkNaturalLayout(
  name: string,
  table: { size: number; fields: Readonly<Record<string, Field>> },
): void {
  let end = 0, maxAlign = 1;
  for (const [field, [type, offset]] of Object.entries(table.fields)) {
    const { size, align } = sizeOf(type);
    const want = Math.ceil(end / align) * align;
    if (offset !== want) {
      throw new Error(`ABI table ${name}.${field}: offset ${offset}, the C layout puts it at ${want}`);
    }
    end = offset + size;
    maxAlign = Math.max(maxAlign, align);
  }
  const size = Math.ceil(end / maxAlign) * maxAlign;
  if (table.size !== size) throw new Error(`ABI table ${name}: size ${table.size}, its fields make ${size}`);
}

for (const [name, table] of Object.entries(STRUCTS)) checkNaturalLayout(name, table);

/**
 * The field types of a struct in order, as `Deno.dlopen` declares a struct result (`char[n]`
 * becomes n `u8`s): `{ struct: structFields("kf_engine_params") }`.
 */
export function structFields(name: StructName): Deno.NativeType[] {
  const out: Deno.NativeType[] = [];
  for (const [type] of Object.values(STRUCTS[name].fields)) {
    const { size } = sizeOf(type);
    if (type.startsWith("char[")) { for (let i = 0; i < size; i++) out.push("u8"); }
    else out.push(type === "ptr" ? "pointer" : type as Deno.NativeType);
  }
  return out;
}

/**
 * One native struct in an off-heap buffer, read and written by field name through its table.
 * 64-bit integers read as numbers (exact up to 2^53, which sizes and counts stay under) and take a
 * number or a bigint; pointers take a `Deno.PointerValue`.
 *
 * @example
 * ```ts
 * import { NativeStruct } from "./_abi.ts";
 * const p = new NativeStruct("kf_engine_params").set("n_threads", 4);
 * console.log(p.get("n_threads"), p.buf.length); // 4 16
 * ```
 */
export class NativeStruct<N extends StructName> {
  /** The struct's bytes, handed to native calls as a `buffer` argument. */
  readonly buf: Uint8Array<ArrayBuffer>;
  readonly #view: DataView;
  readonly #fields: Readonly<Record<string, Field>>;

  /** A zeroed struct, or a copy of `init` (e.g. what `kf_*_default_params()` returned). */
  constructor(readonly name: N, init?: Uint8Array) {
    const table = STRUCTS[name];
    this.buf = new Uint8Array(new ArrayBuffer(table.size));
    if (init !== undefined) {
      if (init.byteLength !== table.size) {
        throw new RangeError(
          `Cannot copy ${name}: ${init.byteLength} bytes given, the struct has ${table.size}`,
        );
      }
      this.buf.set(init);
    }
    this.#view = new DataView(this.buf.buffer);
    this.#fields = table.fields;
  }

  #field(field: string): Field {
    const f = this.#fields[field];
    if (f === undefined) throw new TypeError(`Cannot use ${this.name}.${field}: no such field`);
    return f;
  }

  /** A numeric field's value (64-bit integers as numbers; pointers as their address). */
  get(field: FieldName<N>): number {
    const [type, o] = this.#field(field);
    const v = this.#view;
    switch (type) {
      case "i32":
        return v.getInt32(o, true);
      case "u32":
        return v.getUint32(o, true);
      case "f32":
        return v.getFloat32(o, true);
      case "f64":
        return v.getFloat64(o, true);
      case "i64":
        return Number(v.getBigInt64(o, true));
      case "u64":
      case "ptr":
        return Number(v.getBigUint64(o, true));
      default:
        throw new TypeError(`Cannot read ${this.name}.${field} as a number: it is ${type}`);
    }
  }

  /** A `char[n]` field up to its first NUL, as UTF-8. */
  text(field: FieldName<N>): string {
    const [type, o] = this.#field(field);
    if (!type.startsWith("char[")) {
      throw new TypeError(`Cannot read ${this.name}.${field} as text: it is ${type}`);
    }
    const bytes = this.buf.subarray(o, o + sizeOf(type).size);
    const end = bytes.indexOf(0);
    return new TextDecoder().decode(end < 0 ? bytes : bytes.subarray(0, end));
  }

  /** Writes a numeric field; returns the struct for chaining. */
  set(field: FieldName<N>, value: number | bigint): this {
    const [type, o] = this.#field(field);
    const v = this.#view;
    switch (type) {
      case "i32":
        v.setInt32(o, Number(value), true);
        break;
      case "u32":
        v.setUint32(o, Number(value), true);
        break;
      case "f32":
        v.setFloat32(o, Number(value), true);
        break;
      case "f64":
        v.setFloat64(o, Number(value), true);
        break;
      case "i64":
        v.setBigInt64(o, BigInt(value), true);
        break;
      case "u64":
      case "ptr":
        v.setBigUint64(o, BigInt(value), true);
        break;
      default:
        throw new TypeError(`Cannot write ${this.name}.${field} as a number: it is ${type}`);
    }
    return this;
  }

  /** Writes a pointer field (null writes 0); returns the struct for chaining. */
  setPointer(field: FieldName<N>, pointer: Deno.PointerValue): this {
    if (this.#field(field)[0] !== "ptr") {
      throw new TypeError(`Cannot write ${this.name}.${field} as a pointer`);
    }
    return this.set(field, BigInt(Deno.UnsafePointer.value(pointer)));
  }
}
