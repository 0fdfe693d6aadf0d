/**
 * Every caller of the store on both backends: `kvfold compress --store` and `kvfold store stats`,
 * `compressIntoStore`, the LangChain and LlamaIndex retrievers and compressors, the payload loaders
 * and the server's retrieval. The same documents give the same chunks, scores and vectors on both.
 */

import assert from "node:assert/strict";
import { Document } from "npm:@langchain/core@1.4.0/documents";
import { TextNode } from "npm:llamaindex@0.12.1";
import { compressIntoStore, Compressor, openStore, startServer } from "../mod.ts";
import {
  KvfoldDocumentCompressor,
  KvfoldRetriever as LangChainRetriever,
  loadKvfoldChunks,
} from "../integrations/langchain/mod.ts";
import {
  KvfoldNodeCompressor,
  KvfoldRetriever as LlamaIndexRetriever,
  loadCompressedContext,
} from "../integrations/llamaindex/mod.ts";
import { runCli, tempDir, TEST_COMPRESSOR, testEngine, testModel } from "./_fixtures.ts";
import { storeTest } from "./_store_backends.ts";

const TEXTS = {
  "harbour.txt": "The ship left the harbour at dawn while the lantern keeper watched the storm.",
  "orchard.txt": "In winter the orchard is quiet; the miller walks the road to the quarry.",
};

storeTest(
  "store callers: CLI, compressIntoStore, LangChain, LlamaIndex and the server",
  async (b, backend) => {
    const dir = await tempDir();
    try {
      const compressorDir = await testModel("compressor", TEST_COMPRESSOR);
      const files = [];
      for (const [name, text] of Object.entries(TEXTS)) {
        await Deno.writeTextFile(`${dir}/${name}`, text);
        files.push(`${dir}/${name}`);
      }
      const c = await runCli(
        "compress",
        "--compressor",
        compressorDir,
        "--store",
        b.location,
        "--threads",
        "1",
        ...files,
      );
      assert.equal(c.code, 0, c.err);
      const s = await runCli("store", "stats", b.location);
      assert.equal(s.code, 0, s.err);
      assert.match(s.out, /documents: {4}2 \(2 chunks/);
      assert.equal(s.out.includes("queue:"), backend.name === "postgres");

      await using store = await openStore(b.location);
      using compressor = await Compressor.load(await testEngine(), compressorDir);
      const r = await compressIntoStore(compressor, store, {
        source: "api",
        text: "An anchor of copper in the archive.",
      });
      assert.equal((await store.getDocument("api"))!.chunkIds.join(), r.chunkIds.join());

      // LangChain: retrieve, then read a copied document's payload back from the store.
      const [hit] = await new LangChainRetriever({ store, k: 1 }).invoke("harbour ship");
      assert.equal(hit.metadata.source, files[0]);
      const copy = new Document({
        pageContent: hit.pageContent,
        metadata: JSON.parse(JSON.stringify(hit.metadata)),
      });
      const chunks = (await loadKvfoldChunks(copy, store))!;
      assert.deepEqual(chunks.map((c) => c.chunkId), [hit.metadata.chunkId]);
      const [stored] = await store.getChunks([hit.metadata.chunkId]);
      assert.deepEqual(chunks[0].vectors.bf16, stored.vectors.bf16);
      const compressed = await new KvfoldDocumentCompressor({ compressor, store, sourceOf: () => "lc-doc" })
        .compressDocuments(
          [new Document({ pageContent: TEXTS["orchard.txt"], metadata: { source: "lc-doc" } })],
          "orchard",
        );
      assert.equal(compressed.length, 1);
      assert.ok(await store.hasDocument("lc-doc"));

      // LlamaIndex: retrieve, and the reference of a node resolves through the same store.
      const [node] = await new LlamaIndexRetriever({ store, k: 1 }).retrieve({ query: "orchard miller" });
      assert.equal(node.node.metadata.source, files[1]);
      const context = await loadCompressedContext(node, store);
      assert.equal(
        context?.vectors.rows,
        (await store.getChunks([node.node.metadata.chunkId as number]))[0].vectors.rows,
      );
      const [withPayload] = await new KvfoldNodeCompressor({ compressor, store, sourceOf: () => "li-node" })
        .postprocessNodes([
          { node: new TextNode({ text: TEXTS["harbour.txt"], metadata: { source: "li-node" } }), score: 1 },
        ]);
      assert.ok((await loadCompressedContext(withPayload, store)) !== undefined);
      assert.ok(await store.hasDocument("li-node"));

      // The server resolves its stores by name whatever the backend: kvfold.chunk_ids reads through it.
      const server = startServer({
        model: testEngine().then((kv) => kv.loadModel(compressorDir)),
        ownsModel: true,
        stores: { kb: store },
        port: 0,
      });
      try {
        await server.ready;
        const res = await fetch(`${server.url}/v1/completions`, {
          method: "POST",
          headers: { "content-type": "application/json" },
          body: JSON.stringify({
            model: "base",
            prompt: "Q:",
            max_tokens: 2,
            kvfold: { store: "kb", chunk_ids: [stored.chunkId] },
          }),
        });
        const body = await res.json();
        assert.equal(res.status, 200, JSON.stringify(body));
        assert.deepEqual(body.kvfold.chunk_ids, [stored.chunkId]);
        assert.deepEqual(body.kvfold.sources, [files[0]]);
      } finally {
        await server.shutdown();
      }
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
);
