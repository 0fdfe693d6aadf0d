// Incremental detokenization and stop strings, on hand-made token tables.
import assert from "node:assert/strict";
import { IncrementalDecoder, StopStringFilter } from "../mod.ts";

Deno.test("text stream: a multi-byte character split over tokens is emitted once, whole", () => {
  // Token 0..2 are the three UTF-8 bytes of "€"; decoding a partial sequence yields U+FFFD.
  const bytes = [0xe2, 0x82, 0xac, 0x41];
  const decode = (ids: number[]) => new TextDecoder().decode(new Uint8Array(ids.map((i) => bytes[i])));
  const d = new IncrementalDecoder(decode);
  assert.deepEqual([d.push(0), d.push(1), d.push(2), d.push(3)], ["", "", "€", "A"]);
});

Deno.test("text stream: pieces joined equal the full decode (leading-space tokenizers)", () => {
  const vocab = ["▁The", "▁cat", "s", "▁sat", "."];
  const decode = (ids: number[]) => ids.map((i) => vocab[i]).join("").replaceAll("▁", " ").replace(/^ /, "");
  const d = new IncrementalDecoder(decode);
  const ids = [0, 1, 2, 3, 4];
  assert.equal(ids.map((i) => d.push(i)).join("") + d.flush(), decode(ids));
});

Deno.test("text stream: a stop string split across pushes is never emitted, text before it is", () => {
  const f = new StopStringFilter(["</answer>", "\n\n"]);
  const out = ["The answer is 4", "</ans", "wer> and more"].map((p) => f.push(p)).join("") + f.flush();
  assert.equal(out, "The answer is 4");
  assert.equal(f.matched, "</answer>");
  assert.ok(f.stopped);
});

Deno.test("text stream: a held-back prefix that turns out not to be a stop string is released", () => {
  const f = new StopStringFilter(["STOP"]);
  assert.equal(f.push("go ST"), "go ");
  assert.equal(f.push("ART"), "START");
  assert.equal(f.push(" now S"), " now ");
  assert.equal(f.flush(), "S");
  assert.equal(f.stopped, false);
});

Deno.test("text stream: the earliest of several stop strings wins", () => {
  const f = new StopStringFilter(["bb", "a"]);
  assert.equal(f.push("xxbbya"), "xx");
  assert.equal(f.matched, "bb");
});
