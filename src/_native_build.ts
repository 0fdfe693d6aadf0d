/**
 * Finds or builds `libkvfold.so`. The library is rebuilt whenever a file under `ffi/` or a build
 * setting changes: a manifest of every source's SHA-256 and of the settings is kept beside the
 * library (so a rebuild can say which file or setting changed), and a lock directory keeps
 * concurrent test processes from building at once.
 *
 * A CPU-only and a CUDA library live side by side (`build/cpu/`, `build/cuda/`), so switching
 * `KVFOLD_CUDA` back and forth never throws a good build away.
 *
 * @module
 */

import { KvfoldError } from "./errors.ts";
import { pathExists } from "./_path_exists.ts";

// The Node.js/Bun build (`npm run build`) runs this file from dist/src/, one folder deeper than src/.
const ROOT = new URL(
  import.meta.url.endsWith("/dist/src/_native_build.js") ? "../../" : "../",
  import.meta.url,
);

/** Absolute path of the repository root (where `ffi/` and `build/` live). */
export function repoRoot(): string {
  return decodeURIComponent(ROOT.pathname).replace(/\/$/, "");
}

/** The value of a build setting: `env` first (as {@link EnsureLibraryOptions.cuda} sets it), then the process. */
function setting(env: Record<string, string>, name: string): string {
  return env[name] ?? Deno.env.get(name) ?? "";
}

/** Whether `name` (a path, or a command looked up on PATH) is an existing file. */
function onPath(name: string): boolean {
  const dirs = name.includes("/") ? [""] : (Deno.env.get("PATH") ?? "").split(":").filter(Boolean);
  for (const d of dirs) {
    try {
      if (Deno.statSync(d ? `${d}/${name}` : name).isFile) return true;
    } catch { /* not there */ }
  }
  return false;
}

/**
 * Which library `ffi/build.sh` makes under these settings, decided as it decides: "cuda" when
 * `KVFOLD_CUDA` is 1, or is not 0 and nvcc (`$NVCC`) is found and `ffi/cuda` has sources; never
 * for a sanitizer build.
 */
export async function buildVariant(
  root: string = repoRoot(),
  env: Record<string, string> = {},
): Promise<"cpu" | "cuda"> {
  const mode = setting(env, "KVFOLD_CUDA") || "auto";
  if (mode === "0" || setting(env, "KVFOLD_SANITIZE")) return "cpu";
  if (mode === "1") return "cuda";
  let sources = false;
  try {
    for await (const e of Deno.readDir(`${root}/ffi/cuda`)) sources ||= e.name.endsWith(".cu");
  } catch { /* no ffi/cuda */ }
  return sources && onPath(setting(env, "NVCC") || "nvcc") ? "cuda" : "cpu";
}

/**
 * Where the built library and its manifest live: `$KVFOLD_BUILD_DIR` as given, else
 * `<repo>/build/cpu` or `<repo>/build/cuda` ({@link buildVariant}), or for a sanitizer build
 * (`$KVFOLD_SANITIZE`) `<repo>/build/sanitize-<list>`, so none of them replaces another.
 */
export async function buildDir(root: string = repoRoot(), env: Record<string, string> = {}): Promise<string> {
  const fixed = Deno.env.get("KVFOLD_BUILD_DIR");
  if (fixed) return fixed;
  const sanitize = setting(env, "KVFOLD_SANITIZE");
  if (sanitize) return `${root}/build/sanitize-${sanitize.replace(/[^a-z]+/g, "-")}`;
  return `${root}/build/${await buildVariant(root, env)}`;
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
 * What a library was built from: the SHA-256 of each file under `ffi/` (by path from the root), the
 * build settings, and one hash over both (the stamp).
 */
export interface BuildManifest {
  /** SHA-256 over every source and the settings: equal hashes, equal builds. */
  hash: string;
  /** SHA-256 of each source, by its path from the root ("/ffi/src/api.cpp"). */
  files: Record<string, string>;
  /** The value of each setting in {@link BUILD_ENV} ("" when unset). */
  settings: Record<string, string>;
}

const hex = (b: ArrayBuffer) =>
  Array.from(new Uint8Array(b), (x) => x.toString(16).padStart(2, "0")).join("");

/** The manifest of the sources under `root/ffi` with the settings of `env` over the process's. */
export async function buildManifest(
  root: string = repoRoot(),
  env: Record<string, string> = {},
): Promise<BuildManifest> {
  const paths = (await listFiles(`${root}/ffi`)).filter((f) => !f.includes("/tests/"));
  const parts: Uint8Array[] = [];
  const files: Record<string, string> = {};
  const enc = new TextEncoder();
  for (const f of paths) {
    const bytes = await Deno.readFile(f);
    files[f.slice(root.length)] = hex(await crypto.subtle.digest("SHA-256", bytes));
    parts.push(enc.encode(f.slice(root.length) + "\0"), bytes);
  }
  const settings = Object.fromEntries(BUILD_ENV.map((k) => [k, setting(env, k)]));
  parts.push(enc.encode(BUILD_ENV.map((k) => `${k}=${settings[k]}`).join(";")));
  const all = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let o = 0;
  for (const p of parts) {
    all.set(p, o);
    o += p.length;
  }
  return { hash: hex(await crypto.subtle.digest("SHA-256", all)), files, settings };
}

/**
 * Hash of every file under `ffi/` plus the build settings that change the output (`env` overrides the
 * process environment, as {@link EnsureLibraryOptions.cuda} does).
 */
export async function sourceHash(
  root: string = repoRoot(),
  env: Record<string, string> = {},
): Promise<string> {
  return (await buildManifest(root, env)).hash;
}

/**
 * Why the library beside `stamp` must be (re)built for `now`, or null when it is up to date: the
 * library missing, the files that changed, were added or removed, the settings that differ.
 */
export function rebuildReason(
  stamp: string | null,
  now: BuildManifest,
  libraryExists: boolean,
): string | null {
  if (!libraryExists) return "no library built yet";
  if (stamp === null) return "no build manifest beside the library";
  let old: BuildManifest;
  try {
    old = JSON.parse(stamp);
    if (typeof old?.hash !== "string" || typeof old.files !== "object" || typeof old.settings !== "object") {
      throw new Error("not a manifest");
    }
  } catch {
    return stamp === now.hash ? null : "its stamp is from an older kvfold and does not match";
  }
  if (old.hash === now.hash) return null;
  const why: string[] = [];
  const names = [...new Set([...Object.keys(old.files), ...Object.keys(now.files)])].sort();
  for (const f of names) {
    const name = f.replace(/^\//, "");
    if (!(f in old.files)) why.push(`${name} added`);
    else if (!(f in now.files)) why.push(`${name} removed`);
    else if (old.files[f] !== now.files[f]) why.push(`${name} changed`);
  }
  for (const k of BUILD_ENV) {
    const was = old.settings[k] ?? "", is = now.settings[k] ?? "";
    if (was !== is) why.push(`${k} differs (was ${JSON.stringify(was)}, now ${JSON.stringify(is)})`);
  }
  if (why.length === 0) return "its build manifest does not match";
  return why.length > 4 ? `${why.slice(0, 4).join("; ")}; and ${why.length - 4} more` : why.join("; ");
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
 * Returns the path of an up-to-date `libkvfold.so`, building it first if it is missing or stale, and
 * saying why it builds. `$KVFOLD_LIB` names a prebuilt library and skips all of this.
 */
export async function ensureNativeLibrary(options: EnsureLibraryOptions = {}): Promise<string> {
  const fixed = Deno.env.get("KVFOLD_LIB");
  if (fixed && !options.root) return fixed;
  const log = options.log ?? ((l: string) => console.error(l));
  const root = options.root ?? repoRoot();
  const env: Record<string, string> = options.cuda === false ? { KVFOLD_CUDA: "0" } : {};
  const dir = options.buildDir ?? await buildDir(root, env);
  const lib = `${dir}/libkvfold.so`;
  const stampPath = `${dir}/libkvfold.stamp`;
  const manifest = await buildManifest(root, env);
  const reason = async () =>
    options.force
      ? "a rebuild was asked for"
      : rebuildReason(await readText(stampPath), manifest, await pathExists(lib));
  if (await reason() === null) return lib;
  if (!options.buildDir) await adoptLegacyBuild(root, dir, manifest.hash);
  if (await reason() === null) return lib;

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
      if (!options.force && await reason() === null) return lib;
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
    const why = await reason();
    if (why === null) return lib;
    log(`kvfold: building ${lib}: ${why} ...`);
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
    await Deno.writeTextFile(stampPath, JSON.stringify(manifest, null, 1) + "\n");
    log(`kvfold: built in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
    return lib;
  } finally {
    await Deno.remove(lockDir, { recursive: true }).catch(() => {});
  }
}

// Before build/cpu and build/cuda, the library lived in build/ itself. One that matches these sources
// and settings moves into its folder instead of being built again.
async function adoptLegacyBuild(root: string, dir: string, hash: string): Promise<void> {
  const old = `${root}/build`;
  if (dir !== `${old}/cpu` && dir !== `${old}/cuda`) return;
  if ((await readText(`${old}/libkvfold.stamp`)) !== hash || await pathExists(`${dir}/libkvfold.so`)) return;
  let cudaBuilt: unknown;
  try {
    cudaBuilt = JSON.parse(await readText(`${old}/build-info.json`) ?? "{}").cuda_built;
  } catch { /* unreadable: build anew */ }
  if (cudaBuilt !== dir.endsWith("/cuda")) return; // built before nvcc came or went
  await Deno.mkdir(dir, { recursive: true });
  for (const f of ["libkvfold.so", "build-info.json", "libkvfold.stamp"]) {
    await Deno.rename(`${old}/${f}`, `${dir}/${f}`).catch(() => {});
  }
}
