/**
 * `kvfold build`: build the native library (done on first use anyway).
 *
 * @module
 */

import { ensureNativeLibrary } from "../mod.ts";
import { BOOLEAN, parseCommand } from "./_options.ts";
import { note } from "./_console.ts";

export async function cmdBuild(args: string[]) {
  const { values: v } = parseCommand(args, { force: BOOLEAN });
  const path = await ensureNativeLibrary({ force: v.force });
  note(`libkvfold: ${path}`);
}
