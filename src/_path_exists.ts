/**
 * Whether a path exists; other errors than "not found" (permissions, I/O) are thrown, not read as
 * absence.
 * @internal
 */
export async function pathExists(path: string): Promise<boolean> {
  try {
    await Deno.stat(path);
    return true;
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return false;
    throw e;
  }
}
