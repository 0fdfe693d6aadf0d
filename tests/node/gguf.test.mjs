// GGUF under Node.js/Bun, through the package's public entry points: the writer (its Deno file API
// goes through node/runtime.ts) and loadModel on the file, with the tokenizer rebuilt from metadata.
import { writeModelGguf } from "kvfold";
import assert from "node:assert/strict";
import { rm } from "node:fs/promises";
import { join } from "node:path";
import { after, test } from "node:test";
import { removeTestModels, someIds, tempDir, testEngine, testModel } from "./_fixtures.mjs";

after(removeTestModels);

test("gguf: a q8_0 file written from a folder gives the folder's q8_0 logits and tokens", async () => {
  const kv = await testEngine();
  const dir = await testModel("gguf", { seed: 5 });
  const out = await tempDir();
  try {
    const path = join(out, "m.gguf");
    await writeModelGguf(dir, path, { dtype: "q8_0" });
    const file = await kv.loadModel(path);
    const folder = await kv.loadModel(dir, { dtype: "q8_0" });
    try {
      assert.equal(file.info.weightDType, "q8_0");
      assert.deepEqual(
        file.tokenizer.encode("Hello, world 123"),
        folder.tokenizer.encode("Hello, world 123"),
      );
      const ids = someIds(12, 512, 3);
      const logits = async (m) => {
        const s = m.session({ contextSize: 32 });
        try {
          return await s.prefill(ids, { logits: "all" });
        } finally {
          s.dispose();
        }
      };
      assert.deepEqual(await logits(file), await logits(folder));
    } finally {
      file.dispose();
      folder.dispose();
    }
  } finally {
    await rm(out, { recursive: true, force: true });
  }
});
