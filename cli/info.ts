/**
 * `kvfold info`: version, backends built, threads, and whether a GPU is found and usable.
 *
 * @module
 */

import { Kvfold } from "../mod.ts";
import { COMMON, defineCommand, parseCommand } from "./_options.ts";
import { write } from "./_console.ts";

/** `kvfold info`'s usage and options. */
export const INFO = defineCommand({
  name: "info",
  summary: "version, backends built, threads, GPU found or not",
  usage: ["info"],
  options: { ...COMMON },
});

export async function cmdInfo(args: string[]) {
  parseCommand(args, INFO);
  const info = await Kvfold.info();
  using kv = await Kvfold.open({ backend: "cpu" });
  let build: { cxx?: string; nvcc?: string; cuda_built?: boolean; cuda_archs?: string[] } = {};
  try {
    build = JSON.parse(Deno.readTextFileSync(info.libraryPath.replace(/[^/]+$/, "build-info.json")));
  } catch { /* a prebuilt library ($KVFOLD_LIB) may come without it */ }
  const lines = [
    `kvfold ${info.version} (ABI ${info.abiVersion})`,
    `library:        ${info.libraryPath}`,
    `compiler:       ${build.cxx ?? "unknown"}; nvcc: ${build.nvcc ?? "unknown"}`,
    `backends built: ${info.backendsBuilt.join(", ")}${
      build.cuda_archs?.length ? ` (cuda for ${build.cuda_archs.join(", ")})` : ""
    }`,
    `cpu:            ${kv.name}, ${kv.threads} thread(s)`,
    `gpu:            ${
      info.gpuCount > 0
        ? `${info.gpuCount} CUDA device(s)`
        : !info.backendsBuilt.includes("cuda")
        ? gpuVisible() ? "an NVIDIA device is present, but the CUDA backend is not built" : "none found"
        : `none usable (${await cudaOpenError()})`
    }`,
  ];
  if (info.backendsBuilt.includes("cuda")) {
    let blas: string;
    try {
      blas = (await Kvfold.cublasLibrary()) || "none found; kvfold's own matrix kernels run";
    } catch (e) {
      blas = `error: ${(e as Error).message}`;
    }
    lines.push(`cublas:         ${blas}`);
  }
  write(lines.join("\n") + "\n");
}

// Why a cuda engine does not open here, in the library's words ("no NVIDIA driver is installed ...").
async function cudaOpenError(): Promise<string> {
  try {
    (await Kvfold.open({ backend: "cuda" }))[Symbol.dispose]();
    return "a cuda engine opens";
  } catch (e) {
    return (e as Error).message.replace(/^Cannot open engine: (cuda backend: )?/i, "");
  }
}

function gpuVisible(): boolean {
  try {
    return Deno.statSync("/dev/nvidia0").isFile === false;
  } catch {
    return false;
  }
}
