// The demo corpus under Node.js: `kvfold make-demo-corpus` from dist/ writes the same bytes as under
// Deno (the hash pinned in tests/demo_corpus_test.ts), so a seed names one corpus on every runtime.
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { createHash } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { test } from "node:test";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..", "..");

test("make-demo-corpus under Node.js writes the corpus pinned under Deno", () => {
  const dir = mkdtempSync(join(tmpdir(), "kvfold-demo-"));
  try {
    const out = join(dir, "c");
    const args = ["--seed", "42", "--documents", "6", "--tokens-per-document", "1200"];
    args.push("--facts-per-document", "8", "--cross-group", "3");
    const cli = join(root, "dist", "node", "cli.js");
    const r = spawnSync(process.execPath, [cli, "make-demo-corpus", out, ...args], { encoding: "utf8" });
    assert.equal(r.status, 0, r.stderr);
    const files = ["ledger-0", "voyage-0", "ledger-1", "voyage-1", "ledger-2", "voyage-2"];
    const texts = files.map((f) => readFileSync(join(out, `${f}.txt`), "utf8").replace(/\n$/, ""));
    const bytes = texts.join("\n") + "\n" + readFileSync(join(out, "questions.jsonl"), "utf8");
    const hash = createHash("sha256").update(bytes).digest("hex");
    assert.equal(hash, "a97f68ddc6eb38d38ca0e00ff32ce70e1e8c2405fabb3648a4932c1eee2cd802");
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
