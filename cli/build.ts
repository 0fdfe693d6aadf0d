/**
 * `kvfold build`: build the native library (done on first use anyway).
 *
 * @module
 */

import { ensureNativeLibrary } from "../mod.ts";
import { bool, defineCommand, parseCommand } from "./_options.ts";
import { note } from "./_console.ts";

/** `kvfold build`'s usage and options. */
export const BUILD = defineCommand({
  name: "build",
  summary: "build the native library (done on first use anyway)",
  usage: ["build [--force]"],
  details: "CPU-only and CUDA builds live side by side in build/cpu and build/cuda (KVFOLD_CUDA=0|1;\n" +
    "default: CUDA where nvcc is found); a rebuild says which file or setting changed.",
  options: { force: bool("rebuild even when the library is up to date") },
});

export async function cmdBuild(args: string[]) {
  const { values: v } = parseCommand(args, BUILD);
  const path = await ensureNativeLibrary({ force: v.force });
  note(`libkvfold: ${path}`);
}
