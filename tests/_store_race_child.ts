// A writer of tests/hostile_store_paths_test.ts's creation race: waits for a "go" file, then opens (and so
// creates) the store and adds two documents. Args: STORE INDEX GO_FILE.
import { DocumentStore, type NewChunk } from "../src/store.ts";

/** The chunks writer `index` stores for its document `doc` (also what the test expects back). */
export function raceChunks(index: number, doc: number): NewChunk[] {
  return [0, 1].map((c) => {
    const data = new Float32Array(3 * 8);
    for (let i = 0; i < data.length; i++) data[i] = Math.sin(index * 7.1 + doc * 3.3 + c * 1.7 + i * 0.37);
    return {
      text: `writer ${index} document ${doc} chunk ${c}`,
      tokens: 10 + c,
      vectors: { rows: 3, hidden: 8, data },
    };
  });
}

if (import.meta.main) {
  const [path, index, go] = Deno.args;
  Deno.writeTextFileSync(`${go}.ready-${index}`, "");
  // Every writer starts at the same moment, so they race on creating the store.
  while (true) {
    try {
      Deno.statSync(go);
      break;
    } catch {
      await new Promise((r) => setTimeout(r, 1));
    }
  }
  using store = DocumentStore.open(path);
  for (const doc of [0, 1]) {
    store.addDocument({ source: `writer-${index}-doc-${doc}`, chunks: raceChunks(Number(index), doc) });
  }
}
