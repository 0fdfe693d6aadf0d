/**
 * `kvfold convert`: PyTorch `.bin` checkpoints to safetensors.
 *
 * @module
 */

import { convertTorchCheckpoint, KvfoldError } from "../mod.ts";
import { defineCommand, parseCommand, str } from "./_options.ts";
import { note } from "./_console.ts";

/** "4G", "512MiB", "1e9": a byte count for --max-memory (K/M/G/T are powers of 1024). */
function parseByteSize(text: string, flag: string): number {
  const m = /^(\d+(?:\.\d+)?(?:e\d+)?)\s*([kmgt]?)(?:i?b)?$/i.exec(text.trim());
  const bytes = m ? Math.floor(Number(m[1]) * 1024 ** " kmgt".indexOf((m[2] || " ").toLowerCase())) : NaN;
  if (!Number.isSafeInteger(bytes) || bytes <= 0) {
    throw new KvfoldError(
      "INVALID_ARGUMENT",
      `Cannot convert: ${flag} ${text} is not a size (e.g. 8G, 512M)`,
    );
  }
  return bytes;
}

/** `kvfold convert`'s usage and options. */
export const CONVERT = defineCommand({
  name: "convert",
  summary: "convert PyTorch .bin checkpoints to safetensors",
  usage: ["convert SRC DST [--max-memory SIZE]"],
  details: "SRC is a torch.save zip .bin file or a folder of them (sharded checkpoints, PEFT\n" +
    "adapter_model.bin). Non-tensor pickles and corrupt files are refused.",
  options: { "max-memory": str("SIZE", "bound on the memory per file (e.g. 8G, 512M)") },
  positionals: true,
});

export async function cmdConvert(args: string[]) {
  const { values: v, positionals } = parseCommand(args, CONVERT);
  const [src, dst] = positionals;
  if (!src || !dst || positionals.length > 2) {
    throw new KvfoldError(
      "INVALID_ARGUMENT",
      "Usage: kvfold convert SRC DST [--max-memory SIZE] (a .bin file or a folder with PyTorch checkpoints)",
    );
  }
  const maxBytes = v["max-memory"] === undefined ? undefined : parseByteSize(v["max-memory"], "--max-memory");
  const r = await convertTorchCheckpoint(src, dst, { maxBytes });
  note(`converted ${r.tensors} tensor(s): ${r.files.join(", ")}`);
}
