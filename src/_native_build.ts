/**
 * Finds or builds `libkvfold.so`. The library is rebuilt whenever a file under `ffi/` changes: a
 * SHA-256 of every source is kept beside the library, and a lock directory keeps concurrent test
 * processes from building at once.
 *
 * @module
 */

import { KvfoldError } from "./errors.ts";

// The Node.js/Bun build (`npm run build`) runs this file from dist/src/, one folder deeper than src/.
const ROOT = new URL(
  import.meta.url.endsWith("/dist/src/_native_build.js") ? "../../" : "../",
  import.meta.url,
);

/** Absolute path of the repository root (where `ffi/` and `build/` live). */
export function repoRoot(): string {
  return decodeURIComponent(ROOT.pathname).replace(/\/$/, "");
}

/**
 * Where the built library and its stamp live: `$KVFOLD_BUILD_DIR`, else `<repo>/build`, or for a
 * sanitizer build (`$KVFOLD_SANITIZE`) `<repo>/build/sanitize-<list>`, so it never replaces the
 * normal library.
 */
export function buildDir(): string {
  const fixed = Deno.env.get("KVFOLD_BUILD_DIR");
  if (fixed) return fixed;
  const sanitize = Deno.env.get("KVFOLD_SANITIZE");
  if (sanitize) return `${repoRoot()}/build/sanitize-${sanitize.replace(/[^a-z]+/g, "-")}`;
  return `${repoRoot()}/build`;
}

async function listFiles(dir: string): Promise<string[]> {
  const out: string[] = [];
  for await (const e of Deno.readDir(dir)) {
    const p = `${dir}/${e.name}`;
    if (e.isDirectory) out.push(...await listFiles(p));
    else if (e.isFile) out.push(p);
  }
  return out.sort();
}

/** The environment variables of `ffi/build.sh` that change what it builds. */
const BUILD_ENV = [
  "CXX",
  "KVFOLD_CXXFLAGS",
  "KVFOLD_NATIVE",
  "NVCC",
  "KVFOLD_CUDA",
  "KVFOLD_CUDA_ARCHS",
  "KVFOLD_NVCCFLAGS",
  "KVFOLD_SANITIZE",
];

/**
 * Hash of every file under `ffi/` plus the build settings that change the output (`env` overrides the
 * process environment, as {@link EnsureLibraryOptions.cuda} does).
 */
export async function sourceHash(
  root: string = repoRoot(),
  env: Record<string, string> = {},
): Promise<string> {
  const files = (await listFiles(`${root}/ffi`)).filter((f) => !f.includes("/tests/"));
  const parts: Uint8Array[] = [];
  const enc = new TextEncoder();
  for (const f of files) {
    parts.push(enc.encode(f.slice(root.length) + "\0"));
    parts.push(await Deno.readFile(f));
  }
  parts.push(enc.encode(BUILD_ENV.map((k) => `${k}=${env[k] ?? Deno.env.get(k) ?? ""}`).join(";")));
  const all = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let o = 0;
  for (const p of parts) {
    all.set(p, o);
    o += p.length;
  }
  const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", all));
  return Array.from(digest, (b) => b.toString(16).padStart(2, "0")).join("");
}

async function readText(path: string): Promise<string | null> {
  try {
    return (await Deno.readTextFile(path)).trim();
  } catch {
    return null;
  }
}

/** Options of {@link ensureNativeLibrary}. */
export interface EnsureLibraryOptions {
  /** Source tree holding `ffi/` (default: this repository). */
  root?: string;
  /** Where to put the library (default: {@link buildDir}). */
  buildDir?: string;
  /** Rebuild even when the stamp matches. */
  force?: boolean;
  /** Called with progress lines ("building libkvfold.so ..."). Default: stderr. */
  log?: (line: string) => void;
  /**
   * `false` builds without the CUDA backend (`KVFOLD_CUDA=0`) even where nvcc is found: for tests of the
   * build machinery itself, which need not pay for compiling the kernels again. Default: the
   * environment decides (`ffi/build.sh` builds CUDA whenever nvcc is on PATH).
   */
  cuda?: boolean;
}

/**
 * Returns the path of an up-to-date `libkvfold.so`, building it first if it is missing or stale.
 * `$KVFOLD_LIB` names a prebuilt library and skips all of this.
 */
export async function ensureNativeLibrary(options: EnsureLibraryOptions = {}): Promise<string> {
  const fixed = Deno.env.get("KVFOLD_LIB");
  if (fixed && !options.root) return fixed;
  const log = options.log ?? ((l: string) => console.error(l));
  const root = options.root ?? repoRoot();
  const dir = options.buildDir ?? buildDir();
  const lib = `${dir}/libkvfold.so`;
  const stampPath = `${dir}/libkvfold.stamp`;
  const env: Record<string, string> = options.cuda === false ? { KVFOLD_CUDA: "0" } : {};
  const hash = await sourceHash(root, env);
  const fresh = async () => !options.force && (await readText(stampPath)) === hash && (await exists(lib));
  if (await fresh()) return lib;

  await Deno.mkdir(dir, { recursive: true });
  const lockDir = `${dir}/.build-lock`;
  const started = Date.now();
  // mkdir is atomic: whoever creates the lock builds, the others wait for the stamp.
  while (true) {
    try {
      await Deno.mkdir(lockDir);
      break;
    } catch (e) {
      if (!(e instanceof Deno.errors.AlreadyExists)) throw e;
      if (await fresh()) return lib;
      const st = await Deno.stat(lockDir).catch(() => null);
      if (st?.mtime && Date.now() - st.mtime.getTime() > 15 * 60_000) {
        await Deno.remove(lockDir, { recursive: true }).catch(() => {}); // a crashed builder's lock
      }
      if (Date.now() - started > 20 * 60_000) {
        throw new KvfoldError("BUILD", `Cannot build libkvfold.so: ${lockDir} has been held for 20 minutes`);
      }
      await new Promise((r) => setTimeout(r, 250));
    }
  }
  try {
    if (await fresh()) return lib;
    log(`kvfold: building ${lib} (sources changed or library missing) ...`);
    const t0 = performance.now();
    const out = await new Deno.Command("bash", {
      args: [`${root}/ffi/build.sh`, dir],
      env,
      stdout: "piped",
      stderr: "piped",
    }).output();
    if (!out.success) {
      const text = new TextDecoder().decode(out.stderr) + new TextDecoder().decode(out.stdout);
      throw new KvfoldError("BUILD", `Cannot build libkvfold.so: the compiler failed:\n${text.slice(-8000)}`);
    }
    await Deno.writeTextFile(stampPath, hash + "\n");
    log(`kvfold: built in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
    return lib;
  } finally {
    await Deno.remove(lockDir, { recursive: true }).catch(() => {});
  }
}

async function exists(path: string): Promise<boolean> {
  try {
    await Deno.stat(path);
    return true;
  } catch {
    return false;
  }
}
