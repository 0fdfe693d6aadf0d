// `kvfold serve` as a process: it listens, answers, and on SIGTERM finishes the running request,
// refuses new ones and exits 0.
import assert from "node:assert/strict";
import { repoRoot } from "../src/_native_build.ts";
import { testModel, WIDE_MODEL } from "./_fixtures.ts";

Deno.test({
  name: "serve CLI: SIGTERM finishes the running stream, refuses new requests, exits 0",
  ignore: Deno.build.os === "windows",
  fn: async () => {
    const dir = await testModel("serve-wide", WIDE_MODEL);
    const child = new Deno.Command(Deno.execPath(), {
      args: [
        "run",
        "-A",
        `${repoRoot()}/cli/main.ts`,
        "serve",
        "--model",
        dir,
        "--port",
        "0",
        "--threads",
        "2",
      ],
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    const errText: string[] = [];
    const lines = child.stderr.pipeThrough(new TextDecoderStream()).getReader();
    let url = "";
    const collect = (async () => {
      let buffer = "";
      for (;;) {
        const { value, done } = await lines.read();
        if (done) return;
        buffer += value;
        errText.push(value);
        url ||= /ready on (http:\/\/[^\s]+)/.exec(buffer)?.[1] ?? "";
      }
    })();
    try {
      for (let i = 0; i < 6000 && !url; i++) await new Promise((r) => setTimeout(r, 10));
      assert.ok(url, `the server never said it was ready: ${errText.join("")}`);
      const r = await fetch(`${url}/v1/completions`, {
        method: "POST",
        body: JSON.stringify({
          model: "base",
          prompt: "Once",
          max_tokens: 1000,
          temperature: 0,
          stream: true,
          kvfold: { ignore_eos: true },
        }),
      });
      const reader = r.body!.pipeThrough(new TextDecoderStream()).getReader();
      let text = (await reader.read()).value ?? "";
      child.kill("SIGTERM");
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        text += value;
      }
      const events = text.split("\n\n").filter((e) => e.startsWith("data: "));
      assert.equal(events.at(-1), "data: [DONE]");
      const finish = JSON.parse(events.at(-2)!.slice(6));
      assert.equal(finish.choices[0].finish_reason, "length", "the running request ran to its end");
      // New requests are refused (503 or the listener is gone).
      const late = await fetch(`${url}/v1/models`).then((x) => x.status, () => "refused");
      assert.ok(late === 503 || late === "refused", `a request after SIGTERM got ${late}`);
      const status = await child.status;
      await collect;
      assert.equal(status.code, 0, errText.join(""));
      assert.match(errText.join(""), /shutting down/);
    } finally {
      try {
        child.kill("SIGKILL");
      } catch { /* already gone */ }
      await child.stdout.cancel().catch(() => {});
    }
  },
});
