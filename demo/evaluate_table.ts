/**
 * The demo evaluation as Markdown tables: the issue's table (context, positions, exact match) with
 * KV memory and speed, the targets it is held to, and the cross-group table.
 *
 * @module
 */

import type { CrossGroupEvaluation } from "./evaluate_cross.ts";
import { CACHE_SLOTS, type DemoConditionResult, type DemoEvaluation, STREAMING_SINKS } from "./evaluate.ts";

/**
 * Bytes as KiB or MiB.
 *
 * @example
 * ```ts
 * import { formatBytes } from "./evaluate_table.ts";
 * console.log(formatBytes(51712)); // "50.5 KiB"
 * ```
 */
export function formatBytes(bytes: number): string {
  if (!Number.isFinite(bytes)) return "-";
  return bytes >= 2 ** 20 ? `${(bytes / 2 ** 20).toFixed(2)} MiB` : `${(bytes / 2 ** 10).toFixed(1)} KiB`;
}

const fixed = (x: number, digits = 3) => Number.isFinite(x) ? x.toFixed(digits) : "-";

/** The positions cell: what sits before the question, in the condition's own unit. */
function positionsCell(c: DemoConditionResult, e: DemoEvaluation): string {
  const p = Math.round(c.meanContextPositions * 10) / 10;
  switch (c.condition) {
    case "none":
      return "0 (question only)";
    case "lloco":
    case "lloco-oracle":
      return `${p} vectors (${fixed(e.store.chunkTokens / c.meanContextPositions, 0)}x)`;
    case "lococo":
    case "h2o":
    case "streaming":
      return `${p} tokens into ${
        c.condition === "streaming" ? `${STREAMING_SINKS} + ${CACHE_SLOTS - STREAMING_SINKS}` : CACHE_SLOTS
      } slots`;
    default:
      return `${p} tokens`;
  }
}

/**
 * The issue's table, one row per condition: context given, mean positions of context, exact match,
 * mean peak KV memory of an answer, mean prompt prefill time, and decode speed.
 *
 * @example
 * ```ts ignore
 * console.log(formatDemoTable(await evaluateDemo(kv, { trainedDir, seed: 4242, documents: 8 })));
 * ```
 */
export function formatDemoTable(e: DemoEvaluation): string {
  const lines = [
    "| context given to the same trained model | positions | exact match | KV memory (peak) | prefill ms | decode tok/s |",
    "| --- | --- | --- | --- | --- | --- |",
  ];
  for (const c of e.conditions) {
    lines.push(
      `| ${c.label} | ${positionsCell(c, e)} | ${fixed(c.exactMatch)} | ${formatBytes(c.meanKvBytes)} | ${
        fixed(c.meanPrefillMs, 1)
      } | ${fixed(c.decodeTokensPerSecond, 0)} |`,
    );
  }
  return lines.join("\n");
}

/**
 * The lines under the table: retrieval accuracy, and LLoCO against the issue's targets (at least
 * 0.9x the full text's exact match and 80% absolute, far above truncation at the same budget).
 *
 * @example
 * ```ts ignore
 * console.log(formatDemoTargets(evaluation));
 * ```
 */
export function formatDemoTargets(e: DemoEvaluation): string {
  const em = (name: string) => e.conditions.find((c) => c.condition === name)?.exactMatch ?? NaN;
  const lines = [];
  if (e.retrievalAccuracy !== null) {
    lines.push(
      `retrieval accuracy (top BM25 chunk holds the fact's value): ${fixed(e.retrievalAccuracy)}; ` +
        `facts split across chunks: ${e.factsSplitAcrossChunks} of ${e.questions}`,
    );
  }
  const lloco = em("lloco"), full = em("full");
  const trunc = Math.max(em("truncated-document"), em("truncated-chunk"));
  if (Number.isFinite(lloco) && Number.isFinite(full)) {
    lines.push(
      `targets: LLoCO / full text = ${fixed(full > 0 ? lloco / full : NaN, 2)} (>= 0.9), LLoCO = ${
        fixed(lloco)
      } (>= 0.8), truncation at the same budget = ${fixed(trunc)}`,
    );
  }
  return lines.join("\n");
}

const MODE_LABELS = { best: "best group's adapter", compose: "composed adapters", none: "no adapter" };

/**
 * The cross-group table: exact match per adapter mode, over the retrieved and the oracle chunks, with
 * the share of the answers' values stated beside it ("0.000 (0.44)").
 *
 * @example
 * ```ts ignore
 * console.log(formatCrossGroupTable(evaluation.crossGroup!));
 * ```
 */
export function formatCrossGroupTable(x: CrossGroupEvaluation): string {
  const cell = (mode: string, chunks: string) => {
    const r = x.results.find((r) => r.mode === mode && r.chunks === chunks);
    return `${fixed(r?.exactMatch ?? NaN)} (${(r?.partsAnswered ?? NaN).toFixed(2)})`;
  };
  const lines = [
    `| adapters (${x.questions} cross-group questions; exact match (values stated)) | retrieved chunks (BM25, k = ${x.k}) | oracle chunks (both facts) |`,
    "| --- | --- | --- |",
  ];
  for (const [mode, label] of Object.entries(MODE_LABELS)) {
    lines.push(`| ${label} | ${cell(mode, "retrieved")} | ${cell(mode, "oracle")} |`);
  }
  lines.push(
    "",
    `both facts in the top ${x.k}: ${fixed(x.bothFactsRetrieved)}; top ${x.k} spanning two groups: ${
      fixed(x.spanningRetrievals)
    }`,
  );
  return lines.join("\n");
}
