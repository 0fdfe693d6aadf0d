// Files taken from users are read only when regular and bounded: no hang on a FIFO, no endless read.
import assert from "node:assert/strict";
import { readBoundedFile, readBoundedJson } from "../src/_bounded_read.ts";
import { tempDir } from "./_fixtures.ts";
import { rejectsWith } from "./_kvfold_asserts.ts";

Deno.test("bounded read: refuses a FIFO, /dev/zero behind a link, a directory and a missing file", async () => {
  const dir = await tempDir();
  try {
    const fifo = `${dir}/config.json`;
    const mk = await new Deno.Command("mkfifo", { args: [fifo] }).output();
    assert.ok(mk.success);
    await rejectsWith(
      readBoundedFile(fifo, { action: "load model" }),
      "IO",
      /config\.json is not a regular file/,
    );
    Deno.symlinkSync("/dev/zero", `${dir}/zero.json`);
    await rejectsWith(
      readBoundedFile(`${dir}/zero.json`, { action: "load model" }),
      "IO",
      /not a regular file/,
    );
    await rejectsWith(readBoundedFile(dir, { action: "load model" }), "IO", /is a directory/);
    await rejectsWith(readBoundedFile(`${dir}/nope.json`, { action: "load model" }), "IO", /does not exist/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("bounded read: the limit is exact and bad JSON names the file", async () => {
  const dir = await tempDir();
  try {
    const p = `${dir}/a.json`;
    Deno.writeTextFileSync(p, JSON.stringify({ x: "y".repeat(5000) }));
    const size = Deno.statSync(p).size;
    assert.equal((await readBoundedFile(p, { action: "t", maxBytes: size })).length, size);
    await rejectsWith(
      readBoundedFile(p, { action: "t", maxBytes: size - 1 }),
      "FORMAT",
      /more than the limit/,
    );
    assert.deepEqual(await readBoundedJson(p, { action: "t" }), { x: "y".repeat(5000) });
    Deno.writeTextFileSync(p, "{ not json");
    await rejectsWith(readBoundedJson(p, { action: "load model" }), "FORMAT", /a\.json is not valid JSON/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
